//! How datagrams of the bridge protocol reach the daemon and leave it.
//!
//! The frontend owns the device; the daemon connects to it. One protocol
//! message is one datagram, and file descriptors (buffer memory) travel with
//! the datagram they belong to. [`Transport`] is that contract;
//! [`SeqPacket`] implements it over a unix `SOCK_SEQPACKET` socket with
//! `SCM_RIGHTS` (the CUSE and embedded frontends).
//!
//! Receiving never trusts the peer: the buffer is [`DV_MAX_MSG_SIZE`] bytes,
//! a datagram or a descriptor list that did not fit (`MSG_TRUNC`,
//! `MSG_CTRUNC`) is an error, and every descriptor received is returned as
//! an [`OwnedFd`], so dropping a message closes its descriptors.
//!
//! A receive also watches a [`Shutdown`] so that a signal or the embedding
//! program can stop a daemon blocked waiting for its frontend.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use decoder_core::proto::{DV_MAX_MSG_SIZE, DV_MAX_PLANES};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// Most descriptors accepted with one datagram. A peer sending more gets
/// `MSG_CTRUNC` and so a protocol error.
pub const MAX_FDS_PER_MSG: usize = DV_MAX_PLANES as usize;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection (or it was shut down locally).
    #[error("connection closed by the peer")]
    Closed,
    /// [`Shutdown::trigger`] was called while waiting.
    #[error("shutdown requested")]
    Shutdown,
    /// A datagram larger than [`DV_MAX_MSG_SIZE`] arrived (`MSG_TRUNC`).
    #[error("datagram larger than the protocol limit")]
    Truncated,
    /// More descriptors than [`MAX_FDS_PER_MSG`] arrived, or the kernel
    /// could not pass them all (`MSG_CTRUNC`).
    #[error("descriptors truncated")]
    FdsTruncated,
    /// Too many descriptors to send with one datagram.
    #[error("{0} descriptors exceed the per-message limit")]
    TooManyFds(usize),
    /// A system call failed.
    #[error("transport I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// True when the peer broke the protocol's framing (as opposed to the
    /// connection ending or failing).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            TransportError::Truncated | TransportError::FdsTruncated
        )
    }
}

impl From<Errno> for TransportError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN => TransportError::Closed,
            e => TransportError::Io(e.into()),
        }
    }
}

/// One received datagram.
#[derive(Debug)]
pub struct Received {
    /// Bytes of the datagram at the front of the receive buffer.
    pub len: usize,
    /// Descriptors that came with it, in order; closed when dropped.
    pub fds: Vec<OwnedFd>,
}

/// A message channel to the frontend.
///
/// `send` may be called from several threads at once (each datagram is
/// atomic); `recv` is called by one thread.
pub trait Transport: Send + Sync {
    /// Sends one datagram, with `fds` attached when non-empty.
    fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError>;

    /// Like [`Transport::send`], but gives up with
    /// [`TransportError::Shutdown`] once `shutdown` is triggered while
    /// waiting for room (a frontend that stopped reading must not keep the
    /// daemon from exiting). The default waits like `send`.
    fn send_until(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        shutdown: &Shutdown,
    ) -> Result<(), TransportError> {
        let _ = shutdown;
        self.send(bytes, fds)
    }

    /// Waits for one datagram and stores it at the front of `buf` (which
    /// must hold [`DV_MAX_MSG_SIZE`] bytes). Returns
    /// [`TransportError::Shutdown`] as soon as `shutdown` is triggered.
    fn recv(&self, buf: &mut [u8], shutdown: &Shutdown) -> Result<Received, TransportError>;

    /// Ends the connection in both directions: blocked and later sends and
    /// receives fail. Idempotent.
    fn close(&self);
}

/// A latch that interrupts blocking receives: once triggered it stays
/// triggered. Cheap to clone; clones share the latch.
///
/// It is a non-blocking pipe that is written once and never drained, so
/// every `poll` on its read end returns at once after the trigger.
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug)]
struct ShutdownInner {
    read: OwnedFd,
    write: OwnedFd,
}

