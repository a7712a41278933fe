//! FFmpeg (libavcodec) backend. Every FFmpeg call of the daemon is in this
//! module.
//!
//! # H.264
//!
//! V4L2 stateless jobs carry slices only; the parameter sets come as
//! controls. The session rebuilds SPS and PPS NAL units from the controls
//! (see [`nal`]) and feeds them to libavcodec whenever they change, followed
//! by the picture's slices, as one packet per picture.
//!
//! **Which picture lands where.** libavcodec's H.264 decoder returns pictures
//! in display order, after a reorder delay, and nothing turns that off. The
//! session instead installs its own `get_buffer2`: with one decoding thread
//! (no frame threading) the picture coded by a packet is allocated and fully
//! decoded (including deblocking and error concealment) inside that
//! packet's `avcodec_send_packet`, so the buffer allocated last during the
//! call holds exactly this job's picture once the call returns. The callback
//! keeps a reference to it; the job then completes its CAPTURE buffer.
//! The pictures libavcodec later returns from `avcodec_receive_frame` are
//! only drained and dropped.
//!
//! **In place.** libavcodec's software decoders write planar YUV (I420),
//! never NV12, and keep reading their pictures as references after the job
//! has returned its CAPTURE buffer. The session's allocator puts an 8-bit
//! picture's luma plane straight into the job's CAPTURE buffer when the
//! worker retains its memory ([`CaptureRetain`]: memfd buffers) and the
//! buffer meets libavcodec's requirements (line size a multiple of its
//! alignment, room for the padded height plus over-read slack); the
//! picture's buffer holds a reference on the CAPTURE memory, so it stays
//! mapped as long as libavcodec may read it. The chroma planes stay
//! private and are interleaved into the CAPTURE buffer after the decode.
//! Every picture of a size shares one luma line size (H.264 and VP8 read
//! references with the current picture's), so pictures that cannot go in
//! place (another stride, a dmabuf, HEVC stand-ins for missing references)
//! come from the session's pools with that line size and are copied whole,
//! as are 10-bit pictures (P010 differs from libavcodec's layout).
//!
//! **References.** libavcodec tracks its own DPB from the bitstream. The
//! session checks that every reference a job names is a picture it decoded
//! (and that is still a reference); if not (seek, dropped job), libavcodec's
//! DPB would not match the client's, so the session resets and skips
//! pictures until the next IDR instead of producing wrong pictures. Decoding
//! errors do the same.
//!
//! # HEVC
//!
//! [`FfmpegHevc`]: VPS, SPS and PPS are rebuilt from the controls and each
//! slice NAL unit gets a new slice segment header coded from the slice and
//! decode parameters, followed by the client's slice data (see
//! [`hevc_nal`]: the V4L2 controls lack what libavcodec would need to parse
//! the client's own headers, such as the SPS reference picture sets). The
//! capture works as for H.264, keeping the *first* picture allocated during
//! the packet (libavcodec allocates stand-ins for missing references after
//! the current picture). Decoding restarts at IRAP pictures; RASL pictures
//! whose references are gone fail alone.
//!
//! # VP8 and VP9
//!
//! [`FfmpegVpx`]: a job holds a whole frame, which libavcodec decodes as it
//! is; the controls are checked against the frame header and the CAPTURE
//! format, the references against the reference slots. Hidden frames
//! (altref) are decoded but never output by libavcodec; their picture is
//! captured from `get_buffer2` all the same.
//!
//! [`plain_decode`] and [`plain_decode_packets`] decode streams with
//! libavcodec alone, the baseline of the speed tests.

use std::collections::{HashMap, HashSet};
use std::ffi::c_int;
use std::ptr;
use std::sync::Arc;

use decoder_core::ctrl::h264::{
    V4l2CtrlH264DecodeParams, V4l2CtrlH264Pps, V4l2CtrlH264ScalingMatrix, V4l2CtrlH264Sps,
    V4l2StatelessH264StartCode, V4L2_CID_STATELESS_H264_PPS,
    V4L2_CID_STATELESS_H264_SCALING_MATRIX, V4L2_CID_STATELESS_H264_SPS,
    V4L2_CID_STATELESS_H264_START_CODE, V4L2_H264_DECODE_PARAM_FLAG_FIELD_PIC,
};
use decoder_core::ctrl::hevc::{
    V4l2CtrlHevcDecodeParams, V4l2CtrlHevcPps, V4l2CtrlHevcScalingMatrix, V4l2CtrlHevcSliceParams,
    V4l2CtrlHevcSps, V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS, V4L2_CID_STATELESS_HEVC_PPS,
    V4L2_CID_STATELESS_HEVC_SCALING_MATRIX, V4L2_CID_STATELESS_HEVC_SPS,
    V4L2_CID_STATELESS_HEVC_START_CODE, V4L2_HEVC_DECODE_PARAM_FLAG_IRAP_PIC,
    V4L2_STATELESS_HEVC_START_CODE_ANNEX_B,
};
use decoder_core::ctrl::vp8::{V4l2CtrlVp8Frame, V4L2_VP8_FRAME_FLAG_SHOW_FRAME};
use decoder_core::ctrl::vp9::{
    V4l2CtrlVp9Frame, V4L2_VP9_FRAME_FLAG_INTRA_ONLY, V4L2_VP9_FRAME_FLAG_KEY_FRAME,
    V4L2_VP9_FRAME_FLAG_SHOW_FRAME,
};
use decoder_core::ctrl::Codec;
use ffmpeg_sys_next as ff;

use super::{
    pixcopy, Backend, CapturePlane, CaptureRetain, CaptureTarget, DecodeError, DecodeOutcome,
    JobInput, RetainedChroma,
};

/// Limits libavcodec's own logging (process-wide) to fatal errors; decode
/// errors still reach the caller as [`DecodeError`]s.
pub fn quiet_library_logs() {
    // SAFETY: av_log_set_level only stores an integer in libavutil.
    unsafe { ff::av_log_set_level(ff::AV_LOG_FATAL) };
}

/// Annex B start code put in front of each NAL unit the session writes.
const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// The current job's CAPTURE luma plane, while a job that may decode into
/// it runs.
struct InPlaceTarget {
    /// First byte of the luma plane.
    ptr: *mut u8,
    /// Bytes valid from `ptr` ([`CaptureRetain::luma_extent`]).
    extent: usize,
    /// Bytes per row.
    stride: usize,
    /// Keeps the memory mapped; each picture allocated in it holds a clone.
    keep: Arc<dyn Send + Sync>,
    /// The Cb and Cr planes of a three-plane (YUV420) target.
    chroma: Option<RetainedChroma>,
}

/// Buffer pools for the 8-bit 4:2:0 (or 4:0:0) pictures of one format and
/// size, with one luma and one chroma layout for all of them: libavcodec's
/// H.264 and VP8 decoders read reference pictures with the current
/// picture's line sizes, so every picture of a size must share them.
struct FramePools {
    /// `AVPixelFormat`, width and height the pools are for.
    key: (c_int, c_int, c_int),
    luma_linesize: usize,
    /// 0 for 4:0:0.
    chroma_linesize: usize,
    /// Bytes libavcodec may touch from a luma plane's first byte
    /// (`luma_linesize` times the padded height).
    luma_size: usize,
    /// The same for a chroma plane.
    chroma_size: usize,
    /// Alignment of plane starts and line sizes libavcodec asks for.
    align: usize,
    luma: *mut ff::AVBufferPool,
    /// Null for 4:0:0.
    chroma: *mut ff::AVBufferPool,
}

/// Bytes a pool buffer holds beyond its plane: the 16 bytes of over-read
/// libavcodec's own pools allow, plus room to align the plane start.
const PLANE_SLACK: usize = 16;

impl FramePools {
    /// Pools for `frame`'s format and size. The luma line size is
    /// `stride` (the CAPTURE buffers' bytes per line) when libavcodec can
    /// work with it, so that pictures can be decoded in place; otherwise
    /// the line size libavcodec's default allocator would choose.
    ///
    /// # Safety
    ///
    /// `avctx` is the live context calling `get_buffer2` for `frame`.
    unsafe fn new(
        avctx: *mut ff::AVCodecContext,
        frame: &ff::AVFrame,
        gray: bool,
        stride: Option<usize>,
    ) -> Option<Self> {
        let (mut w, mut h) = (frame.width, frame.height);
        let mut la = [0 as c_int; 8];
        // SAFETY: a live context and pointers to locals of the types the
        // function writes (two ints, an array of AV_NUM_DATA_POINTERS ints).
        unsafe { ff::avcodec_align_dimensions2(avctx, &mut w, &mut h, la.as_mut_ptr()) };
        if w <= 0 || h <= 0 {
            return None;
        }
        let (w, h) = (w as usize, h as usize);
        let (la0, la1) = (la[0].max(1) as usize, la[1].max(1) as usize);
        let chroma_ok = |c: usize, w: usize| gray || (c >= w.div_ceil(2) && c.is_multiple_of(la1));
        // The default allocator's choice: the padded width, grown by its
        // lowest set bit until every line size is aligned.
        let mut dw = w;
        while !(dw.is_multiple_of(la0) && chroma_ok(dw.div_ceil(2), dw)) {
            dw += dw & dw.wrapping_neg();
        }
        let (luma_linesize, chroma_linesize) = match stride {
            Some(s) if s >= w && s.is_multiple_of(la0) => {
                let c = if s.is_multiple_of(2) && chroma_ok(s / 2, w) {
                    s / 2
                } else {
                    dw.div_ceil(2)
                };
                (s, c)
            }
            _ => (dw, dw.div_ceil(2)),
        };
        let chroma_linesize = if gray { 0 } else { chroma_linesize };
        let align = la0.max(la1).max(16);
        let luma_size = luma_linesize.checked_mul(h)?;
        let chroma_size = chroma_linesize.checked_mul(h.div_ceil(2))?;
        if luma_size.checked_add(PLANE_SLACK + align)? > i32::MAX as usize {
            return None;
        }
        // SAFETY: plain allocation of a pool of zeroed buffers (as
        // libavcodec's own pools are); null checked below.
        let luma = unsafe {
            ff::av_buffer_pool_init(luma_size + PLANE_SLACK + align, Some(ff::av_buffer_allocz))
        };
        let chroma = if gray {
            ptr::null_mut()
        } else {
            // SAFETY: as above.
            unsafe {
                ff::av_buffer_pool_init(
                    chroma_size + PLANE_SLACK + align,
                    Some(ff::av_buffer_allocz),
                )
            }
        };
        let pools = Self {
            key: (frame.format, frame.width, frame.height),
            luma_linesize,
            chroma_linesize,
            luma_size,
            chroma_size,
            align,
            luma,
            chroma,
        };
        (!luma.is_null() && (gray || !chroma.is_null())).then_some(pools)
    }
}

impl Drop for FramePools {
    fn drop(&mut self) {
        // SAFETY: the pools are owned by this value (or null, which uninit
        // accepts); buffers still in use keep their pool alive until they
        // are returned, as libavcodec's own frame pools do.
        unsafe {
            ff::av_buffer_pool_uninit(&mut self.luma);
            ff::av_buffer_pool_uninit(&mut self.chroma);
        }
    }
}

/// Free callback of an in-place luma plane: drops the reference on the
/// CAPTURE buffer's memory the picture held.
unsafe extern "C" fn release_capture(opaque: *mut std::ffi::c_void, _data: *mut u8) {
    // SAFETY: `opaque` is the `Box<Arc<..>>` leaked by `alloc_picture` for
    // this buffer; libavutil calls the free callback exactly once.
    drop(unsafe { Box::from_raw(opaque.cast::<Arc<dyn Send + Sync>>()) });
}

/// A libavutil buffer over `size` bytes of CAPTURE memory at `ptr` that
/// holds a clone of `keep` until libavcodec's last reference to it goes;
/// null when out of memory.
///
/// # Safety
///
/// `ptr` points at `size` bytes that stay mapped while `keep` lives.
unsafe fn capture_buffer(
    ptr: *mut u8,
    size: usize,
    keep: &Arc<dyn Send + Sync>,
) -> *mut ff::AVBufferRef {
    let opaque = Box::into_raw(Box::new(keep.clone()));
    // SAFETY: per the contract; the buffer owns `opaque` and drops it in
    // its free callback, once.
    let b = unsafe { ff::av_buffer_create(ptr, size, Some(release_capture), opaque.cast(), 0) };
    if b.is_null() {
        // SAFETY: not handed to libavutil; reclaimed once.
        drop(unsafe { Box::from_raw(opaque) });
    }
    b
}

/// A pool buffer's data rounded up to `align`.
///
/// # Safety
///
/// `buf` is a valid buffer of a [`FramePools`] pool (size plus slack).
unsafe fn aligned_data(buf: *mut ff::AVBufferRef, align: usize) -> *mut u8 {
    // SAFETY: per the contract; the pool buffers hold `align` bytes beyond
    // the plane, so the rounded pointer stays inside.
    unsafe {
        let d = (*buf).data;
        d.add((align - d as usize % align) % align)
    }
}

/// State the `get_buffer2` callback reaches through `AVCodecContext.opaque`.
struct CaptureSlot {
    /// Reference to the picture buffer libavcodec allocated (the last one,
    /// or with `first_only` the first one of the current send).
    last: *mut ff::AVFrame,
    /// Incremented on every allocation.
    allocations: u64,
    /// Keep the first picture allocated during a send rather than the last
    /// (HEVC allocates stand-ins for missing references after the
    /// current picture).
    first_only: bool,
    /// `allocations` when the current send started.
    send_start: u64,
    /// The job's CAPTURE luma plane, when the first picture allocated
    /// during the send may be decoded into it.
    target: Option<InPlaceTarget>,
    /// Pools of the 8-bit pictures.
    pools: Option<FramePools>,
}

