//! The CUSE wire protocol over `/dev/cuse`, in pure Rust.
//!
//! A CUSE server opens `/dev/cuse`, answers the kernel's `CUSE_INIT` with
//! the device name, and from then on reads one request per `read(2)` and
//! answers it with one `write(2)` of an out header plus payload. This module
//! parses every kernel message with explicit length checks ([`parse`]),
//! holds the replies ([`ReplyIoctl`], answered exactly once: dropping one
//! unanswered answers `EIO`), and sends poll wake-ups.
//!
//! Layouts follow `include/uapi/linux/fuse.h` (protocol 7.x, x86-64).

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Arc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Kernel protocol major version we speak.
pub const FUSE_KERNEL_VERSION: u32 = 7;
/// Minor version we answer with (≥ 16: 64-bit `fuse_ioctl_iovec`s).
pub const FUSE_KERNEL_MINOR: u32 = 31;

/// `FUSE_OPEN`
pub const FUSE_OPEN: u32 = 14;
/// `FUSE_READ`
pub const FUSE_READ: u32 = 15;
/// `FUSE_WRITE`
pub const FUSE_WRITE: u32 = 16;
/// `FUSE_RELEASE`
pub const FUSE_RELEASE: u32 = 18;
/// `FUSE_FLUSH`
pub const FUSE_FLUSH: u32 = 25;
/// `FUSE_INTERRUPT`
pub const FUSE_INTERRUPT: u32 = 36;
/// `FUSE_DESTROY`
pub const FUSE_DESTROY: u32 = 38;
/// `FUSE_IOCTL`
pub const FUSE_IOCTL: u32 = 39;
/// `FUSE_POLL`
pub const FUSE_POLL: u32 = 40;
/// `CUSE_INIT`
pub const CUSE_INIT: u32 = 4096;

/// `CUSE_UNRESTRICTED_IOCTL`
pub const CUSE_UNRESTRICTED_IOCTL: u32 = 1;
/// `FUSE_IOCTL_COMPAT`
pub const FUSE_IOCTL_COMPAT: u32 = 1 << 0;
/// `FUSE_IOCTL_UNRESTRICTED`
pub const FUSE_IOCTL_UNRESTRICTED: u32 = 1 << 1;
/// `FUSE_IOCTL_RETRY`
pub const FUSE_IOCTL_RETRY: u32 = 1 << 2;
/// `FUSE_IOCTL_32BIT`
pub const FUSE_IOCTL_32BIT: u32 = 1 << 3;
/// `FUSE_IOCTL_MAX_IOV`: in + out iovecs of one retry.
pub const FUSE_IOCTL_MAX_IOV: usize = 256;
/// Largest ioctl payload the kernel moves (`max_pages` 32 × 4 KiB).
pub const FUSE_IOCTL_MAX_BYTES: usize = 32 * 4096;
/// `FUSE_NOTIFY_POLL` (the `error` field of an unsolicited message).
pub const FUSE_NOTIFY_POLL: i32 = 1;
/// Bit of `unique` that marks an interrupt request.
pub const FUSE_INT_REQ_BIT: u64 = 1;

/// Read buffer size: the largest ioctl payload plus headers.
pub const READ_BUFFER: usize = FUSE_IOCTL_MAX_BYTES + 4096 + 128;

/// `struct fuse_in_header`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct InHeader {
    /// Total length of the request.
    pub len: u32,
    /// `FUSE_*` opcode.
    pub opcode: u32,
    /// Request id, echoed in the reply.
    pub unique: u64,
    /// Node (unused by CUSE).
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's thread id (in the server's pid namespace).
    pub pid: u32,
    /// Extension length (8-byte units).
    pub total_extlen: u16,
    /// Padding.
    pub padding: u16,
}

/// `struct fuse_out_header`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct OutHeader {
    /// Total length of the reply.
    pub len: u32,
    /// `-errno`, 0, or a notification code when `unique` is 0.
    pub error: i32,
    /// The request's id.
    pub unique: u64,
}