impl Shutdown {
    /// A new, untriggered latch.
    pub fn new() -> std::io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        Ok(Shutdown {
            inner: Arc::new(ShutdownInner { read, write }),
        })
    }

    /// Triggers the latch (async-signal-safe in effect: one `write`).
    pub fn trigger(&self) {
        // A full pipe (EAGAIN) means it is already triggered.
        let _ = rustix::io::write(&self.inner.write, &[1]);
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        let mut fds = [PollFd::new(&self.inner.read, PollFlags::IN)];
        matches!(poll(&mut fds, Some(&rustix::event::Timespec::default())), Ok(n) if n > 0)
    }

    /// The read end, readable once triggered (to add to a poll set).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.read.as_fd()
    }

    /// A duplicate of the write end, for a signal handler that writes one
    /// byte to it (`signal_hook::low_level::pipe::register`).
    pub fn signal_fd(&self) -> std::io::Result<OwnedFd> {
        Ok(rustix::io::fcntl_dupfd_cloexec(&self.inner.write, 0)?)
    }

    /// Waits up to `timeout` for the trigger; returns true if triggered.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> bool {
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&self.inner.read, PollFlags::IN)];
        loop {
            match poll(&mut fds, Some(&ts)) {
                Ok(n) => return n > 0,
                Err(Errno::INTR) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A connected unix `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

impl SeqPacket {
    /// Connects to a frontend listening at `path`.
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let addr = SocketAddrUnix::new(path)?;
        rustix::net::connect(&fd, &addr)?;
        Ok(SeqPacket { fd })
    }

    /// Wraps an already connected `SOCK_SEQPACKET` socket (one end of a
    /// socketpair for the embedded mode, or a socket passed by a parent).
    /// Fails if `fd` is not a seqpacket socket.
    pub fn from_fd(fd: OwnedFd) -> std::io::Result<Self> {
        let ty = rustix::net::sockopt::socket_type(&fd)?;
        if ty != SocketType::SEQPACKET {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a SOCK_SEQPACKET socket",
            ));
        }
        Ok(SeqPacket { fd })
    }

    /// A connected pair (daemon end, frontend end), both close-on-exec.
    pub fn pair() -> std::io::Result<(SeqPacket, SeqPacket)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((SeqPacket { fd: a }, SeqPacket { fd: b }))
    }

    /// Receives one datagram without a shutdown latch (blocking).
    pub fn recv_blocking(&self, buf: &mut [u8]) -> Result<Received, TransportError> {
        self.recv_now(buf, RecvFlags::empty())
    }

    /// Receives one datagram if one is queued, without waiting; returns its
    /// length (descriptors are closed). For tests and diagnostics.
    pub fn try_recv(&self, buf: &mut [u8]) -> Result<usize, TransportError> {
        self.recv_now(buf, RecvFlags::DONTWAIT).map(|r| r.len)
    }

    fn recv_now(&self, buf: &mut [u8], extra: RecvFlags) -> Result<Received, TransportError> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = loop {
            match rustix::net::recvmsg(
                &self.fd,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC | extra,
            ) {
                Err(Errno::INTR) => continue,
                r => break r?,
            }
        };
        // Take ownership of every descriptor first, so that an error below
        // still closes them.
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it);
            }
        }
        if msg.flags.contains(ReturnFlags::TRUNC) {
            return Err(TransportError::Truncated);
        }
        // The control buffer has some alignment slack, so also check the count.
        if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_FDS_PER_MSG {
            return Err(TransportError::FdsTruncated);
        }
        if msg.bytes == 0 && fds.is_empty() {
            // A seqpacket socket reads 0 bytes at end of stream.
            return Err(TransportError::Closed);
        }
        Ok(Received {
            len: msg.bytes,
            fds,
        })
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl SeqPacket {
    fn send_with(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        flags: SendFlags,
    ) -> Result<(), TransportError> {
        if fds.len() > MAX_FDS_PER_MSG {
            return Err(TransportError::TooManyFds(fds.len()));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(TransportError::TooManyFds(fds.len()));
        }
        let iov = [IoSlice::new(bytes)];
        loop {
            match rustix::net::sendmsg(&self.fd, &iov, &mut control, SendFlags::NOSIGNAL | flags) {
                Err(Errno::INTR) => continue,
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(TransportError::Io(std::io::Error::other(format!(
                        "short send: {n} of {} bytes",
                        bytes.len()
                    ))))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Transport for SeqPacket {
    fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        self.send_with(bytes, fds, SendFlags::empty())
    }

    fn send_until(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        shutdown: &Shutdown,
    ) -> Result<(), TransportError> {
        loop {
            match self.send_with(bytes, fds, SendFlags::DONTWAIT) {
                Err(TransportError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            let mut pfd = [
                PollFd::new(&self.fd, PollFlags::OUT),
                PollFd::new(&shutdown.inner.read, PollFlags::IN),
            ];
            match poll(&mut pfd, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            if !pfd[1].revents().is_empty() {
                return Err(TransportError::Shutdown);
            }
        }
    }

    fn recv(&self, buf: &mut [u8], shutdown: &Shutdown) -> Result<Received, TransportError> {
        debug_assert!(buf.len() >= DV_MAX_MSG_SIZE as usize);
        loop {
            let mut fds = [
                PollFd::new(&self.fd, PollFlags::IN),
                PollFd::new(&shutdown.inner.read, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            if !fds[1].revents().is_empty() {
                return Err(TransportError::Shutdown);
            }
            let rev = fds[0].revents();
            if rev.is_empty() {
                continue;
            }
            if rev.contains(PollFlags::NVAL) {
                return Err(TransportError::Closed);
            }
            // Readable, hung up or in error: the receive tells which.
            match self.recv_now(buf, RecvFlags::DONTWAIT) {
                Err(TransportError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    continue
                }
                r => return r,
            }
        }
    }

    fn close(&self) {
        let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> Vec<u8> {
        vec![0u8; DV_MAX_MSG_SIZE as usize]
    }

    #[test]
    fn datagrams_and_fds_roundtrip() {
        let (a, b) = SeqPacket::pair().unwrap();
        let sd = Shutdown::new().unwrap();
        let memfd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        a.send(b"hello", &[memfd.as_fd(), memfd.as_fd()]).unwrap();
        a.send(b"x", &[]).unwrap();
        let mut bb = buf();
        let r = b.recv(&mut bb, &sd).unwrap();
        assert_eq!(&bb[..r.len], b"hello");
        assert_eq!(r.fds.len(), 2);
        let r = b.recv(&mut bb, &sd).unwrap();
        assert_eq!(&bb[..r.len], b"x");
        assert!(r.fds.is_empty());
        drop(a);
        assert!(matches!(b.recv(&mut bb, &sd), Err(TransportError::Closed)));
    }

    #[test]
    fn oversized_datagram_is_truncation() {
        let (a, b) = SeqPacket::pair().unwrap();
        let sd = Shutdown::new().unwrap();
        let mut small = vec![0u8; 8];
        a.send(&[7u8; 9], &[]).unwrap();
        assert!(matches!(
            b.recv_now(&mut small, RecvFlags::empty()),
            Err(TransportError::Truncated)
        ));
        // The connection is still usable for the next datagram.
        a.send(&[1u8; 3], &[]).unwrap();
        let mut bb = buf();
        assert_eq!(b.recv(&mut bb, &sd).unwrap().len, 3);
    }

    #[test]
    fn too_many_fds_is_ctrunc() {
        // Send with a raw sendmsg carrying MAX_FDS_PER_MSG + 2 descriptors.
        let (a, b) = SeqPacket::pair().unwrap();
        let sd = Shutdown::new().unwrap();
        let memfd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..MAX_FDS_PER_MSG + 2).map(|_| memfd.as_fd()).collect();
        let mut space =
            [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG + 2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&many)));
        rustix::net::sendmsg(&a, &[IoSlice::new(b"m")], &mut control, SendFlags::empty()).unwrap();
        let mut bb = buf();
        assert!(matches!(
            b.recv(&mut bb, &sd),
            Err(TransportError::FdsTruncated)
        ));
        assert!(matches!(
            a.send(b"m", &many),
            Err(TransportError::TooManyFds(_))
        ));
        // Far more than the control buffer holds: the kernel truncates.
        let lots: Vec<BorrowedFd<'_>> = (0..64).map(|_| memfd.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&lots)));
        rustix::net::sendmsg(&a, &[IoSlice::new(b"m")], &mut control, SendFlags::empty()).unwrap();
        let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(matches!(
            b.recv(&mut bb, &sd),
            Err(TransportError::FdsTruncated)
        ));
        // None of the received descriptors stayed open.
        assert!(std::fs::read_dir("/proc/self/fd").unwrap().count() <= before);
    }

    #[test]
    fn shutdown_interrupts_recv() {
        let (_a, b) = SeqPacket::pair().unwrap();
        let sd = Shutdown::new().unwrap();
        assert!(!sd.is_triggered());
        let sd2 = sd.clone();
        let t = std::thread::spawn(move || {
            let mut bb = buf();
            b.recv(&mut bb, &sd2)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        sd.trigger();
        sd.trigger();
        assert!(matches!(t.join().unwrap(), Err(TransportError::Shutdown)));
        assert!(sd.is_triggered());
        assert!(sd.wait_timeout(std::time::Duration::from_secs(1)));
    }

    #[test]
    fn from_fd_checks_socket_type() {
        let (a, _b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        assert!(SeqPacket::from_fd(a).is_err());
    }
}