impl CaptureSlot {
    /// Allocates an 8-bit 4:2:0 or 4:0:0 picture: its luma plane in the
    /// job's CAPTURE buffer when that is the first picture of the send and
    /// the buffer meets libavcodec's requirements (line size alignment and
    /// padded size), else from the pool with the same line size; chroma
    /// always from the pool. `None` for other formats (the caller uses
    /// libavcodec's default allocator).
    ///
    /// # Safety
    ///
    /// Called from `get_buffer2` with its arguments.
    unsafe fn alloc_picture(
        &mut self,
        avctx: *mut ff::AVCodecContext,
        frame: *mut ff::AVFrame,
    ) -> Option<c_int> {
        use ff::AVPixelFormat as P;
        // SAFETY: libavcodec passes a valid frame with format and size set
        // and no buffers, and its live context.
        let (f, ctx) = unsafe { (&mut *frame, &*avctx) };
        let gray = if f.format == P::AV_PIX_FMT_YUV420P as c_int
            || f.format == P::AV_PIX_FMT_YUVJ420P as c_int
        {
            false
        } else if f.format == P::AV_PIX_FMT_GRAY8 as c_int {
            true
        } else {
            return None;
        };
        if ctx.pix_fmt as c_int != f.format
            || !ctx.hw_frames_ctx.is_null()
            || f.width <= 0
            || f.height <= 0
            || !f.data[0].is_null()
        {
            return None;
        }
        let key = (f.format, f.width, f.height);
        if self.pools.as_ref().is_none_or(|p| p.key != key) {
            let stride = self.target.as_ref().map(|t| t.stride);
            // SAFETY: forwarded contract.
            match unsafe { FramePools::new(avctx, f, gray, stride) } {
                Some(p) => self.pools = Some(p),
                None => return None,
            }
        }
        let p = self.pools.as_ref()?;
        let mut luma: *mut ff::AVBufferRef = ptr::null_mut();
        let mut luma_data: *mut u8 = ptr::null_mut();
        let first = self.allocations == self.send_start;
        // The CAPTURE planes this picture may take: the luma plane, and
        // with three planes the chroma planes too.
        let mut chroma_target = None;
        if let Some(t) = self.target.as_ref().filter(|t| {
            first
                && t.stride == p.luma_linesize
                && (t.ptr as usize).is_multiple_of(p.align)
                && t.extent >= p.luma_size + PLANE_SLACK
        }) {
            // SAFETY: `t.ptr` points at `t.extent` >= `luma_size` bytes that
            // stay mapped while `keep` lives (`CaptureRetain::new`'s
            // contract).
            luma = unsafe { capture_buffer(t.ptr, p.luma_size, &t.keep) };
            if !luma.is_null() {
                luma_data = t.ptr;
                chroma_target = t.chroma.as_ref().filter(|c| {
                    !gray
                        && c.stride == p.chroma_linesize
                        && c.ptr.iter().all(|q| (*q as usize).is_multiple_of(p.align))
                        && c.extent.iter().all(|e| *e >= p.chroma_size + PLANE_SLACK)
                });
            }
        }
        if luma.is_null() {
            // SAFETY: a valid pool; null checked.
            luma = unsafe { ff::av_buffer_pool_get(p.luma) };
            if luma.is_null() {
                return Some(-(ff::ENOMEM));
            }
            // SAFETY: a buffer of this pool.
            luma_data = unsafe { aligned_data(luma, p.align) };
        }
        f.buf[0] = luma;
        f.data[0] = luma_data;
        f.linesize[0] = p.luma_linesize as c_int;
        if !gray {
            for i in 1..3 {
                let (b, data) = match (chroma_target, self.target.as_ref()) {
                    (Some(c), Some(t)) => {
                        // SAFETY: as for the luma plane, for the Cb (Cr)
                        // plane and its extent.
                        let b = unsafe { capture_buffer(c.ptr[i - 1], p.chroma_size, &t.keep) };
                        (b, c.ptr[i - 1])
                    }
                    _ => {
                        // SAFETY: a valid pool.
                        let b = unsafe { ff::av_buffer_pool_get(p.chroma) };
                        // SAFETY: a buffer of this pool, when not null.
                        let d = (!b.is_null()).then(|| unsafe { aligned_data(b, p.align) });
                        (b, d.unwrap_or(ptr::null_mut()))
                    }
                };
                if b.is_null() {
                    // SAFETY: the frame owns the buffers set so far (the
                    // frame's buffers are released by av_frame_unref).
                    unsafe { ff::av_frame_unref(frame) };
                    return Some(-(ff::ENOMEM));
                }
                f.buf[i] = b;
                f.data[i] = data;
                f.linesize[i] = p.chroma_linesize as c_int;
            }
        }
        f.extended_data = f.data.as_mut_ptr();
        Some(0)
    }
}

/// `get_buffer2` of the session: 8-bit pictures from [`CaptureSlot::alloc_picture`]
/// (in place when possible), others from libavcodec's default allocator,
/// plus a reference to the new picture kept in the session's
/// [`CaptureSlot`].
unsafe extern "C" fn capture_get_buffer2(
    avctx: *mut ff::AVCodecContext,
    frame: *mut ff::AVFrame,
    flags: c_int,
) -> c_int {
    // SAFETY: `opaque` is set by `Session::new` to a `CaptureSlot` boxed
    // in the session, which outlives the codec context (it is freed after
    // `avcodec_free_context` in `Drop`), and no other reference to it is live
    // while libavcodec runs inside send_packet.
    let slot = unsafe { &mut *((*avctx).opaque as *mut CaptureSlot) };
    // SAFETY: get_buffer2's own arguments.
    let ret = match unsafe { slot.alloc_picture(avctx, frame) } {
        Some(r) => r,
        // SAFETY: libavcodec calls get_buffer2 with its live context and a
        // frame whose format and size it has set; the default allocator
        // accepts both.
        None => unsafe { ff::avcodec_default_get_buffer2(avctx, frame, flags) },
    };
    if ret < 0 {
        return ret;
    }
    if slot.first_only && slot.allocations > slot.send_start {
        slot.allocations += 1;
        return 0;
    }
    // SAFETY: `slot.last` is a valid AVFrame owned by the session; `frame`
    // now has reference-counted buffers, which av_frame_ref shares.
    let r = unsafe {
        ff::av_frame_unref(slot.last);
        ff::av_frame_ref(slot.last, frame)
    };
    if r < 0 {
        return r;
    }
    slot.allocations += 1;
    0
}

/// One libavcodec decoder context with the capturing `get_buffer2`, one
/// decoding thread, and a reusable packet buffer. Shared by every codec
/// session of this module.
#[derive(Debug)]
struct Session {
    ctx: *mut ff::AVCodecContext,
    pkt: *mut ff::AVPacket,
    drain: *mut ff::AVFrame,
    slot: *mut CaptureSlot,
    /// Packet assembly buffer (reused, so no allocation per job once it has
    /// grown to the largest picture).
    packet: Vec<u8>,
    /// `allocations` of the slot when the last picture was copied out.
    last_alloc_seen: u64,
    /// Pictures libavcodec output (and `send` dropped).
    drained: u64,
    /// Pictures whose luma plane was decoded straight into the CAPTURE
    /// buffer (only the chroma copied, if anything).
    in_place: u64,
    /// Pictures whose every plane was decoded straight into the CAPTURE
    /// buffer (nothing copied).
    whole_in_place: u64,
    /// Pictures copied whole into their CAPTURE buffer.
    copied: u64,
}

// SAFETY: the session owns its libavcodec context, packet, frames and slot
// exclusively; libavcodec keeps no thread-affine state for a context decoding
// with one thread, so the whole session may move to another thread. It is
// not Sync (every method takes &mut self).
unsafe impl Send for Session {}

/// A decoded picture as libavcodec holds it: planar 4:2:0 (or 4:0:0).
struct PictureView<'a> {
    frame: &'a ff::AVFrame,
    width: usize,
    height: usize,
    bits10: bool,
    gray: bool,
}

impl pixcopy::Planar for PictureView<'_> {
    fn width(&self) -> usize {
        self.width
    }

    fn height(&self) -> usize {
        self.height
    }

    fn depth(&self) -> pixcopy::Depth {
        if self.bits10 {
            pixcopy::Depth::Bits10
        } else {
            pixcopy::Depth::Bits8
        }
    }

    fn monochrome(&self) -> bool {
        self.gray
    }

    fn row(&self, i: usize, y: usize, len: usize) -> &[u8] {
        // SAFETY: `Session::picture` checked that plane `i` exists and that
        // its linesize covers `len` bytes; callers pass `y` below the
        // plane's row count (`height`, or `height / 2` rounded up for
        // chroma), rows libavcodec allocated for this picture. The frame
        // reference behind `self.frame` keeps the memory alive and libavcodec
        // is not running while the view exists.
        unsafe {
            std::slice::from_raw_parts(
                self.frame.data[i].offset(self.frame.linesize[i] as isize * y as isize),
                len,
            )
        }
    }
}

impl Session {
    /// Opens libavcodec's decoder `id` with one thread and the capturing
    /// allocator.
    fn new(id: ff::AVCodecID) -> Result<Self, DecodeError> {
        let err = |what: &str| DecodeError::Internal(format!("libavcodec: {what}"));
        // SAFETY: plain lookup in libavcodec's static decoder table.
        let codec = unsafe { ff::avcodec_find_decoder(id) };
        if codec.is_null() {
            return Err(err(&format!("no decoder for {id:?}")));
        }
        let slot = Box::into_raw(Box::new(CaptureSlot {
            // SAFETY: allocation of an empty frame; null checked below.
            last: unsafe { ff::av_frame_alloc() },
            allocations: 0,
            first_only: false,
            send_start: 0,
            target: None,
            pools: None,
        }));
        let s = Self {
            // SAFETY: `codec` is a valid decoder; null checked below.
            ctx: unsafe { ff::avcodec_alloc_context3(codec) },
            // SAFETY: allocation; null checked below.
            pkt: unsafe { ff::av_packet_alloc() },
            // SAFETY: allocation; null checked below.
            drain: unsafe { ff::av_frame_alloc() },
            slot,
            packet: Vec::new(),
            last_alloc_seen: 0,
            drained: 0,
            in_place: 0,
            whole_in_place: 0,
            copied: 0,
        };
        // SAFETY: `slot` was just created from a Box and is owned by `s`.
        let slot_frame_null = unsafe { (*s.slot).last.is_null() };
        if s.ctx.is_null() || s.pkt.is_null() || s.drain.is_null() || slot_frame_null {
            return Err(err("out of memory"));
        }
        // SAFETY: `ctx` is a freshly allocated, not yet opened context: its
        // fields may be set before avcodec_open2. `slot` outlives it (Drop
        // frees the context first).
        let ret = unsafe {
            let c = &mut *s.ctx;
            c.thread_count = 1;
            c.thread_type = 0;
            c.opaque = s.slot.cast();
            c.get_buffer2 = Some(capture_get_buffer2);
            // Decoding errors fail the packet instead of being silently
            // concealed.
            c.err_recognition |= ff::AV_EF_EXPLODE;
            ff::avcodec_open2(s.ctx, codec, ptr::null_mut())
        };
        if ret < 0 {
            return Err(err(&format!("avcodec_open2 failed ({ret})")));
        }
        Ok(s)
    }

    /// Drops libavcodec's pictures (references included).
    fn flush(&mut self) {
        // SAFETY: `ctx` is an open decoder context; `last` a valid frame.
        unsafe {
            ff::avcodec_flush_buffers(self.ctx);
            ff::av_frame_unref((*self.slot).last);
        }
    }

    /// Pictures allocated so far.
    fn allocations(&self) -> u64 {
        // SAFETY: the slot is only written by the callback, which runs only
        // inside `send`; no reference to it is live here.
        unsafe { (*self.slot).allocations }
    }

    /// Sends `self.packet` as one packet and drains whatever libavcodec
    /// outputs. Returns the send status.
    fn send(&mut self) -> c_int {
        let len = self.packet.len();
        self.packet
            .resize(len + ff::AV_INPUT_BUFFER_PADDING_SIZE as usize, 0);
        let Ok(size) = c_int::try_from(len) else {
            return -(ff::EINVAL);
        };
        // SAFETY: the slot is only written by the callback, inside
        // avcodec_send_packet below.
        unsafe { (*self.slot).send_start = (*self.slot).allocations };
        // SAFETY: `pkt` is a valid packet without buffer; it points at
        // `self.packet` (len bytes plus the zeroed padding libavcodec may
        // over-read) only during avcodec_send_packet, which copies
        // unreferenced packet data before returning. `drain` is a valid
        // frame, unreferenced after each receive.
        unsafe {
            let p = &mut *self.pkt;
            p.data = self.packet.as_mut_ptr();
            p.size = size;
            let ret = ff::avcodec_send_packet(self.ctx, self.pkt);
            p.data = ptr::null_mut();
            p.size = 0;
            while ff::avcodec_receive_frame(self.ctx, self.drain) >= 0 {
                self.drained += 1;
                ff::av_frame_unref(self.drain);
            }
            ret
        }
    }

    /// Sends `self.packet` and requires that it decoded a new picture
    /// (captured by `get_buffer2`).
    fn decode_packet(&mut self) -> Result<(), DecodeError> {
        let before = self.allocations();
        let ret = self.send();
        if ret < 0 {
            return Err(DecodeError::Corrupt(format!(
                "libavcodec refused the picture ({ret})"
            )));
        }
        if self.allocations() == before {
            return Err(DecodeError::Corrupt("no picture decoded".into()));
        }
        self.last_alloc_seen = self.allocations();
        Ok(())
    }

    /// The captured picture.
    fn picture(&self) -> Result<PictureView<'_>, DecodeError> {
        // SAFETY: `last` is a valid frame owned by the session and holds a
        // reference on the picture buffers, so they stay alive and unchanged
        // (libavcodec is not running) for the duration of this borrow.
        let f = unsafe { &*(*self.slot).last };
        if f.buf[0].is_null() {
            return Err(DecodeError::Corrupt("no picture decoded".into()));
        }
        let (w, h) = (f.width, f.height);
        if w <= 0 || h <= 0 {
            return Err(DecodeError::Corrupt(format!("picture size {w}x{h}")));
        }
        use ff::AVPixelFormat as P;
        let fmt = f.format;
        let (bits10, gray) =
            if fmt == P::AV_PIX_FMT_YUV420P as c_int || fmt == P::AV_PIX_FMT_YUVJ420P as c_int {
                (false, false)
            } else if fmt == P::AV_PIX_FMT_GRAY8 as c_int {
                (false, true)
            } else if fmt == P::AV_PIX_FMT_YUV420P10LE as c_int {
                (true, false)
            } else if fmt == P::AV_PIX_FMT_GRAY10LE as c_int {
                (true, true)
            } else {
                return Err(DecodeError::Unsupported(format!(
                    "libavcodec pixel format {fmt} (only 4:2:0 and 4:0:0, 8 or 10 bit)"
                )));
            };
        let (w, h) = (w as usize, h as usize);
        let sb = if bits10 { 2 } else { 1 };
        let planes: &[(usize, usize)] = if gray {
            &[(0, w)]
        } else {
            &[(0, w), (1, w.div_ceil(2)), (2, w.div_ceil(2))]
        };
        for &(i, pw) in planes {
            if f.data[i].is_null() || (f.linesize[i] as i64) < (pw * sb) as i64 {
                return Err(DecodeError::Internal("unexpected frame layout".into()));
            }
        }
        Ok(PictureView {
            frame: f,
            width: w,
            height: h,
            bits10,
            gray,
        })
    }

    /// Puts the captured picture into the CAPTURE target: nothing to do
    /// when libavcodec decoded every plane straight into the target's
    /// (three planes); only the chroma when it decoded the luma plane in
    /// place ([`pixcopy::write_chroma`]); otherwise the whole picture is
    /// copied ([`pixcopy::write_capture`]).
    fn copy_out(&mut self, out: &mut CaptureTarget<'_>) -> Result<(), DecodeError> {
        let pic = self.picture()?;
        let at = |i: usize, p: &CapturePlane<'_>| {
            pic.frame.data[i].cast_const() == p.data.as_ptr()
                && pic.frame.linesize[i] as usize == p.stride
        };
        let luma_in_place = out.format.bit_depth() == 8 && !pic.bits10 && at(0, &out.luma);
        let chroma_in_place = luma_in_place
            && !pic.gray
            && at(1, &out.chroma)
            && out.cr.as_ref().is_some_and(|cr| at(2, cr));
        if chroma_in_place {
            self.in_place += 1;
            self.whole_in_place += 1;
        } else if luma_in_place {
            pixcopy::write_chroma(&pic, out)?;
            self.in_place += 1;
        } else {
            pixcopy::write_capture(&pic, out)?;
            self.copied += 1;
        }
        Ok(())
    }

    /// Offers the job's CAPTURE planes to the allocator for the next send
    /// when `retain` keeps them mapped (8-bit targets only), or withdraws
    /// the offer (`None`).
    fn offer_target(&mut self, out: &mut CaptureTarget<'_>, retain: Option<&CaptureRetain>) {
        let target = retain
            .filter(|r| out.format.bit_depth() == 8 && r.covers(out))
            .map(|r| InPlaceTarget {
                chroma: r.chroma_planes(out),
                ptr: out.luma.data.as_mut_ptr(),
                extent: r.luma_extent(),
                stride: out.luma.stride,
                keep: r.keep_alive(),
            });
        // SAFETY: the slot is only written by the callback, which runs only
        // inside `send`, not now.
        unsafe { (*self.slot).target = target };
    }

    /// Withdraws the offer of [`Session::offer_target`].
    fn withdraw_target(&mut self) {
        // SAFETY: as in `offer_target`.
        unsafe { (*self.slot).target = None };
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        tracing::debug!(
            in_place = self.in_place,
            whole_in_place = self.whole_in_place,
            copied = self.copied,
            "libavcodec session closed"
        );
        // SAFETY: each pointer is either null or owned by this session; the
        // free functions accept null and set the pointer to null. The context
        // is freed before the slot its callback uses.
        unsafe {
            ff::avcodec_free_context(&mut self.ctx);
            ff::av_packet_free(&mut self.pkt);
            ff::av_frame_free(&mut self.drain);
            let slot = Box::from_raw(self.slot);
            let mut last = slot.last;
            ff::av_frame_free(&mut last);
        }
    }
}

