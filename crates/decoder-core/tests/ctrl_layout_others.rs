//! Layout truth for the HEVC, VP8, VP9 and AV1 controls: compiles a C program
//! against the Linux 6.12 uAPI headers (`scripts/uapi-headers.sh`) printing
//! `sizeof`/`offsetof` of every field of every struct the Rust modules declare,
//! the value of every constant they declare, and the control ids / types /
//! payload sizes, and compares each with Rust's view.
//!
//! The list of structs, fields and constants is not written here: it comes
//! from the `LAYOUTS` / `CONSTS` tables the `uapi_structs!` / `uapi_consts!`
//! macros generate next to the declarations, so nothing can be left out.
//!
//! Include root: `$DAEDALUS_UAPI_INCLUDE`, else `<workspace>/.cache/uapi/usr/include`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use decoder_core::ctrl::vp8::{UapiConst, UapiStruct};
use decoder_core::ctrl::{av1, hevc, vp8, vp9, CodecDesc};

struct Family {
    name: &'static str,
    layouts: &'static [UapiStruct],
    consts: &'static [UapiConst],
    controls: &'static [(u32, &'static str, &'static str, &'static str)],
    desc: &'static CodecDesc,
}

macro_rules! families {
    ($($m:ident),*) => {
        vec![$(Family {
            name: stringify!($m),
            layouts: $m::LAYOUTS,
            consts: $m::CONSTS,
            controls: $m::CONTROL_C_NAMES,
            desc: &$m::CODEC,
        }),*]
    };
}

fn families() -> Vec<Family> {
    families!(vp8, vp9, hevc, av1)
}

fn include_root() -> PathBuf {
    if let Some(p) = std::env::var_os("DAEDALUS_UAPI_INCLUDE") {
        let p = PathBuf::from(p);
        assert!(
            p.join("linux/v4l2-controls.h").is_file(),
            "DAEDALUS_UAPI_INCLUDE={} has no linux/v4l2-controls.h; run scripts/uapi-headers.sh",
            p.display()
        );
        return p;
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = ws.join(".cache/uapi/usr/include");
    assert!(
        p.join("linux/v4l2-controls.h").is_file(),
        "Linux 6.12 uAPI headers not found: run scripts/uapi-headers.sh \
         (or set DAEDALUS_UAPI_INCLUDE to an include root holding linux/v4l2-controls.h)"
    );
    p
}

/// Field name as C spells it (`r#type` -> `type`).
fn c_field(name: &str) -> &str {
    name.trim_start_matches("r#")
}

fn c_program(fams: &[Family]) -> String {
    let mut s = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/videodev2.h>\n\
         #include <linux/v4l2-controls.h>\n\
         #define S(t) printf(\"struct %s %zu %zu\\n\", #t, sizeof(struct t), _Alignof(struct t));\n\
         #define F(t, f) printf(\"field %s.%s %zu %zu\\n\", #t, #f, offsetof(struct t, f), sizeof(((struct t *)0)->f));\n\
         #define C(n) printf(\"const %s %lld\\n\", #n, (long long)(n));\n\
         #define P(n, t) printf(\"payload %s %zu\\n\", #n, sizeof(t));\n\
         int main(void) {\n",
    );
    for f in fams {
        for st in f.layouts {
            s += &format!("S({})\n", st.c_name);
            for fld in st.fields {
                s += &format!("F({}, {})\n", st.c_name, c_field(fld.name));
            }
        }
        for c in f.consts {
            s += &format!("C({})\n", c.name);
        }
        for (_, cid, ty, payload) in f.controls {
            s += &format!("C({cid})\nC({ty})\nP({cid}, {payload})\n");
        }
    }
    s += "return 0;\n}\n";
    s
}

fn run_c(src: &str) -> BTreeMap<String, Vec<i128>> {
    let inc = include_root();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ctrl_layout_others");
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&c, src).unwrap();
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.arg("-std=gnu11").arg("-I").arg(&inc);
    if let Ok(o) = Command::new("cc").arg("-print-multiarch").output() {
        let triple = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !triple.is_empty() && inc.join(&triple).is_dir() {
            cmd.arg("-I").arg(inc.join(&triple));
        }
    }
    cmd.arg("-o").arg(&exe).arg(&c);
    let out = cmd.output().expect("running cc");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().expect("running layout program");
    assert!(out.status.success());
    let mut map = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let mut it = line.split_whitespace();
        let kind = it.next().unwrap();
        let name = it.next().unwrap();
        let vals: Vec<i128> = it.map(|v| v.parse().unwrap()).collect();
        map.insert(format!("{kind} {name}"), vals);
    }
    map
}

#[test]
fn layout_matches_linux_6_12_uapi() {
    let fams = families();
    let c = run_c(&c_program(&fams));
    let mut bad = Vec::new();
    let mut checked = 0usize;
    let mut cmp = |what: String, rust: Vec<i128>| {
        checked += 1;
        match c.get(&what) {
            Some(v) if *v == rust => {}
            Some(v) => bad.push(format!("{what}: C {v:?}, Rust {rust:?}")),
            None => bad.push(format!("{what}: missing from C output")),
        }
    };
    for f in &fams {
        for st in f.layouts {
            cmp(
                format!("struct {}", st.c_name),
                vec![st.size as i128, st.align as i128],
            );
            for fld in st.fields {
                cmp(
                    format!("field {}.{}", st.c_name, c_field(fld.name)),
                    vec![fld.offset as i128, fld.size as i128],
                );
            }
        }
        for k in f.consts {
            cmp(format!("const {}", k.name), vec![k.value]);
        }
        for d in f.desc.controls {
            let (_, cid, ty, _) = f
                .controls
                .iter()
                .find(|c| c.0 == d.id)
                .unwrap_or_else(|| panic!("{}: control {:#x} has no C name", f.name, d.id));
            cmp(format!("const {cid}"), vec![i128::from(d.id)]);
            cmp(format!("const {ty}"), vec![i128::from(d.v4l2_type)]);
            cmp(format!("payload {cid}"), vec![i128::from(d.elem_size)]);
        }
        assert_eq!(
            f.desc.controls.len(),
            f.controls.len(),
            "{}: CONTROL_C_NAMES and CODEC.controls differ",
            f.name
        );
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(checked > 50, "only {checked} comparisons");
    eprintln!("{checked} layout facts match the 6.12 uAPI headers");
}

#[test]
fn every_control_struct_has_a_layout() {
    // Each compound control's payload type must be one of the declared structs
    // (or a plain integer array), so its fields are all covered above.
    for f in families() {
        for (_, cid, _, payload) in f.controls {
            if let Some(tag) = payload.strip_prefix("struct ") {
                assert!(
                    f.layouts.iter().any(|l| l.c_name == tag),
                    "{cid}: {payload} not declared via uapi_structs!"
                );
            }
        }
    }
}
