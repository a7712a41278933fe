//! Memory of the buffers a frontend registers.
//!
//! A [`MsgKind::BufRegister`](decoder_core::proto::MsgKind::BufRegister)
//! names, for each memory plane, one of the descriptors that came with it
//! plus an offset and a length. [`RegisteredBuffer::map`] checks that range
//! against the descriptor's size and maps it shared (read-only for OUTPUT
//! buffers, read-write for CAPTURE buffers). The mapping lives until the
//! buffer is dropped: unregistered, its context closed, or the connection
//! gone (jobs keep it alive while they run, through an `Arc`).
//!
//! CPU access goes through [`CpuRead`] / [`CpuWrite`] guards that hold the
//! buffer's lock (one job at a time touches a buffer) and, for dmabufs,
//! bracket the access with `DMA_BUF_IOCTL_SYNC` start/end. The decode path
//! reads the bitstream straight from the OUTPUT mapping and the backend
//! writes the picture straight into the CAPTURE mapping: no frame copy.
//!
//! The mapped pages are shared with other processes (the client that owns
//! the buffer). Their content is plain bytes that may change at any time;
//! nothing here assumes it is stable, and nothing is interpreted without the
//! backend's own checks.

use std::ffi::c_void;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use decoder_core::fmt;
use decoder_core::proto::{BufRegister, CtxOpen, DV_MEM_DMABUF, DV_MEM_MEMFD, DV_QUEUE_CAPTURE};
use parking_lot::{Mutex, MutexGuard};
use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Setter};
use rustix::mm::{MapFlags, ProtFlags};

use crate::backend::{CaptureFormat, CapturePlane, CaptureTarget};

/// Why a buffer could not be registered or accessed.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// A plane names a descriptor index that did not come with the message.
    #[error("plane {plane} names descriptor {fd_index}, only {have} received")]
    MissingFd {
        /// Plane.
        plane: usize,
        /// Index named.
        fd_index: u32,
        /// Descriptors received.
        have: usize,
    },
    /// Unknown `DV_MEM_*`.
    #[error("unknown memory type {0}")]
    BadMemory(u32),
    /// The plane's range does not fit in the descriptor's memory.
    #[error("plane {plane}: {offset}+{length} exceeds the {size} bytes of its descriptor")]
    OutOfRange {
        /// Plane.
        plane: usize,
        /// Offset asked.
        offset: u64,
        /// Length asked.
        length: u64,
        /// Size of the memory.
        size: u64,
    },
    /// `fstat`, `lseek`, `mmap` or the dmabuf sync ioctl failed.
    #[error("{what}: {err}")]
    Sys {
        /// The failed operation.
        what: &'static str,
        /// Its error.
        err: std::io::Error,
    },
    /// `bytesused` exceeds the OUTPUT plane.
    #[error("bytesused {bytesused} exceeds the plane's {length} bytes")]
    BytesUsed {
        /// Bytes the job claims.
        bytesused: u32,
        /// Plane length.
        length: usize,
    },
    /// A CAPTURE access on a read-only (OUTPUT) buffer.
    #[error("buffer is not writable")]
    ReadOnly,
    /// The buffer's planes do not match the context's CAPTURE format.
    #[error("CAPTURE buffer planes do not fit the format")]
    Layout,
}

impl BufferError {
    /// errno reported to the frontend for a job that failed on this.
    pub fn errno(&self) -> i32 {
        match self {
            BufferError::Sys { err, .. } => err.raw_os_error().unwrap_or(Errno::IO.raw_os_error()),
            BufferError::Layout => Errno::NOSPC.raw_os_error(),
            _ => Errno::INVAL.raw_os_error(),
        }
    }
}

fn sys(what: &'static str) -> impl Fn(Errno) -> BufferError {
    move |e| BufferError::Sys {
        what,
        err: e.into(),
    }
}

/// `struct dma_buf_sync` of `<linux/dma-buf.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DmaBufSync {
    flags: u64,
}

const DMA_BUF_SYNC_READ: u64 = 1;
const DMA_BUF_SYNC_WRITE: u64 = 2;
const DMA_BUF_SYNC_START: u64 = 0;
const DMA_BUF_SYNC_END: u64 = 4;
/// `DMA_BUF_IOCTL_SYNC`: `_IOW('b', 0, struct dma_buf_sync)`.
const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<DmaBufSync>(b'b', 0);

