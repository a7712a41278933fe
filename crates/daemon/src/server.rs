//! The daemon side of one bridge connection.
//!
//! [`Server::serve`] runs one connection to a frontend until the frontend
//! goes away, a [`Shutdown`] is triggered, or the frontend breaks the
//! protocol:
//!
//! 1. It waits for `Hello` and answers `HelloReply` with the features both
//!    sides support.
//! 2. `CtxOpen` creates a context: its formats are checked at once (an
//!    unusable format is reported with `CtxStatus` and every job of the
//!    context fails), and a worker thread opens a backend session for the
//!    codec (failure: `CtxStatus` too). A `CtxOpen` of an open context (the
//!    frontend re-opens after a format change) replaces its session and keeps
//!    its registered buffers.
//! 3. `BufRegister` maps a buffer's memory, `BufUnregister` unmaps it.
//! 4. `Decode` resolves its buffers and controls and queues the job on its
//!    context's worker, which runs jobs in order. Every job is answered
//!    exactly once with a `Result` ([`Reply`]); a context's results come in
//!    job order (a job refused for unregistered buffers or invalid controls
//!    is answered in its turn too).
//! 5. `Cancel` answers a queued job ECANCELED without decoding it; a running
//!    job is answered when it ends.
//! 6. `CtxClose` stops the context's worker after its current job and
//!    answers its queued jobs ECANCELED.
//!
//! A malformed or unexpected message ends the connection (logged, never a
//! panic). When the connection ends, every context is closed, workers are
//! joined (bounded by [`ServerConfig::close_timeout`]) and every mapping and
//! descriptor is released before `serve` returns.
//!
//! # Embedding
//!
//! [`EmbeddedDaemon::spawn`] runs a server on a thread over one end of a
//! socketpair and returns the other end for the in-process frontend:
//!
//! ```no_run
//! use daedalus_daemon::server::{EmbeddedDaemon, ServerConfig};
//!
//! let (daemon, frontend_end) = EmbeddedDaemon::spawn(ServerConfig::default())?;
//! // The frontend calls `Device::daemon_attach`, sends `poll_transmit()`
//! // datagrams (with buffer memfds) on `frontend_end` and feeds what it
//! // receives to `Device::daemon_receive`.
//! # drop(frontend_end);
//! let end = daemon.stop(); // or just drop it
//! # let _ = end;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! [`Server::serve`] is the same thing on a transport and thread of the
//! caller's choice.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use decoder_core::ctrl::{self, Codec, ControlValues};
use decoder_core::fmt;
use decoder_core::proto::{
    self, Message, DV_DECODE_CONTINUE, DV_DECODE_HOLD_CAPTURE, DV_FEAT_CANCEL, DV_FEAT_DMABUF,
    DV_FEAT_HOLD_CAPTURE, DV_FEAT_MEMFD, DV_MAX_MSG_SIZE, DV_QUEUE_CAPTURE, DV_QUEUE_OUTPUT,
};
use rustix::io::Errno;

use crate::backend::{self, JobFlags};
use crate::buffers::{BufferError, CaptureLayout, RegisteredBuffer};
use crate::prefault::Prefaulter;
use crate::reply::{Outbox, Reply};
use crate::transport::{SeqPacket, Shutdown, Transport, TransportError};
use crate::worker::{self, CancelOutcome, CtxQueue, JobWork, PendingJob, Semaphore, WorkerArgs};

pub use crate::worker::BackendFactory;

/// Features this daemon implements.
pub const SUPPORTED_FEATURES: u64 =
    DV_FEAT_DMABUF | DV_FEAT_MEMFD | DV_FEAT_CANCEL | DV_FEAT_HOLD_CAPTURE;

/// Most contexts open at once on one connection; opening more ends the
/// connection (a frontend bug, or an attempt to exhaust the daemon).
pub const MAX_CONTEXTS: usize = 1024;

/// Buffer indexes accepted per queue (V4L2 queues hold far fewer).
pub const MAX_BUFFER_INDEX: u32 = 256;

