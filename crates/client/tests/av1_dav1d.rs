//! End to end AV1: aomenc streams -> client parser -> V4L2 jobs (controls
//! validated as the kernel would, plus the request check) -> dav1d backend
//! writing NV12/P010 into plain memory -> display order (shown frames and
//! show-existing frames) -> per-frame MD5, compared with
//! `ffmpeg -pix_fmt nv12|p010le -f framemd5` of the same stream.
//!
//! Needs `aomenc` and `ffmpeg` (.ci/install-deps: aom-tools, ffmpeg) and
//! libdav1d.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use daedalus_client::av1::{Av1Options, Av1Parser, Av1Stats};
use daedalus_client::{FrameEvent, FrameStreamParser, Job, PictureInfo};
use daedalus_daemon::backend::dav1d::{Dav1dAv1, Dav1dConfig};
use daedalus_daemon::backend::{
    Backend, CaptureFormat, CaptureTarget, DecodeError, DecodeOutcome, JobFlags, JobInput,
};
use decoder_core::ctrl::{check_request, validate_write, Codec, ControlValues};

mod common;
use common::{reference_md5s, run};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("daedalus-av1-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Stream {
    name: &'static str,
    size: (u32, u32),
    frames: u32,
    aomenc: &'static [&'static str],
    ten_bit: bool,
}

