//! Decoding backends.
//!
//! A backend decodes the jobs of one decoding session (one V4L2 context of one
//! coded format) in the order the client queued them. A job is what one
//! OUTPUT buffer carries: the effective control values of its request, the
//! bitstream bytes, and the timestamp that names the picture. The backend
//! writes the decoded picture into the job's CAPTURE buffer
//! ([`CaptureTarget`]) before [`Backend::decode`] returns; nothing is
//! reordered or delayed: display order is the client's business, as with a
//! hardware stateless decoder.
//!
//! Every backend (FFmpeg, dav1d, plugins) implements [`Backend`].

use std::sync::Arc;

use decoder_core::ctrl::{Codec, ControlValues};
use decoder_core::fmt::{PIX_FMT_NV12, PIX_FMT_NV12M, PIX_FMT_P010, PIX_FMT_YUV420M};

pub mod dav1d;
pub mod ffmpeg;
pub mod pixcopy;
pub mod plugin;

/// Per-job flags, from the OUTPUT buffer and the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobFlags {
    /// More jobs (slices) of the same picture follow and will write the same
    /// CAPTURE buffer (`V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF` on this OUTPUT
    /// buffer). The picture is complete only after the last of them.
    pub more_slices: bool,
    /// This job continues a picture whose earlier slices were held (the
    /// previous job had `more_slices` and the same timestamp).
    pub continues_picture: bool,
}

/// One decode job, as the backend sees it.
#[derive(Debug, Clone, Copy)]
pub struct JobInput<'a> {
    /// Coded format of the session.
    pub codec: Codec,
    /// Effective control values of the job (the context's current values
    /// with the request's values applied), already validated.
    pub controls: &'a ControlValues,
    /// Bitstream bytes of the OUTPUT buffer (`bytesused` of them).
    pub bitstream: &'a [u8],
    /// OUTPUT buffer timestamp in ns; the CAPTURE buffer receives it and
    /// later jobs name this picture by it.
    pub timestamp: u64,
    /// Flags of the job.
    pub flags: JobFlags,
    /// Timestamps of the reference pictures the controls name
    /// (`CodecDesc::reference_timestamps`), each resolved by the frontend to
    /// a CAPTURE buffer that holds a decoded picture.
    pub references: &'a [u64],
}

impl JobInput<'_> {
    /// The check every backend makes first: the job is of the session's
    /// codec (else `InvalidControls`, the session unchanged).
    pub fn expect_codec(&self, session: Codec) -> Result<(), DecodeError> {
        if self.codec == session {
            Ok(())
        } else {
            Err(DecodeError::InvalidControls(format!(
                "{:?} job on a {:?} session",
                self.codec, session
            )))
        }
    }
}

/// Decoded pixel layouts a backend can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    /// 8-bit 4:2:0, a Y plane then an interleaved CbCr plane.
    Nv12,
    /// 10-bit 4:2:0 in 16-bit little-endian samples holding the value in
    /// their 10 most significant bits; Y plane then interleaved CbCr.
    P010,
    /// 8-bit 4:2:0 in three planes, Y, Cb and Cr (the layout libavcodec and
    /// dav1d decode into, so no plane needs a copy).
    Yuv420,
}

impl CaptureFormat {
    /// The layout for a V4L2 fourcc (NV12 and NV12M are the same layout, in
    /// one or two memory planes).
    pub fn from_fourcc(fourcc: u32) -> Option<Self> {
        match fourcc {
            PIX_FMT_NV12 | PIX_FMT_NV12M => Some(Self::Nv12),
            PIX_FMT_P010 => Some(Self::P010),
            PIX_FMT_YUV420M => Some(Self::Yuv420),
            _ => None,
        }
    }

    /// Bytes per sample.
    pub fn sample_bytes(self) -> usize {
        match self {
            Self::Nv12 | Self::Yuv420 => 1,
            Self::P010 => 2,
        }
    }

    /// Bits per sample of the pictures the format holds.
    pub fn bit_depth(self) -> u32 {
        match self {
            Self::Nv12 | Self::Yuv420 => 8,
            Self::P010 => 10,
        }
    }

