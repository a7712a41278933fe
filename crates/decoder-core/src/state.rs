//! The request / in-flight / drain state machine of one decoder device.
//!
//! A [`Device`] owns every context (one per open of the video node), every
//! media request, the link to the daemon and the table of jobs in flight.
//! Frontends call one named transition per client ioctl or daemon event and
//! then carry out what the device asks for:
//!
//! * [`Device::poll_transmit`]: datagrams to send to the daemon (with the fds
//!   of a buffer where [`Outbound::fds`] says so);
//! * [`Device::poll_event`]: buffers completed, requests completed, jobs
//!   finished — wake the waiters;
//! * [`Device::next_deadline`]: when to call [`Device::tick`] at the latest.
//!
//! Invariants (checked by the property tests):
//! 1. Every buffer a client queued comes back exactly once (DQBUF, or the
//!    return to DEQUEUED by STREAMOFF / REQBUFS / close).
//! 2. Every dispatched job completes exactly once ([`Event::JobDone`]), with
//!    DONE only from a matching daemon result.
//! 3. STREAMOFF and close never wait: a job they interrupt is cancelled and
//!    kept as a *zombie* only until the daemon answers, the deadline passes
//!    or the daemon detaches; the in-flight count always returns to zero.
//! 4. With no daemon attached, a ready job fails at once (fail-fast); a job
//!    dispatched to a daemon that then detaches completes with ERROR.
//! 5. Results that are late, duplicated, of another context or of an
//!    earlier daemon connection are counted in [`Stats`] and never applied.
//! 6. Nothing one context does changes another context's buffers.

use std::collections::{BTreeMap, VecDeque};

use crate::ctrl::{self, libc_errno as e, Codec, ControlValues, CtrlError};
use crate::fmt::{self, PixFormat};
use crate::proto::{self, Message, WireCtrl};

/// Every transition of [`Device`]: the methods that change its state. The
/// state tables in docs/architecture.md have a row for each (a test checks).
pub const TRANSITIONS: &[&str] = &[
    "open_context",
    "set_format",
    "reqbufs",
    "create_bufs",
    "qbuf",
    "dqbuf",
    "streamon",
    "streamoff",
    "request_alloc",
    "set_controls",
    "request_queue",
    "request_reinit",
    "request_close",
    "decoder_flush",
    "close_context",
    "daemon_attach",
    "daemon_detach",
    "daemon_receive",
    "tick",
];

/// Monotonic time in nanoseconds, supplied by the frontend.
pub type Nanos = u64;

/// A context (one open file of the video node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtxId(pub u32);

/// A media request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u32);

/// One of a context's two queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Queue {
    /// Bitstream in (`V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE`).
    Output,
    /// Pictures out (`V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`).
    Capture,
}

impl Queue {
    fn wire(self) -> u32 {
        match self {
            Queue::Output => proto::DV_QUEUE_OUTPUT,
            Queue::Capture => proto::DV_QUEUE_CAPTURE,
        }
    }
}

/// Buffer memory type (`enum v4l2_memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Memory {
    /// `V4L2_MEMORY_MMAP`
    Mmap,
    /// `V4L2_MEMORY_USERPTR`
    Userptr,
    /// `V4L2_MEMORY_DMABUF`
    Dmabuf,
}

/// `V4L2_BUF_FLAG_KEYFRAME`
pub const BUF_FLAG_KEYFRAME: u32 = 0x0000_0008;
/// `V4L2_BUF_FLAG_ERROR`
pub const BUF_FLAG_ERROR: u32 = 0x0000_0040;
/// `V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF`
pub const BUF_FLAG_M2M_HOLD_CAPTURE_BUF: u32 = 0x0000_0200;
/// Flags copied from an OUTPUT buffer to its CAPTURE buffer
/// (`V4L2_BUF_FLAG_TIMECODE | KEYFRAME | PFRAME | BFRAME`).
pub const BUF_FLAGS_COPIED: u32 = 0x0000_0100 | 0x08 | 0x10 | 0x20;

/// Where a buffer is, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufState {
    /// Owned by the client.
    Dequeued,
    /// Bound to a media request that is not queued yet.
    InRequest(ReqId),
    /// Queued, waiting for a job.
    Queued,
    /// Part of a job (or a held CAPTURE buffer awaiting more slices).
    Active,
    /// Completed, waiting for DQBUF.
    Done {
        /// Completed with `V4L2_BUF_FLAG_ERROR`.
        error: bool,
    },
}

/// Public view of one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferInfo {
    /// State.
    pub state: BufState,
    /// Bytes used per plane.
    pub bytesused: [u32; 4],
    /// Plane lengths.
    pub length: [u32; 4],
    /// Memory planes.
    pub num_planes: u32,
    /// Timestamp (ns).
    pub timestamp: u64,
    /// `V4L2_BUF_FLAG_*` the client set or the driver reported.
    pub flags: u32,
    /// Sequence number of the last completion.
    pub sequence: u32,
}

#[derive(Debug, Clone)]
struct Buffer {
    info: BufferInfo,
    /// Daemon connection generation this buffer's memory is registered with.
    registered_gen: Option<u64>,
    /// The queued request this (OUTPUT) buffer belongs to.
    request: Option<ReqId>,
    /// (CAPTURE) holds a decoded picture that later jobs may reference.
    has_picture: bool,
}

#[derive(Debug, Clone)]
struct QueueState {
    memory: Memory,
    bufs: Vec<Buffer>,
    streaming: bool,
    /// Queued buffers in queue order (state `Queued`).
    ready: VecDeque<u32>,
    /// Completed buffers in completion order (state `Done`).
    done: VecDeque<u32>,
    sequence: u32,
    fmt: PixFormat,
}

impl QueueState {
    fn new(fmt: PixFormat) -> Self {
        QueueState {
            memory: Memory::Mmap,
            bufs: Vec::new(),
            streaming: false,
            ready: VecDeque::new(),
            done: VecDeque::new(),
            sequence: 0,
            fmt,
        }
    }
}

/// One dequeued buffer, as DQBUF reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dequeued {
    /// Buffer index.
    pub index: u32,
    /// Bytes used per plane.
    pub bytesused: [u32; 4],
    /// Flags (`V4L2_BUF_FLAG_ERROR` on failure).
    pub flags: u32,
    /// Timestamp (ns).
    pub timestamp: u64,
    /// Sequence number.
    pub sequence: u32,
}

/// State of a media request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqState {
    /// Allocated or re-initialised: controls and a buffer may be added.
    Idle,
    /// Queued: its job is pending or running.
    Queued,
    /// Its job finished (or was cancelled); pollable, controls readable.
    Complete,
}

#[derive(Debug, Clone)]
struct Request {
    ctx: Option<CtxId>,
    state: ReqState,
    ctrls: ControlValues,
    bufs: Vec<u32>,
    /// The client's fd is closed; the request lives on only while queued.
    closed: bool,
}

/// A job in the in-flight table.
#[derive(Debug)]
struct InFlight {
    ctx: CtxId,
    gen: u64,
    output: u32,
    capture: u32,
    request: Option<ReqId>,
    /// The OUTPUT buffer asked to hold the CAPTURE buffer.
    hold: bool,
    deadline: Nanos,
    /// Cancelled (STREAMOFF, close, timeout): its buffers are already
    /// returned; only the daemon's acknowledgement is awaited.
    zombie: bool,
    token: JobToken,
}

/// Proof that a dispatched job still has to complete. Consumed by
/// [`JobToken::complete`]; dropping it unconsumed is a state-machine bug and
/// panics (outside of unwinding), so no path can leave a client waiting.
#[derive(Debug)]
struct JobToken {
    cookie: u64,
    done: bool,
}

impl JobToken {
    fn complete(mut self) -> u64 {
        self.done = true;
        self.cookie
    }
}

impl Drop for JobToken {
    fn drop(&mut self) {
        if !self.done && !std::thread::panicking() {
            panic!("job {} dropped without completing", self.cookie);
        }
    }
}

#[derive(Debug)]
struct Context {
    codec: Codec,
    out: QueueState,
    cap: QueueState,
    /// Current control values (applied requests update them).
    ctrls: ControlValues,
    /// Cookies of the dispatched (non-zombie) jobs, in dispatch order: at
    /// most [`Config::pipeline_depth`].
    active: VecDeque<u64>,
    /// CAPTURE buffer held for further slices of the same picture.
    held: Option<u32>,
    /// Daemon generation in which the daemon knows this context.
    opened_gen: Option<u64>,
    /// Error the daemon reported for this context (its jobs fail).
    daemon_error: Option<u32>,
}