fn dma_buf_sync(fd: &OwnedFd, flags: u64) -> Result<(), Errno> {
    loop {
        // SAFETY: DMA_BUF_IOCTL_SYNC takes a pointer to a `struct dma_buf_sync`
        // (one u64), which `DmaBufSync` mirrors; the kernel only reads it.
        let r = unsafe {
            rustix::ioctl::ioctl(
                fd,
                Setter::<DMA_BUF_IOCTL_SYNC, DmaBufSync>::new(DmaBufSync { flags }),
            )
        };
        match r {
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            r => return r,
        }
    }
}

/// One `mmap`ed range, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
}

// SAFETY: a Mapping is a plain address range owned by this value; the raw
// pointer is only dereferenced through `RegisteredBuffer`'s access guards,
// which serialise access with a mutex. Unmapping from another thread is fine.
unsafe impl Send for Mapping {}
// SAFETY: shared references to a Mapping never touch the memory (see above).
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what a successful mmap returned, no
        // slice into the range outlives the `RegisteredBuffer` that owns it
        // (guards borrow it), and it is unmapped only here, once.
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr(), self.len) } {
            tracing::warn!("munmap failed: {e}");
        }
    }
}

#[derive(Debug)]
struct PlaneMap {
    /// None for an empty plane.
    map: Option<Mapping>,
    /// Offset of the plane's first byte in `map`.
    start: usize,
    /// Plane bytes.
    len: usize,
}

impl PlaneMap {
    fn ptr(&self) -> *mut u8 {
        match &self.map {
            // SAFETY: `start + len <= map.len` (checked in `map_plane`), so the
            // offset stays inside the mapping.
            Some(m) => unsafe { m.ptr.as_ptr().cast::<u8>().add(self.start) },
            None => NonNull::<u8>::dangling().as_ptr(),
        }
    }
}

/// The mapped memory of one registered buffer.
#[derive(Debug)]
pub struct RegisteredBuffer {
    queue: u32,
    index: u32,
    memory: u32,
    writable: bool,
    planes: Vec<PlaneMap>,
    /// Distinct dmabufs to sync around CPU access (empty for memfd).
    sync_fds: Vec<OwnedFd>,
    /// CPU access needs no bracketing (see [`RegisteredBuffer::retainable`]).
    coherent: bool,
    lock: Mutex<()>,
}

/// dmabuf exporters whose CPU access needs no cache maintenance on any
/// architecture: they implement no `begin_cpu_access` / `end_cpu_access`,
/// so `DMA_BUF_IOCTL_SYNC` does nothing for them (vb2-vmalloc: the kernel
/// module's buffers, and vivid's or visl's).
const COHERENT_EXPORTERS: &[&str] = &["videobuf2_vmalloc"];

/// The `exp_name` of a dmabuf's `/proc/<pid>/fdinfo` text.
pub fn fdinfo_exporter(fdinfo: &str) -> Option<&str> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("exp_name:"))
        .map(str::trim)
}

/// True when `fd` is a dmabuf of a [`COHERENT_EXPORTERS`] exporter.
fn coherent_dmabuf(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    std::fs::read_to_string(path)
        .ok()
        .is_some_and(|t| fdinfo_exporter(&t).is_some_and(|e| COHERENT_EXPORTERS.contains(&e)))
}

/// Size of the memory behind `fd`.
fn fd_size(fd: &OwnedFd, memory: u32) -> Result<u64, BufferError> {
    if memory == DV_MEM_DMABUF {
        // A dmabuf reports its size through lseek(SEEK_END); it keeps no
        // file position, so the shared description is not disturbed.
        rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0)).map_err(sys("lseek(dmabuf)"))
    } else {
        let st = rustix::fs::fstat(fd).map_err(sys("fstat"))?;
        u64::try_from(st.st_size).map_err(|_| BufferError::Sys {
            what: "fstat",
            err: std::io::Error::other("negative size"),
        })
    }
}

