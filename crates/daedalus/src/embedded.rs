//! The embedded frontend: decoder-core's [`Device`] and the daemon's server
//! in one process, talking the real bridge protocol over a socketpair, with
//! memfd-backed buffers shared by both sides. No root, no kernel.
//!
//! This is the same sequence a V4L2 stateless client runs against
//! /dev/videoN — S_FMT, REQBUFS, STREAMON, then per job a media request
//! with controls and one OUTPUT buffer, CAPTURE buffers queued and
//! dequeued — only the ioctls are method calls on the device.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use daedalus_daemon::server::{Server, ServerConfig};
use daedalus_daemon::transport::{SeqPacket, Shutdown, Transport};
use decoder_core::ctrl::ControlValues;
use decoder_core::fmt::{self, PixFormat};
use decoder_core::proto;
use decoder_core::state::{
    BufError, Config, CtxId, Dequeued, Device, Event, Link, Memory, QbufArgs, Queue, Which,
    BUF_FLAG_ERROR, BUF_FLAG_M2M_HOLD_CAPTURE_BUF,
};

use crate::frontend::{Frontend, Picture};
use crate::shm::SharedPlane;

/// OUTPUT buffers (bitstream) in the pool.
pub const OUTPUT_BUFFERS: u32 = 4;
/// CAPTURE buffers: a full H.264 DPB plus reordering headroom.
pub const CAPTURE_BUFFERS: u32 = 32;

/// One decoding context of the embedded stack.
#[derive(Debug)]
pub struct Embedded {
    dev: Device,
    ctx: CtxId,
    link: Arc<SeqPacket>,
    shutdown: Shutdown,
    server: Option<JoinHandle<()>>,
    out_bufs: Vec<Vec<SharedPlane>>,
    cap_bufs: Vec<Vec<SharedPlane>>,
    free_out: Vec<u32>,
    cap_fmt: PixFormat,
    epoch: Instant,
    rx: Vec<u8>,
    /// Timestamp of the job in each OUTPUT buffer.
    out_ts: Vec<u64>,
    /// Per-job timing, when on: dispatch instants and finished round trips.
    timing: Option<(HashMap<u64, Instant>, Vec<(u64, Duration)>)>,
}