/// Link to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// No daemon: ready jobs fail at once.
    Detached,
    /// Hello sent, waiting for the reply (bounded by the handshake deadline).
    Handshaking {
        /// Connection generation.
        gen: u64,
        /// Give up at this time.
        deadline: Nanos,
    },
    /// Serving jobs.
    Attached {
        /// Connection generation.
        gen: u64,
        /// Agreed `DV_FEAT_*`.
        features: u64,
    },
}

/// Counters of unusual events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Jobs sent to the daemon.
    pub dispatched: u64,
    /// Jobs completed DONE.
    pub done: u64,
    /// Jobs completed ERROR (any reason).
    pub errors: u64,
    /// Jobs failed at once because no daemon was attached.
    pub fail_fast: u64,
    /// Jobs failed by a daemon detach.
    pub drained: u64,
    /// Jobs failed by their deadline.
    pub timeouts: u64,
    /// Jobs cancelled by STREAMOFF or close.
    pub cancelled: u64,
    /// Results for unknown cookies (late after drain, duplicates, earlier
    /// connections).
    pub rejected_unknown: u64,
    /// Results naming the wrong context.
    pub rejected_foreign: u64,
    /// Results for cancelled jobs (acknowledgements).
    pub late_acks: u64,
    /// Malformed or unexpected daemon messages (each detaches the daemon).
    pub protocol_errors: u64,
}

/// What the frontend must do or may wake on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A buffer reached the done list (wake DQBUF / poll waiters).
    BufferDone {
        /// Context.
        ctx: CtxId,
        /// Queue.
        queue: Queue,
        /// Index.
        index: u32,
        /// Completed with ERROR.
        error: bool,
    },
    /// A request completed (wake its pollers).
    RequestDone(ReqId),
    /// A dispatched job completed; emitted exactly once per job.
    JobDone {
        /// Context.
        ctx: CtxId,
        /// Job cookie.
        cookie: u64,
        /// True for DONE, false for ERROR.
        ok: bool,
    },
    /// The daemon link ended (detach, protocol error, handshake timeout):
    /// the frontend closes its connection.
    DaemonDetached {
        /// Generation that ended.
        gen: u64,
    },
    /// The daemon answered the hello.
    DaemonAttached {
        /// Generation.
        gen: u64,
    },
}

/// A datagram for the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Daemon generation it belongs to (drop it if that link is gone).
    pub gen: u64,
    /// Encoded message.
    pub bytes: Vec<u8>,
    /// Send the memory of this buffer (one fd per plane) with it.
    pub fds: Option<(CtxId, Queue, u32)>,
}

/// Device configuration.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// A job the daemon has not finished by then completes with ERROR.
    pub job_timeout: Nanos,
    /// The daemon must answer the hello within this.
    pub handshake_timeout: Nanos,
    /// Largest buffer count per queue.
    pub max_buffers: u32,
    /// Memory types the frontend can serve.
    pub memory_mmap: bool,
    /// See `memory_mmap`.
    pub memory_userptr: bool,
    /// See `memory_mmap`.
    pub memory_dmabuf: bool,
    /// How buffer memory reaches the daemon (`DV_MEM_*`).
    pub daemon_memory: u32,
    /// Features the frontend offers (`DV_FEAT_*`).
    pub features: u64,
    /// Most contexts open at once.
    pub max_contexts: u32,
    /// Most requests allocated at once.
    pub max_requests: u32,
    /// QBUF on OUTPUT without a request fails with `EBADR` (vb2's
    /// `requires_requests`, as on cedrus or hantro). Off by default, as on
    /// visl and the kernel module: such a job runs with the context's
    /// current control values, which v4l2-compliance's streaming tests use.
    pub requests_required: bool,
    /// Jobs of one context the daemon may hold at once (at least 1). 1 is
    /// the v4l2-mem2mem model (the kernel module's): the next job is sent
    /// when the previous one completes. With 2 the next job waits in the
    /// daemon's queue while one decodes, so the backend starts it without
    /// a round trip through the frontend. Jobs still complete in order, one
    /// at a time; a job is not sent ahead of the one whose CAPTURE buffer it
    /// continues (`V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF`), nor while no daemon
    /// is attached. Each job's deadline runs from its dispatch.
    pub pipeline_depth: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            job_timeout: 2_000_000_000,
            handshake_timeout: 1_000_000_000,
            max_buffers: 32,
            memory_mmap: true,
            memory_userptr: false,
            memory_dmabuf: true,
            daemon_memory: proto::DV_MEM_DMABUF,
            features: proto::DV_FEAT_ALL,
            max_contexts: 64,
            max_requests: 1024,
            requests_required: false,
            pipeline_depth: 1,
        }
    }
}

/// Errors of the buffer-queue ioctls, each mapping to the errno V4L2 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BufError {
    /// Bad index, memory type, size or state.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The queue is busy (streaming, buffers in use, request misuse).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// An OUTPUT buffer without the request its queue requires (`EBADR`).
    #[error("request required")]
    BadRequest,
    /// A CAPTURE buffer with a request: mem2mem refuses those (`EPERM`).
    #[error("requests cannot be used with CAPTURE buffers")]
    CaptureRequest,
    /// Nothing to dequeue (`EAGAIN`).
    #[error("no buffer ready")]
    WouldBlock,
    /// The queue is not streaming (DQBUF) (`EINVAL`).
    #[error("not streaming")]
    NotStreaming,
    /// Unknown context.
    #[error("no such context")]
    NoContext,
}

impl BufError {
    /// errno
    pub fn errno(&self) -> i32 {
        match self {
            BufError::Invalid(_) | BufError::NotStreaming => e::EINVAL,
            BufError::Busy(_) => e::EBUSY,
            BufError::BadRequest => e::EBADR,
            BufError::CaptureRequest => e::EPERM,
            BufError::WouldBlock => e::EAGAIN,
            BufError::NoContext => e::EBADF,
        }
    }
}

/// Errors of the media request ioctls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Unknown request.
    #[error("no such request")]
    NoRequest,
    /// Wrong state for the operation (`EBUSY`).
    #[error("request busy")]
    Busy,
    /// Validation: no buffer or no object (`ENOENT`).
    #[error("request has no buffer")]
    Empty,
    /// Validation: more than one buffer, or objects of two contexts.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// Too many requests.
    #[error("out of requests")]
    NoMemory,
}

impl RequestError {
    /// errno
    pub fn errno(&self) -> i32 {
        match self {
            RequestError::NoRequest => e::EINVAL,
            RequestError::Busy => e::EBUSY,
            RequestError::Empty => e::ENOENT,
            RequestError::Invalid(_) => e::EINVAL,
            RequestError::NoMemory => e::ENOMEM,
        }
    }
}

/// Errors of the control ioctls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtrlsError {
    /// Control `index` (the ioctl's `error_idx`) was refused.
    #[error("control #{index}: {err}")]
    Ctrl {
        /// Index in the client's array.
        index: usize,
        /// Why.
        err: CtrlError,
    },
    /// Request problems.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Unknown context.
    #[error("no such context")]
    NoContext,
}

impl CtrlsError {
    /// errno
    pub fn errno(&self) -> i32 {
        match self {
            CtrlsError::Ctrl { err, .. } => err.errno(),
            CtrlsError::Request(r) => r.errno(),
            CtrlsError::NoContext => e::EBADF,
        }
    }
}

/// Errors of the format ioctls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FmtError {
    /// Buffers are allocated (`EBUSY`).
    #[error("buffers allocated")]
    Busy,
    /// Unknown context.
    #[error("no such context")]
    NoContext,
}

impl FmtError {
    /// errno
    pub fn errno(&self) -> i32 {
        match self {
            FmtError::Busy => e::EBUSY,
            FmtError::NoContext => e::EBADF,
        }
    }
}

/// A malformed or unexpected daemon message; the daemon was detached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaemonError {
    /// Did not decode.
    #[error("malformed message: {0}")]
    Proto(#[from] proto::ProtoError),
    /// Decoded, but not something a daemon may send now.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// No daemon is attached.
    #[error("no daemon attached")]
    NotAttached,
}

