//! AV1 backend on libdav1d (1.0 API), with hand-written bindings.
//!
//! One dav1d context per session, set up so that each job's picture comes
//! out of the job itself, in decode order: `max_frame_delay = 1` (no frame
//! pipelining), `output_invisible_frames = 1` (hidden frames such as
//! alt-refs are output too: their CAPTURE buffer is what a later
//! `show_existing_frame` displays), `apply_grain = 1` (film grain is applied
//! to the output, as FFmpeg's libdav1d decoder does by default; since the
//! grain depends only on the frame's own parameters and seed, a frame shown
//! later through `show_existing_frame` looks exactly like its CAPTURE
//! buffer).
//!
//! OUTPUT buffer: the frame's OBUs (low-overhead syntax with size fields,
//! possibly with a sequence header), or, as GStreamer queues it, the bare
//! payload of one `OBU_FRAME` (frame header and tile group without the OBU
//! header); the latter is wrapped in an OBU header here. When the buffer
//! carries no sequence header and the session's sequence control changed
//! (or dav1d never saw one), a sequence header OBU is synthesized from
//! `V4L2_CID_STATELESS_AV1_SEQUENCE` (see [`sequence_header_obu`] for what
//! the control cannot express).
//!
//! dav1d keeps its own eight reference slots. The backend tracks which job
//! fills each slot (from `refresh_frame_flags`) and checks every reference
//! the frame control names against them; a `show_existing_frame` of a key
//! frame (which refreshes every slot but never reaches the daemon as a job)
//! is replayed to dav1d as a synthesized frame header.
//!
//! Pictures come from the session's own `Dav1dPicAllocator`, with the
//! layout dav1d's default allocator uses, except that an 8-bit picture's
//! luma plane is allocated straight in the job's CAPTURE buffer when the
//! worker retains its memory ([`CaptureRetain`]), the stride and size cover
//! dav1d's 128-pixel padding, the buffer codes one frame and no film grain
//! is applied (dav1d then outputs a separate grained picture, while the
//! ungrained one is the reference). The picture holds a reference on the
//! CAPTURE memory until dav1d releases it; only its chroma is then
//! interleaved into the buffer. Other pictures are copied whole.
//!
//! All dav1d FFI of the daemon is in this module.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::Arc;

use decoder_core::ctrl::av1::{
    V4l2CtrlAv1Frame, V4l2CtrlAv1Sequence, V4L2_AV1_KEY_FRAME, V4L2_AV1_SEQUENCE_FLAG_COLOR_RANGE,
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_CDEF, V4L2_AV1_SEQUENCE_FLAG_ENABLE_DUAL_FILTER,
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_FILTER_INTRA, V4L2_AV1_SEQUENCE_FLAG_ENABLE_INTERINTRA_COMPOUND,
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_INTRA_EDGE_FILTER, V4L2_AV1_SEQUENCE_FLAG_ENABLE_JNT_COMP,
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_MASKED_COMPOUND, V4L2_AV1_SEQUENCE_FLAG_ENABLE_ORDER_HINT,
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_REF_FRAME_MVS, V4L2_AV1_SEQUENCE_FLAG_ENABLE_RESTORATION,
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_SUPERRES, V4L2_AV1_SEQUENCE_FLAG_ENABLE_WARPED_MOTION,
    V4L2_AV1_SEQUENCE_FLAG_FILM_GRAIN_PARAMS_PRESENT, V4L2_AV1_SEQUENCE_FLAG_MONO_CHROME,
    V4L2_AV1_SEQUENCE_FLAG_SEPARATE_UV_DELTA_Q, V4L2_AV1_SEQUENCE_FLAG_STILL_PICTURE,
    V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_X, V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_Y,
    V4L2_AV1_SEQUENCE_FLAG_USE_128X128_SUPERBLOCK,
};
use decoder_core::ctrl::Codec;

use super::{
    pixcopy, Backend, CapturePlane, CaptureRetain, CaptureTarget, DecodeError, DecodeOutcome,
    JobInput, RetainedChroma,
};

mod ffi {
    //! The parts of `<dav1d/dav1d.h>` (dav1d 1.0, API 6) this backend uses.
    #![allow(non_camel_case_types, missing_docs)]

    use std::ffi::{c_char, c_int, c_uint, c_void};

    #[repr(C)]
    pub struct Dav1dUserData {
        pub data: *const u8,
        pub r#ref: *mut c_void,
    }

    #[repr(C)]
    pub struct Dav1dDataProps {
        pub timestamp: i64,
        pub duration: i64,
        pub offset: i64,
        pub size: usize,
        pub user_data: Dav1dUserData,
    }

    #[repr(C)]
    pub struct Dav1dData {
        pub data: *const u8,
        pub sz: usize,
        pub r#ref: *mut c_void,
        pub m: Dav1dDataProps,
    }

    #[repr(C)]
    pub struct Dav1dPictureParameters {
        pub w: c_int,
        pub h: c_int,
        pub layout: c_int,
        pub bpc: c_int,
    }

    #[repr(C)]
    pub struct Dav1dPicture {
        pub seq_hdr: *mut c_void,
        pub frame_hdr: *mut c_void,
        pub data: [*mut c_void; 3],
        pub stride: [isize; 2],
        pub p: Dav1dPictureParameters,
        pub m: Dav1dDataProps,
        pub content_light: *mut c_void,
        pub mastering_display: *mut c_void,
        pub itut_t35: *mut c_void,
        pub reserved: [usize; 4],
        pub frame_hdr_ref: *mut c_void,
        pub seq_hdr_ref: *mut c_void,
        pub content_light_ref: *mut c_void,
        pub mastering_display_ref: *mut c_void,
        pub itut_t35_ref: *mut c_void,
        pub reserved_ref: [usize; 4],
        pub r#ref: *mut c_void,
        pub allocator_data: *mut c_void,
    }

    #[repr(C)]
    pub struct Dav1dPicAllocator {
        pub cookie: *mut c_void,
        pub alloc_picture_callback:
            Option<unsafe extern "C" fn(pic: *mut Dav1dPicture, cookie: *mut c_void) -> c_int>,
        pub release_picture_callback:
            Option<unsafe extern "C" fn(pic: *mut Dav1dPicture, cookie: *mut c_void)>,
    }

    #[repr(C)]
    pub struct Dav1dLogger {
        pub cookie: *mut c_void,
        /// The last argument is a `va_list` (a pointer on x86_64 and
        /// aarch64 as passed to a callee); we never install a callback.
        pub callback:
            Option<unsafe extern "C" fn(cookie: *mut c_void, fmt: *const c_char, ap: *mut c_void)>,
    }

    #[repr(C)]
    pub struct Dav1dSettings {
        pub n_threads: c_int,
        pub max_frame_delay: c_int,
        pub apply_grain: c_int,
        pub operating_point: c_int,
        pub all_layers: c_int,
        pub frame_size_limit: c_uint,
        pub allocator: Dav1dPicAllocator,
        pub logger: Dav1dLogger,
        pub strict_std_compliance: c_int,
        pub output_invisible_frames: c_int,
        pub inloop_filters: c_int,
        pub reserved: [u8; 20],
    }

    /// Opaque decoder context.
    #[repr(C)]
    pub struct Dav1dContext {
        _private: [u8; 0],
    }

    pub const DAV1D_PIXEL_LAYOUT_I400: c_int = 0;
    pub const DAV1D_PIXEL_LAYOUT_I420: c_int = 1;
    pub const DAV1D_PIXEL_LAYOUT_I444: c_int = 3;

