//! The embedded frontend: decoder-core's [`Device`] and the daemon's server
//! in one process, talking the real bridge protocol over a socketpair, with
//! memfd-backed buffers shared by both sides. No root, no kernel.
//!
//! This is the same sequence a V4L2 stateless client runs against
//! /dev/videoN — S_FMT, REQBUFS, STREAMON, then per job a media request
//! with controls and one OUTPUT buffer, CAPTURE buffers queued and
//! dequeued — only the ioctls are method calls on the device.
//!
//! Like a kernel driver's bridge, a receiver thread owns the receive side of
//! the socket: it applies every daemon result as soon as it arrives (which
//! dispatches the next queued job at once), runs the device's timers and
//! wakes the decode loop when buffers are done. The device sits under one
//! mutex shared by that thread and the [`Frontend`] methods.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use daedalus_daemon::affinity;
use daedalus_daemon::server::{Server, ServerConfig};
use daedalus_daemon::transport::{SeqPacket, Shutdown, Transport, TransportError};
use decoder_core::ctrl::ControlValues;
use decoder_core::fmt::{self, PixFormat};
use decoder_core::proto;
use decoder_core::state::{
    BufError, BufState, Config, CtxId, Dequeued, Device, Event, Link, Memory, QbufArgs, Queue,
    Which, BUF_FLAG_ERROR, BUF_FLAG_M2M_HOLD_CAPTURE_BUF,
};

use crate::frontend::{Frontend, JobTiming, Picture};
use crate::shm::SharedPlane;

/// OUTPUT buffers (bitstream) in the pool.
pub const OUTPUT_BUFFERS: u32 = 4;
/// CAPTURE buffers: a full H.264 DPB plus reordering headroom.
pub const CAPTURE_BUFFERS: u32 = 32;

/// Longest the receiver thread sleeps without looking at the device's
/// timers (a job dispatched by the decode loop may set an earlier deadline
/// than the one it went to sleep with).
const RECEIVER_TICK: Duration = Duration::from_millis(100);

/// Where the threads of a one-thread decode run.
///
/// With one job in flight, every job goes frontend receiver -> daemon
/// reader -> context worker -> frontend receiver, each handing it to the
/// next and then waiting, so the three share one CPU (`jobs`) and every
/// hand-off is a wake-up on a CPU that is awake, instead of on an idle one,
/// which on a virtual CPU costs tens of µs (`examples/wake_floor`); the
/// player (parsing, display) runs on the other CPUs (`player`).
///
/// With two, the worker has `jobs` to itself and the receiver and the
/// reader join the player: they hand the next job over while the worker
/// decodes, not between two of its jobs (on one CPU with the worker they
/// would wait for it to finish).
#[derive(Debug, Clone)]
struct Placement {
    jobs: Vec<usize>,
    player: Vec<usize>,
}

impl Placement {
    /// With one decoding thread and at least two CPUs allowed: the last
    /// allowed CPU for the worker, the others for the rest. With more
    /// decoding threads (the backends' own threads inherit the worker's
    /// CPUs) or a single CPU, the scheduler places everything. "Allowed"
    /// is the process's CPUs at its first placement: a later stack (after
    /// a resolution change) is placed the same way, although its caller is
    /// confined to the player's CPUs by then.
    fn choose(threads: usize) -> Option<Self> {
        static ALLOWED: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
        if threads != 1 {
            return None;
        }
        let mut cpus = ALLOWED
            .get_or_init(|| affinity::allowed().unwrap_or_default())
            .clone();
        let last = cpus.pop()?;
        (!cpus.is_empty()).then(|| Placement {
            jobs: vec![last],
            player: cpus,
        })
    }
}

/// Per-job timing: dispatch instants by job timestamp, finished round trips.
type Timing = (HashMap<u64, Instant>, Vec<JobTiming>);

/// The device and what either thread needs to drive it, under
/// [`Shared::core`].
#[derive(Debug)]
struct Core {
    dev: Device,
    link: Arc<SeqPacket>,
    /// Duplicates of every OUTPUT / CAPTURE plane's memfd, to pass to the
    /// daemon from whichever thread sends a buffer's first use. The
    /// mappings themselves stay with the decode loop.
    out_fds: Vec<Vec<OwnedFd>>,
    cap_fds: Vec<Vec<OwnedFd>>,
    epoch: Instant,
    /// Timestamp of the job in each OUTPUT buffer.
    out_ts: Vec<u64>,
    timing: Option<Timing>,
    ctx: CtxId,
    /// CAPTURE buffers the decode loop queued that are not yet queued to
    /// the device; the last one returned is queued first.
    cap_pool: Vec<u32>,
    /// CAPTURE buffers the device owns (queued, or in a job).
    cap_owned: usize,
    /// The most it is handed at a time: one per job in flight. The pool
    /// hands out the buffer the decode loop returned last: it is still
    /// warm in caches and page tables, and the stack cycles through as few
    /// buffers as it can instead of through all [`CAPTURE_BUFFERS`].
    cap_in_device: usize,
}

