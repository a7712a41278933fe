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
//! keeps a reference to it; the job then copies it into its CAPTURE buffer.
//! The pictures libavcodec later returns from `avcodec_receive_frame` are
//! only drained and dropped.
//!
//! **One copy.** libavcodec's software H.264 decoder writes planar YUV
//! (I420), never NV12, and keeps using its pictures as references for later
//! pictures after the job has returned its CAPTURE buffer to the client. So
//! it decodes into its own pooled buffers and each job does exactly one copy
//! that also interleaves the chroma planes into NV12 (or P010).
//!
//! **References.** libavcodec tracks its own DPB from the bitstream. The
//! session checks that every reference a job names is a picture it decoded
//! (and that is still a reference); if not (seek, dropped job), libavcodec's
//! DPB would not match the client's, so the session resets and skips
//! pictures until the next IDR instead of producing wrong pictures. Decoding
//! errors do the same.

use std::collections::{HashMap, HashSet};
use std::ffi::c_int;
use std::ptr;

use decoder_core::ctrl::h264::{
    V4l2CtrlH264DecodeParams, V4l2CtrlH264Pps, V4l2CtrlH264ScalingMatrix, V4l2CtrlH264Sps,
    V4l2StatelessH264StartCode, V4L2_CID_STATELESS_H264_START_CODE,
    V4L2_H264_DECODE_PARAM_FLAG_FIELD_PIC,
};
use decoder_core::ctrl::Codec;
use ffmpeg_sys_next as ff;

use super::{Backend, CaptureFormat, CaptureTarget, DecodeError, DecodeOutcome, JobInput};

/// Limits libavcodec's own logging (process-wide) to fatal errors; decode
/// errors still reach the caller as [`DecodeError`]s.
pub fn quiet_library_logs() {
    // SAFETY: av_log_set_level only stores an integer in libavutil.
    unsafe { ff::av_log_set_level(ff::AV_LOG_FATAL) };
}

/// Annex B start code put in front of each NAL unit the session writes.
const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// State the `get_buffer2` callback reaches through `AVCodecContext.opaque`.
struct CaptureSlot {
    /// Reference to the last picture buffer libavcodec allocated.
    last: *mut ff::AVFrame,
    /// Incremented on every allocation.
    allocations: u64,
}

/// `get_buffer2` of the session: libavcodec's default allocator, plus a
/// reference to the new picture kept in the session's [`CaptureSlot`].
unsafe extern "C" fn capture_get_buffer2(
    avctx: *mut ff::AVCodecContext,
    frame: *mut ff::AVFrame,
    flags: c_int,
) -> c_int {
    // SAFETY: libavcodec calls get_buffer2 with its live context and a frame
    // whose format and size it has set; the default allocator accepts both.
    let ret = unsafe { ff::avcodec_default_get_buffer2(avctx, frame, flags) };
    if ret < 0 {
        return ret;
    }
    // SAFETY: `opaque` is set by `FfmpegH264::new` to a `CaptureSlot` boxed
    // in the session, which outlives the codec context (it is freed after
    // `avcodec_free_context` in `Drop`), and no other reference to it is live
    // while libavcodec runs inside send_packet.
    let slot = unsafe { &mut *((*avctx).opaque as *mut CaptureSlot) };
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

/// An H.264 decoding session on libavcodec.
#[derive(Debug)]
pub struct FfmpegH264 {
    ctx: *mut ff::AVCodecContext,
    pkt: *mut ff::AVPacket,
    drain: *mut ff::AVFrame,
    slot: *mut CaptureSlot,
    /// Last SPS / PPS NAL sent for each id.
    sent_sps: HashMap<u8, Vec<u8>>,
    sent_pps: HashMap<u8, Vec<u8>>,
    /// Slices of a picture whose later slices are still to come.
    pending: Vec<u8>,
    /// Timestamp of the pending picture.
    pending_ts: Option<u64>,
    /// Timestamps of the pictures decoded since the last reset that are
    /// still references (plus the last decoded picture).
    decoded: HashSet<u64>,
    /// After a reset or an error: skip pictures until an IDR.
    need_idr: bool,
    /// `allocations` of the slot when the last picture was copied out.
    last_alloc_seen: u64,
    /// Packet assembly buffer (reused).
    packet: Vec<u8>,
}

impl std::fmt::Debug for CaptureSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureSlot")
            .field("allocations", &self.allocations)
            .finish()
    }
}

// SAFETY: the session owns its libavcodec context, packet, frames and slot
// exclusively; libavcodec keeps no thread-affine state for a context decoding
// with one thread, so the whole session may move to another thread. It is
// not Sync (every method takes &mut self).
unsafe impl Send for FfmpegH264 {}

