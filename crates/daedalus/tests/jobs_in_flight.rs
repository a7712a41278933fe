//! `daedalus decode --jobs-in-flight 1` and `2` (the default) decode the
//! same frames as FFmpeg: with two jobs in the daemon at once, a job
//! referencing the picture still being decoded gets that job's CAPTURE
//! buffer, and results come back in order (H.264 with B-frames, VP9 with
//! hidden altref frames).

mod common;

use std::process::Command;

/// The hash column of a framemd5 text.
fn hashes(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(',').nth(5).map(|h| h.trim().to_string()))
        .collect()
}

#[test]
fn one_or_two_jobs_in_flight_decode_the_same_frames_as_ffmpeg() {
    let dir = std::env::temp_dir().join(format!("daedalus-jif-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let streams = [
        common::encode(
            &dir,
            "b.h264",
            "320x240",
            40,
            &["-c:v", "libx264", "-bf", "3", "-x264-params", "keyint=15"],
        ),
        common::encode(
            &dir,
            "altref.ivf",
            "320x240",
            40,
            &[
                "-c:v",
                "libvpx-vp9",
                "-auto-alt-ref",
                "1",
                "-lag-in-frames",
                "16",
                "-b:v",
                "300k",
            ],
        ),
    ];
    for s in &streams {
        let reference = Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-i"])
            .arg(s)
            .args(["-pix_fmt", "nv12", "-f", "framemd5", "-"])
            .output()
            .unwrap();
        assert!(reference.status.success());
        let want = hashes(&String::from_utf8_lossy(&reference.stdout));
        assert_eq!(want.len(), 40, "{}", s.display());
        for jobs in ["1", "2"] {
            let got = Command::new(env!("CARGO_BIN_EXE_daedalus"))
                .arg("decode")
                .arg(s)
                .args(["--jobs-in-flight", jobs, "--framemd5", "-"])
                .output()
                .unwrap();
            assert!(
                got.status.success(),
                "{} with {jobs} job(s) in flight: {}",
                s.display(),
                String::from_utf8_lossy(&got.stderr)
            );
            assert_eq!(
                hashes(&String::from_utf8_lossy(&got.stdout)),
                want,
                "{} with {jobs} job(s) in flight",
                s.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
