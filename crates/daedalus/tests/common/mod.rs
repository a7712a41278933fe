//! Helpers shared by the `daedalus` command's integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Encodes `frames` frames of a moving test pattern of `size` ("WxH") with
/// the `ffmpeg` tool and `codec_args` into `dir/name`.
pub fn encode(dir: &Path, name: &str, size: &str, frames: u32, codec_args: &[&str]) -> PathBuf {
    let f = dir.join(name);
    let st = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate=25"))
        .args(["-frames:v", &frames.to_string(), "-pix_fmt", "yuv420p"])
        .args(codec_args)
        .arg(&f)
        .status()
        .expect("ffmpeg is needed to make the test streams");
    assert!(st.success(), "encoding {name}");
    f
}
