//! `daedalus`: decode a video file through the daedalus-v4l2 stack.

mod device;
mod embedded;
mod frontend;
mod output;
mod shm;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use daedalus_client::demux::Elementary;
use daedalus_client::{
    DisplayQueue, FrameEvent, FrameStreamParser, Job, PictureInfo, StreamParser,
};
use decoder_core::ctrl::ControlValues;
use decoder_core::fmt::{self, PixFormat};

use crate::device::V4l2Device;
use crate::embedded::Embedded;
use crate::frontend::{Frontend, JobTiming, Picture};
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
        /// Annex-B H.264 (.h264) or HEVC (.hevc), IVF (.ivf: VP8, VP9, AV1), or a container (MP4, MKV, WebM).
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
        /// With --device: its media controller node (default: found
        /// through sysfs or the video node's bus_info).
        #[arg(long, requires = "device")]
        media: Option<PathBuf>,
        /// With --device: buffer memory of both queues (mmap, userptr or
        /// dmabuf).
        #[arg(long, requires = "device", default_value = "mmap")]
        memory: device::MemoryKind,
        /// Print the per-job overhead outside the backend's decode call
        /// (embedded stack): median and p99 in microseconds.
        #[arg(long)]
        job_stats: bool,
        /// Decoding threads of the embedded daemon.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Jobs the embedded stack keeps in its daemon at once: 2 queues
        /// the next job while one decodes (throughput); 1 sends it when the
        /// previous one completes, with every hand-off on the decoding CPU
        /// (the least latency per picture).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
        jobs_in_flight: u32,
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
            media,
            memory,
            threads,
            jobs_in_flight,
            job_stats,
        } => decode(
            &input,
            output.as_deref(),
            framemd5.as_deref(),
            device.as_deref().map(|d| {
                (
                    d,
                    device::DeviceOptions {
                        media,
                        memory,
                        initial_controls: None,
                    },
                )
            }),
            threads,
            jobs_in_flight,
            job_stats,
        ),
    };
    if let Err(e) = r {
        eprintln!("daedalus: {e:#}");
        std::process::exit(1);
    }
}

/// A coded stream: reordering codecs (H.264, HEVC) yield jobs and display
/// through a bumping queue; frame codecs (VP8, VP9, AV1) yield events in
/// display order, with hidden frames and show-existing frames.
enum Source {
    Reorder(Box<dyn StreamParser>),
    Frames(Box<dyn FrameStreamParser>),
}

/// What the decode loop does next.
enum Step {
    /// A job, when its picture is displayed, and (frame codecs) the
    /// pictures in the reference slots once it is decoded.
    Decode(Box<Job>, Display, Vec<u64>),
    ShowExisting(u64),
}

/// When a decoded picture is displayed.
enum Display {
    Reorder,
    Now,
    Hidden,
}

impl Source {
    fn next(&mut self) -> Result<Option<Step>, daedalus_client::ClientError> {
        Ok(match self {
            Source::Reorder(p) => p
                .next_job()?
                .map(|j| Step::Decode(Box::new(j), Display::Reorder, Vec::new())),
            Source::Frames(p) => p.next_event()?.map(|e| match e {
                FrameEvent::Decode { job, shown, slots } => Step::Decode(
                    job,
                    if shown { Display::Now } else { Display::Hidden },
                    slots,
                ),
                FrameEvent::ShowExisting { timestamp, .. } => Step::ShowExisting(timestamp),
            }),
        })
    }
}

