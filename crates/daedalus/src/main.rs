//! `daedalus`: decode a video file through the daedalus-v4l2 stack.

mod device;
mod embedded;
mod frontend;
mod output;
mod shm;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use daedalus_client::{DisplayQueue, Job, PictureInfo, StreamParser};
use decoder_core::fmt;

use crate::device::V4l2Device;
use crate::embedded::Embedded;
use crate::frontend::{Frontend, Picture};
use crate::output::{pack_visible, FrameMd5};

#[derive(Parser, Debug)]
#[command(
    name = "daedalus",
    version,
    about = "daedalus-v4l2: a V4L2 stateless decoder stack"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Decode INPUT and write the pictures in display order.
    Decode {
        /// Annex-B H.264 (.h264/.264/.avc), or IVF (.ivf).
        input: PathBuf,
        /// Raw NV12 (P010 for 10-bit) output, visible area only.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// FFmpeg framemd5 of every displayed frame ("-" for stdout).
        #[arg(long)]
        framemd5: Option<PathBuf>,
        /// Drive a V4L2 stateless device instead of the embedded stack.
        #[arg(long)]
        device: Option<PathBuf>,
        /// Decoding threads of the embedded daemon.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Decode {
            input,
            output,
            framemd5,
            device,
            threads,
        } => decode(
            &input,
            output.as_deref(),
            framemd5.as_deref(),
            device.as_deref(),
            threads,
        ),
    };
    if let Err(e) = r {
        eprintln!("daedalus: {e:#}");
        std::process::exit(1);
    }
}

/// Picks a parser from the file name.
fn open_parser(input: &Path) -> Result<Box<dyn StreamParser>> {
    let ext = input
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(match ext.as_str() {
        "h264" | "264" | "avc" | "jsv" => Box::new(
            daedalus_client::h264::H264Parser::from_file(
                input,
                daedalus_client::h264::Packing::PicturePerJob,
            )
            .with_context(|| format!("reading {}", input.display()))?,
        ),
        other => bail!(
            "{}: unsupported input type {other:?} (supported: .h264)",
            input.display()
        ),
    })
}

struct Sink {
    yuv: Option<BufWriter<File>>,
    md5: Option<FrameMd5<Box<dyn Write>>>,
    frames: u64,
}

fn decode(
    input: &Path,
    output: Option<&Path>,
    framemd5: Option<&Path>,
    device: Option<&Path>,
    threads: usize,
) -> Result<()> {
    let mut parser = open_parser(input)?;
    let Some(first) = parser
        .next_job()
        .with_context(|| format!("parsing {}", input.display()))?
    else {
        bail!("{}: no picture in the stream", input.display());
    };
    let (cw, ch) = first.picture.coded;
    let mut emb: Box<dyn Frontend> = match device {
        Some(d) => Box::new(V4l2Device::open(
            d,
            fmt::fourcc_of(first.codec),
            cw,
            ch,
            first.picture.bit_depth > 8,
        )?),
        None => Box::new(Embedded::new(
            fmt::fourcc_of(first.codec),
            cw,
            ch,
            first.picture.bit_depth > 8,
            threads,
        )?),
    };
    let (_, _, vw, vh) = first.picture.visible;
    let mut sink = Sink {
        yuv: output
            .map(File::create)
            .transpose()
            .context("creating the output file")?
            .map(BufWriter::new),
        md5: match framemd5 {
            None => None,
            Some(p) => {
                let w: Box<dyn Write> = if p == Path::new("-") {
                    Box::new(std::io::stdout())
                } else {
                    Box::new(BufWriter::new(
                        File::create(p).context("creating the framemd5 file")?,
                    ))
                };
                Some(FrameMd5::new(w, vw, vh)?)
            }
        },
        frames: 0,
    };
    for i in 0..emb.capture_count() {
        emb.queue_capture(i)?;
    }
    let progress = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut infos: BTreeMap<u64, PictureInfo> = BTreeMap::new();
    let mut display: DisplayQueue<u32> = DisplayQueue::new();
    let mut shown_unqueued: Vec<(u32, u64)> = Vec::new();
    let mut refs: HashSet<u64> = HashSet::new();
    let mut errors = 0u64;
    let mut next = Some(first);
    let mut last_progress = Instant::now();
    while let Some(job) = next.take() {
        infos.insert(job.timestamp, job.picture);
        let mut waited = Duration::ZERO;
        while !emb.can_submit() {
            let pics = emb.poll(Duration::from_millis(50))?;
            if pics.is_empty() {
                waited += Duration::from_millis(50);
                if waited > Duration::from_secs(60) {
                    bail!("no progress for 60 s: the daemon is stuck");
                }
            }
            handle(
                emb.as_mut(),
                pics,
                &infos,
                &mut display,
                &mut shown_unqueued,
                &refs,
                &mut sink,
                &mut errors,
            )?;
        }
        refs = reference_set(&job);
        requeue(emb.as_mut(), &mut shown_unqueued, &refs)?;
        emb.submit(
            &job.controls,
            &job.bitstream,
            job.timestamp,
            job.flags.more_slices,
        )?;
        let pics = emb.poll(Duration::ZERO)?;
        handle(
            emb.as_mut(),
            pics,
            &infos,
            &mut display,
            &mut shown_unqueued,
            &refs,
            &mut sink,
            &mut errors,
        )?;
        if progress && last_progress.elapsed() > Duration::from_millis(200) {
            last_progress = Instant::now();
            let fps = sink.frames as f64 / start.elapsed().as_secs_f64().max(1e-9);
            eprint!("\r{} frames, {:.1} fps", sink.frames, fps);
        }
        next = parser
            .next_job()
            .with_context(|| format!("parsing {}", input.display()))?;
    }
    emb.flush()?;
    let mut waited = Duration::ZERO;
    while emb.outputs_in_flight() > 0 {
        let pics = emb.poll(Duration::from_millis(50))?;
        if pics.is_empty() {
            waited += Duration::from_millis(50);
            if waited > Duration::from_secs(60) {
                bail!("no progress for 60 s: the daemon is stuck");
            }
        }
        handle(
            emb.as_mut(),
            pics,
            &infos,
            &mut display,
            &mut shown_unqueued,
            &refs,
            &mut sink,
            &mut errors,
        )?;
    }
    for (ts, idx) in display.drain() {
        emit(emb.as_ref(), idx, ts, &infos, &mut sink)?;
    }
    if let Some(m) = sink.md5.take() {
        m.finish()?;
    }
    if let Some(mut y) = sink.yuv.take() {
        y.flush()?;
    }
    let secs = start.elapsed().as_secs_f64();
    if progress {
        eprint!("\r");
    }
    eprintln!(
        "{} frames in {:.2} s, {:.1} fps{}",
        sink.frames,
        secs,
        sink.frames as f64 / secs.max(1e-9),
        if errors > 0 {
            format!(", {errors} pictures failed")
        } else {
            String::new()
        }
    );
    if errors > 0 {
        bail!("{errors} pictures failed to decode");
    }
    Ok(())
}