fn map_plane(
    fd: &OwnedFd,
    offset: u64,
    length: u64,
    writable: bool,
) -> Result<PlaneMap, BufferError> {
    let len = usize::try_from(length).map_err(|_| BufferError::Layout)?;
    if len == 0 {
        return Ok(PlaneMap {
            map: None,
            start: 0,
            len: 0,
        });
    }
    let page = rustix::param::page_size() as u64;
    let map_off = offset - offset % page;
    let start = (offset - map_off) as usize;
    let map_len = start + len;
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // SAFETY: a fresh shared mapping chosen by the kernel (null hint, no
    // MAP_FIXED) cannot overlap memory Rust owns; `map_off` is page aligned
    // and `map_off + map_len` was checked against the descriptor's size.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            map_len,
            prot,
            MapFlags::SHARED,
            fd,
            map_off,
        )
    }
    .map_err(sys("mmap"))?;
    let ptr = NonNull::new(ptr).ok_or(BufferError::Sys {
        what: "mmap",
        err: std::io::Error::other("null mapping"),
    })?;
    Ok(PlaneMap {
        map: Some(Mapping { ptr, len: map_len }),
        start,
        len,
    })
}

impl RegisteredBuffer {
    /// Maps the planes `reg` describes from the descriptors that came with
    /// it. Descriptors no plane names are closed. Every range is checked
    /// against its descriptor's size before mapping.
    pub fn map(reg: &BufRegister, fds: Vec<OwnedFd>) -> Result<Self, BufferError> {
        if reg.memory != DV_MEM_DMABUF && reg.memory != DV_MEM_MEMFD {
            return Err(BufferError::BadMemory(reg.memory));
        }
        let writable = reg.queue == DV_QUEUE_CAPTURE;
        let n = (reg.num_planes as usize).min(reg.planes.len());
        let mut sizes: Vec<Option<u64>> = vec![None; fds.len()];
        let mut used = vec![false; fds.len()];
        let mut planes = Vec::with_capacity(n);
        for (i, p) in reg.planes[..n].iter().enumerate() {
            let fi = p.fd_index as usize;
            let fd = fds.get(fi).ok_or(BufferError::MissingFd {
                plane: i,
                fd_index: p.fd_index,
                have: fds.len(),
            })?;
            let size = match sizes[fi] {
                Some(s) => s,
                None => {
                    let s = fd_size(fd, reg.memory)?;
                    sizes[fi] = Some(s);
                    s
                }
            };
            let (offset, length) = (u64::from(p.offset), u64::from(p.length));
            if offset + length > size {
                return Err(BufferError::OutOfRange {
                    plane: i,
                    offset,
                    length,
                    size,
                });
            }
            planes.push(map_plane(fd, offset, length, writable)?);
            used[fi] = true;
        }
        let sync_fds: Vec<OwnedFd> = if reg.memory == DV_MEM_DMABUF {
            fds.into_iter()
                .zip(used)
                .filter_map(|(fd, u)| u.then_some(fd))
                .collect()
        } else {
            // The mappings keep the memory; the descriptors are not needed.
            Vec::new()
        };
        let coherent = sync_fds.iter().all(coherent_dmabuf);
        Ok(RegisteredBuffer {
            queue: reg.queue,
            index: reg.index,
            memory: reg.memory,
            writable,
            planes,
            sync_fds,
            coherent,
            lock: Mutex::new(()),
        })
    }

    /// `DV_QUEUE_*` the buffer belongs to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// V4L2 buffer index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// `DV_MEM_*`.
    pub fn memory(&self) -> u32 {
        self.memory
    }

    /// True when the CPU may keep reading and writing the buffer's memory
    /// outside the sync brackets of [`RegisteredBuffer::read`] and
    /// [`RegisteredBuffer::write`]: a memfd, or a dmabuf whose exporter
    /// does no CPU cache maintenance. A backend may then keep such a
    /// CAPTURE buffer as a reference picture after its job.
    pub fn retainable(&self) -> bool {
        self.coherent
    }

    /// True for a writable memfd buffer (a CAPTURE buffer of the embedded
    /// stack or the CUSE frontend), whose pages the decoder would otherwise
    /// fault in one at a time while writing its first picture. A dmabuf's
    /// exporter maps its pages itself (vb2-vmalloc maps them all at mmap).
    pub fn wants_prefault(&self) -> bool {
        self.writable && self.memory == DV_MEM_MEMFD
    }

