//! VP8: vpxenc streams (two-pass with hidden altref frames, several DCT
//! partitions, an odd size) -> client parser -> V4L2 jobs, one per frame.
//!
//! * `vp8_client_jobs_are_valid` (always runs): every job's controls pass
//!   the kernel's validation, references name earlier jobs, and the shown
//!   frames (shown jobs plus show-existing events) are as many as ffmpeg
//!   outputs.
//! * `vp8_decode_matches_ffmpeg`: the jobs decoded by the daemon's built-in
//!   VP8 backend (`backend::open(Codec::Vp8)`, FFmpeg), per-frame MD5 of
//!   the shown pictures against `ffmpeg -f framemd5`; 0 mismatches.
//!
//! Needs `vpxenc` (vpx-tools) and `ffmpeg`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use daedalus_client::vp8::{Vp8Parser, Vp8Stats};
use daedalus_client::{FrameEvent, FrameStreamParser, PictureInfo};
use daedalus_daemon::backend::{self, CaptureFormat, CaptureTarget, JobFlags, JobInput};
use decoder_core::ctrl::{validate_write, Codec, ControlValues};

mod common;
use common::{reference_md5s, run};

const CODEC: Codec = Codec::Vp8;

struct Stream {
    name: &'static str,
    size: (u32, u32),
    frames: u32,
    args: &'static [&'static str],
    ten_bit: bool,
}

fn streams() -> Vec<Stream> {
    vec![
        Stream {
            name: "twopass_altref_96x64",
            size: (96, 64),
            frames: 24,
            args: &["--auto-alt-ref=1", "--lag-in-frames=16", "--kf-max-dist=30"],
            ten_bit: false,
        },
        Stream {
            name: "four_partitions_odd_size_90x54",
            size: (90, 54),
            frames: 12,
            args: &[
                "--token-parts=2",
                "--auto-alt-ref=1",
                "--lag-in-frames=6",
                "--kf-max-dist=5",
            ],
            ten_bit: false,
        },
    ]
}

fn encode(dir: &Path, s: &Stream) -> PathBuf {
    let src = dir.join(format!("{}.y4m", s.name));
    run(Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!(
            "testsrc2=size={}x{}:rate=30,noise=alls=12:allf=t",
            s.size.0, s.size.1
        ))
        .args(["-frames:v", &s.frames.to_string(), "-pix_fmt", "yuv420p"])
        .arg(&src));
    let out = dir.join(format!("{}.ivf", s.name));
    run(Command::new("vpxenc")
        .args([
            "--quiet",
            "--ivf",
            "--codec=vp8",
            "--passes=2",
            "--cpu-used=8",
            "--threads=1",
        ])
        .arg(format!("--limit={}", s.frames))
        .args(s.args)
        .arg("-o")
        .arg(&out)
        .arg(&src));
    out
}

fn visible_bytes(buf: &[u8], info: &PictureInfo, sample: usize) -> Vec<u8> {
    let (cw, ch) = (info.coded.0 as usize, info.coded.1 as usize);
    let (w, h) = (info.visible.2 as usize, info.visible.3 as usize);
    let stride = cw * sample;
    let mut out = Vec::new();
    for y in 0..h {
        out.extend_from_slice(&buf[y * stride..y * stride + w * sample]);
    }
    let chroma = &buf[stride * ch..];
    for y in 0..h.div_ceil(2) {
        out.extend_from_slice(&chroma[y * stride..y * stride + 2 * w.div_ceil(2) * sample]);
    }
    out
}

struct Decoded {
    shown: Vec<String>,
    stats: Vp8Stats,
    jobs: usize,
}

