//! VP9: vpxenc streams (two-pass with altrefs, so superframes with hidden
//! frames and show-existing frames; tiles; 10-bit) -> client parser -> V4L2
//! jobs, one per frame of each superframe.
//!
//! * `vp9_client_jobs_are_valid` (always runs): every job's controls pass
//!   the kernel's validation, references name earlier jobs, and the shown
//!   frames (shown jobs plus show-existing events) are as many as ffmpeg
//!   outputs.
//! * `vp9_decode_matches_ffmpeg`: the jobs decoded by the daemon's built-in
//!   VP9 backend (`backend::open(Codec::Vp9)`, FFmpeg), per-frame MD5 of
//!   the shown pictures against `ffmpeg -f framemd5`; 0 mismatches.
//!
//! Needs `vpxenc` (vpx-tools) and `ffmpeg`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use daedalus_client::vp9::{Vp9Parser, Vp9Stats};
use daedalus_client::{FrameEvent, FrameStreamParser, PictureInfo};
use daedalus_daemon::backend::{self, CaptureFormat, CaptureTarget, JobFlags, JobInput};
use decoder_core::ctrl::{validate_write, Codec, ControlValues};

mod common;
use common::{reference_md5s, run};

const CODEC: Codec = Codec::Vp9;

struct Stream {
    name: &'static str,
    /// Insert `show_existing_frame` frames (libvpx never writes them).
    show_existing: bool,
    size: (u32, u32),
    frames: u32,
    args: &'static [&'static str],
    ten_bit: bool,
}

