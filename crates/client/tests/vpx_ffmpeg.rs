//! VP8 and VP9 through the FFmpeg backend: vpxenc IVF streams (altref /
//! hidden frames, odd sizes, 10-bit profile 2) fed frame by frame as V4L2
//! jobs (controls filled from cros-codecs' frame header parsers, reference
//! slots tracked as a client does), each job's CAPTURE buffer hashed, and
//! the shown pictures compared with `ffmpeg -f framemd5` of the same file.
//!
//! Needs the `vpxenc` and `ffmpeg` command-line tools.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cros_codecs::codec::vp8::parser::Parser as Vp8Parser;
use cros_codecs::codec::vp9::parser::{FrameType, Parser as Vp9Parser};
use daedalus_client::ivf::IvfReader;
use daedalus_daemon::backend::ffmpeg::FfmpegVpx;
use daedalus_daemon::backend::{
    Backend, CaptureFormat, CaptureTarget, DecodeError, DecodeOutcome, JobFlags, JobInput,
};
use decoder_core::ctrl::vp8::{
    V4l2CtrlVp8Frame, V4L2_VP8_FRAME_FLAG_KEY_FRAME, V4L2_VP8_FRAME_FLAG_SHOW_FRAME,
};
use decoder_core::ctrl::vp9::{
    V4l2CtrlVp9Frame, V4L2_VP9_FRAME_FLAG_INTRA_ONLY, V4L2_VP9_FRAME_FLAG_KEY_FRAME,
    V4L2_VP9_FRAME_FLAG_SHOW_FRAME,
};
use decoder_core::ctrl::{Codec, CompoundControl, ControlValues};
use zerocopy::IntoBytes;

mod common;
use common::{reference_md5s, run};

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("daedalus-vpx-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Encodes `frames` frames of a moving test pattern with vpxenc.
fn encode(
    dir: &Path,
    name: &str,
    size: (u32, u32),
    frames: u32,
    ten_bit: bool,
    args: &[&str],
) -> PathBuf {
    let y4m = dir.join(format!("{name}.y4m"));
    let pix = if ten_bit { "yuv420p10le" } else { "yuv420p" };
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
        .arg(format!("testsrc2=size={}x{}:rate=25", size.0, size.1))
        .args([
            "-frames:v",
            &frames.to_string(),
            "-pix_fmt",
            pix,
            "-strict",
            "-1",
        ])
        .arg(&y4m));
    let ivf = dir.join(format!("{name}.ivf"));
    run(Command::new("vpxenc")
        .args([
            "--quiet",
            "--ivf",
            "--good",
            "--passes=2",
            "--cpu-used=4",
            "--end-usage=q",
            "--cq-level=30",
        ])
        .arg(format!("--limit={frames}"))
        .args(args)
        .arg("-o")
        .arg(&ivf)
        .arg(&y4m));
    ivf
}

/// One frame as a client would queue it.
struct VpxJob {
    controls: ControlValues,
    bitstream: Vec<u8>,
    timestamp: u64,
    references: Vec<u64>,
    shown: bool,
    /// VP9 `show_existing_frame`: no job, shows this earlier picture.
    show_existing: Option<u64>,
    size: (u32, u32),
}

fn set<T: CompoundControl + IntoBytes + zerocopy::Immutable>(c: &mut ControlValues, v: &T) {
    c.set_raw(T::ID, v.as_bytes().to_vec());
}