/// `struct cuse_init_in`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct CuseInitIn {
    /// Kernel major.
    pub major: u32,
    /// Kernel minor.
    pub minor: u32,
    /// Unused.
    pub unused: u32,
    /// `CUSE_*` flags the kernel offers.
    pub flags: u32,
}

/// `struct cuse_init_out`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct CuseInitOut {
    /// Our major.
    pub major: u32,
    /// Our minor.
    pub minor: u32,
    /// Unused.
    pub unused: u32,
    /// `CUSE_*` flags we want.
    pub flags: u32,
    /// Largest read.
    pub max_read: u32,
    /// Largest write.
    pub max_write: u32,
    /// Char device major (0: the kernel picks one).
    pub dev_major: u32,
    /// Char device minor.
    pub dev_minor: u32,
    /// Spare.
    pub spare: [u32; 10],
}

/// `struct fuse_open_in`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct OpenIn {
    /// `open(2)` flags.
    pub flags: u32,
    /// `FUSE_OPEN_*`.
    pub open_flags: u32,
}

/// `struct fuse_open_out`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct OpenOut {
    /// Our handle of the open file.
    pub fh: u64,
    /// `FOPEN_*`.
    pub open_flags: u32,
    /// Unused here.
    pub backing_id: i32,
}

/// `struct fuse_release_in`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct ReleaseIn {
    /// Handle.
    pub fh: u64,
    /// File flags.
    pub flags: u32,
    /// `FUSE_RELEASE_*`.
    pub release_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
}

/// `struct fuse_ioctl_in`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct IoctlIn {
    /// Handle.
    pub fh: u64,
    /// `FUSE_IOCTL_*`.
    pub flags: u32,
    /// ioctl number.
    pub cmd: u32,
    /// ioctl argument (a pointer in the caller).
    pub arg: u64,
    /// Bytes of input data following.
    pub in_size: u32,
    /// Bytes of output the kernel accepts.
    pub out_size: u32,
}

/// `struct fuse_ioctl_out`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct IoctlOut {
    /// ioctl return value.
    pub result: i32,
    /// `FUSE_IOCTL_RETRY` or 0.
    pub flags: u32,
    /// Input iovecs of a retry.
    pub in_iovs: u32,
    /// Output iovecs of a retry.
    pub out_iovs: u32,
}

/// `struct fuse_ioctl_iovec`: a range of the caller's memory.
#[derive(
    Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default, PartialEq, Eq,
)]
#[repr(C)]
pub struct IoVec {
    /// Address in the caller.
    pub base: u64,
    /// Length.
    pub len: u64,
}

/// `struct fuse_poll_in`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct PollIn {
    /// Handle.
    pub fh: u64,
    /// Kernel handle to wake with `FUSE_NOTIFY_POLL`.
    pub kh: u64,
    /// `FUSE_POLL_SCHEDULE_NOTIFY`.
    pub flags: u32,
    /// Requested events.
    pub events: u32,
}

/// `struct fuse_read_in` / `fuse_write_in` (same layout).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct RwIn {
    /// Handle.
    pub fh: u64,
    /// Offset.
    pub offset: u64,
    /// Size.
    pub size: u32,
    /// Read/write flags.
    pub rw_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
    /// File flags.
    pub flags: u32,
    /// Padding.
    pub padding: u32,
}