fn streams() -> Vec<Stream> {
    vec![
        Stream {
            name: "twopass_altref_96x64",
            show_existing: false,
            size: (96, 64),
            frames: 24,
            args: &["--auto-alt-ref=1", "--lag-in-frames=16", "--kf-max-dist=30"],
            ten_bit: false,
        },
        Stream {
            name: "show_existing_inserted_96x64",
            show_existing: true,
            size: (96, 64),
            frames: 16,
            args: &["--auto-alt-ref=1", "--lag-in-frames=8"],
            ten_bit: false,
        },
        Stream {
            name: "tiles_2x2_odd_size_530x150",
            show_existing: false,
            size: (530, 150),
            frames: 8,
            args: &[
                "--auto-alt-ref=1",
                "--lag-in-frames=6",
                "--tile-columns=1",
                "--tile-rows=1",
            ],
            ten_bit: false,
        },
        Stream {
            name: "profile2_10bit_p010_80x48",
            show_existing: false,
            size: (80, 48),
            frames: 10,
            args: &[
                "--profile=2",
                "--bit-depth=10",
                "--input-bit-depth=8",
                "--auto-alt-ref=1",
                "--lag-in-frames=8",
            ],
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
    run(Command::new("vpxenc")
        .args([
            "--quiet",
            "--ivf",
            "--codec=vp9",
            "--passes=2",
            "--cpu-used=8",
            "--threads=1",
        ])
        .arg(format!("--limit={}", s.frames))
        .args(s.args)
        .arg("-o")
        .arg(&out)
        .arg(&src));
    if s.show_existing {
        insert_show_existing(&out);
    }
    out
}

/// Rewrites an IVF file with a one-byte `show_existing_frame` frame (profile
/// 0, `frame_to_show_map_idx` = the frame's index modulo 8) after every
/// third frame from the second on; timestamps are renumbered.
fn insert_show_existing(file: &Path) {
    let data = std::fs::read(file).unwrap();
    let mut out = data[..32].to_vec();
    let mut pos = 32;
    let mut n = 0u64;
    let mut push = |out: &mut Vec<u8>, frame: &[u8]| {
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(frame);
        n += 1;
    };
    let mut i = 0;
    while pos + 12 <= data.len() {
        let size = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let frame = &data[pos + 12..pos + 12 + size];
        pos += 12 + size;
        push(&mut out, frame);
        if i >= 1 && i % 3 == 1 {
            // frame_marker 10, profile 00, show_existing_frame 1, slot
            push(&mut out, &[0x88 | (i % 8) as u8]);
        }
        i += 1;
    }
    let count = n as u32;
    out[24..28].copy_from_slice(&count.to_le_bytes());
    std::fs::write(file, out).unwrap();
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
    stats: Vp9Stats,
    jobs: usize,
}

/// Parses the stream, checks every job like the kernel and the frontend
/// would and, with `decode`, decodes it with the built-in backend.
fn process(file: &Path, ten_bit: bool, decode: bool) -> Decoded {
    let mut parser = Vp9Parser::new(std::fs::read(file).unwrap()).unwrap();
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
        stats: Vp9Stats::default(),
        jobs: 0,
    };
    while let Some(ev) = parser.next_event().expect("parse") {
        match ev {
            FrameEvent::Decode { job, shown, .. } => {
                out.jobs += 1;
                assert!(!job.bitstream.is_empty());
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
    let d = std::env::temp_dir().join(format!("daedalus-vp9-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn vp9_client_jobs_are_valid() {
    let dir = tmpdir("client");
    let mut total = Vp9Stats::default();
    for s in streams() {
        let file = encode(&dir, &s);
        let want = reference_md5s(&file, s.ten_bit);
        let got = process(&file, s.ten_bit, false);
        println!(
            "{:32} jobs {:3} shown {:3}/{:3} hidden {:2} show-existing {:2} superframes {:2} compound {:2} bit depth {}",
            s.name,
            got.jobs,
            got.shown.len(),
            want.len(),
            got.stats.hidden,
            got.stats.show_existing,
            got.stats.superframes,
            got.stats.compound,
            got.stats.max_bit_depth
        );
        assert_eq!(got.shown.len(), want.len(), "{}", s.name);
        total.hidden += got.stats.hidden;
        total.show_existing += got.stats.show_existing;
        total.superframes += got.stats.superframes;
        total.compound += got.stats.compound;
        if s.ten_bit {
            assert_eq!(got.stats.max_bit_depth, 10);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        total.hidden > 0 && total.superframes > 0 && total.show_existing > 0,
        "{total:?}"
    );
    assert!(total.compound > 0, "no compound prediction exercised");
}

#[test]
fn vp9_decode_matches_ffmpeg() {
    let dir = tmpdir("decode");
    let (mut frames, mut bad) = (0, 0);
    for s in streams() {
        let file = encode(&dir, &s);
        let want = reference_md5s(&file, s.ten_bit);
        let got = process(&file, s.ten_bit, true);
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
        "VP9: {} streams, {frames} frames, {bad} mismatches",
        streams().len()
    );
    assert_eq!(bad, 0);
}

/// libvpx's boolean encoder (`vpx_writer`), to re-encode the symbols the
/// compressed header reader read.
struct BoolEncoder {
    low: u32,
    range: u32,
    count: i32,
    out: Vec<u8>,
}

impl BoolEncoder {
    fn new() -> Self {
        Self {
            low: 0,
            range: 255,
            count: -24,
            out: Vec::new(),
        }
    }

    fn write(&mut self, bit: bool, p: u8) {
        let split = 1 + (((self.range - 1) * u32::from(p)) >> 8);
        let mut range = split;
        if bit {
            self.low += split;
            range = self.range - split;
        }
        let mut shift = range.leading_zeros() as i32 - 24;
        range <<= shift;
        self.count += shift;
        if self.count >= 0 {
            let offset = shift - self.count;
            if (self.low << (offset - 1)) & 0x8000_0000 != 0 {
                let mut x = self.out.len();
                while x > 0 && self.out[x - 1] == 0xff {
                    self.out[x - 1] = 0;
                    x -= 1;
                }
                self.out[x - 1] += 1;
            }
            self.out.push((self.low >> (24 - offset)) as u8);
            self.low <<= offset;
            shift = self.count;
            self.low &= 0xff_ffff;
            self.count -= 8;
        }
        self.low <<= shift;
        self.range = range;
    }

    fn finish(mut self) -> Vec<u8> {
        for _ in 0..32 {
            self.write(false, 128);
        }
        // libvpx avoids a superframe-index-like last byte.
        if self.out.last().is_some_and(|b| b & 0xe0 == 0xc0) {
            self.out.push(0);
        }
        self.out
    }
}

/// Every compressed header the reader parses re-encodes, symbol for
/// symbol, to the bytes libvpx wrote: the reader reads exactly the syntax
/// elements (and probabilities) the encoder wrote.
#[test]
fn vp9_compressed_header_reader_follows_the_syntax() {
    use cros_codecs::codec::vp9::parser::Parser;
    use daedalus_client::ivf::IvfReader;
    use daedalus_client::vp9::parse_compressed_header_traced;
    let dir = tmpdir("comphdr");
    let (mut headers, mut symbols) = (0, 0);
    for s in streams() {
        let file = encode(&dir, &s);
        let mut ivf = IvfReader::open(&file).unwrap();
        let mut parser = Parser::default();
        while let Some((_, chunk)) = ivf.next_frame().unwrap() {
            for frame in parser.parse_chunk(chunk).unwrap() {
                let h = &frame.header;
                if h.show_existing_frame {
                    continue;
                }
                let bytes: &[u8] = frame.as_ref();
                let start = usize::from(h.uncompressed_header_size_in_bytes);
                let comp = &bytes[start..start + usize::from(h.header_size_in_bytes)];
                let mut trace = Vec::new();
                parse_compressed_header_traced(h, comp, Some(&mut trace)).unwrap();
                let mut enc = BoolEncoder::new();
                for (bit, p) in &trace {
                    enc.write(*bit, *p);
                }
                assert_eq!(enc.finish(), comp, "{}: frame {headers}", s.name);
                headers += 1;
                symbols += trace.len();
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("VP9 compressed headers: {headers} re-encoded exactly ({symbols} symbols)");
    assert!(headers > 30);
}