/// Picks a parser from the file name (and an IVF file's fourcc).
fn open_source(input: &Path) -> Result<Source> {
    let ext = input
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let read = || std::fs::read(input).with_context(|| format!("reading {}", input.display()));
    Ok(match ext.as_str() {
        "h264" | "264" | "avc" | "jsv" => Source::Reorder(Box::new(
            daedalus_client::h264::H264Parser::from_file(
                input,
                daedalus_client::h264::Packing::PicturePerJob,
            )
            .with_context(|| format!("reading {}", input.display()))?,
        )),
        "hevc" | "265" | "h265" => Source::Reorder(Box::new(
            daedalus_client::hevc::HevcParser::from_file(
                input,
                daedalus_client::hevc::Packing::PicturePerJob,
            )
            .with_context(|| format!("reading {}", input.display()))?,
        )),
        "ivf" => ivf_source(input, read()?)?,
        // Containers: libavformat, rewritten to Annex-B or IVF.
        _ => match daedalus_client::demux::read(input).with_context(|| {
            format!(
                "{}: not Annex-B H.264/HEVC or IVF; demuxing",
                input.display()
            )
        })? {
            Elementary::H264(data) => {
                Source::Reorder(Box::new(daedalus_client::h264::H264Parser::new(
                    data,
                    daedalus_client::h264::Packing::PicturePerJob,
                )))
            }
            Elementary::Hevc(data) => {
                Source::Reorder(Box::new(daedalus_client::hevc::HevcParser::new(
                    data,
                    daedalus_client::hevc::Packing::PicturePerJob,
                )))
            }
            Elementary::Ivf(data) => ivf_source(input, data)?,
        },
    })
}

/// A parser for an IVF file by its fourcc.
fn ivf_source(input: &Path, data: Vec<u8>) -> Result<Source> {
    let fourcc = data.get(8..12).unwrap_or_default();
    Ok(match fourcc {
        b"VP80" => Source::Frames(Box::new(daedalus_client::vp8::Vp8Parser::new(data)?)),
        b"VP90" => Source::Frames(Box::new(daedalus_client::vp9::Vp9Parser::new(data)?)),
        b"AV01" => Source::Frames(Box::new(daedalus_client::av1::Av1Parser::new(
            data,
            daedalus_client::av1::Av1Options::default(),
        )?)),
        other => bail!(
            "{}: IVF with unsupported fourcc {:?}",
            input.display(),
            String::from_utf8_lossy(other)
        ),
    })
}

struct Sink {
    yuv: Option<BufWriter<File>>,
    md5: Option<FrameMd5<Box<dyn Write>>>,
    frames: u64,
}

/// Display bookkeeping and CAPTURE buffer recycling of one decode.
struct Player {
    /// Geometry of every picture by timestamp.
    infos: BTreeMap<u64, PictureInfo>,
    /// Reordering codecs: pictures waiting for their display turn.
    reorder: DisplayQueue<u32>,
    /// Timestamps in `reorder`.
    in_reorder: HashSet<u64>,
    /// Frame codecs: timestamps to display, in order.
    pending: VecDeque<u64>,
    /// Decoded pictures held out of the CAPTURE queue, by timestamp.
    held: BTreeMap<u64, (u32, bool)>,
    /// Reordering codecs (H.264, HEVC) display through `reorder`; frame
    /// codecs through `pending`.
    reorder_mode: bool,
    /// Frame codecs: every picture in a reference slot after the latest
    /// job (a later frame may reference it or show it again).
    slots: HashSet<u64>,
    /// Jobs submitted whose picture has not come back yet, with the
    /// pictures each references: those stay out of the CAPTURE queue until
    /// the job is done, even when later jobs no longer use them.
    in_flight: HashMap<u64, HashSet<u64>>,
    errors: u64,
    /// For `--job-stats` (recorded only when set), how many CAPTURE
    /// buffers the decoder cycles through (each one more in caches): the
    /// pictures that came back so far, and the last of them in each buffer
    /// of this frontend.
    track_reuse: bool,
    pictures: u64,
    last_in: HashMap<u32, u64>,
    /// Pictures between two uses of a buffer (2: two buffers in turn).
    reuse: Vec<u64>,
}

impl Player {
    fn new(reorder_mode: bool) -> Self {
        Player {
            infos: BTreeMap::new(),
            reorder: DisplayQueue::new(),
            in_reorder: HashSet::new(),
            pending: VecDeque::new(),
            held: BTreeMap::new(),
            reorder_mode,
            slots: HashSet::new(),
            in_flight: HashMap::new(),
            errors: 0,
            track_reuse: false,
            pictures: 0,
            last_in: HashMap::new(),
            reuse: Vec::new(),
        }
    }