    /// Bytes of a chroma row of a `width`-pixel picture: an interleaved
    /// CbCr row (rounded up to whole pairs), or one Cb (Cr) row.
    pub fn chroma_row(self, width: usize) -> usize {
        match self {
            Self::Nv12 | Self::P010 => width.div_ceil(2) * 2 * self.sample_bytes(),
            Self::Yuv420 => width.div_ceil(2),
        }
    }
}

/// One writable image plane of a CAPTURE buffer.
#[derive(Debug)]
pub struct CapturePlane<'a> {
    /// Plane memory, at least `stride * rows` bytes.
    pub data: &'a mut [u8],
    /// Bytes per row (`bytesperline`).
    pub stride: usize,
}

/// The CAPTURE buffer a job writes, with its negotiated format.
#[derive(Debug)]
pub struct CaptureTarget<'a> {
    /// Pixel layout.
    pub format: CaptureFormat,
    /// Negotiated width in pixels (the coded, macroblock-aligned width).
    pub width: u32,
    /// Negotiated height in pixels (the coded height).
    pub height: u32,
    /// Luma plane: `height` rows.
    pub luma: CapturePlane<'a>,
    /// Chroma plane, `height / 2` rows (rounded up): interleaved CbCr, or
    /// the Cb plane of [`CaptureFormat::Yuv420`].
    pub chroma: CapturePlane<'a>,
    /// The Cr plane of [`CaptureFormat::Yuv420`] (as many rows as
    /// `chroma`); `None` for the other formats.
    pub cr: Option<CapturePlane<'a>>,
}

impl<'a> CaptureTarget<'a> {
    /// A target over one contiguous buffer (`V4L2_PIX_FMT_NV12` / `P010`):
    /// the chroma plane starts right after `stride * height` luma bytes.
    /// `None` when the buffer is too small, the stride too narrow, or the
    /// format planar.
    pub fn contiguous(
        format: CaptureFormat,
        width: u32,
        height: u32,
        stride: usize,
        buf: &'a mut [u8],
    ) -> Option<Self> {
        let h = height as usize;
        // The interleaved chroma row (rounded up to whole pairs) is the
        // widest row.
        if format == CaptureFormat::Yuv420 || stride < format.chroma_row(width as usize) {
            return None;
        }
        let luma_len = stride.checked_mul(h)?;
        let chroma_len = stride.checked_mul(h.div_ceil(2))?;
        if buf.len() < luma_len.checked_add(chroma_len)? {
            return None;
        }
        let (luma, chroma) = buf.split_at_mut(luma_len);
        Some(Self {
            format,
            width,
            height,
            luma: CapturePlane { data: luma, stride },
            chroma: CapturePlane {
                data: &mut chroma[..chroma_len],
                stride,
            },
            cr: None,
        })
    }

    /// A target over three planes (`V4L2_PIX_FMT_YUV420M`), checked.
    pub fn planar(
        width: u32,
        height: u32,
        luma: CapturePlane<'a>,
        cb: CapturePlane<'a>,
        cr: CapturePlane<'a>,
    ) -> Result<Self, DecodeError> {
        let t = Self {
            format: CaptureFormat::Yuv420,
            width,
            height,
            luma,
            chroma: cb,
            cr: Some(cr),
        };
        t.check()?;
        Ok(t)
    }

    /// Checks that the planes can hold `width` x `height` pixels of the
    /// format; backends call this before writing.
    pub fn check(&self) -> Result<(), DecodeError> {
        let luma_row = self.width as usize * self.format.sample_bytes();
        let chroma_row = self.format.chroma_row(self.width as usize);
        let h = self.height as usize;
        let ok = |p: &CapturePlane<'_>, rows: usize, row: usize| {
            p.stride >= row && (rows == 0 || p.data.len() >= (rows - 1) * p.stride + row)
        };
        let cr_ok = match (self.format, &self.cr) {
            (CaptureFormat::Yuv420, Some(cr)) => {
                cr.stride == self.chroma.stride && ok(cr, h.div_ceil(2), chroma_row)
            }
            (CaptureFormat::Yuv420, None) => false,
            (_, cr) => cr.is_none(),
        };
        if ok(&self.luma, h, luma_row) && ok(&self.chroma, h.div_ceil(2), chroma_row) && cr_ok {
            Ok(())
        } else {
            Err(DecodeError::CaptureTooSmall)
        }
    }
}

