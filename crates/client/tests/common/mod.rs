//! Helpers shared by the end-to-end decode tests.

use std::path::Path;
use std::process::Command;

/// Runs an encoder or ffmpeg, failing the test with its stderr.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{cmd:?}: {e} (install x264, x265, vpx-tools, aom-tools and ffmpeg: .ci/install-deps)"
        )
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The per-frame MD5 column of FFmpeg's own decode of `file`
/// (`-f framemd5`, NV12 or P010).
pub fn reference_md5s(file: &Path, ten_bit: bool) -> Vec<String> {
    let out = run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(file)
        .args(["-pix_fmt", if ten_bit { "p010le" } else { "nv12" }])
        .args(["-fps_mode", "passthrough", "-f", "framemd5", "-"]));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.rsplit(',').next().unwrap().trim().to_owned())
        .collect()
}
