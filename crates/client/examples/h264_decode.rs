//! Decodes an Annex B H.264 file the stateless way, in process: client
//! parser -> V4L2 jobs -> FFmpeg backend -> display order.
//!
//! ```text
//! cargo run --release -p daedalus-client --example h264_decode -- IN.264 \
//!     [--per-slice] [--md5] [-o OUT.nv12]
//! ```
//!
//! `--md5` prints one MD5 per displayed frame (visible area, packed NV12 or
//! P010), comparable with `ffmpeg -i IN.264 -pix_fmt nv12 -f framemd5 -`.
//! `-o` writes the same bytes as raw video.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use daedalus_client::h264::{H264Parser, Packing};
use daedalus_client::{DisplayQueue, PictureInfo, StreamParser};
use daedalus_daemon::backend::ffmpeg::FfmpegH264;
use daedalus_daemon::backend::{
    Backend, CaptureFormat, CaptureTarget, DecodeOutcome, JobFlags, JobInput,
};
use decoder_core::ctrl::{validate_write, Codec, ControlValues};

fn visible(buf: &[u8], info: &PictureInfo, sample: usize) -> Vec<u8> {
    let stride = info.coded.0 as usize * sample;
    let (l, t, w, h) = (
        info.visible.0 as usize,
        info.visible.1 as usize,
        info.visible.2 as usize,
        info.visible.3 as usize,
    );
    let mut out = Vec::with_capacity(w * h * 3 / 2 * sample);
    for y in t..t + h {
        out.extend_from_slice(&buf[y * stride + l * sample..y * stride + (l + w) * sample]);
    }
    let chroma = &buf[stride * info.coded.1 as usize..];
    let cl = l & !1;
    for y in t / 2..(t + h).div_ceil(2) {
        let row = &chroma[y * stride..];
        out.extend_from_slice(&row[cl * sample..(cl + 2 * w.div_ceil(2)) * sample]);
    }
    out
}

/// A displayed picture: its info, its NV12/P010 bytes, its sample size.
type Shown = (PictureInfo, Vec<u8>, usize);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(input) = args.iter().find(|a| !a.starts_with('-')).cloned() else {
        eprintln!("usage: h264_decode IN.264 [--per-slice] [--md5] [-o OUT]");
        std::process::exit(2);
    };
    let per_slice = args.iter().any(|a| a == "--per-slice");
    let print_md5 = args.iter().any(|a| a == "--md5");
    let out_path = args
        .iter()
        .position(|a| a == "-o")
        .and_then(|i| args.get(i + 1));
    let mut out = match out_path {
        Some(p) => Some(std::fs::File::create(p)?),
        None => None,
    };
    let packing = if per_slice {
        Packing::SlicePerJob { annex_b: false }
    } else {
        Packing::PicturePerJob
    };
    let mut parser = H264Parser::from_file(std::path::Path::new(&input), packing)?;
    let mut backend = FfmpegH264::new()?;
    let mut effective = ControlValues::defaults(Codec::H264);
    let mut buffers: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut display = DisplayQueue::new();
    let (mut jobs, mut frames, mut errors) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    let mut emit = |shown: Vec<(u64, Shown)>| -> std::io::Result<()> {
        for (_, (info, data, sample)) in shown {
            frames += 1;
            if print_md5 || out.is_some() {
                let v = visible(&data, &info, sample);
                if print_md5 {
                    println!("{:x}", md5::compute(&v));
                }
                if let Some(f) = out.as_mut() {
                    f.write_all(&v)?;
                }
            }
        }
        Ok(())
    };
    while let Some(job) = parser.next_job()? {
        jobs += 1;
        for (id, bytes) in job.controls.iter() {
            effective.set_raw(id, validate_write(Codec::H264, id, bytes)?);
        }
        let mut refs = Vec::new();
        (Codec::H264.desc().reference_timestamps)(&effective, &mut refs);
        let info = job.picture;
        let (format, sample) = if info.bit_depth > 8 {
            (CaptureFormat::P010, 2)
        } else {
            (CaptureFormat::Nv12, 1)
        };
        let (w, h) = info.coded;
        let buf = buffers
            .entry(job.timestamp)
            .or_insert_with(|| vec![0u8; (w * h) as usize * 3 / 2 * sample]);
        let mut target = CaptureTarget::contiguous(format, w, h, w as usize * sample, buf)
            .ok_or("CAPTURE buffer layout")?;
        let res = backend.decode(
            &JobInput {
                codec: Codec::H264,
                controls: &effective,
                bitstream: &job.bitstream,
                timestamp: job.timestamp,
                flags: JobFlags {
                    more_slices: job.flags.more_slices,
                    continues_picture: job.flags.continues_picture,
                },
                references: &refs,
            },
            &mut target,
        );
        match res {
            Ok(DecodeOutcome::Held) => {}
            Ok(DecodeOutcome::Decoded) => {
                let data = buffers.remove(&job.timestamp).unwrap_or_default();
                emit(display.push(job.timestamp, &info, (info, data, sample)))?;
            }
            Err(e) => {
                errors += 1;
                eprintln!("job {}: {e}", job.timestamp);
                buffers.remove(&job.timestamp);
            }
        }
    }
    emit(display.drain())?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{jobs} jobs, {frames} frames, {errors} errors, {secs:.3} s, {:.1} fps",
        frames as f64 / secs
    );
    Ok(())
}