/// Default [`ServerConfig::idle_watch`]: a context's next job usually
/// comes one frontend round trip after its last result, well within it,
/// while waking a sleeping thread costs tens of µs on a virtual CPU.
pub const DEFAULT_IDLE_WATCH: Duration = Duration::from_micros(250);

/// Configuration of a [`Server`].
#[derive(Clone)]
pub struct ServerConfig {
    /// Most jobs decoding at once, over every context and connection.
    pub threads: usize,
    /// Opens a backend session for a codec.
    pub backends: BackendFactory,
    /// How long closing a connection waits for running jobs to end before
    /// leaving their threads behind.
    pub close_timeout: Duration,
    /// How long an idle context worker watches its queue (yielding the
    /// CPU) before it sleeps; zero sleeps at once. A job that arrives
    /// meanwhile starts without a thread wake-up.
    pub idle_watch: Duration,
    /// CPUs the context workers (hence their backends' threads) and, unless
    /// [`ServerConfig::reader_cpus`] says otherwise, the connection's reader
    /// are confined to; `None` leaves them to the scheduler
    /// ([`crate::affinity`]). The prefault thread gets the other CPUs.
    pub cpus: Option<Vec<usize>>,
    /// CPUs of the connection's reader when they differ from
    /// [`ServerConfig::cpus`] (`None`: the same).
    pub reader_cpus: Option<Vec<usize>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("threads", &self.threads)
            .field("close_timeout", &self.close_timeout)
            .field("idle_watch", &self.idle_watch)
            .field("cpus", &self.cpus)
            .field("reader_cpus", &self.reader_cpus)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    /// One decode per core, the built-in backends, 5 s close timeout,
    /// [`DEFAULT_IDLE_WATCH`].
    fn default() -> Self {
        ServerConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backends: Arc::new(backend::open),
            close_timeout: Duration::from_secs(5),
            idle_watch: DEFAULT_IDLE_WATCH,
            cpus: None,
            reader_cpus: None,
        }
    }
}

/// How a connection ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The frontend closed the connection.
    PeerClosed,
    /// The [`Shutdown`] latch was triggered.
    Shutdown,
}