/// VP8 jobs: controls from cros-codecs' frame header, LAST / GOLDEN /
/// ALTREF tracked with the copy and refresh flags.
fn vp8_jobs(file: &Path) -> Vec<VpxJob> {
    let mut ivf = IvfReader::open(file).unwrap();
    let mut parser = Vp8Parser::default();
    let (mut last, mut golden, mut alt) = (0u64, 0u64, 0u64);
    let mut jobs = Vec::new();
    let mut ts = 1000;
    let mut size = (0u16, 0u16);
    while let Some((_, data)) = ivf.next_frame().unwrap() {
        let data = data.to_vec();
        let f = parser.parse_frame(&data).unwrap();
        let h = &f.header;
        // Only key frames code the size.
        if h.key_frame {
            size = (h.width, h.height);
        }
        let mut c = ControlValues::defaults(Codec::Vp8);
        let mut v = V4l2CtrlVp8Frame::default_value();
        (v.width, v.height) = size;
        v.version = h.version;
        v.first_part_size = h.first_part_size;
        v.num_dct_parts = h.num_dct_partitions() as u8;
        v.dct_part_sizes = h.partition_size;
        v.flags = if h.key_frame {
            V4L2_VP8_FRAME_FLAG_KEY_FRAME
        } else {
            0
        } | if h.show_frame {
            V4L2_VP8_FRAME_FLAG_SHOW_FRAME
        } else {
            0
        };
        v.last_frame_ts = last;
        v.golden_frame_ts = golden;
        v.alt_frame_ts = alt;
        set(&mut c, &v);
        let references = if h.key_frame {
            vec![]
        } else {
            vec![last, golden, alt]
        };
        jobs.push(VpxJob {
            controls: c,
            bitstream: data.clone(),
            timestamp: ts,
            references,
            shown: h.show_frame,
            show_existing: None,
            size: (u32::from(size.0), u32::from(size.1)),
        });
        if h.key_frame {
            (last, golden, alt) = (ts, ts, ts);
        } else {
            let (ol, og, oa) = (last, golden, alt);
            golden = if h.refresh_golden_frame {
                ts
            } else {
                match h.copy_buffer_to_golden {
                    1 => ol,
                    2 => oa,
                    _ => og,
                }
            };
            alt = if h.refresh_alternate_frame {
                ts
            } else {
                match h.copy_buffer_to_alternate {
                    1 => ol,
                    2 => og,
                    _ => oa,
                }
            };
            if h.refresh_last {
                last = ts;
            }
        }
        ts += 1000;
    }
    jobs
}

/// VP9 jobs: one per frame of each superframe, the 8 reference slots
/// tracked with `refresh_frame_flags`.
fn vp9_jobs(file: &Path) -> Vec<VpxJob> {
    let mut ivf = IvfReader::open(file).unwrap();
    let mut parser = Vp9Parser::default();
    let mut slots = [0u64; 8];
    let mut jobs = Vec::new();
    let mut ts = 1000;
    let mut size = (0, 0);
    let mut bit_depth = 8;
    while let Some((_, data)) = ivf.next_frame().unwrap() {
        let data = data.to_vec();
        for f in parser.parse_chunk(&data).unwrap() {
            let h = &f.header;
            let bytes = f.as_ref().to_vec();
            if h.show_existing_frame {
                jobs.push(VpxJob {
                    controls: ControlValues::new(),
                    bitstream: Vec::new(),
                    timestamp: 0,
                    references: vec![],
                    shown: true,
                    show_existing: Some(slots[usize::from(h.frame_to_show_map_idx)]),
                    size,
                });
                continue;
            }
            let key = h.frame_type == FrameType::KeyFrame;
            if key || h.intra_only {
                bit_depth = h.bit_depth as u8;
            }
            size = (h.width, h.height);
            let mut c = ControlValues::defaults(Codec::Vp9);
            let mut v = V4l2CtrlVp9Frame::default_value();
            v.frame_width_minus_1 = (h.width - 1) as u16;
            v.frame_height_minus_1 = (h.height - 1) as u16;
            v.render_width_minus_1 = (h.render_width.max(1) - 1) as u16;
            v.render_height_minus_1 = (h.render_height.max(1) - 1) as u16;
            v.profile = h.profile as u8;
            v.uncompressed_header_size = h.uncompressed_header_size_in_bytes;
            v.compressed_header_size = h.header_size_in_bytes;
            v.bit_depth = bit_depth;
            v.flags = if key {
                V4L2_VP9_FRAME_FLAG_KEY_FRAME
            } else {
                0
            } | if h.show_frame {
                V4L2_VP9_FRAME_FLAG_SHOW_FRAME
            } else {
                0
            } | if h.intra_only {
                V4L2_VP9_FRAME_FLAG_INTRA_ONLY
            } else {
                0
            };
            let intra = key || h.intra_only;
            if !intra {
                v.last_frame_ts = slots[usize::from(h.ref_frame_idx[0])];
                v.golden_frame_ts = slots[usize::from(h.ref_frame_idx[1])];
                v.alt_frame_ts = slots[usize::from(h.ref_frame_idx[2])];
            }
            set(&mut c, &v);
            let references = if intra {
                vec![]
            } else {
                vec![v.last_frame_ts, v.golden_frame_ts, v.alt_frame_ts]
            };
            jobs.push(VpxJob {
                controls: c,
                bitstream: bytes,
                timestamp: ts,
                references,
                shown: h.show_frame,
                show_existing: None,
                size,
            });
            let refresh = if key { 0xff } else { h.refresh_frame_flags };
            for (i, s) in slots.iter_mut().enumerate() {
                if refresh & (1 << i) != 0 {
                    *s = ts;
                }
            }
            ts += 1000;
        }
    }
    jobs
}

