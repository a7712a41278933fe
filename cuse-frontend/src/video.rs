//! The V4L2 stateless decoder node, served over CUSE and driven by
//! decoder-core's [`Device`].
//!
//! [`VideoIoctls`] has one method per ioctl, each answering `ENOTTY` by
//! default; [`dispatch`] is the single validating entry: it fetches the
//! caller's memory in stages (see [`crate::fetch`]), checks sizes and
//! counts, calls the method and writes the results back. [`VideoNode`]
//! implements the methods on top of the device, one mutex around it (the
//! frontend's "device lock": every transition and the daemon's results go
//! through it, so dispatch and detach can never interleave).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use daedalus_daemon::transport::{SeqPacket, Transport, TransportError};
use decoder_core::ctrl::{ctrl_type, Codec, CtrlDesc, CtrlError};
use decoder_core::fmt::{self, PixFormat};
use decoder_core::proto;
use decoder_core::state::{
    BufError, BufState, BufferInfo, Config, CtrlsError, CtxId, Device, Event as DevEvent, FmtError,
    Memory, QbufArgs, Queue, ReqId, RequestError, Which, BUF_FLAG_ERROR,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::cuse::{Caller, Channel, CuseDevice, IoctlIn, ReplyIoctl};
use crate::fetch::{split, Need};
use crate::mem::{read_remote, write_remote, Shadow};
use crate::uapi::*;

/// An errno an ioctl fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

/// ioctl result.
pub type IoResult<T = ()> = Result<T, Errno>;

const ENOTTY: Errno = Errno(libc::ENOTTY);
const EINVAL: Errno = Errno(libc::EINVAL);

impl From<BufError> for Errno {
    fn from(e: BufError) -> Self {
        Errno(e.errno())
    }
}
impl From<FmtError> for Errno {
    fn from(e: FmtError) -> Self {
        Errno(e.errno())
    }
}
impl From<RequestError> for Errno {
    fn from(e: RequestError) -> Self {
        Errno(e.errno())
    }
}
impl From<CtrlsError> for Errno {
    fn from(e: CtrlsError) -> Self {
        Errno(e.errno())
    }
}

/// Who calls: the open file and the calling thread.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// Handle of the open file.
    pub fh: u64,
    /// The caller (thread id for memory access).
    pub caller: Caller,
}

/// A parsed `VIDIOC_*BUF` call: the struct and, for mplane types, its
/// plane array.
#[derive(Debug, Clone)]
pub struct BufArg {
    /// `struct v4l2_buffer`
    pub buf: Buffer,
    /// Its planes (`length` of them).
    pub planes: Vec<Plane>,
}

/// A parsed `VIDIOC_*_EXT_CTRLS` call.
#[derive(Debug, Clone)]
pub struct CtrlsArg {
    /// `struct v4l2_ext_controls`
    pub head: ExtControls,
    /// Its controls.
    pub ctrls: Vec<ExtControl>,
    /// Payload of each control that has one (compound), as read from the
    /// caller (G_EXT_CTRLS: zeros, to be filled).
    pub payloads: Vec<Option<Vec<u8>>>,
}

/// Outcome of a blocking call that may have to wait.
pub enum Wait<T> {
    /// Done now.
    Now(IoResult<T>),
    /// Parked: the reply will be sent later.
    Parked,
}

/// The ioctls of a V4L2 stateless decoder node. Every method answers
/// `ENOTTY` unless implemented.
#[allow(unused_variables)]
pub trait VideoIoctls {
    /// VIDIOC_QUERYCAP
    fn querycap(&self, c: &Call, a: &mut Capability) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_ENUM_FMT
    fn enum_fmt(&self, c: &Call, a: &mut FmtDesc) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_G_FMT / S_FMT / TRY_FMT (`set`: S_FMT, `try_only`: TRY_FMT)
    fn fmt(&self, c: &Call, a: &mut Format, set: bool, try_only: bool) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_ENUM_FRAMESIZES
    fn enum_framesizes(&self, c: &Call, a: &mut FrmSizeEnum) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_REQBUFS
    fn reqbufs(&self, c: &Call, a: &mut RequestBuffers) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_CREATE_BUFS
    fn create_bufs(&self, c: &Call, a: &mut CreateBuffers) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_QUERYBUF / QBUF / PREPARE_BUF (by `cmd`)
    fn buf(&self, c: &Call, cmd: u32, a: &mut BufArg) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_DQBUF: may park `reply` until a buffer is done.
    fn dqbuf(&self, c: &Call, a: BufArg, planes_addr: u64, reply: ReplyIoctl) {
        reply.error(libc::ENOTTY)
    }
    /// VIDIOC_STREAMON / STREAMOFF
    fn stream(&self, c: &Call, ty: u32, on: bool) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_QUERY_EXT_CTRL
    fn query_ext_ctrl(&self, c: &Call, a: &mut QueryExtCtrl) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_QUERYCTRL
    fn queryctrl(&self, c: &Call, a: &mut QueryCtrl) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_QUERYMENU
    fn querymenu(&self, c: &Call, a: &mut QueryMenu) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_G_CTRL / S_CTRL: (id, value)
    fn ctrl(&self, c: &Call, a: &mut [u32; 2], set: bool) -> IoResult {
        Err(ENOTTY)
    }
    /// Which controls have a payload (for fetching): `Some(elem_size,
    /// max_elems)` for compound controls of the file's codec.
    fn payload_of(&self, c: &Call, id: u32) -> Option<(u32, u32)> {
        None
    }
    /// VIDIOC_G/S/TRY_EXT_CTRLS (by `cmd`)
    fn ext_ctrls(&self, c: &Call, cmd: u32, a: &mut CtrlsArg) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_SUBSCRIBE_EVENT / UNSUBSCRIBE_EVENT
    fn subscribe(&self, c: &Call, a: &EventSubscription, on: bool) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_DQEVENT
    fn dqevent(&self, c: &Call, a: &mut V4l2Event) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_DECODER_CMD / TRY_DECODER_CMD
    fn decoder_cmd(&self, c: &Call, a: &mut DecoderCmd, try_only: bool) -> IoResult {
        Err(ENOTTY)
    }
    /// VIDIOC_G_PRIORITY / S_PRIORITY
    fn priority(&self, c: &Call, a: &mut u32, set: bool) -> IoResult {
        Err(ENOTTY)
    }
}

fn arg_mut<T: FromBytes + IntoBytes + zerocopy::KnownLayout>(buf: &mut [u8]) -> &mut T {
    T::mut_from_bytes(buf).expect("buffer sized for the ioctl's struct")
}

/// The validating dispatcher: fetches the caller's memory for `io.cmd`,
/// checks it, calls the method of `h` and answers.
pub fn dispatch<H: VideoIoctls + ?Sized>(
    h: &H,
    caller: Caller,
    io: IoctlIn,
    data: &[u8],
    reply: ReplyIoctl,
) {
    let c = Call { fh: io.fh, caller };
    match io.cmd {
        VIDIOC_QUERYBUF | VIDIOC_QBUF | VIDIOC_DQBUF | VIDIOC_PREPARE_BUF => {
            buf_call(h, &c, io, data, reply)
        }
        VIDIOC_G_EXT_CTRLS | VIDIOC_S_EXT_CTRLS | VIDIOC_TRY_EXT_CTRLS => {
            ctrls_call(h, &c, io, data, reply)
        }
        cmd => {
            let size = ioc_size(cmd);
            let (din, dout) = ioc_dir(cmd);
            let known = matches!(
                cmd,
                VIDIOC_QUERYCAP
                    | VIDIOC_ENUM_FMT
                    | VIDIOC_G_FMT
                    | VIDIOC_S_FMT
                    | VIDIOC_TRY_FMT
                    | VIDIOC_ENUM_FRAMESIZES
                    | VIDIOC_REQBUFS
                    | VIDIOC_CREATE_BUFS
                    | VIDIOC_STREAMON
                    | VIDIOC_STREAMOFF
                    | VIDIOC_QUERY_EXT_CTRL
                    | VIDIOC_QUERYCTRL
                    | VIDIOC_QUERYMENU
                    | VIDIOC_G_CTRL
                    | VIDIOC_S_CTRL
                    | VIDIOC_SUBSCRIBE_EVENT
                    | VIDIOC_UNSUBSCRIBE_EVENT
                    | VIDIOC_DQEVENT
                    | VIDIOC_DECODER_CMD
                    | VIDIOC_TRY_DECODER_CMD
                    | VIDIOC_G_PRIORITY
                    | VIDIOC_S_PRIORITY
            );
            if !known {
                return reply.error(libc::ENOTTY);
            }
            let mut need = Need::default();
            need.add(io.arg, size, din, dout);
            if !need.satisfied(io.in_size, io.out_size) {
                return reply.retry(&need.input, &need.output);
            }
            let mut buf = vec![0u8; size];
            if din {
                buf.copy_from_slice(data);
            }
            let r = match cmd {
                VIDIOC_QUERYCAP => h.querycap(&c, arg_mut(&mut buf)),
                VIDIOC_ENUM_FMT => h.enum_fmt(&c, arg_mut(&mut buf)),
                VIDIOC_G_FMT => h.fmt(&c, arg_mut(&mut buf), false, false),
                VIDIOC_S_FMT => h.fmt(&c, arg_mut(&mut buf), true, false),
                VIDIOC_TRY_FMT => h.fmt(&c, arg_mut(&mut buf), false, true),
                VIDIOC_ENUM_FRAMESIZES => h.enum_framesizes(&c, arg_mut(&mut buf)),
                VIDIOC_REQBUFS => h.reqbufs(&c, arg_mut(&mut buf)),
                VIDIOC_CREATE_BUFS => h.create_bufs(&c, arg_mut(&mut buf)),
                VIDIOC_STREAMON | VIDIOC_STREAMOFF => {
                    let ty = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
                    h.stream(&c, ty, cmd == VIDIOC_STREAMON)
                }
                VIDIOC_QUERY_EXT_CTRL => h.query_ext_ctrl(&c, arg_mut(&mut buf)),
                VIDIOC_QUERYCTRL => h.queryctrl(&c, arg_mut(&mut buf)),
                VIDIOC_QUERYMENU => h.querymenu(&c, arg_mut(&mut buf)),
                VIDIOC_G_CTRL | VIDIOC_S_CTRL => {
                    h.ctrl(&c, arg_mut(&mut buf), cmd == VIDIOC_S_CTRL)
                }
                VIDIOC_SUBSCRIBE_EVENT | VIDIOC_UNSUBSCRIBE_EVENT => {
                    let s = EventSubscription::read_from_bytes(&buf).expect("sized");
                    h.subscribe(&c, &s, cmd == VIDIOC_SUBSCRIBE_EVENT)
                }
                VIDIOC_DQEVENT => h.dqevent(&c, arg_mut(&mut buf)),
                VIDIOC_DECODER_CMD | VIDIOC_TRY_DECODER_CMD => {
                    h.decoder_cmd(&c, arg_mut(&mut buf), cmd == VIDIOC_TRY_DECODER_CMD)
                }
                VIDIOC_G_PRIORITY | VIDIOC_S_PRIORITY => {
                    h.priority(&c, arg_mut(&mut buf), cmd == VIDIOC_S_PRIORITY)
                }
                _ => Err(ENOTTY),
            };
            match r {
                Ok(()) if dout => reply.ok(0, &[&buf]),
                Ok(()) => reply.ok(0, &[]),
                Err(Errno(e)) => reply.error(e),
            }
        }
    }
}