/// Outcome of a well-formed daemon result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultDisposition {
    /// Applied to its job.
    Applied,
    /// Acknowledged a cancelled job (nothing to apply).
    LateAck,
    /// No such job (late, duplicate, earlier connection): ignored.
    Unknown,
    /// The job belongs to another context: ignored.
    Foreign,
}

/// Arguments of QBUF beyond the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QbufArgs {
    /// Bytes used per plane (OUTPUT); 0 means the plane length.
    pub bytesused: [u32; 4],
    /// Timestamp (ns), OUTPUT only.
    pub timestamp: u64,
    /// Client flags (`V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF`, frame type...).
    pub flags: u32,
    /// The request to bind to (OUTPUT only).
    pub request: Option<ReqId>,
    /// The buffer's memory changed since the last QBUF (USERPTR address,
    /// DMABUF fd): register it with the daemon again.
    pub memory_changed: bool,
}

/// Poll readiness of a context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollState {
    /// A CAPTURE buffer can be dequeued (`POLLIN`).
    pub capture_ready: bool,
    /// An OUTPUT buffer can be dequeued (`POLLOUT`).
    pub output_ready: bool,
    /// Neither queue can make progress (`POLLERR`): not streaming, or
    /// streaming with no buffer queued or done.
    pub error: bool,
}

/// Which control values an ioctl addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `V4L2_CTRL_WHICH_CUR_VAL`
    Current,
    /// `V4L2_CTRL_WHICH_REQUEST_VAL` with a request fd.
    Request(ReqId),
}

