//! End to end HEVC: x265 streams -> client parser -> V4L2 jobs (controls
//! validated as the kernel would) -> FFmpeg backend writing NV12/P010 ->
//! display order -> per-frame MD5, compared with `ffmpeg -f framemd5` of
//! the same stream.
//!
//! Needs the `x265` and `ffmpeg` command-line tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use daedalus_client::hevc::{HevcParser, Packing};
use daedalus_client::{DisplayQueue, Job, PictureInfo, StreamParser};
use daedalus_daemon::backend::ffmpeg::FfmpegHevc;
use daedalus_daemon::backend::{
    Backend, CaptureFormat, CaptureTarget, DecodeError, DecodeOutcome, JobFlags, JobInput,
};
use decoder_core::ctrl::hevc::{V4l2CtrlHevcSliceParams, V4L2_CID_STATELESS_HEVC_SCALING_MATRIX};
use decoder_core::ctrl::{check_request, validate_write, Codec, ControlValues};

mod common;
use common::{reference_md5s, run};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("daedalus-hevc-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn encode(
    dir: &Path,
    name: &str,
    size: (u32, u32),
    frames: u32,
    ten_bit: bool,
    args: &[&str],
) -> PathBuf {
    let y4m = dir.join(format!("{name}.y4m"));
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
        .arg(if name.starts_with("speed") {
            // Camera-like noise: a realistic decoding load.
            format!(
                "testsrc2=size={}x{}:rate=25,noise=alls=14:allf=t",
                size.0, size.1
            )
        } else {
            format!("testsrc2=size={}x{}:rate=25", size.0, size.1)
        })
        .args([
            "-frames:v",
            &frames.to_string(),
            "-strict",
            "-1",
            "-pix_fmt",
        ])
        .arg(if ten_bit { "yuv420p10le" } else { "yuv420p" })
        .arg(&y4m));
    let out = dir.join(format!("{name}.hevc"));
    run(Command::new("x265")
        .args(["--log-level", "error", "--preset", "fast", "--input"])
        .arg(&y4m)
        .args(if ten_bit {
            &["--output-depth", "10", "--profile", "main10"][..]
        } else {
            &[][..]
        })
        .args(args)
        .arg("-o")
        .arg(&out));
    out
}

/// Tightly packed visible picture (what `ffmpeg -f framemd5` hashes).
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

/// Validates the job's controls as the kernel (and decoder-core) would.
fn validated(job: &Job) -> ControlValues {
    let mut c = ControlValues::defaults(Codec::Hevc);
    for (id, bytes) in job.controls.iter() {
        let v = validate_write(Codec::Hevc, id, bytes)
            .unwrap_or_else(|e| panic!("control {id:#x} refused: {e:?}"));
        c.set_raw(id, v);
    }
    check_request(Codec::Hevc, &c).expect("request check");
    c
}

/// A displayed picture: its info and CAPTURE bytes (`None` if its job
/// failed).
type Shown = (PictureInfo, Option<Vec<u8>>);

#[derive(Default, Debug)]
struct RunResult {
    /// MD5 of each decoded picture's visible area, by timestamp.
    by_ts: std::collections::HashMap<u64, String>,
    frames: usize,
    exact: usize,
    jobs: usize,
    errors: Vec<(usize, DecodeError)>,
}

