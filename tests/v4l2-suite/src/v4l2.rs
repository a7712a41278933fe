//! Thin raw ioctl layer over a stateless decoder node: every call returns
//! the kernel's errno unchanged, because checking errnos is the point.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use decoder_core::ctrl::{Codec, ControlValues};
use nix::errno::Errno;
use v4l2r::bindings::{
    self, v4l2_buffer, v4l2_capability, v4l2_create_buffers, v4l2_decoder_cmd, v4l2_ext_control,
    v4l2_ext_controls, v4l2_format, v4l2_plane, v4l2_requestbuffers,
};

nix::ioctl_read!(vidioc_querycap, b'V', 0, v4l2_capability);
nix::ioctl_readwrite!(vidioc_g_fmt, b'V', 4, v4l2_format);
nix::ioctl_readwrite!(vidioc_s_fmt, b'V', 5, v4l2_format);
nix::ioctl_readwrite!(vidioc_reqbufs, b'V', 8, v4l2_requestbuffers);
nix::ioctl_readwrite!(vidioc_querybuf, b'V', 9, v4l2_buffer);
nix::ioctl_readwrite!(vidioc_qbuf, b'V', 15, v4l2_buffer);
nix::ioctl_readwrite!(vidioc_dqbuf, b'V', 17, v4l2_buffer);
nix::ioctl_write_ptr!(vidioc_streamon, b'V', 18, i32);
nix::ioctl_write_ptr!(vidioc_streamoff, b'V', 19, i32);
nix::ioctl_readwrite!(vidioc_s_ext_ctrls, b'V', 72, v4l2_ext_controls);
nix::ioctl_readwrite!(vidioc_create_bufs, b'V', 92, v4l2_create_buffers);
nix::ioctl_readwrite!(vidioc_decoder_cmd, b'V', 96, v4l2_decoder_cmd);
nix::ioctl_read!(media_ioc_request_alloc, b'|', 0x05, i32);
nix::ioctl_none!(media_request_ioc_queue, b'|', 0x80);
nix::ioctl_none!(media_request_ioc_reinit, b'|', 0x81);

// DMA_HEAP_IOCTL_ALLOC, UDMABUF_CREATE, DMA_BUF_IOCTL_SYNC.
#[repr(C)]
#[derive(Default)]
struct DmaHeapAlloc {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}
#[repr(C)]
#[derive(Default)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}
nix::ioctl_readwrite!(dma_heap_alloc, b'H', 0x0, DmaHeapAlloc);
nix::ioctl_write_ptr!(udmabuf_create, b'u', 0x42, UdmabufCreate);

/// OUTPUT (bitstream) queue type.
pub const OUT: u32 = bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE;
/// CAPTURE (picture) queue type.
pub const CAP: u32 = bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE;

/// Buffer memory of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mem {
    /// V4L2_MEMORY_MMAP
    Mmap,
    /// V4L2_MEMORY_USERPTR
    Userptr,
    /// V4L2_MEMORY_DMABUF
    Dmabuf,
}

impl Mem {
    /// Parses `mmap`, `userptr`, `dmabuf`.
    pub fn parse(s: &str) -> Option<Mem> {
        Some(match s {
            "mmap" => Mem::Mmap,
            "userptr" => Mem::Userptr,
            "dmabuf" => Mem::Dmabuf,
            _ => return None,
        })
    }

    /// The `V4L2_MEMORY_*` value.
    pub fn v4l2(self) -> u32 {
        match self {
            Mem::Mmap => bindings::v4l2_memory_V4L2_MEMORY_MMAP,
            Mem::Userptr => bindings::v4l2_memory_V4L2_MEMORY_USERPTR,
            Mem::Dmabuf => bindings::v4l2_memory_V4L2_MEMORY_DMABUF,
        }
    }

    /// The `--memory` name.
    pub fn name(self) -> &'static str {
        match self {
            Mem::Mmap => "mmap",
            Mem::Userptr => "userptr",
            Mem::Dmabuf => "dmabuf",
        }
    }
}

const PAGE: usize = 4096;

/// Memory of one plane, mapped for the CPU.
pub struct Plane {
    ptr: *mut u8,
    len: usize,
    kind: PlaneKind,
}

// SAFETY: a Plane exclusively owns its memory (mapping or allocation);
// moving it to another thread (a bounded close) moves that ownership.
unsafe impl Send for Plane {}

enum PlaneKind {
    /// Driver memory mapped from the video node.
    Mmap,
    /// Our heap memory.
    User(std::alloc::Layout),
    /// A dma-buf we allocated.
    Dma(OwnedFd),
}