/// CAPTURE geometry: the frame size rounded up to 16, as a driver would
/// negotiate it.
fn capture_size(size: (u32, u32)) -> (u32, u32) {
    (size.0.next_multiple_of(16), size.1.next_multiple_of(16))
}

/// Tightly packed visible picture (what `ffmpeg -f framemd5` hashes).
fn visible(buf: &[u8], coded: (u32, u32), size: (u32, u32), sample: usize) -> Vec<u8> {
    let stride = coded.0 as usize * sample;
    let (w, h) = (size.0 as usize, size.1 as usize);
    let mut out = Vec::new();
    for y in 0..h {
        out.extend_from_slice(&buf[y * stride..y * stride + w * sample]);
    }
    let chroma = &buf[stride * coded.1 as usize..];
    for y in 0..h.div_ceil(2) {
        out.extend_from_slice(&chroma[y * stride..y * stride + 2 * w.div_ceil(2) * sample]);
    }
    out
}

struct Outcome {
    shown: Vec<String>,
    jobs: usize,
    hidden: usize,
    errors: Vec<(usize, DecodeError)>,
}

fn decode(codec: Codec, jobs: &[VpxJob], ten_bit: bool) -> Outcome {
    let mut backend = FfmpegVpx::new(codec).unwrap();
    let format = if ten_bit {
        CaptureFormat::P010
    } else {
        CaptureFormat::Nv12
    };
    let sample = format.sample_bytes();
    let mut pictures: HashMap<u64, String> = HashMap::new();
    let mut o = Outcome {
        shown: Vec::new(),
        jobs: 0,
        hidden: 0,
        errors: Vec::new(),
    };
    let mut buf = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        if let Some(ts) = j.show_existing {
            o.shown.push(pictures.get(&ts).cloned().unwrap_or_default());
            continue;
        }
        let coded = capture_size(j.size);
        let stride = coded.0 as usize * sample;
        buf.clear();
        buf.resize(stride * coded.1 as usize * 3 / 2, 0xaa);
        let mut out =
            CaptureTarget::contiguous(format, coded.0, coded.1, stride, &mut buf).unwrap();
        let input = JobInput {
            codec,
            controls: &j.controls,
            bitstream: &j.bitstream,
            timestamp: j.timestamp,
            flags: JobFlags::default(),
            references: &j.references,
        };
        o.jobs += 1;
        match backend.decode(&input, &mut out) {
            Ok(DecodeOutcome::Decoded) => {
                let md5 = format!("{:x}", md5::compute(visible(&buf, coded, j.size, sample)));
                pictures.insert(j.timestamp, md5.clone());
                if j.shown {
                    o.shown.push(md5);
                } else {
                    o.hidden += 1;
                }
            }
            Ok(DecodeOutcome::Held) => panic!("frame job held"),
            Err(e) => {
                o.errors.push((i, e));
                if j.shown {
                    o.shown.push(String::new());
                }
            }
        }
    }
    o
}