    /// Faults in every page of a buffer that [wants](Self::wants_prefault)
    /// it (`MADV_POPULATE_WRITE`, Linux 5.14), leaving the contents as they
    /// are; otherwise does nothing. Safe while a job writes the buffer. A
    /// kernel without the advice refuses it; the pages then fault in as
    /// the decoder writes them, as before.
    pub fn prefault(&self) {
        if !self.wants_prefault() {
            return;
        }
        // In steps, so that the process's mmap lock, which populating holds,
        // is free between them for the job path's own mappings.
        const STEP: usize = 256 << 10;
        for m in self.planes.iter().filter_map(|p| p.map.as_ref()) {
            for off in (0..m.len).step_by(STEP) {
                // SAFETY: `off < len` and `off + n <= len`, so the range lies
                // in a live mapping owned by `self` (which the caller holds);
                // populating only faults pages in, as the decoder's own writes
                // would, and changes no byte.
                let r = unsafe {
                    rustix::mm::madvise(
                        m.ptr.as_ptr().cast::<u8>().add(off).cast(),
                        STEP.min(m.len - off),
                        rustix::mm::Advice::LinuxPopulateWrite,
                    )
                };
                if let Err(e) = r {
                    tracing::debug!("MADV_POPULATE_WRITE: {e}");
                    return;
                }
            }
        }
    }

    /// Memory planes.
    pub fn num_planes(&self) -> usize {
        self.planes.len()
    }

    /// Length of plane `i` (0 if there is no such plane).
    pub fn plane_len(&self, i: usize) -> usize {
        self.planes.get(i).map_or(0, |p| p.len)
    }

    /// Starts CPU access (`rw`: `DMA_BUF_SYNC_READ` / `_WRITE`) on every
    /// dmabuf; on failure the ones already started are ended again.
    fn sync_start(&self, rw: u64) -> Result<(), BufferError> {
        for (i, fd) in self.sync_fds.iter().enumerate() {
            if let Err(e) = dma_buf_sync(fd, DMA_BUF_SYNC_START | rw) {
                for fd in &self.sync_fds[..i] {
                    let _ = dma_buf_sync(fd, DMA_BUF_SYNC_END | rw);
                }
                return Err(sys("DMA_BUF_IOCTL_SYNC")(e));
            }
        }
        Ok(())
    }

    /// Ends CPU access on every dmabuf.
    fn sync_end(&self, rw: u64) -> Result<(), BufferError> {
        let mut r = Ok(());
        for fd in &self.sync_fds {
            if let Err(e) = dma_buf_sync(fd, DMA_BUF_SYNC_END | rw) {
                r = Err(sys("DMA_BUF_IOCTL_SYNC")(e));
            }
        }
        r
    }

    /// Starts reading the buffer (waits for another access to end).
    pub fn read(&self) -> Result<CpuRead<'_>, BufferError> {
        let guard = self.lock.lock();
        self.sync_start(DMA_BUF_SYNC_READ)?;
        Ok(CpuRead {
            buf: self,
            _guard: guard,
        })
    }

    /// Starts writing the buffer (CAPTURE buffers only).
    pub fn write(&self) -> Result<CpuWrite<'_>, BufferError> {
        if !self.writable {
            return Err(BufferError::ReadOnly);
        }
        let guard = self.lock.lock();
        self.sync_start(DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE)?;
        Ok(CpuWrite {
            buf: self,
            _guard: guard,
        })
    }
}

/// Read access to a buffer; ends (dmabuf sync end) when dropped.
#[derive(Debug)]
pub struct CpuRead<'a> {
    buf: &'a RegisteredBuffer,
    _guard: MutexGuard<'a, ()>,
}

impl CpuRead<'_> {
    /// Plane `i`, all of its registered length.
    pub fn plane(&self, i: usize) -> Option<&[u8]> {
        let p = self.buf.planes.get(i)?;
        // SAFETY: `ptr()` points at `len` mapped, readable bytes that stay
        // mapped while `self.buf` is borrowed; the buffer lock held by this
        // guard excludes any `&mut` to them in this process.
        Some(unsafe { std::slice::from_raw_parts(p.ptr(), p.len) })
    }

    /// The first `bytesused` bytes of plane 0: an OUTPUT buffer's bitstream.
    pub fn bitstream(&self, bytesused: u32) -> Result<&[u8], BufferError> {
        let plane = self.plane(0).unwrap_or(&[]);
        plane
            .get(..bytesused as usize)
            .ok_or(BufferError::BytesUsed {
                bytesused,
                length: plane.len(),
            })
    }
}

