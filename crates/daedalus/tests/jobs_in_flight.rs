//! `daedalus decode --jobs-in-flight 1` and `2` (the default) decode the
//! same frames as FFmpeg: with two jobs in the daemon at once, a job
//! referencing the picture still being decoded gets that job's CAPTURE
//! buffer, and results come back in order (H.264 with B-frames, VP9 with
//! hidden altref frames).

mod common;

use std::path::PathBuf;
use std::process::Command;

/// The hash column of a framemd5 text.
fn hashes(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(',').nth(5).map(|h| h.trim().to_string()))
        .collect()
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("daedalus-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn one_or_two_jobs_in_flight_decode_the_same_frames_as_ffmpeg() {
    let dir = scratch("jif");
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

/// With every picture referencing only the one before it, the stack
/// cycles through three CAPTURE buffers with one or two jobs in flight:
/// with two, the queued job's buffer is the one the decode loop freed on
/// the last result, not one pooled before it (a fourth, colder in caches).
#[test]
fn a_chain_of_single_references_cycles_through_three_capture_buffers() {
    let dir = scratch("cycle");
    let streams = [
        common::encode(
            &dir,
            "p.h264",
            "128x96",
            40,
            &[
                "-c:v",
                "libx264",
                "-profile:v",
                "baseline",
                "-refs",
                "1",
                "-bf",
                "0",
                "-g",
                "1000",
            ],
        ),
        common::encode(
            &dir,
            "p.ivf",
            "128x96",
            40,
            &[
                "-c:v",
                "libvpx",
                "-auto-alt-ref",
                "0",
                "-lag-in-frames",
                "0",
                "-g",
                "1000",
            ],
        ),
    ];
    for s in &streams {
        for jobs in ["1", "2"] {
            let got = Command::new(env!("CARGO_BIN_EXE_daedalus"))
                .arg("decode")
                .arg(s)
                .args(["--jobs-in-flight", jobs, "--job-stats"])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&got.stderr);
            assert!(got.status.success(), "{}: {err}", s.display());
            let reuse = err
                .lines()
                .find_map(|l| l.strip_prefix("CAPTURE buffer reuse: "))
                .unwrap_or_else(|| panic!("{}: no reuse line in {err}", s.display()));
            assert_eq!(
                reuse,
                "median every 3 pictures",
                "{} with {jobs} job(s) in flight",
                s.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
