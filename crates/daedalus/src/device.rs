//! The V4L2 frontend: a real stateless decoder behind `/dev/videoN` and its
//! media controller node, driven with v4l2r's ioctl wrappers (and its
//! bindings for the few calls it does not wrap).
//!
//! The sequence is the uAPI's stateless decoder interface: QUERYCAP, S_FMT
//! on OUTPUT (coded format) then CAPTURE (YUV420M / NV12 / NV12M / P010),
//! REQBUFS on both queues, STREAMON; per job a media request holding the controls and
//! one OUTPUT buffer; CAPTURE buffers queued and dequeued;
//! `V4L2_DEC_CMD_FLUSH` at the end.
//!
//! Buffer memory is one of three kinds ([`MemoryKind`]), everything else
//! being the same code path:
//!
//! * `mmap`: the driver allocates, we map each plane (`VIDIOC_QUERYBUF`);
//! * `userptr`: page-aligned heap buffers we own, passed by address;
//! * `dmabuf`: one dma-buf per plane from `/dev/dma_heap/system` (or
//!   `/dev/udmabuf` over a sealed memfd), passed by fd and mapped by us;
//!   CPU access is bracketed by `DMA_BUF_IOCTL_SYNC` (write around filling
//!   an OUTPUT buffer, read from a CAPTURE buffer's DQBUF to its next QBUF).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use decoder_core::ctrl::{Codec, ControlValues};
use decoder_core::fmt::{self, PixFormat, PlaneLayout};
use v4l2r::bindings::{
    self, timeval, v4l2_capability, v4l2_decoder_cmd, v4l2_ext_control, v4l2_fmtdesc, v4l2_format,
    v4l2_requestbuffers,
};
use v4l2r::ioctl::{
    self as vio, CtrlWhich, DqBufIoctlError, IoctlConvertError, PlaneMapping, QueryBuffer, Request,
    UncheckedV4l2Buffer,
};
use v4l2r::nix::errno::Errno;
use v4l2r::QueueType;

use crate::frontend::{Frontend, Picture};

/// OUTPUT buffers (bitstream) requested.
pub const OUTPUT_BUFFERS: u32 = 4;
/// CAPTURE buffers requested: a full H.264 DPB plus reordering headroom.
pub const CAPTURE_BUFFERS: u32 = 32;
/// Smallest OUTPUT buffer asked for.
const MIN_OUTPUT_SIZE: u32 = 1 << 20;

const OUT_Q: QueueType = QueueType::VideoOutputMplane;
const CAP_Q: QueueType = QueueType::VideoCaptureMplane;

/// How buffer memory is provided (`--memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryKind {
    /// `V4L2_MEMORY_MMAP`: driver-allocated, mapped by us.
    #[default]
    Mmap,
    /// `V4L2_MEMORY_USERPTR`: page-aligned memory of our own heap.
    Userptr,
    /// `V4L2_MEMORY_DMABUF`: dma-bufs we allocate and map.
    Dmabuf,
}

impl MemoryKind {
    /// Parses `mmap`, `userptr` or `dmabuf`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "mmap" => MemoryKind::Mmap,
            "userptr" => MemoryKind::Userptr,
            "dmabuf" => MemoryKind::Dmabuf,
            _ => bail!("unknown memory type {s:?} (mmap, userptr or dmabuf)"),
        })
    }

    /// The lower-case name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            MemoryKind::Mmap => "mmap",
            MemoryKind::Userptr => "userptr",
            MemoryKind::Dmabuf => "dmabuf",
        }
    }

    fn v4l2(self) -> v4l2r::memory::MemoryType {
        match self {
            MemoryKind::Mmap => v4l2r::memory::MemoryType::Mmap,
            MemoryKind::Userptr => v4l2r::memory::MemoryType::UserPtr,
            MemoryKind::Dmabuf => v4l2r::memory::MemoryType::DmaBuf,
        }
    }
}

impl std::str::FromStr for MemoryKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        MemoryKind::parse(s)
    }
}

/// How [`V4l2Device::open`] reaches and drives the device.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// The media controller node; found through sysfs or `bus_info` when
    /// `None`.
    pub media: Option<PathBuf>,
    /// Buffer memory of both queues.
    pub memory: MemoryKind,
    /// Controls of the stream's first job, set as the context's current
    /// values before the CAPTURE format is chosen: a stateless decoder
    /// derives the formats it offers (8 or 10 bit) from the sequence
    /// controls (H.264/HEVC SPS, VP9 frame, AV1 sequence), as GStreamer
    /// sets them first.
    pub initial_controls: Option<ControlValues>,
}

/// `struct dma_heap_allocation_data` (include/uapi/linux/dma-heap.h).
#[repr(C)]
#[derive(Debug, Default)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}

/// `struct udmabuf_create` (include/uapi/linux/udmabuf.h).
#[repr(C)]
#[derive(Debug, Default)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

/// `struct dma_buf_sync` (include/uapi/linux/dma-buf.h).
#[repr(C)]
#[derive(Debug, Default)]
struct DmaBufSync {
    flags: u64,
}

const DMA_BUF_SYNC_READ: u64 = 1;
const DMA_BUF_SYNC_WRITE: u64 = 2;
const DMA_BUF_SYNC_START: u64 = 0;
const DMA_BUF_SYNC_END: u64 = 4;
const UDMABUF_FLAGS_CLOEXEC: u32 = 1;