fn is_mplane(ty: u32) -> bool {
    ty == BUF_TYPE_VIDEO_CAPTURE_MPLANE || ty == BUF_TYPE_VIDEO_OUTPUT_MPLANE
}

fn buf_call<H: VideoIoctls + ?Sized>(h: &H, c: &Call, io: IoctlIn, data: &[u8], reply: ReplyIoctl) {
    let size = std::mem::size_of::<Buffer>();
    let mut need = Need::default();
    need.add(io.arg, size, true, true);
    if data.len() < size {
        return reply.retry(&need.input, &need.output);
    }
    let buf = Buffer::read_from_prefix(data).expect("sized").0;
    let nplanes = if is_mplane(buf.type_) {
        if buf.length == 0 || buf.length > VIDEO_MAX_PLANES {
            return reply.error(libc::EINVAL);
        }
        if buf.m == 0 {
            return reply.error(libc::EFAULT);
        }
        need.add(
            buf.m,
            buf.length as usize * std::mem::size_of::<Plane>(),
            true,
            true,
        );
        buf.length as usize
    } else {
        0
    };
    if !need.satisfied(io.in_size, io.out_size) {
        return reply.retry(&need.input, &need.output);
    }
    let Some(parts) = split(data, &[size, nplanes * 64]) else {
        return reply.retry(&need.input, &need.output);
    };
    let planes = <[Plane]>::ref_from_bytes(parts[1])
        .map(|p| p.to_vec())
        .unwrap_or_default();
    let mut a = BufArg { buf, planes };
    if io.cmd == VIDIOC_DQBUF {
        return h.dqbuf(c, a, buf.m, reply);
    }
    match h.buf(c, io.cmd, &mut a) {
        Ok(()) => reply.ok(0, &[a.buf.as_bytes(), a.planes.as_bytes()]),
        Err(Errno(e)) => reply.error(e),
    }
}

fn ctrls_call<H: VideoIoctls + ?Sized>(
    h: &H,
    c: &Call,
    io: IoctlIn,
    data: &[u8],
    reply: ReplyIoctl,
) {
    let hs = std::mem::size_of::<ExtControls>();
    let es = std::mem::size_of::<ExtControl>();
    let get = io.cmd == VIDIOC_G_EXT_CTRLS;
    let mut need = Need::default();
    need.add(io.arg, hs, true, true);
    if data.len() < hs {
        return reply.retry(&need.input, &need.output);
    }
    let head = ExtControls::read_from_prefix(data).expect("sized").0;
    if head.count > CID_MAX_CTRLS {
        return reply.error(libc::EINVAL);
    }
    let n = head.count as usize;
    if n > 0 {
        need.add(head.controls, n * es, true, true);
    }
    if data.len() < need.in_len() {
        return reply.retry(&need.input, &need.output);
    }
    let ctrls: Vec<ExtControl> = <[ExtControl]>::ref_from_bytes(&data[hs..hs + n * es])
        .expect("sized")
        .to_vec();
    let mut lens = vec![hs, n * es];
    let mut payload_len = Vec::with_capacity(n);
    for x in &ctrls {
        let (id, sz, ptr) = (x.id, x.size, x.value);
        match h.payload_of(c, id) {
            Some((elem, max)) if sz > 0 => {
                let cap = elem as usize * max as usize;
                // A G_EXT_CTRLS size too small is answered ENOSPC by the
                // handler; fetch nothing more than the control can hold.
                let len = (sz as usize).min(cap);
                need.add(ptr, len, !get, true);
                if !get {
                    lens.push(len);
                }
                payload_len.push(Some(len));
            }
            Some(_) => payload_len.push(Some(0)),
            None => payload_len.push(None),
        }
    }
    if need.in_len() + need.out_len() > 2 * crate::cuse::FUSE_IOCTL_MAX_BYTES
        || need.in_len() > crate::cuse::FUSE_IOCTL_MAX_BYTES
        || need.out_len() > crate::cuse::FUSE_IOCTL_MAX_BYTES
    {
        return reply.error(libc::ENOMEM);
    }
    if !need.satisfied(io.in_size, io.out_size) {
        return reply.retry(&need.input, &need.output);
    }
    let Some(parts) = split(data, &lens) else {
        return reply.retry(&need.input, &need.output);
    };
    let mut next = 2;
    let payloads = payload_len
        .iter()
        .map(|p| match p {
            Some(0) => Some(Vec::new()),
            Some(len) if get => Some(vec![0u8; *len]),
            Some(_) => {
                let v = parts[next].to_vec();
                next += 1;
                Some(v)
            }
            None => None,
        })
        .collect();
    let mut a = CtrlsArg {
        head,
        ctrls,
        payloads,
    };
    let r = h.ext_ctrls(c, io.cmd, &mut a);
    let mut out: Vec<&[u8]> = vec![a.head.as_bytes(), a.ctrls.as_bytes()];
    if r.is_ok() && get {
        for p in a.payloads.iter().flatten() {
            if !p.is_empty() {
                out.push(p);
            }
        }
    }
    match r {
        Ok(()) => reply.ok(0, &out),
        Err(Errno(e)) => reply.error_with_data(e, &out[..2]),
    }
}

// ---------------------------------------------------------------------
// The node

/// Memory of one buffer as the frontend keeps it.
#[derive(Debug, Default)]
struct BufMem {
    /// memfd planes registered with the daemon (USERPTR).
    shadow: Vec<Shadow>,
    /// The client's dma-bufs, duplicated with `pidfd_getfd` (DMABUF),
    /// with their inode numbers (a dma-buf's identity).
    dmabuf: Vec<(std::os::fd::OwnedFd, u64)>,
    /// Client memory of each plane (USERPTR address or DMABUF fd, length).
    user: [(u64, u32); 4],
}

impl BufMem {
    /// The fds the daemon maps for this buffer.
    fn daemon_fds(&self) -> Vec<BorrowedFd<'_>> {
        if self.dmabuf.is_empty() {
            self.shadow.iter().map(|s| s.fd()).collect()
        } else {
            self.dmabuf.iter().map(|(f, _)| f.as_fd()).collect()
        }
    }
}

/// One open file of the video node.
#[derive(Debug)]
struct OpenFile {
    ctx: CtxId,
    nonblock: bool,
    kh: Option<u64>,
    mem: [Vec<BufMem>; 2],
    events: VecDeque<Event_>,
    subs: Vec<(u32, u32)>,
    ev_seq: u32,
    prio: u32,
    color: Colorimetry,
}

#[derive(Debug, Clone, Copy)]
struct Event_ {
    ev: V4l2Event,
}

fn qi(q: Queue) -> usize {
    match q {
        Queue::Output => 0,
        Queue::Capture => 1,
    }
}

fn queue_of(ty: u32) -> IoResult<Queue> {
    match ty {
        BUF_TYPE_VIDEO_OUTPUT_MPLANE => Ok(Queue::Output),
        BUF_TYPE_VIDEO_CAPTURE_MPLANE => Ok(Queue::Capture),
        _ => Err(EINVAL),
    }
}

fn memory_of(m: u32) -> IoResult<Memory> {
    match m {
        MEMORY_MMAP => Ok(Memory::Mmap),
        MEMORY_USERPTR => Ok(Memory::Userptr),
        MEMORY_DMABUF => Ok(Memory::Dmabuf),
        _ => Err(EINVAL),
    }
}

fn memory_wire(m: Memory) -> u32 {
    match m {
        Memory::Mmap => MEMORY_MMAP,
        Memory::Userptr => MEMORY_USERPTR,
        Memory::Dmabuf => MEMORY_DMABUF,
    }
}

/// A DQBUF waiting for a buffer.
#[derive(Debug)]
struct Waiter {
    fh: u64,
    caller: Caller,
    arg: BufArg,
    reply: ReplyIoctl,
}

/// The link to a daemon.
#[derive(Debug)]
struct DaemonLink {
    sock: Arc<SeqPacket>,
    gen: u64,
}

/// Resolves a request fd number of a client to a request (served by the
/// media side; see [`crate::media`]).
pub trait RequestResolver: Send + Sync {
    /// The request behind fd `fd` of thread `pid`.
    fn resolve(&self, pid: u32, fd: i32) -> Result<ReqId, i32>;
    /// A request completed: wake its pollers.
    fn request_done(&self, r: ReqId);
}

/// The device and everything the frontend keeps around it.
#[derive(Debug)]
pub struct Core {
    /// The state machine.
    pub dev: Device,
    epoch: Instant,
    files: HashMap<u64, OpenFile>,
    by_ctx: HashMap<CtxId, u64>,
    next_fh: u64,
    link: Option<DaemonLink>,
    waiters: Vec<Waiter>,
    interrupted: VecDeque<u64>,
    wake_kh: Vec<u64>,
    /// Requests completed since the last service (poll wake-ups).
    pub req_done: Vec<ReqId>,
}