/// Decodes `jobs` (optionally transformed) and compares with `want`.
fn decode_jobs(jobs: &[Job], ten_bit: bool, want: &[String]) -> RunResult {
    let mut backend = FfmpegHevc::new().unwrap();
    let format = if ten_bit {
        CaptureFormat::P010
    } else {
        CaptureFormat::Nv12
    };
    let sample = format.sample_bytes();
    let mut queue = DisplayQueue::new();
    let mut shown: Vec<String> = Vec::new();
    let mut r = RunResult::default();
    let mut buf: Vec<u8> = Vec::new();
    let emit = |out: Vec<(u64, Shown)>, shown: &mut Vec<String>| {
        for (_, (info, pic)) in out {
            shown.push(match pic {
                Some(p) => format!("{:x}", md5::compute(visible_bytes(&p, &info, sample))),
                None => String::new(),
            });
        }
    };
    for (i, job) in jobs.iter().enumerate() {
        let controls = validated(job);
        let mut refs = Vec::new();
        (Codec::Hevc.desc().reference_timestamps)(&controls, &mut refs);
        let (w, h) = job.picture.coded;
        let stride = w as usize * sample;
        if !job.flags.continues_picture {
            buf.clear();
            buf.resize(stride * h as usize * 3 / 2 + stride, 0x5a);
        }
        let mut out = CaptureTarget::contiguous(format, w, h, stride, &mut buf).unwrap();
        let input = JobInput {
            codec: Codec::Hevc,
            controls: &controls,
            bitstream: &job.bitstream,
            timestamp: job.timestamp,
            flags: JobFlags {
                more_slices: job.flags.more_slices,
                continues_picture: job.flags.continues_picture,
            },
            references: &refs,
        };
        r.jobs += 1;
        match backend.decode(&input, &mut out) {
            Ok(DecodeOutcome::Held) => {}
            Ok(DecodeOutcome::Decoded) => {
                r.by_ts.insert(
                    job.timestamp,
                    format!(
                        "{:x}",
                        md5::compute(visible_bytes(&buf, &job.picture, sample))
                    ),
                );
                let o = queue.push(
                    job.timestamp,
                    &job.picture,
                    (job.picture, Some(buf.clone())),
                );
                emit(o, &mut shown);
            }
            Err(e) => {
                r.errors.push((i, e));
                if !job.flags.more_slices {
                    let o = queue.push(job.timestamp, &job.picture, (job.picture, None));
                    emit(o, &mut shown);
                }
            }
        }
    }
    emit(queue.drain(), &mut shown);
    r.frames = shown.len();
    r.exact = shown.iter().zip(want).filter(|(a, b)| a == b).count();
    if r.exact != want.len() {
        for (i, (a, b)) in shown.iter().zip(want).enumerate() {
            if a != b {
                eprintln!("  frame {i}: got {a:?}, want {b}");
            }
        }
    }
    r
}

fn all_jobs(file: &Path, packing: Packing) -> Vec<Job> {
    collect(HevcParser::from_file(file, packing).unwrap())
}

fn collect(mut p: HevcParser) -> Vec<Job> {
    let mut jobs = Vec::new();
    while let Some(j) = p.next_job().unwrap() {
        jobs.push(j);
    }
    jobs
}

struct Stream {
    name: &'static str,
    size: (u32, u32),
    frames: u32,
    ten_bit: bool,
    args: &'static [&'static str],
    packings: &'static [Packing],
}

const PER_PIC: Packing = Packing::PicturePerJob;
const PER_SLICE_AB: Packing = Packing::SlicePerJob { annex_b: true };
const PER_SLICE_RAW: Packing = Packing::SlicePerJob { annex_b: false };

fn streams() -> Vec<Stream> {
    vec![
        Stream {
            name: "main_bframes_176x144",
            size: (176, 144),
            frames: 40,
            ten_bit: false,
            args: &[
                "--bframes",
                "4",
                "--b-adapt",
                "2",
                "--ref",
                "3",
                "--keyint",
                "20",
            ],
            packings: &[PER_PIC],
        },
        Stream {
            name: "main_odd_174x98",
            size: (174, 98),
            frames: 25,
            ten_bit: false,
            args: &["--bframes", "3", "--keyint", "12", "--no-open-gop"],
            packings: &[PER_PIC],
        },
        Stream {
            name: "main_3slices_wpp_176x144",
            size: (176, 144),
            frames: 20,
            ten_bit: false,
            args: &["--slices", "3", "--bframes", "2", "--keyint", "10"],
            packings: &[PER_PIC, PER_SLICE_AB, PER_SLICE_RAW],
        },
        Stream {
            name: "main_default_scaling_lists_256x144",
            size: (256, 144),
            frames: 12,
            ten_bit: false,
            args: &[
                "--scaling-list",
                "default",
                "--bframes",
                "2",
                "--keyint",
                "6",
            ],
            packings: &[PER_PIC],
        },
        Stream {
            // 35 CTB rows with WPP: 34 entry points per slice, more than
            // cros-codecs' slice header holds (own reader).
            name: "main_wpp_34_entry_points_64x560",
            size: (64, 560),
            frames: 8,
            ten_bit: false,
            args: &["--ctu", "16", "--bframes", "2", "--keyint", "4"],
            packings: &[PER_PIC],
        },
        Stream {
            name: "main10_176x144",
            size: (176, 144),
            frames: 25,
            ten_bit: true,
            args: &["--bframes", "3", "--keyint", "15"],
            packings: &[PER_PIC],
        },
    ]
}

