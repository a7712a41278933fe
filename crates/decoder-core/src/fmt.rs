//! Coded and decoded pixel formats and frame-size limits.

use crate::ctrl::Codec;

/// Builds a V4L2 fourcc.
pub const fn fourcc(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

/// `V4L2_PIX_FMT_H264_SLICE`
pub const PIX_FMT_H264_SLICE: u32 = fourcc(b"S264");
/// `V4L2_PIX_FMT_HEVC_SLICE`
pub const PIX_FMT_HEVC_SLICE: u32 = fourcc(b"S265");
/// `V4L2_PIX_FMT_VP8_FRAME`
pub const PIX_FMT_VP8_FRAME: u32 = fourcc(b"VP8F");
/// `V4L2_PIX_FMT_VP9_FRAME`
pub const PIX_FMT_VP9_FRAME: u32 = fourcc(b"VP9F");
/// `V4L2_PIX_FMT_AV1_FRAME`
pub const PIX_FMT_AV1_FRAME: u32 = fourcc(b"AV1F");
/// `V4L2_PIX_FMT_NV12`: Y plane then interleaved CbCr, one memory plane.
pub const PIX_FMT_NV12: u32 = fourcc(b"NV12");
/// `V4L2_PIX_FMT_NV12M`: as NV12, two memory planes.
pub const PIX_FMT_NV12M: u32 = fourcc(b"NM12");
/// `V4L2_PIX_FMT_YUV420M`: planar 4:2:0, Y, Cb and Cr in three memory
/// planes.
pub const PIX_FMT_YUV420M: u32 = fourcc(b"YM12");
/// `V4L2_PIX_FMT_P010`: 10-bit NV12 layout in 16-bit words, one memory plane.
pub const PIX_FMT_P010: u32 = fourcc(b"P010");

/// Coded formats, in ENUM_FMT order.
pub const CODED_FORMATS: [(u32, Codec); 5] = [
    (PIX_FMT_H264_SLICE, Codec::H264),
    (PIX_FMT_HEVC_SLICE, Codec::Hevc),
    (PIX_FMT_VP8_FRAME, Codec::Vp8),
    (PIX_FMT_VP9_FRAME, Codec::Vp9),
    (PIX_FMT_AV1_FRAME, Codec::Av1),
];

/// Decoded formats, in ENUM_FMT order.
pub const DECODED_FORMATS: [u32; 4] = [PIX_FMT_NV12, PIX_FMT_NV12M, PIX_FMT_YUV420M, PIX_FMT_P010];

/// Smallest coded width and height.
pub const MIN_SIZE: u32 = 16;
/// Largest coded width.
pub const MAX_WIDTH: u32 = 8192;
/// Largest coded height.
pub const MAX_HEIGHT: u32 = 4352;
/// Smallest OUTPUT buffer the driver hands out.
pub const MIN_CODED_BUFFER: u32 = 64 * 1024;

/// The codec of a coded fourcc.
pub fn codec_of(fourcc: u32) -> Option<Codec> {
    CODED_FORMATS
        .iter()
        .find(|(f, _)| *f == fourcc)
        .map(|(_, c)| *c)
}

/// The coded fourcc of a codec.
pub fn fourcc_of(codec: Codec) -> u32 {
    CODED_FORMATS
        .iter()
        .find(|(_, c)| *c == codec)
        .map(|(f, _)| *f)
        .unwrap_or(PIX_FMT_H264_SLICE)
}

/// One memory plane of a format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlaneLayout {
    /// Bytes per line (0 for coded formats).
    pub bytesperline: u32,
    /// Bytes of the plane.
    pub sizeimage: u32,
}

/// A multiplanar pixel format (`struct v4l2_pix_format_mplane`, the parts
/// that matter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PixFormat {
    /// fourcc
    pub fourcc: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Memory planes used.
    pub num_planes: u32,
    /// Plane layouts.
    pub planes: [PlaneLayout; 4],
}

impl PixFormat {
    /// Plane sizes in use.
    pub fn plane_sizes(&self) -> impl Iterator<Item = u32> + '_ {
        self.planes[..self.num_planes as usize]
            .iter()
            .map(|p| p.sizeimage)
    }
}

fn align(v: u32, a: u32) -> u32 {
    v.div_ceil(a) * a
}

fn clamp_size(w: u32, h: u32) -> (u32, u32) {
    (w.clamp(MIN_SIZE, MAX_WIDTH), h.clamp(MIN_SIZE, MAX_HEIGHT))
}

/// TRY_FMT on the OUTPUT (coded) queue: an unknown fourcc becomes H.264,
/// sizes are clamped, the buffer size is at least what a frame of that size
/// can need.
pub fn try_coded(fourcc: u32, width: u32, height: u32, sizeimage: u32) -> PixFormat {
    let fourcc = if codec_of(fourcc).is_some() {
        fourcc
    } else {
        PIX_FMT_H264_SLICE
    };
    let (width, height) = clamp_size(width, height);
    // Worst case of a coded frame: raw 4:2:0 size, plus headroom.
    let need = (width * height * 3 / 2).max(MIN_CODED_BUFFER);
    let sizeimage = sizeimage.clamp(need, need.max(64 << 20));
    let mut planes = [PlaneLayout::default(); 4];
    planes[0] = PlaneLayout {
        bytesperline: 0,
        sizeimage,
    };
    PixFormat {
        fourcc,
        width,
        height,
        num_planes: 1,
        planes,
    }
}