/// Keeps a CAPTURE buffer's memory mapped beyond its job, so that a backend
/// may decode a picture straight into the buffer and keep reading it later
/// as a reference picture (what a hardware decoder does with its CAPTURE
/// buffers).
///
/// It is tied to one [`CaptureTarget`] (its planes' addresses and strides)
/// and holds a reference on whatever owns that memory (the registered
/// buffer). A backend that keeps a pointer into the target after the job
/// keeps a clone of [`CaptureRetain::keep_alive`] with it, so the memory can
/// never be unmapped under it, whatever the client does with the buffer.
/// Its *content* is the client's business: the stateless uAPI forbids
/// requeueing a CAPTURE buffer that holds a picture still used as a
/// reference, so a conforming client never overwrites one.
#[derive(Clone)]
pub struct CaptureRetain {
    keep: Arc<dyn Send + Sync>,
    /// Y, chroma (CbCr or Cb) and Cr (or an empty span).
    planes: [RetainedPlane; 3],
}

/// The Cb and Cr planes of a retained three-plane CAPTURE buffer
/// ([`CaptureRetain::chroma_planes`]).
#[derive(Debug, Clone, Copy)]
pub struct RetainedChroma {
    /// First byte of the Cb and of the Cr plane.
    pub ptr: [*mut u8; 2],
    /// Bytes valid from each.
    pub extent: [usize; 2],
    /// Bytes per row of both.
    pub stride: usize,
}

/// Where one retained plane is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RetainedPlane {
    addr: usize,
    stride: usize,
    /// Bytes valid from `addr`.
    extent: usize,
}

impl std::fmt::Debug for CaptureRetain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureRetain")
            .field("planes", &self.planes)
            .finish()
    }
}

impl CaptureRetain {
    /// Ties `keep` to `target`'s memory.
    ///
    /// # Safety
    ///
    /// As long as `keep` (or any clone of it) lives, every byte of
    /// `target`'s planes must stay mapped, readable and writable at the same
    /// addresses, after `target`'s borrow has ended too; and the memory must
    /// be ordinary memory that needs no access bracketing (a memfd or heap
    /// memory, not a dmabuf whose CPU access must be synced).
    pub unsafe fn new(keep: Arc<dyn Send + Sync>, target: &CaptureTarget<'_>) -> Self {
        let span = |p: &CapturePlane<'_>| RetainedPlane {
            addr: p.data.as_ptr() as usize,
            stride: p.stride,
            extent: p.data.len(),
        };
        let mut planes = [
            span(&target.luma),
            span(&target.chroma),
            target.cr.as_ref().map(span).unwrap_or_default(),
        ];
        // A contiguous buffer (NV12): the chroma plane starts where the luma
        // plane ends, so bytes past the luma plane are the target's too
        // (the chroma is written after the decode). Not for three planes,
        // which are all decoded in place.
        if target.cr.is_none() && planes[0].addr + planes[0].extent == planes[1].addr {
            planes[0].extent += planes[1].extent;
        }
        Self { keep, planes }
    }

    /// True when this retains `target`'s memory (the same planes).
    pub fn covers(&self, target: &CaptureTarget<'_>) -> bool {
        let same = |r: &RetainedPlane, p: &CapturePlane<'_>| {
            p.data.as_ptr() as usize == r.addr && p.stride == r.stride
        };
        same(&self.planes[0], &target.luma)
            && same(&self.planes[1], &target.chroma)
            && match &target.cr {
                Some(cr) => same(&self.planes[2], cr),
                None => self.planes[2].extent == 0,
            }
    }

    /// Bytes from the luma plane's first byte that stay valid: the luma
    /// plane, plus the chroma plane when it follows directly.
    pub fn luma_extent(&self) -> usize {
        self.planes[0].extent
    }

    /// Bytes valid from the first byte of the Cb and of the Cr plane of a
    /// [`CaptureFormat::Yuv420`] target; `None` for the other formats.
    pub fn chroma_extents(&self) -> Option<[usize; 2]> {
        (self.planes[2].extent > 0).then_some([self.planes[1].extent, self.planes[2].extent])
    }

    /// The Cb and Cr planes of `out`, a [`CaptureFormat::Yuv420`] target
    /// this retains, for a decoder to decode into; `None` for the other
    /// formats.
    pub fn chroma_planes(&self, out: &mut CaptureTarget<'_>) -> Option<RetainedChroma> {
        let extent = self.chroma_extents()?;
        let cr = out.cr.as_mut()?;
        Some(RetainedChroma {
            ptr: [out.chroma.data.as_mut_ptr(), cr.data.as_mut_ptr()],
            extent,
            stride: out.chroma.stride,
        })
    }

    /// A reference on the owner of the memory.
    pub fn keep_alive(&self) -> Arc<dyn Send + Sync> {
        self.keep.clone()
    }
}