fn streams() -> Vec<Stream> {
    vec![
        Stream {
            name: "altref_hidden_show_existing_96x64",
            size: (96, 64),
            frames: 24,
            aomenc: &["--lag-in-frames=16", "--auto-alt-ref=1", "--kf-max-dist=30"],
            ten_bit: false,
        },
        Stream {
            name: "tiles_4x2_two_tile_groups_256x144",
            size: (256, 144),
            frames: 10,
            aomenc: &[
                "--tile-columns=2",
                "--tile-rows=1",
                "--num-tile-groups=2",
                "--lag-in-frames=8",
            ],
            ten_bit: false,
        },
        Stream {
            name: "odd_size_66x50",
            size: (66, 50),
            frames: 12,
            aomenc: &["--lag-in-frames=6", "--kf-max-dist=5"],
            ten_bit: false,
        },
        Stream {
            name: "film_grain_test_vector_96x64",
            size: (96, 64),
            frames: 12,
            aomenc: &["--film-grain-test=1", "--lag-in-frames=8"],
            ten_bit: false,
        },
        Stream {
            name: "many_show_existing_96x64",
            size: (96, 64),
            frames: 30,
            aomenc: &[
                "--enable-fwd-kf=1",
                "--kf-min-dist=8",
                "--kf-max-dist=8",
                "--lag-in-frames=19",
            ],
            ten_bit: false,
        },
        Stream {
            name: "superres_128x64",
            size: (128, 64),
            frames: 10,
            aomenc: &[
                "--superres-mode=1",
                "--superres-denominator=12",
                "--lag-in-frames=4",
            ],
            ten_bit: false,
        },
        Stream {
            name: "monochrome_96x64",
            size: (96, 64),
            frames: 6,
            aomenc: &["--monochrome", "--lag-in-frames=4"],
            ten_bit: false,
        },
        Stream {
            name: "svt_av1_176x144",
            size: (176, 144),
            frames: 16,
            aomenc: &["-c:v", "libsvtav1", "-preset", "12"],
            ten_bit: false,
        },
        Stream {
            name: "rav1e_176x144",
            size: (176, 144),
            frames: 12,
            aomenc: &["-c:v", "librav1e", "-speed", "10"],
            ten_bit: false,
        },
        Stream {
            name: "ten_bit_p010_80x48",
            size: (80, 48),
            frames: 10,
            aomenc: &["--bit-depth=10", "--lag-in-frames=8"],
            ten_bit: true,
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
    if s.aomenc.first().is_some_and(|a| a.starts_with("-c:v")) {
        // Another encoder through ffmpeg (libsvtav1, librav1e).
        run(Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
            .arg(&src)
            .args(s.aomenc)
            .arg(&out));
        return out;
    }
    run(Command::new("aomenc")
        .args(["--quiet", "--ivf", "--cpu-used=8", "--threads=1"])
        .arg(format!("--limit={}", s.frames))
        .args(s.aomenc)
        .arg("-o")
        .arg(&out)
        .arg(&src));
    out
}

/// Tightly packed visible NV12 / P010 bytes of a coded-size buffer.
fn visible_bytes(buf: &[u8], info: &PictureInfo, sample: usize) -> Vec<u8> {
    let (cw, ch) = (info.coded.0 as usize, info.coded.1 as usize);
    let (l, t, w, h) = (
        info.visible.0 as usize,
        info.visible.1 as usize,
        info.visible.2 as usize,
        info.visible.3 as usize,
    );
    let stride = cw * sample;
    let mut out = Vec::new();
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

/// Validates every control of the job like the kernel + frontend would and
/// returns the effective values.
fn effective_controls(current: &mut ControlValues, job: &Job) -> ControlValues {
    for (id, bytes) in job.controls.iter() {
        let v = validate_write(Codec::Av1, id, bytes)
            .unwrap_or_else(|e| panic!("job {}: control {id:#x} refused: {e}", job.timestamp));
        assert_eq!(v, bytes, "validation changed control {id:#x}");
        current.set_raw(id, v);
    }
    check_request(Codec::Av1, current)
        .unwrap_or_else(|e| panic!("job {}: request refused: {e}", job.timestamp));
    current.clone()
}

/// Turns a job holding exactly one `OBU_FRAME` into what GStreamer queues:
/// the OBU payload without its header, tile offsets shifted accordingly.
fn to_gstreamer_payload(job: &mut Job) -> bool {
    use decoder_core::ctrl::av1::V4l2CtrlAv1TileGroupEntry;
    use decoder_core::ctrl::CompoundControl;
    use zerocopy::IntoBytes;
    let b = &job.bitstream;
    if b.is_empty() || (b[0] >> 3) & 0xf != 6 || b[0] & 0x04 != 0 {
        return false;
    }
    let mut pos = 1;
    let mut size = 0usize;
    let mut shift = 0;
    loop {
        let x = b[pos];
        pos += 1;
        size |= usize::from(x & 0x7f) << shift;
        shift += 7;
        if x & 0x80 == 0 {
            break;
        }
    }
    if pos + size != b.len() {
        return false;
    }
    let payload = b[pos..].to_vec();
    let mut entries = job.controls.get_array::<V4l2CtrlAv1TileGroupEntry>();
    let mut raw = Vec::new();
    for e in &mut entries {
        e.tile_offset -= pos as u32;
        raw.extend_from_slice(e.as_bytes());
    }
    job.controls.set_raw(V4l2CtrlAv1TileGroupEntry::ID, raw);
    job.bitstream = payload;
    true
}

#[derive(Default, Debug)]
struct Outcome {
    shown: Vec<String>,
    jobs: usize,
    errors: Vec<(u64, DecodeError)>,
    stats: Av1Stats,
    gst_jobs: usize,
    replays: u64,
}

fn decode(
    file: &Path,
    opts: Av1Options,
    ten_bit: bool,
    gstreamer_payload: bool,
    mut damage: impl FnMut(usize, &mut Job),
) -> Outcome {
    let mut parser = Av1Parser::new(std::fs::read(file).unwrap(), opts).unwrap();
    let mut backend = Dav1dAv1::with_config(Dav1dConfig::default()).unwrap();
    let format = if ten_bit {
        CaptureFormat::P010
    } else {
        CaptureFormat::Nv12
    };
    let sb = format.sample_bytes();
    let mut current = ControlValues::defaults(Codec::Av1);
    let mut buffers: HashMap<u64, Option<Vec<u8>>> = HashMap::new();
    let mut out = Outcome::default();
    let md5 = |buf: &[u8], info: &PictureInfo| {
        format!("{:x}", md5::compute(visible_bytes(buf, info, sb)))
    };
    while let Some(ev) = parser.next_event().expect("parse") {
        match ev {
            FrameEvent::Decode { mut job, shown, .. } => {
                damage(out.jobs, &mut job);
                if gstreamer_payload && to_gstreamer_payload(&mut job) {
                    out.gst_jobs += 1;
                }
                out.jobs += 1;
                let ctrls = effective_controls(&mut current, &job);
                let mut refs = Vec::new();
                (Codec::Av1.desc().reference_timestamps)(&ctrls, &mut refs);
                let info = job.picture;
                let (cw, ch) = info.coded;
                let stride = cw as usize * sb;
                let mut buf = vec![0u8; stride * (ch as usize + ch.div_ceil(2) as usize)];
                let mut target =
                    CaptureTarget::contiguous(format, cw, ch, stride, &mut buf).unwrap();
                let input = JobInput {
                    codec: Codec::Av1,
                    controls: &ctrls,
                    bitstream: &job.bitstream,
                    timestamp: job.timestamp,
                    flags: JobFlags::default(),
                    references: &refs,
                };
                match backend.decode(&input, &mut target) {
                    Ok(DecodeOutcome::Decoded) => {
                        if shown {
                            out.shown.push(md5(&buf, &info));
                        }
                        buffers.insert(job.timestamp, Some(buf));
                    }
                    Ok(DecodeOutcome::Held) => panic!("AV1 job held"),
                    Err(e) => {
                        if shown {
                            out.shown.push(format!("error: {e}"));
                        }
                        buffers.insert(job.timestamp, None);
                        out.errors.push((job.timestamp, e));
                    }
                }
            }
            FrameEvent::ShowExisting { timestamp, picture } => {
                match buffers.get(&timestamp) {
                    Some(Some(buf)) => out.shown.push(md5(buf, &picture)),
                    Some(None) => out.shown.push("error: shown frame failed".into()),
                    None => panic!("show-existing of unknown job {timestamp}"),
                };
            }
        }
    }
    out.stats = parser.stats();
    out.replays = backend.replayed_key_frame_shows();
    out
}

fn compare(name: &str, got: &[String], want: &[String]) -> usize {
    let mut bad = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            bad += 1;
            if bad <= 5 {
                eprintln!("  {name}: frame {i}: got {g}, ffmpeg {w}");
            }
        }
    }
    bad + got.len().abs_diff(want.len())
}

#[test]
fn av1_streams_match_ffmpeg() {
    let dir = tmpdir("streams");
    let (mut total_frames, mut total_bad, mut total_streams) = (0, 0, 0);
    let mut summary = Vec::new();
    for s in streams() {
        let file = encode(&dir, &s);
        let want = reference_md5s(&file, s.ten_bit);
        assert!(!want.is_empty(), "{}: ffmpeg decoded nothing", s.name);
        for (mode, opts, gst) in [
            (
                "synthesized-seq",
                Av1Options {
                    include_sequence_header: false,
                },
                false,
            ),
            (
                "seq-in-buffer",
                Av1Options {
                    include_sequence_header: true,
                },
                false,
            ),
            (
                "gstreamer-payload",
                Av1Options {
                    include_sequence_header: false,
                },
                true,
            ),
        ] {
            let got = decode(&file, opts, s.ten_bit, gst, |_, _| {});
            let bad = compare(s.name, &got.shown, &want);
            let line = format!(
                "{:40} {:17} jobs {:3} shown {:3}/{:3} hidden {:2} show-existing {:2} keys {:2} tiles {:2} grain {:2} gst-jobs {:3} key-show replays {} errors {} mismatches {bad}",
                s.name,
                mode,
                got.jobs,
                got.shown.len(),
                want.len(),
                got.stats.hidden,
                got.stats.show_existing,
                got.stats.key_frames,
                got.stats.max_tiles,
                got.stats.film_grain,
                got.gst_jobs,
                got.replays,
                got.errors.len(),
            );
            println!("{line}");
            if !got.errors.is_empty() {
                println!("  errors: {:?}", &got.errors[..got.errors.len().min(3)]);
            }
            summary.push((s.name, mode, got.stats, bad, got.errors.len()));
            total_frames += want.len();
            total_bad += bad;
            total_streams += 1;
        }
    }
    println!("AV1: {total_streams} stream runs, {total_frames} frames, {total_bad} mismatches");
    let _ = std::fs::remove_dir_all(&dir);
    // The streams must exercise what they are named after.
    let find = |name: &str| summary.iter().find(|s| s.0 == name).unwrap().2;
    let alt = find("altref_hidden_show_existing_96x64");
    assert!(alt.hidden > 0 && alt.show_existing > 0, "{alt:?}");
    assert!(find("tiles_4x2_two_tile_groups_256x144").max_tiles == 8);
    assert!(find("film_grain_test_vector_96x64").film_grain > 0);
    assert!(find("superres_128x64").superres > 0);
    for (name, mode, _, bad, errors) in &summary {
        assert_eq!((*bad, *errors), (0, 0), "{name} ({mode})");
    }
}

#[test]
fn av1_corrupt_frame_recovers_at_next_key_frame() {
    let dir = tmpdir("corrupt");
    let s = Stream {
        name: "corrupt_96x64",
        size: (96, 64),
        frames: 24,
        aomenc: &["--kf-min-dist=8", "--kf-max-dist=8", "--lag-in-frames=0"],
        ten_bit: false,
    };
    let file = encode(&dir, &s);
    let want = reference_md5s(&file, false);
    // Job 3 (an inter frame) loses the second half of its tile data.
    let got = decode(&file, Av1Options::default(), false, false, |i, job| {
        if i == 3 {
            let n = job.bitstream.len();
            job.bitstream.truncate(n / 2);
            job.bitstream[2..].iter_mut().for_each(|b| *b = 0xff);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "corrupt stream: {} jobs, {} errors: {:?}",
        got.jobs,
        got.errors.len(),
        got.errors
    );
    assert_eq!(got.shown.len(), want.len());
    assert!(
        matches!(got.errors.first(), Some((_, DecodeError::Corrupt(_)))),
        "{:?}",
        got.errors
    );
    // Jobs 4..7 wait for the key frame at job 8; from there on, all match.
    assert!(got.errors[1..]
        .iter()
        .all(|(_, e)| matches!(e, DecodeError::WaitingForKeyframe)));
    for (i, (g, w)) in got.shown.iter().zip(&want).enumerate() {
        if !(3..8).contains(&i) {
            assert_eq!(g, w, "frame {i}");
        } else {
            assert!(g.starts_with("error"), "frame {i}");
        }
    }
}

/// Decodes one job into a fresh buffer of the given format.
fn decode_one(
    backend: &mut Dav1dAv1,
    current: &mut ControlValues,
    job: &Job,
    format: CaptureFormat,
    coded: (u32, u32),
) -> Result<DecodeOutcome, DecodeError> {
    let ctrls = effective_controls(current, job);
    let mut refs = Vec::new();
    (Codec::Av1.desc().reference_timestamps)(&ctrls, &mut refs);
    let sb = format.sample_bytes();
    let stride = coded.0 as usize * sb;
    let mut buf = vec![0u8; stride * (coded.1 as usize + coded.1.div_ceil(2) as usize)];
    let mut target = CaptureTarget::contiguous(format, coded.0, coded.1, stride, &mut buf).unwrap();
    let input = JobInput {
        codec: Codec::Av1,
        controls: &ctrls,
        bitstream: &job.bitstream,
        timestamp: job.timestamp,
        flags: JobFlags::default(),
        references: &refs,
    };
    backend.decode(&input, &mut target)
}

#[test]
fn av1_backend_refuses_what_it_cannot_do_and_resyncs() {
    let dir = tmpdir("refusals");
    let s = Stream {
        name: "refusals_96x64",
        size: (96, 64),
        frames: 12,
        aomenc: &["--kf-min-dist=6", "--kf-max-dist=6", "--lag-in-frames=0"],
        ten_bit: false,
    };
    let file = encode(&dir, &s);
    let mut parser = Av1Parser::new(std::fs::read(&file).unwrap(), Av1Options::default()).unwrap();
    let mut jobs = Vec::new();
    while let Some(FrameEvent::Decode { job, .. }) = parser.next_event().unwrap() {
        jobs.push(*job);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(jobs.len(), 12);
    let coded = jobs[0].picture.coded;
    let mut backend = Dav1dAv1::new().unwrap();
    let mut cur = ControlValues::defaults(Codec::Av1);

    // An inter frame first: the session waits for a key frame.
    assert_eq!(
        decode_one(&mut backend, &mut cur, &jobs[1], CaptureFormat::Nv12, coded),
        Err(DecodeError::WaitingForKeyframe)
    );
    // 8-bit picture into a P010 buffer, and into a too small buffer.
    assert!(matches!(
        decode_one(&mut backend, &mut cur, &jobs[0], CaptureFormat::P010, coded),
        Err(DecodeError::FormatMismatch(_))
    ));
    backend.reset();
    assert!(matches!(
        decode_one(
            &mut backend,
            &mut cur,
            &jobs[0],
            CaptureFormat::Nv12,
            (64, 64)
        ),
        Err(DecodeError::FormatMismatch(_))
    ));
    backend.reset();
    // Key frame, then skip job 1: job 2 references a picture the session
    // never decoded.
    assert_eq!(
        decode_one(&mut backend, &mut cur, &jobs[0], CaptureFormat::Nv12, coded),
        Ok(DecodeOutcome::Decoded)
    );
    assert!(matches!(
        decode_one(&mut backend, &mut cur, &jobs[2], CaptureFormat::Nv12, coded),
        Err(DecodeError::MissingReference(_))
    ));
    // Reset: waits for the next key frame (job 6), then decodes on.
    assert_eq!(
        decode_one(&mut backend, &mut cur, &jobs[3], CaptureFormat::Nv12, coded),
        Err(DecodeError::WaitingForKeyframe)
    );
    for job in &jobs[6..] {
        assert_eq!(
            decode_one(&mut backend, &mut cur, job, CaptureFormat::Nv12, coded),
            Ok(DecodeOutcome::Decoded),
            "job {}",
            job.timestamp
        );
    }
    // A job of another codec is refused.
    let mut other = jobs[6].clone();
    other.codec = Codec::Vp9;
    let ctrls = cur.clone();
    let mut buf = vec![0u8; 4096 * 4];
    let mut target = CaptureTarget::contiguous(
        CaptureFormat::Nv12,
        coded.0,
        coded.1,
        coded.0 as usize,
        &mut buf,
    )
    .unwrap();
    let input = JobInput {
        codec: Codec::Vp9,
        controls: &ctrls,
        bitstream: &other.bitstream,
        timestamp: 99,
        flags: JobFlags::default(),
        references: &[],
    };
    // As every backend: a job of another codec is refused as invalid.
    assert!(matches!(
        backend.decode(&input, &mut target),
        Err(DecodeError::InvalidControls(_))
    ));
}

/// A `show_existing_frame` of a key frame refreshes every reference slot
/// but reaches the daemon as no job; the backend replays it to dav1d when the
/// next job's slots say it happened. (libaom does not emit forward key
/// frames at the speeds used here, so the job's slots are edited to say so.)
#[test]
fn av1_key_frame_show_existing_is_replayed_to_dav1d() {
    use decoder_core::ctrl::av1::V4l2CtrlAv1Frame;
    use decoder_core::ctrl::CompoundControl;
    use zerocopy::IntoBytes;
    let dir = tmpdir("replay");
    let s = Stream {
        name: "replay_96x64",
        size: (96, 64),
        frames: 4,
        aomenc: &["--lag-in-frames=0"],
        ten_bit: false,
    };
    let file = encode(&dir, &s);
    let mut parser = Av1Parser::new(std::fs::read(&file).unwrap(), Av1Options::default()).unwrap();
    let mut jobs = Vec::new();
    while let Some(FrameEvent::Decode { job, .. }) = parser.next_event().unwrap() {
        jobs.push(*job);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let coded = jobs[0].picture.coded;
    let mut backend = Dav1dAv1::new().unwrap();
    let mut cur = ControlValues::defaults(Codec::Av1);
    for job in &jobs[..2] {
        assert_eq!(
            decode_one(&mut backend, &mut cur, job, CaptureFormat::Nv12, coded),
            Ok(DecodeOutcome::Decoded)
        );
    }
    let key_ts = jobs[0].timestamp;
    let mut job = jobs[2].clone();
    let mut f = job.controls.get::<V4l2CtrlAv1Frame>().unwrap();
    assert_ne!(f.reference_frame_ts, [key_ts; 8], "job 1 refreshed a slot");
    f.reference_frame_ts = [key_ts; 8];
    job.controls
        .set_raw(V4l2CtrlAv1Frame::ID, f.as_bytes().to_vec());
    assert_eq!(backend.replayed_key_frame_shows(), 0);
    assert_eq!(
        decode_one(&mut backend, &mut cur, &job, CaptureFormat::Nv12, coded),
        Ok(DecodeOutcome::Decoded)
    );
    assert_eq!(backend.replayed_key_frame_shows(), 1);
}

/// Decode time per frame with 1 and 2 dav1d threads (the machine has 2
/// cores shared by every session). Informational: run with `--ignored`.
#[test]
#[ignore = "timing measurement"]
fn av1_dav1d_thread_timing() {
    let dir = tmpdir("timing");
    let s = Stream {
        name: "timing_640x360",
        size: (640, 360),
        frames: 30,
        aomenc: &["--tile-columns=1", "--lag-in-frames=16"],
        ten_bit: false,
    };
    let file = encode(&dir, &s);
    for threads in [1, 2] {
        let mut parser =
            Av1Parser::new(std::fs::read(&file).unwrap(), Av1Options::default()).unwrap();
        let mut backend = Dav1dAv1::with_config(Dav1dConfig {
            n_threads: threads,
            apply_grain: true,
        })
        .unwrap();
        let mut cur = ControlValues::defaults(Codec::Av1);
        let mut n = 0;
        let mut spent = std::time::Duration::ZERO;
        while let Some(ev) = parser.next_event().unwrap() {
            if let FrameEvent::Decode { job, .. } = ev {
                let t = std::time::Instant::now();
                decode_one(
                    &mut backend,
                    &mut cur,
                    &job,
                    CaptureFormat::Nv12,
                    job.picture.coded,
                )
                .unwrap();
                spent += t.elapsed();
                n += 1;
            }
        }
        println!(
            "dav1d n_threads={threads}: {n} frames 640x360, {:.2} ms/frame (incl. validation and copy)",
            spent.as_secs_f64() * 1000.0 / n as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