impl Core {
    /// Monotonic nanoseconds since the node started.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs the timers, sends the device's datagrams, takes its events.
    pub fn service(&mut self) {
        let now = self.now();
        let before = self.dev.stats();
        self.dev.tick(now);
        let after = self.dev.stats();
        if after.timeouts > before.timeouts {
            tracing::warn!(
                timeouts = after.timeouts,
                "a job passed its deadline: completed with ERROR"
            );
        }
        loop {
            let mut any = false;
            while let Some(o) = self.dev.poll_transmit() {
                any = true;
                let Some(link) = self.link.as_ref().filter(|l| l.gen == o.gen) else {
                    continue;
                };
                let sock = link.sock.clone();
                let fds: Vec<BorrowedFd<'_>> = match o.fds {
                    Some((ctx, q, i)) => self
                        .by_ctx
                        .get(&ctx)
                        .and_then(|fh| self.files.get(fh))
                        .and_then(|f| f.mem[qi(q)].get(i as usize))
                        .map(|m| m.daemon_fds())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                if let Err(e) = sock.send(&o.bytes, &fds) {
                    tracing::warn!("daemon link lost on send: {e}");
                    sock.close();
                    let now = self.now();
                    self.link = None;
                    self.dev.daemon_detach(now);
                }
            }
            while let Some(ev) = self.dev.poll_event() {
                any = true;
                match ev {
                    DevEvent::BufferDone { ctx, .. } => {
                        if let Some(f) = self.by_ctx.get(&ctx).and_then(|fh| self.files.get(fh)) {
                            if let Some(kh) = f.kh {
                                self.wake_kh.push(kh);
                            }
                        }
                    }
                    DevEvent::RequestDone(r) => self.req_done.push(r),
                    DevEvent::DaemonDetached { gen } => {
                        let st = self.dev.stats();
                        tracing::warn!(
                            gen,
                            drained = st.drained,
                            fail_fast = st.fail_fast,
                            "daemon detached: its jobs in flight completed with ERROR"
                        );
                        if let Some(l) = self.link.take_if(|l| l.gen == gen) {
                            l.sock.close();
                        }
                    }
                    DevEvent::DaemonAttached { gen } => tracing::info!(gen, "daemon attached"),
                    DevEvent::JobDone { .. } => {}
                }
            }
            if !any {
                break;
            }
        }
    }
}

/// The shared part of the node (the media side uses it too).
pub struct Shared {
    core: Mutex<Core>,
    chan: OnceLock<Arc<Channel>>,
    resolver: OnceLock<Arc<dyn RequestResolver>>,
    /// Device name (`videoN`-like).
    pub name: String,
    /// QUERYCAP / MEDIA_IOC_DEVICE_INFO bus_info.
    pub bus_info: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("name", &self.name).finish()
    }
}

/// Guard of the device lock that services the device and wakes waiters
/// when dropped.
pub struct CoreGuard<'a> {
    shared: &'a Shared,
    g: Option<MutexGuard<'a, Core>>,
}

impl std::ops::Deref for CoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        self.g.as_ref().expect("held")
    }
}
impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        self.g.as_mut().expect("held")
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        let Some(mut g) = self.g.take() else { return };
        g.service();
        // Parked DQBUFs that can complete now.
        let waiters = std::mem::take(&mut g.waiters);
        for w in waiters {
            match try_dqbuf(&mut g, w.fh, w.caller, w.arg.clone()) {
                Err(Errno(libc::EAGAIN)) => g.waiters.push(w),
                Ok(a) => w.reply.ok(0, &[a.buf.as_bytes(), a.planes.as_bytes()]),
                Err(Errno(e)) => w.reply.error(e),
            }
        }
        let kh = std::mem::take(&mut g.wake_kh);
        let reqs = std::mem::take(&mut g.req_done);
        drop(g);
        if let Some(chan) = self.shared.chan.get() {
            for k in kh {
                chan.notify_poll(k);
            }
        }
        if let Some(r) = self.shared.resolver.get() {
            for q in reqs {
                r.request_done(q);
            }
        }
    }
}

impl Shared {
    /// Takes the device lock.
    pub fn lock(&self) -> CoreGuard<'_> {
        CoreGuard {
            shared: self,
            g: Some(self.core.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// Installs the request resolver (the media side).
    pub fn set_resolver(&self, r: Arc<dyn RequestResolver>) {
        let _ = self.resolver.set(r);
    }

    /// Attaches a daemon connection: any previous one is detached (its
    /// jobs complete with ERROR), a hello is sent, and a receiver thread
    /// applies what the daemon sends until the link ends.
    pub fn attach_daemon(self: &Arc<Self>, sock: SeqPacket) -> std::io::Result<()> {
        let sock = Arc::new(sock);
        let gen = {
            let mut g = self.lock();
            if let Some(old) = g.link.take() {
                old.sock.close();
            }
            let now = g.now();
            let gen = g.dev.daemon_attach(now);
            g.link = Some(DaemonLink {
                sock: sock.clone(),
                gen,
            });
            gen
        };
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("daemon-rx-{gen}"))
            .spawn(move || me.receiver(&sock, gen))?;
        Ok(())
    }

    fn receiver(&self, sock: &SeqPacket, gen: u64) {
        let mut rx = vec![0u8; proto::DV_MAX_MSG_SIZE as usize];
        loop {
            let wait = {
                let g = self.lock();
                if g.link.as_ref().map(|l| l.gen) != Some(gen) {
                    return;
                }
                let now = g.now();
                g.dev
                    .next_deadline()
                    .map_or(Duration::from_millis(100), |d| {
                        Duration::from_nanos(d.saturating_sub(now)).min(Duration::from_millis(100))
                    })
            };
            let fd = sock.as_fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let ts = rustix::event::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: wait.subsec_nanos() as i64,
            };
            let _ = rustix::event::poll(&mut fds, Some(&ts));
            if fds[0].revents().is_empty() {
                drop(self.lock()); // runs the timers
                continue;
            }
            let got = sock.try_recv(&mut rx);
            let mut g = self.lock();
            if g.link.as_ref().map(|l| l.gen) != Some(gen) {
                return;
            }
            match got {
                Ok(n) => {
                    let now = g.now();
                    if let Err(e) = g.dev.daemon_receive(&rx[..n], now) {
                        tracing::warn!("daemon message refused, link dropped: {e}");
                    }
                }
                Err(TransportError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!("daemon link ended: {e}");
                    let now = g.now();
                    g.dev.daemon_detach(now);
                    if let Some(l) = g.link.take() {
                        l.sock.close();
                    }
                    return;
                }
            }
        }
    }
}

/// The CUSE video node.
#[derive(Debug, Clone)]
pub struct VideoNode {
    /// Shared state.
    pub shared: Arc<Shared>,
}

/// Buffer memory a node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeMemory {
    /// USERPTR, copied through memfds the daemon decodes into.
    Userptr,
    /// DMABUF: the client's dma-bufs go to the daemon (zero copy).
    Dmabuf,
}

/// The device configuration of the CUSE frontend: USERPTR (copied through
/// memfds) or DMABUF (zero copy); never MMAP (CUSE cannot map). One kind
/// per node: decoder-core registers every buffer with one `daemon_memory`.
pub fn device_config(memory: NodeMemory) -> Config {
    let dmabuf = memory == NodeMemory::Dmabuf;
    Config {
        memory_mmap: false,
        memory_userptr: !dmabuf,
        memory_dmabuf: dmabuf,
        daemon_memory: if dmabuf {
            proto::DV_MEM_DMABUF
        } else {
            proto::DV_MEM_MEMFD
        },
        features: proto::DV_FEAT_CANCEL
            | proto::DV_FEAT_HOLD_CAPTURE
            | if dmabuf {
                proto::DV_FEAT_DMABUF
            } else {
                proto::DV_FEAT_MEMFD
            },
        // No artificial limit on opens (v4l2-compliance opens 100).
        max_contexts: 4096,
        ..Config::default()
    }
}

impl VideoNode {
    /// A node named `name` around a fresh device.
    pub fn new(name: &str, cfg: Config) -> Self {
        VideoNode {
            shared: Arc::new(Shared {
                core: Mutex::new(Core {
                    dev: Device::new(cfg),
                    epoch: Instant::now(),
                    files: HashMap::new(),
                    by_ctx: HashMap::new(),
                    next_fh: 1,
                    link: None,
                    waiters: Vec::new(),
                    interrupted: VecDeque::new(),
                    wake_kh: Vec::new(),
                    req_done: Vec::new(),
                }),
                chan: OnceLock::new(),
                resolver: OnceLock::new(),
                name: name.to_string(),
                bus_info: format!("platform:daedalus-cuse-{name}"),
            }),
        }
    }

    /// Sets the channel poll notifications go to.
    pub fn set_channel(&self, chan: Arc<Channel>) {
        let _ = self.shared.chan.set(chan);
    }

    fn ctx(&self, g: &Core, fh: u64) -> IoResult<CtxId> {
        g.files.get(&fh).map(|f| f.ctx).ok_or(Errno(libc::EBADF))
    }

    /// Another file holds a higher priority: state changes are refused.
    fn prio_check(g: &Core, fh: u64) -> IoResult {
        let mine = g.files.get(&fh).map_or(PRIORITY_INTERACTIVE, |f| f.prio);
        let max = g.files.values().map(|f| f.prio).max().unwrap_or(0);
        if mine < max {
            return Err(Errno(libc::EBUSY));
        }
        Ok(())
    }

    /// QBUF of a DMABUF buffer: the client's dma-buf of each plane is
    /// duplicated (`pidfd_getfd`) and kept for the daemon; a different
    /// dma-buf than last time (another inode) is registered again.
    #[allow(clippy::too_many_arguments)]
    fn qbuf_dmabuf(
        &self,
        mut g: CoreGuard<'_>,
        c: &Call,
        q: Queue,
        ctx: CtxId,
        info: BufferInfo,
        request: Option<ReqId>,
        a: &mut BufArg,
    ) -> IoResult {
        let index = a.buf.index;
        let n = info.num_planes as usize;
        let mut bytesused = [0u32; 4];
        let mut got = Vec::with_capacity(n);
        for (i, p) in a.planes.iter().enumerate().take(n) {
            let fd = p.m as u32 as i32;
            let dup = crate::media::steal_fd(c.caller.pid, fd).map_err(|_| EINVAL)?;
            let st = rustix::fs::fstat(&dup).map_err(|_| EINVAL)?;
            if (st.st_size as u64) < u64::from(info.length[i]) {
                return Err(EINVAL);
            }
            if q == Queue::Output {
                if p.bytesused > st.st_size as u32 {
                    return Err(EINVAL);
                }
                bytesused[i] = p.bytesused.min(info.length[i]);
            }
            got.push(((dup, st.st_ino), (u64::from(fd as u32), st.st_size as u32)));
        }
        let changed = {
            let f = g.files.get_mut(&c.fh).expect("checked");
            let m = f.mem[qi(q)].get_mut(index as usize).ok_or(EINVAL)?;
            let old: Vec<u64> = m.dmabuf.iter().map(|(_, ino)| *ino).collect();
            let new: Vec<u64> = got.iter().map(|((_, ino), _)| *ino).collect();
            m.dmabuf.clear();
            for (i, (dm, user)) in got.into_iter().enumerate() {
                m.dmabuf.push(dm);
                m.user[i] = user;
            }
            old != new
        };
        let ts = a.buf.tv_sec as u64 * 1_000_000_000 + a.buf.tv_usec as u64 * 1000;
        let args = QbufArgs {
            bytesused,
            timestamp: ts,
            flags: a.buf.flags,
            request,
            memory_changed: changed,
        };
        let now = g.now();
        g.dev.qbuf(ctx, q, index, Memory::Dmabuf, args, now)?;
        let info = g.dev.buffer(ctx, q, index).ok_or(EINVAL)?;
        let f = g.files.get(&c.fh).expect("checked");
        fill_buffer(
            a,
            index,
            &info,
            f.mem[qi(q)].get(index as usize),
            Memory::Dmabuf,
        );
        if request.is_some() {
            a.buf.flags |= BUF_FLAG_REQUEST_FD;
            a.buf.request_fd = 0;
        }
        Ok(())
    }