/// Timestamps of the pictures a job references.
fn reference_set(job: &Job) -> HashSet<u64> {
    let mut v = Vec::new();
    (job.codec.desc().reference_timestamps)(&job.controls, &mut v);
    v.into_iter().collect()
}

/// Requeues displayed CAPTURE buffers no longer referenced.
fn requeue(emb: &mut dyn Frontend, shown: &mut Vec<(u32, u64)>, refs: &HashSet<u64>) -> Result<()> {
    let mut keep = Vec::new();
    for (idx, ts) in shown.drain(..) {
        if refs.contains(&ts) {
            keep.push((idx, ts));
        } else {
            emb.queue_capture(idx)?;
        }
    }
    *shown = keep;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn handle(
    emb: &mut dyn Frontend,
    pics: Vec<Picture>,
    infos: &BTreeMap<u64, PictureInfo>,
    display: &mut DisplayQueue<u32>,
    shown: &mut Vec<(u32, u64)>,
    refs: &HashSet<u64>,
    sink: &mut Sink,
    errors: &mut u64,
) -> Result<()> {
    for p in pics {
        if p.error {
            *errors += 1;
            tracing::warn!("picture {} failed", p.timestamp);
            shown.push((p.index, p.timestamp));
            continue;
        }
        let Some(info) = infos.get(&p.timestamp) else {
            bail!("the device returned an unknown timestamp {}", p.timestamp);
        };
        for (ts, idx) in display.push(p.timestamp, info, p.index) {
            emit(emb, idx, ts, infos, sink)?;
            shown.push((idx, ts));
        }
    }
    requeue(emb, shown, refs)
}

fn emit(
    emb: &dyn Frontend,
    idx: u32,
    ts: u64,
    infos: &BTreeMap<u64, PictureInfo>,
    sink: &mut Sink,
) -> Result<()> {
    sink.frames += 1;
    if sink.yuv.is_none() && sink.md5.is_none() {
        return Ok(());
    }
    let f = emb.capture_format();
    let planes = emb.capture_planes(idx);
    let visible = infos
        .get(&ts)
        .map_or((0, 0, f.width, f.height), |i| i.visible);
    let packed = pack_visible(&f, &planes, visible);
    if let Some(y) = sink.yuv.as_mut() {
        y.write_all(&packed)?;
    }
    if let Some(m) = sink.md5.as_mut() {
        m.frame(&packed)?;
    }
    Ok(())
}