// DMA_HEAP_IOCTL_ALLOC = _IOWR('H', 0x0, struct dma_heap_allocation_data)
v4l2r::nix::ioctl_readwrite!(dma_heap_ioctl_alloc, b'H', 0x0, DmaHeapAllocationData);
// UDMABUF_CREATE = _IOW('u', 0x42, struct udmabuf_create)
v4l2r::nix::ioctl_write_ptr!(udmabuf_ioctl_create, b'u', 0x42, UdmabufCreate);
// DMA_BUF_IOCTL_SYNC = _IOW('b', 0, struct dma_buf_sync)
v4l2r::nix::ioctl_write_ptr!(dma_buf_ioctl_sync, b'b', 0, DmaBufSync);

const PAGE: usize = 4096;

/// Environment variable choosing where DMABUF memory comes from: `heap`
/// (`/dev/dma_heap/system` only), `udmabuf` (memfd + `/dev/udmabuf` only),
/// unset: the heap, else udmabuf.
pub const DMABUF_SOURCE_ENV: &str = "DAEDALUS_DMABUF_SOURCE";

fn page_round(n: usize) -> usize {
    n.div_ceil(PAGE).max(1) * PAGE
}

/// Page-aligned heap memory handed to the driver by address.
struct UserBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: UserBuf exclusively owns its allocation, like a Box<[u8]>.
unsafe impl Send for UserBuf {}

impl UserBuf {
    fn new(len: usize) -> Result<Self> {
        let layout = std::alloc::Layout::from_size_align(page_round(len), PAGE)?;
        // SAFETY: the layout has a non-zero size (page_round gives at least
        // one page).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw)
            .ok_or_else(|| anyhow!("out of memory for a {len}-byte USERPTR buffer"))?;
        Ok(UserBuf { ptr, layout })
    }
}

impl Drop for UserBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A dma-buf we allocated, mapped shared for the CPU.
struct DmaBuf {
    map: *mut u8,
    len: usize,
    fd: OwnedFd,
    /// Between a SYNC_START and its SYNC_END (udmabuf refuses an END
    /// without a START with EINVAL).
    cpu_access: std::cell::Cell<bool>,
}

// SAFETY: DmaBuf exclusively owns its mapping and fd.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// Allocates `len` bytes (rounded up to pages) from the system dma-heap,
    /// or from udmabuf over a memfd when there is no heap
    /// (`DAEDALUS_DMABUF_SOURCE=udmabuf` skips the heap, `heap` forbids the
    /// fallback: for tests of either path).
    fn new(len: usize) -> Result<Self> {
        let len = page_round(len);
        let source = std::env::var(DMABUF_SOURCE_ENV).unwrap_or_default();
        let heap = match source.as_str() {
            "udmabuf" => Err(anyhow!("skipped ({DMABUF_SOURCE_ENV}=udmabuf)")),
            _ => Self::from_heap(len),
        };
        let fd = match heap {
            Ok(fd) => fd,
            Err(heap_err) if source == "heap" => return Err(heap_err),
            Err(heap_err) => Self::from_udmabuf(len).map_err(|e| {
                anyhow!("no dma-buf: /dev/dma_heap/system: {heap_err:#}; /dev/udmabuf: {e:#}")
            })?,
        };
        // SAFETY: a fresh shared mapping of a whole dma-buf we own; no
        // other mapping aliases it in this process.
        let map = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| errno_of("mmap(dma-buf)", e))?;
        Ok(DmaBuf {
            map: map.cast(),
            len,
            fd,
            cpu_access: std::cell::Cell::new(false),
        })
    }

    fn from_heap(len: usize) -> Result<OwnedFd> {
        let heap = OpenOptions::new().read(true).open("/dev/dma_heap/system")?;
        let mut data = DmaHeapAllocationData {
            len: len as u64,
            fd_flags: (rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC).bits(),
            ..Default::default()
        };
        // SAFETY: DMA_HEAP_IOCTL_ALLOC reads and writes a struct
        // dma_heap_allocation_data, which `data` is (repr(C), 24 bytes).
        unsafe { dma_heap_ioctl_alloc(heap.as_raw_fd(), &mut data) }
            .map_err(|e| errno_of("DMA_HEAP_IOCTL_ALLOC", e))?;
        // SAFETY: the kernel just installed this fd for us; nothing else
        // owns it.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(data.fd as i32) })
    }

    fn from_udmabuf(len: usize) -> Result<OwnedFd> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let memfd = rustix::fs::memfd_create(
            "daedalus-udmabuf",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&memfd, len as u64)?;
        rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK)?;
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/udmabuf")?;
        let create = UdmabufCreate {
            memfd: memfd.as_raw_fd() as u32,
            flags: UDMABUF_FLAGS_CLOEXEC,
            offset: 0,
            size: len as u64,
        };
        // SAFETY: UDMABUF_CREATE reads a struct udmabuf_create, which
        // `create` is (repr(C), 24 bytes).
        let fd = unsafe { udmabuf_ioctl_create(dev.as_raw_fd(), &create) }
            .map_err(|e| errno_of("UDMABUF_CREATE", e))?;
        // SAFETY: the ioctl returned a new fd that nothing else owns.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    }

    /// `DMA_BUF_IOCTL_SYNC`; an END without a START is skipped.
    fn sync(&self, flags: u64) -> Result<()> {
        let end = flags & DMA_BUF_SYNC_END != 0;
        if end && !self.cpu_access.get() {
            return Ok(());
        }
        self.cpu_access.set(!end);
        let s = DmaBufSync { flags };
        loop {
            // SAFETY: DMA_BUF_IOCTL_SYNC reads a struct dma_buf_sync,
            // which `s` is.
            match unsafe { dma_buf_ioctl_sync(self.fd.as_raw_fd(), &s) } {
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
                r => return r.map(|_| ()).map_err(|e| errno_of("DMA_BUF_IOCTL_SYNC", e)),
            }
        }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.map.cast(), self.len) };
    }
}