    fn request_of(&self, pid: u32, fd: i32) -> IoResult<ReqId> {
        match self.shared.resolver.get() {
            Some(r) => r.resolve(pid, fd).map_err(Errno),
            None => Err(EINVAL),
        }
    }
}

fn controls_sorted(codec: Codec) -> Vec<CtrlDesc> {
    let mut v: Vec<CtrlDesc> = codec.desc().controls.to_vec();
    // The class controls the kernel adds for every class in use.
    let mut classes: Vec<u32> = v.iter().map(|d| d.id & 0x0fff_0000).collect();
    classes.sort();
    classes.dedup();
    for class in classes {
        v.push(CtrlDesc {
            id: class | 1,
            name: match class {
                0x0099_0000 => "Codec Controls",
                0x00a4_0000 => "Stateless Codec Controls",
                _ => "Controls",
            },
            v4l2_type: ctrl_type::CTRL_CLASS,
            elem_size: 0,
            max_elems: 1,
            flags: 0x0004 | 0x0040, // READ_ONLY | WRITE_ONLY
            min: 0,
            max: 0,
            step: 0,
            default: 0,
            menu_skip_mask: 0,
            menu: &[],
            init: None,
            validate: None,
        });
    }
    v.sort_by_key(|d| d.id);
    v
}

fn is_class(d: &CtrlDesc) -> bool {
    d.v4l2_type == ctrl_type::CTRL_CLASS
}

/// Finds the control `id` asks for, honouring NEXT_CTRL / NEXT_COMPOUND.
fn find_ctrl(codec: Codec, id: u32) -> Option<CtrlDesc> {
    let all = controls_sorted(codec);
    let next = id & (CTRL_FLAG_NEXT_CTRL | CTRL_FLAG_NEXT_COMPOUND);
    let base = id & !(CTRL_FLAG_NEXT_CTRL | CTRL_FLAG_NEXT_COMPOUND);
    if next == 0 {
        return all.into_iter().find(|d| d.id == base);
    }
    let want_simple = id & CTRL_FLAG_NEXT_CTRL != 0;
    let want_compound = id & CTRL_FLAG_NEXT_COMPOUND != 0;
    all.into_iter().find(|d| {
        d.id > base && ((d.is_compound() && want_compound) || (!d.is_compound() && want_simple))
    })
}

/// Colorimetry of a context: colorspace, xfer_func, ycbcr_enc,
/// quantization. A stateless decoder takes it from the client's OUTPUT
/// format and reports it on both queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Colorimetry([u32; 4]);

/// `V4L2_COLORSPACE_REC709`, the rest default.
const DEFAULT_COLOR: Colorimetry = Colorimetry([3, 0, 0, 0]);

impl Colorimetry {
    fn of(p: &PixFormatMplane) -> Self {
        Colorimetry([
            p.colorspace,
            u32::from(p.xfer_func),
            u32::from(p.ycbcr_enc),
            u32::from(p.quantization),
        ])
    }
}

fn fill_format(a: &mut Format, f: &PixFormat, color: Colorimetry) {
    let p = &mut a.pix_mp;
    *p = PixFormatMplane::new_zeroed();
    p.width = f.width;
    p.height = f.height;
    p.pixelformat = f.fourcc;
    p.field = FIELD_NONE;
    p.colorspace = color.0[0];
    p.xfer_func = color.0[1] as u8;
    p.ycbcr_enc = color.0[2] as u8;
    p.quantization = color.0[3] as u8;
    p.num_planes = f.num_planes as u8;
    for (i, pl) in f.planes[..f.num_planes as usize].iter().enumerate() {
        p.plane_fmt[i].sizeimage = pl.sizeimage;
        p.plane_fmt[i].bytesperline = pl.bytesperline;
    }
}

fn fmt_desc(fourcc: u32) -> &'static str {
    match fourcc {
        fmt::PIX_FMT_H264_SLICE => "H.264 Parsed Slice Data",
        fmt::PIX_FMT_HEVC_SLICE => "HEVC Parsed Slice Data",
        fmt::PIX_FMT_VP8_FRAME => "VP8 Frame",
        fmt::PIX_FMT_VP9_FRAME => "VP9 Frame",
        fmt::PIX_FMT_AV1_FRAME => "AV1 Frame",
        fmt::PIX_FMT_NV12 => "Y/UV 4:2:0",
        fmt::PIX_FMT_NV12M => "Y/UV 4:2:0 (N-C)",
        fmt::PIX_FMT_YUV420M => "Planar YUV 4:2:0 (N-C)",
        fmt::PIX_FMT_P010 => "10-bit Y/UV 4:2:0",
        _ => "",
    }
}

/// Fills a `v4l2_buffer` (and its planes) from the device's view.
fn fill_buffer(
    a: &mut BufArg,
    index: u32,
    info: &BufferInfo,
    mem: Option<&BufMem>,
    memory: Memory,
) {
    let b = &mut a.buf;
    b.index = index;
    b.flags = BUF_FLAG_TIMESTAMP_COPY
        | (info.flags & !BUF_FLAG_ERROR)
        | match info.state {
            BufState::Dequeued => 0,
            BufState::InRequest(_) => BUF_FLAG_IN_REQUEST,
            BufState::Queued | BufState::Active => BUF_FLAG_QUEUED,
            BufState::Done { error } => BUF_FLAG_DONE | if error { BUF_FLAG_ERROR } else { 0 },
        };
    b.field = FIELD_NONE;
    b.tv_sec = (info.timestamp / 1_000_000_000) as i64;
    b.tv_usec = ((info.timestamp % 1_000_000_000) / 1000) as i64;
    b.sequence = info.sequence;
    b.memory = memory_wire(memory);
    b.length = info.num_planes;
    b.bytesused = 0;
    b.request_fd = 0;
    a.planes.resize(info.num_planes as usize, Plane::default());
    for (i, p) in a.planes.iter_mut().enumerate() {
        p.bytesused = info.bytesused[i];
        p.length = info.length[i];
        p.data_offset = 0;
        p.m = mem.map_or(0, |m| m.user[i].0);
        if memory != Memory::Mmap {
            if let Some(m) = mem {
                if m.user[i].1 != 0 {
                    p.length = m.user[i].1;
                }
            }
        }
    }
}

/// DQBUF without waiting: dequeues, copies a CAPTURE picture to the
/// client's memory, fills the answer.
fn try_dqbuf(g: &mut Core, fh: u64, caller: Caller, mut a: BufArg) -> IoResult<BufArg> {
    let q = queue_of(a.buf.type_)?;
    let ctx = g.files.get(&fh).ok_or(Errno(libc::EBADF))?.ctx;
    // vb2 does not check `memory` on DQBUF (clients often leave it 0).
    let memory = g.dev.memory(ctx, q).ok_or(EINVAL)?;
    if a.planes.len() < g.dev.format(ctx, q).map_or(1, |f| f.num_planes as usize) {
        return Err(EINVAL);
    }
    let d = g.dev.dqbuf(ctx, q)?;
    let info = g.dev.buffer(ctx, q, d.index).ok_or(EINVAL)?;
    let f = g.files.get(&fh).expect("checked");
    let mem = f.mem[qi(q)].get(d.index as usize);
    if q == Queue::Capture && d.flags & BUF_FLAG_ERROR == 0 {
        if let Some(m) = mem {
            for (p, s) in m.shadow.iter().enumerate() {
                let (addr, len) = m.user[p];
                let n = (info.bytesused[p] as usize).min(len as usize).min(s.len());
                if let Err(e) = write_remote(caller.pid, addr, &s.bytes()[..n]) {
                    tracing::warn!(
                        "copy of CAPTURE buffer {} to the client: errno {e}",
                        d.index
                    );
                    return Err(Errno(libc::EFAULT));
                }
            }
        }
    }
    fill_buffer(&mut a, d.index, &info, mem, memory);
    a.buf.flags = (a.buf.flags & !(BUF_FLAG_QUEUED | BUF_FLAG_DONE)) | (d.flags & BUF_FLAG_ERROR);
    a.buf.sequence = d.sequence;
    for (i, p) in a.planes.iter_mut().enumerate() {
        p.bytesused = d.bytesused[i];
    }
    Ok(a)
}

impl VideoIoctls for VideoNode {
    fn querycap(&self, _c: &Call, a: &mut Capability) -> IoResult {
        let dc = CAP_VIDEO_M2M_MPLANE | CAP_STREAMING | CAP_EXT_PIX_FORMAT;
        *a = Capability::new_zeroed();
        a.driver = cstr("daedalus-cuse");
        a.card = cstr("daedalus stateless decoder (CUSE)");
        a.bus_info = cstr(&self.shared.bus_info);
        a.version = 0x0006_0c00;
        a.device_caps = dc;
        a.capabilities = dc | CAP_DEVICE_CAPS;
        Ok(())
    }

    fn enum_fmt(&self, _c: &Call, a: &mut FmtDesc) -> IoResult {
        let i = a.index as usize;
        let (fourcc, flags) = match a.type_ {
            BUF_TYPE_VIDEO_OUTPUT_MPLANE => (
                fmt::CODED_FORMATS.get(i).ok_or(EINVAL)?.0,
                FMT_FLAG_COMPRESSED,
            ),
            BUF_TYPE_VIDEO_CAPTURE_MPLANE => (*fmt::DECODED_FORMATS.get(i).ok_or(EINVAL)?, 0),
            _ => return Err(EINVAL),
        };
        a.flags = flags;
        a.pixelformat = fourcc;
        a.description = cstr(fmt_desc(fourcc));
        a.mbus_code = 0;
        a.reserved = [0; 3];
        Ok(())
    }

    fn fmt(&self, c: &Call, a: &mut Format, set: bool, try_only: bool) -> IoResult {
        let q = queue_of(a.type_)?;
        let mut g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        let p = a.pix_mp;
        let want = PixFormat {
            fourcc: p.pixelformat,
            width: p.width,
            height: p.height,
            num_planes: 1,
            planes: {
                let mut pl = [fmt::PlaneLayout::default(); 4];
                pl[0].sizeimage = p.plane_fmt[0].sizeimage;
                pl
            },
        };
        let asked = Colorimetry::of(&p);
        let mut color = g.files.get(&c.fh).map_or(DEFAULT_COLOR, |f| f.color);
        let f = if set {
            Self::prio_check(&g, c.fh)?;
            let f = g.dev.set_format(ctx, q, want)?;
            if q == Queue::Output {
                color = asked;
                if let Some(file) = g.files.get_mut(&c.fh) {
                    file.color = asked;
                }
            }
            f
        } else if try_only {
            if q == Queue::Output {
                color = asked;
            }
            match q {
                Queue::Output => fmt::try_coded(
                    want.fourcc,
                    want.width,
                    want.height,
                    want.planes[0].sizeimage,
                ),
                Queue::Capture => {
                    let out = g.dev.format(ctx, Queue::Output).ok_or(EINVAL)?;
                    fmt::try_decoded(want.fourcc, out.width, out.height)
                }
            }
        } else {
            g.dev.format(ctx, q).ok_or(EINVAL)?
        };
        fill_format(a, &f, color);
        Ok(())
    }