impl FfmpegH264 {
    /// Opens libavcodec's H.264 decoder for one session.
    pub fn new() -> Result<Self, DecodeError> {
        let err = |what: &str| DecodeError::Internal(format!("libavcodec: {what}"));
        // SAFETY: plain lookup in libavcodec's static decoder table.
        let codec = unsafe { ff::avcodec_find_decoder(ff::AVCodecID::AV_CODEC_ID_H264) };
        if codec.is_null() {
            return Err(err("no H.264 decoder"));
        }
        let slot = Box::into_raw(Box::new(CaptureSlot {
            // SAFETY: allocation of an empty frame; null checked below.
            last: unsafe { ff::av_frame_alloc() },
            allocations: 0,
        }));
        let s = Self {
            // SAFETY: `codec` is a valid decoder; null checked below.
            ctx: unsafe { ff::avcodec_alloc_context3(codec) },
            // SAFETY: allocation; null checked below.
            pkt: unsafe { ff::av_packet_alloc() },
            // SAFETY: allocation; null checked below.
            drain: unsafe { ff::av_frame_alloc() },
            slot,
            sent_sps: HashMap::new(),
            sent_pps: HashMap::new(),
            pending: Vec::new(),
            pending_ts: None,
            decoded: HashSet::new(),
            need_idr: true,
            last_alloc_seen: 0,
            packet: Vec::new(),
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
            // Slice decoding errors fail the packet instead of being
            // silently concealed.
            c.err_recognition |= ff::AV_EF_EXPLODE;
            ff::avcodec_open2(s.ctx, codec, ptr::null_mut())
        };
        if ret < 0 {
            return Err(err(&format!("avcodec_open2 failed ({ret})")));
        }
        Ok(s)
    }

    /// Drops libavcodec's pictures and every piece of session state; the
    /// next picture decoded must be an IDR.
    fn reset_state(&mut self) {
        // SAFETY: `ctx` is an open decoder context; `last` a valid frame.
        unsafe {
            ff::avcodec_flush_buffers(self.ctx);
            ff::av_frame_unref((*self.slot).last);
        }
        self.sent_sps.clear();
        self.sent_pps.clear();
        self.pending.clear();
        self.pending_ts = None;
        self.decoded.clear();
        self.need_idr = true;
    }