/// The memory of one buffer plane.
enum PlaneMem {
    Mmap(PlaneMapping),
    User(UserBuf),
    Dma(DmaBuf),
}

impl PlaneMem {
    fn new(kind: MemoryKind, len: usize) -> Result<Self> {
        Ok(match kind {
            MemoryKind::Mmap => bail!("MMAP planes come from the driver"),
            MemoryKind::Userptr => PlaneMem::User(UserBuf::new(len)?),
            MemoryKind::Dmabuf => PlaneMem::Dma(DmaBuf::new(len)?),
        })
    }

    fn bytes(&self) -> &[u8] {
        match self {
            PlaneMem::Mmap(m) => m,
            // SAFETY: the allocation is `layout.size()` bytes, owned by
            // self and alive for the borrow.
            PlaneMem::User(u) => unsafe {
                std::slice::from_raw_parts(u.ptr.as_ptr(), u.layout.size())
            },
            // SAFETY: the mapping is `len` bytes, alive for the borrow.
            PlaneMem::Dma(d) => unsafe { std::slice::from_raw_parts(d.map, d.len) },
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            PlaneMem::Mmap(m) => m,
            // SAFETY: as in `bytes`, and `&mut self` makes it exclusive.
            PlaneMem::User(u) => unsafe {
                std::slice::from_raw_parts_mut(u.ptr.as_ptr(), u.layout.size())
            },
            // SAFETY: as in `bytes`, and `&mut self` makes it exclusive.
            PlaneMem::Dma(d) => unsafe { std::slice::from_raw_parts_mut(d.map, d.len) },
        }
    }

    /// Fills the memory fields of a `v4l2_plane` for QBUF.
    fn fill(&self, p: &mut bindings::v4l2_plane) {
        match self {
            PlaneMem::Mmap(_) => {}
            PlaneMem::User(u) => {
                p.m.userptr = u.ptr.as_ptr() as _;
                p.length = u.layout.size() as u32;
            }
            PlaneMem::Dma(d) => {
                p.m.fd = d.fd.as_raw_fd();
                p.length = d.len as u32;
            }
        }
    }

    /// `DMA_BUF_IOCTL_SYNC` for dma-bufs, nothing for the others.
    fn sync(&self, flags: u64) -> Result<()> {
        match self {
            PlaneMem::Dma(d) => d.sync(flags),
            _ => Ok(()),
        }
    }
}

/// `struct media_device_info` (include/uapi/linux/media.h); v4l2r's
/// bindings only cover videodev2.h.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MediaDeviceInfo {
    driver: [u8; 16],
    model: [u8; 32],
    serial: [u8; 40],
    bus_info: [u8; 32],
    media_version: u32,
    hw_revision: u32,
    driver_version: u32,
    reserved: [u32; 31],
}

// MEDIA_IOC_DEVICE_INFO = _IOWR('|', 0x00, struct media_device_info)
v4l2r::nix::ioctl_readwrite!(media_ioc_device_info, b'|', 0x00, MediaDeviceInfo);

/// A V4L2 stateless decoder device with formats set, buffers mapped and
/// both queues streaming.
pub struct V4l2Device {
    // Memory first: it is unmapped before the video fd closes.
    out_maps: Vec<PlaneMem>,
    cap_maps: Vec<Vec<PlaneMem>>,
    memory: MemoryKind,
    /// Requests that are queued with an OUTPUT buffer, by its index.
    in_flight: HashMap<u32, Request>,
    /// Requests whose OUTPUT buffer came back but that were not complete
    /// yet when we tried to reinit them.
    completing: Vec<Request>,
    /// Reinitialised requests ready for reuse.
    pool: Vec<Request>,
    free_out: Vec<u32>,
    cap_fmt: PixFormat,
    codec: Codec,
    hold_supported: bool,
    /// Jobs submitted and media requests allocated (requests are reused).
    jobs: u64,
    requests_allocated: u64,
    video_path: PathBuf,
    media: File,
    video: File,
}

impl std::fmt::Debug for V4l2Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Device")
            .field("video", &self.video_path)
            .field("cap_fmt", &self.cap_fmt)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

/// Converts a job timestamp (ns) to the `struct timeval` of a
/// `v4l2_buffer`, the inverse of the kernel's `v4l2_timeval_to_ns`
/// (exact for multiples of 1000 ns).
pub fn ns_to_timeval(ns: u64) -> timeval {
    timeval {
        tv_sec: (ns / 1_000_000_000) as _,
        tv_usec: ((ns % 1_000_000_000) / 1000) as _,
    }
}