/// A request the kernel sent, parsed and length-checked.
#[derive(Debug)]
pub enum Op<'a> {
    /// `CUSE_INIT`.
    Init {
        /// Kernel major.
        major: u32,
        /// Kernel minor.
        minor: u32,
        /// Offered flags.
        flags: u32,
    },
    /// `FUSE_OPEN`: `open(2)` flags.
    Open {
        /// Open flags (`O_NONBLOCK`...).
        flags: u32,
    },
    /// `FUSE_RELEASE`.
    Release {
        /// Handle.
        fh: u64,
    },
    /// `FUSE_FLUSH` (close of one descriptor).
    Flush {
        /// Handle.
        fh: u64,
    },
    /// `FUSE_IOCTL` with its input data.
    Ioctl {
        /// The header fields.
        io: IoctlIn,
        /// `io.in_size` bytes of input.
        data: &'a [u8],
    },
    /// `FUSE_POLL`.
    Poll(PollIn),
    /// `FUSE_INTERRUPT` of request `unique`.
    Interrupt {
        /// The interrupted request.
        unique: u64,
    },
    /// `FUSE_READ`.
    Read(RwIn),
    /// `FUSE_WRITE` with its data.
    Write {
        /// Header.
        io: RwIn,
        /// Data.
        data: &'a [u8],
    },
    /// `FUSE_DESTROY`.
    Destroy,
    /// Anything else (answered `ENOSYS`).
    Other(u32),
}

/// A kernel message that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than its header or its fixed body.
    #[error("truncated {what}: {got} bytes, need {need}")]
    Short {
        /// What was being read.
        what: &'static str,
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The header's length disagrees with the bytes read.
    #[error("header says {header} bytes, read {read}")]
    Length {
        /// `len` of the header.
        header: u32,
        /// Bytes read.
        read: usize,
    },
}

fn body<'a, T: FromBytes>(what: &'static str, b: &'a [u8]) -> Result<(T, &'a [u8]), ParseError> {
    T::read_from_prefix(b).map_err(|_| ParseError::Short {
        what,
        got: b.len(),
        need: std::mem::size_of::<T>(),
    })
}

/// Parses one message read from `/dev/cuse`.
pub fn parse(buf: &[u8]) -> Result<(InHeader, Op<'_>), ParseError> {
    let (h, rest) = body::<InHeader>("fuse_in_header", buf)?;
    if h.len as usize != buf.len() {
        return Err(ParseError::Length {
            header: h.len,
            read: buf.len(),
        });
    }
    let op = match h.opcode {
        CUSE_INIT => {
            let (i, _) = body::<CuseInitIn>("cuse_init_in", rest)?;
            Op::Init {
                major: i.major,
                minor: i.minor,
                flags: i.flags,
            }
        }
        FUSE_OPEN => Op::Open {
            flags: body::<OpenIn>("fuse_open_in", rest)?.0.flags,
        },
        FUSE_RELEASE => Op::Release {
            fh: body::<ReleaseIn>("fuse_release_in", rest)?.0.fh,
        },
        FUSE_FLUSH => Op::Flush {
            fh: body::<u64>("fuse_flush_in", rest)?.0,
        },
        FUSE_IOCTL => {
            let (io, data) = body::<IoctlIn>("fuse_ioctl_in", rest)?;
            let n = io.in_size as usize;
            let data = data.get(..n).ok_or(ParseError::Short {
                what: "ioctl input",
                got: data.len(),
                need: n,
            })?;
            Op::Ioctl { io, data }
        }
        FUSE_POLL => Op::Poll(body::<PollIn>("fuse_poll_in", rest)?.0),
        FUSE_INTERRUPT => Op::Interrupt {
            unique: body::<u64>("fuse_interrupt_in", rest)?.0,
        },
        FUSE_READ => Op::Read(body::<RwIn>("fuse_read_in", rest)?.0),
        FUSE_WRITE => {
            let (io, data) = body::<RwIn>("fuse_write_in", rest)?;
            let n = io.size as usize;
            let data = data.get(..n).ok_or(ParseError::Short {
                what: "write data",
                got: data.len(),
                need: n,
            })?;
            Op::Write { io, data }
        }
        FUSE_DESTROY => Op::Destroy,
        other => Op::Other(other),
    };
    Ok((h, op))
}

/// An open `/dev/cuse` channel: requests in, replies and notifications out.
#[derive(Debug)]
pub struct Channel {
    file: File,
}