    /// Sends one packet and drains whatever libavcodec outputs. Returns the
    /// send status.
    fn send(&mut self) -> c_int {
        let len = self.packet.len();
        self.packet
            .resize(len + ff::AV_INPUT_BUFFER_PADDING_SIZE as usize, 0);
        let Ok(size) = c_int::try_from(len) else {
            return -(ff::EINVAL);
        };
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
                ff::av_frame_unref(self.drain);
            }
            ret
        }
    }

    /// Copies the captured picture into the CAPTURE target.
    fn copy_out(&self, out: &mut CaptureTarget<'_>) -> Result<(), DecodeError> {
        // SAFETY: `last` is a valid frame owned by the session and holds a
        // reference on the picture buffers, so they stay alive and unchanged
        // (libavcodec is not running) for the duration of this borrow.
        let f = unsafe { &*(*self.slot).last };
        if f.buf[0].is_null() {
            return Err(DecodeError::Corrupt("no picture decoded".into()));
        }
        let (w, h) = (f.width, f.height);
        if w <= 0 || h <= 0 || w as u32 > out.width || h as u32 > out.height {
            return Err(DecodeError::FormatMismatch(format!(
                "{w}x{h} into {}x{}",
                out.width, out.height
            )));
        }
        let (w, h) = (w as usize, h as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
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
        if bits10 && out.format == CaptureFormat::Nv12 {
            return Err(DecodeError::FormatMismatch(
                "10-bit picture into NV12".into(),
            ));
        }
        let sb = if bits10 { 2 } else { 1 };
        // Source plane rows as slices.
        let plane = |i: usize, rows: usize, row_bytes: usize| -> Result<Vec<&[u8]>, DecodeError> {
            let ls = f.linesize[i];
            if f.data[i].is_null() || ls < row_bytes as c_int {
                return Err(DecodeError::Internal("unexpected frame layout".into()));
            }
            Ok((0..rows)
                .map(|y| {
                    // SAFETY: libavcodec allocated at least `linesize * rows`
                    // bytes for plane `i` of a `w` x `h` picture, each row
                    // holding `row_bytes` valid bytes; the frame reference
                    // keeps them alive for the lifetime of `f`.
                    unsafe {
                        std::slice::from_raw_parts(
                            f.data[i].offset(ls as isize * y as isize),
                            row_bytes,
                        )
                    }
                })
                .collect())
        };
        let y_rows = plane(0, h, w * sb)?;
        let (u_rows, v_rows) = if gray {
            (Vec::new(), Vec::new())
        } else {
            (plane(1, ch, cw * sb)?, plane(2, ch, cw * sb)?)
        };
        let ls = out.luma.stride;
        let cs = out.chroma.stride;
        match (out.format, bits10) {
            (CaptureFormat::Nv12, _) => {
                for (y, src) in y_rows.iter().enumerate() {
                    out.luma.data[y * ls..y * ls + w].copy_from_slice(src);
                }
                for y in 0..ch {
                    let dst = &mut out.chroma.data[y * cs..y * cs + 2 * cw];
                    if gray {
                        dst.fill(0x80);
                    } else {
                        for (x, d) in dst.chunks_exact_mut(2).enumerate() {
                            d[0] = u_rows[y][x];
                            d[1] = v_rows[y][x];
                        }
                    }
                }
            }
            (CaptureFormat::P010, _) => {
                // 8-bit samples scale by 256, 10-bit ones by 64: the value
                // sits in the most significant bits.
                let px = |s: &[u8], x: usize| -> u16 {
                    if bits10 {
                        u16::from_le_bytes([s[2 * x], s[2 * x + 1]]) << 6
                    } else {
                        u16::from(s[x]) << 8
                    }
                };
                for (y, src) in y_rows.iter().enumerate() {
                    let dst = &mut out.luma.data[y * ls..y * ls + 2 * w];
                    for (x, d) in dst.chunks_exact_mut(2).enumerate() {
                        d.copy_from_slice(&px(src, x).to_le_bytes());
                    }
                }
                for y in 0..ch {
                    let dst = &mut out.chroma.data[y * cs..y * cs + 4 * cw];
                    for (x, d) in dst.chunks_exact_mut(4).enumerate() {
                        let (u, v) = if gray {
                            (0x8000, 0x8000)
                        } else {
                            (px(u_rows[y], x), px(v_rows[y], x))
                        };
                        d[..2].copy_from_slice(&u.to_le_bytes());
                        d[2..].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        Ok(())
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

impl Drop for FfmpegH264 {
    fn drop(&mut self) {
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
        if job.codec != Codec::H264 {
            return Err(DecodeError::InvalidControls(format!(
                "{:?} job on an H.264 session",
                job.codec
            )));
        }
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
                // SAFETY: `ctx` is an open decoder context.
                unsafe { ff::avcodec_flush_buffers(self.ctx) };
            }
            self.decoded.clear();
            self.need_idr = false;
        } else if self.need_idr {
            return Err(DecodeError::WaitingForKeyframe);
        } else if let Some(&missing) = job.references.iter().find(|t| !self.decoded.contains(t)) {
            return self.fail(DecodeError::MissingReference(missing));
        }

        let sps_nal = nal::build_sps(&sps)?;
        let pps_nal = nal::build_pps(&pps, &sps, matrix.as_ref())?;
        self.packet.clear();
        if self.sent_sps.get(&sps.seq_parameter_set_id) != Some(&sps_nal) {
            self.packet.extend_from_slice(&sps_nal);
            self.sent_sps.insert(sps.seq_parameter_set_id, sps_nal);
            // A new SPS invalidates the PPS built on the old one.
            self.sent_pps.clear();
        }
        if self.sent_pps.get(&pps.pic_parameter_set_id) != Some(&pps_nal) {
            self.packet.extend_from_slice(&pps_nal);
            self.sent_pps.insert(pps.pic_parameter_set_id, pps_nal);
        }
        self.packet.extend_from_slice(&slices);
        self.pending = slices;
        self.pending.clear();

        // SAFETY: the slot is only touched by the callback during send.
        let before = unsafe { (*self.slot).allocations };
        let ret = self.send();
        if ret < 0 {
            return self.fail(DecodeError::Corrupt(format!(
                "libavcodec refused the picture ({ret})"
            )));
        }
        // SAFETY: as above; libavcodec is not running.
        let after = unsafe { (*self.slot).allocations };
        let second_field = dp.flags & V4L2_H264_DECODE_PARAM_FLAG_FIELD_PIC != 0
            && after == before
            && self.last_alloc_seen == after
            && after > 0;
        if after == before && !second_field {
            return self.fail(DecodeError::Corrupt("no picture decoded".into()));
        }
        self.last_alloc_seen = after;
        if let Err(e) = self.copy_out(out) {
            return self.fail(e);
        }
        // Pictures that are no longer references never become references
        // again: keep only the current references and this picture.
        self.decoded.retain(|t| job.references.contains(t));
        self.decoded.extend(job.references.iter().copied());
        self.decoded.insert(job.timestamp);
        Ok(DecodeOutcome::Decoded)
    }

    fn reset(&mut self) {
        self.reset_state();
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