/// The kernel's `v4l2_timeval_to_ns`.
pub fn timeval_to_ns(tv: &timeval) -> u64 {
    (tv.tv_sec as u64) * 1_000_000_000 + (tv.tv_usec as u64) * 1000
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn fourcc_str(f: u32) -> String {
    f.to_le_bytes()
        .iter()
        .map(|&c| if c.is_ascii_graphic() { c as char } else { '.' })
        .collect()
}

/// Finds the media controller node of a video node: first through sysfs
/// (the media device sits next to the video device under the same parent),
/// then by matching `bus_info` of every /dev/media* with QUERYCAP's.
fn find_media_node(video: &File, video_path: &Path, bus_info: &str) -> Result<PathBuf> {
    let rdev = video.metadata()?.rdev();
    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let dev_dir = PathBuf::from(format!("/sys/dev/char/{major}:{minor}/device"));
    if let Ok(rd) = std::fs::read_dir(&dev_dir) {
        let mut found: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("media") && n[5..].chars().all(|c| c.is_ascii_digit()))
            .collect();
        found.sort();
        if let Some(n) = found.first() {
            let p = PathBuf::from("/dev").join(n);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/dev")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("media"))
        })
        .collect();
    candidates.sort();
    for p in candidates {
        let Ok(f) = OpenOptions::new().read(true).write(true).open(&p) else {
            continue;
        };
        // SAFETY: MediaDeviceInfo is plain old data with the kernel's
        // layout; all-zero is a valid value.
        let mut info: MediaDeviceInfo = unsafe { std::mem::zeroed() };
        // SAFETY: MEDIA_IOC_DEVICE_INFO fills a struct media_device_info,
        // which `info` is (repr(C), same size), valid for the whole call.
        if unsafe { media_ioc_device_info(f.as_raw_fd(), &mut info) }.is_ok()
            && cstr(&info.bus_info) == bus_info
        {
            return Ok(p);
        }
    }
    bail!(
        "{}: no media controller device found (sysfs {} or a /dev/media* with bus_info {bus_info:?})",
        video_path.display(),
        dev_dir.display()
    )
}

fn mplane(f: &v4l2_format) -> &bindings::v4l2_pix_format_mplane {
    // SAFETY: every format this module sets or reads is of an _MPLANE
    // buffer type, for which the kernel uses the `pix_mp` member.
    unsafe { &f.fmt.pix_mp }
}

fn to_pix_format(f: &v4l2_format) -> PixFormat {
    let mp = mplane(f);
    let mut out = PixFormat {
        fourcc: mp.pixelformat,
        width: mp.width,
        height: mp.height,
        num_planes: u32::from(mp.num_planes).min(4),
        planes: [PlaneLayout::default(); 4],
    };
    for i in 0..out.num_planes as usize {
        let p = mp.plane_fmt[i];
        out.planes[i] = PlaneLayout {
            bytesperline: p.bytesperline,
            sizeimage: p.sizeimage,
        };
    }
    out
}

fn errno_of<E: std::fmt::Display>(what: &str, e: E) -> anyhow::Error {
    anyhow!("{what}: {e}")
}

impl V4l2Device {
    /// Opens `path` (and its media node), checks it is a streaming M2M
    /// multiplanar device, sets OUTPUT to `coded_fourcc` at `width` x
    /// `height` and CAPTURE to the first of YUV420M, NV12 and NV12M (P010
    /// when `ten_bit`) the device offers (three planes first: a daedalus
    /// daemon decodes them in place), allocates and maps the buffers (of `opts.memory`) and
    /// starts streaming.
    pub fn open(
        path: &Path,
        opts: &DeviceOptions,
        coded_fourcc: u32,
        width: u32,
        height: u32,
        ten_bit: bool,
    ) -> Result<Self> {
        let codec = fmt::codec_of(coded_fourcc)
            .ok_or_else(|| anyhow!("no codec for fourcc {}", fourcc_str(coded_fourcc)))?;
        let video = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let cap: v4l2_capability =
            vio::querycap(&video).map_err(|e| errno_of("VIDIOC_QUERYCAP", e))?;
        let caps = if cap.capabilities & bindings::V4L2_CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        let card = cstr(&cap.card);
        if caps & bindings::V4L2_CAP_VIDEO_M2M_MPLANE == 0 {
            bail!(
                "{} ({card}): not a multiplanar memory-to-memory device (caps {caps:#x})",
                path.display()
            );
        }
        if caps & bindings::V4L2_CAP_STREAMING == 0 {
            bail!("{} ({card}): no streaming I/O", path.display());
        }
        let bus_info = cstr(&cap.bus_info);
        let media_path = match &opts.media {
            Some(m) => m.clone(),
            None => find_media_node(&video, path, &bus_info)?,
        };
        let media = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&media_path)
            .with_context(|| format!("opening {}", media_path.display()))?;
        tracing::info!(
            "{}: {card} ({}), media node {}",
            path.display(),
            cstr(&cap.driver),
            media_path.display()
        );

        let mut video = video;
        // OUTPUT: the coded format.
        let mut f = v4l2_format {
            type_: OUT_Q as u32,
            ..Default::default()
        };
        {
            // SAFETY: writing the `pix_mp` member of the zeroed union, the
            // member an _MPLANE buffer type uses.
            let mp = unsafe { &mut f.fmt.pix_mp };
            mp.pixelformat = coded_fourcc;
            mp.width = width;
            mp.height = height;
            mp.num_planes = 1;
            mp.plane_fmt[0].sizeimage = (width * height * 3 / 2).max(MIN_OUTPUT_SIZE);
        }
        let got: v4l2_format =
            vio::s_fmt(&mut video, f).map_err(|e| errno_of("VIDIOC_S_FMT(OUTPUT)", e))?;
        let out_size = mplane(&got).plane_fmt[0].sizeimage as usize;
        if mplane(&got).pixelformat != coded_fourcc {
            bail!(
                "{}: the device does not decode {} (it chose {})",
                path.display(),
                fourcc_str(coded_fourcc),
                fourcc_str(mplane(&got).pixelformat)
            );
        }

        if let Some(c) = &opts.initial_controls {
            let mut storage = Vec::new();
            let mut ctrls = ext_controls(codec, c, &mut storage)?;
            if let Err(e) = vio::s_ext_ctrls(&video, CtrlWhich::Current, &mut ctrls[..]) {
                tracing::debug!("{}: initial controls refused: {e}", path.display());
            }
        }