/// What the decode loop and the receiver thread share.
#[derive(Debug)]
struct Shared {
    core: Mutex<Core>,
    /// Signalled when the receiver thread applied daemon traffic or ran
    /// the timers (buffers may be done, the link state may have changed).
    progress: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock ends the process's decode anyway;
        // the device state itself is never left half-updated by our code.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One decoding context of the embedded stack.
#[derive(Debug)]
pub struct Embedded {
    shared: Arc<Shared>,
    ctx: CtxId,
    link: Arc<SeqPacket>,
    shutdown: Shutdown,
    server: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<()>>,
    out_bufs: Vec<Vec<SharedPlane>>,
    cap_bufs: Vec<Vec<SharedPlane>>,
    /// OUTPUT buffers dequeued by the decode loop (free to fill).
    free_out: Vec<u32>,
    cap_fmt: PixFormat,
}

impl Embedded {
    /// Starts the daemon server on one end of a socketpair and a device on
    /// the other, negotiates formats for `codec_fourcc` at the coded size,
    /// allocates and maps the buffers and starts streaming.
    ///
    /// `jobs_in_flight` is the device's `Config::pipeline_depth`. With 2 the
    /// next job waits in the daemon's queue while one decodes, so the
    /// backend starts it as soon as it returns instead of after a round trip
    /// through the frontend (~50-100 µs a job here with one job at a time,
    /// 15-30 µs with two; decode loop +1-3 % on H.264, HEVC and AV1 in
    /// host A/B runs; on VP9 it needs the buffer cycle of
    /// [`Core::refill_if_idle`]). With 1 no result crosses CPUs
    /// ([`Placement`]): less latency per picture.
    pub fn new(
        coded_fourcc: u32,
        width: u32,
        height: u32,
        ten_bit: bool,
        threads: usize,
        jobs_in_flight: u32,
    ) -> Result<Self> {
        let (front, back) = SeqPacket::pair().context("socketpair")?;
        let shutdown = Shutdown::new()?;
        let jobs_in_flight = jobs_in_flight.max(1);
        let placement = Placement::choose(threads);
        // The receiver's and the reader's CPUs (see `Placement`).
        let path_cpus = placement.as_ref().map(|p| {
            if jobs_in_flight > 1 {
                p.player.clone()
            } else {
                p.jobs.clone()
            }
        });
        let server = Server::new(ServerConfig {
            threads: threads.max(1),
            cpus: placement.as_ref().map(|p| p.jobs.clone()),
            reader_cpus: path_cpus.clone(),
            ..ServerConfig::default()
        });
        let back: Arc<dyn Transport> = Arc::new(back);
        let sd = shutdown.clone();
        let server_thread = std::thread::Builder::new()
            .name("daemon".into())
            .spawn(move || {
                if let Err(e) = server.serve(back, &sd) {
                    tracing::warn!("embedded daemon stopped: {e}");
                }
            })?;
        let cfg = Config {
            daemon_memory: proto::DV_MEM_MEMFD,
            features: proto::DV_FEAT_MEMFD | proto::DV_FEAT_CANCEL | proto::DV_FEAT_HOLD_CAPTURE,
            job_timeout: 10_000_000_000,
            pipeline_depth: jobs_in_flight,
            ..Config::default()
        };
        let mut dev = Device::new(cfg);
        let ctx = dev.open_context().ok_or_else(|| anyhow!("no context"))?;
        let out_fmt = dev
            .set_format(
                ctx,
                Queue::Output,
                PixFormat {
                    fourcc: coded_fourcc,
                    width,
                    height,
                    ..Default::default()
                },
            )
            .map_err(|e| anyhow!("S_FMT(OUTPUT): {e}"))?;
        if out_fmt.fourcc != coded_fourcc {
            bail!("coded format {coded_fourcc:#x} not supported");
        }
        // Three planes for 8 bits: the layout the decoders write, so the
        // daemon decodes every plane in place.
        let want = PixFormat {
            fourcc: if ten_bit {
                fmt::PIX_FMT_P010
            } else {
                fmt::PIX_FMT_YUV420M
            },
            ..Default::default()
        };
        let cap_fmt = dev
            .set_format(ctx, Queue::Capture, want)
            .map_err(|e| anyhow!("S_FMT(CAPTURE): {e}"))?;
        let out_bufs = allocate(&mut dev, ctx, Queue::Output, OUTPUT_BUFFERS)?;
        let cap_bufs = allocate(&mut dev, ctx, Queue::Capture, CAPTURE_BUFFERS)?;
        let link = Arc::new(front);
        let core = Core {
            dev,
            link: link.clone(),
            out_fds: dup_fds(&out_bufs)?,
            cap_fds: dup_fds(&cap_bufs)?,
            epoch: Instant::now(),
            out_ts: vec![0; out_bufs.len()],
            timing: None,
            ctx,
            cap_pool: Vec::with_capacity(cap_bufs.len()),
            cap_owned: 0,
            cap_in_device: jobs_in_flight as usize,
        };
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            progress: Condvar::new(),
        });
        let mut this = Embedded {
            shared: shared.clone(),
            ctx,
            link: link.clone(),
            shutdown: shutdown.clone(),
            server: Some(server_thread),
            receiver: None,
            free_out: (0..out_bufs.len() as u32).rev().collect(),
            out_bufs,
            cap_bufs,
            cap_fmt,
        };
        // From here on, dropping `this` stops the threads.
        {
            let mut core = this.shared.lock();
            let now = core.now();
            for q in [Queue::Output, Queue::Capture] {
                core.dev
                    .streamon(ctx, q, now)
                    .map_err(|e| anyhow!("STREAMON: {e}"))?;
            }
            core.dev.daemon_attach(now);
            core.flush_tx();
        }
        // Started once the link is up: the receiver ends when it is down.
        let rx_cpus = path_cpus;
        this.receiver = Some(
            std::thread::Builder::new()
                .name("daedalus-rx".into())
                .spawn(move || {
                    if let Some(cpus) = rx_cpus {
                        if let Err(e) = affinity::confine(&cpus) {
                            tracing::warn!("cannot confine the receiver to CPUs {cpus:?}: {e}");
                        }
                    }
                    receiver(&shared, &link, &shutdown)
                })?,
        );
        if let Some(p) = &placement {
            // The caller (the player: parsing, display) runs beside them.
            if let Err(e) = affinity::confine(&p.player) {
                tracing::warn!("cannot confine the player to CPUs {:?}: {e}", p.player);
            }
        }
        let mut core = this.shared.lock();
        while !matches!(core.dev.link(), Link::Attached { .. }) {
            if core.dev.link() == Link::Detached {
                bail!("the daemon refused the handshake");
            }
            core = this
                .shared
                .progress
                .wait_timeout(core, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            core.service(Instant::now());
        }
        drop(core);
        Ok(this)
    }