/// CAPTURE rows are a multiple of this many pixels (dav1d pads its pictures
/// to 128; libavcodec wants line sizes in multiples of 64 bytes).
pub const CAPTURE_ROW_ALIGN: u32 = 128;

/// The planes of [`PIX_FMT_YUV420M`] hold this many rows of padding beyond
/// the height rounded up to [`CAPTURE_ROW_ALIGN`]: with it, each plane
/// holds the padded picture planes libavcodec (height aligned to 32, plus 2
/// rows of over-read) and dav1d (height aligned to 128) decode into, so
/// every plane is decoded in place.
pub const PLANAR_SLACK_ROWS: u32 = 4;

/// TRY_FMT on the CAPTURE (decoded) queue for a given coded size: an unknown
/// fourcc becomes NV12; width and height are aligned to the 16-pixel
/// macroblock / superblock grid the backends write. Rows are padded to a
/// multiple of [`CAPTURE_ROW_ALIGN`] pixels, the line size libavcodec and
/// dav1d accept for their own pictures, so that the daemon can decode the
/// luma plane in place. [`PIX_FMT_YUV420M`]'s planes are also padded below
/// the picture ([`PLANAR_SLACK_ROWS`]), so that all three are decoded in
/// place.
pub fn try_decoded(fourcc: u32, coded_width: u32, coded_height: u32) -> PixFormat {
    let fourcc = if DECODED_FORMATS.contains(&fourcc) {
        fourcc
    } else {
        PIX_FMT_NV12
    };
    let (w, h) = clamp_size(coded_width, coded_height);
    let (w, h) = (align(w, 16), align(h, 16));
    let bps = if fourcc == PIX_FMT_P010 { 2 } else { 1 };
    let bpl = align(w, CAPTURE_ROW_ALIGN) * bps;
    let luma = PlaneLayout {
        bytesperline: bpl,
        sizeimage: bpl * h,
    };
    let chroma = PlaneLayout {
        bytesperline: bpl,
        sizeimage: bpl * h / 2,
    };
    let mut planes = [PlaneLayout::default(); 4];
    let num_planes = if fourcc == PIX_FMT_NV12M {
        planes[0] = luma;
        planes[1] = chroma;
        2
    } else if fourcc == PIX_FMT_YUV420M {
        let rows = align(h, CAPTURE_ROW_ALIGN);
        planes[0] = PlaneLayout {
            bytesperline: bpl,
            sizeimage: bpl * (rows + PLANAR_SLACK_ROWS),
        };
        let c = PlaneLayout {
            bytesperline: bpl / 2,
            sizeimage: bpl / 2 * (rows / 2 + PLANAR_SLACK_ROWS),
        };
        planes[1] = c;
        planes[2] = c;
        3
    } else {
        planes[0] = PlaneLayout {
            bytesperline: luma.bytesperline,
            sizeimage: luma.sizeimage + chroma.sizeimage,
        };
        1
    };
    PixFormat {
        fourcc,
        width: w,
        height: h,
        num_planes,
        planes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coded_defaults_and_clamps() {
        let f = try_coded(fourcc(b"XXXX"), 1, 100_000, 0);
        assert_eq!(f.fourcc, PIX_FMT_H264_SLICE);
        assert_eq!((f.width, f.height), (MIN_SIZE, MAX_HEIGHT));
        assert!(f.planes[0].sizeimage >= f.width * f.height * 3 / 2);
        let f = try_coded(PIX_FMT_AV1_FRAME, 1920, 1080, 10 << 20);
        assert_eq!(f.fourcc, PIX_FMT_AV1_FRAME);
        assert_eq!(f.planes[0].sizeimage, 10 << 20);
    }

    #[test]
    fn decoded_layouts() {
        let f = try_decoded(PIX_FMT_NV12, 1920, 1080);
        assert_eq!((f.width, f.height, f.num_planes), (1920, 1088, 1));
        assert_eq!(f.planes[0].bytesperline, 1920);
        assert_eq!(f.planes[0].sizeimage, 1920 * 1088 * 3 / 2);
        // Rows padded to 128 pixels.
        let f = try_decoded(PIX_FMT_NV12M, 176, 100);
        assert_eq!((f.width, f.height, f.num_planes), (176, 112, 2));
        assert_eq!(f.planes[0].bytesperline, 256);
        assert_eq!(f.planes[1].sizeimage, 256 * 112 / 2);
        let f = try_decoded(PIX_FMT_P010, 64, 64);
        assert_eq!(f.planes[0].bytesperline, 256);
        assert_eq!(try_decoded(0, 64, 64).fourcc, PIX_FMT_NV12);
        // Planar: chroma lines half as long, every plane padded below.
        let f = try_decoded(PIX_FMT_YUV420M, 1920, 1080);
        assert_eq!((f.width, f.height, f.num_planes), (1920, 1088, 3));
        assert_eq!(f.planes[0].bytesperline, 1920);
        assert_eq!(f.planes[0].sizeimage, 1920 * (1152 + 4));
        assert_eq!(f.planes[1], f.planes[2]);
        assert_eq!(f.planes[1].bytesperline, 960);
        assert_eq!(f.planes[1].sizeimage, 960 * (576 + 4));
    }

    #[test]
    fn fourcc_codec_roundtrip() {
        for (f, c) in CODED_FORMATS {
            assert_eq!(codec_of(f), Some(c));
            assert_eq!(fourcc_of(c), f);
        }
        assert_eq!(codec_of(PIX_FMT_NV12), None);
    }
}