    fn enum_framesizes(&self, _c: &Call, a: &mut FrmSizeEnum) -> IoResult {
        if a.index != 0 || fmt::codec_of(a.pixel_format).is_none() {
            return Err(EINVAL);
        }
        a.type_ = FRMSIZE_TYPE_STEPWISE;
        a.u = [
            fmt::MIN_SIZE,
            fmt::MAX_WIDTH,
            16,
            fmt::MIN_SIZE,
            fmt::MAX_HEIGHT,
            16,
        ];
        a.reserved = [0; 2];
        Ok(())
    }

    fn reqbufs(&self, c: &Call, a: &mut RequestBuffers) -> IoResult {
        let q = queue_of(a.type_)?;
        let memory = memory_of(a.memory)?;
        let mut g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        Self::prio_check(&g, c.fh)?;
        let n = g.dev.reqbufs(ctx, q, memory, a.count)?;
        let f = g.files.get_mut(&c.fh).expect("checked");
        f.mem[qi(q)] = (0..n).map(|_| BufMem::default()).collect();
        a.count = n;
        a.capabilities = caps_of(q, g.dev.config());
        a.flags = 0;
        a.reserved = [0; 3];
        Ok(())
    }

    fn create_bufs(&self, c: &Call, a: &mut CreateBuffers) -> IoResult {
        let q = queue_of(a.format.type_)?;
        let memory = memory_of(a.memory)?;
        let mut g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        Self::prio_check(&g, c.fh)?;
        let cur = g.dev.format(ctx, q).ok_or(EINVAL)?;
        // Requested plane sizes must hold the current format's.
        let np = a.format.pix_mp.num_planes as usize;
        if a.count > 0 {
            if np != cur.num_planes as usize {
                return Err(EINVAL);
            }
            for i in 0..np {
                if a.format.pix_mp.plane_fmt[i].sizeimage < cur.planes[i].sizeimage {
                    return Err(EINVAL);
                }
            }
        }
        let (first, n) = g.dev.create_bufs(ctx, q, memory, a.count)?;
        let f = g.files.get_mut(&c.fh).expect("checked");
        f.mem[qi(q)].resize_with((first + n) as usize, BufMem::default);
        a.index = first;
        a.count = n;
        a.capabilities = caps_of(q, g.dev.config());
        a.max_num_buffers = g.dev.config().max_buffers;
        Ok(())
    }

    fn buf(&self, c: &Call, cmd: u32, a: &mut BufArg) -> IoResult {
        let q = queue_of(a.buf.type_)?;
        let mut g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        let index = a.buf.index;
        let info = g.dev.buffer(ctx, q, index).ok_or(EINVAL)?;
        let memory = g.dev.memory(ctx, q).ok_or(EINVAL)?;
        if (a.planes.len() as u32) < info.num_planes {
            return Err(EINVAL);
        }
        if cmd == VIDIOC_QUERYBUF {
            let f = g.files.get(&c.fh).expect("checked");
            let mem = f.mem[qi(q)].get(index as usize);
            fill_buffer(a, index, &info, mem, memory);
            return Ok(());
        }
        if a.buf.memory != memory_wire(memory) {
            return Err(EINVAL);
        }
        if cmd == VIDIOC_PREPARE_BUF {
            // Memory is checked and copied at QBUF; preparing only checks
            // that the buffer is the client's.
            if info.state != BufState::Dequeued {
                return Err(EINVAL);
            }
            let f = g.files.get(&c.fh).expect("checked");
            let mem = f.mem[qi(q)].get(index as usize);
            fill_buffer(a, index, &info, mem, memory);
            a.buf.flags |= BUF_FLAG_PREPARED;
            return Ok(());
        }
        // QBUF
        let request = if a.buf.flags & BUF_FLAG_REQUEST_FD != 0 {
            if q == Queue::Capture {
                // v4l2_m2m_qbuf: requests cannot be used with CAPTURE.
                return Err(Errno(libc::EPERM));
            }
            let fd = a.buf.request_fd;
            drop(g);
            let r = self.request_of(c.caller.pid, fd)?;
            g = self.shared.lock();
            Some(r)
        } else {
            None
        };
        // vb2's order: buffer and request checks before the planes' memory.
        g.dev.qbuf_check(ctx, q, index, memory, request)?;
        if memory == Memory::Dmabuf {
            return self.qbuf_dmabuf(g, c, q, ctx, info, request, a);
        }
        if memory != Memory::Userptr {
            return Err(EINVAL);
        }
        let n = info.num_planes as usize;
        let mut bytesused = [0u32; 4];
        for ((p, len), used) in a
            .planes
            .iter()
            .zip(info.length)
            .zip(bytesused.iter_mut())
            .take(n)
        {
            if p.m == 0 || p.length < len {
                return Err(EINVAL);
            }
            if q == Queue::Output && p.bytesused > p.length {
                return Err(EINVAL);
            }
            *used = p.bytesused.min(len);
        }
        // Shadow planes, then the bitstream copied in.
        {
            let f = g.files.get_mut(&c.fh).expect("checked");
            let m = f.mem[qi(q)].get_mut(index as usize).ok_or(EINVAL)?;
            if m.shadow.len() != n {
                m.shadow = (0..n)
                    .map(|i| Shadow::new("daedalus-cuse", info.length[i] as usize))
                    .collect::<std::io::Result<_>>()
                    .map_err(|_| Errno(libc::ENOMEM))?;
            }
            let planes = a
                .planes
                .iter()
                .zip(m.shadow.iter_mut())
                .zip(m.user.iter_mut());
            for (((p, shadow), user), used) in planes.zip(bytesused).take(n) {
                *user = (p.m, p.length);
                if q == Queue::Output {
                    let dst = &mut shadow.bytes_mut()[..used as usize];
                    read_remote(c.caller.pid, p.m, dst).map_err(Errno)?;
                }
            }
        }
        let ts = a.buf.tv_sec as u64 * 1_000_000_000 + a.buf.tv_usec as u64 * 1000;
        let args = QbufArgs {
            bytesused,
            timestamp: ts,
            flags: a.buf.flags,
            request,
            memory_changed: false,
        };
        let now = g.now();
        g.dev.qbuf(ctx, q, index, memory, args, now)?;
        let info = g.dev.buffer(ctx, q, index).ok_or(EINVAL)?;
        let f = g.files.get(&c.fh).expect("checked");
        let mem = f.mem[qi(q)].get(index as usize);
        fill_buffer(a, index, &info, mem, memory);
        if request.is_some() {
            a.buf.flags |= BUF_FLAG_REQUEST_FD;
            a.buf.request_fd = 0;
        }
        Ok(())
    }

    fn dqbuf(&self, c: &Call, a: BufArg, _planes_addr: u64, reply: ReplyIoctl) {
        let mut g = self.shared.lock();
        match try_dqbuf(&mut g, c.fh, c.caller, a.clone()) {
            Ok(a) => reply.ok(0, &[a.buf.as_bytes(), a.planes.as_bytes()]),
            Err(Errno(libc::EAGAIN)) => {
                let nonblock = g.files.get(&c.fh).is_none_or(|f| f.nonblock);
                if nonblock {
                    return reply.error(libc::EAGAIN);
                }
                if let Some(pos) = g.interrupted.iter().position(|u| *u == reply.unique()) {
                    g.interrupted.remove(pos);
                    return reply.error(libc::EINTR);
                }
                g.waiters.push(Waiter {
                    fh: c.fh,
                    caller: c.caller,
                    arg: a,
                    reply,
                });
            }
            Err(Errno(e)) => reply.error(e),
        }
    }

    fn stream(&self, c: &Call, ty: u32, on: bool) -> IoResult {
        let q = queue_of(ty)?;
        let mut g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        Self::prio_check(&g, c.fh)?;
        let now = g.now();
        if on {
            g.dev.streamon(ctx, q, now)?;
        } else {
            g.dev.streamoff(ctx, q, now)?;
        }
        // Readiness changed (POLLERR follows streaming): wake pollers.
        if let Some(kh) = g.files.get(&c.fh).and_then(|f| f.kh) {
            g.wake_kh.push(kh);
        }
        Ok(())
    }

    fn query_ext_ctrl(&self, c: &Call, a: &mut QueryExtCtrl) -> IoResult {
        let g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        let codec = g.dev.codec(ctx).ok_or(EINVAL)?;
        let d = find_ctrl(codec, a.id).ok_or(EINVAL)?;
        let cur_len = g
            .dev
            .get_control(ctx, Which::Current, d.id)
            .map(|v| v.len())
            .unwrap_or(0);
        *a = QueryExtCtrl::new_zeroed();
        a.id = d.id;
        a.type_ = d.v4l2_type;
        a.name = cstr(d.name);
        a.minimum = d.min;
        a.maximum = d.max;
        a.step = d.step;
        a.default_value = d.default;
        a.flags = d.flags;
        a.elem_size = d.elem_size;
        a.elems = 1;
        if is_class(&d) {
            a.elems = 0;
        }
        if d.is_dynamic_array() {
            a.elems = (cur_len as u32 / d.elem_size.max(1)).max(1);
            a.nr_of_dims = 1;
            a.dims[0] = d.max_elems;
        }
        Ok(())
    }

    fn queryctrl(&self, c: &Call, a: &mut QueryCtrl) -> IoResult {
        let mut e = QueryExtCtrl::new_zeroed();
        e.id = a.id;
        self.query_ext_ctrl(c, &mut e)?;
        *a = QueryCtrl::new_zeroed();
        a.id = e.id;
        a.type_ = e.type_;
        a.name = e.name;
        a.minimum = e.minimum.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        a.maximum = e.maximum.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        a.step = e.step.min(i32::MAX as u64) as i32;
        a.default_value = e.default_value as i32;
        a.flags = e.flags;
        Ok(())
    }

