//! Test harness: a `decoder_core::state::Device` acting as the frontend on
//! one end of a real socketpair, the daemon's `Server` on the other, and
//! test backends whose behaviour depends on the codec.

#![allow(dead_code)]

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use daedalus_daemon::backend::{
    Backend, CaptureTarget, DecodeError, DecodeOutcome, JobFlags, JobInput,
};
use daedalus_daemon::server::{BackendFactory, ServeError, Server, ServerConfig, SessionEnd};
use daedalus_daemon::transport::{SeqPacket, Shutdown, Transport, TransportError};
use decoder_core::ctrl::{Codec, ControlValues};
use decoder_core::fmt;
use decoder_core::proto::{self, Message, DV_MAX_MSG_SIZE};
use decoder_core::state::{Config, CtxId, Device, Event, Link, Memory, QbufArgs, Queue, Which};
use parking_lot::Mutex;

/// What a test backend did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub codec: Codec,
    pub timestamp: u64,
    pub started: Instant,
    pub ended: Instant,
}

/// Shared record of every test backend's decodes.
#[derive(Default)]
pub struct Log {
    pub decoded: Mutex<Vec<Decoded>>,
    pub started: Mutex<Vec<(Codec, u64)>>,
    pub flags: Mutex<Vec<(u64, JobFlags)>>,
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub sessions: AtomicUsize,
}

/// Test backend: H.264 decodes at once, VP9 takes `slow`, VP8 always
/// fails (corrupt), a bitstream starting with [`PANIC`] panics, AV1 has no
/// backend. A picture is the first bitstream byte in every luma sample and
/// the second in every chroma one.
pub struct TestBackend {
    codec: Codec,
    delay: Duration,
    log: Arc<Log>,
}

impl Backend for TestBackend {
    fn name(&self) -> &'static str {
        "test"
    }
    fn codec(&self) -> Codec {
        self.codec
    }
    fn decode(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
    ) -> Result<DecodeOutcome, DecodeError> {
        self.log.started.lock().push((self.codec, job.timestamp));
        self.log.flags.lock().push((job.timestamp, job.flags));
        let n = self.log.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.log.max_running.fetch_max(n, Ordering::SeqCst);
        let started = Instant::now();
        std::thread::sleep(self.delay);
        if job.bitstream.starts_with(PANIC) {
            self.log.running.fetch_sub(1, Ordering::SeqCst);
            panic!("test backend panics");
        }
        let r = match self.codec {
            Codec::Vp8 => Err(DecodeError::Corrupt("test".into())),
            _ => {
                out.check()?;
                let y = job.bitstream.first().copied().unwrap_or(0);
                let c = job.bitstream.get(1).copied().unwrap_or(0);
                out.luma.data.fill(y);
                out.chroma.data.fill(c);
                if job.flags.more_slices {
                    Ok(DecodeOutcome::Held)
                } else {
                    Ok(DecodeOutcome::Decoded)
                }
            }
        };
        self.log.running.fetch_sub(1, Ordering::SeqCst);
        self.log.decoded.lock().push(Decoded {
            codec: self.codec,
            timestamp: job.timestamp,
            started,
            ended: Instant::now(),
        });
        r
    }
    fn reset(&mut self) {}
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.log.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bitstream prefix that makes the test backend panic.
pub const PANIC: &[u8] = b"\xff\xffPANIC";

/// Format of the slow test backend.
pub const SLOW: u32 = fmt::PIX_FMT_VP9_FRAME;

pub fn factory(log: Arc<Log>, slow: Duration) -> BackendFactory {
    Arc::new(move |codec| {
        if codec == Codec::Av1 {
            return Err(DecodeError::Unsupported("no AV1 in tests".into()));
        }
        log.sessions.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(TestBackend {
            codec,
            delay: if codec == Codec::Vp9 {
                slow
            } else {
                Duration::ZERO
            },
            log: log.clone(),
        }) as Box<dyn Backend>)
    })
}

pub type ServeResult = Result<SessionEnd, ServeError>;

/// A server thread on one end of a socketpair; returns the other end.
pub fn spawn_server(
    threads: usize,
    slow: Duration,
) -> (JoinHandle<ServeResult>, Shutdown, SeqPacket, Arc<Log>) {
    let log = Arc::new(Log::default());
    let server = Server::new(ServerConfig {
        threads,
        backends: factory(log.clone(), slow),
        close_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    });
    let (d, f) = SeqPacket::pair().unwrap();
    let shutdown = Shutdown::new().unwrap();
    let sd = shutdown.clone();
    let t = std::thread::spawn(move || server.serve(Arc::new(d), &sd));
    (t, shutdown, f, log)
}