struct Case {
    name: &'static str,
    codec: Codec,
    size: (u32, u32),
    frames: u32,
    ten_bit: bool,
    args: &'static [&'static str],
    /// The stream must contain hidden (altref) frames.
    hidden: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "vp8_altref_176x144",
            codec: Codec::Vp8,
            size: (176, 144),
            frames: 40,
            ten_bit: false,
            args: &[
                "--codec=vp8",
                "--auto-alt-ref=1",
                "--lag-in-frames=16",
                "--kf-max-dist=25",
            ],
            hidden: true,
        },
        Case {
            name: "vp8_odd_175x99",
            codec: Codec::Vp8,
            size: (175, 99),
            frames: 20,
            ten_bit: false,
            args: &["--codec=vp8", "--lag-in-frames=0"],
            hidden: false,
        },
        Case {
            name: "vp9_altref_176x144",
            codec: Codec::Vp9,
            size: (176, 144),
            frames: 40,
            ten_bit: false,
            args: &[
                "--codec=vp9",
                "--auto-alt-ref=1",
                "--lag-in-frames=16",
                "--kf-max-dist=30",
            ],
            hidden: true,
        },
        Case {
            name: "vp9_odd_altref_174x99",
            codec: Codec::Vp9,
            size: (174, 99),
            frames: 30,
            ten_bit: false,
            args: &["--codec=vp9", "--auto-alt-ref=1", "--lag-in-frames=16"],
            hidden: true,
        },
        Case {
            name: "vp9_profile2_10bit_altref_160x96",
            codec: Codec::Vp9,
            size: (160, 96),
            frames: 30,
            ten_bit: true,
            args: &[
                "--codec=vp9",
                "--profile=2",
                "--bit-depth=10",
                "--input-bit-depth=10",
                "--auto-alt-ref=1",
                "--lag-in-frames=16",
            ],
            hidden: true,
        },
    ]
}

#[test]
fn vp8_vp9_streams_decode_bit_exact() {
    daedalus_daemon::backend::ffmpeg::quiet_library_logs();
    let dir = tmpdir();
    let mut failures = Vec::new();
    for c in cases() {
        let file = encode(&dir, c.name, c.size, c.frames, c.ten_bit, c.args);
        let want = reference_md5s(&file, c.ten_bit);
        let jobs = match c.codec {
            Codec::Vp8 => vp8_jobs(&file),
            _ => vp9_jobs(&file),
        };
        let o = decode(c.codec, &jobs, c.ten_bit);
        let exact = o.shown.iter().zip(&want).filter(|(a, b)| a == b).count();
        eprintln!(
            "{}: {} jobs ({} hidden), {}/{} shown frames exact, errors {:?}",
            c.name,
            o.jobs,
            o.hidden,
            exact,
            want.len(),
            o.errors
        );
        if o.shown.len() != want.len() || exact != want.len() || !o.errors.is_empty() {
            failures.push(c.name);
        }
        if c.hidden && o.hidden == 0 {
            failures.push(c.name);
            eprintln!("{}: expected hidden frames", c.name);
        }
        assert_eq!(want.len(), c.frames as usize, "{}", c.name);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "not bit-exact: {failures:?}");
}