        // CAPTURE: what the device offers for this coded format.
        let mut offered = Vec::new();
        for i in 0.. {
            match vio::enum_fmt::<v4l2_fmtdesc>(&video, CAP_Q, i) {
                Ok(d) => offered.push(d.pixelformat),
                Err(_) => break,
            }
        }
        let prefs: &[u32] = if ten_bit {
            &[fmt::PIX_FMT_P010]
        } else {
            &[fmt::PIX_FMT_YUV420M, fmt::PIX_FMT_NV12, fmt::PIX_FMT_NV12M]
        };
        let Some(&want) = prefs.iter().find(|p| offered.contains(p)) else {
            bail!(
                "{}: CAPTURE offers {:?}, none of {:?}",
                path.display(),
                offered.iter().map(|&f| fourcc_str(f)).collect::<Vec<_>>(),
                prefs.iter().map(|&f| fourcc_str(f)).collect::<Vec<_>>()
            );
        };
        let mut cf: v4l2_format =
            vio::g_fmt(&video, CAP_Q).map_err(|e| errno_of("VIDIOC_G_FMT(CAPTURE)", e))?;
        {
            // SAFETY: as above, the `pix_mp` member of an _MPLANE format.
            let mp = unsafe { &mut cf.fmt.pix_mp };
            mp.pixelformat = want;
        }
        let cf: v4l2_format =
            vio::s_fmt(&mut video, cf).map_err(|e| errno_of("VIDIOC_S_FMT(CAPTURE)", e))?;
        let cap_fmt = to_pix_format(&cf);
        if cap_fmt.fourcc != want {
            bail!(
                "{}: asked CAPTURE {}, the device chose {}",
                path.display(),
                fourcc_str(want),
                fourcc_str(cap_fmt.fourcc)
            );
        }
        if cap_fmt.width < width || cap_fmt.height < height {
            bail!(
                "{}: CAPTURE {}x{} is smaller than the coded {width}x{height}",
                path.display(),
                cap_fmt.width,
                cap_fmt.height
            );
        }

        let memory = opts.memory;
        let rb: v4l2_requestbuffers = vio::reqbufs(
            &video,
            OUT_Q,
            memory.v4l2(),
            OUTPUT_BUFFERS,
            vio::MemoryConsistency::empty(),
        )
        .map_err(|e| errno_of(&format!("VIDIOC_REQBUFS(OUTPUT, {})", memory.name()), e))?;
        if rb.capabilities & bindings::V4L2_BUF_CAP_SUPPORTS_REQUESTS == 0 {
            bail!(
                "{}: the OUTPUT queue does not support requests",
                path.display()
            );
        }
        let hold_supported =
            rb.capabilities & bindings::V4L2_BUF_CAP_SUPPORTS_M2M_HOLD_CAPTURE_BUF != 0;
        let n_out = rb.count;
        let rb: v4l2_requestbuffers = vio::reqbufs(
            &video,
            CAP_Q,
            memory.v4l2(),
            CAPTURE_BUFFERS,
            vio::MemoryConsistency::empty(),
        )
        .map_err(|e| errno_of(&format!("VIDIOC_REQBUFS(CAPTURE, {})", memory.name()), e))?;
        let n_cap = rb.count;
        if n_out == 0 || n_cap == 0 {
            bail!("{}: REQBUFS gave no buffers", path.display());
        }

