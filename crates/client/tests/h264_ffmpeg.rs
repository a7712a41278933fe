//! End to end H.264: x264 streams -> client parser -> V4L2 jobs (controls
//! validated as the kernel would) -> FFmpeg backend writing NV12/P010 into
//! plain memory -> display order -> per-frame MD5, compared with
//! `ffmpeg -f framemd5` of the same stream.
//!
//! Needs the `x264` and `ffmpeg` command-line tools (.ci/install-deps).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use daedalus_client::h264::{H264Parser, Packing};
use daedalus_client::{DisplayQueue, Job, PictureInfo, StreamParser};
use daedalus_daemon::backend::ffmpeg::FfmpegH264;
use daedalus_daemon::backend::{
    Backend, CaptureFormat, CaptureTarget, DecodeError, DecodeOutcome, JobFlags, JobInput,
};
use decoder_core::ctrl::h264::{
    V4l2CtrlH264DecodeParams, V4l2CtrlH264SliceParams, V4L2_H264_DPB_ENTRY_FLAG_ACTIVE,
    V4L2_H264_FRAME_REF,
};
use decoder_core::ctrl::{validate_write, Codec, ControlValues};

mod common;
use common::{reference_md5s, run};

fn tool(name: &str) {
    let ok = Command::new(name)
        .arg("-version")
        .output()
        .or_else(|_| Command::new(name).arg("--version").output())
        .is_ok();
    assert!(
        ok,
        "`{name}` not found: install it (.ci/install-deps installs x264 and ffmpeg)"
    );
}

struct Stream {
    name: &'static str,
    size: (u32, u32),
    frames: u32,
    x264: &'static [&'static str],
    packings: &'static [Packing],
    ten_bit: bool,
}

const PER_PIC: Packing = Packing::PicturePerJob;
const PER_SLICE_RAW: Packing = Packing::SlicePerJob { annex_b: false };
const PER_SLICE_AB: Packing = Packing::SlicePerJob { annex_b: true };

fn streams() -> Vec<Stream> {
    vec![
        Stream {
            name: "baseline_cavlc_176x100",
            size: (176, 100),
            frames: 30,
            x264: &["--profile", "baseline", "--keyint", "12", "--ref", "3"],
            packings: &[PER_PIC, PER_SLICE_RAW],
            ten_bit: false,
        },
        Stream {
            name: "high_bpyramid_weighted_8x8_320x240",
            size: (320, 240),
            frames: 40,
            x264: &[
                "--profile",
                "high",
                "--bframes",
                "3",
                "--b-pyramid",
                "normal",
                "--b-adapt",
                "2",
                "--weightp",
                "2",
                "--weightb",
                "--8x8dct",
                "--ref",
                "4",
                "--keyint",
                "20",
                "--direct",
                "auto",
            ],
            packings: &[PER_PIC],
            ten_bit: false,
        },
        Stream {
            name: "main_4slices_bframes_176x144",
            size: (176, 144),
            frames: 25,
            x264: &[
                "--profile",
                "main",
                "--slices",
                "4",
                "--bframes",
                "2",
                "--b-pyramid",
                "strict",
                "--ref",
                "3",
                "--keyint",
                "10",
            ],
            packings: &[PER_PIC, PER_SLICE_RAW, PER_SLICE_AB],
            ten_bit: false,
        },
        Stream {
            name: "high_cqm_jvt_scaling_lists_208x120",
            size: (208, 120),
            frames: 20,
            x264: &[
                "--profile",
                "high",
                "--cqm",
                "jvt",
                "--bframes",
                "2",
                "--8x8dct",
            ],
            packings: &[PER_PIC],
            ten_bit: false,
        },
        Stream {
            name: "interlaced_mbaff_tff_176x144",
            size: (176, 144),
            frames: 16,
            x264: &["--interlaced", "--tff", "--bframes", "2", "--ref", "3"],
            packings: &[PER_PIC, PER_SLICE_RAW],
            ten_bit: false,
        },
        Stream {
            name: "high10_p010_176x100",
            size: (176, 100),
            frames: 15,
            x264: &[
                "--profile",
                "high10",
                "--output-depth",
                "10",
                "--bframes",
                "2",
            ],
            packings: &[PER_PIC],
            ten_bit: true,
        },
    ]
}