impl Plane {
    /// Plane memory of `len` bytes for USERPTR or DMABUF.
    pub fn alloc(mem: Mem, len: usize) -> Result<Plane, String> {
        let len = len.div_ceil(PAGE).max(1) * PAGE;
        match mem {
            Mem::Mmap => Err("MMAP planes come from the driver".into()),
            Mem::Userptr => {
                let layout =
                    std::alloc::Layout::from_size_align(len, PAGE).map_err(|e| e.to_string())?;
                // SAFETY: non-zero size.
                let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
                if ptr.is_null() {
                    return Err("out of memory".into());
                }
                Ok(Plane {
                    ptr,
                    len,
                    kind: PlaneKind::User(layout),
                })
            }
            Mem::Dmabuf => {
                let fd = dmabuf(len)?;
                let ptr = map(&fd, len, 0)?;
                Ok(Plane {
                    ptr,
                    len,
                    kind: PlaneKind::Dma(fd),
                })
            }
        }
    }

    /// Maps plane `offset` of the video node (MMAP).
    pub fn mmap(video: &File, offset: u32, len: u32) -> Result<Plane, String> {
        let ptr = map(video, len as usize, offset as u64)?;
        Ok(Plane {
            ptr,
            len: len as usize,
            kind: PlaneKind::Mmap,
        })
    }

    /// Bytes of the plane.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes `b` at the start (with dma-buf sync around it).
    pub fn write(&mut self, b: &[u8]) {
        let n = b.len().min(self.len);
        self.sync(DMA_BUF_SYNC_WRITE);
        // SAFETY: `ptr` is valid for `len` bytes while self lives, n <= len.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr, n) };
        self.sync(DMA_BUF_SYNC_WRITE | DMA_BUF_SYNC_END);
    }

    fn sync(&self, flags: u64) {
        if let PlaneKind::Dma(fd) = &self.kind {
            nix::ioctl_write_ptr!(dma_buf_sync, b'b', 0, u64);
            // SAFETY: DMA_BUF_IOCTL_SYNC reads a struct dma_buf_sync (one u64).
            let _ = unsafe { dma_buf_sync(fd.as_raw_fd(), &flags) };
        }
    }

    /// Fills the memory fields of a QBUF plane.
    pub fn fill(&self, p: &mut v4l2_plane) {
        match &self.kind {
            PlaneKind::Mmap => {}
            PlaneKind::User(_) => {
                p.m.userptr = self.ptr as _;
                p.length = self.len as u32;
            }
            PlaneKind::Dma(fd) => {
                p.m.fd = fd.as_raw_fd();
                p.length = self.len as u32;
            }
        }
    }
}

const DMA_BUF_SYNC_WRITE: u64 = 2;
const DMA_BUF_SYNC_END: u64 = 4;

impl Drop for Plane {
    fn drop(&mut self) {
        match &self.kind {
            // SAFETY: allocated with this layout in `alloc`, freed once.
            PlaneKind::User(l) => unsafe { std::alloc::dealloc(self.ptr, *l) },
            // SAFETY: the mapping made in `map`, unmapped once.
            _ => unsafe {
                let _ = rustix::mm::munmap(self.ptr.cast(), self.len);
            },
        }
    }
}

fn map(fd: &impl std::os::fd::AsFd, len: usize, offset: u64) -> Result<*mut u8, String> {
    // SAFETY: a new shared mapping; nothing else in this process aliases it.
    unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            fd,
            offset,
        )
    }
    .map(|p| p.cast())
    .map_err(|e| format!("mmap: {e}"))
}