impl Channel {
    /// Opens `/dev/cuse` (or another path for tests).
    pub fn open(path: &Path) -> std::io::Result<Arc<Channel>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(Channel { file }))
    }

    /// Wraps an already open channel (tests use a socketpair end).
    pub fn from_file(file: File) -> Arc<Channel> {
        Arc::new(Channel { file })
    }

    /// Reads the next request into `buf`; `Ok(None)` when the device is
    /// gone (`ENODEV`: unregistered or aborted).
    pub fn read_request<'b>(&self, buf: &'b mut [u8]) -> std::io::Result<Option<&'b [u8]>> {
        loop {
            match rustix::io::read(self.file.as_fd(), &mut *buf) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(&buf[..n])),
                // ENOENT: the request was interrupted before we read it.
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::NOENT) => continue,
                Err(rustix::io::Errno::NODEV) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes one reply: header (`error` is a negative errno or 0) and
    /// payload pieces in one `writev`. A reply to a request the kernel
    /// already gave up on (`ENOENT`) is not an error.
    pub fn send(&self, unique: u64, error: i32, parts: &[&[u8]]) -> std::io::Result<()> {
        let len = std::mem::size_of::<OutHeader>() + parts.iter().map(|p| p.len()).sum::<usize>();
        let h = OutHeader {
            len: len as u32,
            error,
            unique,
        };
        let mut iov = Vec::with_capacity(parts.len() + 1);
        iov.push(IoSlice::new(h.as_bytes()));
        iov.extend(parts.iter().map(|p| IoSlice::new(p)));
        match rustix::io::writev(self.file.as_fd(), &iov) {
            Ok(_) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Answers `CUSE_INIT`: unrestricted ioctls, device `name`, a major and
    /// minor of the kernel's choosing.
    pub fn reply_init(&self, unique: u64, name: &str) -> std::io::Result<()> {
        let out = CuseInitOut {
            major: FUSE_KERNEL_VERSION,
            minor: FUSE_KERNEL_MINOR,
            flags: CUSE_UNRESTRICTED_IOCTL,
            max_read: 4096,
            max_write: 4096,
            ..Default::default()
        };
        let info = devinfo(name);
        self.send(unique, 0, &[out.as_bytes(), &info])
    }

    /// `FUSE_NOTIFY_POLL`: wakes the pollers of kernel handle `kh`.
    pub fn notify_poll(&self, kh: u64) {
        let _ = self.send(0, FUSE_NOTIFY_POLL, &[kh.as_bytes()]);
    }

    /// Answers request `unique` with `-errno`.
    pub fn reply_err(&self, unique: u64, errno: i32) {
        let _ = self.send(unique, -errno, &[]);
    }

    /// The raw fd (diagnostics).
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// The `CUSE_INIT` device info: `DEVNAME=<name>` and a NUL.
pub fn devinfo(name: &str) -> Vec<u8> {
    let mut v = format!("DEVNAME={name}").into_bytes();
    v.push(0);
    v
}

/// The reply to one `FUSE_IOCTL`, answered exactly once. Dropping it
/// unanswered (a handler that forgot, a panic) answers `EIO`, so the
/// caller never sleeps forever.
#[derive(Debug)]
pub struct ReplyIoctl {
    chan: Arc<Channel>,
    unique: u64,
    answered: bool,
}

impl ReplyIoctl {
    /// A reply to request `unique` on `chan`.
    pub fn new(chan: Arc<Channel>, unique: u64) -> Self {
        ReplyIoctl {
            chan,
            unique,
            answered: false,
        }
    }

    /// The request being answered.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Success: `result` is the ioctl's return value, `data` goes to the
    /// output iovecs in order.
    pub fn ok(mut self, result: i32, data: &[&[u8]]) {
        self.answered = true;
        let out = IoctlOut {
            result,
            ..Default::default()
        };
        let mut parts = vec![out.as_bytes()];
        parts.extend_from_slice(data);
        if let Err(e) = self.chan.send(self.unique, 0, &parts) {
            tracing::warn!("ioctl reply: {e}");
        }
    }

    /// Failure with `errno` (nothing is copied back).
    pub fn error(mut self, errno: i32) {
        self.answered = true;
        self.chan.reply_err(self.unique, errno);
    }

    /// Failure with `errno` but with `data` copied back to the caller first
    /// (V4L2 reports `error_idx` of a failed `S_EXT_CTRLS` this way).
    pub fn error_with_data(mut self, errno: i32, data: &[&[u8]]) {
        self.answered = true;
        let out = IoctlOut {
            result: -errno,
            ..Default::default()
        };
        let mut parts = vec![out.as_bytes()];
        parts.extend_from_slice(data);
        if let Err(e) = self.chan.send(self.unique, 0, &parts) {
            tracing::warn!("ioctl reply: {e}");
        }
    }

    /// Asks the kernel to call again with `input` copied in and `output`
    /// as the places to copy results to.
    pub fn retry(mut self, input: &[IoVec], output: &[IoVec]) {
        if input.len() + output.len() > FUSE_IOCTL_MAX_IOV {
            return self.error(libc::E2BIG);
        }
        self.answered = true;
        let out = IoctlOut {
            result: 0,
            flags: FUSE_IOCTL_RETRY,
            in_iovs: input.len() as u32,
            out_iovs: output.len() as u32,
        };
        let in_b = input.as_bytes();
        let out_b = output.as_bytes();
        if let Err(e) = self
            .chan
            .send(self.unique, 0, &[out.as_bytes(), in_b, out_b])
        {
            tracing::warn!("ioctl retry: {e}");
        }
    }
}

impl Drop for ReplyIoctl {
    fn drop(&mut self) {
        if !self.answered {
            self.chan.reply_err(self.unique, libc::EIO);
        }
    }
}

/// Who issued a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Request id.
    pub unique: u64,
    /// Thread id of the caller (usable with `process_vm_readv`).
    pub pid: u32,
    /// uid.
    pub uid: u32,
}

/// What a CUSE device implements. Every method runs on one of the
/// server's reader threads; an ioctl may keep its [`ReplyIoctl`] to answer
/// later (a blocking DQBUF) without holding the thread.
pub trait CuseDevice: Send + Sync + 'static {
    /// open(): returns the handle of the new open file.
    fn open(&self, caller: Caller, flags: u32) -> Result<u64, i32>;
    /// The last close of an open file.
    fn release(&self, fh: u64);
    /// An ioctl; answer through `reply`.
    fn ioctl(&self, caller: Caller, io: IoctlIn, data: &[u8], reply: ReplyIoctl);
    /// poll(): current readiness (`POLL*` bits); `kh` is to be woken with
    /// [`Channel::notify_poll`] when it changes.
    fn poll(&self, fh: u64, kh: u64, events: u32) -> u32;
    /// The caller of request `unique` got a signal.
    fn interrupt(&self, unique: u64) {
        let _ = unique;
    }
}