/// An H.264 decoding session on libavcodec.
#[derive(Debug)]
pub struct FfmpegH264 {
    s: Session,
    /// Last SPS / PPS NAL sent for each id.
    sent_sps: HashMap<u8, Vec<u8>>,
    sent_pps: HashMap<u8, Vec<u8>>,
    /// SPS, PPS and scaling matrix control bytes of the previous picture
    /// (their parameter sets are in libavcodec).
    last_ctrls: Vec<u8>,
    scratch: Vec<u8>,
    /// Slices of a picture whose later slices are still to come.
    pending: Vec<u8>,
    /// Timestamp of the pending picture.
    pending_ts: Option<u64>,
    /// Timestamps of the pictures decoded since the last reset that are
    /// still references (plus the last decoded picture).
    decoded: HashSet<u64>,
    /// After a reset or an error: skip pictures until an IDR.
    need_idr: bool,
}

impl std::fmt::Debug for CaptureSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureSlot")
            .field("allocations", &self.allocations)
            .finish()
    }
}

impl FfmpegH264 {
    /// Pictures of this session whose luma plane libavcodec decoded
    /// straight into their CAPTURE buffer (only the chroma was copied, if
    /// anything).
    pub fn in_place_pictures(&self) -> u64 {
        self.s.in_place
    }

    /// Pictures of this session libavcodec decoded wholly into their
    /// (three-plane) CAPTURE buffer: nothing was copied.
    pub fn whole_in_place_pictures(&self) -> u64 {
        self.s.whole_in_place
    }

    /// Opens libavcodec's H.264 decoder for one session.
    pub fn new() -> Result<Self, DecodeError> {
        Ok(Self {
            s: Session::new(ff::AVCodecID::AV_CODEC_ID_H264)?,
            sent_sps: HashMap::new(),
            sent_pps: HashMap::new(),
            last_ctrls: Vec::new(),
            scratch: Vec::new(),
            pending: Vec::new(),
            pending_ts: None,
            decoded: HashSet::new(),
            need_idr: true,
        })
    }

    /// Drops libavcodec's pictures and every piece of session state; the
    /// next picture decoded must be an IDR.
    fn reset_state(&mut self) {
        self.s.flush();
        self.sent_sps.clear();
        self.sent_pps.clear();
        self.last_ctrls.clear();
        self.pending.clear();
        self.pending_ts = None;
        self.decoded.clear();
        self.need_idr = true;
    }

    /// Appends the job's slices to `pending` as Annex B NAL units.
    fn append_slices(&mut self, job: &JobInput<'_>) -> Result<(), DecodeError> {
        let mode = job
            .controls
            .get_int(V4L2_CID_STATELESS_H264_START_CODE)
            .and_then(V4l2StatelessH264StartCode::from_value)
            .unwrap_or(V4l2StatelessH264StartCode::AnnexB);
        let data = job.bitstream;
        match mode {
            V4l2StatelessH264StartCode::AnnexB => {
                // Only slices go to libavcodec: parameter sets come from the
                // controls, and an in-band SPS/PPS (or any other NAL unit a
                // client left in) must not override them.
                let mut slices = 0;
                for unit in nal::annexb_units(data) {
                    if matches!(unit.first().map(|h| h & 0x1f), Some(1 | 5)) {
                        self.pending.extend_from_slice(&START_CODE);
                        self.pending.extend_from_slice(unit);
                        slices += 1;
                    }
                }
                if slices == 0 {
                    return Err(DecodeError::InvalidControls(
                        "START_CODE is Annex B but the buffer has no slice NAL unit".into(),
                    ));
                }
            }
            V4l2StatelessH264StartCode::None => {
                if data.is_empty() {
                    return Err(DecodeError::Corrupt("empty slice".into()));
                }
                self.pending.extend_from_slice(&START_CODE);
                self.pending.extend_from_slice(data);
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: DecodeError) -> Result<DecodeOutcome, DecodeError> {
        self.reset_state();
        Err(e)
    }
}

impl Backend for FfmpegH264 {
    fn name(&self) -> &'static str {
        "ffmpeg"
    }

    fn codec(&self) -> Codec {
        Codec::H264
    }

    fn decode(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
    ) -> Result<DecodeOutcome, DecodeError> {
        job.expect_codec(Codec::H264)?;
        // A new picture while slices of another are held: the held picture
        // was never completed; drop its slices.
        if !job.flags.continues_picture || self.pending_ts != Some(job.timestamp) {
            self.pending.clear();
            self.pending_ts = None;
        }
        if let Err(e) = self.append_slices(job) {
            self.pending.clear();
            self.pending_ts = None;
            return Err(e);
        }
        if job.flags.more_slices {
            self.pending_ts = Some(job.timestamp);
            return Ok(DecodeOutcome::Held);
        }
        self.pending_ts = None;
        let slices = std::mem::take(&mut self.pending);
        out.check()?;

        let sps: V4l2CtrlH264Sps = job
            .controls
            .get()
            .ok_or_else(|| DecodeError::InvalidControls("no SPS".into()))?;
        let pps: V4l2CtrlH264Pps = job
            .controls
            .get()
            .ok_or_else(|| DecodeError::InvalidControls("no PPS".into()))?;
        let dp: V4l2CtrlH264DecodeParams = job
            .controls
            .get()
            .ok_or_else(|| DecodeError::InvalidControls("no DECODE_PARAMS".into()))?;
        let matrix: Option<V4l2CtrlH264ScalingMatrix> = job.controls.get();
        if pps.seq_parameter_set_id != sps.seq_parameter_set_id {
            return Err(DecodeError::InvalidControls(
                "PPS refers to another SPS than the SPS control".into(),
            ));
        }
        let first_type = nal::first_nal(&slices).map(|n| n & 0x1f);
        if !matches!(first_type, Some(1 | 5)) {
            return Err(DecodeError::InvalidControls(format!(
                "expected a slice NAL unit, found type {first_type:?}"
            )));
        }
        let idr = dp.is_idr() || first_type == Some(5);
        if idr {
            if !self.decoded.is_empty() || self.need_idr {
                self.s.flush();
            }
            self.decoded.clear();
            self.need_idr = false;
        } else if self.need_idr {
            return Err(DecodeError::WaitingForKeyframe);
        } else if let Some(&missing) = job.references.iter().find(|t| !self.decoded.contains(t)) {
            return self.fail(DecodeError::MissingReference(missing));
        }

        self.s.packet.clear();
        // The usual case: the same parameter set controls as the previous
        // picture, whose SPS and PPS libavcodec already has. Only compare
        // their bytes (no NAL unit built, no allocation).
        self.scratch.clear();
        for id in [
            V4L2_CID_STATELESS_H264_SPS,
            V4L2_CID_STATELESS_H264_PPS,
            V4L2_CID_STATELESS_H264_SCALING_MATRIX,
        ] {
            self.scratch
                .extend_from_slice(job.controls.get_raw(id).unwrap_or(&[]));
        }
        if self.scratch != self.last_ctrls {
            let sps_nal = nal::build_sps(&sps)?;
            let pps_nal = nal::build_pps(&pps, &sps, matrix.as_ref())?;
            if self.sent_sps.get(&sps.seq_parameter_set_id) != Some(&sps_nal) {
                self.s.packet.extend_from_slice(&sps_nal);
                self.sent_sps.insert(sps.seq_parameter_set_id, sps_nal);
                // A new SPS invalidates the PPS built on the old one.
                self.sent_pps.clear();
            }
            if self.sent_pps.get(&pps.pic_parameter_set_id) != Some(&pps_nal) {
                self.s.packet.extend_from_slice(&pps_nal);
                self.sent_pps.insert(pps.pic_parameter_set_id, pps_nal);
            }
            std::mem::swap(&mut self.scratch, &mut self.last_ctrls);
        }
        self.s.packet.extend_from_slice(&slices);
        self.pending = slices;
        self.pending.clear();

        let before = self.s.allocations();
        let ret = self.s.send();
        if ret < 0 {
            return self.fail(DecodeError::Corrupt(format!(
                "libavcodec refused the picture ({ret})"
            )));
        }
        let after = self.s.allocations();
        let second_field = dp.flags & V4L2_H264_DECODE_PARAM_FLAG_FIELD_PIC != 0
            && after == before
            && self.s.last_alloc_seen == after
            && after > 0;
        if after == before && !second_field {
            return self.fail(DecodeError::Corrupt("no picture decoded".into()));
        }
        self.s.last_alloc_seen = after;
        if let Err(e) = self.s.copy_out(out) {
            return self.fail(e);
        }
        // Pictures that are no longer references never become references
        // again: keep only the current references and this picture.
        self.decoded.retain(|t| job.references.contains(t));
        self.decoded.extend(job.references.iter().copied());
        self.decoded.insert(job.timestamp);
        Ok(DecodeOutcome::Decoded)
    }

    fn decode_retained(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
        retain: Option<&CaptureRetain>,
    ) -> Result<DecodeOutcome, DecodeError> {
        self.s.offer_target(out, retain);
        let r = self.decode(job, out);
        self.s.withdraw_target();
        r
    }

    fn reset(&mut self) {
        self.reset_state();
    }
}

/// What the backend reads itself from a VP8 or VP9 frame header: enough to
/// check the controls against the bitstream and to track reference slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VpxHeader {
    /// Key frame.
    pub key_frame: bool,
    /// `show_frame`.
    pub show_frame: bool,
    /// VP9 `intra_only` (always false for VP8).
    pub intra_only: bool,
    /// VP9 `show_existing_frame`: the frame codes no picture.
    pub show_existing: bool,
    /// VP9 profile (VP8: version).
    pub profile: u8,
    /// Bit depth, when the header codes it (VP9 key and intra-only frames
    /// of profile 2 and 3; 8 for VP8 and for VP9 profiles 0 and 1).
    pub bit_depth: Option<u8>,
    /// Frame size, when the header codes it explicitly (key frames, VP9
    /// intra-only frames).
    pub size: Option<(u32, u32)>,
    /// VP9 slots the decoded frame is stored into (VP8: unused).
    pub refresh_frame_flags: u8,
    /// VP9 slots of the LAST, GOLDEN and ALTREF references (inter frames).
    pub ref_frame_idx: [u8; 3],
    /// VP8 first partition size.
    pub first_part_size: u32,
}

/// MSB-first bit reader over a byte slice (VP9 uncompressed header).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn u(&mut self, n: u32) -> Result<u32, DecodeError> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self
                .data
                .get(self.pos / 8)
                .ok_or_else(|| DecodeError::Corrupt("truncated frame header".into()))?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        Ok(self.u(1)? == 1)
    }
}

impl VpxHeader {
    /// Parses the frame tag (and key frame start code and size) of a VP8
    /// frame.
    pub fn parse_vp8(data: &[u8]) -> Result<Self, DecodeError> {
        if data.len() < 3 {
            return Err(DecodeError::Corrupt(
                "VP8 frame shorter than its tag".into(),
            ));
        }
        let tag = u32::from(data[0]) | u32::from(data[1]) << 8 | u32::from(data[2]) << 16;
        let mut h = Self {
            key_frame: tag & 1 == 0,
            profile: ((tag >> 1) & 7) as u8,
            show_frame: (tag >> 4) & 1 == 1,
            first_part_size: tag >> 5,
            bit_depth: Some(8),
            ..Self::default()
        };
        if h.key_frame {
            if data.len() < 10 || data[3..6] != [0x9d, 0x01, 0x2a] {
                return Err(DecodeError::Corrupt(
                    "VP8 key frame without start code".into(),
                ));
            }
            let w = u32::from(u16::from_le_bytes([data[6], data[7]]) & 0x3fff);
            let hh = u32::from(u16::from_le_bytes([data[8], data[9]]) & 0x3fff);
            h.size = Some((w, hh));
        }
        Ok(h)
    }

    /// Parses the start of a VP9 uncompressed header, up to the reference
    /// slots and the frame size.
    pub fn parse_vp9(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = BitReader { data, pos: 0 };
        let corrupt = |m: &str| DecodeError::Corrupt(format!("VP9 header: {m}"));
        if r.u(2)? != 2 {
            return Err(corrupt("bad frame marker"));
        }
        let lo = r.u(1)?;
        let hi = r.u(1)?;
        let profile = (hi << 1 | lo) as u8;
        if profile == 3 && r.flag()? {
            return Err(corrupt("reserved bit set"));
        }
        let mut h = Self {
            profile,
            ..Self::default()
        };
        if r.flag()? {
            h.show_existing = true;
            return Ok(h);
        }
        h.key_frame = !r.flag()?;
        h.show_frame = r.flag()?;
        let error_resilient = r.flag()?;
        let sync = |r: &mut BitReader<'_>| -> Result<(), DecodeError> {
            if r.u(24)? != 0x49_83_42 {
                return Err(corrupt("bad sync code"));
            }
            Ok(())
        };
        // color_config(): only the bit depth matters here.
        let color_config = |r: &mut BitReader<'_>| -> Result<u8, DecodeError> {
            let depth = if profile >= 2 {
                if r.flag()? {
                    12
                } else {
                    10
                }
            } else {
                8
            };
            let cs = r.u(3)?;
            if cs != 7 {
                r.u(1)?; // color_range
                if profile == 1 || profile == 3 {
                    r.u(3)?; // subsampling_x, subsampling_y, reserved
                }
            } else if profile == 1 || profile == 3 {
                r.u(1)?;
            }
            Ok(depth)
        };
        let frame_size = |r: &mut BitReader<'_>| -> Result<(u32, u32), DecodeError> {
            Ok((r.u(16)? + 1, r.u(16)? + 1))
        };
        if h.key_frame {
            sync(&mut r)?;
            h.bit_depth = Some(color_config(&mut r)?);
            h.size = Some(frame_size(&mut r)?);
            h.refresh_frame_flags = 0xff;
            return Ok(h);
        }
        h.intra_only = if h.show_frame { false } else { r.flag()? };
        if !error_resilient {
            r.u(2)?; // reset_frame_context
        }
        if h.intra_only {
            sync(&mut r)?;
            h.bit_depth = Some(if profile > 0 {
                color_config(&mut r)?
            } else {
                8
            });
            h.refresh_frame_flags = r.u(8)? as u8;
            h.size = Some(frame_size(&mut r)?);
        } else {
            h.refresh_frame_flags = r.u(8)? as u8;
            for i in 0..3 {
                h.ref_frame_idx[i] = r.u(3)? as u8;
                r.u(1)?; // sign bias
            }
        }
        Ok(h)
    }
}

/// A VP8 or VP9 decoding session on libavcodec.
///
/// A VP8/VP9 OUTPUT buffer holds one whole frame (for VP9 one frame of a
/// superframe, hidden frames such as an altref being jobs of their own), so
/// libavcodec decodes the bitstream as it is. The controls serve to check
/// the job: key frame / intra-only / show flags, profile, frame size and bit
/// depth against the bitstream and the CAPTURE format, and the reference
/// timestamps against the pictures this session decoded. A hidden frame is
/// decoded but never output by libavcodec; its picture is captured from
/// `get_buffer2` like every other one.
#[derive(Debug)]
pub struct FfmpegVpx {
    codec: Codec,
    s: Session,
    /// VP9: timestamp of the picture in each of the 8 reference slots.
    /// VP8: the pictures that can still be LAST, GOLDEN or ALTREF (at most
    /// the previous frame's references and the previous frame).
    slots: [Option<u64>; 8],
    /// After a reset or an error: skip frames until a key frame.
    need_key: bool,
}