    /// Turns per-job timing on.
    pub fn enable_timing(&mut self) {
        self.shared.lock().timing = Some((HashMap::new(), Vec::new()));
    }
}

/// REQBUFS on `q` and one memfd mapping per plane of every buffer.
fn allocate(dev: &mut Device, ctx: CtxId, q: Queue, n: u32) -> Result<Vec<Vec<SharedPlane>>> {
    let got = dev
        .reqbufs(ctx, q, Memory::Mmap, n)
        .map_err(|e| anyhow!("REQBUFS: {e}"))?;
    (0..got)
        .map(|i| {
            let info = dev.buffer(ctx, q, i).expect("allocated");
            (0..info.num_planes as usize)
                .map(|p| SharedPlane::new("daedalus-buf", info.length[p] as usize))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(Into::into)
        })
        .collect()
}

fn dup_fds(bufs: &[Vec<SharedPlane>]) -> Result<Vec<Vec<OwnedFd>>> {
    bufs.iter()
        .map(|planes| {
            planes
                .iter()
                .map(|p| p.fd().try_clone_to_owned().context("dup of a memfd"))
                .collect()
        })
        .collect()
}

/// The receiver thread: waits for daemon datagrams (or the device's next
/// deadline) and applies them at once, until `shutdown` or the link ends.
fn receiver(shared: &Shared, link: &SeqPacket, shutdown: &Shutdown) {
    let mut rx = vec![0u8; proto::DV_MAX_MSG_SIZE as usize];
    loop {
        let wait = {
            let core = shared.lock();
            if core.dev.link() == Link::Detached {
                // Nothing more will come (or be sent); the decode loop runs
                // the timers from here on.
                return;
            }
            core.dev.next_deadline().map_or(RECEIVER_TICK, |d| {
                RECEIVER_TICK.min(Duration::from_nanos(d.saturating_sub(core.now())))
            })
        };
        let link_fd = link.as_fd();
        let sd_fd = shutdown.as_fd();
        let mut fds = [
            rustix::event::PollFd::new(&link_fd, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&sd_fd, rustix::event::PollFlags::IN),
        ];
        let ts = rustix::event::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: wait.subsec_nanos() as i64,
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::warn!("daemon link poll: {e}");
                let mut core = shared.lock();
                core.link_lost();
                shared.progress.notify_all();
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        if fds[0].revents().is_empty() {
            // A deadline (or the periodic look) came.
            shared.lock().service(Instant::now());
            shared.progress.notify_all();
            continue;
        }
        let got = link.try_recv(&mut rx);
        // The result's receipt, before waiting for the lock.
        let at = Instant::now();
        let mut core = shared.lock();
        match got {
            Ok(n) => {
                let now = core.now();
                if let Err(e) = core.dev.daemon_receive(&rx[..n], now) {
                    tracing::warn!("daemon message refused, link dropped: {e}");
                    core.link.close();
                }
                core.service(at);
            }
            Err(TransportError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!("daemon link: {e}");
                core.link_lost();
            }
        }
        drop(core);
        shared.progress.notify_all();
    }
}