impl Drop for CpuRead<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.buf.sync_end(DMA_BUF_SYNC_READ) {
            tracing::warn!("ending CPU read: {e}");
        }
    }
}

/// Write access to a CAPTURE buffer; ends (dmabuf sync end) when dropped.
#[derive(Debug)]
pub struct CpuWrite<'a> {
    buf: &'a RegisteredBuffer,
    _guard: MutexGuard<'a, ()>,
}

impl CpuWrite<'_> {
    /// Every plane, writable. The slices are distinct mappings, so they never
    /// overlap even when two planes share a descriptor.
    pub fn planes_mut(&mut self) -> Vec<&mut [u8]> {
        self.buf
            .planes
            .iter()
            // SAFETY: each plane is its own mapping (or empty), mapped
            // read-write (`writable` was checked in `write`), and stays mapped
            // while `self.buf` is borrowed. `&mut self` plus the buffer lock
            // make these the only references to the planes in this process.
            .map(|p| unsafe { std::slice::from_raw_parts_mut(p.ptr(), p.len) })
            .collect()
    }
}

impl Drop for CpuWrite<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.buf.sync_end(DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE) {
            tracing::warn!("ending CPU write: {e}");
        }
    }
}

/// The CAPTURE format of a context, as the backend's target needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLayout {
    /// Pixel layout.
    pub format: CaptureFormat,
    /// Width of the picture the backend writes (macroblock aligned).
    pub width: u32,
    /// Height of the picture the backend writes (macroblock aligned).
    pub height: u32,
    /// Memory planes (1: luma and chroma contiguous; 2: luma and CbCr;
    /// 3: Y, Cb and Cr).
    pub num_planes: usize,
    /// Bytes per line of each memory plane.
    pub bytesperline: [u32; 3],
    /// Bytes of each memory plane.
    pub sizeimage: [u32; 3],
}

impl CaptureLayout {
    /// The layout of a context, or `None` when the formats are not ones the
    /// daemon can write (unknown fourcc, plane count, sizes out of range,
    /// lines or planes too small for the picture).
    pub fn from_ctx_open(o: &CtxOpen) -> Option<Self> {
        let format = CaptureFormat::from_fourcc(o.capture_fourcc)?;
        let want_planes = match o.capture_fourcc {
            fmt::PIX_FMT_NV12M => 2,
            fmt::PIX_FMT_YUV420M => 3,
            _ => 1,
        };
        if o.num_planes != want_planes {
            return None;
        }
        if !(fmt::MIN_SIZE..=fmt::MAX_WIDTH).contains(&o.width)
            || !(fmt::MIN_SIZE..=fmt::MAX_HEIGHT).contains(&o.height)
        {
            return None;
        }
        let width = o.width.div_ceil(16) * 16;
        let height = o.height.div_ceil(16) * 16;
        let row = u64::from(width) * format.sample_bytes() as u64;
        let chroma_row = format.chroma_row(width as usize) as u64;
        let (luma_rows, chroma_rows) = (u64::from(height), u64::from(height.div_ceil(2)));
        let p = &o.planes;
        let fits = |i: usize, row: u64, rows: u64| {
            let bpl = u64::from(p[i].bytesperline);
            bpl >= row && u64::from(p[i].sizeimage) >= bpl * rows
        };
        let ok = match want_planes {
            1 => {
                let bpl = u64::from(p[0].bytesperline);
                bpl >= row.max(chroma_row)
                    && u64::from(p[0].sizeimage) >= bpl * (luma_rows + chroma_rows)
            }
            2 => fits(0, row, luma_rows) && fits(1, chroma_row, chroma_rows),
            _ => {
                fits(0, row, luma_rows)
                    && fits(1, chroma_row, chroma_rows)
                    && fits(2, chroma_row, chroma_rows)
                    && p[1].bytesperline == p[2].bytesperline
            }
        };
        ok.then_some(CaptureLayout {
            format,
            width,
            height,
            num_planes: want_planes as usize,
            bytesperline: [p[0].bytesperline, p[1].bytesperline, p[2].bytesperline],
            sizeimage: [p[0].sizeimage, p[1].sizeimage, p[2].sizeimage],
        })
    }

