//! Shared helpers of the plugin tests: building the test plugins, planes
//! with guard bytes, and an independent implementation of the picture the
//! Rust test plugin (`crates/test-plugin`) writes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use daedalus_daemon::backend::{CaptureFormat, CapturePlane, CaptureTarget};
use decoder_core::ctrl::ControlValues;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Path of the Rust test plugin (`libdaedalus_test_plugin.so`): the
/// `DAEDALUS_TEST_PLUGIN` environment variable, or else the cdylib built
/// (once per test process) with the cargo running the tests, in the target
/// directory cargo picks for it.
pub fn test_plugin() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("DAEDALUS_TEST_PLUGIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .arg("build")
            .arg("--manifest-path")
            .arg(root().join("crates/test-plugin/Cargo.toml"))
            .args(["--message-format=json", "--quiet"])
            .output()
            .expect("cannot run cargo to build the test plugin");
        assert!(
            out.status.success(),
            "building crates/test-plugin failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("cargo output is UTF-8");
        cdylib_from_cargo_json(&stdout, "daedalus_test_plugin")
            .expect("cargo did not report the test plugin's cdylib")
    })
    .clone()
}

/// The `.so` of target `target` in cargo's `--message-format=json` output.
fn cdylib_from_cargo_json(json: &str, target: &str) -> Option<PathBuf> {
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter(|l| l.contains(&format!("\"name\":\"{target}\"")))
        .find_map(|l| {
            let files = &l[l.find("\"filenames\":[")? + "\"filenames\":[".len()..];
            let files = &files[..files.find(']')?];
            files
                .split(',')
                .map(|f| f.trim().trim_matches('"'))
                .find(|f| f.ends_with(".so"))
                .map(PathBuf::from)
        })
}

/// Compiles `tests/plugins/broken.c` with `-D<variant>` (or no define for
/// `""`) into a shared library, once per variant and test process.
pub fn c_plugin(variant: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(variant) {
        return p.clone();
    }
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = if variant.is_empty() { "valid" } else { variant };
    let so = dir.join(format!("lib{name}.so"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(cc);
    cmd.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-fPIC",
        "-shared",
        "-I",
    ])
    .arg(root().join("include"));
    if !variant.is_empty() {
        cmd.arg(format!("-D{variant}"));
    }
    let out = cmd
        .arg(root().join("crates/daemon/tests/plugins/broken.c"))
        .arg("-o")
        .arg(&so)
        .output()
        .expect("a C compiler (cc) is needed for this test");
    assert!(
        out.status.success(),
        "compiling the {name} C plugin failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    built.insert(variant.to_string(), so.clone());
    so
}

/// Guard byte the planes start with; bytes outside the picture must keep it.
pub const GUARD: u8 = 0xa5;

/// Two Vec-backed image planes for a `width` x `height` picture with
/// `pad` bytes of padding per row and `tail` extra bytes per plane.
pub struct Planes {
    pub format: CaptureFormat,
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub luma: Vec<u8>,
    pub chroma: Vec<u8>,
}

impl Planes {
    pub fn new(format: CaptureFormat, width: u32, height: u32, pad: usize) -> Self {
        let sb = format.sample_bytes();
        let stride = (width as usize).div_ceil(2) * 2 * sb + pad;
        let rows = height as usize;
        Planes {
            format,
            width,
            height,
            stride,
            luma: vec![GUARD; stride * rows + 7],
            chroma: vec![GUARD; stride * rows.div_ceil(2) + 3],
        }
    }

    pub fn target(&mut self) -> CaptureTarget<'_> {
        CaptureTarget {
            format: self.format,
            width: self.width,
            height: self.height,
            luma: CapturePlane {
                data: &mut self.luma,
                stride: self.stride,
            },
            chroma: CapturePlane {
                data: &mut self.chroma,
                stride: self.stride,
            },
            cr: None,
        }
    }

    pub fn untouched(&self) -> bool {
        self.luma.iter().chain(&self.chroma).all(|&b| b == GUARD)
    }
}

/// FNV-1a 64 of the picture inputs, as the test plugin documents it.
pub fn seed(controls: &ControlValues, bitstream: &[u8], timestamp: u64, refs: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (id, payload) in controls.iter() {
        add(&id.to_le_bytes());
        add(&(payload.len() as u32).to_le_bytes());
        add(payload);
    }
    add(bitstream);
    add(&timestamp.to_le_bytes());
    for r in refs {
        add(&r.to_le_bytes());
    }
    h
}

/// The planes the test plugin must produce for `seed`: the guard bytes
/// everywhere outside the picture, the documented gradient inside.
pub fn expected(
    format: CaptureFormat,
    width: u32,
    height: u32,
    stride: usize,
    seed: u64,
) -> Planes {
    let mut p = Planes::new(format, width, height, 0);
    // Same allocation shape as the planes under test.
    p.stride = stride;
    p.luma = vec![GUARD; stride * height as usize + 7];
    p.chroma = vec![GUARD; stride * (height as usize).div_ceil(2) + 3];
    let sample = |plane: u32, x: usize, y: usize| -> u32 {
        ((seed >> (plane * 8)) as u32)
            .wrapping_add((x as u32).wrapping_mul(plane + 1))
            .wrapping_add((y as u32).wrapping_mul(2 * plane + 3))
    };
    let put = |buf: &mut [u8], at: usize, v: u32| match format {
        CaptureFormat::Nv12 | CaptureFormat::Yuv420 => buf[at] = v as u8,
        CaptureFormat::P010 => {
            let w = ((v & 0x3ff) << 6) as u16;
            buf[at..at + 2].copy_from_slice(&w.to_le_bytes());
        }
    };
    let sb = format.sample_bytes();
    for y in 0..height as usize {
        for x in 0..width as usize {
            put(&mut p.luma, y * stride + x * sb, sample(0, x, y));
        }
    }
    for y in 0..(height as usize).div_ceil(2) {
        for x in 0..(width as usize).div_ceil(2) {
            put(&mut p.chroma, y * stride + 2 * x * sb, sample(1, x, y));
            put(
                &mut p.chroma,
                y * stride + (2 * x + 1) * sb,
                sample(2, x, y),
            );
        }
    }
    p
}

/// Asserts two plane sets are byte-identical, naming the first difference.
pub fn assert_planes_eq(got: &Planes, want: &Planes) {
    for (name, g, w) in [
        ("luma", &got.luma, &want.luma),
        ("chroma", &got.chroma, &want.chroma),
    ] {
        assert_eq!(g.len(), w.len(), "{name} plane length");
        if let Some(i) = g.iter().zip(w.iter()).position(|(a, b)| a != b) {
            panic!(
                "{name} plane differs at byte {i} (row {}, column byte {}): got {:#04x}, want {:#04x}",
                i / got.stride,
                i % got.stride,
                g[i],
                w[i]
            );
        }
    }
}