    fn picture_done(&mut self, f: &mut dyn Frontend, sink: &mut Sink, p: Picture) -> Result<()> {
        if p.error {
            self.errors += 1;
            tracing::warn!("picture {} failed", p.timestamp);
        }
        if self.track_reuse {
            self.pictures += 1;
            if let Some(n) = self.last_in.insert(p.index, self.pictures) {
                self.reuse.push(self.pictures - n);
            }
        }
        if let Some((old, _)) = self.held.insert(p.timestamp, (p.index, p.error)) {
            if old != p.index {
                f.queue_capture(old)?;
            }
        }
        self.in_flight.remove(&p.timestamp);
        if let Some(info) = self.infos.get(&p.timestamp).copied() {
            if self.pending.is_empty() && self.reorder_mode {
                self.in_reorder.insert(p.timestamp);
                for (ts, _) in self.reorder.push(p.timestamp, &info, p.index) {
                    self.in_reorder.remove(&ts);
                    self.emit(f, sink, ts)?;
                }
            }
        }
        Ok(())
    }

    /// Frame codecs: display what is due and decoded.
    fn display_due(&mut self, f: &mut dyn Frontend, sink: &mut Sink) -> Result<()> {
        while let Some(&ts) = self.pending.front() {
            if !self.held.contains_key(&ts) {
                if self.in_flight.contains_key(&ts) {
                    break;
                }
                // Shown again after its buffer was recycled, or never decoded.
                self.errors += 1;
                tracing::warn!("picture {ts} to display is no longer held");
                self.pending.pop_front();
                continue;
            }
            self.pending.pop_front();
            self.emit(f, sink, ts)?;
        }
        Ok(())
    }

    fn emit(&mut self, f: &mut dyn Frontend, sink: &mut Sink, ts: u64) -> Result<()> {
        let Some(&(idx, error)) = self.held.get(&ts) else {
            bail!("picture {ts} to display is not held");
        };
        if error {
            return Ok(());
        }
        sink.frames += 1;
        if sink.yuv.is_none() && sink.md5.is_none() {
            return Ok(());
        }
        let fmt = f.capture_format();
        let planes = f.capture_planes(idx);
        let visible = self
            .infos
            .get(&ts)
            .map_or((0, 0, fmt.width, fmt.height), |i| i.visible);
        let packed = pack_visible(&fmt, &planes, visible);
        if let Some(y) = sink.yuv.as_mut() {
            y.write_all(&packed)?;
        }
        if let Some(m) = sink.md5.as_mut() {
            m.frame(&packed)?;
        }
        Ok(())
    }

    /// Drops every reference to the CAPTURE buffers of a frontend that is
    /// going away (after [`drain`]: nothing is pending or reordering).
    fn forget_buffers(&mut self) {
        self.last_in.clear();
        self.held.clear();
        self.slots.clear();
        self.in_reorder.clear();
        self.infos.clear();
    }

    /// Median pictures between two uses of a CAPTURE buffer.
    fn median_reuse(&self) -> Option<u64> {
        let mut v = self.reuse.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }

    /// Requeues held pictures nobody needs any more.
    fn recycle(&mut self, f: &mut dyn Frontend) -> Result<()> {
        let waiting: HashSet<u64> = self.pending.iter().copied().collect();
        let free: Vec<u64> = self
            .held
            .keys()
            .copied()
            .filter(|ts| {
                !waiting.contains(ts)
                    && !self.slots.contains(ts)
                    && !self.in_flight.values().any(|r| r.contains(ts))
                    && !self.in_reorder.contains(ts)
            })
            .collect();
        for ts in free {
            if let Some((idx, _)) = self.held.remove(&ts) {
                f.queue_capture(idx)?;
            }
        }
        Ok(())
    }
}