    #[link(name = "dav1d")]
    extern "C" {
        pub fn dav1d_version() -> *const c_char;
        pub fn dav1d_default_settings(s: *mut Dav1dSettings);
        pub fn dav1d_open(c_out: *mut *mut Dav1dContext, s: *const Dav1dSettings) -> c_int;
        pub fn dav1d_send_data(c: *mut Dav1dContext, data: *mut Dav1dData) -> c_int;
        pub fn dav1d_get_picture(c: *mut Dav1dContext, out: *mut Dav1dPicture) -> c_int;
        pub fn dav1d_close(c_out: *mut *mut Dav1dContext);
        pub fn dav1d_flush(c: *mut Dav1dContext);
        pub fn dav1d_picture_unref(p: *mut Dav1dPicture);
        pub fn dav1d_data_create(data: *mut Dav1dData, sz: usize) -> *mut u8;
        pub fn dav1d_data_unref(data: *mut Dav1dData);
    }

    // Layout checks against the dav1d 1.0.0 headers (x86_64 / aarch64).
    #[cfg(target_pointer_width = "64")]
    const _: () = {
        assert!(std::mem::size_of::<Dav1dSettings>() == 96);
        assert!(std::mem::offset_of!(Dav1dSettings, allocator) == 24);
        assert!(std::mem::offset_of!(Dav1dSettings, logger) == 48);
        assert!(std::mem::offset_of!(Dav1dSettings, output_invisible_frames) == 68);
        assert!(std::mem::size_of::<Dav1dData>() == 72);
        assert!(std::mem::size_of::<Dav1dDataProps>() == 48);
        assert!(std::mem::size_of::<Dav1dPicture>() == 264);
        assert!(std::mem::offset_of!(Dav1dPicture, p) == 56);
        assert!(std::mem::offset_of!(Dav1dPicture, m) == 72);
        assert!(std::mem::offset_of!(Dav1dPicture, r#ref) == 248);
    };
}

/// `DAV1D_ERR(EAGAIN)`.
const EAGAIN: c_int = -11;

/// The libdav1d version string.
pub fn version() -> String {
    // SAFETY: dav1d_version returns a pointer to a static NUL-terminated
    // string.
    unsafe { CStr::from_ptr(ffi::dav1d_version()) }
        .to_string_lossy()
        .into_owned()
}

/// Settings of a dav1d session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dav1dConfig {
    /// dav1d worker threads (tile and post-filter threads with a frame
    /// delay of 1). 1 by default: one job is in flight per session, and the
    /// machine's cores are shared by every session.
    pub n_threads: u32,
    /// Apply film grain to the output (FFmpeg's default too).
    pub apply_grain: bool,
}

impl Default for Dav1dConfig {
    fn default() -> Self {
        Self {
            n_threads: 1,
            apply_grain: true,
        }
    }
}

impl Dav1dConfig {
    /// Environment variable overriding [`Dav1dConfig::n_threads`] for the
    /// sessions [`Dav1dAv1::new`] opens.
    pub const THREADS_ENV: &'static str = "DAEDALUS_DAV1D_THREADS";