/// Waits for a thread with a timeout.
pub fn join_timeout<T>(t: JoinHandle<T>, timeout: Duration) -> T {
    let end = Instant::now() + timeout;
    while !t.is_finished() {
        assert!(Instant::now() < end, "thread did not finish in {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t.join().expect("thread panicked")
}

/// `struct udmabuf_create` of `<linux/udmabuf.h>`.
#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

/// `UDMABUF_CREATE`, whose result is the new dmabuf's descriptor.
struct CreateUdmabuf(UdmabufCreate);

// SAFETY: the opcode is `_IOW('u', 0x42, struct udmabuf_create)`, the
// argument points at a `UdmabufCreate` (the kernel's layout) that the kernel
// only reads, and the ioctl's return value is a new descriptor we own.
unsafe impl rustix::ioctl::Ioctl for CreateUdmabuf {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        rustix::ioctl::opcode::write::<UdmabufCreate>(b'u', 0x42)
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        (&mut self.0 as *mut UdmabufCreate).cast()
    }
    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<OwnedFd> {
        // SAFETY: a successful UDMABUF_CREATE returns a fresh descriptor
        // that nothing else owns.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(out) })
    }
}

/// `/dev/udmabuf`, when this kernel has it and we may use it.
pub fn udmabuf_dev() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/udmabuf",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

/// A real dmabuf of at least `size` bytes (whole pages) and the memfd that
/// backs it (for the test's own reads and writes).
pub fn udmabuf(dev: &OwnedFd, size: u64) -> (OwnedFd, OwnedFd) {
    let size = size.div_ceil(4096).max(1) * 4096;
    let memfd = rustix::fs::memfd_create(
        "dv-udmabuf",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&memfd, size).unwrap();
    rustix::fs::fcntl_add_seals(&memfd, rustix::fs::SealFlags::SHRINK).unwrap();
    let arg = UdmabufCreate {
        memfd: std::os::fd::AsRawFd::as_raw_fd(&memfd) as u32,
        flags: 1, // UDMABUF_FLAGS_CLOEXEC
        offset: 0,
        size,
    };
    // SAFETY: see the `Ioctl` impl; `memfd` outlives the call.
    let dmabuf = unsafe { rustix::ioctl::ioctl(dev, CreateUdmabuf(arg)) }.unwrap();
    (memfd, dmabuf)
}

pub fn memfd(size: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("dv-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    fd
}

/// Waits for one datagram on a raw socket.
pub fn recv_timeout(sock: &SeqPacket, timeout: Duration) -> Result<Vec<u8>, TransportError> {
    let mut fds = [rustix::event::PollFd::new(
        sock,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    let n = rustix::event::poll(&mut fds, Some(&ts)).unwrap();
    if n == 0 {
        return Err(TransportError::Io(std::io::ErrorKind::TimedOut.into()));
    }
    let mut buf = vec![0u8; DV_MAX_MSG_SIZE as usize];
    let r = sock.recv_blocking(&mut buf)?;
    buf.truncate(r.len);
    Ok(buf)
}

/// A job the frontend sent.
#[derive(Debug, Clone, Copy)]
pub struct SentJob {
    pub ctx: u32,
    pub cookie: u64,
    pub timestamp: u64,
    pub capture: u32,
}

/// The frontend: a Device whose daemon link is the socket.
pub struct Frontend {
    pub dev: Device,
    pub sock: SeqPacket,
    pub gen: u64,
    pub now: u64,
    /// Memory of every buffer as sent to the daemon, one fd per plane.
    pub mem: HashMap<(CtxId, Queue, u32), Vec<OwnedFd>>,
    /// For dmabufs: the memfds behind `mem`, for the test's reads/writes.
    pub backing: HashMap<(CtxId, Queue, u32), Vec<OwnedFd>>,
    /// Allocate buffers as udmabufs (with this `/dev/udmabuf`).
    pub udmabuf: Option<OwnedFd>,
    pub sent: Vec<SentJob>,
    pub cancels: Vec<u64>,
    pub opens: Vec<proto::CtxOpen>,
    pub results: Vec<proto::JobResult>,
    pub statuses: Vec<proto::CtxStatus>,
    pub hello_reply: Option<proto::Hello>,
    pub events: Vec<Event>,
    pub closed: bool,
}

impl Frontend {
    pub fn new(sock: SeqPacket) -> Self {
        Frontend {
            dev: Device::new(Config {
                daemon_memory: proto::DV_MEM_MEMFD,
                ..Config::default()
            }),
            sock,
            gen: 0,
            now: 1_000_000_000,
            mem: HashMap::new(),
            backing: HashMap::new(),
            udmabuf: None,
            sent: Vec::new(),
            cancels: Vec::new(),
            opens: Vec::new(),
            results: Vec::new(),
            statuses: Vec::new(),
            hello_reply: None,
            events: Vec::new(),
            closed: false,
        }
    }

    /// A frontend whose buffers are dmabufs made by `/dev/udmabuf`.
    pub fn new_dmabuf(sock: SeqPacket, udmabuf: OwnedFd) -> Self {
        let mut f = Frontend::new(sock);
        f.dev = Device::new(Config {
            daemon_memory: proto::DV_MEM_DMABUF,
            ..Config::default()
        });
        f.udmabuf = Some(udmabuf);
        f
    }

    /// The fd the test reads and writes plane `p` of a buffer through.
    pub fn data_fd(&self, k: (CtxId, Queue, u32), p: usize) -> &OwnedFd {
        match self.backing.get(&k) {
            Some(v) => &v[p],
            None => &self.mem[&k][p],
        }
    }

    /// Attaches the daemon and waits for the handshake.
    pub fn attach(&mut self) {
        self.gen = self.dev.daemon_attach(self.now);
        self.flush();
        assert!(
            self.pump_until(Duration::from_secs(5), |f| matches!(
                f.dev.link(),
                Link::Attached { .. }
            )),
            "handshake did not complete"
        );
    }

    /// Sends what the device queued, with buffer memory where asked.
    pub fn flush(&mut self) {
        while let Some(o) = self.dev.poll_transmit() {
            if o.gen != self.gen || self.closed {
                continue;
            }
            match proto::decode(&o.bytes).expect("device sends valid messages") {
                Message::Decode(j, _) => self.sent.push(SentJob {
                    ctx: j.ctx_id,
                    cookie: j.cookie,
                    timestamp: j.timestamp,
                    capture: j.capture_index,
                }),
                Message::Cancel(c) => self.cancels.push(c.cookie),
                Message::CtxOpen(o) => self.opens.push(o),
                _ => {}
            }
            let fds: Vec<BorrowedFd<'_>> = match o.fds {
                Some(k) => self.mem[&k].iter().map(|f| f.as_fd()).collect(),
                None => Vec::new(),
            };
            if self.sock.send(&o.bytes, &fds).is_err() {
                self.closed = true;
            }
        }
        while let Some(e) = self.dev.poll_event() {
            self.events.push(e);
        }
    }

    /// Handles one datagram from the daemon if one comes within `timeout`.
    pub fn pump(&mut self, timeout: Duration) -> bool {
        if self.closed {
            return false;
        }
        let bytes = match recv_timeout(&self.sock, timeout) {
            Ok(b) => b,
            Err(TransportError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => {
                self.closed = true;
                self.dev.daemon_detach(self.now);
                self.flush();
                return false;
            }
        };
        match proto::decode(&bytes) {
            Ok(Message::Result(r)) => self.results.push(r),
            Ok(Message::CtxStatus(s)) => self.statuses.push(s),
            Ok(Message::HelloReply(h)) => self.hello_reply = Some(h),
            other => panic!("daemon sent {other:?}"),
        }
        self.dev
            .daemon_receive(&bytes, self.now)
            .expect("daemon messages are valid");
        self.flush();
        true
    }

    /// Pumps until `pred` holds or `timeout` passes.
    pub fn pump_until(&mut self, timeout: Duration, mut pred: impl FnMut(&Self) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.pump(left.min(Duration::from_millis(50)));
        }
    }

    /// A streaming context of `coded_fourcc`, 64x48 NV12, `n` buffers per
    /// queue, all CAPTURE buffers queued.
    pub fn context(&mut self, coded_fourcc: u32, n: u32) -> CtxId {
        let c = self.dev.open_context().unwrap();
        let want = fmt::try_coded(coded_fourcc, 64, 48, 0);
        self.dev.set_format(c, Queue::Output, want).unwrap();
        for q in [Queue::Output, Queue::Capture] {
            assert_eq!(self.dev.reqbufs(c, q, Memory::Mmap, n), Ok(n));
            self.alloc(c, q, n);
            self.dev.streamon(c, q, self.now).unwrap();
        }
        for i in 0..n {
            self.queue_capture(c, i);
        }
        c
    }

    /// (Re)allocates the memory of `n` buffers of a queue.
    pub fn alloc(&mut self, c: CtxId, q: Queue, n: u32) {
        for i in 0..n {
            let info = self.dev.buffer(c, q, i).unwrap();
            let sizes = (0..info.num_planes as usize).map(|p| u64::from(info.length[p]));
            match &self.udmabuf {
                Some(dev) => {
                    let (backing, bufs): (Vec<_>, Vec<_>) = sizes.map(|s| udmabuf(dev, s)).unzip();
                    self.mem.insert((c, q, i), bufs);
                    self.backing.insert((c, q, i), backing);
                }
                None => {
                    self.mem.insert((c, q, i), sizes.map(memfd).collect());
                }
            }
        }
    }

    pub fn queue_capture(&mut self, c: CtxId, i: u32) {
        self.dev
            .qbuf(
                c,
                Queue::Capture,
                i,
                Memory::Mmap,
                QbufArgs::default(),
                self.now,
            )
            .unwrap();
        self.flush();
    }

    /// Writes `payload` into OUTPUT buffer `i` and queues it with a request
    /// carrying the codec's default controls.
    pub fn queue_output(&mut self, c: CtxId, i: u32, ts: u64, payload: &[u8]) {
        self.queue_output_flags(c, i, ts, payload, 0);
    }

    /// [`Frontend::queue_output`] with `V4L2_BUF_FLAG_*` flags.
    pub fn queue_output_flags(&mut self, c: CtxId, i: u32, ts: u64, payload: &[u8], flags: u32) {
        let codec = self.dev.codec(c).unwrap();
        let defaults = ControlValues::defaults(codec);
        self.queue_output_with(c, i, ts, payload, flags, &defaults);
    }

    /// [`Frontend::queue_output`] with flags and the request's controls.
    pub fn queue_output_with(
        &mut self,
        c: CtxId,
        i: u32,
        ts: u64,
        payload: &[u8],
        flags: u32,
        controls: &ControlValues,
    ) {
        rustix::io::pwrite(self.data_fd((c, Queue::Output, i), 0), payload, 0).unwrap();
        let r = self.dev.request_alloc().unwrap();
        let ctrls: Vec<(u32, &[u8])> = controls.iter().collect();
        self.dev
            .set_controls(c, Which::Request(r), &ctrls, false)
            .unwrap();
        let args = QbufArgs {
            bytesused: [payload.len() as u32, 0, 0, 0],
            timestamp: ts,
            flags,
            request: Some(r),
            memory_changed: false,
        };
        self.dev
            .qbuf(c, Queue::Output, i, Memory::Mmap, args, self.now)
            .unwrap();
        self.dev.request_queue(r, self.now).unwrap();
        self.dev.request_close(r).unwrap();
        self.flush();
    }

    /// JobDone events of a context, in order: (cookie, ok).
    pub fn done(&self, c: CtxId) -> Vec<(u64, bool)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::JobDone { ctx, cookie, ok } if *ctx == c => Some((*cookie, *ok)),
                _ => None,
            })
            .collect()
    }

    pub fn result_of(&self, cookie: u64) -> Option<proto::JobResult> {
        self.results.iter().find(|r| r.cookie == cookie).copied()
    }

    /// First byte of CAPTURE buffer `i`'s luma and of its chroma.
    pub fn capture_bytes(&self, c: CtxId, i: u32) -> (u8, u8) {
        let fd = self.data_fd((c, Queue::Capture, i), 0);
        let mut y = [0u8];
        let mut uv = [0u8];
        rustix::io::pread(fd, &mut y, 0).unwrap();
        // 64x48 NV12: 48 luma rows, padded to fmt::CAPTURE_ROW_ALIGN.
        let stride = 64u32.next_multiple_of(decoder_core::fmt::CAPTURE_ROW_ALIGN) as u64;
        rustix::io::pread(fd, &mut uv, stride * 48).unwrap();
        (y[0], uv[0])
    }
}

/// Sends an encoded message on a raw socket.
pub fn raw_send(sock: &SeqPacket, m: &Message<'_>, fds: &[BorrowedFd<'_>]) {
    sock.send(&m.to_bytes(1), fds).unwrap();
}

/// A frontend hello.
pub fn hello(features: u64) -> Message<'static> {
    Message::Hello(proto::Hello {
        version_major: proto::DV_VERSION_MAJOR,
        version_minor: proto::DV_VERSION_MINOR,
        max_inflight: 4,
        features,
        max_msg_size: DV_MAX_MSG_SIZE,
        reserved: 0,
    })
}

/// Number of open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