/// What a successful [`Backend::decode`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeOutcome {
    /// The whole picture is in the CAPTURE buffer: the frontend may return
    /// it (unless a later job of the same picture still holds it).
    Decoded,
    /// The job was accepted as part of a picture whose remaining slices
    /// follow (`JobFlags::more_slices`); the CAPTURE buffer is not written
    /// yet and stays held.
    Held,
}

/// Why a job failed. The job's CAPTURE buffer is returned with
/// `V4L2_BUF_FLAG_ERROR`; the session stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The stream uses a feature this backend cannot decode (for example
    /// H.264 slice groups, or 4:2:2 into NV12).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The controls contradict each other or the bitstream.
    #[error("inconsistent controls: {0}")]
    InvalidControls(String),
    /// The decoder rejected the bitstream. The session drops its state and
    /// resumes at the next key frame (IDR).
    #[error("corrupt bitstream: {0}")]
    Corrupt(String),
    /// A reference the job names is not a picture this session decoded
    /// (seek, dropped job, ...). The session was reset and resumes at the
    /// next key frame rather than produce a wrongly predicted picture.
    #[error("reference picture {0} was not decoded by this session")]
    MissingReference(u64),
    /// The session is waiting for a key frame after a reset or an error;
    /// this non-key picture was skipped.
    #[error("waiting for a key frame")]
    WaitingForKeyframe,
    /// The CAPTURE buffer's format, size or planes cannot hold the picture.
    #[error("CAPTURE buffer does not fit the decoded picture")]
    CaptureTooSmall,
    /// The decoded picture's format or size differs from the negotiated
    /// CAPTURE format.
    #[error("decoded picture {0} does not match the CAPTURE format")]
    FormatMismatch(String),
    /// The backend itself failed (allocation, library error).
    #[error("backend failure: {0}")]
    Internal(String),
}

/// A decoding session of one codec.
///
/// Jobs arrive in queue order; [`Backend::decode`] runs them one at a time.
pub trait Backend: Send {
    /// Short backend name for logs ("ffmpeg", "dav1d", ...).
    fn name(&self) -> &'static str;

    /// The codec this session decodes.
    fn codec(&self) -> Codec;

    /// Decodes one job.
    ///
    /// Must produce, on `Ok(Decoded)`: exactly this job's picture (the one
    /// its bitstream codes, not a reordered one) in `out`, in `out.format`,
    /// every pixel of `out.width` x `out.height` written (a picture decoded
    /// in place may leave the alignment padding beyond its coded size as
    /// the decoder left it). On `Ok(Held)`: the
    /// job's data kept for the picture's next slices, `out` untouched. On
    /// `Err`: `out` contents unspecified, the session consistent again (at
    /// worst waiting for a key frame). Must check that every timestamp in
    /// `job.references` names a picture this session decoded since its last
    /// reset (else reset and return [`DecodeError::MissingReference`]). Must
    /// never panic on any bitstream or control content.
    fn decode(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
    ) -> Result<DecodeOutcome, DecodeError>;

    /// [`Backend::decode`] with the target's memory retained beyond the job
    /// (`retain`, when it [covers](CaptureRetain::covers) `out`): the backend
    /// may then decode the picture straight into `out` and keep reading it
    /// as a reference picture later. Same contract as `decode` otherwise.
    /// The default ignores `retain`.
    fn decode_retained(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
        retain: Option<&CaptureRetain>,
    ) -> Result<DecodeOutcome, DecodeError> {
        let _ = retain;
        self.decode(job, out)
    }

    /// Forgets every decoded picture and held slice (stream seek, STREAMOFF
    /// on OUTPUT). The next picture must be a key frame.
    fn reset(&mut self);
}