/// Why a connection was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The frontend sent a datagram that does not decode.
    #[error("malformed message: {0}")]
    Proto(#[from] proto::ProtoError),
    /// The frontend sent a well-formed message it must not send now.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// Receiving or sending failed (including over-long datagrams and
    /// descriptor lists).
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Serves bridge connections; one `Server` may serve several connections in
/// turn or at once, sharing its decode concurrency limit.
#[derive(Debug, Clone)]
pub struct Server {
    cfg: ServerConfig,
    permits: Arc<Semaphore>,
    /// CPUs of the prefault thread: those allowed at [`Server::new`] that
    /// [`ServerConfig::cpus`] leaves out (`None`: not confined).
    prefault_cpus: Option<Vec<usize>>,
}

impl Server {
    /// A server with this configuration.
    pub fn new(cfg: ServerConfig) -> Self {
        let permits = Arc::new(Semaphore::new(cfg.threads));
        let prefault_cpus = cfg.cpus.as_ref().and_then(|jobs| {
            let others: Vec<usize> = crate::affinity::allowed()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| !jobs.contains(c))
                .collect();
            (!others.is_empty()).then_some(others)
        });
        Server {
            cfg,
            permits,
            prefault_cpus,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Serves one connection until it ends; see the module documentation.
    /// On return every context, worker, mapping and received descriptor of
    /// the connection is gone (except workers still stuck in a backend past
    /// the close timeout, which are logged and left to finish on their own).
    /// The transport is closed when the session ends with an error or a
    /// shutdown. With [`ServerConfig::reader_cpus`] or
    /// [`ServerConfig::cpus`] the calling thread, the connection's reader,
    /// is confined to those CPUs.
    pub fn serve(
        &self,
        transport: Arc<dyn Transport>,
        shutdown: &Shutdown,
    ) -> Result<SessionEnd, ServeError> {
        if let Some(cpus) = self.cfg.reader_cpus.as_ref().or(self.cfg.cpus.as_ref()) {
            if let Err(e) = crate::affinity::confine(cpus) {
                tracing::warn!("cannot confine the reader to CPUs {cpus:?}: {e}");
            }
        }
        let mut s = Session {
            cfg: &self.cfg,
            permits: &self.permits,
            transport: transport.clone(),
            out: Arc::new(Outbox::new(transport.clone(), shutdown.clone())),
            agreed: None,
            ctxs: HashMap::new(),
            retired: Vec::new(),
            prefault_cpus: &self.prefault_cpus,
            prefault: None,
        };
        let r = s.run(shutdown);
        match &r {
            Ok(SessionEnd::PeerClosed) => tracing::info!("frontend closed the connection"),
            Ok(SessionEnd::Shutdown) => tracing::info!("shutting down"),
            Err(e) => tracing::warn!("dropping the connection: {e}"),
        }
        if !matches!(r, Ok(SessionEnd::PeerClosed)) {
            transport.close();
        }
        s.teardown();
        r
    }
}

/// A server serving one in-process connection on its own thread.
///
/// Dropping it (or [`EmbeddedDaemon::stop`]) triggers its shutdown latch and
/// joins the thread, which releases every context, mapping and descriptor.
#[derive(Debug)]
pub struct EmbeddedDaemon {
    shutdown: Shutdown,
    thread: Option<JoinHandle<Result<SessionEnd, ServeError>>>,
}

impl EmbeddedDaemon {
    /// Creates a `SOCK_SEQPACKET` socketpair, serves one end on a new thread
    /// and returns the other end for the frontend.
    pub fn spawn(cfg: ServerConfig) -> std::io::Result<(EmbeddedDaemon, SeqPacket)> {
        let (daemon_end, frontend_end) = SeqPacket::pair()?;
        let shutdown = Shutdown::new()?;
        let server = Server::new(cfg);
        let sd = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("dv-daemon".into())
            .spawn(move || server.serve(Arc::new(daemon_end), &sd))?;
        Ok((
            EmbeddedDaemon {
                shutdown,
                thread: Some(thread),
            },
            frontend_end,
        ))
    }

    /// The latch that stops the server.
    pub fn shutdown_latch(&self) -> &Shutdown {
        &self.shutdown
    }

    /// True once the server returned (the frontend closed its end or broke
    /// the protocol).
    pub fn is_finished(&self) -> bool {
        match &self.thread {
            Some(t) => t.is_finished(),
            None => true,
        }
    }

    /// Stops the server and returns how its connection ended.
    pub fn stop(mut self) -> Result<SessionEnd, ServeError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<SessionEnd, ServeError> {
        self.shutdown.trigger();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(unexpected("the server thread panicked")),
            None => Ok(SessionEnd::Shutdown),
        }
    }
}

impl Drop for EmbeddedDaemon {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::debug!("embedded daemon: {e}");
        }
    }
}

/// A context of the connection.
struct Ctx {
    /// Registered buffers by (`DV_QUEUE_*`, index). They outlive a re-open
    /// of the context (the frontend sends `CtxOpen` again after a format
    /// change and keeps the registrations it did not withdraw).
    buffers: HashMap<(u32, u32), Arc<RegisteredBuffer>>,
    session: CtxSession,
}

enum CtxSession {
    /// Formats unusable: every job fails with this errno.
    Failed(i32),
    /// A worker serves the context.
    Live {
        codec: Codec,
        queue: Arc<CtxQueue>,
        worker: JoinHandle<()>,
    },
}

struct Session<'a> {
    cfg: &'a ServerConfig,
    permits: &'a Arc<Semaphore>,
    transport: Arc<dyn Transport>,
    out: Arc<Outbox>,
    /// Agreed features once the handshake is done.
    agreed: Option<u64>,
    ctxs: HashMap<u32, Ctx>,
    /// Workers of closed contexts, still finishing their current job.
    retired: Vec<JoinHandle<()>>,
    prefault_cpus: &'a Option<Vec<usize>>,
    /// Started at the first buffer that wants prefaulting.
    prefault: Option<Prefaulter>,
}

fn unexpected(s: impl Into<String>) -> ServeError {
    ServeError::Unexpected(s.into())
}