/// Serves `dev` as `/dev/<name>` on `chan`: answers `CUSE_INIT`, then
/// reads requests on `threads` threads until the channel closes. Returns
/// once the device is registered; `on_ready` runs then.
pub fn serve(
    chan: Arc<Channel>,
    name: &str,
    dev: Arc<dyn CuseDevice>,
    threads: usize,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut buf = vec![0u8; READ_BUFFER];
    let msg = chan
        .read_request(&mut buf)?
        .ok_or_else(|| std::io::Error::other("cuse channel closed before CUSE_INIT"))?;
    let (h, op) = parse(msg).map_err(std::io::Error::other)?;
    match op {
        Op::Init { major, minor, .. } if major == FUSE_KERNEL_VERSION && minor >= 16 => {
            chan.reply_init(h.unique, name)?;
        }
        other => {
            chan.reply_err(h.unique, libc::EPROTO);
            return Err(std::io::Error::other(format!(
                "expected CUSE_INIT 7.16+, got {other:?}"
            )));
        }
    }
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let chan = chan.clone();
        let dev = dev.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("cuse-{name}-{i}"))
                .spawn(move || reader(&chan, &*dev))?,
        );
    }
    Ok(handles)
}

/// One reader thread: request in, dispatch, until the channel ends.
pub fn reader(chan: &Arc<Channel>, dev: &dyn CuseDevice) {
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let msg = match chan.read_request(&mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("cuse read: {e}");
                return;
            }
        };
        let (h, op) = match parse(msg) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("malformed cuse request: {e}");
                if let Ok((h, _)) = body::<InHeader>("hdr", msg) {
                    chan.reply_err(h.unique, libc::EIO);
                }
                continue;
            }
        };
        dispatch(chan, dev, h, op);
    }
}