/// Opens a backend session for `codec` with the built-in backends.
pub fn open(codec: Codec) -> Result<Box<dyn Backend>, DecodeError> {
    match codec {
        Codec::H264 => Ok(Box::new(ffmpeg::FfmpegH264::new()?)),
        Codec::Hevc => Ok(Box::new(ffmpeg::FfmpegHevc::new()?)),
        Codec::Vp8 | Codec::Vp9 => Ok(Box::new(ffmpeg::FfmpegVpx::new(codec)?)),
        Codec::Av1 => Ok(Box::new(dav1d::Dav1dAv1::new()?)),
    }
}

/// Helpers of the in-place decoding tests: retained heap "CAPTURE
/// buffers" and a job runner.
#[cfg(test)]
pub(crate) mod test_mem {
    use super::*;
    use decoder_core::ctrl::validate_write;
    use decoder_core::fmt;

    /// Heap memory with the alignment decoders want, owned by an `Arc` like
    /// a registered buffer's mapping.
    pub struct Mem {
        ptr: *mut u8,
        layout: std::alloc::Layout,
    }

    // SAFETY: plain owned memory; the tests touch it from one thread.
    unsafe impl Send for Mem {}
    // SAFETY: as above.
    unsafe impl Sync for Mem {}

    impl Mem {
        pub fn new(len: usize) -> Arc<Self> {
            let layout = std::alloc::Layout::from_size_align(len, 64).unwrap();
            // SAFETY: a non-zero size; null checked.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Arc::new(Self { ptr, layout })
        }

        /// The bytes, like a CAPTURE mapping's: the tests hold one slice
        /// at a time; decoders reach them through their own pointers.
        #[allow(clippy::mut_from_ref)]
        pub fn bytes(&self) -> &mut [u8] {
            // SAFETY: `ptr` is `layout.size()` bytes owned by self.
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
        }