        let map_all = |q: QueueType, n: u32| -> Result<Vec<Vec<PlaneMem>>> {
            (0..n)
                .map(|i| {
                    let qb: QueryBuffer = vio::querybuf(&video, q, i as usize)
                        .map_err(|e| errno_of("VIDIOC_QUERYBUF", e))?;
                    qb.planes
                        .iter()
                        .map(|p| {
                            vio::mmap(&video, p.mem_offset, p.length)
                                .map(PlaneMem::Mmap)
                                .map_err(|e| errno_of("mmap", e))
                        })
                        .collect()
                })
                .collect()
        };
        let (out_maps, cap_maps): (Vec<PlaneMem>, Vec<Vec<PlaneMem>>) = match memory {
            MemoryKind::Mmap => (
                map_all(OUT_Q, n_out)?
                    .into_iter()
                    .map(|mut v| v.swap_remove(0))
                    .collect(),
                map_all(CAP_Q, n_cap)?,
            ),
            MemoryKind::Userptr | MemoryKind::Dmabuf => (
                (0..n_out)
                    .map(|_| PlaneMem::new(memory, out_size))
                    .collect::<Result<_>>()?,
                (0..n_cap)
                    .map(|_| {
                        (0..cap_fmt.num_planes.max(1) as usize)
                            .map(|p| PlaneMem::new(memory, cap_fmt.planes[p].sizeimage as usize))
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<_>>()?,
            ),
        };

        for q in [OUT_Q, CAP_Q] {
            vio::streamon(&video, q).map_err(|e| errno_of("VIDIOC_STREAMON", e))?;
        }
        Ok(V4l2Device {
            out_maps,
            cap_maps,
            memory,
            in_flight: HashMap::new(),
            completing: Vec::new(),
            pool: Vec::new(),
            free_out: (0..n_out).rev().collect(),
            cap_fmt,
            codec,
            hold_supported,
            jobs: 0,
            requests_allocated: 0,
            video_path: path.to_owned(),
            media,
            video,
        })
    }

    fn take_request(&mut self) -> Result<Request> {
        if let Some(r) = self.pool.pop() {
            return Ok(r);
        }
        let r = Request::alloc(&self.media).map_err(|e| errno_of("MEDIA_IOC_REQUEST_ALLOC", e))?;
        self.requests_allocated += 1;
        Ok(r)
    }

    /// Returns a request to the pool once the kernel has completed it.
    fn recycle(&mut self, r: Request) -> Result<()> {
        match r.reinit() {
            Ok(()) => self.pool.push(r),
            Err(vio::RequestError::IoctlError(Errno::EBUSY)) => self.completing.push(r),
            Err(e) => return Err(errno_of("MEDIA_REQUEST_IOC_REINIT", e)),
        }
        Ok(())
    }

    fn dqbuf(&self, q: QueueType) -> Result<Option<UncheckedV4l2Buffer>> {
        match vio::dqbuf::<UncheckedV4l2Buffer>(&self.video, q) {
            Ok(b) => Ok(Some(b)),
            Err(IoctlConvertError::IoctlError(DqBufIoctlError::NotReady))
            | Err(IoctlConvertError::IoctlError(DqBufIoctlError::Eos)) => Ok(None),
            Err(e) => Err(errno_of(
                if q == OUT_Q {
                    "VIDIOC_DQBUF(OUTPUT)"
                } else {
                    "VIDIOC_DQBUF(CAPTURE)"
                },
                e,
            )),
        }
    }
}

/// The `v4l2_ext_control` array for `controls` of `codec`; compound payloads
/// are copied into `storage`, which must outlive the ioctl.
fn ext_controls(
    codec: Codec,
    controls: &ControlValues,
    storage: &mut Vec<Vec<u8>>,
) -> Result<Vec<v4l2_ext_control>> {
    let desc = codec.desc();

    let mut out = Vec::with_capacity(controls.len());
    for (id, bytes) in controls.iter() {
        let d = desc
            .find(id)
            .ok_or_else(|| anyhow!("control {id:#x} is not a {:?} control", codec))?;
        let mut c = v4l2_ext_control {
            id,
            ..Default::default()
        };
        if d.is_compound() {
            // Payloads are already in the kernel's layout; a dynamic
            // array passes as many elements as the bytes hold.
            storage.push(bytes.to_vec());
            let buf = storage.last_mut().expect("just pushed");
            c.size = buf.len() as u32;
            c.__bindgen_anon_1.p_u8 = buf.as_mut_ptr();
        } else {
            let mut v = [0u8; 4];
            let n = bytes.len().min(4);
            v[..n].copy_from_slice(&bytes[..n]);
            c.__bindgen_anon_1.value = i32::from_le_bytes(v);
        }
        out.push(c);
    }
    Ok(out)
}

impl Frontend for V4l2Device {
    fn capture_format(&self) -> PixFormat {
        self.cap_fmt
    }

    fn capture_count(&self) -> u32 {
        self.cap_maps.len() as u32
    }

    fn capture_planes(&self, index: u32) -> Vec<&[u8]> {
        self.cap_maps[index as usize]
            .iter()
            .map(|m| m.bytes())
            .collect()
    }

    fn queue_capture(&mut self, index: u32) -> Result<()> {
        let planes = &self.cap_maps[index as usize];
        // The CPU is done reading: ownership goes back to the device.
        for p in planes {
            p.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ)?;
        }
        let mut b = UncheckedV4l2Buffer::new_for_querybuf(CAP_Q, Some(index));
        b.0.memory = self.memory.v4l2() as u32;
        b.0.length = planes.len() as u32;
        if let Some(vp) = b.1.as_mut() {
            for (p, v) in planes.iter().zip(vp.iter_mut()) {
                p.fill(v);
            }
        }
        vio::qbuf::<_, ()>(&self.video, b)
            .map_err(|e| errno_of(&format!("VIDIOC_QBUF(CAPTURE {index})"), e))
    }

    fn can_submit(&self) -> bool {
        !self.free_out.is_empty()
    }