fn decode(
    input: &Path,
    output: Option<&Path>,
    framemd5: Option<&Path>,
    device: Option<(&Path, device::DeviceOptions)>,
    threads: usize,
    jobs_in_flight: u32,
    job_stats: bool,
) -> Result<()> {
    let mut source = open_source(input)?;
    let parse_err = || format!("parsing {}", input.display());
    let mut next = source.next().with_context(parse_err)?;
    let first = loop {
        match &next {
            Some(Step::Decode(job, _, _)) => break job.clone(),
            Some(Step::ShowExisting(_)) => next = source.next().with_context(parse_err)?,
            None => bail!("{}: no picture in the stream", input.display()),
        }
    };
    let open_frontend =
        |pic: &PictureInfo, codec, controls: &ControlValues| -> Result<Box<dyn Frontend>> {
            let (cw, ch) = pic.coded;
            let ten_bit = pic.bit_depth > 8;
            Ok(match &device {
                Some((d, opts)) => Box::new(V4l2Device::open(
                    d,
                    &device::DeviceOptions {
                        initial_controls: Some(controls.clone()),
                        ..opts.clone()
                    },
                    fmt::fourcc_of(codec),
                    cw,
                    ch,
                    ten_bit,
                )?),
                None => {
                    let mut e = Embedded::new(
                        fmt::fourcc_of(codec),
                        cw,
                        ch,
                        ten_bit,
                        threads,
                        jobs_in_flight,
                    )?;
                    if job_stats {
                        daedalus_daemon::stats::enable();
                        e.enable_timing();
                    }
                    Box::new(e)
                }
            })
        };
    let mut emb = open_frontend(&first.picture, first.codec, &first.controls)?;
    let mut job_timings = Vec::new();
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
    let mut player = Player::new(matches!(source, Source::Reorder(_)));
    player.track_reuse = job_stats;
    let progress = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_progress = Instant::now();
    while let Some(step) = next.take() {
        match step {
            Step::ShowExisting(ts) => player.pending.push_back(ts),
            Step::Decode(job, display, slots) => {
                if !fits(&emb.capture_format(), &job.picture) {
                    // Resolution (or bit depth) change: finish and display
                    // everything decoded so far, then negotiate the new size
                    // on a new context, as the stateless decoder interface
                    // asks (streams change size at key frames).
                    drain(&mut emb, &mut player, &mut sink)?;
                    job_timings.push(emb.take_job_timings());
                    drop(emb);
                    player.forget_buffers();
                    tracing::info!(
                        "resolution change to {}x{} at picture {}",
                        job.picture.visible.2,
                        job.picture.visible.3,
                        job.timestamp
                    );
                    emb = open_frontend(&job.picture, job.codec, &job.controls)?;
                    for i in 0..emb.capture_count() {
                        emb.queue_capture(i)?;
                    }
                }
                player.infos.insert(job.timestamp, job.picture);
                player
                    .in_flight
                    .entry(job.timestamp)
                    .or_default()
                    .extend(reference_set(&job));
                match display {
                    Display::Now => player.pending.push_back(job.timestamp),
                    Display::Hidden | Display::Reorder => {}
                }
                let mut idle = Duration::ZERO;
                while !emb.can_submit() {
                    if !poll(&mut emb, &mut player, &mut sink, Duration::from_millis(50))? {
                        idle += Duration::from_millis(50);
                        if idle > Duration::from_secs(60) {
                            bail!("no progress for 60 s: the daemon is stuck");
                        }
                    }
                }
                if !player.reorder_mode {
                    player.slots = slots.into_iter().collect();
                }
                player.recycle(emb.as_mut())?;
                emb.submit(
                    &job.controls,
                    &job.bitstream,
                    job.timestamp,
                    job.flags.more_slices,
                )?;
            }
        }
        poll(&mut emb, &mut player, &mut sink, Duration::ZERO)?;
        if progress && last_progress.elapsed() > Duration::from_millis(200) {
            last_progress = Instant::now();
            let fps = sink.frames as f64 / start.elapsed().as_secs_f64().max(1e-9);
            eprint!("\r{} frames, {:.1} fps", sink.frames, fps);
        }
        next = source.next().with_context(parse_err)?;
    }
    drain(&mut emb, &mut player, &mut sink)?;
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
    let errors = player.errors;
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
    if job_stats {
        job_timings.push(emb.take_job_timings());
        print_job_stats(job_timings, daedalus_daemon::stats::take_samples());
        match player.median_reuse() {
            Some(n) => eprintln!("CAPTURE buffer reuse: median every {n} pictures"),
            None => eprintln!("CAPTURE buffer reuse: none"),
        }
    }
    if errors > 0 {
        bail!("{errors} pictures failed to decode");
    }
    Ok(())
}