/// Parses the stream, checks every job like the kernel and the frontend
/// would and, with `decode`, decodes it with the built-in backend.
fn process(file: &Path, size: (u32, u32), ten_bit: bool, decode: bool) -> Decoded {
    let mut parser = Vp8Parser::new(std::fs::read(file).unwrap()).unwrap();
    let mut backend = decode.then(|| {
        backend::open(CODEC)
            .unwrap_or_else(|e| panic!("the daemon has no working {CODEC:?} backend: {e}"))
    });
    let format = if ten_bit {
        CaptureFormat::P010
    } else {
        CaptureFormat::Nv12
    };
    let sb = format.sample_bytes();
    let mut current = ControlValues::defaults(CODEC);
    let mut seen = Vec::new();
    let mut buffers: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut out = Decoded {
        shown: Vec::new(),
        stats: Vp8Stats::default(),
        jobs: 0,
    };
    while let Some(ev) = parser.next_event().expect("parse") {
        match ev {
            FrameEvent::Decode { job, shown, .. } => {
                out.jobs += 1;
                assert!(!job.bitstream.is_empty());
                assert_eq!(
                    (job.picture.visible.2, job.picture.visible.3),
                    size,
                    "job {}: every frame has the key frame's size",
                    job.timestamp
                );
                for (id, bytes) in job.controls.iter() {
                    let v = validate_write(CODEC, id, bytes).unwrap_or_else(|e| {
                        panic!("job {}: control {id:#x} refused: {e}", job.timestamp)
                    });
                    assert_eq!(v, bytes, "validation changed control {id:#x}");
                    current.set_raw(id, v);
                }
                let mut refs = Vec::new();
                (CODEC.desc().reference_timestamps)(&current, &mut refs);
                for r in &refs {
                    assert!(seen.contains(r), "job {} references {r}", job.timestamp);
                }
                seen.push(job.timestamp);
                let info = job.picture;
                if let Some(b) = backend.as_mut() {
                    let (cw, ch) = info.coded;
                    let stride = cw as usize * sb;
                    let mut buf = vec![0u8; stride * (ch as usize + ch.div_ceil(2) as usize)];
                    let mut target =
                        CaptureTarget::contiguous(format, cw, ch, stride, &mut buf).unwrap();
                    let input = JobInput {
                        codec: CODEC,
                        controls: &current,
                        bitstream: &job.bitstream,
                        timestamp: job.timestamp,
                        flags: JobFlags::default(),
                        references: &refs,
                    };
                    b.decode(&input, &mut target)
                        .unwrap_or_else(|e| panic!("job {}: {e}", job.timestamp));
                    if shown {
                        out.shown.push(format!(
                            "{:x}",
                            md5::compute(visible_bytes(&buf, &info, sb))
                        ));
                    }
                    buffers.insert(job.timestamp, buf);
                } else if shown {
                    out.shown.push(String::new());
                }
            }
            FrameEvent::ShowExisting { timestamp, picture } => {
                assert!(seen.contains(&timestamp));
                match buffers.get(&timestamp) {
                    Some(buf) => out.shown.push(format!(
                        "{:x}",
                        md5::compute(visible_bytes(buf, &picture, sb))
                    )),
                    None => out.shown.push(String::new()),
                }
            }
        }
    }
    out.stats = parser.stats();
    out
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("daedalus-vp8-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn vp8_client_jobs_are_valid() {
    let dir = tmpdir("client");
    let mut total = Vp8Stats::default();
    for s in streams() {
        let file = encode(&dir, &s);
        let want = reference_md5s(&file, s.ten_bit);
        let got = process(&file, s.size, s.ten_bit, false);
        println!(
            "{:32} jobs {:3} shown {:3}/{:3} hidden {:2} keys {:2} partitions {}",
            s.name,
            got.jobs,
            got.shown.len(),
            want.len(),
            got.stats.hidden,
            got.stats.key_frames,
            got.stats.max_partitions,
        );
        assert_eq!(got.shown.len(), want.len(), "{}", s.name);
        total.hidden += got.stats.hidden;
        total.max_partitions = total.max_partitions.max(got.stats.max_partitions);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(total.hidden > 0 && total.max_partitions == 4, "{total:?}");
}

#[test]
fn vp8_decode_matches_ffmpeg() {
    let dir = tmpdir("decode");
    let (mut frames, mut bad) = (0, 0);
    for s in streams() {
        let file = encode(&dir, &s);
        let want = reference_md5s(&file, s.ten_bit);
        let got = process(&file, s.size, s.ten_bit, true);
        let mismatches = got.shown.iter().zip(&want).filter(|(g, w)| g != w).count()
            + got.shown.len().abs_diff(want.len());
        println!(
            "{:32} frames {:3} mismatches {mismatches}",
            s.name,
            want.len()
        );
        frames += want.len();
        bad += mismatches;
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "VP8: {} streams, {frames} frames, {bad} mismatches",
        streams().len()
    );
    assert_eq!(bad, 0);
}