    /// The backend's view of a CAPTURE buffer's planes (from
    /// [`CpuWrite::planes_mut`]), checked to hold the whole picture.
    pub fn target<'a>(&self, planes: Vec<&'a mut [u8]>) -> Result<CaptureTarget<'a>, BufferError> {
        if planes.len() != self.num_planes {
            return Err(BufferError::Layout);
        }
        let mut it = planes.into_iter();
        let stride = |i: usize| self.bytesperline[i] as usize;
        let t = match (it.next(), it.next(), it.next()) {
            (Some(p0), None, None) => CaptureTarget::contiguous(
                self.format,
                self.width,
                self.height,
                self.bytesperline[0] as usize,
                p0,
            )
            .ok_or(BufferError::Layout)?,
            (Some(p0), Some(p1), None) => CaptureTarget {
                format: self.format,
                width: self.width,
                height: self.height,
                luma: CapturePlane {
                    data: p0,
                    stride: stride(0),
                },
                chroma: CapturePlane {
                    data: p1,
                    stride: stride(1),
                },
                cr: None,
            },
            (Some(p0), Some(p1), Some(p2)) => CaptureTarget::planar(
                self.width,
                self.height,
                CapturePlane {
                    data: p0,
                    stride: stride(0),
                },
                CapturePlane {
                    data: p1,
                    stride: stride(1),
                },
                CapturePlane {
                    data: p2,
                    stride: stride(2),
                },
            )
            .map_err(|_| BufferError::Layout)?,
            _ => return Err(BufferError::Layout),
        };
        t.check().map_err(|_| BufferError::Layout)?;
        Ok(t)
    }

    /// `bytesused` of each plane of a decoded picture.
    pub fn bytesused(&self, buf: &RegisteredBuffer) -> [u32; 4] {
        let mut b = [0u32; 4];
        for (i, slot) in b.iter_mut().enumerate().take(self.num_planes) {
            let len = u32::try_from(buf.plane_len(i)).unwrap_or(u32::MAX);
            *slot = self.sizeimage[i].min(len);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use decoder_core::proto::{BufPlane, PlaneFmt, DV_QUEUE_OUTPUT};

    #[test]
    fn exporter_comes_from_fdinfo() {
        let t = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1061\nsize:\t3133440\ncount:\t2\nexp_name:\tvideobuf2_vmalloc\nname:\t\n";
        assert_eq!(fdinfo_exporter(t), Some("videobuf2_vmalloc"));
        assert_eq!(fdinfo_exporter("pos:\t0\nflags:\t02\n"), None);
        // A memfd has no exporter, and is retainable all the same.
        let fd = memfd(4096);
        assert!(!coherent_dmabuf(&fd));
    }

    fn memfd(size: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("buf", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        fd
    }

    fn reg(queue: u32, planes: &[(u32, u32, u32)]) -> BufRegister {
        let mut p = [BufPlane::default(); 4];
        for (slot, &(fd_index, offset, length)) in p.iter_mut().zip(planes) {
            *slot = BufPlane {
                fd_index,
                offset,
                length,
                reserved: 0,
            };
        }
        BufRegister {
            ctx_id: 1,
            queue,
            index: 0,
            num_planes: planes.len() as u32,
            memory: DV_MEM_MEMFD,
            reserved: 0,
            planes: p,
        }
    }

    #[test]
    fn maps_and_shares_memory() {
        let fd = memfd(10000);
        rustix::io::pwrite(&fd, b"bitstream", 5000).unwrap();
        let check = rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        let out =
            RegisteredBuffer::map(&reg(DV_QUEUE_OUTPUT, &[(0, 5000, 100)]), vec![fd]).unwrap();
        assert!(out.retainable());
        let r = out.read().unwrap();
        assert_eq!(r.bitstream(9).unwrap(), b"bitstream");
        assert!(r.bitstream(101).is_err());
        drop(r);
        assert!(matches!(out.write(), Err(BufferError::ReadOnly)));

        // Two planes in one fd, at unaligned offsets.
        let cap = RegisteredBuffer::map(
            &reg(DV_QUEUE_CAPTURE, &[(0, 10, 20), (0, 4097, 30)]),
            vec![rustix::io::fcntl_dupfd_cloexec(&check, 0).unwrap()],
        )
        .unwrap();
        {
            let mut w = cap.write().unwrap();
            let mut p = w.planes_mut();
            p[0].fill(0xaa);
            p[1][0] = 0x55;
        }
        let mut got = [0u8; 32];
        rustix::io::pread(&check, &mut got, 0).unwrap();
        assert_eq!(&got[..10], &[0; 10]);
        assert_eq!(&got[10..30], &[0xaa; 20]);
        assert_eq!(got[30], 0);
        rustix::io::pread(&check, &mut got[..1], 4097).unwrap();
        assert_eq!(got[0], 0x55);
    }

    /// Bytes of shmem the memfd holds pages for.
    fn allocated(fd: &OwnedFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_blocks as u64 * 512
    }

    #[test]
    fn prefault_allocates_a_capture_buffer_and_keeps_its_bytes() {
        let len = 64 * 4096;
        let fd = memfd(len);
        rustix::io::pwrite(&fd, b"kept", 4096).unwrap();
        let check = rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        let before = allocated(&check);
        assert!(before < len, "a fresh memfd holds no pages yet ({before})");
        let out = RegisteredBuffer::map(
            &reg(DV_QUEUE_OUTPUT, &[(0, 0, len as u32)]),
            vec![rustix::io::fcntl_dupfd_cloexec(&check, 0).unwrap()],
        )
        .unwrap();
        assert!(!out.wants_prefault(), "read-only: nothing to write ahead");
        out.prefault();
        assert_eq!(allocated(&check), before);
        let cap =
            RegisteredBuffer::map(&reg(DV_QUEUE_CAPTURE, &[(0, 0, len as u32)]), vec![fd]).unwrap();
        assert!(cap.wants_prefault());
        cap.prefault();
        assert!(allocated(&check) >= len, "every page allocated");
        let mut got = [0u8; 4];
        rustix::io::pread(&check, &mut got, 4096).unwrap();
        assert_eq!(&got, b"kept");
        // The prefault thread does the same for what it is given, and its
        // drop joins it.
        let fd = memfd(len);
        let check = rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        let cap = std::sync::Arc::new(
            RegisteredBuffer::map(&reg(DV_QUEUE_CAPTURE, &[(0, 0, len as u32)]), vec![fd]).unwrap(),
        );
        let p = crate::prefault::Prefaulter::spawn(None).unwrap();
        p.submit(&cap);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while allocated(&check) < len && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(p);
        assert!(allocated(&check) >= len);
        assert_eq!(
            std::sync::Arc::strong_count(&cap),
            1,
            "the thread let go of it"
        );
    }

    #[test]
    fn refuses_out_of_range_and_missing_fds() {
        let e = RegisteredBuffer::map(&reg(DV_QUEUE_OUTPUT, &[(0, 4000, 200)]), vec![memfd(4096)])
            .unwrap_err();
        assert!(matches!(e, BufferError::OutOfRange { size: 4096, .. }));
        let e = RegisteredBuffer::map(&reg(DV_QUEUE_OUTPUT, &[(1, 0, 1)]), vec![memfd(4096)])
            .unwrap_err();
        assert!(matches!(e, BufferError::MissingFd { have: 1, .. }));
        let mut r = reg(DV_QUEUE_OUTPUT, &[(0, 0, 1)]);
        r.memory = 9;
        assert!(matches!(
            RegisteredBuffer::map(&r, vec![memfd(1)]),
            Err(BufferError::BadMemory(9))
        ));
        // An empty plane maps nothing and reads as empty.
        let b = RegisteredBuffer::map(&reg(DV_QUEUE_OUTPUT, &[(0, 0, 0)]), vec![memfd(0)]).unwrap();
        assert_eq!(b.read().unwrap().bitstream(0).unwrap(), b"");
    }

    #[test]
    fn dma_buf_sync_matches_the_uapi() {
        // <linux/dma-buf.h>: _IOW('b', 0, struct dma_buf_sync).
        assert_eq!(DMA_BUF_IOCTL_SYNC as u64, 0x4008_6200);
        assert_eq!(size_of::<DmaBufSync>(), 8);
    }

    #[test]
    fn a_dmabuf_that_is_not_one_fails_access_not_the_process() {
        // A memfd registered as a dmabuf: sized through lseek, mapped, but
        // the sync ioctl is refused, so CPU access fails cleanly.
        let mut r = reg(DV_QUEUE_CAPTURE, &[(0, 0, 4096)]);
        r.memory = DV_MEM_DMABUF;
        let b = RegisteredBuffer::map(&r, vec![memfd(4096)]).unwrap();
        assert_eq!(b.plane_len(0), 4096);
        let e = b.write().unwrap_err();
        assert_eq!(e.errno(), Errno::NOTTY.raw_os_error());
        assert!(b.read().is_err());
    }

    fn open(fourcc: u32, w: u32, h: u32) -> CtxOpen {
        let f = fmt::try_decoded(fourcc, w, h);
        let mut planes = [PlaneFmt::default(); 4];
        for (p, l) in planes
            .iter_mut()
            .zip(f.planes.iter())
            .take(f.num_planes as usize)
        {
            *p = PlaneFmt {
                bytesperline: l.bytesperline,
                sizeimage: l.sizeimage,
            };
        }
        CtxOpen {
            ctx_id: 1,
            codec: 1,
            coded_fourcc: fmt::PIX_FMT_H264_SLICE,
            capture_fourcc: fourcc,
            width: w,
            height: h,
            num_planes: f.num_planes,
            reserved: 0,
            planes,
        }
    }

    #[test]
    fn capture_layouts() {
        let l = CaptureLayout::from_ctx_open(&open(fmt::PIX_FMT_NV12, 1920, 1080)).unwrap();
        assert_eq!((l.width, l.height, l.num_planes), (1920, 1088, 1));
        let l = CaptureLayout::from_ctx_open(&open(fmt::PIX_FMT_NV12M, 176, 100)).unwrap();
        assert_eq!((l.width, l.height, l.num_planes), (176, 112, 2));
        assert!(CaptureLayout::from_ctx_open(&open(fmt::PIX_FMT_P010, 64, 64)).is_some());
        let mut o = open(fmt::PIX_FMT_NV12, 64, 64);
        o.planes[0].sizeimage -= 1;
        assert!(CaptureLayout::from_ctx_open(&o).is_none());
        let mut o = open(fmt::PIX_FMT_NV12, 64, 64);
        o.capture_fourcc = fmt::fourcc(b"YUYV");
        assert!(CaptureLayout::from_ctx_open(&o).is_none());
        let mut o = open(fmt::PIX_FMT_NV12, 64, 64);
        o.num_planes = 2;
        assert!(CaptureLayout::from_ctx_open(&o).is_none());
        // Three planes: Cb and Cr lines of the same length.
        let l = CaptureLayout::from_ctx_open(&open(fmt::PIX_FMT_YUV420M, 176, 100)).unwrap();
        assert_eq!((l.format, l.num_planes), (CaptureFormat::Yuv420, 3));
        assert_eq!(l.bytesperline, [256, 128, 128]);
        let (mut y, mut u, mut v) = (
            vec![0u8; 256 * 112],
            vec![0u8; 128 * 56],
            vec![0u8; 128 * 56],
        );
        let t = l.target(vec![&mut y, &mut u, &mut v]).unwrap();
        assert_eq!(t.cr.as_ref().map(|p| p.stride), Some(128));
        let mut short = vec![0u8; 128 * 55];
        assert!(l.target(vec![&mut y, &mut u, &mut short]).is_err());
        let mut o = open(fmt::PIX_FMT_YUV420M, 64, 64);
        o.planes[2].bytesperline += 64;
        assert!(CaptureLayout::from_ctx_open(&o).is_none());

        // Rows are padded to fmt::CAPTURE_ROW_ALIGN pixels.
        let l = CaptureLayout::from_ctx_open(&open(fmt::PIX_FMT_NV12M, 32, 32)).unwrap();
        let s = fmt::CAPTURE_ROW_ALIGN as usize;
        let mut y = vec![0u8; s * 32];
        let mut c = vec![0u8; s * 16];
        let t = l.target(vec![&mut y, &mut c]).unwrap();
        assert_eq!(t.luma.stride, s);
        let mut c = vec![0u8; s * 15];
        assert!(l.target(vec![&mut y, &mut c]).is_err());
        assert!(l.target(vec![&mut y]).is_err());
    }
}