    fn querymenu(&self, c: &Call, a: &mut QueryMenu) -> IoResult {
        let g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        let codec = g.dev.codec(ctx).ok_or(EINVAL)?;
        let d = codec.desc().find(a.id).ok_or(EINVAL)?;
        if d.v4l2_type != ctrl_type::MENU {
            return Err(EINVAL);
        }
        let i = a.index as i64;
        if i < d.min || i > d.max || (i < 64 && d.menu_skip_mask & (1 << i) != 0) {
            return Err(EINVAL);
        }
        let name = d.menu.get(a.index as usize).ok_or(EINVAL)?;
        if name.is_empty() {
            return Err(EINVAL);
        }
        a.name = cstr(name);
        a.reserved = 0;
        Ok(())
    }

    fn ctrl(&self, c: &Call, a: &mut [u32; 2], set: bool) -> IoResult {
        let mut g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        let codec = g.dev.codec(ctx).ok_or(EINVAL)?;
        let d = codec.desc().find(a[0]).ok_or(EINVAL)?;
        if d.is_compound() {
            return Err(EINVAL);
        }
        if set {
            let v = a[1].to_le_bytes();
            g.dev
                .set_controls(ctx, Which::Current, &[(a[0], &v)], false)?;
        } else {
            let v = g.dev.get_control(ctx, Which::Current, a[0])?;
            a[1] = u32::from_le_bytes(v.get(..4).ok_or(EINVAL)?.try_into().expect("4"));
        }
        Ok(())
    }

    fn payload_of(&self, c: &Call, id: u32) -> Option<(u32, u32)> {
        let g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh).ok()?;
        let d = g.dev.codec(ctx)?.desc().find(id)?;
        d.is_compound().then_some((d.elem_size, d.max_elems))
    }

    fn ext_ctrls(&self, c: &Call, cmd: u32, a: &mut CtrlsArg) -> IoResult {
        let which = a.head.which;
        let n = a.ctrls.len();
        let set = cmd == VIDIOC_S_EXT_CTRLS;
        let try_only = cmd == VIDIOC_TRY_EXT_CTRLS;
        let w = match which {
            CTRL_WHICH_CUR_VAL | 0x0099_0000 | 0x00a4_0000 => Which::Current,
            CTRL_WHICH_DEF_VAL if cmd == VIDIOC_G_EXT_CTRLS => Which::Current,
            CTRL_WHICH_DEF_VAL => return Err(EINVAL),
            CTRL_WHICH_REQUEST_VAL => {
                if a.head.request_fd <= 0 {
                    a.head.error_idx = n as u32;
                    return Err(EINVAL);
                }
                match self.request_of(c.caller.pid, a.head.request_fd) {
                    Ok(r) => Which::Request(r),
                    Err(e) => {
                        a.head.error_idx = n as u32;
                        return Err(e);
                    }
                }
            }
            _ => {
                a.head.error_idx = n as u32;
                return Err(EINVAL);
            }
        };
        let mut g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        let codec = g.dev.codec(ctx).ok_or(EINVAL)?;
        if set {
            Self::prio_check(&g, c.fh)?;
        }
        // Per-control shape checks (the kernel's prepare_ext_ctrls).
        for (i, x) in a.ctrls.iter().enumerate() {
            let id = x.id;
            let size = x.size;
            if id & 0xffff == 1
                && controls_sorted(codec)
                    .iter()
                    .any(|d| d.id == id && is_class(d))
            {
                // Class controls: write-only for reads, read-only for writes.
                a.head.error_idx = if cmd == VIDIOC_TRY_EXT_CTRLS {
                    i as u32
                } else {
                    n as u32
                };
                return Err(Errno(libc::EACCES));
            }
            let Some(d) = codec.desc().find(id) else {
                a.head.error_idx = if try_only { i as u32 } else { n as u32 };
                return Err(EINVAL);
            };
            if d.is_compound() {
                let need = if cmd == VIDIOC_G_EXT_CTRLS && which != CTRL_WHICH_DEF_VAL {
                    g.dev
                        .get_control(ctx, w, id)
                        .map(|v| v.len())
                        .unwrap_or(d.elem_size as usize)
                } else {
                    d.elem_size as usize
                };
                if cmd == VIDIOC_G_EXT_CTRLS && (size as usize) < need {
                    a.ctrls[i].size = need as u32;
                    a.head.error_idx = i as u32;
                    return Err(Errno(libc::ENOSPC));
                }
                // Setting a dynamic array: more than its maximum is ENOSPC
                // (with the maximum size reported), as the kernel's
                // prepare_ext_ctrls does.
                let max = d.elem_size as usize * d.max_elems as usize;
                if cmd != VIDIOC_G_EXT_CTRLS && d.is_dynamic_array() && size as usize > max {
                    a.ctrls[i].size = max as u32;
                    a.head.error_idx = if try_only { i as u32 } else { n as u32 };
                    return Err(Errno(libc::ENOSPC));
                }
                // Setting: a payload smaller than one element is EFAULT;
                // dynamic arrays give their element count by size.
                if cmd != VIDIOC_G_EXT_CTRLS && (size as usize) < need {
                    a.head.error_idx = if try_only { i as u32 } else { n as u32 };
                    return Err(Errno(libc::EFAULT));
                }
            }
        }
        if cmd == VIDIOC_G_EXT_CTRLS {
            for i in 0..n {
                let id = a.ctrls[i].id;
                let d = codec.desc().find(id).expect("checked");
                let v = if which == CTRL_WHICH_DEF_VAL {
                    d.default_bytes()
                } else {
                    match g.dev.get_control(ctx, w, id) {
                        Ok(v) => v,
                        Err(e) => {
                            a.head.error_idx = i as u32;
                            return Err(e.into());
                        }
                    }
                };
                if d.is_compound() {
                    let p = a.payloads[i].as_mut().ok_or(EINVAL)?;
                    let k = v.len().min(p.len());
                    p[..k].copy_from_slice(&v[..k]);
                    a.ctrls[i].size = v.len() as u32;
                } else {
                    let val = i32::from_le_bytes(v.get(..4).ok_or(EINVAL)?.try_into().expect("4"));
                    a.ctrls[i].value = val as u32 as u64;
                }
            }
            return Ok(());
        }
        let ints: Vec<[u8; 4]> = a
            .ctrls
            .iter()
            .map(|x| (x.value as u32).to_le_bytes())
            .collect();
        let list: Vec<(u32, &[u8])> = a
            .ctrls
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let bytes: &[u8] = match &a.payloads[i] {
                    // A dynamic array holds whole elements: the kernel
                    // rounds the size down.
                    Some(p) => match codec.desc().find(x.id) {
                        Some(d) if d.is_dynamic_array() => {
                            let e = d.elem_size as usize;
                            &p[..p.len() / e * e]
                        }
                        _ => p,
                    },
                    None => &ints[i],
                };
                (x.id, bytes)
            })
            .collect();
        match g.dev.set_controls(ctx, w, &list, try_only) {
            Ok(()) => Ok(()),
            Err(CtrlsError::Ctrl { index, err }) => {
                a.head.error_idx = if try_only { index as u32 } else { n as u32 };
                Err(Errno(match err {
                    CtrlError::ReadOnly(_) => libc::EACCES,
                    e => e.errno(),
                }))
            }
            Err(e) => {
                a.head.error_idx = n as u32;
                Err(e.into())
            }
        }
    }

    fn subscribe(&self, c: &Call, a: &EventSubscription, on: bool) -> IoResult {
        let mut g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        let codec = g.dev.codec(ctx).ok_or(EINVAL)?;
        if !on {
            let f = g.files.get_mut(&c.fh).expect("checked");
            if a.type_ == EVENT_ALL {
                f.subs.clear();
            } else {
                f.subs.retain(|s| *s != (a.type_, a.id));
            }
            return Ok(());
        }
        match a.type_ {
            EVENT_CTRL => {
                let d = controls_sorted(codec)
                    .into_iter()
                    .find(|d| d.id == a.id)
                    .ok_or(EINVAL)?;
                let value = if d.is_compound() || is_class(&d) {
                    0
                } else {
                    g.dev
                        .get_control(ctx, Which::Current, d.id)
                        .ok()
                        .and_then(|v| {
                            v.get(..4)
                                .map(|b| i32::from_le_bytes(b.try_into().expect("4")))
                        })
                        .unwrap_or(0)
                };
                let f = g.files.get_mut(&c.fh).expect("checked");
                if !f.subs.contains(&(a.type_, a.id)) {
                    f.subs.push((a.type_, a.id));
                }
                if a.flags & EVENT_SUB_FL_SEND_INITIAL != 0 && !is_class(&d) {
                    let mut e = V4l2Event::new_zeroed();
                    e.type_ = EVENT_CTRL;
                    e.id = d.id;
                    let ec = EventCtrl {
                        changes: EVENT_CTRL_CH_VALUE | EVENT_CTRL_CH_FLAGS,
                        type_: d.v4l2_type,
                        value64: value as i64,
                        flags: d.flags,
                        minimum: d.min as i32,
                        maximum: d.max as i32,
                        step: d.step as i32,
                        default_value: d.default as i32,
                        pad: 0,
                    };
                    e.u[..40].copy_from_slice(ec.as_bytes());
                    f.events.push_back(Event_ { ev: e });
                    if let Some(kh) = f.kh {
                        g.wake_kh.push(kh);
                    }
                }
                Ok(())
            }
            _ => Err(EINVAL),
        }
    }

    fn dqevent(&self, c: &Call, a: &mut V4l2Event) -> IoResult {
        let mut g = self.shared.lock();
        let f = g.files.get_mut(&c.fh).ok_or(Errno(libc::EBADF))?;
        let mut e = f.events.pop_front().ok_or(Errno(libc::ENOENT))?.ev;
        e.pending = f.events.len() as u32;
        e.sequence = f.ev_seq;
        f.ev_seq = f.ev_seq.wrapping_add(1);
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        e.ts_sec = ts.tv_sec;
        e.ts_nsec = ts.tv_nsec;
        *a = e;
        Ok(())
    }

    fn decoder_cmd(&self, c: &Call, a: &mut DecoderCmd, try_only: bool) -> IoResult {
        if a.cmd != DEC_CMD_FLUSH || a.flags != 0 {
            return Err(EINVAL);
        }
        a.raw = [0; 16];
        if try_only {
            return Ok(());
        }
        let mut g = self.shared.lock();
        let ctx = self.ctx(&g, c.fh)?;
        g.dev.decoder_flush(ctx)?;
        Ok(())
    }

    fn priority(&self, c: &Call, a: &mut u32, set: bool) -> IoResult {
        let mut g = self.shared.lock();
        if !set {
            *a = g
                .files
                .values()
                .map(|f| f.prio)
                .max()
                .unwrap_or(PRIORITY_INTERACTIVE);
            return Ok(());
        }
        let p = match *a {
            0 => PRIORITY_INTERACTIVE, // V4L2_PRIORITY_UNSET → default
            PRIORITY_BACKGROUND | PRIORITY_INTERACTIVE | PRIORITY_RECORD => *a,
            _ => return Err(EINVAL),
        };
        let others = g
            .files
            .iter()
            .filter(|(fh, _)| **fh != c.fh)
            .map(|(_, f)| f.prio)
            .max()
            .unwrap_or(0);
        if others == PRIORITY_RECORD && p != PRIORITY_RECORD {
            // Someone else records: only they may change things.
            let mine = g.files.get(&c.fh).map_or(0, |f| f.prio);
            if mine < PRIORITY_RECORD {
                return Err(Errno(libc::EBUSY));
            }
        }
        if others == PRIORITY_RECORD && p == PRIORITY_RECORD {
            return Err(Errno(libc::EBUSY));
        }
        g.files.get_mut(&c.fh).ok_or(Errno(libc::EBADF))?.prio = p;
        Ok(())
    }
}