impl Embedded {
    /// Starts the daemon server on one end of a socketpair and a device on
    /// the other, negotiates formats for `codec_fourcc` at the coded size,
    /// allocates and maps the buffers and starts streaming.
    pub fn new(
        coded_fourcc: u32,
        width: u32,
        height: u32,
        ten_bit: bool,
        threads: usize,
    ) -> Result<Self> {
        let (front, back) = SeqPacket::pair().context("socketpair")?;
        let shutdown = Shutdown::new()?;
        let server = Server::new(ServerConfig {
            threads: threads.max(1),
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
        let want = PixFormat {
            fourcc: if ten_bit {
                fmt::PIX_FMT_P010
            } else {
                fmt::PIX_FMT_NV12
            },
            ..Default::default()
        };
        let cap_fmt = dev
            .set_format(ctx, Queue::Capture, want)
            .map_err(|e| anyhow!("S_FMT(CAPTURE): {e}"))?;
        let mut this = Embedded {
            dev,
            ctx,
            link: Arc::new(front),
            shutdown,
            server: Some(server_thread),
            out_bufs: Vec::new(),
            cap_bufs: Vec::new(),
            free_out: Vec::new(),
            cap_fmt,
            epoch: Instant::now(),
            rx: vec![0u8; proto::DV_MAX_MSG_SIZE as usize],
            out_ts: vec![0; OUTPUT_BUFFERS as usize],
            timing: None,
        };
        this.allocate(Queue::Output, OUTPUT_BUFFERS)?;
        this.allocate(Queue::Capture, CAPTURE_BUFFERS)?;
        this.free_out = (0..OUTPUT_BUFFERS).rev().collect();
        let now = this.now();
        for q in [Queue::Output, Queue::Capture] {
            this.dev
                .streamon(ctx, q, now)
                .map_err(|e| anyhow!("STREAMON: {e}"))?;
        }
        this.dev.daemon_attach(now);
        this.flush_tx()?;
        while !matches!(this.dev.link(), Link::Attached { .. }) {
            if this.dev.link() == Link::Detached {
                bail!("the daemon refused the handshake");
            }
            this.pump(Some(Duration::from_millis(100)))?;
        }
        Ok(this)
    }

    fn allocate(&mut self, q: Queue, n: u32) -> Result<()> {
        let got = self
            .dev
            .reqbufs(self.ctx, q, Memory::Mmap, n)
            .map_err(|e| anyhow!("REQBUFS: {e}"))?;
        let mut bufs = Vec::new();
        for i in 0..got {
            let info = self.dev.buffer(self.ctx, q, i).expect("allocated");
            let planes = (0..info.num_planes as usize)
                .map(|p| SharedPlane::new("daedalus-buf", info.length[p] as usize))
                .collect::<std::io::Result<Vec<_>>>()?;
            bufs.push(planes);
        }
        match q {
            Queue::Output => self.out_bufs = bufs,
            Queue::Capture => self.cap_bufs = bufs,
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

impl Frontend for Embedded {
    fn take_job_timings(&mut self) -> Vec<(u64, Duration)> {
        self.timing
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

    /// Queues a CAPTURE buffer for decoding into.
    fn queue_capture(&mut self, index: u32) -> Result<()> {
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
        self.flush_tx()
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
        let plane = &mut self.out_bufs[index as usize][0];
        if bitstream.len() > plane.len() {
            bail!(
                "a {}-byte frame does not fit the {}-byte OUTPUT buffer",
                bitstream.len(),
                plane.len()
            );
        }
        plane.bytes_mut()[..bitstream.len()].copy_from_slice(bitstream);
        self.out_ts[index as usize] = timestamp;
        let now = self.now();
        let r = self
            .dev
            .request_alloc()
            .map_err(|e| anyhow!("REQUEST_ALLOC: {e}"))?;
        let ctrls: Vec<(u32, &[u8])> = controls.iter().collect();
        let result = self
            .dev
            .set_controls(self.ctx, Which::Request(r), &ctrls, false)
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
                self.dev
                    .qbuf(self.ctx, Queue::Output, index, Memory::Mmap, args, now)
                    .map_err(|e| anyhow!("QBUF(OUTPUT): {e}"))
            })
            .and_then(|_| {
                self.dev
                    .request_queue(r, now)
                    .map_err(|e| anyhow!("REQUEST_QUEUE: {e}"))
            });
        // Like a client closing its request fd: a queued request lives on.
        let _ = self.dev.request_close(r);
        if result.is_err() {
            self.free_out.push(index);
        }
        result?;
        self.flush_tx()
    }

    /// Releases a held CAPTURE buffer (end of stream, multi-slice pictures).
    fn flush(&mut self) -> Result<()> {
        self.dev
            .decoder_flush(self.ctx)
            .map_err(|e| anyhow!("DECODER_CMD: {e}"))?;
        self.flush_tx()
    }

    /// OUTPUT buffers the device still owns.
    fn outputs_in_flight(&self) -> usize {
        OUTPUT_BUFFERS as usize - self.free_out.len()
    }

    /// Waits (at most `timeout`, or not at all with `Some(0)`) for daemon
    /// traffic and returns the pictures dequeued meanwhile. Finished OUTPUT
    /// buffers return to the free pool.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Picture>> {
        self.pump(Some(timeout))?;
        let mut pics = Vec::new();
        loop {
            match self.dev.dqbuf(self.ctx, Queue::Output) {
                Ok(d) => self.free_out.push(d.index),
                Err(BufError::WouldBlock) => break,
                Err(e) => bail!("DQBUF(OUTPUT): {e}"),
            }
        }
        loop {
            match self.dev.dqbuf(self.ctx, Queue::Capture) {
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
        Ok(pics)
    }
}

impl Embedded {
    /// Sends every datagram the device queued, with buffer fds attached.
    fn flush_tx(&mut self) -> Result<()> {
        while let Some(o) = self.dev.poll_transmit() {
            if let Some((dispatched, _)) = self.timing.as_mut() {
                if let Ok(proto::Message::Decode(job, _)) = proto::decode(&o.bytes) {
                    dispatched.insert(job.timestamp, Instant::now());
                }
            }
            let fds: Vec<BorrowedFd<'_>> = match o.fds {
                Some((_, q, i)) => {
                    let bufs = match q {
                        Queue::Output => &self.out_bufs,
                        Queue::Capture => &self.cap_bufs,
                    };
                    bufs[i as usize].iter().map(|p| p.fd()).collect()
                }
                None => Vec::new(),
            };
            if let Err(e) = self.link.send(&o.bytes, &fds) {
                tracing::warn!("daemon link lost: {e}");
                let now = self.now();
                self.dev.daemon_detach(now);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Receives what the daemon sent, within `timeout` and the device's
    /// next deadline; runs the timers.
    fn pump(&mut self, timeout: Option<Duration>) -> Result<()> {
        let mut wait = timeout.unwrap_or(Duration::ZERO);
        if let Some(d) = self.dev.next_deadline() {
            wait = wait.min(Duration::from_nanos(d.saturating_sub(self.now())));
        }
        let mut first = true;
        loop {
            let t = if first { wait } else { Duration::ZERO };
            first = false;
            let link_fd = self.link.as_fd();
            let mut fds = [rustix::event::PollFd::new(
                &link_fd,
                rustix::event::PollFlags::IN,
            )];
            let ts = rustix::event::Timespec {
                tv_sec: t.as_secs() as i64,
                tv_nsec: t.subsec_nanos() as i64,
            };
            let n = match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                break;
            }
            if !matches!(self.dev.link(), Link::Detached) {
                match self.link.recv(&mut self.rx, &self.shutdown) {
                    Ok(r) => {
                        let now = self.now();
                        if let Err(e) = self.dev.daemon_receive(&self.rx[..r.len], now) {
                            tracing::warn!("daemon message refused, link dropped: {e}");
                            self.link.close();
                        }
                        self.drain_events();
                    }
                    Err(e) => {
                        tracing::warn!("daemon link: {e}");
                        let now = self.now();
                        self.dev.daemon_detach(now);
                        self.link.close();
                        break;
                    }
                }
            } else {
                break;
            }
        }
        let now = self.now();
        self.dev.tick(now);
        self.drain_events();
        self.flush_tx()
    }

    /// Turns per-job timing on.
    pub fn enable_timing(&mut self) {
        self.timing = Some((HashMap::new(), Vec::new()));
    }

    fn drain_events(&mut self) {
        let at = Instant::now();
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
                            done.push((ts, at - t0));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let now = self.now();
        self.dev.close_context(self.ctx, now);
        let _ = self.flush_tx();
        self.shutdown.trigger();
        self.link.close();
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}