impl FfmpegVpx {
    /// Pictures of this session whose luma plane libavcodec decoded
    /// straight into their CAPTURE buffer (only the chroma was copied, if
    /// anything).
    pub fn in_place_pictures(&self) -> u64 {
        self.s.in_place
    }

    /// Pictures of this session libavcodec decoded wholly into their
    /// (three-plane) CAPTURE buffer: nothing was copied.
    pub fn whole_in_place_pictures(&self) -> u64 {
        self.s.whole_in_place
    }

    /// Opens libavcodec's VP8 or VP9 decoder for one session.
    pub fn new(codec: Codec) -> Result<Self, DecodeError> {
        let id = match codec {
            Codec::Vp8 => ff::AVCodecID::AV_CODEC_ID_VP8,
            Codec::Vp9 => ff::AVCodecID::AV_CODEC_ID_VP9,
            other => {
                return Err(DecodeError::Unsupported(format!(
                    "{other:?} is not VP8 or VP9"
                )))
            }
        };
        Ok(Self {
            codec,
            s: Session::new(id)?,
            slots: [None; 8],
            need_key: true,
        })
    }

    fn fail(&mut self, e: DecodeError) -> Result<DecodeOutcome, DecodeError> {
        self.reset();
        Err(e)
    }

    /// Parses the bitstream header and checks the controls against it and
    /// against the CAPTURE format. Returns the header and the job's
    /// reference timestamps in LAST, GOLDEN, ALTREF order (none for intra
    /// frames).
    fn check_job(
        &self,
        job: &JobInput<'_>,
        out: &CaptureTarget<'_>,
    ) -> Result<(VpxHeader, Option<[u64; 3]>), DecodeError> {
        let bad = |m: String| Err(DecodeError::InvalidControls(m));
        let (hdr, size, depth, refs) = match self.codec {
            Codec::Vp8 => {
                let f: V4l2CtrlVp8Frame = job
                    .controls
                    .get()
                    .ok_or_else(|| DecodeError::InvalidControls("no VP8_FRAME".into()))?;
                let hdr = VpxHeader::parse_vp8(job.bitstream)?;
                if hdr.key_frame != f.is_key_frame() {
                    return bad("KEY_FRAME flag contradicts the frame tag".into());
                }
                if hdr.show_frame != (f.flags & V4L2_VP8_FRAME_FLAG_SHOW_FRAME != 0) {
                    return bad("SHOW_FRAME flag contradicts the frame tag".into());
                }
                if hdr.first_part_size != f.first_part_size {
                    return bad(format!(
                        "first_part_size {} but the frame tag says {}",
                        f.first_part_size, hdr.first_part_size
                    ));
                }
                // The partitions the controls describe must be in the
                // buffer: a truncated frame fails here (libavcodec would
                // decode the missing part as zeros).
                let parts = usize::from(f.num_dct_parts.clamp(1, 8));
                let header = if hdr.key_frame { 10 } else { 3 };
                let dct: u64 = f.dct_part_sizes[..parts]
                    .iter()
                    .map(|&s| u64::from(s))
                    .sum();
                let first = header + u64::from(f.first_part_size);
                let need = if dct > 0 {
                    first + 3 * (parts as u64 - 1) + dct
                } else {
                    first
                };
                if need > job.bitstream.len() as u64 {
                    return Err(DecodeError::Corrupt(format!(
                        "VP8 frame of {} bytes, its partitions need {need}",
                        job.bitstream.len()
                    )));
                }
                let size = (u32::from(f.width), u32::from(f.height));
                let refs = (!hdr.key_frame).then_some([
                    f.last_frame_ts,
                    f.golden_frame_ts,
                    f.alt_frame_ts,
                ]);
                (hdr, size, 8, refs)
            }
            _ => {
                let f: V4l2CtrlVp9Frame = job
                    .controls
                    .get()
                    .ok_or_else(|| DecodeError::InvalidControls("no VP9_FRAME".into()))?;
                let hdr = VpxHeader::parse_vp9(job.bitstream)?;
                if hdr.show_existing {
                    return Err(DecodeError::InvalidControls(
                        "show_existing_frame codes no picture: not a decode job".into(),
                    ));
                }
                let flag = |b| f.flags & b != 0;
                if hdr.key_frame != flag(V4L2_VP9_FRAME_FLAG_KEY_FRAME)
                    || hdr.show_frame != flag(V4L2_VP9_FRAME_FLAG_SHOW_FRAME)
                    || hdr.intra_only != flag(V4L2_VP9_FRAME_FLAG_INTRA_ONLY)
                {
                    return bad("frame flags contradict the frame header".into());
                }
                if hdr.profile != f.profile {
                    return bad(format!(
                        "profile {} but the frame header says {}",
                        f.profile, hdr.profile
                    ));
                }
                if hdr.bit_depth.is_some_and(|d| d != f.bit_depth) {
                    return bad(format!("bit_depth {} contradicts the header", f.bit_depth));
                }
                // Tile data must follow the two headers; libavcodec would
                // decode a truncated last tile from zeros.
                let headers =
                    usize::from(f.uncompressed_header_size) + usize::from(f.compressed_header_size);
                if f.compressed_header_size > 0 && headers >= job.bitstream.len() {
                    return Err(DecodeError::Corrupt(format!(
                        "VP9 frame of {} bytes, its headers take {headers}",
                        job.bitstream.len()
                    )));
                }
                let size = (
                    u32::from(f.frame_width_minus_1) + 1,
                    u32::from(f.frame_height_minus_1) + 1,
                );
                let refs =
                    (!f.is_intra()).then_some([f.last_frame_ts, f.golden_frame_ts, f.alt_frame_ts]);
                (hdr, size, f.bit_depth, refs)
            }
        };
        if let Some(s) = hdr.size {
            if s != size {
                return bad(format!(
                    "frame size {}x{} but the header codes {}x{}",
                    size.0, size.1, s.0, s.1
                ));
            }
        }
        if size.0 > out.width || size.1 > out.height || size.0 == 0 || size.1 == 0 {
            return Err(DecodeError::FormatMismatch(format!(
                "{}x{} frame into {}x{}",
                size.0, size.1, out.width, out.height
            )));
        }
        if depth != 8 && depth != 10 {
            return Err(DecodeError::Unsupported(format!("{depth}-bit VP9")));
        }
        if out.format.bit_depth() != u32::from(depth) {
            return Err(DecodeError::FormatMismatch(format!(
                "{depth}-bit frame into {:?}",
                out.format
            )));
        }
        Ok((hdr, refs))
    }

    /// Checks the job's references against the reference slots.
    fn check_refs(&self, hdr: &VpxHeader, refs: &[u64; 3]) -> Result<(), u64> {
        for (i, &ts) in refs.iter().enumerate() {
            let ok = match self.codec {
                Codec::Vp8 => self.slots.contains(&Some(ts)),
                _ => self.slots[usize::from(hdr.ref_frame_idx[i])] == Some(ts),
            };
            if !ok {
                return Err(ts);
            }
        }
        Ok(())
    }
}