fn caps_of(q: Queue, cfg: &Config) -> u32 {
    let base = if cfg.memory_dmabuf {
        BUF_CAP_SUPPORTS_DMABUF
    } else {
        0
    } | if cfg.memory_userptr {
        BUF_CAP_SUPPORTS_USERPTR
    } else {
        0
    };
    match q {
        Queue::Output => base | BUF_CAP_SUPPORTS_REQUESTS | BUF_CAP_SUPPORTS_M2M_HOLD_CAPTURE_BUF,
        Queue::Capture => base,
    }
}

impl CuseDevice for VideoNode {
    fn open(&self, _caller: Caller, flags: u32) -> Result<u64, i32> {
        let mut g = self.shared.lock();
        let ctx = g.dev.open_context().ok_or(libc::EBUSY)?;
        let fh = g.next_fh;
        g.next_fh += 1;
        g.files.insert(
            fh,
            OpenFile {
                ctx,
                nonblock: flags & libc::O_NONBLOCK as u32 != 0,
                kh: None,
                mem: [Vec::new(), Vec::new()],
                events: VecDeque::new(),
                subs: Vec::new(),
                ev_seq: 0,
                prio: PRIORITY_INTERACTIVE,
                color: DEFAULT_COLOR,
            },
        );
        g.by_ctx.insert(ctx, fh);
        Ok(fh)
    }