/// Tightly packed visible NV12 (or P010) of a coded-size picture, the bytes
/// `ffmpeg -pix_fmt nv12|p010le -f framemd5` hashes.
fn visible_bytes(buf: &[u8], info: &PictureInfo, sample: usize) -> Vec<u8> {
    let (cw, ch) = (info.coded.0 as usize, info.coded.1 as usize);
    let (l, t, w, h) = (
        info.visible.0 as usize,
        info.visible.1 as usize,
        info.visible.2 as usize,
        info.visible.3 as usize,
    );
    let stride = cw * sample;
    let mut out = Vec::with_capacity(w * h * 3 / 2 * sample);
    for y in t..t + h {
        out.extend_from_slice(&buf[y * stride + l * sample..y * stride + (l + w) * sample]);
    }
    let chroma = &buf[stride * ch..];
    for y in t / 2..(t + h).div_ceil(2) {
        let row = &chroma[y * stride..];
        out.extend_from_slice(&row[(l & !1) * sample..((l & !1) + 2 * w.div_ceil(2)) * sample]);
    }
    out
}

struct RunResult {
    frames: usize,
    mismatches: usize,
    ctrl_errors: usize,
    decode_errors: usize,
    list_errors: usize,
    jobs: usize,
}

fn decode_stream(file: &Path, packing: Packing, ten_bit: bool, want: &[String]) -> RunResult {
    let mut parser = H264Parser::from_file(file, packing).unwrap();
    let mut backend = FfmpegH264::new().unwrap();
    let format = if ten_bit {
        CaptureFormat::P010
    } else {
        CaptureFormat::Nv12
    };
    let sample = format.sample_bytes();
    let mut effective = ControlValues::defaults(Codec::H264);
    let mut buffers: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut display: DisplayQueue<(PictureInfo, Vec<u8>)> = DisplayQueue::new();
    let mut shown = Vec::new();
    let mut r = RunResult {
        frames: 0,
        mismatches: 0,
        ctrl_errors: 0,
        decode_errors: 0,
        list_errors: 0,
        jobs: 0,
    };
    while let Some(job) = parser.next_job().unwrap() {
        let Job {
            controls,
            bitstream,
            timestamp,
            flags,
            picture,
            ..
        } = job;
        r.jobs += 1;
        // What the frontend does: validate each control of the request as
        // the kernel would, apply it, resolve the references.
        for (id, bytes) in controls.iter() {
            match validate_write(Codec::H264, id, bytes) {
                Ok(v) => effective.set_raw(id, v),
                Err(e) => {
                    eprintln!("control {id:#x} refused: {e}");
                    r.ctrl_errors += 1;
                }
            }
        }
        let mut refs = Vec::new();
        (Codec::H264.desc().reference_timestamps)(&effective, &mut refs);
        // Every active reference list entry names an active DPB entry.
        let dp: V4l2CtrlH264DecodeParams = effective.get().unwrap();
        let sp: V4l2CtrlH264SliceParams = effective.get().unwrap();
        for list in 0..2 {
            for e in sp.active_refs(list) {
                let ok = e.dpb_index().is_some_and(|i| {
                    dp.dpb[i].flags & V4L2_H264_DPB_ENTRY_FLAG_ACTIVE != 0
                        && e.fields == V4L2_H264_FRAME_REF
                });
                if !ok {
                    r.list_errors += 1;
                }
            }
        }
        let info = picture;
        let (w, h) = info.coded;
        let buf = buffers
            .entry(timestamp)
            .or_insert_with(|| vec![0u8; (w * h) as usize * 3 / 2 * sample]);
        let mut target = CaptureTarget::contiguous(format, w, h, w as usize * sample, buf).unwrap();
        let input = JobInput {
            codec: Codec::H264,
            controls: &effective,
            bitstream: &bitstream,
            timestamp,
            flags: JobFlags {
                more_slices: flags.more_slices,
                continues_picture: flags.continues_picture,
            },
            references: &refs,
        };
        match backend.decode(&input, &mut target) {
            Ok(DecodeOutcome::Held) => assert!(flags.more_slices),
            Ok(DecodeOutcome::Decoded) => {
                assert!(!flags.more_slices);
                let data = buffers.remove(&timestamp).unwrap();
                shown.extend(display.push(timestamp, &info, (info, data)));
            }
            Err(e) => {
                eprintln!("job {timestamp}: {e}");
                r.decode_errors += 1;
                buffers.remove(&timestamp);
            }
        }
    }
    shown.extend(display.drain());
    for (i, (_, (info, data))) in shown.iter().enumerate() {
        let md5 = format!("{:x}", md5::compute(visible_bytes(data, info, sample)));
        if want.get(i) != Some(&md5) {
            r.mismatches += 1;
            if r.mismatches <= 3 {
                eprintln!("frame {i}: got {md5}, want {:?}", want.get(i));
            }
        }
    }
    r.frames = shown.len();
    r
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("daedalus-h264-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn h264_streams_decode_bit_exact_through_jobs() {
    tool("x264");
    tool("ffmpeg");
    let dir = tmpdir();
    let mut total_frames = 0;
    let mut failures = Vec::new();
    for s in streams() {
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
            .arg(format!("testsrc2=size={}x{}:rate=25", s.size.0, s.size.1))
            .args(["-frames:v", &s.frames.to_string(), "-pix_fmt", "yuv420p"])
            .arg(&src));
        let file = dir.join(format!("{}.264", s.name));
        run(Command::new("x264")
            .args(["--quiet", "--threads", "1"])
            .args(s.x264)
            .arg("-o")
            .arg(&file)
            .arg(&src));
        let want = reference_md5s(&file, s.ten_bit);
        assert_eq!(
            want.len(),
            s.frames as usize,
            "{}: ffmpeg frame count",
            s.name
        );
        for &p in s.packings {
            let r = decode_stream(&file, p, s.ten_bit, &want);
            println!(
                "{:<36} {:<32} jobs {:>3} frames {:>3}/{:>3} mismatches {} ctrl_errors {} \
                 decode_errors {} ref_list_errors {}",
                s.name,
                format!("{p:?}"),
                r.jobs,
                r.frames,
                want.len(),
                r.mismatches,
                r.ctrl_errors,
                r.decode_errors,
                r.list_errors
            );
            total_frames += r.frames;
            if r.frames != want.len()
                || r.mismatches + r.ctrl_errors + r.decode_errors + r.list_errors != 0
            {
                failures.push(format!("{} {p:?}", s.name));
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    println!("total frames compared: {total_frames}");
    assert!(failures.is_empty(), "failed: {failures:?}");
}

#[test]
fn missing_reference_resets_and_resyncs_at_idr() {
    tool("x264");
    tool("ffmpeg");
    let dir = tmpdir().join("resync");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.y4m");
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
        .arg("testsrc2=size=176x100:rate=25")
        .args(["-frames:v", "20", "-pix_fmt", "yuv420p"])
        .arg(&src));
    let file = dir.join("s.264");
    run(Command::new("x264")
        .args([
            "--quiet",
            "--keyint",
            "10",
            "--min-keyint",
            "10",
            "--bframes",
            "0",
        ])
        .args(["--scenecut", "0", "-o"])
        .arg(&file)
        .arg(&src));
    let want = reference_md5s(&file, false);
    let mut parser = H264Parser::from_file(&file, Packing::PicturePerJob).unwrap();
    let mut backend = FfmpegH264::new().unwrap();
    let mut effective = ControlValues::defaults(Codec::H264);
    let mut outcomes = Vec::new();
    let mut n = 0;
    while let Some(job) = parser.next_job().unwrap() {
        n += 1;
        if n == 3 {
            continue; // dropped job: picture 3 never reaches the decoder
        }
        effective.merge(&job.controls);
        let mut refs = Vec::new();
        (Codec::H264.desc().reference_timestamps)(&effective, &mut refs);
        let info = job.picture;
        let (w, h) = info.coded;
        let mut buf = vec![0u8; (w * h * 3 / 2) as usize];
        let mut t =
            CaptureTarget::contiguous(CaptureFormat::Nv12, w, h, w as usize, &mut buf).unwrap();
        let input = JobInput {
            codec: Codec::H264,
            controls: &effective,
            bitstream: &job.bitstream,
            timestamp: job.timestamp,
            flags: JobFlags::default(),
            references: &refs,
        };
        let res = backend.decode(&input, &mut t);
        if res.is_ok() {
            // With no B-frames decode order is display order.
            let md5 = format!("{:x}", md5::compute(visible_bytes(&buf, &info, 1)));
            assert_eq!(Some(&md5), want.get(n - 1), "picture {n}");
        }
        outcomes.push(res);
    }
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(outcomes.len(), 19);
    assert!(outcomes[..2].iter().all(|r| r.is_ok()));
    // Picture 4 references the dropped picture 3.
    assert!(matches!(outcomes[2], Err(DecodeError::MissingReference(_))));
    // Pictures 5..10 wait for the IDR at picture 11.
    assert!(outcomes[3..9]
        .iter()
        .all(|r| *r == Err(DecodeError::WaitingForKeyframe)));
    assert!(outcomes[9..].iter().all(|r| r.is_ok()), "{outcomes:?}");
    println!("resync: {outcomes:?}");
}

#[test]
fn corrupt_slice_fails_the_job_not_the_session() {
    daedalus_daemon::backend::ffmpeg::quiet_library_logs();
    tool("x264");
    tool("ffmpeg");
    let dir = tmpdir().join("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.y4m");
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
        .arg("testsrc2=size=176x100:rate=25")
        .args(["-frames:v", "12", "-pix_fmt", "yuv420p"])
        .arg(&src));
    let file = dir.join("s.264");
    run(Command::new("x264")
        .args([
            "--quiet",
            "--keyint",
            "6",
            "--min-keyint",
            "6",
            "--bframes",
            "0",
        ])
        .args(["--scenecut", "0", "--no-cabac", "-o"])
        .arg(&file)
        .arg(&src));
    let mut parser = H264Parser::from_file(&file, Packing::PicturePerJob).unwrap();
    let mut backend = FfmpegH264::new().unwrap();
    let mut effective = ControlValues::defaults(Codec::H264);
    let mut ok = Vec::new();
    let mut n = 0;
    while let Some(mut job) = parser.next_job().unwrap() {
        n += 1;
        if n == 2 {
            // Pseudo-random garbage after the first bytes of the slice, and
            // the slice cut short.
            let mut x: u32 = 12345;
            for b in job.bitstream[12..].iter_mut() {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                *b = (x >> 16) as u8;
            }
            let half = job.bitstream.len() / 2;
            job.bitstream.truncate(half);
        }
        effective.merge(&job.controls);
        let mut refs = Vec::new();
        (Codec::H264.desc().reference_timestamps)(&effective, &mut refs);
        let info = job.picture;
        let (w, h) = info.coded;
        let mut buf = vec![0u8; (w * h * 3 / 2) as usize];
        let mut t =
            CaptureTarget::contiguous(CaptureFormat::Nv12, w, h, w as usize, &mut buf).unwrap();
        let input = JobInput {
            codec: Codec::H264,
            controls: &effective,
            bitstream: &job.bitstream,
            timestamp: job.timestamp,
            flags: JobFlags::default(),
            references: &refs,
        };
        ok.push(backend.decode(&input, &mut t).is_ok());
    }
    std::fs::remove_dir_all(&dir).ok();
    println!("corrupt: {ok:?}");
    assert_eq!(ok.len(), 12);
    assert!(ok[0]);
    assert!(!ok[1], "the corrupt picture must fail");
    assert!(
        ok[6..].iter().all(|&b| b),
        "decoding resumes at the next IDR"
    );
}

/// Tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Decodes `file` once with random damage (bitstream bytes, truncation,
/// control bytes that pass validation), then, on the same session after a
/// reset, cleanly: no panic, and the clean pass is bit-exact.
fn fuzz_then_clean(file: &Path, want: &[String], seed: u64) -> (usize, usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut backend = FfmpegH264::new().unwrap();
    let mut effective = ControlValues::defaults(Codec::H264);
    let mut failed = 0;
    let packing = if seed & 1 == 0 {
        PER_PIC
    } else {
        PER_SLICE_RAW
    };
    let mut parser = H264Parser::from_file(file, packing).unwrap();
    let mut buffers: HashMap<u64, Vec<u8>> = HashMap::new();
    while let Some(mut job) = parser.next_job().unwrap() {
        match rng.below(6) {
            0 | 1 => {
                let n = job.bitstream.len();
                for _ in 0..=rng.below(8) {
                    let i = 4 + rng.below((n - 4) as u64) as usize;
                    job.bitstream[i] = rng.next() as u8;
                }
            }
            2 => {
                let n = job.bitstream.len();
                job.bitstream
                    .truncate(5 + rng.below((n - 4) as u64) as usize);
            }
            3 => {
                let ids: Vec<u32> = job.controls.iter().map(|(id, _)| id).collect();
                let id = ids[rng.below(ids.len() as u64) as usize];
                let mut bytes = job.controls.get_raw(id).unwrap().to_vec();
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] = rng.next() as u8;
                job.controls.set_raw(id, bytes);
            }
            _ => {}
        }
        for (id, bytes) in job.controls.iter() {
            if let Ok(v) = validate_write(Codec::H264, id, bytes) {
                effective.set_raw(id, v);
            }
        }
        let mut refs = Vec::new();
        (Codec::H264.desc().reference_timestamps)(&effective, &mut refs);
        let (w, h) = job.picture.coded;
        let buf = buffers
            .entry(job.timestamp)
            .or_insert_with(|| vec![0u8; (w * h * 3 / 2) as usize]);
        let mut t = CaptureTarget::contiguous(CaptureFormat::Nv12, w, h, w as usize, buf).unwrap();
        let input = JobInput {
            codec: Codec::H264,
            controls: &effective,
            bitstream: &job.bitstream,
            timestamp: job.timestamp,
            flags: JobFlags {
                more_slices: job.flags.more_slices,
                continues_picture: job.flags.continues_picture,
            },
            references: &refs,
        };
        if backend.decode(&input, &mut t).is_err() {
            failed += 1;
        }
        if !job.flags.more_slices {
            buffers.remove(&job.timestamp);
        }
    }
    // Clean pass on the same session.
    backend.reset();
    let mut parser = H264Parser::from_file(file, PER_PIC).unwrap();
    let mut effective = ControlValues::defaults(Codec::H264);
    let mut display = DisplayQueue::new();
    let mut shown = Vec::new();
    while let Some(job) = parser.next_job().unwrap() {
        effective.merge(&job.controls);
        let mut refs = Vec::new();
        (Codec::H264.desc().reference_timestamps)(&effective, &mut refs);
        let info = job.picture;
        let (w, h) = info.coded;
        let mut buf = vec![0u8; (w * h * 3 / 2) as usize];
        let mut t =
            CaptureTarget::contiguous(CaptureFormat::Nv12, w, h, w as usize, &mut buf).unwrap();
        let input = JobInput {
            codec: Codec::H264,
            controls: &effective,
            bitstream: &job.bitstream,
            timestamp: job.timestamp,
            flags: JobFlags::default(),
            references: &refs,
        };
        backend.decode(&input, &mut t).unwrap();
        shown.extend(display.push(job.timestamp, &info, (info, buf)));
    }
    shown.extend(display.drain());
    let mismatches = shown
        .iter()
        .zip(want)
        .filter(|((_, (info, data)), w)| {
            format!("{:x}", md5::compute(visible_bytes(data, info, 1))) != **w
        })
        .count();
    assert_eq!(shown.len(), want.len());
    (failed, mismatches)
}

#[test]
fn damaged_jobs_never_panic_and_the_session_recovers() {
    daedalus_daemon::backend::ffmpeg::quiet_library_logs();
    tool("x264");
    tool("ffmpeg");
    let dir = tmpdir().join("fuzz");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.y4m");
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
        .arg("testsrc2=size=176x144:rate=25")
        .args(["-frames:v", "24", "-pix_fmt", "yuv420p"])
        .arg(&src));
    let file = dir.join("s.264");
    run(Command::new("x264")
        .args([
            "--quiet",
            "--slices",
            "2",
            "--bframes",
            "2",
            "--keyint",
            "8",
            "-o",
        ])
        .arg(&file)
        .arg(&src));
    let want = reference_md5s(&file, false);
    let (mut failed, mut mismatches) = (0, 0);
    for seed in 1..=24 {
        let (f, m) = fuzz_then_clean(&file, &want, seed);
        failed += f;
        mismatches += m;
    }
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "fuzz: 24 damaged runs, {failed} jobs failed cleanly, clean-pass mismatches {mismatches}"
    );
    assert!(failed > 0, "damage went unnoticed everywhere");
    assert_eq!(mismatches, 0);
}
