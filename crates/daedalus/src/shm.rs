//! Shared buffer memory for the embedded frontend: one memfd per plane,
//! mapped here and passed to the daemon, which maps the same pages. All the
//! unsafe code of the crate is in this module.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// A memfd of a fixed size, mapped read-write for the life of the value.
#[derive(Debug)]
pub struct SharedPlane {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only reached through
// `&self` (read) or `&mut self` (write), so the usual borrow rules serialise
// access from this process; the daemon writes the pages only while the
// buffer is queued, when no slice of it is borrowed here.
unsafe impl Send for SharedPlane {}

impl SharedPlane {
    /// A zero-filled plane of `len` bytes. The pages are not touched here:
    /// whichever side writes them first (the daemon, for CAPTURE buffers)
    /// allocates them, and a buffer never used costs no memory.
    pub fn new(name: &str, len: usize) -> std::io::Result<Self> {
        let fd = memfd_create(name, MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, len as u64)?;
        // SAFETY: a fresh shared mapping of a memfd we just sized to `len`;
        // nothing else in this process refers to that address range.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len.max(1),
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(SharedPlane { fd, ptr, len })
    }

    /// The memfd, to send to the daemon.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Size in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The plane's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes for the life of `self`; see the
        // `Send` impl for why no concurrent writer exists while borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The plane's bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedPlane {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `new` mapped; no borrow of it can
        // outlive `self`.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len.max(1)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_through_a_second_mapping() {
        let mut p = SharedPlane::new("t", 4096).unwrap();
        p.bytes_mut()[..4].copy_from_slice(b"abcd");
        let mut f = std::fs::File::from(p.fd().try_clone_to_owned().unwrap());
        let mut b = [0u8; 4];
        use std::io::Read;
        f.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"abcd");
        assert_eq!(p.len(), 4096);
    }
}