#[test]
fn vpx_missing_reference_and_corruption_recover_at_key_frame() {
    daedalus_daemon::backend::ffmpeg::quiet_library_logs();
    let dir = tmpdir().join("damage");
    std::fs::create_dir_all(&dir).unwrap();
    for (codec, args) in [
        (
            Codec::Vp8,
            &[
                "--codec=vp8",
                "--kf-max-dist=10",
                "--kf-min-dist=10",
                "--auto-alt-ref=0",
                "--lag-in-frames=0",
            ][..],
        ),
        (
            Codec::Vp9,
            &[
                "--codec=vp9",
                "--kf-max-dist=10",
                "--kf-min-dist=10",
                "--auto-alt-ref=0",
                "--lag-in-frames=0",
            ][..],
        ),
    ] {
        let file = encode(&dir, &format!("{codec:?}"), (96, 64), 25, false, args);
        let want = reference_md5s(&file, false);
        let mut jobs = match codec {
            Codec::Vp8 => vp8_jobs(&file),
            _ => vp9_jobs(&file),
        };
        let clean = decode(codec, &jobs, false);
        assert_eq!(clean.shown, want, "{codec:?} clean decode");
        // Drop job 3 (a seek): job 4 names it as LAST.
        let dropped = jobs.remove(3);
        let o = decode(codec, &jobs, false);
        assert!(
            matches!(o.errors.first(), Some((3, DecodeError::MissingReference(t))) if *t == dropped.timestamp),
            "{codec:?}: {:?}",
            o.errors
        );
        // Jobs 4.. up to the key frame at frame 10 (job 9) wait for it;
        // from there on every frame matches.
        assert!(o.errors[1..]
            .iter()
            .all(|(i, e)| *i < 9 && *e == DecodeError::WaitingForKeyframe));
        assert_eq!(o.shown[9..], want[10..], "{codec:?} after the key frame");
        jobs.insert(3, dropped);
        // Corrupt the body of job 5: that job fails, the next ones wait for
        // the key frame, decoding is exact again from it.
        let n = jobs[5].bitstream.len();
        for b in &mut jobs[5].bitstream[n / 3..] {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        let o = decode(codec, &jobs, false);
        eprintln!("{codec:?} corrupt: {:?}", o.errors);
        assert_eq!(o.shown[10..], want[10..], "{codec:?} after corruption");
        assert_eq!(o.shown[..5], want[..5]);
        // Damaged payloads that still parse are decoded (wrongly, as any
        // decoder would), never a panic; the key frame resyncs.
        assert!(o.errors.iter().all(|(i, _)| (5..10).contains(i)));
        // A truncated frame is refused; the following frames wait for the
        // key frame, which decodes exactly again.
        let keep = match codec {
            Codec::Vp8 => jobs[5].bitstream.len() / 4,
            // VP9's last tile has no size field: cut inside the compressed
            // header, which the controls give the size of.
            _ => {
                let f: V4l2CtrlVp9Frame = jobs[5].controls.get().unwrap();
                usize::from(f.uncompressed_header_size) + usize::from(f.compressed_header_size) / 2
            }
        };
        jobs[5].bitstream.truncate(keep);
        let o = decode(codec, &jobs, false);
        eprintln!("{codec:?} truncated: {:?}", o.errors);
        assert!(
            matches!(o.errors.first(), Some((5, DecodeError::Corrupt(_)))),
            "{codec:?}: {:?}",
            o.errors
        );
        assert!(o.errors[1..]
            .iter()
            .all(|(i, e)| (6..10).contains(i) && *e == DecodeError::WaitingForKeyframe));
        assert_eq!(o.errors.len(), 5);
        assert_eq!(o.shown[10..], want[10..], "{codec:?} after truncation");
        // A frame whose controls contradict the bitstream is refused
        // without touching the session.
        let mut bad = jobs[10].controls.clone();
        match codec {
            Codec::Vp8 => {
                let mut f: V4l2CtrlVp8Frame = bad.get().unwrap();
                f.flags ^= V4L2_VP8_FRAME_FLAG_KEY_FRAME;
                set(&mut bad, &f);
            }
            _ => {
                let mut f: V4l2CtrlVp9Frame = bad.get().unwrap();
                f.frame_width_minus_1 += 2;
                set(&mut bad, &f);
            }
        }
        let mut backend = FfmpegVpx::new(codec).unwrap();
        let mut buf = vec![0u8; 96 * 64 * 3 / 2];
        let mut out = CaptureTarget::contiguous(CaptureFormat::Nv12, 96, 64, 96, &mut buf).unwrap();
        let job = JobInput {
            codec,
            controls: &bad,
            bitstream: &jobs[10].bitstream,
            timestamp: 1,
            flags: JobFlags::default(),
            references: &[],
        };
        assert!(matches!(
            backend.decode(&job, &mut out),
            Err(DecodeError::InvalidControls(_))
        ));
        // 8-bit frames into a P010 buffer are refused.
        let mut buf = vec![0u8; 96 * 2 * 64 * 3 / 2];
        let mut out =
            CaptureTarget::contiguous(CaptureFormat::P010, 96, 64, 192, &mut buf).unwrap();
        let job = JobInput {
            controls: &jobs[10].controls,
            ..job
        };
        assert!(matches!(
            backend.decode(&job, &mut out),
            Err(DecodeError::FormatMismatch(_))
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Decoding speed of the VP9 backend (header checks, reference slots,
/// capture, P010/NV12 copy) against libavcodec decoding the same frames
/// directly with one thread in this process, in thread CPU time (run with
/// `--release -- --ignored`).
#[test]
#[ignore = "timing; run in release mode"]
fn vp9_speed_vs_plain_libavcodec() {
    daedalus_daemon::backend::ffmpeg::quiet_library_logs();
    let dir = tmpdir().join("speed");
    std::fs::create_dir_all(&dir).unwrap();
    let frames = 60;
    let file = encode(
        &dir,
        "vp9_1080p",
        (1920, 1080),
        frames,
        false,
        &[
            "--codec=vp9",
            "--auto-alt-ref=1",
            "--lag-in-frames=16",
            "--cpu-used=8",
        ],
    );
    let jobs = vp9_jobs(&file);
    let packets: Vec<&[u8]> = jobs
        .iter()
        .filter(|j| j.show_existing.is_none())
        .map(|j| &j.bitstream[..])
        .collect();
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
    let (direct, ours) = best2(
        &mut || {
            daedalus_daemon::backend::ffmpeg::plain_decode_packets(Codec::Vp9, &packets).unwrap();
        },
        &mut || {
            let o = decode_fast(Codec::Vp9, &jobs);
            assert_eq!(o, packets.len());
        },
    );
    eprintln!(
        "VP9 1080p x{frames}: plain libavcodec (1 thread) {:.1} fps, backend {:.1} fps, ratio {:.3}",
        f64::from(frames) / direct,
        f64::from(frames) / ours,
        direct / ours
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Decodes every job into one reused NV12 buffer; returns the jobs decoded.
fn decode_fast(codec: Codec, jobs: &[VpxJob]) -> usize {
    let mut backend = FfmpegVpx::new(codec).unwrap();
    let mut buf = Vec::new();
    let mut n = 0;
    for j in jobs.iter().filter(|j| j.show_existing.is_none()) {
        let coded = capture_size(j.size);
        buf.resize(coded.0 as usize * coded.1 as usize * 3 / 2, 0);
        let mut out = CaptureTarget::contiguous(
            CaptureFormat::Nv12,
            coded.0,
            coded.1,
            coded.0 as usize,
            &mut buf,
        )
        .unwrap();
        let input = JobInput {
            codec,
            controls: &j.controls,
            bitstream: &j.bitstream,
            timestamp: j.timestamp,
            flags: JobFlags::default(),
            references: &j.references,
        };
        backend.decode(&input, &mut out).unwrap();
        n += 1;
    }
    n
}