impl Core {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The link failed: detach the daemon (its jobs complete with ERROR).
    fn link_lost(&mut self) {
        let now = self.now();
        self.dev.daemon_detach(now);
        self.link.close();
        self.drain_events(Instant::now());
    }

    /// Runs the timers, takes the events (`at`: when the traffic that
    /// raised them arrived) and sends what the device queued — the next
    /// job's dispatch among it.
    fn service(&mut self, at: Instant) {
        let now = self.now();
        self.dev.tick(now);
        self.drain_events(at);
        if let Err(e) = self.refill_if_idle() {
            tracing::warn!("{e}");
        }
        self.flush_tx();
    }

    /// The receiver thread's refill, as results come: only when the device
    /// owns no CAPTURE buffer, i.e. no job of the context is left in the
    /// daemon and the worker waits for the next (always, with one job in
    /// flight). Otherwise the worker still decodes the job queued behind
    /// the result, and the next job's buffer is the one the decode loop
    /// frees on seeing that result (the picture two before it, on VP9),
    /// queued from its thread ([`Embedded::queue_capture`], and at its
    /// next poll): VP9 cycles through three buffers instead of four, and
    /// the backend's calls took 3-4 % less time in host A/B runs (a
    /// standalone decode into 2, 3 or 4 buffers in turn: 0 %, +3 %, +6 %).
    fn refill_if_idle(&mut self) -> Result<()> {
        if self.cap_owned == 0 {
            self.refill_capture()?;
        }
        Ok(())
    }

    /// QBUF of pooled CAPTURE buffers while the device owns fewer than
    /// [`Core::cap_in_device`].
    fn refill_capture(&mut self) -> Result<()> {
        while self.cap_owned < self.cap_in_device {
            let Some(index) = self.cap_pool.pop() else {
                break;
            };
            let now = self.now();
            self.dev
                .qbuf(
                    self.ctx,
                    Queue::Capture,
                    index,
                    Memory::Mmap,
                    QbufArgs::default(),
                    now,
                )
                .map_err(|e| anyhow!("QBUF(CAPTURE {index}): {e}"))?;
            self.cap_owned += 1;
        }
        Ok(())
    }

