//! The C header `include/daedalus_v4l2_proto.h` must describe exactly the
//! wire structs and constants of `decoder_core::proto`. A C program generated
//! from the Rust field list prints every size, offset and constant as the C
//! compiler sees them; any difference fails.

use std::path::PathBuf;
use std::process::Command;

use decoder_core::proto::{all_constants, all_layouts};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn c_header_matches_rust_layout() {
    let root = workspace_root();
    let dir = std::env::temp_dir().join(format!("dv-proto-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"daedalus_v4l2_proto.h\"\n",
    );
    c.push_str(
        "#define F(s, f) printf(\"%s.%s %zu %zu\\n\", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))\n",
    );
    c.push_str("int main(void) {\n");
    let mut want = Vec::new();
    for (name, size, fields) in all_layouts() {
        c.push_str(&format!(
            "printf(\"{name} %zu\\n\", sizeof(struct {name}));\n"
        ));
        want.push(format!("{name} {size}"));
        for f in fields {
            c.push_str(&format!("F({name}, {});\n", f.name));
            want.push(format!("{name}.{} {} {}", f.name, f.offset, f.size));
        }
    }
    for (name, value) in all_constants() {
        c.push_str(&format!(
            "printf(\"{name} %llu\\n\", (unsigned long long)({name}));\n"
        ));
        want.push(format!("{name} {value}"));
    }
    c.push_str("return 0;\n}\n");
    let src = dir.join("check.c");
    let exe = dir.join("check");
    std::fs::write(&src, c).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("a C compiler (cc) is needed for this test");
    assert!(
        out.status.success(),
        "the C header does not compile against the Rust field list (a field missing or renamed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let got: Vec<String> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let diffs: Vec<String> = want
        .iter()
        .zip(got.iter())
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("rust: {w:<40} c: {g}"))
        .collect();
    assert!(
        diffs.is_empty(),
        "C header and Rust differ:\n{}",
        diffs.join("\n")
    );
    assert_eq!(want.len(), got.len());
    println!("checked {} sizes, offsets and constants", want.len());
    std::fs::remove_dir_all(&dir).ok();
}