impl Session<'_> {
    fn run(&mut self, shutdown: &Shutdown) -> Result<SessionEnd, ServeError> {
        let mut buf = vec![0u8; DV_MAX_MSG_SIZE as usize];
        loop {
            let rx = match self.transport.recv(&mut buf, shutdown) {
                Ok(rx) => rx,
                Err(TransportError::Closed) => return Ok(SessionEnd::PeerClosed),
                Err(TransportError::Shutdown) => return Ok(SessionEnd::Shutdown),
                Err(e) => return Err(e.into()),
            };
            let msg = proto::decode(&buf[..rx.len])?;
            tracing::trace!(kind = ?msg.kind(), fds = rx.fds.len(), "received");
            if !rx.fds.is_empty() && !matches!(msg, Message::BufRegister(_)) {
                return Err(unexpected(format!(
                    "{} descriptors with a {:?} message",
                    rx.fds.len(),
                    msg.kind()
                )));
            }
            self.handle(msg, rx.fds)?;
            self.retired.retain(|h| !h.is_finished());
        }
    }

    fn handle(&mut self, msg: Message<'_>, fds: Vec<OwnedFd>) -> Result<(), ServeError> {
        let Some(_features) = self.agreed else {
            return match msg {
                Message::Hello(h) => self.hello(h),
                m => Err(unexpected(format!("{:?} before hello", m.kind()))),
            };
        };
        match msg {
            Message::CtxOpen(o) => self.ctx_open(o),
            Message::CtxClose(c) => {
                match self.ctxs.remove(&c.ctx_id) {
                    Some(e) => self.end_session(e.session),
                    None => tracing::debug!(ctx = c.ctx_id, "close of an unknown context"),
                }
                Ok(())
            }
            Message::BufRegister(r) => self.buf_register(r, fds),
            Message::BufUnregister(u) => {
                if let Some(c) = self.ctxs.get_mut(&u.ctx_id) {
                    c.buffers.remove(&(u.queue, u.index));
                }
                Ok(())
            }
            Message::Decode(job, ctrls) => {
                self.decode(job, &ctrls);
                Ok(())
            }
            Message::Cancel(c) => {
                let outcome = match self.ctxs.get(&c.ctx_id) {
                    Some(Ctx {
                        session: CtxSession::Live { queue, .. },
                        ..
                    }) => queue.cancel(c.cookie),
                    _ => CancelOutcome::Unknown,
                };
                tracing::debug!(ctx = c.ctx_id, cookie = c.cookie, ?outcome, "cancel");
                Ok(())
            }
            m @ (Message::Hello(_)
            | Message::HelloReply(_)
            | Message::Result(_)
            | Message::CtxStatus(_)) => Err(unexpected(format!(
                "{:?} from the frontend after the handshake",
                m.kind()
            ))),
        }
    }

    fn hello(&mut self, h: proto::Hello) -> Result<(), ServeError> {
        if h.version_major != proto::DV_VERSION_MAJOR {
            return Err(unexpected(format!(
                "frontend protocol version {}.{}",
                h.version_major, h.version_minor
            )));
        }
        let features = h.features & SUPPORTED_FEATURES;
        if features & (DV_FEAT_DMABUF | DV_FEAT_MEMFD) == 0 {
            tracing::warn!(
                offered = h.features,
                "frontend offers no buffer memory type this daemon maps"
            );
        }
        self.agreed = Some(features);
        tracing::info!(
            version = format!("{}.{}", h.version_major, h.version_minor),
            features,
            "frontend attached"
        );
        self.out.send(&Message::HelloReply(proto::Hello {
            version_major: proto::DV_VERSION_MAJOR,
            version_minor: proto::DV_VERSION_MINOR,
            max_inflight: u32::try_from(self.cfg.threads).unwrap_or(u32::MAX),
            features,
            max_msg_size: DV_MAX_MSG_SIZE,
            reserved: 0,
        }));
        Ok(())
    }

    fn ctx_open(&mut self, o: proto::CtxOpen) -> Result<(), ServeError> {
        if !self.ctxs.contains_key(&o.ctx_id) && self.ctxs.len() >= MAX_CONTEXTS {
            return Err(unexpected(format!("more than {MAX_CONTEXTS} contexts")));
        }
        // Opening an open context again (after S_FMT) replaces its session:
        // queued jobs are cancelled, the buffers stay registered.
        let (buffers, was_failed) = match self.ctxs.remove(&o.ctx_id) {
            Some(old) => {
                tracing::info!(ctx = o.ctx_id, "context re-opened");
                let was_failed = matches!(old.session, CtxSession::Failed(_));
                self.end_session(old.session);
                (old.buffers, was_failed)
            }
            None => (HashMap::new(), false),
        };
        let session = self.open_session(&o);
        if was_failed && matches!(session, CtxSession::Live { .. }) {
            // Withdraw the earlier refusal.
            self.out.ctx_status(o.ctx_id, 0);
        }
        self.ctxs.insert(o.ctx_id, Ctx { buffers, session });
        Ok(())
    }

    fn open_session(&mut self, o: &proto::CtxOpen) -> CtxSession {
        // `proto::decode` already refused unknown codec values.
        let codec = Codec::from_wire(o.codec);
        let layout = match codec {
            Some(c) if fmt::codec_of(o.coded_fourcc) == Some(c) => CaptureLayout::from_ctx_open(o),
            _ => None,
        };
        let (Some(codec), Some(layout)) = (codec, layout) else {
            tracing::warn!(ctx = o.ctx_id, "unsupported formats {o:?}");
            let errno = Errno::INVAL.raw_os_error();
            self.out.ctx_status(o.ctx_id, errno);
            return CtxSession::Failed(errno);
        };
        tracing::info!(
            ctx = o.ctx_id,
            ?codec,
            width = layout.width,
            height = layout.height,
            "context opened"
        );
        let queue = CtxQueue::new();
        let args = WorkerArgs {
            ctx_id: o.ctx_id,
            codec,
            layout,
            queue: queue.clone(),
            factory: self.cfg.backends.clone(),
            permits: self.permits.clone(),
            out: self.out.clone(),
            idle_watch: self.cfg.idle_watch,
            cpus: self.cfg.cpus.clone(),
        };
        let worker = std::thread::Builder::new()
            .name(format!("dv-ctx-{}", o.ctx_id))
            .spawn(move || worker::run(args));
        match worker {
            Ok(worker) => CtxSession::Live {
                codec,
                queue,
                worker,
            },
            Err(e) => {
                tracing::error!(ctx = o.ctx_id, "cannot start a worker: {e}");
                let errno = e.raw_os_error().unwrap_or(Errno::AGAIN.raw_os_error());
                self.out.ctx_status(o.ctx_id, errno);
                CtxSession::Failed(errno)
            }
        }
    }

    fn buf_register(&mut self, r: proto::BufRegister, fds: Vec<OwnedFd>) -> Result<(), ServeError> {
        if r.index >= MAX_BUFFER_INDEX {
            return Err(unexpected(format!("buffer index {}", r.index)));
        }
        let Some(c) = self.ctxs.get_mut(&r.ctx_id) else {
            // Unknown context: the descriptors are closed here.
            tracing::debug!(ctx = r.ctx_id, "buffer of an unknown context");
            return Ok(());
        };
        let key = (r.queue, r.index);
        // The old memory of this slot is gone whatever happens next.
        c.buffers.remove(&key);
        match RegisteredBuffer::map(&r, fds) {
            Ok(b) => {
                tracing::debug!(
                    ctx = r.ctx_id,
                    queue = r.queue,
                    index = r.index,
                    planes = b.num_planes(),
                    "buffer registered"
                );
                let b = Arc::new(b);
                if b.wants_prefault() && self.prefault.is_none() {
                    match Prefaulter::spawn(self.prefault_cpus.clone()) {
                        Ok(p) => self.prefault = Some(p),
                        Err(e) => tracing::debug!("no prefault thread: {e}"),
                    }
                }
                if let Some(p) = &self.prefault {
                    p.submit(&b);
                }
                c.buffers.insert(key, b);
                Ok(())
            }
            Err(e @ BufferError::MissingFd { .. }) => Err(unexpected(format!("buf_register: {e}"))),
            Err(e) => {
                // The buffer stays unusable: its jobs fail, the link stays up.
                tracing::warn!(ctx = r.ctx_id, queue = r.queue, index = r.index, "{e}");
                Ok(())
            }
        }
    }

    fn decode(&mut self, job: proto::DecodeJob, ctrls: &[proto::WireCtrl<'_>]) {
        let reply = Reply::new(self.out.clone(), job.ctx_id, job.cookie);
        let Some(c) = self.ctxs.get(&job.ctx_id) else {
            // Closed (jobs may still be in flight towards us) or never
            // opened: answer, so the frontend can complete it.
            tracing::debug!(ctx = job.ctx_id, cookie = job.cookie, "job of no context");
            return reply.error(Errno::BADF.raw_os_error());
        };
        let (codec, queue) = match &c.session {
            CtxSession::Live { codec, queue, .. } => (*codec, queue),
            CtxSession::Failed(errno) => return reply.error(*errno),
        };
        let work = resolve_job(&job, ctrls, codec, &c.buffers);
        queue.push(PendingJob {
            reply,
            cancelled: Arc::new(AtomicBool::new(false)),
            work,
        });
    }

    /// Stops a session's worker after its current job (queued jobs are
    /// answered ECANCELED). Running jobs keep their own buffer references.
    fn end_session(&mut self, s: CtxSession) {
        if let CtxSession::Live { queue, worker, .. } = s {
            queue.close();
            self.retired.push(worker);
        }
    }

    fn teardown(&mut self) {
        self.prefault = None;
        let ids: Vec<u32> = self.ctxs.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.ctxs.remove(&id) {
                self.end_session(c.session);
            }
        }
        let deadline = Instant::now() + self.cfg.close_timeout;
        for h in self.retired.drain(..) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                if h.join().is_err() {
                    tracing::error!("a worker panicked");
                }
            } else {
                tracing::error!(
                    thread = h.thread().name().unwrap_or("?"),
                    "worker still busy after the close timeout; leaving it"
                );
            }
        }
    }
}

