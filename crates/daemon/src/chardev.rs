//! [`Transport`] over the kernel module's bridge device
//! (`/dev/daedalus-bridge`, `include/daedalus_bridge.h`).
//!
//! Opening the device is connecting: the module queues its `HELLO` at once
//! and remembers nothing of an earlier daemon. One daemon at a time may hold
//! it open (`EBUSY` otherwise).
//!
//! * receive: `poll()` for `POLLIN` (together with the [`Shutdown`] latch),
//!   then `DV_BRIDGE_IOC_RECV`, which copies one datagram and installs the
//!   dmabufs of a `BUF_REGISTER` in this process's descriptor table
//!   (close-on-exec); they come back as [`OwnedFd`]s;
//! * send: one `write()` per datagram;
//! * `POLLHUP` / `EPIPE`: the connection ended (protocol error, handshake
//!   deadline, [`Transport::close`]); the device must be closed and opened
//!   again to reconnect;
//! * [`Transport::close`] is `DV_BRIDGE_IOC_DISCONNECT`: the module fails
//!   the jobs in flight and wakes every waiter.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use decoder_core::proto::{DV_MAX_MSG_SIZE, DV_MAX_PLANES};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{opcode, NoArg, Opcode, Updater};

use crate::transport::{Received, Shutdown, Transport, TransportError};

/// Default path of the bridge device.
pub const BRIDGE_PATH: &str = "/dev/daedalus-bridge";

/// `struct dv_bridge_recv` of `include/daedalus_bridge.h`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct BridgeRecv {
    buf: u64,
    size: u32,
    len: u32,
    num_fds: u32,
    fds: [i32; DV_MAX_PLANES as usize],
    reserved: [u32; 3],
}

const _: () = assert!(std::mem::size_of::<BridgeRecv>() == 48);

const IOC_MAGIC: u8 = 0xdb;
/// `DV_BRIDGE_IOC_RECV`: `_IOWR(0xdb, 1, struct dv_bridge_recv)`.
const IOC_RECV: Opcode = opcode::read_write::<BridgeRecv>(IOC_MAGIC, 1);
/// `DV_BRIDGE_IOC_DISCONNECT`: `_IO(0xdb, 2)`.
const IOC_DISCONNECT: Opcode = opcode::none(IOC_MAGIC, 2);

/// An open bridge device: the daemon's end of one connection to the
/// kernel module.
#[derive(Debug)]
pub struct Chardev {
    fd: OwnedFd,
}

impl Chardev {
    /// Opens the bridge device at `path` (connects).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Chardev { fd })
    }

    /// One `DV_BRIDGE_IOC_RECV`: the next datagram, if one is queued.
    fn recv_now(&self, buf: &mut [u8]) -> Result<Received, TransportError> {
        let mut arg = BridgeRecv {
            buf: buf.as_mut_ptr() as u64,
            size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        // SAFETY: IOC_RECV is _IOWR with `struct dv_bridge_recv`, whose
        // layout BridgeRecv reproduces (48 bytes, checked above). The kernel
        // writes at most `arg.size` bytes at `arg.buf`, which is `buf`,
        // exclusively borrowed for the duration of the call.
        let r = unsafe { rustix::ioctl::ioctl(&self.fd, Updater::<IOC_RECV, _>::new(&mut arg)) };
        match r {
            Ok(()) => {}
            Err(Errno::PIPE) => return Err(TransportError::Closed),
            Err(Errno::MSGSIZE) => return Err(TransportError::Truncated),
            Err(e) => return Err(TransportError::Io(e.into())),
        }
        let n = arg.num_fds as usize;
        let mut fds = Vec::with_capacity(n.min(arg.fds.len()));
        for &raw in arg.fds.iter().take(n) {
            // SAFETY: the kernel has just installed these descriptors in
            // this process's table for this call and nobody else knows
            // their numbers: each is owned exactly once, here.
            fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        if n > arg.fds.len() {
            return Err(TransportError::FdsTruncated);
        }
        let len = arg.len as usize;
        if len > buf.len() || len > DV_MAX_MSG_SIZE as usize {
            return Err(TransportError::Truncated);
        }
        Ok(Received { len, fds })
    }
}

impl AsFd for Chardev {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Transport for Chardev {
    fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        if !fds.is_empty() {
            // Nothing the daemon sends carries descriptors.
            return Err(TransportError::TooManyFds(fds.len()));
        }
        loop {
            match rustix::io::write(&self.fd, bytes) {
                Err(Errno::INTR) => continue,
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(TransportError::Io(std::io::Error::other(format!(
                        "short write: {n} of {} bytes",
                        bytes.len()
                    ))))
                }
                Err(Errno::PIPE) => return Err(TransportError::Closed),
                Err(e) => return Err(TransportError::Io(e.into())),
            }
        }
    }

    fn recv(&self, buf: &mut [u8], shutdown: &Shutdown) -> Result<Received, TransportError> {
        debug_assert!(buf.len() >= DV_MAX_MSG_SIZE as usize);
        let latch = shutdown.as_fd();
        loop {
            let mut fds = [
                PollFd::new(&self.fd, PollFlags::IN),
                PollFd::new(&latch, PollFlags::IN),
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
            if rev.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                return Err(TransportError::Closed);
            }
            if rev.is_empty() {
                continue;
            }
            match self.recv_now(buf) {
                Err(TransportError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    continue
                }
                r => return r,
            }
        }
    }

    fn close(&self) {
        // SAFETY: IOC_DISCONNECT is _IO without an argument.
        let _ = unsafe { rustix::ioctl::ioctl(&self.fd, NoArg::<IOC_DISCONNECT>::new()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_match_the_c_header() {
        // _IOWR(0xdb, 1, 48 bytes) and _IO(0xdb, 2) on Linux's generic
        // ioctl encoding (dir << 30 | size << 16 | type << 8 | nr).
        assert_eq!(IOC_RECV as u64, (3u64 << 30) | (48 << 16) | (0xdb << 8) | 1);
        assert_eq!(IOC_DISCONNECT as u64, (0xdb << 8) | 2);
    }

    #[test]
    fn open_fails_without_the_device() {
        assert!(Chardev::open(Path::new("/nonexistent/daedalus-bridge")).is_err());
    }
}