        /// The bytes as a plane of `stride` bytes per row.
        pub fn plane(&self, stride: usize) -> CapturePlane<'_> {
            CapturePlane {
                data: self.bytes(),
                stride,
            }
        }
    }

    impl Drop for Mem {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr, self.layout) };
        }
    }

    /// Encodes 24 frames of a moving test pattern of `size` with the
    /// `ffmpeg` tool and `codec_args` into a temporary file `name`.
    pub fn encode(name: &str, codec_args: &[&str], size: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dv-inplace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(name);
        let st = std::process::Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg(format!("testsrc2=size={size}:rate=25"))
            .args(["-frames:v", "24", "-pix_fmt", "yuv420p"])
            .args(codec_args)
            .arg(&out)
            .status()
            .expect("the ffmpeg tool (with libx264 and libsvtav1) is needed: see .ci/install-deps");
        assert!(st.success(), "ffmpeg failed to encode {name}");
        out
    }

    /// Decodes `jobs` (whole pictures) into `format` (NV12 or YUV420)
    /// buffers of `stride` luma bytes per line (YUV420: planes padded as
    /// `fmt::try_decoded` does), each picture its own buffer (never reused,
    /// as a client keeps reference pictures), with the memory retained
    /// (`in_place`) or not. Returns the visible rectangle of every picture
    /// packed as NV12, and the buffers.
    pub fn decode_jobs(
        backend: &mut dyn Backend,
        codec: Codec,
        jobs: &[daedalus_client::Job],
        format: CaptureFormat,
        stride: usize,
        in_place: bool,
    ) -> (Vec<Vec<u8>>, Vec<Arc<Mem>>) {
        let mut effective = ControlValues::defaults(codec);
        let mut pictures = Vec::new();
        let mut kept = Vec::new();
        for job in jobs {
            for (id, bytes) in job.controls.iter() {
                effective.set_raw(id, validate_write(codec, id, bytes).unwrap());
            }
            let mut refs = Vec::new();
            (codec.desc().reference_timestamps)(&effective, &mut refs);
            let (w, h) = job.picture.coded;
            let hu = h as usize;
            let (ch, cs) = (hu.div_ceil(2), stride / 2);
            let rows = (h.div_ceil(16) * 16).div_ceil(fmt::CAPTURE_ROW_ALIGN) as usize
                * fmt::CAPTURE_ROW_ALIGN as usize;
            let slack = fmt::PLANAR_SLACK_ROWS as usize;
            let mems = match format {
                CaptureFormat::Yuv420 => vec![
                    Mem::new(stride * (rows + slack)),
                    Mem::new(cs * (rows / 2 + slack)),
                    Mem::new(cs * (rows / 2 + slack)),
                ],
                _ => vec![Mem::new(stride * (hu + ch))],
            };
            let mut t = match format {
                CaptureFormat::Yuv420 => CaptureTarget::planar(
                    w,
                    h,
                    mems[0].plane(stride),
                    mems[1].plane(cs),
                    mems[2].plane(cs),
                )
                .unwrap(),
                _ => CaptureTarget::contiguous(format, w, h, stride, mems[0].bytes()).unwrap(),
            };
            let input = JobInput {
                codec,
                controls: &effective,
                bitstream: &job.bitstream,
                timestamp: job.timestamp,
                flags: JobFlags::default(),
                references: &refs,
            };
            let keep: Arc<dyn Send + Sync> = Arc::new(mems.clone());
            // SAFETY: `keep` owns the memory behind `t`, which stays at
            // its address until the last clone of `keep` is gone.
            let retain = in_place.then(|| unsafe { CaptureRetain::new(keep, &t) });
            let r = backend.decode_retained(&input, &mut t, retain.as_ref());
            assert_eq!(r, Ok(DecodeOutcome::Decoded));
            // The visible rectangle, packed as NV12 (the alignment padding
            // of a picture decoded in place is the decoder's business).
            let (vx, vy, vw, vh) = job.picture.visible;
            let (vx, vy, vw, vh) = (vx as usize, vy as usize, vw as usize, vh as usize);
            let mut nv12: Vec<u8> = Vec::new();
            let y = mems[0].bytes();
            for row in vy..vy + vh {
                nv12.extend_from_slice(&y[row * stride + vx..row * stride + vx + vw]);
            }
            let (cx, cw) = (vx / 2, vw.div_ceil(2));
            for row in vy / 2..vy / 2 + vh.div_ceil(2) {
                match format {
                    CaptureFormat::Yuv420 => {
                        let (u, v) = (mems[1].bytes(), mems[2].bytes());
                        for x in cx..cx + cw {
                            nv12.push(u[row * cs + x]);
                            nv12.push(v[row * cs + x]);
                        }
                    }
                    _ => {
                        let o = (hu + row) * stride + 2 * cx;
                        nv12.extend_from_slice(&y[o..o + 2 * cw]);
                    }
                }
            }
            pictures.push(nv12);
            kept.extend(mems);
        }
        (pictures, kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_target_splits_planes() {
        let mut buf = vec![0u8; 64 * 48 * 3 / 2];
        let t = CaptureTarget::contiguous(CaptureFormat::Nv12, 64, 48, 64, &mut buf).unwrap();
        assert_eq!(t.luma.data.len(), 64 * 48);
        assert_eq!(t.chroma.data.len(), 64 * 24);
        assert!(t.check().is_ok());
        let mut small = vec![0u8; 64 * 48];
        assert!(CaptureTarget::contiguous(CaptureFormat::Nv12, 64, 48, 64, &mut small).is_none());
        // Odd width: the chroma row needs one more pair than the luma row.
        let mut odd = [0u8; 16];
        let t = CaptureTarget {
            format: CaptureFormat::Nv12,
            width: 3,
            height: 4,
            luma: CapturePlane {
                data: &mut odd[..16],
                stride: 3,
            },
            chroma: CapturePlane {
                data: &mut [0u8; 6][..],
                stride: 3,
            },
            cr: None,
        };
        assert_eq!(t.check(), Err(DecodeError::CaptureTooSmall));
        let mut p010 = vec![0u8; 128 * 48 * 3 / 2];
        assert!(CaptureTarget::contiguous(CaptureFormat::P010, 64, 48, 64, &mut p010).is_none());
        assert!(CaptureTarget::contiguous(CaptureFormat::P010, 64, 48, 128, &mut p010).is_some());
    }

    #[test]
    fn check_refuses_short_planes() {
        let mut y = vec![0u8; 16 * 16];
        let mut c = vec![0u8; 16 * 7];
        let t = CaptureTarget {
            format: CaptureFormat::Nv12,
            width: 16,
            height: 16,
            luma: CapturePlane {
                data: &mut y,
                stride: 16,
            },
            chroma: CapturePlane {
                data: &mut c,
                stride: 16,
            },
            cr: None,
        };
        assert_eq!(t.check(), Err(DecodeError::CaptureTooSmall));
    }
}