    fn submit(
        &mut self,
        controls: &ControlValues,
        bitstream: &[u8],
        timestamp: u64,
        hold: bool,
    ) -> Result<()> {
        if hold && !self.hold_supported {
            bail!(
                "{}: multi-slice pictures need V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF, which the device lacks",
                self.video_path.display()
            );
        }
        let index = *self
            .free_out
            .last()
            .ok_or_else(|| anyhow!("no free OUTPUT buffer"))?;
        let plane = &mut self.out_maps[index as usize];
        if bitstream.len() > plane.bytes().len() {
            bail!(
                "a {}-byte frame does not fit the {}-byte OUTPUT buffer",
                bitstream.len(),
                plane.bytes().len()
            );
        }
        plane.sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE)?;
        plane.bytes_mut()[..bitstream.len()].copy_from_slice(bitstream);
        plane.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE)?;
        let mut storage = Vec::new();
        let mut ctrls = ext_controls(self.codec, controls, &mut storage)?;
        let req = self.take_request()?;
        let r = (|| -> Result<()> {
            if let Err(e) = vio::s_ext_ctrls(
                &self.video,
                CtrlWhich::Request(req.as_raw_fd()),
                &mut ctrls[..],
            ) {
                let which = ctrls
                    .get(e.error_idx as usize)
                    .map_or(String::from("?"), |c| {
                        let id = c.id;
                        format!("{id:#x}")
                    });
                bail!("VIDIOC_S_EXT_CTRLS (request; control {which}): {e}");
            }
            let mut b = UncheckedV4l2Buffer::new_for_querybuf(OUT_Q, Some(index));
            b.0.memory = self.memory.v4l2() as u32;
            b.0.length = 1;
            b.0.flags = bindings::V4L2_BUF_FLAG_REQUEST_FD
                | if hold {
                    bindings::V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF
                } else {
                    0
                };
            b.0.__bindgen_anon_1.request_fd = req.as_raw_fd();
            b.0.timestamp = ns_to_timeval(timestamp);
            if let Some(planes) = b.1.as_mut() {
                self.out_maps[index as usize].fill(&mut planes[0]);
                planes[0].bytesused = bitstream.len().max(1) as u32;
            }
            vio::qbuf::<_, ()>(&self.video, b)
                .map_err(|e| errno_of(&format!("VIDIOC_QBUF(OUTPUT {index})"), e))?;
            req.queue()
                .map_err(|e| errno_of("MEDIA_REQUEST_IOC_QUEUE", e))
        })();
        match r {
            Ok(()) => {
                self.free_out.pop();
                self.in_flight.insert(index, req);
                self.jobs += 1;
                Ok(())
            }
            Err(e) => {
                // The request was never queued (or refused): make it
                // reusable; the OUTPUT buffer was not taken.
                let _ = req.reinit().map(|_| self.pool.push(req));
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        let cmd = v4l2_decoder_cmd {
            cmd: bindings::V4L2_DEC_CMD_FLUSH,
            ..Default::default()
        };
        vio::decoder_cmd::<_, ()>(&self.video, cmd)
            .map_err(|e| errno_of("VIDIOC_DECODER_CMD(FLUSH)", e))
    }

    fn outputs_in_flight(&self) -> usize {
        self.out_maps.len() - self.free_out.len()
    }

    fn poll(&mut self, timeout: Duration) -> Result<Vec<Picture>> {
        use rustix::event::{PollFd, PollFlags};
        let got_err;
        {
            let mut fds = vec![PollFd::new(
                &self.video,
                PollFlags::IN | PollFlags::OUT | PollFlags::RDNORM | PollFlags::WRNORM,
            )];
            for r in self.in_flight.values().chain(self.completing.iter()) {
                fds.push(PollFd::from_borrowed_fd(
                    // SAFETY: the request fd stays open while `self` is
                    // borrowed, that is for this whole block.
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(r.as_raw_fd()) },
                    PollFlags::PRI,
                ));
            }
            let ts = rustix::event::Timespec {
                tv_sec: timeout.as_secs() as i64,
                tv_nsec: timeout.subsec_nanos() as i64,
            };
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(errno_of("poll", e)),
            }
            got_err = fds[0].revents().contains(PollFlags::ERR);
        }
        while let Some(b) = self.dqbuf(OUT_Q)? {
            let index = b.0.index;
            if b.0.flags & bindings::V4L2_BUF_FLAG_ERROR != 0 {
                tracing::debug!("OUTPUT buffer {index} came back with ERROR");
            }
            if let Some(r) = self.in_flight.remove(&index) {
                self.recycle(r)?;
            }
            self.free_out.push(index);
        }
        for r in std::mem::take(&mut self.completing) {
            self.recycle(r)?;
        }
        let mut pics = Vec::new();
        while let Some(b) = self.dqbuf(CAP_Q)? {
            // The CPU may read the picture until the buffer is queued again.
            for p in &self.cap_maps[b.0.index as usize] {
                p.sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ)?;
            }
            pics.push(Picture {
                index: b.0.index,
                timestamp: timeval_to_ns(&b.0.timestamp),
                error: b.0.flags & bindings::V4L2_BUF_FLAG_ERROR != 0,
            });
        }
        if got_err && pics.is_empty() && self.in_flight.is_empty() {
            // Nothing queued on either side: the driver answers POLLERR at
            // once; wait like a poll with nothing to report would.
            std::thread::sleep(timeout.min(Duration::from_millis(50)));
        }
        Ok(pics)
    }
}

impl Drop for V4l2Device {
    fn drop(&mut self) {
        for q in [CAP_Q, OUT_Q] {
            let _ = vio::streamoff(&self.video, q);
        }
        tracing::info!(
            "{}: {} jobs, {} media requests allocated",
            self.video_path.display(),
            self.jobs,
            self.requests_allocated
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_like_the_kernel() {
        for ns in [0u64, 1000, 999_999_000, 1_000_000_000, 1_234_567_891_000] {
            assert_eq!(timeval_to_ns(&ns_to_timeval(ns)), ns);
        }
        let tv = ns_to_timeval(3_000_002_000);
        assert_eq!((tv.tv_sec, tv.tv_usec), (3, 2));
    }

    #[test]
    fn memory_kinds_parse() {
        for k in [MemoryKind::Mmap, MemoryKind::Userptr, MemoryKind::Dmabuf] {
            assert_eq!(MemoryKind::parse(k.name()).unwrap(), k);
        }
        assert!(MemoryKind::parse("overlay").is_err());
    }

    #[test]
    fn uapi_struct_sizes() {
        assert_eq!(std::mem::size_of::<DmaHeapAllocationData>(), 24);
        assert_eq!(std::mem::size_of::<UdmabufCreate>(), 24);
        assert_eq!(std::mem::size_of::<DmaBufSync>(), 8);
    }

    #[test]
    fn userptr_buffers_are_page_aligned_and_whole_pages() {
        let mut p = PlaneMem::new(MemoryKind::Userptr, 5000).unwrap();
        assert_eq!(p.bytes().as_ptr() as usize % PAGE, 0);
        assert_eq!(p.bytes().len(), 2 * PAGE);
        p.bytes_mut()[4999] = 7;
        let mut v = bindings::v4l2_plane::default();
        p.fill(&mut v);
        // SAFETY: reading the union member `fill` just wrote.
        assert_eq!(unsafe { v.m.userptr } as usize, p.bytes().as_ptr() as usize);
        assert_eq!(v.length as usize, 2 * PAGE);
    }

    #[test]
    fn media_device_info_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<MediaDeviceInfo>(), 256);
    }