/// Whether the negotiated CAPTURE format holds `pic` (size and depth).
fn fits(fmt: &PixFormat, pic: &PictureInfo) -> bool {
    let (cw, ch) = pic.coded;
    let ten_bit = pic.bit_depth > 8;
    cw <= fmt.width && ch <= fmt.height && ten_bit == (fmt.fourcc == fmt::PIX_FMT_P010)
}

/// Applies the pictures the frontend finished within `t`; false when none.
fn poll(
    emb: &mut Box<dyn Frontend>,
    player: &mut Player,
    sink: &mut Sink,
    t: Duration,
) -> Result<bool> {
    let pics = emb.poll(t)?;
    let any = !pics.is_empty();
    for p in pics {
        player.picture_done(emb.as_mut(), sink, p)?;
    }
    player.display_due(emb.as_mut(), sink)?;
    player.recycle(emb.as_mut())?;
    Ok(any)
}

/// Flushes the frontend and waits until every submitted picture is back
/// and every picture due is displayed, reordering queue included.
fn drain(emb: &mut Box<dyn Frontend>, player: &mut Player, sink: &mut Sink) -> Result<()> {
    emb.flush()?;
    // Idle time overall, and since every OUTPUT buffer came back: a job's
    // picture may be dequeued a little after its OUTPUT buffer.
    let (mut idle, mut idle_done) = (Duration::ZERO, Duration::ZERO);
    while emb.outputs_in_flight() > 0 || !player.pending.is_empty() || !player.in_flight.is_empty()
    {
        if poll(emb, player, sink, Duration::from_millis(50))? {
            (idle, idle_done) = (Duration::ZERO, Duration::ZERO);
            continue;
        }
        idle += Duration::from_millis(50);
        if idle > Duration::from_secs(60) {
            bail!("no progress for 60 s: the daemon is stuck");
        }
        if emb.outputs_in_flight() == 0 {
            idle_done += Duration::from_millis(50);
            if idle_done >= Duration::from_secs(2) {
                bail!(
                    "{} pictures to display and {} decoded pictures never came back",
                    player.pending.len(),
                    player.in_flight.len()
                );
            }
        }
    }
    for (ts, _) in player.reorder.drain() {
        player.in_reorder.remove(&ts);
        player.emit(emb.as_mut(), sink, ts)?;
    }
    Ok(())
}