#[test]
fn hevc_streams_decode_bit_exact_through_jobs() {
    daedalus_daemon::backend::ffmpeg::quiet_library_logs();
    let dir = tmpdir("e2e");
    let mut failures = Vec::new();
    for s in streams() {
        let file = encode(&dir, s.name, s.size, s.frames, s.ten_bit, s.args);
        let want = reference_md5s(&file, s.ten_bit);
        assert_eq!(want.len(), s.frames as usize, "{}", s.name);
        for &packing in s.packings {
            let jobs = all_jobs(&file, packing);
            if s.name.contains("scaling") {
                assert!(jobs[0]
                    .controls
                    .get_raw(V4L2_CID_STATELESS_HEVC_SCALING_MATRIX)
                    .is_some());
            }
            let r = decode_jobs(&jobs, s.ten_bit, &want);
            eprintln!(
                "{} {packing:?}: {}/{} frames exact, {} jobs, errors {:?}",
                s.name,
                r.exact,
                want.len(),
                r.jobs,
                r.errors
            );
            if r.exact != want.len() || r.frames != want.len() || !r.errors.is_empty() {
                failures.push(format!("{} {packing:?}", s.name));
            }
        }
        // The module's own slice header reader on every slice of the
        // stream gives the same jobs' pictures.
        let jobs = collect(
            HevcParser::from_file(&file, PER_PIC)
                .unwrap()
                .with_own_slice_reader(),
        );
        let r = decode_jobs(&jobs, s.ten_bit, &want);
        eprintln!(
            "{} own slice header reader: {}/{} frames exact, errors {:?}",
            s.name,
            r.exact,
            want.len(),
            r.errors
        );
        if r.exact != want.len() || !r.errors.is_empty() {
            failures.push(format!("{} own reader", s.name));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "not bit-exact: {failures:?}");
}

#[test]
fn hevc_corruption_and_missing_reference_recover_at_next_irap() {
    daedalus_daemon::backend::ffmpeg::quiet_library_logs();
    let dir = tmpdir("damage");
    let file = encode(
        &dir,
        "closed_gop",
        (176, 144),
        30,
        false,
        &[
            "--bframes",
            "0",
            "--keyint",
            "10",
            "--min-keyint",
            "10",
            "--no-open-gop",
        ],
    );
    let want = reference_md5s(&file, false);
    let jobs = all_jobs(&file, PER_PIC);
    assert_eq!(jobs.len(), 30);
    let clean = decode_jobs(&jobs, false, &want);
    assert_eq!(clean.exact, 30, "{:?}", clean.errors);

    // Damage the slice data of picture 4 (keep its header intact).
    let mut bad = jobs.clone();
    let n = bad[4].bitstream.len();
    for b in &mut bad[4].bitstream[n / 2..] {
        *b = 0xff;
    }
    let r = decode_jobs(&bad, false, &want);
    eprintln!("corrupt: {:?}", r.errors);
    assert!(
        matches!(r.errors.first(), Some((4, DecodeError::Corrupt(_)))),
        "{:?}",
        r.errors
    );
    // Pictures 5..9 wait for the IDR at 10; from there all is exact.
    assert!(r.errors[1..]
        .iter()
        .all(|(i, e)| (5..10).contains(i) && *e == DecodeError::WaitingForKeyframe));
    assert_eq!(r.exact, 30 - 6, "{:?}", r.errors);

    // Drop picture 13: picture 14 misses its reference.
    let mut dropped = jobs.clone();
    let gone = dropped.remove(13);
    let r = decode_jobs(&dropped, false, &want);
    assert!(
        matches!(r.errors.first(), Some((13, DecodeError::MissingReference(t))) if *t == gone.timestamp),
        "{:?}",
        r.errors
    );
    assert!(r.errors[1..]
        .iter()
        .all(|(i, e)| *i < 19 && *e == DecodeError::WaitingForKeyframe));

    // Open GOP: decoding restarts at a CRA picture after a lost picture.
    // Its RASL pictures fail alone (their references are gone, the session
    // is not reset); every other picture from the CRA on is exact.
    let file = encode(
        &dir,
        "open_gop",
        (176, 144),
        40,
        false,
        &[
            "--bframes",
            "3",
            "--keyint",
            "12",
            "--min-keyint",
            "12",
            "--open-gop",
        ],
    );
    let want = reference_md5s(&file, false);
    let jobs = all_jobs(&file, PER_PIC);
    let clean = decode_jobs(&jobs, false, &want);
    assert_eq!(clean.exact, want.len(), "{:?}", clean.errors);
    let nal_type = |j: &Job| j.controls.get_array::<V4l2CtrlHevcSliceParams>()[0].nal_unit_type;
    let cra = jobs
        .iter()
        .position(|j| nal_type(j) == 21)
        .expect("x265 open GOP stream has a CRA picture");
    let rasl = jobs.iter().filter(|j| matches!(nal_type(j), 8 | 9)).count();
    assert!(rasl > 0, "no RASL pictures");
    // Lose the latest pre-CRA picture the first RASL picture refers to.
    let first_rasl = cra + 1;
    assert!(matches!(nal_type(&jobs[first_rasl]), 8 | 9));
    let mut refs = Vec::new();
    let c = validated(&jobs[first_rasl]);
    (Codec::Hevc.desc().reference_timestamps)(&c, &mut refs);
    let victim = refs
        .iter()
        .filter(|&&t| t < jobs[cra].timestamp)
        .max()
        .copied()
        .expect("RASL picture refers to a picture before the CRA");
    let mut lost = jobs.clone();
    lost.retain(|j| j.timestamp != victim);
    let cra = cra - 1;
    let r = decode_jobs(&lost, false, &want);
    eprintln!("open GOP, lost picture: {:?}", r.errors);
    let mut rasl_errors = 0;
    for (i, j) in lost.iter().enumerate().skip(cra) {
        if matches!(nal_type(j), 8 | 9) && i < cra + 6 {
            assert!(
                matches!(
                    r.errors.iter().find(|e| e.0 == i),
                    Some((_, DecodeError::MissingReference(_)))
                ),
                "RASL job {i}"
            );
            rasl_errors += 1;
        } else {
            assert_eq!(
                r.by_ts.get(&j.timestamp),
                clean.by_ts.get(&j.timestamp),
                "job {i} (type {})",
                nal_type(j)
            );
        }
    }
    assert!(rasl_errors > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Decoding speed of the client + backend (parsing, controls, rebuilt
/// headers, NV12 copy) against libavcodec decoding the same 1080p stream
/// directly with one thread, in the same process (run with
/// `--release -- --ignored`).
#[test]
#[ignore = "timing; run in release mode"]
fn hevc_speed_vs_ffmpeg() {
    daedalus_daemon::backend::ffmpeg::quiet_library_logs();
    let dir = tmpdir("speed");
    let frames = 90;
    let file = encode(
        &dir,
        "speed_1080p",
        (1920, 1080),
        frames,
        false,
        &[
            "--preset",
            "ultrafast",
            "--ctu",
            "64",
            "--bframes",
            "3",
            "--keyint",
            "30",
        ],
    );
    // CPU time of this thread (ns on CPU from schedstat): the machine may
    // be shared, wall-clock time would measure the other load.
    let cpu = || -> f64 {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        s.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
    };
    // Best of 7, alternating the two decoders so that both see the same
    // machine load.
    let best2 = |a: &mut dyn FnMut(), b: &mut dyn FnMut()| {
        let (mut ta, mut tb) = (f64::MAX, f64::MAX);
        for _ in 0..7 {
            let t = cpu();
            a();
            ta = ta.min(cpu() - t);
            let t = cpu();
            b();
            tb = tb.min(cpu() - t);
        }
        (ta, tb)
    };
    let data = std::fs::read(&file).unwrap();
    let mut buf = Vec::new();
    let (direct, ours) = best2(
        &mut || {
            let n = daedalus_daemon::backend::ffmpeg::plain_decode(Codec::Hevc, &data).unwrap();
            assert_eq!(n, frames as usize);
        },
        &mut || {
            let mut parser = HevcParser::from_file(&file, PER_PIC).unwrap();
            let mut backend = FfmpegHevc::new().unwrap();
            let mut refs = Vec::new();
            let mut n = 0;
            while let Some(job) = parser.next_job().unwrap() {
                let (w, h) = job.picture.coded;
                buf.resize(w as usize * h as usize * 3 / 2, 0);
                let mut out =
                    CaptureTarget::contiguous(CaptureFormat::Nv12, w, h, w as usize, &mut buf)
                        .unwrap();
                refs.clear();
                (Codec::Hevc.desc().reference_timestamps)(&job.controls, &mut refs);
                let input = JobInput {
                    codec: Codec::Hevc,
                    controls: &job.controls,
                    bitstream: &job.bitstream,
                    timestamp: job.timestamp,
                    flags: JobFlags::default(),
                    references: &refs,
                };
                backend.decode(&input, &mut out).unwrap();
                n += 1;
            }
            assert_eq!(n, frames as usize);
        },
    );
    let (parse, _) = best2(
        &mut || {
            let mut parser = HevcParser::from_file(&file, PER_PIC).unwrap();
            while parser.next_job().unwrap().is_some() {}
        },
        &mut || {},
    );
    eprintln!(
        "  of which client parsing: {:.2} ms/frame",
        parse * 1e3 / f64::from(frames)
    );
    eprintln!(
        "HEVC 1080p x{frames}: plain libavcodec (1 thread) {:.1} fps, client+backend {:.1} fps, ratio {:.3}",
        f64::from(frames) / direct,
        f64::from(frames) / ours,
        direct / ours
    );
    let _ = std::fs::remove_dir_all(&dir);
}