impl Backend for FfmpegVpx {
    fn name(&self) -> &'static str {
        "ffmpeg"
    }

    fn codec(&self) -> Codec {
        self.codec
    }

    fn decode(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
    ) -> Result<DecodeOutcome, DecodeError> {
        job.expect_codec(self.codec)?;
        if job.flags.more_slices || job.flags.continues_picture {
            return Err(DecodeError::InvalidControls(
                "VP8/VP9 jobs carry whole frames (no held CAPTURE buffers)".into(),
            ));
        }
        out.check()?;
        let (hdr, refs) = match self.check_job(job, out) {
            Ok(v) => v,
            // A damaged frame: what follows cannot be predicted from it.
            Err(e @ DecodeError::Corrupt(_)) => return self.fail(e),
            // Controls or CAPTURE format wrong: the job is refused, the
            // session unchanged.
            Err(e) => return Err(e),
        };
        if hdr.key_frame {
            if self.need_key || self.slots.iter().any(Option::is_some) {
                self.s.flush();
            }
            self.slots = [None; 8];
            self.need_key = false;
        } else if self.need_key {
            return Err(DecodeError::WaitingForKeyframe);
        }
        if let Some(refs) = &refs {
            if let Err(missing) = self.check_refs(&hdr, refs) {
                return self.fail(DecodeError::MissingReference(missing));
            }
        }
        self.s.packet.clear();
        self.s.packet.extend_from_slice(job.bitstream);
        if let Err(e) = self.s.decode_packet() {
            return self.fail(e);
        }
        match self.s.picture() {
            Ok(p) if p.bits10 != (out.format.bit_depth() == 10) => {
                return self.fail(DecodeError::FormatMismatch(
                    "decoded bit depth differs from the controls".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => return self.fail(e),
        }
        if let Err(e) = self.s.copy_out(out) {
            return self.fail(e);
        }
        match self.codec {
            Codec::Vp8 => {
                // The next frame's LAST, GOLDEN and ALTREF are each this
                // frame or one of this frame's references.
                self.slots = [None; 8];
                for (s, ts) in self.slots.iter_mut().zip(refs.iter().flatten()) {
                    *s = Some(*ts);
                }
                self.slots[3] = Some(job.timestamp);
            }
            _ => {
                for (i, s) in self.slots.iter_mut().enumerate() {
                    if hdr.refresh_frame_flags & (1 << i) != 0 {
                        *s = Some(job.timestamp);
                    }
                }
            }
        }
        Ok(DecodeOutcome::Decoded)
    }

    fn decode_retained(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
        retain: Option<&CaptureRetain>,
    ) -> Result<DecodeOutcome, DecodeError> {
        self.s.offer_target(out, retain);
        let r = self.decode(job, out);
        self.s.withdraw_target();
        r
    }

    fn reset(&mut self) {
        self.s.flush();
        self.slots = [None; 8];
        self.need_key = true;
    }
}

/// An HEVC decoding session on libavcodec.
///
/// Parameter sets are rebuilt from the controls (see [`hevc_nal`]) and sent
/// when they change; each slice NAL unit is rebuilt with a slice header
/// coded from the slice and decode parameters and the client's slice data.
/// All slices of a picture (one frame-based job, or the slice-based jobs up
/// to the one without `more_slices`) go to libavcodec as one packet; the
/// picture is captured from `get_buffer2` during that packet.
#[derive(Debug)]
pub struct FfmpegHevc {
    s: Session,
    /// SPS, PPS and scaling matrix control bytes of the parameter sets last
    /// sent (compared, not rebuilt, on every picture).
    sent: Vec<u8>,
    scratch: Vec<u8>,
    /// Rebuilt slices of the picture being assembled.
    pending: Vec<u8>,
    /// Timestamp of the picture being assembled.
    pending_ts: Option<u64>,
    rps: hevc_nal::Rps,
    writer: nal::BitWriter,
    /// Pictures decoded since the last reset that are still in the DPB.
    decoded: HashSet<u64>,
    /// After a reset or an error: skip pictures until an IRAP picture.
    need_irap: bool,
}

impl FfmpegHevc {
    /// Pictures of this session whose luma plane libavcodec decoded
    /// straight into their CAPTURE buffer (only the chroma was copied, if
    /// anything).
    pub fn in_place_pictures(&self) -> u64 {
        self.s.in_place
    }

    /// Pictures of this session libavcodec decoded wholly into their
    /// (three-plane) CAPTURE buffer: nothing was copied.
    pub fn whole_in_place_pictures(&self) -> u64 {
        self.s.whole_in_place
    }

    /// Opens libavcodec's HEVC decoder for one session.
    pub fn new() -> Result<Self, DecodeError> {
        let s = Session::new(ff::AVCodecID::AV_CODEC_ID_HEVC)?;
        // SAFETY: the slot is owned by the session; libavcodec is not
        // running.
        unsafe { (*s.slot).first_only = true };
        Ok(Self {
            s,
            sent: Vec::new(),
            scratch: Vec::new(),
            pending: Vec::new(),
            pending_ts: None,
            rps: hevc_nal::Rps::default(),
            writer: nal::BitWriter::new(),
            decoded: HashSet::new(),
            need_irap: true,
        })
    }

    fn fail(&mut self, e: DecodeError) -> Result<DecodeOutcome, DecodeError> {
        self.reset();
        Err(e)
    }

    /// Rebuilds the job's slices into `pending`; checks the picture's
    /// references on its first job.
    fn add_slices(
        &mut self,
        job: &JobInput<'_>,
        out: &CaptureTarget<'_>,
    ) -> Result<(), DecodeError> {
        let c = job.controls;
        let missing = |n: &str| DecodeError::InvalidControls(format!("no {n}"));
        let sps: V4l2CtrlHevcSps = c.get().ok_or_else(|| missing("SPS"))?;
        let pps: V4l2CtrlHevcPps = c.get().ok_or_else(|| missing("PPS"))?;
        let dp: V4l2CtrlHevcDecodeParams = c.get().ok_or_else(|| missing("DECODE_PARAMS"))?;
        let slices = c.get_array::<V4l2CtrlHevcSliceParams>();
        if slices.is_empty() {
            return Err(missing("SLICE_PARAMS"));
        }
        let matrix: Option<V4l2CtrlHevcScalingMatrix> = c.get();
        if u32::from(sps.pic_width_in_luma_samples) > out.width
            || u32::from(sps.pic_height_in_luma_samples) > out.height
        {
            return Err(DecodeError::FormatMismatch(format!(
                "{}x{} picture into {}x{}",
                sps.pic_width_in_luma_samples,
                sps.pic_height_in_luma_samples,
                out.width,
                out.height
            )));
        }
        if sps.bit_depth_luma_minus8 > 0 && out.format.bit_depth() == 8 {
            return Err(DecodeError::FormatMismatch(format!(
                "10-bit picture into {:?}",
                out.format
            )));
        }
        let annex_b = c.get_int(V4L2_CID_STATELESS_HEVC_START_CODE)
            == Some(V4L2_STATELESS_HEVC_START_CODE_ANNEX_B);
        let nal_type = |u: &[u8]| u.first().map_or(63, |h| (h >> 1) & 0x3f);
        let is_slice = |t: u8| t <= 21 && !(10..16).contains(&t);

        if !job.flags.continues_picture {
            let first_type = slices[0].nal_unit_type;
            let irap = dp.flags & V4L2_HEVC_DECODE_PARAM_FLAG_IRAP_PIC != 0
                || (16..=23).contains(&first_type);
            if irap {
                if self.need_irap {
                    self.s.flush();
                    self.sent.clear();
                    self.decoded.clear();
                    self.need_irap = false;
                }
            } else if self.need_irap {
                return Err(DecodeError::WaitingForKeyframe);
            }
            // An IRAP picture uses none of its DPB entries (they are kept
            // for its leading pictures), so only other pictures are checked.
            let missing = if irap {
                None
            } else {
                job.references.iter().find(|t| !self.decoded.contains(t))
            };
            if let Some(&t) = missing {
                // A RASL picture of the CRA decoding restarted at cannot be
                // decoded; the pictures after it can.
                if matches!(first_type, 8 | 9) {
                    return Err(DecodeError::MissingReference(t));
                }
                self.reset();
                return Err(DecodeError::MissingReference(t));
            }
            self.rps.from_decode_params(&dp)?;
            // Parameter sets: resend when any of their controls changed.
            self.scratch.clear();
            for id in [
                V4L2_CID_STATELESS_HEVC_SPS,
                V4L2_CID_STATELESS_HEVC_PPS,
                V4L2_CID_STATELESS_HEVC_SCALING_MATRIX,
            ] {
                self.scratch.extend_from_slice(c.get_raw(id).unwrap_or(&[]));
            }
            if self.scratch != self.sent {
                let mut ps = Vec::new();
                hevc_nal::build_vps(&mut ps, &sps);
                hevc_nal::build_sps(&mut ps, &sps)?;
                hevc_nal::build_pps(&mut ps, &pps, &sps, matrix.as_ref())?;
                self.pending.clear();
                self.pending.extend_from_slice(&ps);
                std::mem::swap(&mut self.sent, &mut self.scratch);
            }
        }
        let cx = hevc_nal::PicContext {
            sps: &sps,
            pps: &pps,
            dp: &dp,
            rps: &self.rps,
        };
        let epo = c
            .get_raw(V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS)
            .unwrap_or(&[]);
        let mut ep_at = 0usize;
        let mut n = 0usize;
        let mut add = |unit: &[u8], pending: &mut Vec<u8>, w: &mut nal::BitWriter| {
            let sl = slices.get(n).ok_or_else(|| {
                DecodeError::InvalidControls("more slices than SLICE_PARAMS entries".into())
            })?;
            n += 1;
            let k = sl.num_entry_point_offsets as usize;
            let eps = epo.get(ep_at * 4..(ep_at + k) * 4).ok_or_else(|| {
                DecodeError::InvalidControls("ENTRY_POINT_OFFSETS too short".into())
            })?;
            ep_at += k;
            let mut vals = [0u32; 256];
            let k = k.min(256);
            for (v, b) in vals.iter_mut().zip(eps.chunks_exact(4)) {
                *v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            hevc_nal::rewrite_slice(pending, w, &cx, sl, unit, &vals[..k])
        };
        if annex_b {
            for unit in nal::annexb_units(job.bitstream) {
                if is_slice(nal_type(unit)) {
                    add(unit, &mut self.pending, &mut self.writer)?;
                }
            }
        } else {
            add(job.bitstream, &mut self.pending, &mut self.writer)?;
        }
        if n != slices.len() {
            return Err(DecodeError::InvalidControls(format!(
                "{n} slice NAL units for {} SLICE_PARAMS entries",
                slices.len()
            )));
        }
        Ok(())
    }
}

impl Backend for FfmpegHevc {
    fn name(&self) -> &'static str {
        "ffmpeg"
    }

    fn codec(&self) -> Codec {
        Codec::Hevc
    }

    fn decode(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
    ) -> Result<DecodeOutcome, DecodeError> {
        job.expect_codec(Codec::Hevc)?;
        out.check()?;
        if !job.flags.continues_picture || self.pending_ts != Some(job.timestamp) {
            if job.flags.continues_picture {
                return Err(DecodeError::InvalidControls(
                    "slice continues a picture that was not started".into(),
                ));
            }
            self.pending.clear();
            self.pending_ts = None;
        }
        if let Err(e) = self.add_slices(job, out) {
            self.pending.clear();
            self.pending_ts = None;
            return Err(e);
        }
        if job.flags.more_slices {
            self.pending_ts = Some(job.timestamp);
            return Ok(DecodeOutcome::Held);
        }
        self.pending_ts = None;
        std::mem::swap(&mut self.s.packet, &mut self.pending);
        self.pending.clear();
        if let Err(e) = self.s.decode_packet() {
            return self.fail(e);
        }
        if let Err(e) = self.s.copy_out(out) {
            return self.fail(e);
        }
        // Only pictures this session decoded count (an IRAP picture's DPB
        // may name pictures from before a restart).
        self.decoded.retain(|t| job.references.contains(t));
        self.decoded.insert(job.timestamp);
        Ok(DecodeOutcome::Decoded)
    }

    fn decode_retained(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
        retain: Option<&CaptureRetain>,
    ) -> Result<DecodeOutcome, DecodeError> {
        self.s.offer_target(out, retain);
        let r = self.decode(job, out);
        self.s.withdraw_target();
        r
    }

    fn reset(&mut self) {
        self.s.flush();
        self.sent.clear();
        self.pending.clear();
        self.pending_ts = None;
        self.decoded.clear();
        self.need_irap = true;
    }
}

/// Decodes an Annex B H.264 or HEVC elementary stream with libavcodec
/// directly (its own parser, one decoding thread, default allocator, no
/// copy) and returns the number of pictures output: the baseline the
/// V4L2 stack's speed is compared with.
pub fn plain_decode(codec: Codec, data: &[u8]) -> Result<usize, DecodeError> {
    let id = match codec {
        Codec::H264 => ff::AVCodecID::AV_CODEC_ID_H264,
        Codec::Hevc => ff::AVCodecID::AV_CODEC_ID_HEVC,
        other => {
            return Err(DecodeError::Unsupported(format!(
                "plain decode of {other:?}"
            )))
        }
    };
    let err = |m: &str| DecodeError::Internal(format!("libavcodec: {m}"));
    let s = Session::new(id)?;
    // SAFETY: `ctx` is open; restoring the default allocator before any
    // packet is sent is allowed (the slot simply stays unused).
    unsafe { (*s.ctx).get_buffer2 = Some(ff::avcodec_default_get_buffer2) };
    // SAFETY: plain parser allocation for a known codec id; null checked.
    let parser = unsafe { ff::av_parser_init(id as c_int) };
    if parser.is_null() {
        return Err(err("no parser"));
    }
    let mut padded = Vec::with_capacity(data.len() + ff::AV_INPUT_BUFFER_PADDING_SIZE as usize);
    padded.extend_from_slice(data);
    padded.resize(data.len() + ff::AV_INPUT_BUFFER_PADDING_SIZE as usize, 0);
    let mut frames = 0;
    let mut pos = 0usize;
    let mut result = Ok(());
    loop {
        let flushing = pos >= data.len();
        let chunk = (data.len() - pos).min(1 << 16);
        let mut out: *mut u8 = ptr::null_mut();
        let mut out_size: c_int = 0;
        // SAFETY: `parser` and `ctx` are valid; the input pointer covers
        // `chunk` bytes of `padded` (plus padding), or is null with size 0
        // to flush; the parser returns a pointer into its own buffer or
        // into the input, valid until the next call.
        let used = unsafe {
            ff::av_parser_parse2(
                parser,
                s.ctx,
                &mut out,
                &mut out_size,
                if flushing {
                    ptr::null()
                } else {
                    padded.as_ptr().add(pos)
                },
                chunk as c_int,
                ff::AV_NOPTS_VALUE,
                ff::AV_NOPTS_VALUE,
                0,
            )
        };
        if used < 0 {
            result = Err(err("parser failed"));
            break;
        }
        pos += used as usize;
        let packet = out_size > 0;
        // SAFETY: `pkt` is a valid packet without buffer pointing at the
        // parser's output only during avcodec_send_packet (which copies
        // it); a null packet starts draining. `drain` is a valid frame.
        unsafe {
            let p = &mut *s.pkt;
            p.data = out;
            p.size = out_size;
            let ret = if packet {
                ff::avcodec_send_packet(s.ctx, s.pkt)
            } else if flushing {
                ff::avcodec_send_packet(s.ctx, ptr::null())
            } else {
                0
            };
            p.data = ptr::null_mut();
            p.size = 0;
            if ret < 0 && ret != ff::AVERROR_EOF {
                result = Err(err(&format!("decode error {ret}")));
            }
            while ff::avcodec_receive_frame(s.ctx, s.drain) >= 0 {
                frames += 1;
                ff::av_frame_unref(s.drain);
            }
        }
        if flushing && !packet {
            break;
        }
    }
    // SAFETY: the parser was created above and is not used afterwards.
    unsafe { ff::av_parser_close(parser) };
    result.map(|()| frames)
}

/// Decodes VP8 or VP9 frames (one packet each, as in IVF) with libavcodec
/// directly (one thread, default allocator, no copy) and returns the
/// number of pictures output: the speed baseline for those codecs.
pub fn plain_decode_packets(codec: Codec, packets: &[&[u8]]) -> Result<usize, DecodeError> {
    let id = match codec {
        Codec::Vp8 => ff::AVCodecID::AV_CODEC_ID_VP8,
        Codec::Vp9 => ff::AVCodecID::AV_CODEC_ID_VP9,
        other => {
            return Err(DecodeError::Unsupported(format!(
                "packet decode of {other:?}"
            )))
        }
    };
    let mut s = Session::new(id)?;
    // SAFETY: `ctx` is open; restoring the default allocator before any
    // packet is sent is allowed.
    unsafe { (*s.ctx).get_buffer2 = Some(ff::avcodec_default_get_buffer2) };
    for p in packets {
        s.packet.clear();
        s.packet.extend_from_slice(p);
        let ret = s.send();
        if ret < 0 {
            return Err(DecodeError::Corrupt(format!("decode error {ret}")));
        }
    }
    // SAFETY: a null packet starts draining an open context; `drain` is a
    // valid frame.
    unsafe {
        ff::avcodec_send_packet(s.ctx, ptr::null());
        while ff::avcodec_receive_frame(s.ctx, s.drain) >= 0 {
            s.drained += 1;
            ff::av_frame_unref(s.drain);
        }
    }
    Ok(s.drained as usize)
}

#[cfg(test)]
mod in_place_tests {
    use super::*;
    use crate::backend::test_mem::{decode_jobs, encode, Mem};
    use crate::backend::CaptureFormat;
    use crate::backend::CapturePlane;
    use daedalus_client::h264::{H264Parser, Packing};
    use daedalus_client::StreamParser;

    fn decode(jobs: &[daedalus_client::Job], stride: usize, in_place: bool) -> (Vec<Vec<u8>>, u64) {
        let mut backend = FfmpegH264::new().unwrap();
        let (pictures, kept) = decode_jobs(
            &mut backend,
            Codec::H264,
            jobs,
            CaptureFormat::Nv12,
            stride,
            in_place,
        );
        let n = backend.in_place_pictures();
        drop(backend);
        // libavcodec's references are gone with the session: only the
        // test's own references remain.
        assert!(kept.iter().all(|m| Arc::strong_count(m) == 1));
        (pictures, n)
    }

    fn h264_jobs() -> Vec<daedalus_client::Job> {
        let file = encode(
            "ibp.264",
            &[
                "-c:v",
                "libx264",
                "-x264-params",
                "keyint=12:bframes=2:ref=3",
            ],
            "160x96",
        );
        let mut parser = H264Parser::from_file(&file, Packing::PicturePerJob).unwrap();
        let mut jobs = Vec::new();
        while let Some(j) = parser.next_job().unwrap() {
            jobs.push(j);
        }
        let _ = std::fs::remove_file(&file);
        assert_eq!(jobs.len(), 24);
        jobs
    }

    #[test]
    fn h264_luma_is_decoded_in_place_and_matches_the_copy() {
        let jobs = h264_jobs();
        let (want, n) = decode(&jobs, 256, false);
        assert_eq!(n, 0, "no retained memory: every picture copied");
        // A 64-byte multiple stride: every picture decoded in place.
        let (got, n) = decode(&jobs, 256, true);
        assert_eq!(n, jobs.len() as u64, "pictures decoded in place");
        assert!(got == want, "in-place pictures differ from copied ones");
        assert_ne!(want[0], want[23]);
        // A stride libavcodec cannot use (not a multiple of its line
        // alignment): silently copied, same pictures.
        let (got, n) = decode(&jobs, 168, true);
        assert_eq!(n, 0);
        assert!(got == want, "fallback pictures differ");
    }

    /// Decodes `jobs` into three-plane buffers; returns the pictures and
    /// how many were decoded wholly in place.
    fn decode_planar(
        backend: &mut dyn Backend,
        codec: Codec,
        jobs: &[daedalus_client::Job],
        stride: usize,
        in_place: bool,
    ) -> Vec<Vec<u8>> {
        let (pictures, kept) = decode_jobs(
            backend,
            codec,
            jobs,
            CaptureFormat::Yuv420,
            stride,
            in_place,
        );
        backend.reset();
        drop(kept);
        pictures
    }

    #[test]
    fn h264_and_vp9_decode_wholly_in_place_into_three_planes() {
        let jobs = h264_jobs();
        let (want, _) = decode(&jobs, 256, false);
        let mut b = FfmpegH264::new().unwrap();
        let got = decode_planar(&mut b, Codec::H264, &jobs, 256, true);
        assert_eq!(b.whole_in_place_pictures(), jobs.len() as u64);
        assert!(got == want, "three-plane pictures differ from NV12 copies");
        // Not retained: copied plane by plane, same pictures.
        let mut b = FfmpegH264::new().unwrap();
        let got = decode_planar(&mut b, Codec::H264, &jobs, 256, false);
        assert_eq!((b.in_place_pictures(), b.whole_in_place_pictures()), (0, 0));
        assert!(got == want);

        let file = encode(
            "vp9.ivf",
            &[
                "-c:v",
                "libvpx-vp9",
                "-g",
                "8",
                "-lag-in-frames",
                "8",
                "-auto-alt-ref",
                "1",
            ],
            "176x100",
        );
        let mut parser =
            daedalus_client::vp9::Vp9Parser::new(std::fs::read(&file).unwrap()).unwrap();
        let _ = std::fs::remove_file(&file);
        let mut jobs = Vec::new();
        while let Some(j) = parser.next_job().unwrap() {
            jobs.push(j);
        }
        assert!(jobs.len() >= 24);
        let run = |format, in_place| {
            let mut b = FfmpegVpx::new(Codec::Vp9).unwrap();
            let (pics, kept) = decode_jobs(&mut b, Codec::Vp9, &jobs, format, 256, in_place);
            let n = (b.in_place_pictures(), b.whole_in_place_pictures());
            drop(b);
            assert!(kept.iter().all(|m| Arc::strong_count(m) == 1));
            (pics, n)
        };
        let (want, n) = run(CaptureFormat::Nv12, false);
        assert_eq!(n, (0, 0));
        let (got, n) = run(CaptureFormat::Nv12, true);
        assert_eq!(n, (jobs.len() as u64, 0));
        assert!(got == want, "VP9 pictures with the luma in place differ");
        let (got, n) = run(CaptureFormat::Yuv420, true);
        assert_eq!(n, (jobs.len() as u64, jobs.len() as u64));
        assert!(
            got == want,
            "three-plane VP9 pictures differ from NV12 copies"
        );
        assert_ne!(want[0], want[want.len() - 1]);
    }

    #[test]
    fn retain_covers_only_its_target() {
        let mem = Mem::new(64 * 24);
        let other = Mem::new(64 * 24);
        let t = CaptureTarget::contiguous(CaptureFormat::Nv12, 64, 16, 64, mem.bytes()).unwrap();
        let keep: Arc<dyn Send + Sync> = mem.clone();
        // SAFETY: `keep` owns the memory of `t`.
        let r = unsafe { CaptureRetain::new(keep, &t) };
        assert!(r.covers(&t));
        // Contiguous: the chroma plane after the luma plane counts.
        assert_eq!(r.luma_extent(), 64 * 24);
        let u = CaptureTarget::contiguous(CaptureFormat::Nv12, 64, 16, 64, other.bytes()).unwrap();
        assert!(!r.covers(&u));
        // Separate planes: only the luma plane.
        let (a, b) = (Mem::new(64 * 16), Mem::new(64 * 8));
        let t = CaptureTarget {
            format: CaptureFormat::Nv12,
            width: 64,
            height: 16,
            luma: CapturePlane {
                data: a.bytes(),
                stride: 64,
            },
            chroma: CapturePlane {
                data: b.bytes(),
                stride: 64,
            },
            cr: None,
        };
        // SAFETY: `a` is retained; `b` outlives `r` (declared before it).
        let r = unsafe { CaptureRetain::new(a.clone(), &t) };
        assert_eq!(r.luma_extent(), 64 * 16);
        assert_eq!(r.chroma_extents(), None);
        // Three planes: each its own extent, never merged.
        let c = Mem::new(32 * 8);
        let t = CaptureTarget::planar(64, 16, a.plane(64), c.plane(32), b.plane(32)).unwrap();
        // SAFETY: `a`, `b` and `c` outlive `r`.
        let r = unsafe { CaptureRetain::new(a.clone(), &t) };
        assert!(r.covers(&t));
        assert_eq!(r.luma_extent(), 64 * 16);
        assert_eq!(r.chroma_extents(), Some([32 * 8, 64 * 8]));
    }
}

/// H.264 NAL unit writing: SPS and PPS from the V4L2 controls.
pub mod nal {
    use decoder_core::ctrl::h264::*;

    use crate::backend::DecodeError;

    /// MSB-first bit writer with Exp-Golomb codes.
    #[derive(Debug, Default)]
    pub struct BitWriter {
        bytes: Vec<u8>,
        cur: u8,
        nbits: u8,
    }

    impl BitWriter {
        /// Empty writer.
        pub fn new() -> Self {
            Self::default()
        }

        /// Writes the `n` (<= 32) low bits of `v`, most significant first.
        pub fn u(&mut self, n: u32, v: u32) {
            for i in (0..n).rev() {
                self.cur = (self.cur << 1) | ((v >> i) & 1) as u8;
                self.nbits += 1;
                if self.nbits == 8 {
                    self.bytes.push(self.cur);
                    self.cur = 0;
                    self.nbits = 0;
                }
            }
        }

        /// Writes one flag bit.
        pub fn flag(&mut self, b: bool) {
            self.u(1, u32::from(b));
        }

        /// `ue(v)`: unsigned Exp-Golomb.
        pub fn ue(&mut self, v: u32) {
            let x = u64::from(v) + 1;
            let len = 64 - x.leading_zeros(); // bits of v + 1
            self.u(len - 1, 0);
            // x has `len` <= 33 bits: write the top bit, then the rest.
            self.u(1, 1);
            self.u(len - 1, (x & ((1u64 << (len - 1)) - 1)) as u32);
        }

        /// `se(v)`: signed Exp-Golomb.
        pub fn se(&mut self, v: i32) {
            let m = if v > 0 {
                (v as u32) * 2 - 1
            } else {
                v.unsigned_abs() * 2
            };
            self.ue(m);
        }

        /// `rbsp_trailing_bits()` and the RBSP bytes.
        pub fn finish_rbsp(mut self) -> Vec<u8> {
            self.u(1, 1);
            while self.nbits != 0 {
                self.u(1, 0);
            }
            self.bytes
        }
    }

    /// An Annex B NAL unit: start code, header byte, RBSP with emulation
    /// prevention bytes.
    pub fn nal_unit(nal_ref_idc: u8, nal_type: u8, rbsp: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 5);
        out.extend_from_slice(&[0, 0, 0, 1, (nal_ref_idc << 5) | nal_type]);
        let mut zeros = 0;
        for &b in rbsp {
            if zeros >= 2 && b <= 3 {
                out.push(3);
                zeros = 0;
            }
            out.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
        }
        out
    }

    /// The NAL units of an Annex B buffer, without start codes (and without
    /// the zero bytes that precede the next start code).
    pub fn annexb_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
        let find = |from: usize| {
            data.get(from..)?
                .windows(3)
                .position(|w| w == [0, 0, 1])
                .map(|p| from + p)
        };
        let mut next = find(0);
        std::iter::from_fn(move || {
            let start = next? + 3;
            next = find(start);
            let mut end = next.unwrap_or(data.len());
            while end > start && data[end - 1] == 0 {
                end -= 1;
            }
            Some(&data[start..end])
        })
        .filter(|u| !u.is_empty())
    }

    /// Header byte of the first NAL unit of an Annex B buffer.
    pub fn first_nal(data: &[u8]) -> Option<u8> {
        let i = data.windows(3).position(|w| w == [0, 0, 1])?;
        data.get(i + 3).copied()
    }

    /// SPS NAL unit (nal_unit_type 7) equivalent to the control: no VUI, no
    /// cropping (the CAPTURE buffer holds the whole coded picture), no
    /// scaling lists (they go to the PPS).
    pub fn build_sps(s: &V4l2CtrlH264Sps) -> Result<Vec<u8>, DecodeError> {
        let mut w = BitWriter::new();
        w.u(8, s.profile_idc.into());
        for i in 0..6 {
            w.flag(s.constraint_set_flags & (1 << i) != 0);
        }
        w.u(2, 0);
        w.u(8, s.level_idc.into());
        w.ue(s.seq_parameter_set_id.into());
        if s.has_chroma_format() {
            w.ue(s.chroma_format_idc.into());
            if s.chroma_format_idc == 3 {
                w.flag(s.flags & V4L2_H264_SPS_FLAG_SEPARATE_COLOUR_PLANE != 0);
            }
            w.ue(s.bit_depth_luma_minus8.into());
            w.ue(s.bit_depth_chroma_minus8.into());
            w.flag(s.flags & V4L2_H264_SPS_FLAG_QPPRIME_Y_ZERO_TRANSFORM_BYPASS != 0);
            w.flag(false); // seq_scaling_matrix_present_flag
        }
        w.ue(s.log2_max_frame_num_minus4.into());
        w.ue(s.pic_order_cnt_type.into());
        match s.pic_order_cnt_type {
            0 => w.ue(s.log2_max_pic_order_cnt_lsb_minus4.into()),
            1 => {
                w.flag(s.flags & V4L2_H264_SPS_FLAG_DELTA_PIC_ORDER_ALWAYS_ZERO != 0);
                w.se(s.offset_for_non_ref_pic);
                w.se(s.offset_for_top_to_bottom_field);
                w.ue(s.num_ref_frames_in_pic_order_cnt_cycle.into());
                for &o in
                    &s.offset_for_ref_frame[..usize::from(s.num_ref_frames_in_pic_order_cnt_cycle)]
                {
                    w.se(o);
                }
            }
            2 => {}
            _ => {
                return Err(DecodeError::InvalidControls(
                    "pic_order_cnt_type > 2".into(),
                ))
            }
        }
        w.ue(s.max_num_ref_frames.into());
        w.flag(s.flags & V4L2_H264_SPS_FLAG_GAPS_IN_FRAME_NUM_VALUE_ALLOWED != 0);
        w.ue(s.pic_width_in_mbs_minus1.into());
        w.ue(s.pic_height_in_map_units_minus1.into());
        let frame_mbs_only = s.flags & V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY != 0;
        w.flag(frame_mbs_only);
        if !frame_mbs_only {
            w.flag(s.flags & V4L2_H264_SPS_FLAG_MB_ADAPTIVE_FRAME_FIELD != 0);
        }
        w.flag(s.flags & V4L2_H264_SPS_FLAG_DIRECT_8X8_INFERENCE != 0);
        w.flag(false); // frame_cropping_flag
        w.flag(false); // vui_parameters_present_flag
        Ok(nal_unit(3, 7, &w.finish_rbsp()))
    }

    /// Raster index of each position of the `n` x `n` zig-zag (frame) scan.
    pub fn zigzag(n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n * n);
        for s in 0..2 * n - 1 {
            let lo = s.saturating_sub(n - 1);
            let hi = s.min(n - 1);
            if s % 2 == 0 {
                for row in (lo..=hi).rev() {
                    out.push(row * n + (s - row));
                }
            } else {
                for row in lo..=hi {
                    out.push(row * n + (s - row));
                }
            }
        }
        out
    }

    /// Writes one scaling list given in raster order, as explicit deltas in
    /// zig-zag order.
    fn scaling_list(w: &mut BitWriter, raster: &[u8], scan: &[usize]) -> Result<(), DecodeError> {
        let mut last: i32 = 8;
        for &pos in scan {
            let v = i32::from(raster[pos]);
            if v == 0 {
                return Err(DecodeError::InvalidControls(
                    "scaling matrix entry 0 (weights are 1..255)".into(),
                ));
            }
            // delta_scale in -128..=127 such that (last + delta) mod 256 == v
            let delta = (v - last + 128).rem_euclid(256) - 128;
            w.se(delta);
            last = v;
        }
        Ok(())
    }

    /// PPS NAL unit (nal_unit_type 8) equivalent to the controls. With
    /// `V4L2_H264_PPS_FLAG_SCALING_MATRIX_PRESENT`, every list of `matrix`
    /// is sent explicitly in the PPS.
    pub fn build_pps(
        p: &V4l2CtrlH264Pps,
        s: &V4l2CtrlH264Sps,
        matrix: Option<&V4l2CtrlH264ScalingMatrix>,
    ) -> Result<Vec<u8>, DecodeError> {
        if p.num_slice_groups_minus1 != 0 {
            return Err(DecodeError::Unsupported(
                "slice groups (FMO): their map is not part of the V4L2 controls".into(),
            ));
        }
        let mut w = BitWriter::new();
        w.ue(p.pic_parameter_set_id.into());
        w.ue(p.seq_parameter_set_id.into());
        w.flag(p.flags & V4L2_H264_PPS_FLAG_ENTROPY_CODING_MODE != 0);
        w.flag(p.flags & V4L2_H264_PPS_FLAG_BOTTOM_FIELD_PIC_ORDER_IN_FRAME_PRESENT != 0);
        w.ue(0); // num_slice_groups_minus1
        w.ue(p.num_ref_idx_l0_default_active_minus1.into());
        w.ue(p.num_ref_idx_l1_default_active_minus1.into());
        w.flag(p.flags & V4L2_H264_PPS_FLAG_WEIGHTED_PRED != 0);
        w.u(2, p.weighted_bipred_idc.into());
        w.se(p.pic_init_qp_minus26.into());
        w.se(p.pic_init_qs_minus26.into());
        w.se(p.chroma_qp_index_offset.into());
        w.flag(p.flags & V4L2_H264_PPS_FLAG_DEBLOCKING_FILTER_CONTROL_PRESENT != 0);
        w.flag(p.flags & V4L2_H264_PPS_FLAG_CONSTRAINED_INTRA_PRED != 0);
        w.flag(p.flags & V4L2_H264_PPS_FLAG_REDUNDANT_PIC_CNT_PRESENT != 0);
        let t8x8 = p.flags & V4L2_H264_PPS_FLAG_TRANSFORM_8X8_MODE != 0;
        let scaling = p.flags & V4L2_H264_PPS_FLAG_SCALING_MATRIX_PRESENT != 0;
        if t8x8 || scaling || p.second_chroma_qp_index_offset != p.chroma_qp_index_offset {
            w.flag(t8x8);
            w.flag(scaling);
            if scaling {
                let m = matrix.ok_or_else(|| {
                    DecodeError::InvalidControls(
                        "SCALING_MATRIX_PRESENT without a scaling matrix".into(),
                    )
                })?;
                let (z4, z8) = (zigzag(4), zigzag(8));
                for list in &m.scaling_list_4x4 {
                    w.flag(true);
                    scaling_list(&mut w, list, &z4)?;
                }
                if t8x8 {
                    let n8 = if s.chroma_format_idc == 3 { 6 } else { 2 };
                    for list in &m.scaling_list_8x8[..n8] {
                        w.flag(true);
                        scaling_list(&mut w, list, &z8)?;
                    }
                }
            }
            w.se(p.second_chroma_qp_index_offset.into());
        }
        Ok(nal_unit(3, 8, &w.finish_rbsp()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn exp_golomb() {
            let mut w = BitWriter::new();
            // ue: 0 -> 1, 1 -> 010, 2 -> 011, 3 -> 00100
            w.ue(0);
            w.ue(1);
            w.ue(2);
            w.ue(3);
            // se: 1 -> 010, -1 -> 011
            w.se(1);
            w.se(-1);
            // 1 010 011 00100 010 011 + trailing 1 then zero fill
            // = 1010 0110 0100 0100 1110 0000
            assert_eq!(w.finish_rbsp(), vec![0xa6, 0x44, 0xe0]);
            let mut w = BitWriter::new();
            w.ue(u32::MAX);
            let b = w.finish_rbsp();
            assert_eq!(b.len(), 9); // 32 zeros + 33 bits + stop bit -> 66 bits
            assert_eq!(&b[..4], &[0, 0, 0, 0]);
        }

        #[test]
        fn emulation_prevention() {
            let n = nal_unit(3, 7, &[0, 0, 1, 0, 0, 0, 0, 0, 3, 5]);
            assert_eq!(
                n,
                vec![0, 0, 0, 1, 0x67, 0, 0, 3, 1, 0, 0, 3, 0, 0, 3, 0, 3, 5]
            );
        }

        #[test]
        fn annexb_splitting() {
            let data = [
                9, 0, 0, 1, 0x65, 1, 0, 0, 0, 0, 1, 0x41, 2, 0, 0, 1, 0, 0, 1,
            ];
            let units: Vec<&[u8]> = annexb_units(&data).collect();
            assert_eq!(units, vec![&[0x65, 1][..], &[0x41, 2][..]]);
            assert_eq!(annexb_units(&[1, 2, 3]).count(), 0);
            assert_eq!(first_nal(&data), Some(0x65));
        }

        #[test]
        fn zigzag_tables() {
            assert_eq!(
                zigzag(4),
                vec![0, 1, 4, 8, 5, 2, 3, 6, 9, 12, 13, 10, 7, 11, 14, 15]
            );
            let z8 = zigzag(8);
            assert_eq!(&z8[..10], &[0, 1, 8, 16, 9, 2, 3, 10, 17, 24]);
            assert_eq!(z8[63], 63);
            let mut sorted = z8.clone();
            sorted.sort();
            assert_eq!(sorted, (0..64).collect::<Vec<_>>());
        }

        #[test]
        fn pps_refuses_fmo_and_zero_weights() {
            use decoder_core::ctrl::{Codec, ControlValues};
            let d = ControlValues::defaults(Codec::H264);
            let s: V4l2CtrlH264Sps = d.get().unwrap();
            let mut p: V4l2CtrlH264Pps = d.get().unwrap();
            p.num_slice_groups_minus1 = 1;
            assert!(matches!(
                build_pps(&p, &s, None),
                Err(DecodeError::Unsupported(_))
            ));
            p.num_slice_groups_minus1 = 0;
            p.flags = V4L2_H264_PPS_FLAG_SCALING_MATRIX_PRESENT;
            let mut m: V4l2CtrlH264ScalingMatrix = d.get().unwrap();
            m.scaling_list_4x4[2][5] = 0;
            assert!(build_pps(&p, &s, Some(&m)).is_err());
            m.scaling_list_4x4 = [[16; 16]; 6];
            assert!(build_pps(&p, &s, Some(&m)).is_ok());
        }
    }
}

/// HEVC NAL unit writing: VPS, SPS and PPS from the V4L2 controls, and
/// slice segment headers rewritten from the slice and decode parameters.
///
/// The V4L2 HEVC controls do not carry everything a slice-header parser
/// needs (the SPS short-term reference picture sets, the SPS long-term
/// candidates, the PPS `pic_output_flag` presence, VUI, ...), so the client's
/// slice headers cannot be fed to libavcodec as they are. Instead each
/// slice NAL unit is rebuilt: a new header coded against the parameter sets
/// built here (no SPS reference picture sets, explicit list modification),
/// followed by the client's slice data from `data_byte_offset` on, which is
/// byte aligned and copied as is (entry point offsets count its bytes,
/// emulation prevention included, so they stay valid).
pub mod hevc_nal {
    use decoder_core::ctrl::hevc::*;

    use super::nal::BitWriter;
    use crate::backend::DecodeError;

    fn bad(m: impl Into<String>) -> DecodeError {
        DecodeError::InvalidControls(m.into())
    }

    /// Appends an HEVC NAL unit (start code, 2-byte header, escaped RBSP).
    pub fn push_nal(out: &mut Vec<u8>, nal_type: u8, temporal_id_plus1: u8, rbsp: &[u8]) {
        out.extend_from_slice(&[0, 0, 0, 1, nal_type << 1, temporal_id_plus1.max(1)]);
        push_escaped(out, rbsp);
    }

    /// Appends `rbsp` with emulation prevention bytes.
    pub fn push_escaped(out: &mut Vec<u8>, rbsp: &[u8]) {
        let mut zeros = 0;
        for &b in rbsp {
            if zeros >= 2 && b <= 3 {
                out.push(3);
                zeros = 0;
            }
            out.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
        }
    }

    fn profile_tier_level(w: &mut BitWriter, s: &V4l2CtrlHevcSps) {
        let depth = s.bit_depth_luma_minus8.max(s.bit_depth_chroma_minus8);
        // Main, Main 10, or format range extensions.
        let profile = if s.chroma_format_idc != 1 || depth > 2 {
            4
        } else if depth > 0 {
            2
        } else {
            1
        };
        w.u(2, 0); // general_profile_space
        w.u(1, 0); // general_tier_flag
        w.u(5, profile);
        w.u(32, 1 << (31 - profile)); // general_profile_compatibility_flag[profile]
        w.u(4, 0b1001); // progressive, not interlaced, not non-packed, frame only
        w.u(32, 0); // 43 reserved / constraint bits and general_inbld_flag
        w.u(12, 0);
        w.u(8, 186); // level 6.2: libavcodec does not enforce levels
        let n = u32::from(s.sps_max_sub_layers_minus1);
        for _ in 0..n {
            w.u(2, 0); // sub_layer_profile_present_flag, sub_layer_level_present_flag
        }
        if n > 0 {
            for _ in n..8 {
                w.u(2, 0);
            }
        }
    }

    /// VPS NAL unit (type 32) for the SPS control.
    pub fn build_vps(out: &mut Vec<u8>, s: &V4l2CtrlHevcSps) {
        let mut w = BitWriter::new();
        w.u(4, s.video_parameter_set_id.into());
        w.u(2, 3); // vps_base_layer_internal_flag, vps_base_layer_available_flag
        w.u(6, 0); // vps_max_layers_minus1
        w.u(3, s.sps_max_sub_layers_minus1.into());
        w.flag(s.sps_max_sub_layers_minus1 == 0); // vps_temporal_id_nesting_flag
        w.u(16, 0xffff);
        profile_tier_level(&mut w, s);
        w.flag(false); // vps_sub_layer_ordering_info_present_flag
        w.ue(s.sps_max_dec_pic_buffering_minus1.into());
        w.ue(s.sps_max_num_reorder_pics.into());
        w.ue(s.sps_max_latency_increase_plus1.into());
        w.u(6, 0); // vps_max_layer_id
        w.ue(0); // vps_num_layer_sets_minus1
        w.flag(false); // vps_timing_info_present_flag
        w.flag(false); // vps_extension_flag
        push_nal(out, 32, 1, &w.finish_rbsp());
    }

    /// SPS NAL unit (type 33): no conformance window (the CAPTURE buffer
    /// holds the coded picture), no reference picture sets (slice headers
    /// code theirs explicitly), no VUI. Scaling lists go to the PPS.
    pub fn build_sps(out: &mut Vec<u8>, s: &V4l2CtrlHevcSps) -> Result<(), DecodeError> {
        let f = |b: u64| s.flags & b != 0;
        if s.pic_width_in_luma_samples == 0 || s.pic_height_in_luma_samples == 0 {
            return Err(bad("SPS picture size 0"));
        }
        let mut w = BitWriter::new();
        w.u(4, s.video_parameter_set_id.into());
        w.u(3, s.sps_max_sub_layers_minus1.into());
        w.flag(s.sps_max_sub_layers_minus1 == 0); // sps_temporal_id_nesting_flag
        profile_tier_level(&mut w, s);
        w.ue(s.seq_parameter_set_id.into());
        w.ue(s.chroma_format_idc.into());
        if s.chroma_format_idc == 3 {
            w.flag(f(V4L2_HEVC_SPS_FLAG_SEPARATE_COLOUR_PLANE));
        }
        w.ue(s.pic_width_in_luma_samples.into());
        w.ue(s.pic_height_in_luma_samples.into());
        w.flag(false); // conformance_window_flag
        w.ue(s.bit_depth_luma_minus8.into());
        w.ue(s.bit_depth_chroma_minus8.into());
        w.ue(s.log2_max_pic_order_cnt_lsb_minus4.into());
        w.flag(false); // sps_sub_layer_ordering_info_present_flag
        w.ue(s.sps_max_dec_pic_buffering_minus1.into());
        w.ue(s.sps_max_num_reorder_pics.into());
        w.ue(s.sps_max_latency_increase_plus1.into());
        w.ue(s.log2_min_luma_coding_block_size_minus3.into());
        w.ue(s.log2_diff_max_min_luma_coding_block_size.into());
        w.ue(s.log2_min_luma_transform_block_size_minus2.into());
        w.ue(s.log2_diff_max_min_luma_transform_block_size.into());
        w.ue(s.max_transform_hierarchy_depth_inter.into());
        w.ue(s.max_transform_hierarchy_depth_intra.into());
        let scaling = f(V4L2_HEVC_SPS_FLAG_SCALING_LIST_ENABLED);
        w.flag(scaling);
        if scaling {
            w.flag(false); // sps_scaling_list_data_present_flag: the PPS has them
        }
        w.flag(f(V4L2_HEVC_SPS_FLAG_AMP_ENABLED));
        w.flag(f(V4L2_HEVC_SPS_FLAG_SAMPLE_ADAPTIVE_OFFSET));
        let pcm = f(V4L2_HEVC_SPS_FLAG_PCM_ENABLED);
        w.flag(pcm);
        if pcm {
            w.u(4, s.pcm_sample_bit_depth_luma_minus1.into());
            w.u(4, s.pcm_sample_bit_depth_chroma_minus1.into());
            w.ue(s.log2_min_pcm_luma_coding_block_size_minus3.into());
            w.ue(s.log2_diff_max_min_pcm_luma_coding_block_size.into());
            w.flag(f(V4L2_HEVC_SPS_FLAG_PCM_LOOP_FILTER_DISABLED));
        }
        w.ue(0); // num_short_term_ref_pic_sets
        let lt = f(V4L2_HEVC_SPS_FLAG_LONG_TERM_REF_PICS_PRESENT);
        w.flag(lt);
        if lt {
            w.ue(0); // num_long_term_ref_pics_sps
        }
        w.flag(f(V4L2_HEVC_SPS_FLAG_SPS_TEMPORAL_MVP_ENABLED));
        w.flag(f(V4L2_HEVC_SPS_FLAG_STRONG_INTRA_SMOOTHING_ENABLED));
        w.flag(false); // vui_parameters_present_flag
        w.flag(false); // sps_extension_present_flag
        push_nal(out, 33, 1, &w.finish_rbsp());
        Ok(())
    }

    /// Raster position of each coefficient in up-right diagonal scan order
    /// of an `n` x `n` block.
    pub fn diagonal_scan(n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n * n);
        for d in 0..2 * n - 1 {
            // Up-right: from bottom-left to top-right of each anti-diagonal.
            for y in (0..n).rev() {
                if d >= y && d - y < n {
                    out.push(y * n + (d - y));
                }
            }
        }
        out
    }

    /// `scaling_list_data()` with every list explicit (raster-order V4L2
    /// matrix, coded in diagonal order as deltas).
    fn scaling_list_data(w: &mut BitWriter, m: &V4l2CtrlHevcScalingMatrix) {
        let (s4, s8) = (diagonal_scan(4), diagonal_scan(8));
        let code = |w: &mut BitWriter, list: &[u8], scan: &[usize], start: i32| {
            let mut next = start;
            for &pos in scan {
                let v = i32::from(list[pos]);
                let delta = (v - next + 128).rem_euclid(256) - 128;
                w.se(delta);
                next = v;
            }
        };
        for size_id in 0..4 {
            let step = if size_id == 3 { 3 } else { 1 };
            for matrix_id in (0..6).step_by(step) {
                w.flag(true); // scaling_list_pred_mode_flag: explicit
                match size_id {
                    0 => code(w, &m.scaling_list_4x4[matrix_id], &s4, 8),
                    1 => code(w, &m.scaling_list_8x8[matrix_id], &s8, 8),
                    2 => {
                        let dc = i32::from(m.scaling_list_dc_coef_16x16[matrix_id]);
                        w.se(dc - 8);
                        code(w, &m.scaling_list_16x16[matrix_id], &s8, dc);
                    }
                    _ => {
                        let i = matrix_id / 3;
                        let dc = i32::from(m.scaling_list_dc_coef_32x32[i]);
                        w.se(dc - 8);
                        code(w, &m.scaling_list_32x32[i], &s8, dc);
                    }
                }
            }
        }
    }

    /// PPS NAL unit (type 34): no `pic_output_flag`, no extra slice header
    /// bits, list modification always present (slice headers give the
    /// reference lists explicitly), no header extension.
    pub fn build_pps(
        out: &mut Vec<u8>,
        p: &V4l2CtrlHevcPps,
        s: &V4l2CtrlHevcSps,
        matrix: Option<&V4l2CtrlHevcScalingMatrix>,
    ) -> Result<(), DecodeError> {
        let f = |b: u64| p.flags & b != 0;
        let mut w = BitWriter::new();
        w.ue(p.pic_parameter_set_id.into());
        w.ue(s.seq_parameter_set_id.into());
        w.flag(f(V4L2_HEVC_PPS_FLAG_DEPENDENT_SLICE_SEGMENT_ENABLED));
        w.flag(false); // output_flag_present_flag
        w.u(3, 0); // num_extra_slice_header_bits
        w.flag(f(V4L2_HEVC_PPS_FLAG_SIGN_DATA_HIDING_ENABLED));
        w.flag(f(V4L2_HEVC_PPS_FLAG_CABAC_INIT_PRESENT));
        w.ue(p.num_ref_idx_l0_default_active_minus1.into());
        w.ue(p.num_ref_idx_l1_default_active_minus1.into());
        w.se(p.init_qp_minus26.into());
        w.flag(f(V4L2_HEVC_PPS_FLAG_CONSTRAINED_INTRA_PRED));
        w.flag(f(V4L2_HEVC_PPS_FLAG_TRANSFORM_SKIP_ENABLED));
        let cu_qp = f(V4L2_HEVC_PPS_FLAG_CU_QP_DELTA_ENABLED);
        w.flag(cu_qp);
        if cu_qp {
            w.ue(p.diff_cu_qp_delta_depth.into());
        }
        w.se(p.pps_cb_qp_offset.into());
        w.se(p.pps_cr_qp_offset.into());
        w.flag(f(V4L2_HEVC_PPS_FLAG_PPS_SLICE_CHROMA_QP_OFFSETS_PRESENT));
        w.flag(f(V4L2_HEVC_PPS_FLAG_WEIGHTED_PRED));
        w.flag(f(V4L2_HEVC_PPS_FLAG_WEIGHTED_BIPRED));
        w.flag(f(V4L2_HEVC_PPS_FLAG_TRANSQUANT_BYPASS_ENABLED));
        let tiles = f(V4L2_HEVC_PPS_FLAG_TILES_ENABLED);
        w.flag(tiles);
        w.flag(f(V4L2_HEVC_PPS_FLAG_ENTROPY_CODING_SYNC_ENABLED));
        if tiles {
            w.ue(p.num_tile_columns_minus1.into());
            w.ue(p.num_tile_rows_minus1.into());
            let uniform = f(V4L2_HEVC_PPS_FLAG_UNIFORM_SPACING);
            w.flag(uniform);
            if !uniform {
                let cols = usize::from(p.num_tile_columns_minus1).min(19);
                let rows = usize::from(p.num_tile_rows_minus1).min(21);
                for &c in &p.column_width_minus1[..cols] {
                    w.ue(c.into());
                }
                for &r in &p.row_height_minus1[..rows] {
                    w.ue(r.into());
                }
            }
            w.flag(f(V4L2_HEVC_PPS_FLAG_LOOP_FILTER_ACROSS_TILES_ENABLED));
        }
        w.flag(f(V4L2_HEVC_PPS_FLAG_PPS_LOOP_FILTER_ACROSS_SLICES_ENABLED));
        let dbk = f(V4L2_HEVC_PPS_FLAG_DEBLOCKING_FILTER_CONTROL_PRESENT);
        w.flag(dbk);
        if dbk {
            w.flag(f(V4L2_HEVC_PPS_FLAG_DEBLOCKING_FILTER_OVERRIDE_ENABLED));
            let disabled = f(V4L2_HEVC_PPS_FLAG_PPS_DISABLE_DEBLOCKING_FILTER);
            w.flag(disabled);
            if !disabled {
                w.se(p.pps_beta_offset_div2.into());
                w.se(p.pps_tc_offset_div2.into());
            }
        }
        let scaling = s.flags & V4L2_HEVC_SPS_FLAG_SCALING_LIST_ENABLED != 0;
        w.flag(scaling); // pps_scaling_list_data_present_flag
        if scaling {
            let m = matrix.ok_or_else(|| bad("scaling lists enabled without a matrix"))?;
            scaling_list_data(&mut w, m);
        }
        w.flag(true); // lists_modification_present_flag
        w.ue(p.log2_parallel_merge_level_minus2.into());
        w.flag(false); // slice_segment_header_extension_present_flag
        w.flag(false); // pps_extension_present_flag
        push_nal(out, 34, 1, &w.finish_rbsp());
        Ok(())
    }

    fn ceil_log2(v: u32) -> u32 {
        if v <= 1 {
            0
        } else {
            32 - (v - 1).leading_zeros()
        }
    }

    /// The reference picture set as the rebuilt slice headers code it:
    /// DPB indexes of the negative (closest first) and positive short-term
    /// pictures and of the long-term pictures, each with its "used by the
    /// current picture" flag.
    #[derive(Debug, Default, Clone)]
    pub struct Rps {
        neg: Vec<(u8, bool)>,
        pos: Vec<(u8, bool)>,
        lt: Vec<(u8, bool)>,
        /// RefPicListTemp0 / 1 heads (DPB indexes in list-construction
        /// order), `NumPicTotalCurr` entries each.
        temp0: Vec<u8>,
        temp1: Vec<u8>,
    }

    impl Rps {
        /// Derives the set from the decode parameters.
        pub fn from_decode_params(
            &mut self,
            d: &V4l2CtrlHevcDecodeParams,
        ) -> Result<(), DecodeError> {
            self.neg.clear();
            self.pos.clear();
            self.lt.clear();
            let dpb = d.active_dpb();
            let n = dpb.len();
            fn set(list: &[u8], count: u8, n: usize) -> Result<&[u8], DecodeError> {
                let l = &list[..usize::from(count).min(list.len())];
                if l.iter().any(|&i| usize::from(i) >= n) {
                    return Err(bad("RPS entry outside the active DPB"));
                }
                Ok(l)
            }
            let before = set(&d.poc_st_curr_before, d.num_poc_st_curr_before, n)?;
            let after = set(&d.poc_st_curr_after, d.num_poc_st_curr_after, n)?;
            let ltc = set(&d.poc_lt_curr, d.num_poc_lt_curr, n)?;
            let cur = d.pic_order_cnt_val;
            for (i, e) in dpb.iter().enumerate() {
                let i = i as u8;
                if e.flags & V4L2_HEVC_DPB_ENTRY_LONG_TERM_REFERENCE != 0 {
                    self.lt.push((i, ltc.contains(&i)));
                } else if e.pic_order_cnt_val < cur {
                    self.neg.push((i, before.contains(&i)));
                } else if e.pic_order_cnt_val > cur {
                    self.pos.push((i, after.contains(&i)));
                } else {
                    return Err(bad("DPB entry with the current picture's POC"));
                }
            }
            if before
                .iter()
                .any(|i| !self.neg.iter().any(|e| e == &(*i, true)))
                || after
                    .iter()
                    .any(|i| !self.pos.iter().any(|e| e == &(*i, true)))
                || ltc
                    .iter()
                    .any(|i| !self.lt.iter().any(|e| e == &(*i, true)))
            {
                return Err(bad("RPS sets contradict the DPB POCs"));
            }
            let poc = |i: u8| dpb[usize::from(i)].pic_order_cnt_val;
            self.neg.sort_by_key(|e| std::cmp::Reverse(poc(e.0)));
            self.pos.sort_by_key(|e| poc(e.0));
            // Long-term: by MSB cycle (ascending), as delta coding needs.
            self.lt.sort_by_key(|e| std::cmp::Reverse(poc(e.0)));
            fn used(v: &[(u8, bool)]) -> impl Iterator<Item = u8> + '_ {
                v.iter().filter(|e| e.1).map(|e| e.0)
            }
            self.temp0.clear();
            self.temp0
                .extend(used(&self.neg).chain(used(&self.pos)).chain(used(&self.lt)));
            self.temp1.clear();
            self.temp1
                .extend(used(&self.pos).chain(used(&self.neg)).chain(used(&self.lt)));
            Ok(())
        }
    }

    /// Everything a slice header rewrite needs besides the slice itself.
    #[derive(Debug, Clone, Copy)]
    pub struct PicContext<'a> {
        /// SPS control.
        pub sps: &'a V4l2CtrlHevcSps,
        /// PPS control.
        pub pps: &'a V4l2CtrlHevcPps,
        /// Decode parameters.
        pub dp: &'a V4l2CtrlHevcDecodeParams,
        /// Reference picture set derived from `dp`.
        pub rps: &'a Rps,
    }

    fn pred_weight_table(w: &mut BitWriter, sl: &V4l2CtrlHevcSliceParams, chroma: bool) {
        let t = &sl.pred_weight_table;
        w.ue(t.luma_log2_weight_denom.into());
        let cdenom =
            i32::from(t.luma_log2_weight_denom) + i32::from(t.delta_chroma_log2_weight_denom);
        if chroma {
            w.se(t.delta_chroma_log2_weight_denom.into());
        }
        /// Entries, luma weight deltas, luma offsets, chroma weight
        /// deltas and chroma offsets of one list.
        type List<'t> = (
            usize,
            &'t [i8; 16],
            &'t [i8; 16],
            &'t [[i8; 2]; 16],
            &'t [[i8; 2]; 16],
        );
        let lists: [List<'_>; 2] = [
            (
                usize::from(sl.num_ref_idx_l0_active_minus1) + 1,
                &t.delta_luma_weight_l0,
                &t.luma_offset_l0,
                &t.delta_chroma_weight_l0,
                &t.chroma_offset_l0,
            ),
            (
                usize::from(sl.num_ref_idx_l1_active_minus1) + 1,
                &t.delta_luma_weight_l1,
                &t.luma_offset_l1,
                &t.delta_chroma_weight_l1,
                &t.chroma_offset_l1,
            ),
        ];
        let nlists = if sl.slice_type == V4L2_HEVC_SLICE_TYPE_B {
            2
        } else {
            1
        };
        for &(n, dlw, lo, dcw, co) in &lists[..nlists] {
            let n = n.min(15);
            let luma_flag = |i: usize| dlw[i] != 0 || lo[i] != 0;
            let chroma_flag = |i: usize| dcw[i] != [0, 0] || co[i] != [0, 0];
            for i in 0..n {
                w.flag(luma_flag(i));
            }
            if chroma {
                for i in 0..n {
                    w.flag(chroma_flag(i));
                }
            }
            for i in 0..n {
                if luma_flag(i) {
                    w.se(dlw[i].into());
                    w.se(lo[i].into());
                }
                if chroma && chroma_flag(i) {
                    for j in 0..2 {
                        // V4L2 carries the derived ChromaOffset; code the
                        // delta that yields it (WpOffsetHalfRangeC = 128).
                        let weight = (1 << cdenom) + i32::from(dcw[i][j]);
                        let delta = i32::from(co[i][j]) - 128 + ((128 * weight) >> cdenom);
                        w.se(dcw[i][j].into());
                        w.se(delta);
                    }
                }
            }
        }
    }

    /// Appends the rebuilt slice NAL unit: `nal` is the client's slice NAL
    /// unit (2-byte header first, no start code), `entry_points` the
    /// slice's `entry_point_offset_minus1` values.
    pub fn rewrite_slice(
        out: &mut Vec<u8>,
        scratch: &mut BitWriter,
        cx: &PicContext<'_>,
        sl: &V4l2CtrlHevcSliceParams,
        nal: &[u8],
        entry_points: &[u32],
    ) -> Result<(), DecodeError> {
        let (s, p, dp, rps) = (cx.sps, cx.pps, cx.dp, cx.rps);
        let pf = |b: u64| p.flags & b != 0;
        let sf = |b: u64| s.flags & b != 0;
        let lf = |b: u64| sl.flags & b != 0;
        let start = sl.data_byte_offset as usize;
        if nal.len() < 3 || start <= 2 || start >= nal.len() {
            return Err(bad(format!(
                "data_byte_offset {start} outside the {}-byte slice",
                nal.len()
            )));
        }
        let nal_type = (nal[0] >> 1) & 0x3f;
        if nal_type != sl.nal_unit_type || nal_type > 21 || (10..16).contains(&nal_type) {
            return Err(bad(format!(
                "slice NAL type {nal_type}, controls say {}",
                sl.nal_unit_type
            )));
        }
        let w = scratch;
        *w = BitWriter::new();
        let first = sl.slice_segment_addr == 0;
        w.flag(first);
        if (16..=23).contains(&nal_type) {
            w.flag(dp.flags & V4L2_HEVC_DECODE_PARAM_FLAG_NO_OUTPUT_OF_PRIOR != 0);
        }
        w.ue(p.pic_parameter_set_id.into());
        let dependent = lf(V4L2_HEVC_SLICE_PARAMS_FLAG_DEPENDENT_SLICE_SEGMENT);
        let ctb_log2 = u32::from(s.log2_min_luma_coding_block_size_minus3)
            + 3
            + u32::from(s.log2_diff_max_min_luma_coding_block_size);
        let ctb = 1u32 << ctb_log2;
        let pic_ctbs = u32::from(s.pic_width_in_luma_samples).div_ceil(ctb)
            * u32::from(s.pic_height_in_luma_samples).div_ceil(ctb);
        if !first {
            if pf(V4L2_HEVC_PPS_FLAG_DEPENDENT_SLICE_SEGMENT_ENABLED) {
                w.flag(dependent);
            } else if dependent {
                return Err(bad("dependent slice segment without PPS support"));
            }
            if sl.slice_segment_addr >= pic_ctbs {
                return Err(bad("slice_segment_addr outside the picture"));
            }
            w.u(ceil_log2(pic_ctbs), sl.slice_segment_addr);
        } else if dependent {
            return Err(bad("first slice segment marked dependent"));
        }
        let chroma = s.chroma_format_idc != 0 && !sf(V4L2_HEVC_SPS_FLAG_SEPARATE_COLOUR_PLANE);
        if !dependent {
            if sl.slice_type > V4L2_HEVC_SLICE_TYPE_I {
                return Err(bad("slice_type"));
            }
            w.ue(sl.slice_type.into());
            if sf(V4L2_HEVC_SPS_FLAG_SEPARATE_COLOUR_PLANE) {
                w.u(2, sl.colour_plane_id.into());
            }
            let mut num_pic_total_curr = 0u32;
            if nal_type != 19 && nal_type != 20 {
                let lsb_bits = u32::from(s.log2_max_pic_order_cnt_lsb_minus4) + 4;
                let max_lsb = 1i64 << lsb_bits;
                let cur = i64::from(dp.pic_order_cnt_val);
                w.u(lsb_bits, cur.rem_euclid(max_lsb) as u32);
                w.flag(false); // short_term_ref_pic_set_sps_flag
                               // st_ref_pic_set(0): explicit.
                let dpb = dp.active_dpb();
                let poc = |i: u8| i64::from(dpb[usize::from(i)].pic_order_cnt_val);
                w.ue(rps.neg.len() as u32);
                w.ue(rps.pos.len() as u32);
                let mut prev = cur;
                for &(i, used) in &rps.neg {
                    w.ue((prev - poc(i) - 1) as u32);
                    w.flag(used);
                    prev = poc(i);
                }
                let mut prev = cur;
                for &(i, used) in &rps.pos {
                    w.ue((poc(i) - prev - 1) as u32);
                    w.flag(used);
                    prev = poc(i);
                }
                num_pic_total_curr = (rps.temp0.len()) as u32;
                if sf(V4L2_HEVC_SPS_FLAG_LONG_TERM_REF_PICS_PRESENT) {
                    w.ue(rps.lt.len() as u32);
                    let cur_msb = cur - cur.rem_euclid(max_lsb);
                    let mut prev_cycle = 0i64;
                    for &(i, used) in &rps.lt {
                        let lt = poc(i);
                        w.u(lsb_bits, lt.rem_euclid(max_lsb) as u32);
                        w.flag(used);
                        w.flag(true); // delta_poc_msb_present_flag
                        let cycle = (cur_msb - (lt - lt.rem_euclid(max_lsb))) / max_lsb;
                        if cycle < prev_cycle {
                            return Err(bad("long-term pictures out of order"));
                        }
                        w.ue((cycle - prev_cycle) as u32);
                        prev_cycle = cycle;
                    }
                } else if !rps.lt.is_empty() {
                    return Err(bad("long-term DPB entry without SPS support"));
                }
                if sf(V4L2_HEVC_SPS_FLAG_SPS_TEMPORAL_MVP_ENABLED) {
                    w.flag(lf(V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_TEMPORAL_MVP_ENABLED));
                }
            } else if !rps.temp0.is_empty() || !rps.lt.is_empty() {
                return Err(bad("IDR picture with references"));
            }
            let sao_luma = lf(V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_SAO_LUMA);
            let sao_chroma = lf(V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_SAO_CHROMA);
            if sf(V4L2_HEVC_SPS_FLAG_SAMPLE_ADAPTIVE_OFFSET) {
                w.flag(sao_luma);
                if chroma {
                    w.flag(sao_chroma);
                }
            }
            let is_b = sl.slice_type == V4L2_HEVC_SLICE_TYPE_B;
            if sl.slice_type != V4L2_HEVC_SLICE_TYPE_I {
                if num_pic_total_curr == 0 {
                    return Err(bad("P/B slice without references"));
                }
                w.flag(true); // num_ref_idx_active_override_flag
                w.ue(sl.num_ref_idx_l0_active_minus1.into());
                if is_b {
                    w.ue(sl.num_ref_idx_l1_active_minus1.into());
                }
                // ref_pic_lists_modification(): the lists as positions in
                // RefPicListTemp0/1 (whose heads repeat cyclically).
                let entries = |list: &[u8], n: u8, temp: &[u8], w: &mut BitWriter| {
                    let bits = ceil_log2(num_pic_total_curr);
                    for &dpb_idx in &list[..usize::from(n) + 1] {
                        let pos = temp
                            .iter()
                            .position(|&t| t == dpb_idx)
                            .ok_or_else(|| bad("reference list names a picture outside the RPS"))?;
                        if bits > 0 {
                            w.u(bits, pos as u32);
                        }
                    }
                    Ok::<(), DecodeError>(())
                };
                if num_pic_total_curr > 1 {
                    w.flag(true);
                }
                entries(
                    &sl.ref_idx_l0,
                    sl.num_ref_idx_l0_active_minus1,
                    &rps.temp0,
                    w,
                )?;
                if is_b {
                    if num_pic_total_curr > 1 {
                        w.flag(true);
                    }
                    entries(
                        &sl.ref_idx_l1,
                        sl.num_ref_idx_l1_active_minus1,
                        &rps.temp1,
                        w,
                    )?;
                    w.flag(lf(V4L2_HEVC_SLICE_PARAMS_FLAG_MVD_L1_ZERO));
                }
                if pf(V4L2_HEVC_PPS_FLAG_CABAC_INIT_PRESENT) {
                    w.flag(lf(V4L2_HEVC_SLICE_PARAMS_FLAG_CABAC_INIT));
                }
                if lf(V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_TEMPORAL_MVP_ENABLED)
                    && sf(V4L2_HEVC_SPS_FLAG_SPS_TEMPORAL_MVP_ENABLED)
                {
                    let from_l0 = !is_b || lf(V4L2_HEVC_SLICE_PARAMS_FLAG_COLLOCATED_FROM_L0);
                    if is_b {
                        w.flag(from_l0);
                    }
                    if (from_l0 && sl.num_ref_idx_l0_active_minus1 > 0)
                        || (!from_l0 && sl.num_ref_idx_l1_active_minus1 > 0)
                    {
                        w.ue(sl.collocated_ref_idx.into());
                    }
                }
                if (pf(V4L2_HEVC_PPS_FLAG_WEIGHTED_PRED) && !is_b)
                    || (pf(V4L2_HEVC_PPS_FLAG_WEIGHTED_BIPRED) && is_b)
                {
                    pred_weight_table(w, sl, chroma);
                }
                w.ue(sl.five_minus_max_num_merge_cand.into());
            }
            w.se(sl.slice_qp_delta.into());
            if pf(V4L2_HEVC_PPS_FLAG_PPS_SLICE_CHROMA_QP_OFFSETS_PRESENT) {
                w.se(sl.slice_cb_qp_offset.into());
                w.se(sl.slice_cr_qp_offset.into());
            }
            let dbk_disabled = lf(V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_DEBLOCKING_FILTER_DISABLED);
            if pf(V4L2_HEVC_PPS_FLAG_DEBLOCKING_FILTER_OVERRIDE_ENABLED) {
                w.flag(true); // deblocking_filter_override_flag
                w.flag(dbk_disabled);
                if !dbk_disabled {
                    w.se(sl.slice_beta_offset_div2.into());
                    w.se(sl.slice_tc_offset_div2.into());
                }
            } else if dbk_disabled != pf(V4L2_HEVC_PPS_FLAG_PPS_DISABLE_DEBLOCKING_FILTER) {
                return Err(bad("slice deblocking override without PPS support"));
            }
            if pf(V4L2_HEVC_PPS_FLAG_PPS_LOOP_FILTER_ACROSS_SLICES_ENABLED)
                && (sao_luma || sao_chroma || !dbk_disabled)
            {
                w.flag(lf(
                    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_LOOP_FILTER_ACROSS_SLICES_ENABLED,
                ));
            }
        }
        if pf(V4L2_HEVC_PPS_FLAG_TILES_ENABLED)
            || pf(V4L2_HEVC_PPS_FLAG_ENTROPY_CODING_SYNC_ENABLED)
        {
            w.ue(entry_points.len() as u32);
            if let Some(&max) = entry_points.iter().max() {
                let bits = (32 - max.leading_zeros()).max(1);
                w.ue(bits - 1);
                for &e in entry_points {
                    w.u(bits, e);
                }
            }
        } else if !entry_points.is_empty() {
            return Err(bad("entry points without tiles or WPP"));
        }
        let rbsp = std::mem::take(w).finish_rbsp();
        out.extend_from_slice(&[0, 0, 0, 1, nal[0], nal[1]]);
        push_escaped(out, &rbsp);
        out.extend_from_slice(&nal[start..]);
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn diagonal_scan_4x4() {
            assert_eq!(
                diagonal_scan(4),
                vec![0, 4, 1, 8, 5, 2, 12, 9, 6, 3, 13, 10, 7, 14, 11, 15]
            );
        }
    }
}