fn dmabuf(len: usize) -> Result<OwnedFd, String> {
    // Same switch as the daedalus CLI: `udmabuf` skips the dma-heap.
    let skip_heap = std::env::var("DAEDALUS_DMABUF_SOURCE").is_ok_and(|v| v == "udmabuf");
    let heap = if skip_heap {
        Err(std::io::Error::other(
            "skipped (DAEDALUS_DMABUF_SOURCE=udmabuf)",
        ))
    } else {
        OpenOptions::new().read(true).open("/dev/dma_heap/system")
    };
    let heap_err = match heap {
        Ok(heap) => {
            let mut d = DmaHeapAlloc {
                len: len as u64,
                fd_flags: (libc_o_rdwr() | libc_o_cloexec()) as u32,
                ..Default::default()
            };
            // SAFETY: DMA_HEAP_IOCTL_ALLOC reads/writes this 24-byte struct.
            match unsafe { dma_heap_alloc(heap.as_raw_fd(), &mut d) } {
                // SAFETY: a new fd the kernel installed for us.
                Ok(_) => return Ok(unsafe { OwnedFd::from_raw_fd(d.fd as i32) }),
                Err(e) => format!("DMA_HEAP_IOCTL_ALLOC: {e}"),
            }
        }
        Err(e) => format!("/dev/dma_heap/system: {e}"),
    };
    use rustix::fs::{MemfdFlags, SealFlags};
    let memfd = rustix::fs::memfd_create("suite", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| format!("memfd: {e}"))?;
    rustix::fs::ftruncate(&memfd, len as u64).map_err(|e| format!("ftruncate: {e}"))?;
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK).map_err(|e| format!("seal: {e}"))?;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/udmabuf")
        .map_err(|e| format!("{heap_err}; /dev/udmabuf: {e}"))?;
    let c = UdmabufCreate {
        memfd: memfd.as_raw_fd() as u32,
        flags: 1,
        offset: 0,
        size: len as u64,
    };
    // SAFETY: UDMABUF_CREATE reads this 24-byte struct.
    let fd = unsafe { udmabuf_create(dev.as_raw_fd(), &c) }
        .map_err(|e| format!("{heap_err}; UDMABUF_CREATE: {e}"))?;
    // SAFETY: a new fd the kernel installed for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn libc_o_rdwr() -> i32 {
    rustix::fs::OFlags::RDWR.bits() as i32
}

fn libc_o_cloexec() -> i32 {
    rustix::fs::OFlags::CLOEXEC.bits() as i32
}

/// Opens a video node non-blocking.
pub fn open_video(path: &Path) -> Result<File, Errno> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))
}

/// QUERYCAP.
pub fn querycap(f: &File) -> Result<v4l2_capability, Errno> {
    let mut c = v4l2_capability::default();
    // SAFETY: VIDIOC_QUERYCAP fills a struct v4l2_capability.
    unsafe { vidioc_querycap(f.as_raw_fd(), &mut c) }?;
    Ok(c)
}

/// G_FMT of an MPLANE queue.
pub fn g_fmt(f: &File, ty: u32) -> Result<v4l2_format, Errno> {
    let mut fmt = v4l2_format {
        type_: ty,
        ..Default::default()
    };
    // SAFETY: VIDIOC_G_FMT reads/writes a struct v4l2_format.
    unsafe { vidioc_g_fmt(f.as_raw_fd(), &mut fmt) }?;
    Ok(fmt)
}

/// S_FMT OUTPUT to a coded format and size; returns what the driver set.
pub fn s_fmt_output(f: &File, fourcc: u32, w: u32, h: u32) -> Result<v4l2_format, Errno> {
    let mut fmt = v4l2_format {
        type_: OUT,
        ..Default::default()
    };
    // SAFETY: writing the pix_mp member of a zeroed union (MPLANE type).
    let mp = unsafe { &mut fmt.fmt.pix_mp };
    mp.pixelformat = fourcc;
    mp.width = w;
    mp.height = h;
    mp.num_planes = 1;
    mp.plane_fmt[0].sizeimage = (w * h * 3 / 2).max(64 * 1024);
    // SAFETY: VIDIOC_S_FMT reads/writes a struct v4l2_format.
    unsafe { vidioc_s_fmt(f.as_raw_fd(), &mut fmt) }?;
    Ok(fmt)
}

/// S_FMT of a whole format; returns what the driver set.
pub fn s_fmt(f: &File, mut fmt: v4l2_format) -> Result<v4l2_format, Errno> {
    // SAFETY: VIDIOC_S_FMT reads/writes a struct v4l2_format.
    unsafe { vidioc_s_fmt(f.as_raw_fd(), &mut fmt) }?;
    Ok(fmt)
}

/// Plane sizes of a queue's current format.
pub fn plane_sizes(f: &File, ty: u32) -> Result<Vec<u32>, Errno> {
    let fmt = g_fmt(f, ty)?;
    // SAFETY: MPLANE formats use pix_mp.
    let mp = unsafe { &fmt.fmt.pix_mp };
    Ok((0..usize::from(mp.num_planes.clamp(1, 4)))
        .map(|i| mp.plane_fmt[i].sizeimage)
        .collect())
}

/// REQBUFS; returns the count and capabilities granted.
pub fn reqbufs(f: &File, ty: u32, memory: u32, count: u32) -> Result<(u32, u32), Errno> {
    let mut r = v4l2_requestbuffers {
        count,
        type_: ty,
        memory,
        ..Default::default()
    };
    // SAFETY: VIDIOC_REQBUFS reads/writes a struct v4l2_requestbuffers.
    unsafe { vidioc_reqbufs(f.as_raw_fd(), &mut r) }?;
    Ok((r.count, r.capabilities))
}