    /// Parser for a stream file: `.h264` (`:slices` after the name for one
    /// slice per job, held CAPTURE buffers), `.hevc`, `.ivf` (VP8/VP9/AV1).
    fn parser_for(spec: &str) -> Box<dyn daedalus_client::StreamParser> {
        use daedalus_client::h264::Packing;
        let (path, slices) = match spec.strip_suffix(":slices") {
            Some(p) => (p, true),
            None => (spec, false),
        };
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let packing = if slices {
            Packing::SlicePerJob { annex_b: true }
        } else {
            Packing::PicturePerJob
        };
        match Path::new(path).extension().and_then(|e| e.to_str()) {
            Some("h264") => Box::new(daedalus_client::h264::H264Parser::new(data, packing)),
            Some("hevc") => Box::new(daedalus_client::hevc::HevcParser::new(data, packing)),
            Some("ivf") => match &data[8..12] {
                b"VP80" => Box::new(daedalus_client::vp8::Vp8Parser::new(data).unwrap()),
                b"VP90" => Box::new(daedalus_client::vp9::Vp9Parser::new(data).unwrap()),
                b"AV01" => Box::new(
                    daedalus_client::av1::Av1Parser::new(data, Default::default()).unwrap(),
                ),
                f => panic!("{path}: IVF fourcc {f:?}"),
            },
            _ => panic!("{path}: unknown stream type"),
        }
    }

    /// Every job of each stream through a real device: no request, control
    /// or buffer is refused, one CAPTURE buffer per picture comes back,
    /// none with ERROR. Run in the VM against visl by
    /// tests/vm/daedalus-device-visl.sh (and tests/vm/45-suite-visl.sh with
    /// `DAEDALUS_DEVICE_MEMORY=userptr|dmabuf`).
    #[test]
    #[ignore = "needs DAEDALUS_DEVICE=/dev/videoN and DAEDALUS_DEVICE_STREAMS=\"FILE...\""]
    fn decodes_streams_on_a_real_device() {
        let dev = std::env::var("DAEDALUS_DEVICE").expect("DAEDALUS_DEVICE");
        let streams = std::env::var("DAEDALUS_DEVICE_STREAMS").expect("DAEDALUS_DEVICE_STREAMS");
        let opts = DeviceOptions {
            media: None,
            memory: std::env::var("DAEDALUS_DEVICE_MEMORY")
                .map(|m| MemoryKind::parse(&m).unwrap())
                .unwrap_or_default(),
            initial_controls: None,
        };
        for spec in streams.split_whitespace() {
            let mut parser = parser_for(spec);
            let mut jobs = Vec::new();
            while let Some(j) = parser.next_job().unwrap() {
                jobs.push(j);
            }
            assert!(!jobs.is_empty(), "{spec}: no job");
            let first = &jobs[0];
            let mut d = V4l2Device::open(
                Path::new(&dev),
                &opts,
                fmt::fourcc_of(first.codec),
                first.picture.coded.0,
                first.picture.coded.1,
                first.picture.bit_depth > 8,
            )
            .unwrap_or_else(|e| panic!("{spec}: {e:#}"));
            for i in 0..d.capture_count() {
                d.queue_capture(i).unwrap();
            }
            let mut held: Vec<(u32, u64)> = Vec::new();
            let (mut pictures, mut errors) = (0usize, 0usize);
            let mut take = |pics: Vec<Picture>, held: &mut Vec<(u32, u64)>| {
                for p in pics {
                    pictures += 1;
                    errors += usize::from(p.error);
                    held.push((p.index, p.timestamp));
                }
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            for job in &jobs {
                while !d.can_submit() {
                    assert!(std::time::Instant::now() < deadline, "{spec}: stuck");
                    take(d.poll(Duration::from_millis(50)).unwrap(), &mut held);
                }
                let mut refs = Vec::new();
                (job.codec.desc().reference_timestamps)(&job.controls, &mut refs);
                let mut keep = Vec::new();
                for (i, ts) in held.drain(..) {
                    if refs.contains(&ts) {
                        keep.push((i, ts));
                    } else {
                        d.queue_capture(i).unwrap();
                    }
                }
                held = keep;
                d.submit(
                    &job.controls,
                    &job.bitstream,
                    job.timestamp,
                    job.flags.more_slices,
                )
                .unwrap_or_else(|e| panic!("{spec}: job {}: {e:#}", job.timestamp));
                take(d.poll(Duration::ZERO).unwrap(), &mut held);
            }
            d.flush().unwrap();
            while d.outputs_in_flight() > 0 {
                assert!(std::time::Instant::now() < deadline, "{spec}: stuck");
                take(d.poll(Duration::from_millis(50)).unwrap(), &mut held);
            }
            take(d.poll(Duration::from_millis(50)).unwrap(), &mut held);
            let want = jobs.iter().filter(|j| !j.flags.more_slices).count();
            eprintln!(
                "{spec}: {:?} {} jobs, {pictures} pictures, {errors} with ERROR, {} requests",
                first.codec,
                jobs.len(),
                d.requests_allocated
            );
            assert_eq!(pictures, want, "{spec}: pictures");
            assert_eq!(errors, 0, "{spec}: pictures with ERROR");
        }
    }

    #[test]
    fn opening_a_non_device_fails_with_the_ioctl_name() {
        let e = V4l2Device::open(
            Path::new("/dev/null"),
            &DeviceOptions::default(),
            fmt::PIX_FMT_H264_SLICE,
            64,
            64,
            false,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("VIDIOC_QUERYCAP"), "{e:#}");
    }
}