/// Per-job overhead: round trip through the stack minus the backend's
/// decode call, median and p99. A job sent while the context's previous
/// one still decodes (`Config::pipeline_depth`) counts from that job's
/// backend return, not from its own dispatch: the wait behind it is the
/// previous job's decode, not a cost of this one.
/// `round_trips` holds one list per frontend (context) in dispatch order:
/// the first job of a context also waits for the daemon to open its
/// backend session, a per-context cost reported on its own.
fn print_job_stats(round_trips: Vec<Vec<JobTiming>>, samples: Vec<daedalus_daemon::stats::Sample>) {
    // Backend calls of each job (several for a multi-slice picture).
    let mut calls: BTreeMap<u64, (Duration, Instant, Instant)> = BTreeMap::new();
    for s in &samples {
        let e = calls
            .entry(s.timestamp)
            .or_insert((Duration::ZERO, s.start(), s.end));
        e.0 += s.took;
        e.1 = e.1.min(s.start());
        e.2 = e.2.max(s.end);
    }
    let (mut over, mut to, mut from, mut first_jobs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ctx in &round_trips {
        let mut previous_end: Option<Instant> = None;
        for (i, j) in ctx.iter().enumerate() {
            let Some(&(took, first, last)) = calls.get(&j.timestamp) else {
                continue;
            };
            let ready = previous_end.map_or(j.dispatched, |e| e.max(j.dispatched));
            previous_end = Some(last);
            let o = j.done.saturating_duration_since(ready).saturating_sub(took);
            if i == 0 {
                first_jobs.push(o.as_micros().to_string());
                continue;
            }
            over.push(o);
            to.push(first.saturating_duration_since(ready));
            from.push(j.done.saturating_duration_since(last));
        }
    }
    print_quantiles("per-job overhead outside the backend", over);
    print_quantiles(
        "  from dispatch (or the previous job's return) to the backend call",
        to,
    );
    print_quantiles("  from the backend's return to the result", from);
    eprintln!(
        "  first job of each context, which also waits for the backend session to open: {} us",
        first_jobs.join(", ")
    );
    print_quantiles(
        "path cost between consecutive backend calls",
        daedalus_daemon::stats::gaps(&samples),
    );
    // How busy the backend was: decoding time against the span from the
    // first call's start to the last call's end.
    if let (Some(a), Some(b)) = (
        samples.iter().map(|s| s.start()).min(),
        samples.iter().map(|s| s.end).max(),
    ) {
        let busy: Duration = samples.iter().map(|s| s.took).sum();
        let span = b.saturating_duration_since(a);
        eprintln!(
            "backend calls: {:.1} ms of the {:.1} ms from the first call to the last ({:.1}% busy)",
            busy.as_secs_f64() * 1e3,
            span.as_secs_f64() * 1e3,
            100.0 * busy.as_secs_f64() / span.as_secs_f64().max(1e-9)
        );
    }
}

/// Prints median and p99 of `v` in microseconds.
fn print_quantiles(what: &str, mut v: Vec<Duration>) {
    if v.is_empty() {
        eprintln!("{what}: no samples");
        return;
    }
    v.sort_unstable();
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_micros();
    eprintln!(
        "{what}: median {} us, p99 {} us ({} jobs)",
        q(0.5),
        q(0.99),
        v.len()
    );
}

/// Timestamps of the pictures a job references, and for AV1 every picture
/// in a reference slot after the job (a later show-existing frame may
/// display any of them).
fn reference_set(job: &Job) -> HashSet<u64> {
    let mut v = Vec::new();
    (job.codec.desc().reference_timestamps)(&job.controls, &mut v);
    let mut set: HashSet<u64> = v.into_iter().collect();
    if let Some(f) = job
        .controls
        .get::<decoder_core::ctrl::av1::V4l2CtrlAv1Frame>()
    {
        for (slot, ts) in f.reference_frame_ts.iter().enumerate() {
            if f.refresh_frame_flags & (1 << slot) == 0 {
                set.insert(*ts);
            }
        }
        if f.refresh_frame_flags != 0 {
            set.insert(job.timestamp);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use decoder_core::fmt::PixFormat;

    /// Records the CAPTURE buffers handed back to the decoder.
    #[derive(Default)]
    struct Requeued(Vec<u32>);

    impl Frontend for Requeued {
        fn capture_format(&self) -> PixFormat {
            PixFormat::default()
        }
        fn capture_count(&self) -> u32 {
            8
        }
        fn capture_planes(&self, _: u32) -> Vec<&[u8]> {
            Vec::new()
        }
        fn queue_capture(&mut self, index: u32) -> Result<()> {
            self.0.push(index);
            Ok(())
        }
        fn can_submit(&self) -> bool {
            true
        }
        fn submit(&mut self, _: &ControlValues, _: &[u8], _: u64, _: bool) -> Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
        fn outputs_in_flight(&self) -> usize {
            0
        }
        fn poll(&mut self, _: Duration) -> Result<Vec<Picture>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn recycling_spares_what_in_flight_jobs_and_reference_slots_hold() {
        let mut p = Player::new(false);
        let mut f = Requeued::default();
        // Pictures 1..=4 decoded (buffers 11..=14), all displayed.
        for ts in 1..=4 {
            p.held.insert(ts, (10 + ts as u32, false));
        }
        // Job 5 (queued, not decoded yet) references 1; job 6, the latest,
        // references only 2; the slots after job 6 hold 2 and 3.
        p.in_flight.insert(5, HashSet::from([1]));
        p.in_flight.insert(6, HashSet::from([2]));
        p.slots = HashSet::from([2, 3]);
        p.recycle(&mut f).unwrap();
        assert_eq!(f.0, [14], "only picture 4 is free");
        // Job 5 done: picture 1 is free too.
        p.in_flight.remove(&5);
        p.recycle(&mut f).unwrap();
        assert_eq!(f.0, [14, 11]);
    }
}