    fn release(&self, fh: u64) {
        let mut g = self.shared.lock();
        let Some(f) = g.files.remove(&fh) else { return };
        g.by_ctx.remove(&f.ctx);
        let now = g.now();
        g.dev.close_context(f.ctx, now);
        // Anything still parked on this file goes back.
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut g.waiters)
            .into_iter()
            .partition(|w| w.fh == fh);
        g.waiters = rest;
        for w in mine {
            w.reply.error(libc::EBADF);
        }
        // Shadows are dropped with `f` after the device no longer uses
        // them (close_context cancelled every job).
        drop(f);
    }

    fn ioctl(&self, caller: Caller, io: IoctlIn, data: &[u8], reply: ReplyIoctl) {
        dispatch(self, caller, io, data, reply)
    }

    fn poll(&self, fh: u64, kh: u64, _events: u32) -> u32 {
        let mut g = self.shared.lock();
        let Some(f) = g.files.get_mut(&fh) else {
            return libc::POLLERR as u32;
        };
        f.kh = Some(kh);
        let ctx = f.ctx;
        let pri = !f.events.is_empty();
        let s = g.dev.poll_state(ctx);
        let mut r = 0u32;
        if s.capture_ready {
            r |= (libc::POLLIN | libc::POLLRDNORM) as u32;
        }
        if s.output_ready {
            r |= (libc::POLLOUT | libc::POLLWRNORM) as u32;
        }
        if s.error && !pri {
            r |= libc::POLLERR as u32;
        }
        if pri {
            r |= libc::POLLPRI as u32;
        }
        r
    }

    fn interrupt(&self, unique: u64) {
        let mut g = self.shared.lock();
        if let Some(pos) = g.waiters.iter().position(|w| w.reply.unique() == unique) {
            let w = g.waiters.remove(pos);
            w.reply.error(libc::EINTR);
        } else {
            g.interrupted.push_back(unique);
            while g.interrupted.len() > 64 {
                g.interrupted.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The dispatcher and the node against decoder-core, with a small
    //! emulation of the kernel's side of unrestricted ioctls: a fake
    //! caller memory, the RETRY rounds, the scatter of the results.
    use super::*;
    use crate::cuse::{IoVec, IoctlOut, OutHeader, FUSE_IOCTL_RETRY, FUSE_IOCTL_UNRESTRICTED};
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    const BASE: u64 = 0x10_0000;

    /// The caller's memory: one arena at BASE.
    struct Mem(Vec<u8>);

    impl Mem {
        fn new() -> Self {
            Mem(vec![0; 1 << 16])
        }
        fn range(&mut self, v: IoVec) -> &mut [u8] {
            let o = (v.base - BASE) as usize;
            &mut self.0[o..o + v.len as usize]
        }
        fn put<T: IntoBytes + zerocopy::Immutable>(&mut self, at: u64, v: &T) {
            let b = v.as_bytes();
            self.range(IoVec {
                base: at,
                len: b.len() as u64,
            })
            .copy_from_slice(b);
        }
        fn get<T: FromBytes>(&mut self, at: u64) -> T {
            let n = std::mem::size_of::<T>();
            T::read_from_bytes(self.range(IoVec {
                base: at,
                len: n as u64,
            }))
            .unwrap()
        }
    }

    struct H {
        node: VideoNode,
        chan: Arc<Channel>,
        peer: UnixStream,
        unique: u64,
    }

    enum Out {
        Done(i32),
        Parked(u64),
    }

    impl H {
        fn new() -> Self {
            let (a, b) = UnixStream::pair().unwrap();
            let chan = Channel::from_file(std::fs::File::from(std::os::fd::OwnedFd::from(a)));
            let node = VideoNode::new("video-test", device_config(NodeMemory::Userptr));
            node.set_channel(chan.clone());
            b.set_nonblocking(true).unwrap();
            H {
                node,
                chan,
                peer: b,
                unique: 100,
            }
        }

        fn caller(&mut self) -> Caller {
            self.unique += 2;
            Caller {
                unique: self.unique,
                pid: std::process::id(),
                uid: 0,
            }
        }

        fn read_reply(&mut self) -> Option<(OutHeader, Vec<u8>)> {
            let mut h = [0u8; 16];
            match self.peer.read_exact(&mut h) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) => panic!("{e}"),
            }
            let h = OutHeader::read_from_bytes(&h).unwrap();
            let mut rest = vec![0u8; h.len as usize - 16];
            self.peer.set_nonblocking(false).unwrap();
            self.peer.read_exact(&mut rest).unwrap();
            self.peer.set_nonblocking(true).unwrap();
            Some((h, rest))
        }

        /// One ioctl as the kernel runs it: rounds until a final answer.
        /// Returns the result (or -errno) and the number of rounds.
        fn ioctl(&mut self, fh: u64, cmd: u32, arg: u64, mem: &mut Mem) -> (Out, usize) {
            let mut input: Vec<IoVec> = Vec::new();
            let mut output: Vec<IoVec> = Vec::new();
            for round in 1..10 {
                let mut data = Vec::new();
                for v in &input {
                    data.extend_from_slice(mem.range(*v));
                }
                let io = IoctlIn {
                    fh,
                    flags: FUSE_IOCTL_UNRESTRICTED,
                    cmd,
                    arg,
                    in_size: data.len() as u32,
                    out_size: output.iter().map(|v| v.len as u32).sum(),
                };
                let caller = self.caller();
                let reply = ReplyIoctl::new(self.chan.clone(), caller.unique);
                self.node.ioctl(caller, io, &data, reply);
                let Some((h, rest)) = self.read_reply() else {
                    return (Out::Parked(caller.unique), round);
                };
                if h.error != 0 {
                    return (Out::Done(h.error), round);
                }
                let out = IoctlOut::read_from_prefix(&rest).unwrap().0;
                let payload = &rest[16..];
                if out.flags & FUSE_IOCTL_RETRY != 0 {
                    let iovs = <[IoVec]>::ref_from_bytes(payload).unwrap();
                    let ni = out.in_iovs as usize;
                    input = iovs[..ni].to_vec();
                    output = iovs[ni..].to_vec();
                    continue;
                }
                let mut p = payload;
                for v in &output {
                    let n = (v.len as usize).min(p.len());
                    mem.range(*v)[..n].copy_from_slice(&p[..n]);
                    p = &p[n..];
                }
                return (Out::Done(out.result), round);
            }
            panic!("too many rounds");
        }

        fn ok(&mut self, fh: u64, cmd: u32, arg: u64, mem: &mut Mem) -> usize {
            match self.ioctl(fh, cmd, arg, mem) {
                (Out::Done(0), rounds) => rounds,
                (Out::Done(e), _) => panic!("ioctl {cmd:#x}: {e}"),
                (Out::Parked(_), _) => panic!("parked"),
            }
        }

        fn err(&mut self, fh: u64, cmd: u32, arg: u64, mem: &mut Mem) -> i32 {
            match self.ioctl(fh, cmd, arg, mem) {
                (Out::Done(e), _) => -e,
                (Out::Parked(_), _) => panic!("parked"),
            }
        }

        fn open(&self, flags: u32) -> u64 {
            self.node
                .open(
                    Caller {
                        unique: 1,
                        pid: 1,
                        uid: 0,
                    },
                    flags,
                )
                .unwrap()
        }
    }

    #[test]
    fn querycap_takes_one_retry() {
        let mut h = H::new();
        let fh = h.open(0);
        let mut m = Mem::new();
        assert_eq!(h.ok(fh, VIDIOC_QUERYCAP, BASE, &mut m), 2);
        let cap: Capability = m.get(BASE);
        assert_eq!(&cap.driver[..13], b"daedalus-cuse");
        assert_eq!(cap.device_caps & CAP_VIDEO_M2M_MPLANE, CAP_VIDEO_M2M_MPLANE);
        assert_eq!(cap.capabilities, cap.device_caps | CAP_DEVICE_CAPS);
        // Unknown ioctl: ENOTTY at once.
        assert_eq!(h.err(fh, 0xc000_56ff, BASE, &mut m), libc::ENOTTY);
        // Unknown file.
        assert_eq!(h.err(999, VIDIOC_G_FMT, BASE, &mut m), libc::EINVAL);
    }

    #[test]
    fn every_format_has_a_description() {
        let coded = fmt::CODED_FORMATS.iter().map(|(f, _)| *f);
        for f in coded.chain(fmt::DECODED_FORMATS) {
            assert!(
                !fmt_desc(f).is_empty(),
                "{f:#x} has no ENUM_FMT description"
            );
        }
    }

    #[test]
    fn formats_follow_decoder_core() {
        let mut h = H::new();
        let fh = h.open(0);
        let mut m = Mem::new();
        let mut f = Format::new_zeroed();
        f.type_ = BUF_TYPE_VIDEO_OUTPUT_MPLANE;
        f.pix_mp.pixelformat = fmt::PIX_FMT_VP9_FRAME;
        f.pix_mp.width = 100;
        f.pix_mp.height = 50;
        f.pix_mp.colorspace = 1;
        m.put(BASE, &f);
        h.ok(fh, VIDIOC_S_FMT, BASE, &mut m);
        let got: Format = m.get(BASE);
        let want = fmt::try_coded(fmt::PIX_FMT_VP9_FRAME, 100, 50, 0);
        assert_eq!(got.pix_mp.pixelformat, want.fourcc);
        assert_eq!(got.pix_mp.plane_fmt[0].sizeimage, want.planes[0].sizeimage);
        let mut f = Format::new_zeroed();
        f.type_ = BUF_TYPE_VIDEO_CAPTURE_MPLANE;
        m.put(BASE, &f);
        h.ok(fh, VIDIOC_G_FMT, BASE, &mut m);
        let got: Format = m.get(BASE);
        let want = fmt::try_decoded(fmt::PIX_FMT_NV12, 100, 50);
        assert_eq!(
            (got.pix_mp.width, got.pix_mp.height),
            (want.width, want.height)
        );
        assert_eq!(
            got.pix_mp.colorspace, 1,
            "CAPTURE reports OUTPUT's colorimetry"
        );
        let mut d = FmtDesc::new_zeroed();
        d.type_ = BUF_TYPE_VIDEO_OUTPUT_MPLANE;
        d.index = fmt::CODED_FORMATS.len() as u32;
        m.put(BASE, &d);
        assert_eq!(h.err(fh, VIDIOC_ENUM_FMT, BASE, &mut m), libc::EINVAL);
    }

    fn reqbufs(
        h: &mut H,
        fh: u64,
        m: &mut Mem,
        ty: u32,
        memory: u32,
        count: u32,
    ) -> Result<RequestBuffers, i32> {
        let mut r = RequestBuffers::new_zeroed();
        r.type_ = ty;
        r.memory = memory;
        r.count = count;
        m.put(BASE, &r);
        match h.ioctl(fh, VIDIOC_REQBUFS, BASE, m).0 {
            Out::Done(0) => Ok(m.get(BASE)),
            Out::Done(e) => Err(-e),
            Out::Parked(_) => panic!(),
        }
    }

    #[test]
    fn buffers_memory_types_and_nested_planes() {
        let mut h = H::new();
        let fh = h.open(0);
        let mut m = Mem::new();
        let out = BUF_TYPE_VIDEO_OUTPUT_MPLANE;
        assert_eq!(
            reqbufs(&mut h, fh, &mut m, out, MEMORY_MMAP, 2).unwrap_err(),
            libc::EINVAL
        );
        let r = reqbufs(&mut h, fh, &mut m, out, MEMORY_USERPTR, 2).unwrap();
        assert_eq!(r.count, 2);
        assert_ne!(r.capabilities & BUF_CAP_SUPPORTS_REQUESTS, 0);
        assert_eq!(r.capabilities & BUF_CAP_SUPPORTS_MMAP, 0);
        // QUERYBUF: the v4l2_buffer, then its plane array (three rounds).
        let mut b = Buffer::new_zeroed();
        b.type_ = out;
        b.index = 1;
        b.m = BASE + 0x1000;
        b.length = 1;
        m.put(BASE, &b);
        assert_eq!(h.ok(fh, VIDIOC_QUERYBUF, BASE, &mut m), 3);
        let got: Buffer = m.get(BASE);
        let plane: Plane = m.get(BASE + 0x1000);
        assert_eq!(got.index, 1);
        assert_eq!(got.memory, MEMORY_USERPTR);
        assert_eq!(
            plane.length,
            fmt::try_coded(fmt::PIX_FMT_H264_SLICE, 1920, 1080, 0).planes[0].sizeimage
        );
        // Too many planes: refused before fetching them.
        b.length = VIDEO_MAX_PLANES + 1;
        m.put(BASE, &b);
        assert_eq!(h.err(fh, VIDIOC_QUERYBUF, BASE, &mut m), libc::EINVAL);
        // QBUF(OUTPUT) without a request: not refused for it (requests are
        // optional, decoder-core's default, as on visl and the kernel
        // module); checked last.
        let mut b = Buffer::new_zeroed();
        b.type_ = out;
        b.memory = MEMORY_USERPTR;
        b.m = BASE + 0x1000;
        b.length = 1;
        let p = Plane {
            m: BASE + 0x2000,
            length: plane.length,
            bytesused: 10,
            ..Default::default()
        };
        m.put(BASE + 0x1000, &p);
        // A request fd with no resolver (no media side): EINVAL.
        b.flags = BUF_FLAG_REQUEST_FD;
        b.request_fd = 5;
        m.put(BASE, &b);
        assert_eq!(h.err(fh, VIDIOC_QBUF, BASE, &mut m), libc::EINVAL);
        b.flags = 0;
        b.request_fd = 0;
        m.put(BASE, &b);
        // Past the request check, it reads the bitstream, which this
        // emulated client memory lacks: EFAULT, not EBADR.
        assert_eq!(h.err(fh, VIDIOC_QBUF, BASE, &mut m), libc::EFAULT);
    }

    #[test]
    fn ext_ctrls_fetch_payloads_and_report_errors() {
        let mut h = H::new();
        let fh = h.open(0);
        let mut m = Mem::new();
        // H.264 SPS (compound) through three rounds: head, array, payload.
        let sps = decoder_core::ctrl::h264::CODEC
            .controls
            .iter()
            .find(|d| d.v4l2_type == ctrl_type::H264_SPS)
            .unwrap();
        let mut payload = sps.default_bytes();
        let mut head = ExtControls::new_zeroed();
        head.count = 1;
        head.controls = BASE + 0x100;
        let ctl = ExtControl {
            id: sps.id,
            size: payload.len() as u32,
            reserved2: 0,
            value: BASE + 0x1000,
        };
        m.put(BASE, &head);
        m.put(BASE + 0x100, &ctl);
        m.range(IoVec {
            base: BASE + 0x1000,
            len: payload.len() as u64,
        })
        .copy_from_slice(&payload);
        assert_eq!(h.ok(fh, VIDIOC_S_EXT_CTRLS, BASE, &mut m), 4);
        // G_EXT_CTRLS with a too small size: ENOSPC and the size needed.
        let small = ExtControl { size: 4, ..ctl };
        m.put(BASE + 0x100, &small);
        assert_eq!(h.err(fh, VIDIOC_G_EXT_CTRLS, BASE, &mut m), libc::ENOSPC);
        let back: ExtControl = m.get(BASE + 0x100);
        assert_eq!({ back.size }, payload.len() as u32);
        // A payload shorter than the control: EFAULT as in the kernel,
        // error_idx = count (nothing applied).
        payload.pop();
        let big = ExtControl {
            size: payload.len() as u32,
            ..ctl
        };
        m.put(BASE + 0x100, &big);
        m.put(BASE, &head);
        assert_eq!(h.err(fh, VIDIOC_S_EXT_CTRLS, BASE, &mut m), libc::EFAULT);
        let hb: ExtControls = m.get(BASE);
        assert_eq!(hb.error_idx, 1);
        // An unknown control in TRY: error_idx points at it.
        let bad = ExtControl {
            id: 0x00a4_0fff,
            size: 0,
            reserved2: 0,
            value: 0,
        };
        m.put(BASE + 0x100, &bad);
        m.put(BASE, &head);
        assert_eq!(h.err(fh, VIDIOC_TRY_EXT_CTRLS, BASE, &mut m), libc::EINVAL);
        let hb: ExtControls = m.get(BASE);
        assert_eq!(hb.error_idx, 0);
    }

    #[test]
    fn blocking_dqbuf_parks_and_interrupt_answers_eintr() {
        let mut h = H::new();
        let fh = h.open(0);
        let nb = h.open(libc::O_NONBLOCK as u32);
        let mut m = Mem::new();
        let cap = BUF_TYPE_VIDEO_CAPTURE_MPLANE;
        for f in [fh, nb] {
            reqbufs(&mut h, f, &mut m, cap, MEMORY_USERPTR, 1).unwrap();
            m.put(BASE, &cap);
            h.ok(f, VIDIOC_STREAMON, BASE, &mut m);
        }
        let mut b = Buffer::new_zeroed();
        b.type_ = cap;
        b.m = BASE + 0x1000;
        b.length = 1;
        m.put(BASE, &b);
        assert_eq!(h.err(nb, VIDIOC_DQBUF, BASE, &mut m), libc::EAGAIN);
        let (out, _) = h.ioctl(fh, VIDIOC_DQBUF, BASE, &mut m);
        let Out::Parked(unique) = out else {
            panic!("a blocking DQBUF with nothing done must wait")
        };
        // Other opens are not stalled meanwhile.
        h.ok(nb, VIDIOC_QUERYCAP, BASE + 0x3000, &mut m);
        h.node.interrupt(unique);
        let (hdr, _) = h.read_reply().expect("answered");
        assert_eq!((hdr.unique, hdr.error), (unique, -libc::EINTR));
        // Parked then closed: answered EBADF.
        m.put(BASE, &b);
        let (out, _) = h.ioctl(fh, VIDIOC_DQBUF, BASE, &mut m);
        assert!(matches!(out, Out::Parked(_)));
        h.node.release(fh);
        let (hdr, _) = h.read_reply().expect("answered");
        assert_eq!(hdr.error, -libc::EBADF);
    }

    #[test]
    fn priority_record_blocks_other_files() {
        let mut h = H::new();
        let a = h.open(0);
        let b = h.open(0);
        let mut m = Mem::new();
        m.put(BASE, &PRIORITY_RECORD);
        h.ok(a, VIDIOC_S_PRIORITY, BASE, &mut m);
        h.ok(b, VIDIOC_G_PRIORITY, BASE, &mut m);
        assert_eq!(m.get::<u32>(BASE), PRIORITY_RECORD);
        assert_eq!(
            reqbufs(
                &mut h,
                b,
                &mut m,
                BUF_TYPE_VIDEO_OUTPUT_MPLANE,
                MEMORY_USERPTR,
                1
            )
            .unwrap_err(),
            libc::EBUSY
        );
        reqbufs(
            &mut h,
            a,
            &mut m,
            BUF_TYPE_VIDEO_OUTPUT_MPLANE,
            MEMORY_USERPTR,
            1,
        )
        .unwrap();
    }
}