/// The device: every context, request, in-flight job and the daemon link.
#[derive(Debug)]
pub struct Device {
    cfg: Config,
    contexts: BTreeMap<CtxId, Context>,
    requests: BTreeMap<ReqId, Request>,
    inflight: BTreeMap<u64, InFlight>,
    link: Link,
    next_gen: u64,
    next_ctx: u32,
    next_req: u32,
    next_cookie: u64,
    tx_seq: u32,
    tx: VecDeque<Outbound>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Device {
    /// A device with no context and no daemon.
    pub fn new(cfg: Config) -> Self {
        Device {
            cfg,
            contexts: BTreeMap::new(),
            requests: BTreeMap::new(),
            inflight: BTreeMap::new(),
            link: Link::Detached,
            next_gen: 1,
            next_ctx: 1,
            next_req: 1,
            next_cookie: 1,
            tx_seq: 0,
            tx: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The daemon link.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Jobs in the in-flight table (zombies included).
    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }

    /// Contexts open.
    pub fn context_ids(&self) -> Vec<CtxId> {
        self.contexts.keys().copied().collect()
    }

    /// Requests allocated.
    pub fn request_count(&self) -> usize {
        self.requests.len()
    }

    /// Next datagram for the daemon.
    pub fn poll_transmit(&mut self) -> Option<Outbound> {
        self.tx.pop_front()
    }

    /// Next event for the frontend.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest time [`Device::tick`] must be called.
    pub fn next_deadline(&self) -> Option<Nanos> {
        let hs = match self.link {
            Link::Handshaking { deadline, .. } => Some(deadline),
            _ => None,
        };
        self.inflight.values().map(|j| j.deadline).chain(hs).min()
    }

    // ---- contexts and formats ------------------------------------------

    /// open(): a new context with H.264 and NV12 at 1920x1080 by default.
    /// `None` when `max_contexts` are open.
    pub fn open_context(&mut self) -> Option<CtxId> {
        if self.contexts.len() >= self.cfg.max_contexts as usize {
            return None;
        }
        let id = CtxId(self.next_ctx);
        self.next_ctx = self.next_ctx.wrapping_add(1).max(1);
        let out = fmt::try_coded(fmt::PIX_FMT_H264_SLICE, 1920, 1080, 0);
        let cap = fmt::try_decoded(fmt::PIX_FMT_NV12, out.width, out.height);
        self.contexts.insert(
            id,
            Context {
                codec: Codec::H264,
                out: QueueState::new(out),
                cap: QueueState::new(cap),
                ctrls: ControlValues::defaults(Codec::H264),
                active: VecDeque::new(),
                held: None,
                opened_gen: None,
                daemon_error: None,
            },
        );
        Some(id)
    }

    /// The codec a context decodes.
    pub fn codec(&self, ctx: CtxId) -> Option<Codec> {
        self.contexts.get(&ctx).map(|c| c.codec)
    }

    /// G_FMT.
    pub fn format(&self, ctx: CtxId, q: Queue) -> Option<PixFormat> {
        let c = self.contexts.get(&ctx)?;
        Some(match q {
            Queue::Output => c.out.fmt,
            Queue::Capture => c.cap.fmt,
        })
    }

    /// S_FMT. Setting the OUTPUT format selects the codec, resets the
    /// controls to that codec's defaults and derives the CAPTURE format.
    pub fn set_format(
        &mut self,
        ctx: CtxId,
        q: Queue,
        want: PixFormat,
    ) -> Result<PixFormat, FmtError> {
        let c = self.contexts.get_mut(&ctx).ok_or(FmtError::NoContext)?;
        match q {
            Queue::Output => {
                if !c.out.bufs.is_empty() || !c.cap.bufs.is_empty() {
                    return Err(FmtError::Busy);
                }
                let f = fmt::try_coded(
                    want.fourcc,
                    want.width,
                    want.height,
                    want.planes[0].sizeimage,
                );
                let codec = fmt::codec_of(f.fourcc).unwrap_or(Codec::H264);
                if codec != c.codec {
                    c.codec = codec;
                    c.ctrls = ControlValues::defaults(codec);
                }
                c.out.fmt = f;
                c.cap.fmt = fmt::try_decoded(c.cap.fmt.fourcc, f.width, f.height);
                // New formats are a new CtxOpen: the daemon may accept them.
                c.opened_gen = None;
                c.daemon_error = None;
                Ok(f)
            }
            Queue::Capture => {
                if !c.cap.bufs.is_empty() {
                    return Err(FmtError::Busy);
                }
                let f = fmt::try_decoded(want.fourcc, c.out.fmt.width, c.out.fmt.height);
                c.cap.fmt = f;
                c.opened_gen = None;
                c.daemon_error = None;
                Ok(f)
            }
        }
    }

    // ---- buffers -------------------------------------------------------

    fn memory_ok(&self, m: Memory) -> bool {
        match m {
            Memory::Mmap => self.cfg.memory_mmap,
            Memory::Userptr => self.cfg.memory_userptr,
            Memory::Dmabuf => self.cfg.memory_dmabuf,
        }
    }

    /// REQBUFS: frees every buffer of the queue and allocates `count`
    /// (clamped to the maximum). Returns the count allocated.
    pub fn reqbufs(
        &mut self,
        ctx: CtxId,
        q: Queue,
        memory: Memory,
        count: u32,
    ) -> Result<u32, BufError> {
        if !self.memory_ok(memory) {
            return Err(BufError::Invalid("memory type"));
        }
        let max = self.cfg.max_buffers;
        let gen = self.attached_gen();
        let c = self.contexts.get_mut(&ctx).ok_or(BufError::NoContext)?;
        let qs = queue_mut(c, q);
        if qs.streaming {
            return Err(BufError::Busy("streaming"));
        }
        if qs
            .bufs
            .iter()
            .any(|b| !matches!(b.info.state, BufState::Dequeued))
        {
            return Err(BufError::Busy("buffers in use"));
        }
        let mut unregister = Vec::new();
        for (i, b) in qs.bufs.iter().enumerate() {
            if gen.is_some() && b.registered_gen == gen {
                unregister.push(i as u32);
            }
        }
        qs.bufs.clear();
        qs.ready.clear();
        qs.done.clear();
        qs.memory = memory;
        let n = count.min(max);
        let fmt = qs.fmt;
        for _ in 0..n {
            qs.bufs.push(new_buffer(&fmt));
        }
        if q == Queue::Capture && n == 0 {
            c.held = None;
        }
        if let Some(gen) = gen {
            for index in unregister {
                self.send(
                    gen,
                    Message::BufUnregister(proto::BufUnregister {
                        ctx_id: ctx.0,
                        queue: q.wire(),
                        index,
                        reserved: 0,
                    }),
                    None,
                );
            }
        }
        Ok(n)
    }

    /// CREATE_BUFS: adds up to `count` buffers. Returns (first index, count).
    pub fn create_bufs(
        &mut self,
        ctx: CtxId,
        q: Queue,
        memory: Memory,
        count: u32,
    ) -> Result<(u32, u32), BufError> {
        if !self.memory_ok(memory) {
            return Err(BufError::Invalid("memory type"));
        }
        let max = self.cfg.max_buffers;
        let c = self.contexts.get_mut(&ctx).ok_or(BufError::NoContext)?;
        let qs = queue_mut(c, q);
        if !qs.bufs.is_empty() && qs.memory != memory {
            return Err(BufError::Invalid("memory type differs from the queue's"));
        }
        qs.memory = memory;
        let first = qs.bufs.len() as u32;
        let n = count.min(max - first.min(max));
        let fmt = qs.fmt;
        for _ in 0..n {
            qs.bufs.push(new_buffer(&fmt));
        }
        Ok((first, n))
    }

    /// QUERYBUF.
    pub fn buffer(&self, ctx: CtxId, q: Queue, index: u32) -> Option<BufferInfo> {
        let c = self.contexts.get(&ctx)?;
        let qs = match q {
            Queue::Output => &c.out,
            Queue::Capture => &c.cap,
        };
        qs.bufs.get(index as usize).map(|b| b.info)
    }

    /// Buffers allocated on a queue.
    pub fn buffer_count(&self, ctx: CtxId, q: Queue) -> u32 {
        self.contexts.get(&ctx).map_or(0, |c| match q {
            Queue::Output => c.out.bufs.len() as u32,
            Queue::Capture => c.cap.bufs.len() as u32,
        })
    }

    /// True while the queue streams.
    pub fn is_streaming(&self, ctx: CtxId, q: Queue) -> bool {
        self.contexts.get(&ctx).is_some_and(|c| match q {
            Queue::Output => c.out.streaming,
            Queue::Capture => c.cap.streaming,
        })
    }

    /// Memory type of a queue.
    pub fn memory(&self, ctx: CtxId, q: Queue) -> Option<Memory> {
        self.contexts.get(&ctx).map(|c| match q {
            Queue::Output => c.out.memory,
            Queue::Capture => c.cap.memory,
        })
    }

    /// What [`Device::qbuf`] would refuse before looking at the planes'
    /// contents: unknown context or index, another memory type, a buffer
    /// not dequeued, a missing (with [`Config::requests_required`]) or
    /// misplaced request, a request that is not idle or of another
    /// context. Changes nothing: a frontend calls it before work with side
    /// effects (fetching client memory, duplicating fds).
    pub fn qbuf_check(
        &self,
        ctx: CtxId,
        q: Queue,
        index: u32,
        memory: Memory,
        request: Option<ReqId>,
    ) -> Result<(), BufError> {
        let c = self.contexts.get(&ctx).ok_or(BufError::NoContext)?;
        let qs = match q {
            Queue::Output => &c.out,
            Queue::Capture => &c.cap,
        };
        let b = qs
            .bufs
            .get(index as usize)
            .ok_or(BufError::Invalid("index"))?;
        if memory != qs.memory {
            return Err(BufError::Invalid("memory type"));
        }
        if b.info.state != BufState::Dequeued {
            return Err(BufError::Invalid("buffer already queued"));
        }
        // vb2: OUTPUT may require requests, CAPTURE does not support them.
        match (q, request) {
            (Queue::Output, None) if self.cfg.requests_required => {
                return Err(BufError::BadRequest)
            }
            (Queue::Capture, Some(_)) => return Err(BufError::CaptureRequest),
            _ => {}
        }
        if let Some(r) = request {
            let req = self
                .requests
                .get(&r)
                .ok_or(BufError::Invalid("request fd"))?;
            if req.state != ReqState::Idle {
                return Err(BufError::Busy("request not idle"));
            }
            if req.ctx.is_some_and(|rc| rc != ctx) {
                return Err(BufError::Invalid("request belongs to another context"));
            }
        }
        Ok(())
    }

    /// QBUF.
    pub fn qbuf(
        &mut self,
        ctx: CtxId,
        q: Queue,
        index: u32,
        memory: Memory,
        args: QbufArgs,
        now: Nanos,
    ) -> Result<(), BufError> {
        self.qbuf_check(ctx, q, index, memory, args.request)?;
        let c = self.contexts.get_mut(&ctx).expect("checked");
        let qs = queue_mut(c, q);
        let b = &mut qs.bufs[index as usize];
        let n = b.info.num_planes as usize;
        let mut used = [0u32; 4];
        if q == Queue::Output {
            let planes = args.bytesused.iter().zip(b.info.length.iter());
            for ((u, len), out) in planes.zip(used.iter_mut()).take(n) {
                if u > len {
                    return Err(BufError::Invalid("bytesused larger than the plane"));
                }
                *out = if *u == 0 { *len } else { *u };
            }
        }
        b.info.bytesused = used;
        if q == Queue::Output {
            b.info.timestamp = args.timestamp;
            b.info.flags = args.flags & (BUF_FLAG_M2M_HOLD_CAPTURE_BUF | BUF_FLAGS_COPIED);
        } else {
            b.info.flags = 0;
        }
        if args.memory_changed {
            b.registered_gen = None;
        }
        match args.request {
            Some(r) => {
                b.info.state = BufState::InRequest(r);
                let req = self.requests.get_mut(&r).expect("checked above");
                req.ctx = Some(ctx);
                req.bufs.push(index);
            }
            None => {
                b.info.state = BufState::Queued;
                qs.ready.push_back(index);
                self.try_schedule(ctx, now);
            }
        }
        Ok(())
    }

    /// DQBUF (non-blocking; the frontend waits on [`Event::BufferDone`]).
    pub fn dqbuf(&mut self, ctx: CtxId, q: Queue) -> Result<Dequeued, BufError> {
        let c = self.contexts.get_mut(&ctx).ok_or(BufError::NoContext)?;
        let qs = queue_mut(c, q);
        if !qs.streaming {
            return Err(BufError::NotStreaming);
        }
        let index = qs.done.pop_front().ok_or(BufError::WouldBlock)?;
        let b = &mut qs.bufs[index as usize];
        let error = matches!(b.info.state, BufState::Done { error: true });
        debug_assert!(matches!(b.info.state, BufState::Done { .. }));
        b.info.state = BufState::Dequeued;
        Ok(Dequeued {
            index,
            bytesused: b.info.bytesused,
            flags: b.info.flags | if error { BUF_FLAG_ERROR } else { 0 },
            timestamp: b.info.timestamp,
            sequence: b.info.sequence,
        })
    }

    /// Poll readiness.
    pub fn poll_state(&self, ctx: CtxId) -> PollState {
        let Some(c) = self.contexts.get(&ctx) else {
            return PollState {
                error: true,
                ..Default::default()
            };
        };
        let capture_ready = c.cap.streaming && !c.cap.done.is_empty();
        let output_ready = c.out.streaming && !c.out.done.is_empty();
        let busy = |qs: &QueueState| {
            qs.streaming
                && qs
                    .bufs
                    .iter()
                    .any(|b| !matches!(b.info.state, BufState::Dequeued | BufState::InRequest(_)))
        };
        PollState {
            capture_ready,
            output_ready,
            error: !busy(&c.out) && !busy(&c.cap),
        }
    }

    /// STREAMON.
    pub fn streamon(&mut self, ctx: CtxId, q: Queue, now: Nanos) -> Result<(), BufError> {
        let c = self.contexts.get_mut(&ctx).ok_or(BufError::NoContext)?;
        let qs = queue_mut(c, q);
        if qs.bufs.is_empty() {
            return Err(BufError::Invalid("no buffers allocated"));
        }
        if !qs.streaming {
            qs.streaming = true;
            qs.sequence = 0;
            self.try_schedule(ctx, now);
        }
        Ok(())
    }

    /// STREAMOFF: never waits. Every buffer of the queue returns to the
    /// client; a job using it is cancelled (the daemon is told; its late
    /// result is acknowledged and ignored).
    pub fn streamoff(&mut self, ctx: CtxId, q: Queue, now: Nanos) -> Result<(), BufError> {
        if !self.contexts.contains_key(&ctx) {
            return Err(BufError::NoContext);
        }
        self.cancel_active(ctx, q, now);
        let c = self.contexts.get_mut(&ctx).expect("checked above");
        let qs = queue_mut(c, q);
        qs.streaming = false;
        qs.ready.clear();
        qs.done.clear();
        qs.sequence = 0;
        let mut completed_reqs = Vec::new();
        for b in qs.bufs.iter_mut() {
            match b.info.state {
                BufState::Dequeued | BufState::InRequest(_) => {}
                _ => {
                    b.info.state = BufState::Dequeued;
                    b.request = None;
                }
            }
        }
        if q == Queue::Capture {
            c.held = None;
        } else {
            // Queued requests whose buffers were just returned complete now.
            for (id, r) in self.requests.iter_mut() {
                if r.ctx == Some(ctx) && r.state == ReqState::Queued {
                    r.state = ReqState::Complete;
                    completed_reqs.push(*id);
                }
            }
        }
        for r in completed_reqs {
            self.request_completed(r);
        }
        Ok(())
    }

    /// Cancels the dispatched jobs of `ctx`, oldest first: their buffers on
    /// `q` return to the client, the other queue's buffers complete with
    /// ERROR, the jobs become zombies awaiting the daemon.
    fn cancel_active(&mut self, ctx: CtxId, q: Queue, now: Nanos) {
        let Some(c) = self.contexts.get_mut(&ctx) else {
            return;
        };
        for cookie in std::mem::take(&mut c.active) {
            self.cancel_job(ctx, cookie, q, now);
        }
    }

    /// Cancels one dispatched job (see [`Device::cancel_active`]).
    fn cancel_job(&mut self, ctx: CtxId, cookie: u64, q: Queue, now: Nanos) {
        let job = self
            .inflight
            .get_mut(&cookie)
            .expect("active job is in flight");
        job.zombie = true;
        job.deadline = now.saturating_add(self.cfg.job_timeout);
        let (output, capture, req, gen) = (job.output, job.capture, job.request, job.gen);
        self.stats.cancelled += 1;
        self.stats.errors += 1;
        self.events.push_back(Event::JobDone {
            ctx,
            cookie,
            ok: false,
        });
        if self.attached_gen() == Some(gen) {
            self.send(
                gen,
                Message::Cancel(proto::Cancel {
                    ctx_id: ctx.0,
                    reserved: 0,
                    cookie,
                }),
                None,
            );
        }
        // The queue being stopped gets its buffer back directly (by the
        // caller); the other one's buffer completes with ERROR.
        match q {
            Queue::Output => {
                self.buffer_done(ctx, Queue::Capture, capture, false, [0; 4]);
                let c = self.contexts.get_mut(&ctx).expect("exists");
                c.held = None;
            }
            Queue::Capture => {
                self.buffer_done(ctx, Queue::Output, output, false, [0; 4]);
                if let Some(r) = req {
                    self.complete_request(r);
                }
            }
        }
    }

    // ---- controls and requests ----------------------------------------

    /// MEDIA_IOC_REQUEST_ALLOC.
    pub fn request_alloc(&mut self) -> Result<ReqId, RequestError> {
        if self.requests.len() >= self.cfg.max_requests as usize {
            return Err(RequestError::NoMemory);
        }
        let id = ReqId(self.next_req);
        self.next_req = self.next_req.wrapping_add(1).max(1);
        self.requests.insert(
            id,
            Request {
                ctx: None,
                state: ReqState::Idle,
                ctrls: ControlValues::new(),
                bufs: Vec::new(),
                closed: false,
            },
        );
        Ok(id)
    }

    /// State of a request.
    pub fn request_state(&self, r: ReqId) -> Option<ReqState> {
        self.requests.get(&r).map(|r| r.state)
    }

    /// S_EXT_CTRLS / TRY_EXT_CTRLS. All-or-nothing: every value is validated
    /// before any is stored.
    pub fn set_controls(
        &mut self,
        ctx: CtxId,
        which: Which,
        ctrls: &[(u32, &[u8])],
        try_only: bool,
    ) -> Result<(), CtrlsError> {
        let codec = self.contexts.get(&ctx).ok_or(CtrlsError::NoContext)?.codec;
        if let Which::Request(r) = which {
            let req = self.requests.get(&r).ok_or(RequestError::NoRequest)?;
            if req.state != ReqState::Idle {
                return Err(RequestError::Busy.into());
            }
            if req.ctx.is_some_and(|rc| rc != ctx) {
                return Err(RequestError::Invalid("request belongs to another context").into());
            }
        }
        let mut checked = Vec::with_capacity(ctrls.len());
        for (index, (id, bytes)) in ctrls.iter().enumerate() {
            let v = ctrl::validate_write(codec, *id, bytes)
                .map_err(|err| CtrlsError::Ctrl { index, err })?;
            checked.push((*id, v));
        }
        if try_only {
            return Ok(());
        }
        match which {
            Which::Current => {
                let c = self.contexts.get_mut(&ctx).expect("checked above");
                for (id, v) in checked {
                    c.ctrls.set_raw(id, v);
                }
            }
            Which::Request(r) => {
                let req = self.requests.get_mut(&r).expect("checked above");
                req.ctx = Some(ctx);
                for (id, v) in checked {
                    req.ctrls.set_raw(id, v);
                }
            }
        }
        Ok(())
    }

    /// G_EXT_CTRLS of one control: the current value, or a request's value
    /// (a completed request reports the values it was applied with).
    pub fn get_control(&self, ctx: CtxId, which: Which, id: u32) -> Result<Vec<u8>, CtrlsError> {
        let c = self.contexts.get(&ctx).ok_or(CtrlsError::NoContext)?;
        let unknown = || CtrlsError::Ctrl {
            index: 0,
            err: CtrlError::Unknown(id),
        };
        c.codec.desc().find(id).ok_or_else(unknown)?;
        match which {
            Which::Current => c.ctrls.get_raw(id).map(<[u8]>::to_vec).ok_or_else(unknown),
            Which::Request(r) => {
                let req = self.requests.get(&r).ok_or(RequestError::NoRequest)?;
                if req.state == ReqState::Queued {
                    return Err(RequestError::Busy.into());
                }
                Ok(req
                    .ctrls
                    .get_raw(id)
                    .or_else(|| c.ctrls.get_raw(id))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(unknown)?)
            }
        }
    }

    /// MEDIA_REQUEST_IOC_QUEUE: validates (exactly one OUTPUT buffer) and
    /// queues the request's buffer.
    pub fn request_queue(&mut self, r: ReqId, now: Nanos) -> Result<(), RequestError> {
        let req = self.requests.get(&r).ok_or(RequestError::NoRequest)?;
        if req.state != ReqState::Idle {
            return Err(RequestError::Busy);
        }
        let ctx = req.ctx.ok_or(RequestError::Empty)?;
        match req.bufs.len() {
            0 => return Err(RequestError::Empty),
            1 => {}
            _ => return Err(RequestError::Invalid("more than one buffer")),
        }
        let index = req.bufs[0];
        if let Some(c) = self.contexts.get(&ctx) {
            let mut effective = c.ctrls.clone();
            effective.merge(&req.ctrls);
            if ctrl::check_request(c.codec, &effective).is_err() {
                return Err(RequestError::Invalid(
                    "controls inconsistent with each other",
                ));
            }
        }
        let c = self
            .contexts
            .get_mut(&ctx)
            .ok_or(RequestError::Invalid("context closed"))?;
        let b = &mut c.out.bufs[index as usize];
        debug_assert_eq!(b.info.state, BufState::InRequest(r));
        b.info.state = BufState::Queued;
        b.request = Some(r);
        c.out.ready.push_back(index);
        self.requests.get_mut(&r).expect("exists").state = ReqState::Queued;
        self.try_schedule(ctx, now);
        Ok(())
    }

    /// MEDIA_REQUEST_IOC_REINIT.
    pub fn request_reinit(&mut self, r: ReqId) -> Result<(), RequestError> {
        let req = self.requests.get(&r).ok_or(RequestError::NoRequest)?;
        if req.state == ReqState::Queued {
            return Err(RequestError::Busy);
        }
        self.unbind_request_buffers(r);
        let req = self.requests.get_mut(&r).expect("exists");
        req.state = ReqState::Idle;
        req.ctrls = ControlValues::new();
        req.ctx = None;
        Ok(())
    }

    /// close() of a request fd. A queued request lives on until its job
    /// completes; an idle one releases its buffer to the client.
    pub fn request_close(&mut self, r: ReqId) -> Result<(), RequestError> {
        let req = self.requests.get_mut(&r).ok_or(RequestError::NoRequest)?;
        if req.state == ReqState::Queued {
            req.closed = true;
            return Ok(());
        }
        self.unbind_request_buffers(r);
        self.requests.remove(&r);
        Ok(())
    }

    fn unbind_request_buffers(&mut self, r: ReqId) {
        let Some(req) = self.requests.get_mut(&r) else {
            return;
        };
        let bufs = std::mem::take(&mut req.bufs);
        if let Some(c) = req.ctx.and_then(|ctx| self.contexts.get_mut(&ctx)) {
            for i in bufs {
                let b = &mut c.out.bufs[i as usize];
                if b.info.state == BufState::InRequest(r) {
                    b.info.state = BufState::Dequeued;
                }
            }
        }
    }

    fn complete_request(&mut self, r: ReqId) {
        if let Some(req) = self.requests.get_mut(&r) {
            if req.state == ReqState::Queued {
                req.state = ReqState::Complete;
                self.request_completed(r);
            }
        }
    }

    fn request_completed(&mut self, r: ReqId) {
        let req = self.requests.get_mut(&r).expect("exists");
        req.bufs.clear();
        if req.closed {
            self.requests.remove(&r);
        } else {
            self.events.push_back(Event::RequestDone(r));
        }
    }

    /// Stateless DECODER_CMD (`V4L2_DEC_CMD_FLUSH`): the held CAPTURE buffer
    /// is released now, or after the last queued OUTPUT buffer.
    pub fn decoder_flush(&mut self, ctx: CtxId) -> Result<(), BufError> {
        let c = self.contexts.get_mut(&ctx).ok_or(BufError::NoContext)?;
        if let Some(&last) = c.out.ready.back() {
            c.out.bufs[last as usize].info.flags &= !BUF_FLAG_M2M_HOLD_CAPTURE_BUF;
        } else if let Some(&cookie) = c.active.back() {
            self.inflight
                .get_mut(&cookie)
                .expect("active job is in flight")
                .hold = false;
        } else if let Some(held) = c.held.take() {
            self.buffer_done(ctx, Queue::Capture, held, true, [u32::MAX; 4]);
        }
        Ok(())
    }

    /// close() of the context: never waits (see [`Device::streamoff`]).
    pub fn close_context(&mut self, ctx: CtxId, now: Nanos) {
        if !self.contexts.contains_key(&ctx) {
            return;
        }
        let _ = self.streamoff(ctx, Queue::Output, now);
        let _ = self.streamoff(ctx, Queue::Capture, now);
        let ids: Vec<ReqId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.ctx == Some(ctx))
            .map(|(id, _)| *id)
            .collect();
        for r in ids {
            let req = self.requests.get_mut(&r).expect("exists");
            req.bufs.clear();
            req.ctx = None;
        }
        let c = self.contexts.remove(&ctx).expect("exists");
        if let Some(gen) = self.attached_gen() {
            if c.opened_gen == Some(gen) {
                self.send(
                    gen,
                    Message::CtxClose(proto::CtxClose {
                        ctx_id: ctx.0,
                        reserved: 0,
                    }),
                    None,
                );
            }
        }
        // Anything still addressed to this context in the transmit queue is moot,
        // but harmless: the daemon answers closed contexts' jobs, and those
        // answers are rejected here as unknown.
    }

    // ---- scheduling ------------------------------------------------------

    fn attached_gen(&self) -> Option<u64> {
        match self.link {
            Link::Attached { gen, .. } => Some(gen),
            _ => None,
        }
    }

    fn send(&mut self, gen: u64, m: Message<'_>, fds: Option<(CtxId, Queue, u32)>) {
        self.tx_seq = self.tx_seq.wrapping_add(1);
        self.tx.push_back(Outbound {
            gen,
            bytes: m.to_bytes(self.tx_seq),
            fds,
        });
    }

    /// Runs as many jobs of `ctx` as can run: up to
    /// [`Config::pipeline_depth`] in flight.
    fn try_schedule(&mut self, ctx: CtxId, now: Nanos) {
        loop {
            let Some(c) = self.contexts.get_mut(&ctx) else {
                return;
            };
            if !c.out.streaming || !c.cap.streaming {
                return;
            }
            if let Some(last) = c.active.back() {
                // A job ahead of the running ones: only to an attached
                // daemon (a failing job must not overtake them), up to the
                // depth, and not after a job that holds its CAPTURE buffer
                // for this one.
                let attached =
                    matches!(self.link, Link::Attached { .. }) && c.daemon_error.is_none();
                if c.active.len() >= self.cfg.pipeline_depth.max(1) as usize
                    || !attached
                    || self.inflight.get(last).is_none_or(|j| j.hold)
                {
                    return;
                }
            }
            let Some(&out_idx) = c.out.ready.front() else {
                return;
            };
            let out_ts = c.out.bufs[out_idx as usize].info.timestamp;
            // A held picture ends when the next OUTPUT buffer starts another.
            if let Some(held) = c.held {
                if c.cap.bufs[held as usize].info.timestamp != out_ts {
                    c.held = None;
                    self.buffer_done(ctx, Queue::Capture, held, true, [u32::MAX; 4]);
                    continue;
                }
            }
            let c = self.contexts.get_mut(&ctx).expect("exists");
            let (cap_idx, continuing) = match c.held {
                Some(h) => (h, true),
                None => match c.cap.ready.front() {
                    Some(&i) => (i, false),
                    None => return,
                },
            };
            c.out.ready.pop_front();
            if !continuing {
                c.cap.ready.pop_front();
            }
            c.held = None;
            c.out.bufs[out_idx as usize].info.state = BufState::Active;
            c.cap.bufs[cap_idx as usize].info.state = BufState::Active;
            let request = c.out.bufs[out_idx as usize].request.take();
            let c = self.contexts.get(&ctx).expect("exists");
            let hold = c.out.bufs[out_idx as usize].info.flags & BUF_FLAG_M2M_HOLD_CAPTURE_BUF != 0;
            let cookie = self.next_cookie;
            self.next_cookie += 1;
            let gen = match self.link {
                Link::Attached { gen, .. } if c.daemon_error.is_none() => gen,
                Link::Handshaking { .. } if c.daemon_error.is_none() => {
                    // Wait for the handshake (bounded by its deadline): put
                    // the buffers back at the front of their queues.
                    let c = self.contexts.get_mut(&ctx).expect("exists");
                    c.out.bufs[out_idx as usize].info.state = BufState::Queued;
                    c.out.bufs[out_idx as usize].request = request;
                    c.out.ready.push_front(out_idx);
                    if continuing {
                        c.held = Some(cap_idx);
                    } else {
                        c.cap.bufs[cap_idx as usize].info.state = BufState::Queued;
                        c.cap.ready.push_front(cap_idx);
                    }
                    return;
                }
                _ => {
                    // Fail fast: no daemon (or the daemon refused this context).
                    self.stats.fail_fast += 1;
                    self.stats.errors += 1;
                    self.finish_buffers(ctx, out_idx, cap_idx, request, false, [0; 4], 0, false);
                    continue;
                }
            };
            // Apply the request's controls: they become current values.
            if let Some(r) = request {
                let req_ctrls = self.requests[&r].ctrls.clone();
                self.contexts
                    .get_mut(&ctx)
                    .expect("exists")
                    .ctrls
                    .merge(&req_ctrls);
            }
            self.dispatch(
                ctx, gen, cookie, out_idx, cap_idx, request, hold, continuing, now,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        ctx: CtxId,
        gen: u64,
        cookie: u64,
        out_idx: u32,
        cap_idx: u32,
        request: Option<ReqId>,
        hold: bool,
        continuing: bool,
        now: Nanos,
    ) {
        let c = self.contexts.get(&ctx).expect("exists");
        let mut ts = Vec::new();
        (c.codec.desc().reference_timestamps)(&c.ctrls, &mut ts);
        let mut refs = [proto::RefEntry::default(); 16];
        let mut ref_bufs = Vec::new();
        let num_refs = ts.len().min(proto::DV_MAX_REFS as usize);
        for (slot, t) in refs.iter_mut().zip(ts.iter()) {
            // A job still in flight writes the picture first (the daemon runs
            // a context's jobs in order); otherwise a buffer holding it, not
            // one being written (its old picture is going).
            let ahead = c.active.iter().rev().find_map(|k| {
                let j = &self.inflight[k];
                (c.out.bufs[j.output as usize].info.timestamp == *t).then_some(j.capture)
            });
            let idx = ahead.or_else(|| {
                c.cap
                    .bufs
                    .iter()
                    .enumerate()
                    .position(|(i, b)| {
                        b.has_picture
                            && b.info.timestamp == *t
                            && i as u32 != cap_idx
                            && b.info.state != BufState::Active
                    })
                    .map(|i| i as u32)
            });
            *slot = proto::RefEntry {
                timestamp: *t,
                capture_index: idx.unwrap_or(proto::DV_NO_BUFFER),
                reserved: 0,
            };
            if let Some(i) = idx {
                ref_bufs.push(i);
            }
        }
        let out_info = c.out.bufs[out_idx as usize].info;
        let job = proto::DecodeJob {
            ctx_id: ctx.0,
            flags: if hold {
                proto::DV_DECODE_HOLD_CAPTURE
            } else {
                0
            } | if continuing {
                proto::DV_DECODE_CONTINUE
            } else {
                0
            },
            cookie,
            timestamp: out_info.timestamp,
            output_index: out_idx,
            bytesused: out_info.bytesused[0],
            capture_index: cap_idx,
            num_refs: num_refs as u32,
            num_ctrls: 0,
            ctrl_bytes: 0,
            refs,
        };
        let ctrl_bytes: Vec<(u32, Vec<u8>)> =
            c.ctrls.iter().map(|(id, v)| (id, v.to_vec())).collect();
        // Make sure the daemon knows the context and the buffers' memory.
        if c.opened_gen != Some(gen) {
            let mut planes = [proto::PlaneFmt::default(); 4];
            for (p, l) in planes
                .iter_mut()
                .zip(c.cap.fmt.planes.iter())
                .take(c.cap.fmt.num_planes as usize)
            {
                *p = proto::PlaneFmt {
                    bytesperline: l.bytesperline,
                    sizeimage: l.sizeimage,
                };
            }
            let open = proto::CtxOpen {
                ctx_id: ctx.0,
                codec: c.codec.to_wire(),
                coded_fourcc: c.out.fmt.fourcc,
                capture_fourcc: c.cap.fmt.fourcc,
                width: c.out.fmt.width,
                height: c.out.fmt.height,
                num_planes: c.cap.fmt.num_planes,
                reserved: 0,
                planes,
            };
            self.send(gen, Message::CtxOpen(open), None);
            self.contexts.get_mut(&ctx).expect("exists").opened_gen = Some(gen);
        }
        let mut need = vec![(Queue::Output, out_idx), (Queue::Capture, cap_idx)];
        need.extend(ref_bufs.into_iter().map(|i| (Queue::Capture, i)));
        for (q, i) in need {
            let c = self.contexts.get_mut(&ctx).expect("exists");
            let b = &mut queue_mut(c, q).bufs[i as usize];
            if b.registered_gen == Some(gen) {
                continue;
            }
            b.registered_gen = Some(gen);
            let mut planes = [proto::BufPlane::default(); 4];
            for (p, plane) in planes
                .iter_mut()
                .enumerate()
                .take(b.info.num_planes as usize)
            {
                *plane = proto::BufPlane {
                    fd_index: p as u32,
                    offset: 0,
                    length: b.info.length[p],
                    reserved: 0,
                };
            }
            let reg = proto::BufRegister {
                ctx_id: ctx.0,
                queue: q.wire(),
                index: i,
                num_planes: b.info.num_planes,
                memory: self.cfg.daemon_memory,
                reserved: 0,
                planes,
            };
            self.send(gen, Message::BufRegister(reg), Some((ctx, q, i)));
        }
        let wire: Vec<WireCtrl<'_>> = ctrl_bytes
            .iter()
            .map(|(id, v)| WireCtrl {
                id: *id,
                payload: v,
            })
            .collect();
        self.tx_seq = self.tx_seq.wrapping_add(1);
        let bytes = Message::Decode(job, wire).to_bytes(self.tx_seq);
        self.tx.push_back(Outbound {
            gen,
            bytes,
            fds: None,
        });
        self.inflight.insert(
            cookie,
            InFlight {
                ctx,
                gen,
                output: out_idx,
                capture: cap_idx,
                request,
                hold,
                deadline: now.saturating_add(self.cfg.job_timeout),
                zombie: false,
                token: JobToken {
                    cookie,
                    done: false,
                },
            },
        );
        self.contexts
            .get_mut(&ctx)
            .expect("exists")
            .active
            .push_back(cookie);
        self.stats.dispatched += 1;
    }

    /// Completes the buffers of a job: OUTPUT done, CAPTURE done or held,
    /// request complete. Timestamp and frame flags go OUTPUT → CAPTURE.
    #[allow(clippy::too_many_arguments)]
    fn finish_buffers(
        &mut self,
        ctx: CtxId,
        out_idx: u32,
        cap_idx: u32,
        request: Option<ReqId>,
        ok: bool,
        bytesused: [u32; 4],
        result_flags: u32,
        hold: bool,
    ) {
        let Some(c) = self.contexts.get_mut(&ctx) else {
            return;
        };
        let out = c.out.bufs[out_idx as usize].info;
        let cap = &mut c.cap.bufs[cap_idx as usize].info;
        cap.timestamp = out.timestamp;
        cap.flags = (out.flags & BUF_FLAGS_COPIED)
            | if result_flags & proto::DV_RESULT_KEYFRAME != 0 {
                BUF_FLAG_KEYFRAME
            } else {
                0
            };
        // CAPTURE first: a request's completion must not be seen before its picture.
        if ok && hold {
            let n = cap.num_planes as usize;
            let planes = cap.bytesused.iter_mut().zip(cap.length.iter());
            for ((cur, len), rep) in planes.zip(bytesused.iter()).take(n) {
                *cur = if *rep == 0 { *len } else { (*rep).min(*len) };
            }
            c.held = Some(cap_idx);
        } else {
            self.buffer_done(ctx, Queue::Capture, cap_idx, ok, bytesused);
        }
        self.buffer_done(ctx, Queue::Output, out_idx, ok, [u32::MAX; 4]);
        if let Some(r) = request {
            self.complete_request(r);
        }
    }

    /// Moves a buffer to its queue's done list. `bytesused` of
    /// `u32::MAX` keeps the current value (OUTPUT) / uses the plane size.
    fn buffer_done(&mut self, ctx: CtxId, q: Queue, index: u32, ok: bool, bytesused: [u32; 4]) {
        let Some(c) = self.contexts.get_mut(&ctx) else {
            return;
        };
        let qs = queue_mut(c, q);
        let b = &mut qs.bufs[index as usize];
        if !matches!(b.info.state, BufState::Active | BufState::Queued) {
            return;
        }
        if !qs.streaming {
            b.info.state = BufState::Dequeued;
            return;
        }
        let n = b.info.num_planes as usize;
        if q == Queue::Capture {
            let planes = b.info.bytesused.iter_mut().zip(b.info.length.iter());
            for ((cur, len), rep) in planes.zip(bytesused.iter()).take(n) {
                *cur = match (ok, *rep) {
                    (false, _) => 0,
                    (true, u32::MAX) => *cur,
                    (true, 0) => *len,
                    (true, r) => r.min(*len),
                };
            }
            b.has_picture = ok;
        }
        b.info.state = BufState::Done { error: !ok };
        b.info.sequence = qs.sequence;
        qs.sequence = qs.sequence.wrapping_add(1);
        qs.ready.retain(|i| *i != index);
        qs.done.push_back(index);
        self.events.push_back(Event::BufferDone {
            ctx,
            queue: q,
            index,
            error: !ok,
        });
    }

    /// Completes an in-flight job exactly once.
    fn complete_job(&mut self, cookie: u64, ok: bool, bytesused: [u32; 4], flags: u32, now: Nanos) {
        let job = self.inflight.remove(&cookie).expect("caller checked");
        let cookie = job.token.complete();
        if job.zombie {
            return;
        }
        let ctx = job.ctx;
        if let Some(c) = self.contexts.get_mut(&ctx) {
            c.active.retain(|&k| k != cookie);
        }
        if ok {
            self.stats.done += 1;
        } else {
            self.stats.errors += 1;
        }
        self.events.push_back(Event::JobDone { ctx, cookie, ok });
        self.finish_buffers(
            ctx,
            job.output,
            job.capture,
            job.request,
            ok,
            bytesused,
            flags,
            job.hold,
        );
        self.try_schedule(ctx, now);
    }

    // ---- daemon link ------------------------------------------------------

    /// A daemon connected: start the handshake. A previous link is detached
    /// first. Returns the new generation.
    pub fn daemon_attach(&mut self, now: Nanos) -> u64 {
        self.daemon_detach(now);
        let gen = self.next_gen;
        self.next_gen += 1;
        self.link = Link::Handshaking {
            gen,
            deadline: now.saturating_add(self.cfg.handshake_timeout),
        };
        self.send(
            gen,
            Message::Hello(proto::Hello {
                version_major: proto::DV_VERSION_MAJOR,
                version_minor: proto::DV_VERSION_MINOR,
                max_inflight: self.cfg.max_contexts,
                features: self.cfg.features,
                max_msg_size: proto::DV_MAX_MSG_SIZE,
                reserved: 0,
            }),
            None,
        );
        gen
    }

    /// The daemon went away (socket closed, chardev released, process
    /// died). Unsent messages are dropped, every in-flight job completes
    /// with ERROR, and ready jobs fail fast from now on.
    pub fn daemon_detach(&mut self, now: Nanos) {
        let gen = match self.link {
            Link::Detached => return,
            Link::Handshaking { gen, .. } | Link::Attached { gen, .. } => gen,
        };
        self.link = Link::Detached;
        self.tx.clear();
        self.events.push_back(Event::DaemonDetached { gen });
        let cookies: Vec<u64> = self.inflight.keys().copied().collect();
        for cookie in cookies {
            if !self.inflight[&cookie].zombie {
                self.stats.drained += 1;
            }
            self.complete_job(cookie, false, [0; 4], 0, now);
        }
        let ids: Vec<CtxId> = self.contexts.keys().copied().collect();
        for ctx in ids {
            let c = self.contexts.get_mut(&ctx).expect("exists");
            c.opened_gen = None;
            c.daemon_error = None;
            self.try_schedule(ctx, now);
        }
    }

    /// A datagram from the daemon. A malformed or unexpected one detaches
    /// the daemon (the frontend must close the connection) and is counted.
    pub fn daemon_receive(
        &mut self,
        bytes: &[u8],
        now: Nanos,
    ) -> Result<Option<ResultDisposition>, DaemonError> {
        let r = self.daemon_receive_inner(bytes, now);
        if let Err(err) = &r {
            if *err != DaemonError::NotAttached {
                self.stats.protocol_errors += 1;
                self.daemon_detach(now);
            }
        }
        r
    }

    fn daemon_receive_inner(
        &mut self,
        bytes: &[u8],
        now: Nanos,
    ) -> Result<Option<ResultDisposition>, DaemonError> {
        let gen = match self.link {
            Link::Detached => return Err(DaemonError::NotAttached),
            Link::Handshaking { gen, .. } | Link::Attached { gen, .. } => gen,
        };
        let msg = proto::decode(bytes)?;
        match (self.link, msg) {
            (Link::Handshaking { .. }, Message::HelloReply(h)) => {
                if h.version_major != proto::DV_VERSION_MAJOR {
                    return Err(DaemonError::Unexpected("daemon protocol version"));
                }
                if h.features & !self.cfg.features != 0 {
                    return Err(DaemonError::Unexpected(
                        "daemon agreed to features not offered",
                    ));
                }
                self.link = Link::Attached {
                    gen,
                    features: h.features,
                };
                self.events.push_back(Event::DaemonAttached { gen });
                let ids: Vec<CtxId> = self.contexts.keys().copied().collect();
                for ctx in ids {
                    self.try_schedule(ctx, now);
                }
                Ok(None)
            }
            (Link::Attached { .. }, Message::Result(r)) => Ok(Some(self.apply_result(gen, r, now))),
            (Link::Attached { .. }, Message::CtxStatus(s)) => {
                let ctx = CtxId(s.ctx_id);
                if let Some(c) = self.contexts.get_mut(&ctx) {
                    if c.opened_gen == Some(gen) {
                        c.daemon_error = (s.error != 0).then_some(s.error);
                        self.try_schedule(ctx, now);
                    }
                }
                Ok(None)
            }
            (_, m) => Err(DaemonError::Unexpected(match m.kind() {
                proto::MsgKind::Result => "result before handshake",
                proto::MsgKind::HelloReply => "second hello reply",
                _ => "frontend-only message kind",
            })),
        }
    }

    fn apply_result(&mut self, gen: u64, r: proto::JobResult, now: Nanos) -> ResultDisposition {
        let Some(job) = self.inflight.get(&r.cookie) else {
            self.stats.rejected_unknown += 1;
            return ResultDisposition::Unknown;
        };
        if job.ctx.0 != r.ctx_id || job.gen != gen {
            self.stats.rejected_foreign += 1;
            return ResultDisposition::Foreign;
        }
        if job.zombie {
            self.stats.late_acks += 1;
            self.complete_job(r.cookie, false, [0; 4], 0, now);
            return ResultDisposition::LateAck;
        }
        // A context's results come in job order; jobs the daemon skipped
        // complete with ERROR first, so buffers still complete in order.
        let ctx = job.ctx;
        while let Some(&first) = self.contexts.get(&ctx).and_then(|c| c.active.front()) {
            if first == r.cookie {
                break;
            }
            self.complete_job(first, false, [0; 4], 0, now);
        }
        let ok = r.status == proto::DV_STATUS_DONE;
        self.complete_job(r.cookie, ok, r.bytesused, r.flags, now);
        ResultDisposition::Applied
    }

    /// Time passed: jobs past their deadline complete with ERROR (and are
    /// cancelled at the daemon); zombies past theirs are forgotten; a
    /// handshake past its deadline detaches the daemon.
    pub fn tick(&mut self, now: Nanos) {
        if let Link::Handshaking { deadline, .. } = self.link {
            if now >= deadline {
                self.daemon_detach(now);
            }
        }
        let expired: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, j)| j.deadline <= now)
            .map(|(c, _)| *c)
            .collect();
        for cookie in expired {
            let job = &self.inflight[&cookie];
            if job.zombie {
                self.complete_job(cookie, false, [0; 4], 0, now);
                continue;
            }
            self.stats.timeouts += 1;
            let (ctx, gen) = (job.ctx, job.gen);
            if self.attached_gen() == Some(gen) {
                self.send(
                    gen,
                    Message::Cancel(proto::Cancel {
                        ctx_id: ctx.0,
                        reserved: 0,
                        cookie,
                    }),
                    None,
                );
            }
            // Complete the client's side now; keep a zombie until the daemon
            // acknowledges or a second deadline passes.
            let job = self.inflight.get_mut(&cookie).expect("exists");
            let (output, capture, request) = (job.output, job.capture, job.request);
            job.zombie = true;
            job.deadline = now.saturating_add(self.cfg.job_timeout);
            if let Some(c) = self.contexts.get_mut(&ctx) {
                c.active.retain(|&k| k != cookie);
            }
            self.stats.errors += 1;
            self.events.push_back(Event::JobDone {
                ctx,
                cookie,
                ok: false,
            });
            self.finish_buffers(ctx, output, capture, request, false, [0; 4], 0, false);
            self.try_schedule(ctx, now);
        }
    }
}

impl Drop for Device {
    /// A device going away fails whatever is still in flight, so no job
    /// token is ever dropped unconsumed.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.daemon_detach(0);
        }
    }
}

fn queue_mut(c: &mut Context, q: Queue) -> &mut QueueState {
    match q {
        Queue::Output => &mut c.out,
        Queue::Capture => &mut c.cap,
    }
}

fn new_buffer(fmt: &PixFormat) -> Buffer {
    let mut length = [0u32; 4];
    for (l, s) in length.iter_mut().zip(fmt.plane_sizes()) {
        *l = s;
    }
    Buffer {
        info: BufferInfo {
            state: BufState::Dequeued,
            bytesused: [0; 4],
            length,
            num_planes: fmt.num_planes,
            timestamp: 0,
            flags: 0,
            sequence: 0,
        },
        registered_gen: None,
        request: None,
        has_picture: false,
    }
}