/// The buffers and controls of a job, or the errno it fails with.
fn resolve_job(
    job: &proto::DecodeJob,
    ctrls: &[proto::WireCtrl<'_>],
    codec: Codec,
    buffers: &HashMap<(u32, u32), Arc<RegisteredBuffer>>,
) -> Result<JobWork, i32> {
    let (Some(output), Some(capture)) = (
        buffers.get(&(DV_QUEUE_OUTPUT, job.output_index)),
        buffers.get(&(DV_QUEUE_CAPTURE, job.capture_index)),
    ) else {
        tracing::warn!(
            ctx = job.ctx_id,
            cookie = job.cookie,
            output = job.output_index,
            capture = job.capture_index,
            "job names a buffer that is not registered"
        );
        return Err(Errno::INVAL.raw_os_error());
    };
    let controls = job_controls(codec, ctrls).map_err(|(id, e)| {
        tracing::warn!(
            ctx = job.ctx_id,
            cookie = job.cookie,
            "control {id:#x}: {e}"
        );
        e.errno()
    })?;
    let n = (job.num_refs as usize).min(job.refs.len());
    Ok(JobWork {
        timestamp: job.timestamp,
        bytesused: job.bytesused,
        flags: JobFlags {
            more_slices: job.flags & DV_DECODE_HOLD_CAPTURE != 0,
            continues_picture: job.flags & DV_DECODE_CONTINUE != 0,
        },
        controls,
        references: job.refs[..n].iter().map(|r| r.timestamp).collect(),
        output: output.clone(),
        capture: capture.clone(),
    })
}

/// The job's control values: each control validated as a client's write
/// would be, over the codec's defaults.
fn job_controls(
    codec: Codec,
    ctrls: &[proto::WireCtrl<'_>],
) -> Result<ControlValues, (u32, ctrl::CtrlError)> {
    let mut v = ControlValues::defaults(codec);
    for c in ctrls {
        match ctrl::validate_write(codec, c.id, c.payload) {
            Ok(bytes) => v.set_raw(c.id, bytes),
            // A read-only control's value is the driver's, not the job's.
            Err(ctrl::CtrlError::ReadOnly(_)) => {}
            Err(e) => return Err((c.id, e)),
        }
    }
    Ok(v)
}