/// CREATE_BUFS of `count` buffers in the queue's current format.
pub fn create_bufs(f: &File, ty: u32, memory: u32, count: u32) -> Result<(u32, u32), Errno> {
    let mut c = v4l2_create_buffers {
        count,
        memory,
        format: g_fmt(f, ty)?,
        ..Default::default()
    };
    // SAFETY: VIDIOC_CREATE_BUFS reads/writes a struct v4l2_create_buffers.
    unsafe { vidioc_create_bufs(f.as_raw_fd(), &mut c) }?;
    Ok((c.index, c.count))
}

/// Maps every plane of MMAP buffer `index`.
pub fn mmap_buffer(f: &File, ty: u32, index: u32) -> Result<Vec<Plane>, String> {
    let mut planes = [v4l2_plane::default(); 8];
    let mut b = v4l2_buffer {
        index,
        type_: ty,
        memory: bindings::v4l2_memory_V4L2_MEMORY_MMAP,
        length: 8,
        ..Default::default()
    };
    b.m.planes = planes.as_mut_ptr();
    // SAFETY: VIDIOC_QUERYBUF writes `length` planes through m.planes,
    // which points to 8 of them, alive for the call.
    unsafe { vidioc_querybuf(f.as_raw_fd(), &mut b) }.map_err(|e| format!("QUERYBUF: {e}"))?;
    (0..b.length as usize)
        .map(|i| {
            // SAFETY: the kernel filled mem_offset for MMAP planes.
            let off = unsafe { planes[i].m.mem_offset };
            Plane::mmap(f, off, planes[i].length)
        })
        .collect()
}

/// What a QBUF carries besides the buffer's memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct QbufArgs {
    /// Request fd.
    pub request: Option<i32>,
    /// Timestamp in microseconds.
    pub ts_us: u64,
    /// OUTPUT bytes used (plane 0).
    pub bytesused: u32,
    /// Extra `V4L2_BUF_FLAG_*`.
    pub flags: u32,
    /// Force the plane length (0: the plane's own).
    pub length: u32,
}

/// QBUF of buffer `index` with the given planes' memory.
pub fn qbuf(
    f: &File,
    ty: u32,
    memory: u32,
    index: u32,
    mem: &[Plane],
    a: QbufArgs,
) -> Result<(), Errno> {
    let mut planes = [v4l2_plane::default(); 8];
    for (p, v) in mem.iter().zip(planes.iter_mut()) {
        p.fill(v);
        if a.length != 0 {
            v.length = a.length;
        }
    }
    if ty == OUT {
        planes[0].bytesused = a.bytesused;
    }
    let mut b = v4l2_buffer {
        index,
        type_: ty,
        memory,
        length: mem.len().max(1) as u32,
        flags: a.flags,
        ..Default::default()
    };
    b.timestamp.tv_sec = (a.ts_us / 1_000_000) as _;
    b.timestamp.tv_usec = (a.ts_us % 1_000_000) as _;
    if let Some(r) = a.request {
        b.flags |= bindings::V4L2_BUF_FLAG_REQUEST_FD;
        b.__bindgen_anon_1.request_fd = r;
    }
    b.m.planes = planes.as_mut_ptr();
    // SAFETY: VIDIOC_QBUF reads/writes a v4l2_buffer whose m.planes
    // points to `length` <= 8 planes alive for the call.
    unsafe { vidioc_qbuf(f.as_raw_fd(), &mut b) }?;
    Ok(())
}

/// A dequeued buffer.
#[derive(Debug, Clone, Copy)]
pub struct Dq {
    /// Index.
    pub index: u32,
    /// `V4L2_BUF_FLAG_ERROR` set.
    pub error: bool,
}

/// DQBUF (non-blocking node: EAGAIN when nothing is done).
pub fn dqbuf(f: &File, ty: u32, memory: u32) -> Result<Dq, Errno> {
    let mut planes = [v4l2_plane::default(); 8];
    let mut b = v4l2_buffer {
        type_: ty,
        memory,
        length: 8,
        ..Default::default()
    };
    b.m.planes = planes.as_mut_ptr();
    // SAFETY: as for QBUF: m.planes points to 8 planes alive for the call.
    unsafe { vidioc_dqbuf(f.as_raw_fd(), &mut b) }?;
    Ok(Dq {
        index: b.index,
        error: b.flags & bindings::V4L2_BUF_FLAG_ERROR != 0,
    })
}