/// Handles one parsed request.
pub fn dispatch(chan: &Arc<Channel>, dev: &dyn CuseDevice, h: InHeader, op: Op<'_>) {
    let caller = Caller {
        unique: h.unique,
        pid: h.pid,
        uid: h.uid,
    };
    match op {
        Op::Init { .. } => chan.reply_err(h.unique, libc::EPROTO),
        Op::Open { flags } => match dev.open(caller, flags) {
            Ok(fh) => {
                let out = OpenOut {
                    fh,
                    ..Default::default()
                };
                let _ = chan.send(h.unique, 0, &[out.as_bytes()]);
            }
            Err(e) => chan.reply_err(h.unique, e),
        },
        Op::Release { fh } => {
            dev.release(fh);
            let _ = chan.send(h.unique, 0, &[]);
        }
        Op::Flush { .. } => {
            let _ = chan.send(h.unique, 0, &[]);
        }
        Op::Ioctl { io, data } => {
            let reply = ReplyIoctl::new(chan.clone(), h.unique);
            if io.flags & (FUSE_IOCTL_COMPAT | FUSE_IOCTL_32BIT) != 0 {
                // 32-bit callers have other struct layouts.
                return reply.error(libc::ENOTTY);
            }
            dev.ioctl(caller, io, data, reply);
        }
        Op::Poll(p) => {
            let revents = dev.poll(p.fh, p.kh, p.events);
            let out = [revents, 0u32];
            let _ = chan.send(h.unique, 0, &[out.as_bytes()]);
        }
        // No reply to an interrupt; the interrupted request is answered
        // with EINTR by whoever holds it.
        Op::Interrupt { unique } => dev.interrupt(unique),
        Op::Read(_) | Op::Write { .. } => chan.reply_err(h.unique, libc::EINVAL),
        Op::Destroy => {}
        Op::Other(_) => chan.reply_err(h.unique, libc::ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(opcode: u32, unique: u64, body: &[u8]) -> Vec<u8> {
        let h = InHeader {
            len: (40 + body.len()) as u32,
            opcode,
            unique,
            pid: 1234,
            ..Default::default()
        };
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<InHeader>(), 40);
        assert_eq!(std::mem::size_of::<OutHeader>(), 16);
        assert_eq!(std::mem::size_of::<CuseInitIn>(), 16);
        assert_eq!(std::mem::size_of::<CuseInitOut>(), 72);
        assert_eq!(std::mem::size_of::<OpenOut>(), 16);
        assert_eq!(std::mem::size_of::<IoctlIn>(), 32);
        assert_eq!(std::mem::size_of::<IoctlOut>(), 16);
        assert_eq!(std::mem::size_of::<IoVec>(), 16);
        assert_eq!(std::mem::size_of::<PollIn>(), 24);
        assert_eq!(std::mem::size_of::<ReleaseIn>(), 24);
        assert_eq!(std::mem::size_of::<RwIn>(), 40);
    }

    #[test]
    fn parses_init_and_ioctl() {
        let init = CuseInitIn {
            major: 7,
            minor: 41,
            unused: 0,
            flags: 1,
        };
        let m = msg(CUSE_INIT, 2, init.as_bytes());
        let (h, op) = parse(&m).unwrap();
        assert_eq!(h.unique, 2);
        assert!(matches!(
            op,
            Op::Init {
                major: 7,
                minor: 41,
                flags: 1
            }
        ));
        let io = IoctlIn {
            fh: 5,
            flags: FUSE_IOCTL_UNRESTRICTED,
            cmd: 0xc058_560f,
            arg: 0x1000,
            in_size: 3,
            out_size: 88,
        };
        let mut b = io.as_bytes().to_vec();
        b.extend_from_slice(&[1, 2, 3]);
        let m = msg(FUSE_IOCTL, 9, &b);
        match parse(&m).unwrap().1 {
            Op::Ioctl { io, data } => {
                assert_eq!(io.fh, 5);
                assert_eq!(data, &[1, 2, 3]);
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn refuses_short_and_inconsistent_messages() {
        assert!(matches!(parse(&[0u8; 10]), Err(ParseError::Short { .. })));
        // ioctl claiming more input than present
        let io = IoctlIn {
            in_size: 100,
            ..Default::default()
        };
        let m = msg(FUSE_IOCTL, 1, io.as_bytes());
        assert!(matches!(parse(&m), Err(ParseError::Short { .. })));
        // header length disagreeing with the read
        let mut m = msg(FUSE_OPEN, 1, OpenIn::default().as_bytes());
        m.push(0);
        assert!(matches!(parse(&m), Err(ParseError::Length { .. })));
        // truncated fixed body
        let m = msg(FUSE_POLL, 1, &[0; 8]);
        assert!(matches!(parse(&m), Err(ParseError::Short { .. })));
        // write with a size larger than its data
        let w = RwIn {
            size: 10,
            ..Default::default()
        };
        let m = msg(FUSE_WRITE, 1, w.as_bytes());
        assert!(matches!(parse(&m), Err(ParseError::Short { .. })));
    }

    #[test]
    fn devinfo_is_nul_terminated() {
        assert_eq!(devinfo("video7"), b"DEVNAME=video7\0");
    }

    /// A socketpair stands in for /dev/cuse: what the server writes is
    /// read back and checked.
    fn chan_pair() -> (Arc<Channel>, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (
            Channel::from_file(File::from(std::os::fd::OwnedFd::from(a))),
            b,
        )
    }

    fn read_reply(s: &mut std::os::unix::net::UnixStream) -> (OutHeader, Vec<u8>) {
        use std::io::Read;
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let h = OutHeader::read_from_bytes(&h).unwrap();
        let mut rest = vec![0u8; h.len as usize - 16];
        s.read_exact(&mut rest).unwrap();
        (h, rest)
    }

    #[test]
    fn dropped_reply_answers_eio_once() {
        let (chan, mut peer) = chan_pair();
        drop(ReplyIoctl::new(chan.clone(), 77));
        let (h, rest) = read_reply(&mut peer);
        assert_eq!((h.unique, h.error), (77, -libc::EIO));
        assert!(rest.is_empty());
        ReplyIoctl::new(chan.clone(), 78).ok(5, &[&[9, 9]]);
        let (h, rest) = read_reply(&mut peer);
        assert_eq!((h.unique, h.error), (78, 0));
        let out = IoctlOut::read_from_prefix(&rest).unwrap().0;
        assert_eq!(out.result, 5);
        assert_eq!(&rest[16..], &[9, 9]);
    }

    #[test]
    fn retry_carries_both_iovec_lists() {
        let (chan, mut peer) = chan_pair();
        let i = [IoVec { base: 1, len: 2 }];
        let o = [IoVec { base: 3, len: 4 }, IoVec { base: 5, len: 6 }];
        ReplyIoctl::new(chan, 5).retry(&i, &o);
        let (_, rest) = read_reply(&mut peer);
        let out = IoctlOut::read_from_prefix(&rest).unwrap().0;
        assert_eq!(
            (out.flags, out.in_iovs, out.out_iovs),
            (FUSE_IOCTL_RETRY, 1, 2)
        );
        let iovs = <[IoVec]>::ref_from_bytes(&rest[16..]).unwrap();
        assert_eq!(iovs, &[i[0], o[0], o[1]]);
    }
}