    /// The defaults, with `n_threads` from [`Self::THREADS_ENV`] when it
    /// holds a number from 1 to 256.
    pub fn from_env() -> Self {
        let mut c = Self::default();
        if let Some(n) = std::env::var(Self::THREADS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|n| (1..=256).contains(n))
        {
            c.n_threads = n;
        }
        c
    }
}

/// `DAV1D_PICTURE_ALIGNMENT`: alignment of plane starts, and padding
/// after each plane.
const PICTURE_ALIGNMENT: usize = 64;

/// The job's CAPTURE luma plane, offered to the picture allocator.
struct InPlaceTarget {
    ptr: *mut u8,
    /// Bytes valid from `ptr` ([`CaptureRetain::luma_extent`]).
    extent: usize,
    stride: usize,
    keep: Arc<dyn Send + Sync>,
    /// The Cb and Cr planes of a three-plane (YUV420) target.
    chroma: Option<RetainedChroma>,
}

/// State of the session's `Dav1dPicAllocator` (its cookie).
struct AllocState {
    /// Offered for the next picture allocated; taken by it.
    target: Option<InPlaceTarget>,
    /// Pictures allocated in a CAPTURE buffer so far.
    in_place_allocs: u64,
    /// Private plane memory of released pictures, for the next ones.
    pool: Arc<BlockPool>,
}

/// A heap block of private picture planes.
struct Block {
    ptr: ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: a `Block` owns its memory exclusively (no aliasing pointer
// outlives the picture that used it), so it may be freed or reused on
// any thread.
unsafe impl Send for Block {}

impl Block {
    fn new(layout: std::alloc::Layout) -> Option<Self> {
        // SAFETY: callers pass a non-zero size; null checked.
        ptr::NonNull::new(unsafe { std::alloc::alloc(layout) }).map(|ptr| Block { ptr, layout })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in `Block::new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Released private plane blocks kept for reuse, as dav1d's own picture
/// pool does: a new heap block per picture is faulted in afresh whenever
/// the allocator has returned the last one's pages to the kernel.
#[derive(Default)]
struct BlockPool {
    free: parking_lot::Mutex<Vec<Block>>,
}

/// Blocks a pool keeps: every reference slot plus the pictures in flight.
const POOL_MAX: usize = 12;

impl BlockPool {
    fn take(&self, layout: std::alloc::Layout) -> Option<Block> {
        let mut free = self.free.lock();
        match free.iter().position(|b| b.layout == layout) {
            Some(i) => Some(free.swap_remove(i)),
            None => {
                // Another size now: the old blocks are of no use.
                free.clear();
                drop(free);
                Block::new(layout)
            }
        }
    }

    fn put(&self, b: Block) {
        let mut free = self.free.lock();
        if free.len() < POOL_MAX {
            free.push(b);
        }
    }
}

/// Memory of one picture, freed by the release callback.
struct PicMemory {
    /// Heap block of the private planes, back to `pool` when released.
    block: Option<Block>,
    pool: Arc<BlockPool>,
    /// The CAPTURE buffer the luma plane lives in, kept mapped.
    _keep: Option<Arc<dyn Send + Sync>>,
}

impl Drop for PicMemory {
    fn drop(&mut self) {
        if let Some(b) = self.block.take() {
            self.pool.put(b);
        }
    }
}

const fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

/// dav1d's picture allocator: the layout dav1d's own allocator uses
/// (planes padded to 128x128 pixels, strides nudged off multiples of 1024
/// bytes), except that an 8-bit 4:2:0 or 4:0:0 picture's luma plane goes
/// into the offered CAPTURE buffer when its stride and size allow.
unsafe extern "C" fn alloc_picture(pic: *mut ffi::Dav1dPicture, cookie: *mut c_void) -> c_int {
    // SAFETY: `cookie` is the session's boxed `AllocState`, alive until
    // after dav1d_close; dav1d calls this on the thread inside
    // dav1d_send_data / dav1d_get_picture, where no other reference to it
    // is live.
    let st = unsafe { &mut *cookie.cast::<AllocState>() };
    // SAFETY: dav1d passes a picture whose parameters are set.
    let p = unsafe { &mut *pic };
    let (w, h) = (p.p.w.max(1) as usize, p.p.h.max(1) as usize);
    let hbd = usize::from(p.p.bpc > 8);
    let has_chroma = p.p.layout != ffi::DAV1D_PIXEL_LAYOUT_I400;
    let ss_ver = usize::from(p.p.layout == ffi::DAV1D_PIXEL_LAYOUT_I420);
    let ss_hor = usize::from(p.p.layout != ffi::DAV1D_PIXEL_LAYOUT_I444);
    let (aw, ah) = (align_up(w, 128), align_up(h, 128));
    let mut y_stride = aw << hbd;
    let mut uv_stride = if has_chroma { y_stride >> ss_hor } else { 0 };
    if y_stride % 1024 == 0 {
        y_stride += PICTURE_ALIGNMENT;
    }
    if has_chroma && uv_stride % 1024 == 0 {
        uv_stride += PICTURE_ALIGNMENT;
    }
    let uv_size = uv_stride * (ah >> ss_ver);
    // The offered CAPTURE luma plane, if this picture fits it.
    let target = st.target.take().filter(|t| {
        p.p.bpc == 8
            && (p.p.layout == ffi::DAV1D_PIXEL_LAYOUT_I420 || !has_chroma)
            && t.stride >= aw
            && t.stride.is_multiple_of(PICTURE_ALIGNMENT)
            && (t.ptr as usize).is_multiple_of(PICTURE_ALIGNMENT)
            && t.stride
                .checked_mul(ah)
                .and_then(|n| n.checked_add(PICTURE_ALIGNMENT))
                .is_some_and(|n| n <= t.extent)
    });
    // With three planes, the chroma planes too.
    let chroma_target = target.as_ref().and_then(|t| t.chroma).filter(|c| {
        has_chroma
            && c.stride >= aw >> 1
            && c.stride.is_multiple_of(PICTURE_ALIGNMENT)
            && c.ptr
                .iter()
                .all(|q| (*q as usize).is_multiple_of(PICTURE_ALIGNMENT))
            && c.stride
                .checked_mul(ah >> 1)
                .and_then(|n| n.checked_add(PICTURE_ALIGNMENT))
                .is_some_and(|n| c.extent.iter().all(|e| n <= *e))
    });
    let y_size = if target.is_some() {
        0
    } else {
        y_stride * ah + PICTURE_ALIGNMENT
    };
    let uv_total = if has_chroma && chroma_target.is_none() {
        2 * (uv_size + PICTURE_ALIGNMENT)
    } else {
        0
    };
    let total = y_size + uv_total;
    let mut mem = PicMemory {
        block: None,
        pool: st.pool.clone(),
        _keep: None,
    };
    if total > 0 {
        let Ok(layout) = std::alloc::Layout::from_size_align(total, PICTURE_ALIGNMENT) else {
            return -12; // DAV1D_ERR(ENOMEM)
        };
        let Some(block) = st.pool.take(layout) else {
            return -12;
        };
        mem.block = Some(block);
    }
    let base = mem
        .block
        .as_ref()
        .map_or(ptr::null_mut(), |b| b.ptr.as_ptr());
    // SAFETY: offsets within the block just allocated (`total` bytes).
    let at = |off: usize| unsafe { base.add(off) };
    match target {
        Some(t) => {
            p.data[0] = t.ptr.cast();
            p.stride[0] = t.stride as isize;
            mem._keep = Some(t.keep);
            st.in_place_allocs += 1;
        }
        None => {
            p.data[0] = at(0).cast();
            p.stride[0] = y_stride as isize;
        }
    }
    if let Some(c) = chroma_target {
        p.data[1] = c.ptr[0].cast();
        p.data[2] = c.ptr[1].cast();
        uv_stride = c.stride;
    } else if has_chroma {
        p.data[1] = at(y_size).cast();
        p.data[2] = at(y_size + uv_size + PICTURE_ALIGNMENT).cast();
    } else {
        p.data[1] = ptr::null_mut();
        p.data[2] = ptr::null_mut();
    }
    p.stride[1] = uv_stride as isize;
    p.allocator_data = Box::into_raw(Box::new(mem)).cast();
    0
}

/// Frees what [`alloc_picture`] allocated.
unsafe extern "C" fn release_picture(pic: *mut ffi::Dav1dPicture, _cookie: *mut c_void) {
    // SAFETY: `allocator_data` is the `PicMemory` box of `alloc_picture`;
    // dav1d releases each picture once (from any thread: dropping the box
    // only frees memory and drops an `Arc`).
    drop(unsafe { Box::from_raw((*pic).allocator_data.cast::<PicMemory>()) });
}

/// An AV1 decoding session on dav1d.
pub struct Dav1dAv1 {
    ctx: *mut ffi::Dav1dContext,
    config: Dav1dConfig,
    /// Job timestamp held by each of dav1d's reference slots.
    slots: [Option<u64>; 8],
    /// Timestamps of the key frames held in some slot.
    key_frames: Vec<u64>,
    /// The sequence control dav1d last got a sequence header for (from the
    /// bitstream or synthesized).
    seq_sent: Option<SeqKey>,
    waiting_for_key: bool,
    replays: u64,
    /// Screen content / integer MV setting of the last sequence header
    /// synthesized that decoded.
    tool_choice: ToolChoice,
    /// The picture allocator's state (freed after the context).
    alloc: *mut AllocState,
    /// Pictures whose luma plane dav1d decoded straight into their CAPTURE
    /// buffer.
    in_place: u64,
    /// Pictures whose every plane dav1d decoded into their CAPTURE buffer.
    whole_in_place: u64,
    /// The current job's CAPTURE memory, retained (set around a decode).
    retain: Option<CaptureRetain>,
}

// SAFETY: a dav1d context has no thread affinity; it must only not be used
// from two threads at once, which `&mut self` on every method guarantees.
unsafe impl Send for Dav1dAv1 {}

impl std::fmt::Debug for Dav1dAv1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dav1dAv1")
            .field("config", &self.config)
            .field("slots", &self.slots)
            .field("waiting_for_key", &self.waiting_for_key)
            .finish()
    }
}

impl Drop for Dav1dAv1 {
    fn drop(&mut self) {
        // SAFETY: the allocator state lives until the end of this function;
        // dav1d is not running.
        let allocs = unsafe { (*self.alloc).in_place_allocs };
        tracing::debug!(
            in_place = self.in_place,
            whole_in_place = self.whole_in_place,
            in_place_allocs = allocs,
            "dav1d session closed"
        );
        // SAFETY: ctx came from dav1d_open and is closed once; dav1d_close
        // sets it to NULL.
        unsafe { ffi::dav1d_close(&mut self.ctx) };
        // SAFETY: created by Box::into_raw in `with_config`; dav1d, closed,
        // no longer calls the allocator.
        drop(unsafe { Box::from_raw(self.alloc) });
    }
}

/// A picture returned by dav1d, unreferenced on drop.
struct Picture(ffi::Dav1dPicture);

impl Drop for Picture {
    fn drop(&mut self) {
        // SAFETY: the picture was filled by dav1d_get_picture and is
        // unreferenced exactly once.
        unsafe { ffi::dav1d_picture_unref(&mut self.0) };
    }
}

impl Dav1dAv1 {
    /// A session with the default settings ([`Dav1dConfig::from_env`]).
    pub fn new() -> Result<Self, DecodeError> {
        Self::with_config(Dav1dConfig::from_env())
    }

    /// A session with the given settings.
    pub fn with_config(config: Dav1dConfig) -> Result<Self, DecodeError> {
        // SAFETY: Dav1dSettings is plain data; an all-zero value is valid
        // and is overwritten by dav1d_default_settings.
        let mut s: ffi::Dav1dSettings = unsafe { std::mem::zeroed() };
        // SAFETY: s is a valid, writable Dav1dSettings.
        unsafe { ffi::dav1d_default_settings(&mut s) };
        s.n_threads = config.n_threads.clamp(1, 256) as c_int;
        s.max_frame_delay = 1;
        s.apply_grain = c_int::from(config.apply_grain);
        s.output_invisible_frames = 1;
        s.all_layers = 0;
        s.logger.callback = None;
        let alloc = Box::into_raw(Box::new(AllocState {
            target: None,
            in_place_allocs: 0,
            pool: Arc::default(),
        }));
        s.allocator = ffi::Dav1dPicAllocator {
            cookie: alloc.cast(),
            alloc_picture_callback: Some(alloc_picture),
            release_picture_callback: Some(release_picture),
        };
        let mut ctx = ptr::null_mut();
        // SAFETY: ctx and s are valid pointers for the call; s is only read.
        let r = unsafe { ffi::dav1d_open(&mut ctx, &s) };
        if r < 0 || ctx.is_null() {
            // SAFETY: not handed to a context.
            drop(unsafe { Box::from_raw(alloc) });
            return Err(DecodeError::Internal(format!("dav1d_open failed ({r})")));
        }
        Ok(Self {
            ctx,
            config,
            slots: [None; 8],
            key_frames: Vec::new(),
            seq_sent: None,
            waiting_for_key: true,
            replays: 0,
            tool_choice: TOOL_CHOICES[0],
            alloc,
            in_place: 0,
            whole_in_place: 0,
            retain: None,
        })
    }

    /// Pictures of this session whose luma plane dav1d decoded straight
    /// into their CAPTURE buffer (only the chroma was copied).
    pub fn in_place_pictures(&self) -> u64 {
        self.in_place
    }

    /// Pictures of this session dav1d decoded wholly into their
    /// (three-plane) CAPTURE buffer: nothing was copied.
    pub fn whole_in_place_pictures(&self) -> u64 {
        self.whole_in_place
    }

    /// Offers (or with `None` withdraws) a CAPTURE luma plane to the next
    /// picture dav1d allocates.
    fn offer(&mut self, target: Option<InPlaceTarget>) {
        // SAFETY: the allocator state is only touched by the callbacks,
        // which run inside dav1d calls, not now.
        unsafe { (*self.alloc).target = target };
    }

    /// How many key-frame `show_existing_frame` headers were replayed to
    /// dav1d so far.
    pub fn replayed_key_frame_shows(&self) -> u64 {
        self.replays
    }

    /// Sends `bytes` (timestamped `ts`) and returns every picture dav1d
    /// outputs for them.
    fn feed(&mut self, bytes: &[u8], ts: u64) -> Result<Vec<Picture>, DecodeError> {
        // SAFETY: Dav1dData is plain data; zero is its documented initial
        // state.
        let mut data: ffi::Dav1dData = unsafe { std::mem::zeroed() };
        // SAFETY: data is valid; dav1d allocates bytes.len() bytes.
        let buf = unsafe { ffi::dav1d_data_create(&mut data, bytes.len()) };
        if buf.is_null() {
            return Err(DecodeError::Internal("dav1d_data_create failed".into()));
        }
        // SAFETY: buf points to bytes.len() writable bytes owned by data.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
        data.m.timestamp = ts as i64;
        let mut pics = Vec::new();
        let mut err = None;
        while data.sz > 0 {
            // SAFETY: ctx is open; data is a valid Dav1dData owning its
            // buffer.
            let r = unsafe { ffi::dav1d_send_data(self.ctx, &mut data) };
            if r == EAGAIN {
                match self.get_picture()? {
                    Some(p) => pics.push(p),
                    None => {
                        err = Some(DecodeError::Internal(
                            "dav1d neither takes data nor outputs pictures".into(),
                        ));
                        break;
                    }
                }
            } else if r < 0 {
                err = Some(DecodeError::Corrupt(format!("dav1d_send_data: error {r}")));
                break;
            }
        }
        if data.sz > 0 {
            // SAFETY: the data was not consumed and is still ours to release.
            unsafe { ffi::dav1d_data_unref(&mut data) };
        }
        if let Some(e) = err {
            return Err(e);
        }
        while let Some(p) = self.get_picture()? {
            pics.push(p);
        }
        Ok(pics)
    }

    fn get_picture(&mut self) -> Result<Option<Picture>, DecodeError> {
        // SAFETY: Dav1dPicture is plain data; zeroed is the expected input.
        let mut pic: ffi::Dav1dPicture = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is open and pic writable.
        let r = unsafe { ffi::dav1d_get_picture(self.ctx, &mut pic) };
        if r == EAGAIN {
            Ok(None)
        } else if r < 0 {
            Err(DecodeError::Corrupt(format!(
                "dav1d_get_picture: error {r}"
            )))
        } else {
            Ok(Some(Picture(pic)))
        }
    }

    /// Replays a `show_existing_frame` of the key frame `ts` when the job's
    /// reference slots say one happened (every slot holds `ts`) but dav1d's
    /// slots do not.
    fn replay_key_frame_show(&mut self, f: &V4l2CtrlAv1Frame) -> Result<(), DecodeError> {
        let ts = f.reference_frame_ts[0];
        if f.reference_frame_ts.iter().any(|t| *t != ts)
            || self.slots.iter().all(|s| *s == Some(ts))
            || !self.key_frames.contains(&ts)
        {
            return Ok(());
        }
        let Some(idx) = self.slots.iter().position(|s| *s == Some(ts)) else {
            return Ok(());
        };
        // frame_header_obu(): show_existing_frame = 1, frame_to_show_map_idx,
        // trailing bits (no decoder model timing, no frame ids).
        let payload = (0x80 | ((idx as u8) << 4)) | 0x08;
        let obu = [0x12, 0x00, 0x1a, 0x01, payload];
        let pics = self.feed(&obu, ts)?;
        drop(pics);
        self.slots = [Some(ts); 8];
        self.replays += 1;
        Ok(())
    }

    fn decode_frame(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
    ) -> Result<DecodeOutcome, DecodeError> {
        let frame = job
            .controls
            .get::<V4l2CtrlAv1Frame>()
            .ok_or_else(|| DecodeError::InvalidControls("no AV1 frame control".into()))?;
        let seq = job
            .controls
            .get::<V4l2CtrlAv1Sequence>()
            .ok_or_else(|| DecodeError::InvalidControls("no AV1 sequence control".into()))?;
        let key = frame.frame_type == V4L2_AV1_KEY_FRAME;
        if self.waiting_for_key && !key {
            return Err(DecodeError::WaitingForKeyframe);
        }
        if !frame.is_intra() {
            self.replay_key_frame_show(&frame)?;
            for i in frame.ref_frame_idx {
                let slot = usize::try_from(i)
                    .ok()
                    .filter(|s| *s < 8)
                    .ok_or_else(|| DecodeError::InvalidControls(format!("ref_frame_idx {i}")))?;
                let want = frame.reference_frame_ts[slot];
                if self.slots[slot] != Some(want) {
                    self.reset();
                    return Err(DecodeError::MissingReference(want));
                }
            }
        }
        for r in job.references {
            if !self.slots.contains(&Some(*r)) {
                self.reset();
                return Err(DecodeError::MissingReference(*r));
            }
        }

        let obus = obu_types(job.bitstream);
        let has_seq = obus
            .as_ref()
            .is_some_and(|t| t.contains(&OBU_SEQUENCE_HEADER));
        let seq_bytes = seq_key(&seq);
        let mut frame_obu = Vec::new();
        let frame_bytes: &[u8] = match obus {
            Some(_) => job.bitstream,
            None => {
                // GStreamer: the payload of one OBU_FRAME.
                frame_obu.push(OBU_FRAME << 3 | 0x02);
                leb128(&mut frame_obu, job.bitstream.len() as u64);
                frame_obu.extend_from_slice(job.bitstream);
                &frame_obu
            }
        };
        // Sequence header choices to try: none needed, or the synthesized
        // header with each screen-content / integer-MV setting that agrees
        // with the frame header bits, the last one that worked first. Only a
        // key frame may start a sequence, so only a key frame tries several.
        let choices: Vec<Option<ToolChoice>> = if has_seq || self.seq_sent == Some(seq_bytes) {
            vec![None]
        } else {
            let header = first_frame_header_payload(frame_bytes);
            let mut c: Vec<ToolChoice> = Vec::new();
            for choice in std::iter::once(self.tool_choice).chain(TOOL_CHOICES) {
                let agrees = match header {
                    Some(h) => frame_header_agrees(h, choice, &seq, &frame) != Some(false),
                    None => true,
                };
                if agrees && !c.contains(&choice) {
                    c.push(choice);
                }
            }
            if c.is_empty() {
                c.push(self.tool_choice);
            }
            if !key {
                c.truncate(1);
            }
            c.into_iter().map(Some).collect()
        };
        // The picture may be decoded into the CAPTURE buffer when its memory
        // is retained, it is 8-bit NV12, the buffer codes exactly one frame
        // (the first picture allocated is the job's) and no film grain is
        // applied (dav1d would output a separate, grained picture while
        // the ungrained one is the reference).
        let one_frame = obus.as_ref().is_none_or(|t| {
            t.iter()
                .filter(|&&o| o == OBU_FRAME || o == OBU_FRAME_HEADER)
                .count()
                == 1
        });
        let grain = self.config.apply_grain
            && seq.flags & V4L2_AV1_SEQUENCE_FLAG_FILM_GRAIN_PARAMS_PRESENT != 0;
        let in_place = self
            .retain
            .as_ref()
            .filter(|r| out.format.bit_depth() == 8 && r.covers(out) && one_frame && !grain)
            .map(|r| {
                let chroma = r.chroma_planes(out);
                (
                    r.clone(),
                    out.luma.data.as_mut_ptr(),
                    out.luma.stride,
                    chroma,
                )
            });
        let mut result = Err(DecodeError::Corrupt("no attempt".into()));
        for (i, choice) in choices.iter().enumerate() {
            if i > 0 {
                // A failed attempt with another sequence header: start over.
                // SAFETY: ctx is open.
                unsafe { ffi::dav1d_flush(self.ctx) };
            }
            let mut bytes = Vec::with_capacity(frame_bytes.len() + 32);
            if let Some(c) = choice {
                bytes.extend(sequence_header_obu_with(&seq, *c)?);
            }
            bytes.extend_from_slice(frame_bytes);
            self.offer(
                in_place
                    .as_ref()
                    .map(|(r, ptr, stride, chroma)| InPlaceTarget {
                        ptr: *ptr,
                        extent: r.luma_extent(),
                        stride: *stride,
                        keep: r.keep_alive(),
                        chroma: *chroma,
                    }),
            );
            let fed = self.feed(&bytes, job.timestamp);
            self.offer(None);
            result = fed.and_then(|pics| {
                let last = pics.last().map(|p| p.0.m.timestamp);
                match last {
                    None => Err(DecodeError::Corrupt("dav1d output no picture".into())),
                    Some(t) if t != job.timestamp as i64 => Err(DecodeError::Corrupt(format!(
                        "dav1d output picture {t} for job {}",
                        job.timestamp
                    ))),
                    Some(_) => Ok(pics),
                }
            });
            if result.is_ok() {
                if let Some(c) = choice {
                    self.tool_choice = *c;
                }
                break;
            }
        }
        let pics = result?;
        self.seq_sent = Some(seq_bytes);
        let pic = &pics.last().expect("checked above").0;
        let at = |i: usize, p: &CapturePlane<'_>| {
            pic.data[i].cast_const().cast::<u8>() == p.data.as_ptr()
                && pic.stride[usize::from(i > 0)] == p.stride as isize
        };
        let luma_in_place = pic.p.bpc == 8 && out.format.bit_depth() == 8 && at(0, &out.luma);
        if luma_in_place
            && pic.p.layout == ffi::DAV1D_PIXEL_LAYOUT_I420
            && at(1, &out.chroma)
            && out.cr.as_ref().is_some_and(|cr| at(2, cr))
        {
            // dav1d decoded every plane into the CAPTURE buffer.
            self.in_place += 1;
            self.whole_in_place += 1;
        } else if luma_in_place {
            // dav1d decoded the luma plane into the CAPTURE buffer.
            copy_picture(pic, out, false)?;
            self.in_place += 1;
        } else {
            copy_picture(pic, out, true)?;
        }

        if key {
            self.waiting_for_key = false;
        }
        for i in 0..8 {
            if frame.refresh_frame_flags & (1 << i) != 0 {
                self.slots[i] = Some(job.timestamp);
            }
        }
        if key {
            self.key_frames.push(job.timestamp);
        }
        let slots = self.slots;
        self.key_frames.retain(|t| slots.contains(&Some(*t)));
        Ok(DecodeOutcome::Decoded)
    }
}

/// The fields of a sequence control that go into a sequence header.
type SeqKey = (u32, u8, u8, u8, u16, u16);

fn seq_key(s: &V4l2CtrlAv1Sequence) -> SeqKey {
    (
        s.flags,
        s.seq_profile,
        s.order_hint_bits,
        s.bit_depth,
        s.max_frame_width_minus_1,
        s.max_frame_height_minus_1,
    )
}

const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_FRAME_HEADER: u8 = 3;
const OBU_FRAME: u8 = 6;

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// The OBU types of `data` if it is a sequence of complete OBUs in the
/// low-overhead syntax (every OBU with a size field, sizes adding up to the
/// buffer), `None` otherwise.
fn obu_types(data: &[u8]) -> Option<Vec<u8>> {
    let mut types = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let h = data[pos];
        let ty = (h >> 3) & 0xf;
        // forbidden bit, reserved bit, has_size_field, known type
        if h & 0x80 != 0 || h & 0x01 != 0 || h & 0x02 == 0 {
            return None;
        }
        if !matches!(ty, 1..=8 | 15) {
            return None;
        }
        pos += 1 + usize::from(h & 0x04 != 0);
        let mut size = 0u64;
        let mut shift = 0;
        loop {
            let b = *data.get(pos)?;
            pos += 1;
            size |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 56 {
                return None;
            }
        }
        pos = pos.checked_add(usize::try_from(size).ok()?)?;
        if pos > data.len() {
            return None;
        }
        types.push(ty);
    }
    if types.is_empty() {
        None
    } else {
        Some(types)
    }
}

/// MSB-first bit writer for the synthesized headers.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    n: u32,
}

impl Bits {
    fn put(&mut self, bits: u32, v: u32) {
        for i in (0..bits).rev() {
            if self.n.is_multiple_of(8) {
                self.out.push(0);
            }
            if (v >> i) & 1 != 0 {
                let last = self.out.len() - 1;
                self.out[last] |= 0x80 >> (self.n % 8);
            }
            self.n += 1;
        }
    }

    fn flag(&mut self, b: bool) {
        self.put(1, u32::from(b));
    }

    /// trailing_bits(): a one, then zeros to the byte boundary.
    fn finish(mut self) -> Vec<u8> {
        self.put(1, 1);
        while !self.n.is_multiple_of(8) {
            self.put(1, 0);
        }
        self.out
    }
}

/// A sequence header OBU for a sequence control.
///
/// The control lacks some sequence header fields; the synthesized header
/// uses: one operating point (idc 0, level 31), no timing / decoder model /
/// display delay information, no frame id numbers, the smallest
/// `frame_width_bits` / `frame_height_bits` that hold the maximum size (what
/// libaom, SVT-AV1 and rav1e write), screen content tools and integer MV
/// selected per frame (`SELECT_*`, libaom's and SVT-AV1's choice; the
/// backend tries the other settings of [`TOOL_CHOICES`] on a key frame that
/// fails to decode with it), and no colour description. A stream whose real
/// header differs in the other fields needs its sequence header OBU in the
/// OUTPUT buffer.
pub fn sequence_header_obu(s: &V4l2CtrlAv1Sequence) -> Result<Vec<u8>, DecodeError> {
    sequence_header_obu_with(s, TOOL_CHOICES[0])
}

/// How the sequence header sets screen content tools and integer motion
/// vectors: 0 or 1 forces the frame flag, [`SELECT`] lets each frame header
/// code it. `imv` only exists when `sct` is not 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolChoice {
    /// `seq_force_screen_content_tools`
    pub sct: u8,
    /// `seq_force_integer_mv`
    pub imv: u8,
}

/// `SELECT_SCREEN_CONTENT_TOOLS` / `SELECT_INTEGER_MV`.
pub const SELECT: u8 = 2;

/// The settings tried, most common first: libaom and SVT-AV1 select per
/// frame, rav1e forces screen content tools off.
pub const TOOL_CHOICES: [ToolChoice; 5] = [
    ToolChoice {
        sct: SELECT,
        imv: SELECT,
    },
    ToolChoice {
        sct: 0,
        imv: SELECT,
    },
    ToolChoice {
        sct: 1,
        imv: SELECT,
    },
    ToolChoice { sct: 1, imv: 0 },
    ToolChoice { sct: 1, imv: 1 },
];

/// The payload of the first frame header (`OBU_FRAME_HEADER` or
/// `OBU_FRAME`) of a buffer of OBUs.
fn first_frame_header_payload(data: &[u8]) -> Option<&[u8]> {
    let mut pos = 0usize;
    while pos < data.len() {
        let h = data[pos];
        let ty = (h >> 3) & 0xf;
        pos += 1 + usize::from(h & 0x04 != 0);
        let mut size = 0u64;
        let mut shift = 0;
        loop {
            let b = *data.get(pos)?;
            pos += 1;
            size |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 56 {
                return None;
            }
        }
        let end = pos.checked_add(usize::try_from(size).ok()?)?;
        if matches!(ty, 3 | 6) {
            return data.get(pos..end);
        }
        pos = end;
    }
    None
}

/// Reads the start of an uncompressed frame header as the synthesized
/// sequence header (with `choice`) would make dav1d read it, and compares
/// each field with the frame control. `Some(false)`: a field disagrees, so
/// `choice` cannot be the stream's; `None`: too short to tell.
fn frame_header_agrees(
    payload: &[u8],
    choice: ToolChoice,
    seq: &V4l2CtrlAv1Sequence,
    f: &V4l2CtrlAv1Frame,
) -> Option<bool> {
    use decoder_core::ctrl::av1::*;
    let mut pos = 0usize;
    let mut bits = |n: u32| -> Option<u32> {
        let mut v = 0;
        for _ in 0..n {
            let b = (payload.get(pos / 8)? >> (7 - pos % 8)) & 1;
            v = (v << 1) | u32::from(b);
            pos += 1;
        }
        Some(v)
    };
    let flag = |bit: u32| u32::from(f.flags & bit != 0);
    if bits(1)? != 0 {
        // show_existing_frame: nothing below depends on the choice.
        return Some(true);
    }
    let frame_type = bits(2)?;
    let show = bits(1)?;
    if frame_type != f.frame_type || show != flag(V4L2_AV1_FRAME_FLAG_SHOW_FRAME) {
        return Some(false);
    }
    if show == 0 && bits(1)? != flag(V4L2_AV1_FRAME_FLAG_SHOWABLE_FRAME) {
        return Some(false);
    }
    let error_resilient = if frame_type == V4L2_AV1_KEY_FRAME && show == 1 {
        1
    } else {
        bits(1)?
    };
    if error_resilient != flag(V4L2_AV1_FRAME_FLAG_ERROR_RESILIENT_MODE)
        || bits(1)? != flag(V4L2_AV1_FRAME_FLAG_DISABLE_CDF_UPDATE)
    {
        return Some(false);
    }
    let allow_sct = if choice.sct == SELECT {
        bits(1)?
    } else {
        u32::from(choice.sct)
    };
    if allow_sct != flag(V4L2_AV1_FRAME_FLAG_ALLOW_SCREEN_CONTENT_TOOLS) {
        return Some(false);
    }
    if allow_sct == 1 && choice.imv == SELECT {
        bits(1)?;
    }
    let size_override = if frame_type == V4L2_AV1_SWITCH_FRAME {
        1
    } else {
        bits(1)?
    };
    if size_override != flag(V4L2_AV1_FRAME_FLAG_FRAME_SIZE_OVERRIDE) {
        return Some(false);
    }
    if seq.flags & V4L2_AV1_SEQUENCE_FLAG_ENABLE_ORDER_HINT != 0
        && bits(u32::from(seq.order_hint_bits))? != f.order_hint
    {
        return Some(false);
    }
    Some(true)
}

/// [`sequence_header_obu`] with the given screen content / integer MV
/// setting.
pub fn sequence_header_obu_with(
    s: &V4l2CtrlAv1Sequence,
    choice: ToolChoice,
) -> Result<Vec<u8>, DecodeError> {
    let f = |bit: u32| s.flags & bit != 0;
    let mut b = Bits::default();
    b.put(3, u32::from(s.seq_profile));
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_STILL_PICTURE));
    b.flag(false); // reduced_still_picture_header
    b.flag(false); // timing_info_present_flag
    b.flag(false); // initial_display_delay_present_flag
    b.put(5, 0); // operating_points_cnt_minus_1
    b.put(12, 0); // operating_point_idc[0]
    b.put(5, 31); // seq_level_idx[0]
    b.flag(false); // seq_tier[0]
    let w = u32::from(s.max_frame_width_minus_1);
    let h = u32::from(s.max_frame_height_minus_1);
    let wbits = (32 - w.leading_zeros()).max(1);
    let hbits = (32 - h.leading_zeros()).max(1);
    b.put(4, wbits - 1);
    b.put(4, hbits - 1);
    b.put(wbits, w);
    b.put(hbits, h);
    b.flag(false); // frame_id_numbers_present_flag
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_USE_128X128_SUPERBLOCK));
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_FILTER_INTRA));
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_INTRA_EDGE_FILTER));
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_INTERINTRA_COMPOUND));
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_MASKED_COMPOUND));
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_WARPED_MOTION));
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_DUAL_FILTER));
    let order_hint = f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_ORDER_HINT);
    b.flag(order_hint);
    if order_hint {
        b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_JNT_COMP));
        b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_REF_FRAME_MVS));
    }
    b.flag(choice.sct == SELECT); // seq_choose_screen_content_tools
    if choice.sct != SELECT {
        b.put(1, u32::from(choice.sct));
    }
    if choice.sct > 0 {
        b.flag(choice.imv == SELECT); // seq_choose_integer_mv
        if choice.imv != SELECT {
            b.put(1, u32::from(choice.imv));
        }
    }
    if order_hint {
        if !(1..=8).contains(&s.order_hint_bits) {
            return Err(DecodeError::InvalidControls(format!(
                "order_hint_bits {} with order hints enabled",
                s.order_hint_bits
            )));
        }
        b.put(3, u32::from(s.order_hint_bits) - 1);
    }
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_SUPERRES));
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_CDEF));
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_ENABLE_RESTORATION));
    // color_config()
    let high = s.bit_depth > 8;
    b.flag(high);
    if s.seq_profile == 2 && high {
        b.flag(s.bit_depth == 12);
    }
    let mono = f(V4L2_AV1_SEQUENCE_FLAG_MONO_CHROME);
    if s.seq_profile != 1 {
        b.flag(mono);
    }
    b.flag(false); // color_description_present_flag
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_COLOR_RANGE));
    if !mono {
        let (sx, sy) = (
            f(V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_X),
            f(V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_Y),
        );
        if s.seq_profile == 2 && s.bit_depth == 12 {
            b.flag(sx);
            if sx {
                b.flag(sy);
            }
        }
        if sx && sy {
            b.put(2, 0); // chroma_sample_position: unknown
        }
        b.flag(f(V4L2_AV1_SEQUENCE_FLAG_SEPARATE_UV_DELTA_Q));
    }
    b.flag(f(V4L2_AV1_SEQUENCE_FLAG_FILM_GRAIN_PARAMS_PRESENT));
    let payload = b.finish();
    let mut obu = vec![OBU_SEQUENCE_HEADER << 3 | 0x02];
    leb128(&mut obu, payload.len() as u64);
    obu.extend(payload);
    Ok(obu)
}

/// A dav1d picture read through [`pixcopy::Planar`].
struct Dav1dView<'a> {
    p: &'a ffi::Dav1dPicture,
    depth: pixcopy::Depth,
    mono: bool,
}

impl pixcopy::Planar for Dav1dView<'_> {
    fn width(&self) -> usize {
        self.p.p.w as usize
    }

    fn height(&self) -> usize {
        self.p.p.h as usize
    }

    fn depth(&self) -> pixcopy::Depth {
        self.depth
    }

    fn monochrome(&self) -> bool {
        self.mono
    }

    fn row(&self, plane: usize, y: usize, len: usize) -> &[u8] {
        let stride = self.p.stride[usize::from(plane > 0)];
        // SAFETY: copy_picture checked the layout (planes 1 and 2 exist
        // unless monochrome, where they are never read) and that each
        // stride covers a row of samples; callers keep y below the plane's
        // row count and len within a row. dav1d keeps the picture alive and
        // unchanged while `self.p` is borrowed.
        unsafe {
            std::slice::from_raw_parts(
                (self.p.data[plane] as *const u8).offset(stride * y as isize),
                len,
            )
        }
    }
}

/// Copies a dav1d picture (8 or 10 bit, 4:2:0 or 4:0:0) into the CAPTURE
/// target; only its chroma unless `luma` (the luma plane is the target's
/// already).
fn copy_picture(
    p: &ffi::Dav1dPicture,
    out: &mut CaptureTarget<'_>,
    luma: bool,
) -> Result<(), DecodeError> {
    let depth = match p.p.bpc {
        8 => pixcopy::Depth::Bits8,
        10 => pixcopy::Depth::Bits10,
        b => return Err(DecodeError::Unsupported(format!("{b}-bit AV1"))),
    };
    if out.format.bit_depth() != p.p.bpc as u32 {
        return Err(DecodeError::FormatMismatch(format!(
            "{}-bit picture into {:?}",
            p.p.bpc, out.format
        )));
    }
    let mono = match p.p.layout {
        ffi::DAV1D_PIXEL_LAYOUT_I420 => false,
        ffi::DAV1D_PIXEL_LAYOUT_I400 => true,
        l => {
            return Err(DecodeError::Unsupported(format!(
                "dav1d pixel layout {l} (only 4:2:0 and monochrome fit the CAPTURE formats)"
            )))
        }
    };
    let (w, sb) = (p.p.w.max(0) as usize, if p.p.bpc == 8 { 1 } else { 2 });
    let planes: &[(usize, usize)] = if mono {
        &[(0, w)]
    } else {
        &[(0, w), (1, w.div_ceil(2)), (2, w.div_ceil(2))]
    };
    for &(i, pw) in planes {
        let stride = p.stride[usize::from(i > 0)];
        if p.data[i].is_null() || stride < (pw * sb) as isize {
            return Err(DecodeError::Internal(
                "unexpected dav1d picture layout".into(),
            ));
        }
    }
    let view = Dav1dView { p, depth, mono };
    if luma {
        pixcopy::write_capture(&view, out)
    } else {
        pixcopy::write_chroma(&view, out)
    }
}

impl Backend for Dav1dAv1 {
    fn name(&self) -> &'static str {
        "dav1d"
    }

    fn codec(&self) -> Codec {
        Codec::Av1
    }

    fn decode(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
    ) -> Result<DecodeOutcome, DecodeError> {
        job.expect_codec(Codec::Av1)?;
        if job.flags.more_slices || job.flags.continues_picture {
            return Err(DecodeError::Unsupported(
                "AV1 frames come whole (no held CAPTURE buffers)".into(),
            ));
        }
        match self.decode_frame(job, out) {
            Err(e @ DecodeError::Corrupt(_)) => {
                self.reset();
                Err(e)
            }
            r => r,
        }
    }

    fn decode_retained(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
        retain: Option<&CaptureRetain>,
    ) -> Result<DecodeOutcome, DecodeError> {
        self.retain = retain.cloned();
        let r = self.decode(job, out);
        self.retain = None;
        r
    }

    fn reset(&mut self) {
        // SAFETY: ctx is open.
        unsafe { ffi::dav1d_flush(self.ctx) };
        self.slots = [None; 8];
        self.key_frames.clear();
        self.waiting_for_key = true;
        // dav1d_flush keeps the sequence header; sending it again is
        // harmless and makes the session independent of that.
        self.seq_sent = None;
    }
}

/// Decodes AV1 temporal units (one packet each, as in IVF) with dav1d
/// directly, as a plain dav1d client does (one thread, its own picture
/// allocator, visible frames only, no copy), and returns the number of
/// pictures output: the speed baseline of the AV1 backend.
pub fn plain_decode_packets(packets: &[&[u8]]) -> Result<usize, DecodeError> {
    // SAFETY: Dav1dSettings is plain data, overwritten by
    // dav1d_default_settings.
    let mut s: ffi::Dav1dSettings = unsafe { std::mem::zeroed() };
    // SAFETY: s is a valid, writable Dav1dSettings.
    unsafe { ffi::dav1d_default_settings(&mut s) };
    s.n_threads = 1;
    s.max_frame_delay = 1;
    s.logger.callback = None;
    let mut ctx = ptr::null_mut();
    // SAFETY: ctx and s are valid pointers for the call; s is only read.
    let r = unsafe { ffi::dav1d_open(&mut ctx, &s) };
    if r < 0 || ctx.is_null() {
        return Err(DecodeError::Internal(format!("dav1d_open failed ({r})")));
    }
    let mut frames = 0;
    let mut result = Ok(());
    let mut get = |ctx: *mut ffi::Dav1dContext| -> c_int {
        // SAFETY: Dav1dPicture is plain data; zeroed is the expected input.
        let mut pic: ffi::Dav1dPicture = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is open and pic writable.
        let r = unsafe { ffi::dav1d_get_picture(ctx, &mut pic) };
        if r == 0 {
            frames += 1;
            // SAFETY: a picture dav1d output, unreferenced once.
            unsafe { ffi::dav1d_picture_unref(&mut pic) };
        }
        r
    };
    'packets: for p in packets {
        // SAFETY: Dav1dData is plain data; zero is its initial state.
        let mut data: ffi::Dav1dData = unsafe { std::mem::zeroed() };
        // SAFETY: data is valid; dav1d allocates p.len() bytes.
        let buf = unsafe { ffi::dav1d_data_create(&mut data, p.len()) };
        if buf.is_null() {
            result = Err(DecodeError::Internal("dav1d_data_create failed".into()));
            break;
        }
        // SAFETY: buf points to p.len() writable bytes owned by data.
        unsafe { ptr::copy_nonoverlapping(p.as_ptr(), buf, p.len()) };
        while data.sz > 0 {
            // SAFETY: ctx is open; data owns its buffer.
            let r = unsafe { ffi::dav1d_send_data(ctx, &mut data) };
            let stuck = r == EAGAIN && get(ctx) != 0;
            if (r < 0 && r != EAGAIN) || stuck {
                result = Err(DecodeError::Corrupt(format!("dav1d_send_data: error {r}")));
                // SAFETY: the data was not consumed and is ours to release.
                unsafe { ffi::dav1d_data_unref(&mut data) };
                break 'packets;
            }
            while get(ctx) == 0 {}
        }
    }
    // Drain: dav1d_get_picture returns what is still buffered.
    while get(ctx) == 0 {}
    // SAFETY: ctx came from dav1d_open and is closed once.
    unsafe { ffi::dav1d_close(&mut ctx) };
    result.map(|()| frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_1_x() {
        assert!(version().starts_with("1."), "{}", version());
    }

    #[test]
    fn obu_walk() {
        // temporal delimiter + padding OBU of 2 bytes
        assert_eq!(
            obu_types(&[0x12, 0x00, 0x7a, 0x02, 1, 2]),
            Some(vec![2, 15])
        );
        // size runs past the end
        assert_eq!(obu_types(&[0x12, 0x05, 0]), None);
        // no size field
        assert_eq!(obu_types(&[0x10]), None);
        assert_eq!(obu_types(&[]), None);
    }

    #[test]
    fn leb128_encoding() {
        let mut v = Vec::new();
        leb128(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }

    #[test]
    fn synthesized_sequence_header_bits() {
        let mut s = <V4l2CtrlAv1Sequence as decoder_core::ctrl::CompoundControl>::default_value();
        s.max_frame_width_minus_1 = 65;
        s.max_frame_height_minus_1 = 49;
        s.flags = V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_X | V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_Y;
        let obu = sequence_header_obu(&s).unwrap();
        assert_eq!(obu[0], 0x0a);
        assert_eq!(usize::from(obu[1]), obu.len() - 2);
        // profile 0, still 0, reduced 0, timing 0, delay 0, cnt 00000
        assert_eq!(obu[2], 0x00);
        // The whole header with everything off except 4:2:0 must parse as
        // one OBU.
        assert_eq!(obu_types(&obu), Some(vec![1]));
    }

    #[test]
    fn tool_choices_change_the_header() {
        let mut s = <V4l2CtrlAv1Sequence as decoder_core::ctrl::CompoundControl>::default_value();
        s.max_frame_width_minus_1 = 175;
        s.max_frame_height_minus_1 = 143;
        let all: Vec<Vec<u8>> = TOOL_CHOICES
            .iter()
            .map(|c| sequence_header_obu_with(&s, *c).unwrap())
            .collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(all[0], sequence_header_obu(&s).unwrap());
        // Order hints enabled with 0 bits cannot be written.
        s.flags = V4L2_AV1_SEQUENCE_FLAG_ENABLE_ORDER_HINT;
        assert!(sequence_header_obu(&s).is_err());
    }

    #[test]
    fn frame_header_prefix_check() {
        use decoder_core::ctrl::av1::{
            V4L2_AV1_FRAME_FLAG_ERROR_RESILIENT_MODE, V4L2_AV1_FRAME_FLAG_SHOW_FRAME,
            V4L2_AV1_KEY_FRAME,
        };
        let mut seq = <V4l2CtrlAv1Sequence as decoder_core::ctrl::CompoundControl>::default_value();
        seq.flags = V4L2_AV1_SEQUENCE_FLAG_ENABLE_ORDER_HINT;
        seq.order_hint_bits = 7;
        let mut f = <V4l2CtrlAv1Frame as decoder_core::ctrl::CompoundControl>::default_value();
        f.frame_type = V4L2_AV1_KEY_FRAME;
        // A shown key frame is error resilient without coding it.
        f.flags = V4L2_AV1_FRAME_FLAG_SHOW_FRAME | V4L2_AV1_FRAME_FLAG_ERROR_RESILIENT_MODE;
        f.order_hint = 0x55;
        // show_existing 0, KEY (00), show 1, disable_cdf 0, then with
        // SELECT: allow_sct 0, override 0, order hint 1010101.
        let mut b = Bits::default();
        for bit in [0, 0, 0, 1, 0, 0, 0] {
            b.put(1, bit);
        }
        b.put(7, 0x55);
        let payload = b.finish();
        let select = TOOL_CHOICES[0];
        let forced_off = TOOL_CHOICES[1];
        assert_eq!(frame_header_agrees(&payload, select, &seq, &f), Some(true));
        // Without the allow_sct bit the order hint reads shifted.
        assert_eq!(
            frame_header_agrees(&payload, forced_off, &seq, &f),
            Some(false)
        );
        // Too short to tell.
        assert_eq!(frame_header_agrees(&payload[..1], select, &seq, &f), None);
        // A different frame type disagrees whatever the choice.
        f.frame_type = 1;
        assert_eq!(frame_header_agrees(&payload, select, &seq, &f), Some(false));
    }
}

#[cfg(test)]
mod in_place_tests {
    use super::*;
    use crate::backend::test_mem::{decode_jobs, encode};
    use crate::backend::CaptureFormat;
    use daedalus_client::av1::{Av1Options, Av1Parser};
    use daedalus_client::StreamParser;

    #[test]
    fn av1_luma_is_decoded_in_place_and_matches_the_copy() {
        let file = encode(
            "svt.ivf",
            &[
                "-c:v",
                "libsvtav1",
                "-preset",
                "12",
                "-g",
                "12",
                "-f",
                "ivf",
            ],
            "176x128",
        );
        let mut parser =
            Av1Parser::new(std::fs::read(&file).unwrap(), Av1Options::default()).unwrap();
        let _ = std::fs::remove_file(&file);
        let mut jobs = Vec::new();
        while let Some(j) = parser.next_job().unwrap() {
            jobs.push(j);
        }
        assert!(jobs.len() >= 24);
        let run_as = |format, stride, in_place| {
            let mut b = Dav1dAv1::with_config(Dav1dConfig::default()).unwrap();
            let (pics, kept) = decode_jobs(&mut b, Codec::Av1, &jobs, format, stride, in_place);
            let n = (b.in_place_pictures(), b.whole_in_place_pictures());
            drop(b);
            // dav1d's references are gone with the session.
            assert!(kept.iter().all(|m| Arc::strong_count(m) == 1));
            (pics, n)
        };
        let run = |stride, in_place| {
            let (pics, (n, whole)) = run_as(CaptureFormat::Nv12, stride, in_place);
            assert_eq!(whole, 0);
            (pics, n)
        };
        let (want, n) = run(256, false);
        assert_eq!(n, 0);
        let (got, n) = run(256, true);
        assert_eq!(n, jobs.len() as u64, "pictures decoded in place");
        assert!(got == want, "in-place pictures differ from copied ones");
        assert_ne!(want[0], want[want.len() - 1]);
        // A wider stride works too.
        let (got, n) = run(320, true);
        assert_eq!(n, jobs.len() as u64);
        assert!(got == want);
        // Narrower than dav1d's 128-pixel padding (256): copied, same
        // pictures.
        let (got, n) = run(192, true);
        assert_eq!(n, 0, "a stride below the padded width is never used");
        assert!(got == want);
        // Three planes: nothing copied at all.
        let all = jobs.len() as u64;
        let (got, n) = run_as(CaptureFormat::Yuv420, 256, true);
        assert_eq!(n, (all, all), "pictures decoded wholly in place");
        assert!(got == want, "three-plane pictures differ from NV12 copies");
        let (got, n) = run_as(CaptureFormat::Yuv420, 256, false);
        assert_eq!(n, (0, 0));
        assert!(got == want);
    }
}