/// STREAMON / STREAMOFF.
pub fn stream(f: &File, ty: u32, on: bool) -> Result<(), Errno> {
    let t = ty as i32;
    // SAFETY: both ioctls read one int.
    unsafe {
        if on {
            vidioc_streamon(f.as_raw_fd(), &t)
        } else {
            vidioc_streamoff(f.as_raw_fd(), &t)
        }
    }?;
    Ok(())
}

/// DECODER_CMD with command `cmd`.
pub fn decoder_cmd(f: &File, cmd: u32) -> Result<(), Errno> {
    let mut c = v4l2_decoder_cmd {
        cmd,
        ..Default::default()
    };
    // SAFETY: VIDIOC_DECODER_CMD reads/writes a struct v4l2_decoder_cmd.
    unsafe { vidioc_decoder_cmd(f.as_raw_fd(), &mut c) }?;
    Ok(())
}

/// A media request.
pub struct Request(pub OwnedFd);

impl Request {
    /// MEDIA_IOC_REQUEST_ALLOC.
    pub fn alloc(media: &File) -> Result<Request, Errno> {
        let mut fd: i32 = -1;
        // SAFETY: MEDIA_IOC_REQUEST_ALLOC writes one int.
        unsafe { media_ioc_request_alloc(media.as_raw_fd(), &mut fd) }?;
        // SAFETY: a new fd the kernel installed for us.
        Ok(Request(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The fd number.
    pub fn fd(&self) -> i32 {
        self.0.as_raw_fd()
    }

    /// MEDIA_REQUEST_IOC_QUEUE.
    pub fn queue(&self) -> Result<(), Errno> {
        // SAFETY: an argument-less ioctl on our request fd.
        unsafe { media_request_ioc_queue(self.fd()) }?;
        Ok(())
    }

    /// MEDIA_REQUEST_IOC_REINIT.
    pub fn reinit(&self) -> Result<(), Errno> {
        // SAFETY: an argument-less ioctl on our request fd.
        unsafe { media_request_ioc_reinit(self.fd()) }?;
        Ok(())
    }
}

/// Where S_EXT_CTRLS writes.
#[derive(Debug, Clone, Copy)]
pub enum Which {
    /// The current values.
    Current,
    /// A request.
    Request(i32),
}

/// S_EXT_CTRLS of raw `(id, payload)` pairs: compound controls (by the
/// codec's table, or any payload of a size other than 4) by pointer, the
/// others by value.
pub fn s_ext_ctrls(
    f: &File,
    codec: Codec,
    which: Which,
    ctrls: &[(u32, Vec<u8>)],
) -> Result<(), Errno> {
    let desc = codec.desc();
    let mut storage: Vec<Vec<u8>> = ctrls.iter().map(|(_, b)| b.clone()).collect();
    let mut v: Vec<v4l2_ext_control> = Vec::new();
    for ((id, _), buf) in ctrls.iter().zip(storage.iter_mut()) {
        let mut c = v4l2_ext_control {
            id: *id,
            ..Default::default()
        };
        let compound = desc.find(*id).map_or(buf.len() != 4, |d| d.is_compound());
        if compound {
            c.size = buf.len() as u32;
            c.__bindgen_anon_1.p_u8 = buf.as_mut_ptr();
        } else {
            let mut x = [0u8; 4];
            let n = buf.len().min(4);
            x[..n].copy_from_slice(&buf[..n]);
            c.__bindgen_anon_1.value = i32::from_le_bytes(x);
        }
        v.push(c);
    }
    let mut e = v4l2_ext_controls {
        count: v.len() as u32,
        controls: v.as_mut_ptr(),
        ..Default::default()
    };
    match which {
        Which::Current => e.__bindgen_anon_1.which = bindings::V4L2_CTRL_WHICH_CUR_VAL,
        Which::Request(fd) => {
            e.__bindgen_anon_1.which = bindings::V4L2_CTRL_WHICH_REQUEST_VAL;
            e.request_fd = fd;
        }
    }
    // SAFETY: VIDIOC_S_EXT_CTRLS reads `count` controls at `controls`,
    // whose compound payloads point into `storage`; all alive for the call.
    unsafe { vidioc_s_ext_ctrls(f.as_raw_fd(), &mut e) }?;
    Ok(())
}

/// decoder-core's default (valid) controls of a codec.
pub fn default_controls(codec: Codec) -> Vec<(u32, Vec<u8>)> {
    ControlValues::defaults(codec)
        .iter()
        .map(|(id, b)| (id, b.to_vec()))
        .collect()
}
