//! Buffer memory: memfd planes the daemon decodes into, and copies between
//! them and a client's memory (`process_vm_readv` / `process_vm_writev`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// A memfd of a fixed size, mapped shared read-write while it lives.
#[derive(Debug)]
pub struct Shadow {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by the value and only reached through
// `&self`/`&mut self`; the pointer is not tied to any thread.
unsafe impl Send for Shadow {}
// SAFETY: shared access only hands out copies made under `&self`; the
// frontend serialises every use under its device lock.
unsafe impl Sync for Shadow {}

impl Shadow {
    /// A new zero-filled memfd of `len` bytes (at least one page).
    pub fn new(name: &str, len: usize) -> std::io::Result<Self> {
        let len = len.max(4096);
        let fd = memfd_create(name, MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, len as u64)?;
        // SAFETY: a fresh shared mapping of a memfd we just sized to `len`;
        // it is unmapped in Drop and never aliased as a Rust reference
        // beyond the borrows `bytes`/`bytes_mut` hand out.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        Ok(Shadow {
            fd,
            ptr: ptr.cast(),
            len,
        })
    }

    /// The memfd (sent to the daemon).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty (at least a page); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes (the daemon may write them concurrently only while the
    /// buffer is in a job, when the frontend does not read them).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped exactly once.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// Copies `len` bytes at `addr` in process `pid` into `dst`.
pub fn read_remote(pid: u32, addr: u64, dst: &mut [u8]) -> Result<(), i32> {
    if dst.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: dst.len(),
    };
    // SAFETY: `local` describes `dst`, writable for its length; the remote
    // range is only read by the kernel on the other process's behalf.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EFAULT));
    }
    if n as usize != dst.len() {
        return Err(libc::EFAULT);
    }
    Ok(())
}

/// Copies `src` to `addr` in process `pid`.
pub fn write_remote(pid: u32, addr: u64, src: &[u8]) -> Result<(), i32> {
    if src.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: src.as_ptr() as *mut libc::c_void,
        iov_len: src.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: src.len(),
    };
    // SAFETY: `local` describes `src`, which the kernel only reads.
    let n = unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EFAULT));
    }
    if n as usize != src.len() {
        return Err(libc::EFAULT);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_copies_within_our_own_process() {
        let pid = std::process::id();
        let src = vec![7u8; 5000];
        let mut dst = vec![0u8; 5000];
        read_remote(pid, src.as_ptr() as u64, &mut dst).unwrap();
        assert_eq!(dst, src);
        let mut target = vec![0u8; 10];
        write_remote(pid, target.as_mut_ptr() as u64, &[1, 2, 3]).unwrap();
        assert_eq!(&target[..4], &[1, 2, 3, 0]);
        assert_eq!(read_remote(pid, 8, &mut dst), Err(libc::EFAULT));
    }

    #[test]
    fn shadow_is_shared_memory() {
        let mut s = Shadow::new("t", 100).unwrap();
        assert_eq!(s.len(), 4096);
        s.bytes_mut()[0] = 42;
        let mut b = [0u8; 1];
        rustix::io::pread(s.fd(), &mut b, 0).unwrap();
        assert_eq!(b[0], 42);
    }
}