    /// Sends every datagram the device queued, with buffer fds attached.
    fn flush_tx(&mut self) {
        while let Some(o) = self.dev.poll_transmit() {
            if let Some((dispatched, _)) = self.timing.as_mut() {
                if let Ok(proto::Message::Decode(job, _)) = proto::decode(&o.bytes) {
                    dispatched.insert(job.timestamp, Instant::now());
                }
            }
            let fds: Vec<BorrowedFd<'_>> = match o.fds {
                Some((_, q, i)) => {
                    let bufs = match q {
                        Queue::Output => &self.out_fds,
                        Queue::Capture => &self.cap_fds,
                    };
                    bufs[i as usize].iter().map(|p| p.as_fd()).collect()
                }
                None => Vec::new(),
            };
            if let Err(e) = self.link.send(&o.bytes, &fds) {
                tracing::warn!("daemon link lost: {e}");
                let now = self.now();
                self.dev.daemon_detach(now);
                return;
            }
        }
    }

    fn drain_events(&mut self, at: Instant) {
        while let Some(ev) = self.dev.poll_event() {
            match ev {
                Event::DaemonDetached { .. } => tracing::warn!("the daemon detached"),
                Event::BufferDone {
                    queue: Queue::Output,
                    index,
                    ..
                } => {
                    if let Some((dispatched, done)) = self.timing.as_mut() {
                        let ts = self.out_ts[index as usize];
                        if let Some(t0) = dispatched.remove(&ts) {
                            done.push(JobTiming {
                                timestamp: ts,
                                dispatched: t0,
                                done: at,
                            });
                        }
                    }
                }
                Event::BufferDone {
                    queue: Queue::Capture,
                    ..
                } => self.cap_owned = self.cap_owned.saturating_sub(1),
                _ => {}
            }
        }
    }
}

impl Frontend for Embedded {
    fn take_job_timings(&mut self) -> Vec<JobTiming> {
        self.shared
            .lock()
            .timing
            .as_mut()
            .map(|(_, d)| std::mem::take(d))
            .unwrap_or_default()
    }

    /// The negotiated CAPTURE format.
    fn capture_format(&self) -> PixFormat {
        self.cap_fmt
    }

    /// The memory planes of a CAPTURE buffer.
    fn capture_count(&self) -> u32 {
        self.cap_bufs.len() as u32
    }

    fn capture_planes(&self, index: u32) -> Vec<&[u8]> {
        self.cap_bufs[index as usize]
            .iter()
            .map(|p| p.bytes())
            .collect()
    }

    /// Queues a CAPTURE buffer for decoding into (to the device at once
    /// if it holds fewer than [`Core::cap_in_device`], else to the pool
    /// the device is refilled from: here, at the next poll, and by the
    /// receiver thread when the device has no buffer left).
    fn queue_capture(&mut self, index: u32) -> Result<()> {
        let mut core = self.shared.lock();
        match core.dev.buffer(self.ctx, Queue::Capture, index) {
            None => bail!("QBUF(CAPTURE {index}): no such buffer"),
            Some(b) if b.state != BufState::Dequeued || core.cap_pool.contains(&index) => {
                bail!("QBUF(CAPTURE {index}): already queued")
            }
            Some(_) => core.cap_pool.push(index),
        }
        let r = core.refill_capture();
        core.flush_tx();
        r
    }

    /// True when an OUTPUT buffer is free for [`Embedded::submit`].
    fn can_submit(&self) -> bool {
        !self.free_out.is_empty()
    }

