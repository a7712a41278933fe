//! The plugin ABI: `include/daedalus_backend.h` against the Rust mirror in
//! `backend::plugin::abi`, and the loader's checks against C plugins that
//! break the ABI in one way each (`tests/plugins/broken.c`).

mod plugins;

use std::process::Command;

use daedalus_daemon::backend::plugin::{abi, PluginError, PluginLibrary};
use daedalus_daemon::backend::{
    Backend, CaptureFormat, CapturePlane, CaptureTarget, DecodeError, DecodeOutcome, JobFlags,
    JobInput,
};
use decoder_core::ctrl::{Codec, ControlValues};
use plugins::{c_plugin, root, Planes};

#[test]
fn c_header_matches_rust_layout() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("abi-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c =
        String::from("#include <stdio.h>\n#include <stddef.h>\n#include \"daedalus_backend.h\"\n");
    c.push_str(
        "#define F(s, f) printf(\"%s.%s %zu %zu\\n\", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))\n",
    );
    c.push_str("int main(void) {\n");
    let mut want = Vec::new();
    for (name, size, fields) in abi::layouts() {
        c.push_str(&format!(
            "printf(\"{name} %zu\\n\", sizeof(struct {name}));\n"
        ));
        want.push(format!("{name} {size}"));
        for f in fields {
            c.push_str(&format!("F({name}, {});\n", f.name));
            want.push(format!("{name}.{} {} {}", f.name, f.offset, f.size));
        }
    }
    for (name, value) in abi::constants() {
        c.push_str(&format!(
            "printf(\"{name} %llu\\n\", (unsigned long long)({name}));\n"
        ));
        want.push(format!("{name} {value}"));
    }
    c.push_str(
        "printf(\"entry %s\\n\", DAEDALUS_BACKEND_ENTRY_SYMBOL);\n\
         printf(\"bit %u\\n\", DAEDALUS_CODEC_BIT(DAEDALUS_CODEC_VP9));\n\
         { daedalus_backend_entry_fn f = daedalus_backend_entry; (void)f; }\n",
    );
    want.push(format!("entry {}", abi::ENTRY_SYMBOL));
    want.push(format!("bit {}", 1u32 << Codec::Vp9.to_wire()));
    c.push_str("return 0;\n}\n");
    let src = dir.join("check.c");
    let exe = dir.join("check");
    std::fs::write(&src, c).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    // The header declares the entry point: define it so the program links.
    let stub = dir.join("stub.c");
    std::fs::write(
        &stub,
        "#include \"daedalus_backend.h\"\n\
         const struct daedalus_backend *daedalus_backend_entry(uint32_t a, uint32_t b)\n\
         { (void)a; (void)b; return 0; }\n",
    )
    .unwrap();
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(root().join("include"))
        .arg(&src)
        .arg(&stub)
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
        .map(|(w, g)| format!("rust: {w:<50} c: {g}"))
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

/// The Raspberry Pi 5 is aarch64: a cross C compiler (clang) must lay the
/// header out as the Rust side does here (every LP64 target agrees).
#[cfg(target_pointer_width = "64")]
#[test]
fn c_header_layout_on_aarch64() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("abi-aarch64-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = String::from("#include <stddef.h>\n#include \"daedalus_backend.h\"\n");
    let mut n = 0;
    for (name, size, fields) in abi::layouts() {
        c.push_str(&format!(
            "_Static_assert(sizeof(struct {name}) == {size}, \"{name}\");\n"
        ));
        for f in fields {
            c.push_str(&format!(
                "_Static_assert(offsetof(struct {name}, {0}) == {1} && \
                 sizeof(((struct {name} *)0)->{0}) == {2}, \"{name}.{0}\");\n",
                f.name, f.offset, f.size
            ));
            n += 1;
        }
    }
    let src = dir.join("aarch64.c");
    std::fs::write(&src, c).unwrap();
    let Ok(out) = Command::new("clang")
        .args([
            "--target=aarch64-linux-gnu",
            "-ffreestanding",
            "-std=c11",
            "-Wall",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(root().join("include"))
        .arg(&src)
        .output()
    else {
        eprintln!("no clang: aarch64 layout not checked");
        return;
    };
    assert!(
        out.status.success(),
        "aarch64 layout differs:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("checked {n} fields for aarch64");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn header_compiles_as_cxx() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("abi-cxx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("check.cc");
    std::fs::write(
        &src,
        "#include \"daedalus_backend.h\"\n\
         static_assert(sizeof(daedalus_backend) >= 8, \"descriptor\");\n",
    )
    .unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let Ok(out) = Command::new(&cxx)
        .args(["-std=c++11", "-Wall", "-Werror", "-fsyntax-only", "-I"])
        .arg(root().join("include"))
        .arg(&src)
        .output()
    else {
        eprintln!("no C++ compiler ({cxx}); skipped");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn load_err(variant: &str) -> (std::path::PathBuf, PluginError) {
    let path = c_plugin(variant);
    let err = PluginLibrary::load(&path).expect_err("the loader accepted a broken plugin");
    let shown = err.to_string();
    assert!(
        shown.contains(&*path.to_string_lossy()),
        "the error does not name the path: {shown}"
    );
    (path, err)
}

#[test]
fn missing_file_is_a_load_error() {
    let path = root().join("target/does-not-exist/libnothing.so");
    let err = PluginLibrary::load(&path).unwrap_err();
    assert!(matches!(err, PluginError::Load { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains("libnothing.so"), "{shown}");
    assert!(shown.contains("cannot load"), "{shown}");
}

#[test]
fn non_library_is_a_load_error() {
    // A C source file is not a shared object.
    let path = root().join("crates/daemon/tests/plugins/broken.c");
    let err = PluginLibrary::load(&path).unwrap_err();
    assert!(matches!(err, PluginError::Load { .. }), "{err:?}");
}

#[test]
fn unresolved_symbols_fail_at_load() {
    let (_, err) = load_err("PLUGIN_UNRESOLVED");
    assert!(matches!(err, PluginError::Load { .. }), "{err:?}");
    assert!(
        err.to_string().contains("daedalus_test_undefined_function"),
        "{err}"
    );
}

#[test]
fn missing_entry_point() {
    let (_, err) = load_err("PLUGIN_NO_ENTRY");
    match err {
        PluginError::MissingSymbol { symbol, .. } => assert_eq!(symbol, "daedalus_backend_entry"),
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn wrong_abi_major() {
    let (_, err) = load_err("PLUGIN_WRONG_MAJOR");
    match err {
        PluginError::AbiVersion { major, minor, .. } => {
            assert_eq!(major, abi::ABI_MAJOR + 1);
            assert_eq!(minor, abi::ABI_MINOR);
        }
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn entry_point_refusing_the_host() {
    let (_, err) = load_err("PLUGIN_REFUSE");
    assert!(matches!(err, PluginError::Refused { .. }), "{err:?}");
}

#[test]
fn null_decode_pointer() {
    let (_, err) = load_err("PLUGIN_NULL_DECODE");
    match err {
        PluginError::NullPointer { field, .. } => assert_eq!(field, "decode"),
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn null_name_pointer() {
    let (_, err) = load_err("PLUGIN_NULL_NAME");
    match err {
        PluginError::NullPointer { field, .. } => assert_eq!(field, "name"),
        e => panic!("wrong error {e:?}"),
    }
}

#[test]
fn descriptor_too_short() {
    let (_, err) = load_err("PLUGIN_SHORT");
    match err {
        PluginError::DescriptorSize { size, min, .. } => {
            assert_eq!(min, std::mem::size_of::<abi::Descriptor>());
            assert_eq!(size as usize, min - 8);
        }
        e => panic!("wrong error {e:?}"),
    }
}

/// The job the test plugin answers with a grey picture.
fn hevc_job(controls: &ControlValues) -> JobInput<'_> {
    JobInput {
        codec: Codec::Hevc,
        controls,
        bitstream: b"\x26\x01 not really hevc",
        timestamp: 7,
        flags: JobFlags::default(),
        references: &[],
    }
}

fn grey_picture(lib: &std::sync::Arc<PluginLibrary>, format: CaptureFormat) {
    let mut b = lib.backend(Codec::Hevc).unwrap();
    assert_eq!(b.name(), "c-test");
    let controls = ControlValues::new();
    let job = hevc_job(&controls);
    let mut planes = Planes::new(format, 33, 9, 6);
    let out = b.decode(&job, &mut planes.target()).unwrap();
    assert_eq!(out, DecodeOutcome::Decoded);
    let sb = format.sample_bytes();
    let grey = |v: u8, x: usize| match format {
        CaptureFormat::Nv12 => v,
        CaptureFormat::P010 => [0, v][x % 2],
        CaptureFormat::Yuv420 => unreachable!("the ABI has semi-planar formats only"),
    };
    for (plane, rows, row_bytes, v) in [
        (&planes.luma, 9, 33 * sb, 0x10),
        (&planes.chroma, 5, 34 * sb, 0x80),
    ] {
        for (i, &byte) in plane.iter().enumerate() {
            let (y, x) = (i / planes.stride, i % planes.stride);
            let want = if y < rows && x < row_bytes {
                grey(v, x)
            } else {
                plugins::GUARD
            };
            assert_eq!(byte, want, "byte {i} (row {y}, byte {x})");
        }
    }
    assert_eq!(b.last_result_flags(), abi::RESULT_KEYFRAME);
}

#[test]
fn c_plugin_decodes_and_refuses_other_codecs() {
    let lib = PluginLibrary::load(c_plugin("")).unwrap();
    assert_eq!(lib.name(), "c-test");
    assert_eq!(lib.abi_version(), (abi::ABI_MAJOR, abi::ABI_MINOR));
    assert_eq!(lib.codecs(), vec![Codec::Hevc]);
    grey_picture(&lib, CaptureFormat::Nv12);
    grey_picture(&lib, CaptureFormat::P010);
    // Three planes are not in the ABI: refused before the plugin sees them.
    let mut b = lib.backend(Codec::Hevc).unwrap();
    let controls = ControlValues::new();
    let job = hevc_job(&controls);
    let (mut y, mut u, mut v) = (vec![0u8; 64 * 16], vec![0u8; 32 * 8], vec![0u8; 32 * 8]);
    let plane = |data, stride| CapturePlane { data, stride };
    let mut t = CaptureTarget::planar(
        64,
        16,
        plane(&mut y, 64),
        plane(&mut u, 32),
        plane(&mut v, 32),
    )
    .unwrap();
    assert!(matches!(
        b.decode(&job, &mut t),
        Err(DecodeError::Unsupported(_))
    ));
    let err = lib.backend(Codec::H264).unwrap_err();
    assert!(matches!(
        err,
        PluginError::UnsupportedCodec {
            codec: Codec::H264,
            ..
        }
    ));
    let shown = err.to_string();
    assert!(shown.contains("H264") && shown.contains("Hevc"), "{shown}");
    assert!(matches!(
        DecodeError::from(err),
        DecodeError::Unsupported(_)
    ));
}

#[test]
fn newer_minor_with_longer_descriptor_loads() {
    let lib = PluginLibrary::load(c_plugin("PLUGIN_NEWER_MINOR")).unwrap();
    assert_eq!(lib.abi_version(), (abi::ABI_MAJOR, abi::ABI_MINOR + 3));
    grey_picture(&lib, CaptureFormat::Nv12);
}