    /// Submits one job through a media request: its controls into the
    /// request, its bitstream into a free OUTPUT buffer.
    fn submit(
        &mut self,
        controls: &ControlValues,
        bitstream: &[u8],
        timestamp: u64,
        hold: bool,
    ) -> Result<()> {
        let index = self
            .free_out
            .pop()
            .ok_or_else(|| anyhow!("no free OUTPUT buffer"))?;
        // A free (dequeued) OUTPUT buffer: neither the device nor the
        // daemon touches its memory until the QBUF below.
        let plane = &mut self.out_bufs[index as usize][0];
        if bitstream.len() > plane.len() {
            self.free_out.push(index);
            bail!(
                "a {}-byte frame does not fit the {}-byte OUTPUT buffer",
                bitstream.len(),
                plane.len()
            );
        }
        plane.bytes_mut()[..bitstream.len()].copy_from_slice(bitstream);
        let ctrls: Vec<(u32, &[u8])> = controls.iter().collect();
        let ctx = self.ctx;
        let mut core = self.shared.lock();
        core.out_ts[index as usize] = timestamp;
        let now = core.now();
        let r = core
            .dev
            .request_alloc()
            .map_err(|e| anyhow!("REQUEST_ALLOC: {e}"));
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                drop(core);
                self.free_out.push(index);
                return Err(e);
            }
        };
        let result = core
            .dev
            .set_controls(ctx, Which::Request(r), &ctrls, false)
            .map_err(|e| anyhow!("S_EXT_CTRLS: {e}"))
            .and_then(|_| {
                let args = QbufArgs {
                    bytesused: [bitstream.len().max(1) as u32, 0, 0, 0],
                    timestamp,
                    flags: if hold {
                        BUF_FLAG_M2M_HOLD_CAPTURE_BUF
                    } else {
                        0
                    },
                    request: Some(r),
                    memory_changed: false,
                };
                core.dev
                    .qbuf(ctx, Queue::Output, index, Memory::Mmap, args, now)
                    .map_err(|e| anyhow!("QBUF(OUTPUT): {e}"))
            })
            .and_then(|_| {
                core.dev
                    .request_queue(r, now)
                    .map_err(|e| anyhow!("REQUEST_QUEUE: {e}"))
            });
        // Like a client closing its request fd: a queued request lives on.
        let _ = core.dev.request_close(r);
        if result.is_ok() {
            core.flush_tx();
        }
        drop(core);
        if result.is_err() {
            self.free_out.push(index);
        }
        result
    }

    /// Releases a held CAPTURE buffer (end of stream, multi-slice pictures).
    fn flush(&mut self) -> Result<()> {
        let mut core = self.shared.lock();
        core.dev
            .decoder_flush(self.ctx)
            .map_err(|e| anyhow!("DECODER_CMD: {e}"))?;
        core.flush_tx();
        Ok(())
    }

    /// OUTPUT buffers the device still owns.
    fn outputs_in_flight(&self) -> usize {
        self.out_bufs.len() - self.free_out.len()
    }

    /// Waits (at most `timeout`, or not at all with `Some(0)`) until the
    /// receiver thread completed buffers and returns the pictures dequeued.
    /// Finished OUTPUT buffers return to the free pool.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Picture>> {
        let end = Instant::now() + timeout;
        let mut core = self.shared.lock();
        let mut pics = Vec::new();
        // Pooled buffers the device had no room for at their QBUF
        // ([`Core::refill_if_idle`]).
        if let Err(e) = core.refill_capture() {
            tracing::warn!("{e}");
        }
        core.flush_tx();
        loop {
            // The timers, in case the receiver thread is gone (detached).
            if core.dev.next_deadline().is_some_and(|d| d <= core.now()) {
                core.service(Instant::now());
            }
            let mut any = false;
            loop {
                match core.dev.dqbuf(self.ctx, Queue::Output) {
                    Ok(d) => {
                        self.free_out.push(d.index);
                        any = true;
                    }
                    Err(BufError::WouldBlock) => break,
                    Err(e) => bail!("DQBUF(OUTPUT): {e}"),
                }
            }
            loop {
                match core.dev.dqbuf(self.ctx, Queue::Capture) {
                    Ok(Dequeued {
                        index,
                        flags,
                        timestamp,
                        ..
                    }) => pics.push(Picture {
                        index,
                        timestamp,
                        error: flags & BUF_FLAG_ERROR != 0,
                    }),
                    Err(BufError::WouldBlock) => break,
                    Err(e) => bail!("DQBUF(CAPTURE): {e}"),
                }
            }
            let now = Instant::now();
            if any || !pics.is_empty() || now >= end {
                return Ok(pics);
            }
            let mut wait = end - now;
            if let Some(d) = core.dev.next_deadline() {
                wait = wait.min(Duration::from_nanos(d.saturating_sub(core.now())));
            }
            core = self
                .shared
                .progress
                .wait_timeout(core, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        {
            let mut core = self.shared.lock();
            let now = core.now();
            core.dev.close_context(self.ctx, now);
            core.flush_tx();
        }
        self.shutdown.trigger();
        if let Some(t) = self.receiver.take() {
            let _ = t.join();
        }
        self.link.close();
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_stack_is_placed_like_the_first() {
        std::thread::spawn(|| {
            let first = Placement::choose(1);
            assert!(Placement::choose(2).is_none());
            let Some(p) = first else {
                // One CPU here: nothing to place.
                assert!(affinity::allowed().unwrap().len() < 2);
                return;
            };
            assert!(!p.player.contains(&p.jobs[0]));
            // The caller is confined to the player's CPUs after the first
            // stack starts; the next stack still gets the same split.
            affinity::confine(&p.player).unwrap();
            let again = Placement::choose(1).unwrap();
            assert_eq!((again.jobs, again.player), (p.jobs, p.player));
        })
        .join()
        .unwrap();
    }
}
