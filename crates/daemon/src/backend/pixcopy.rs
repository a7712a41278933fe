//! Planar YUV 4:2:0 (what libavcodec and dav1d produce) into the CAPTURE
//! layouts NV12, P010 and YUV420: the whole picture ([`write_capture`]), or
//! only its chroma planes when the decoder wrote the luma plane in place
//! ([`write_chroma`]).
//!
//! Backends hand over a [`Planar`] view of their picture; [`write_capture`]
//! fills every byte of the target's `width` x `height` area, repeating the
//! last column and row where the target is larger than the picture
//! (alignment). The inner loops work on whole rows of slices so that they
//! compile to vector code.

use super::{CaptureFormat, CaptureTarget, DecodeError};

/// Sample depth of a planar source picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// One byte per sample.
    Bits8,
    /// Two little-endian bytes per sample, value in the low 10 bits.
    Bits10,
}

impl Depth {
    fn bytes(self) -> usize {
        match self {
            Self::Bits8 => 1,
            Self::Bits10 => 2,
        }
    }
}

/// A decoded 4:2:0 (or monochrome) picture, read row by row.
pub trait Planar {
    /// Visible width in pixels (> 0).
    fn width(&self) -> usize;
    /// Visible height in pixels (> 0).
    fn height(&self) -> usize;
    /// Sample depth.
    fn depth(&self) -> Depth;
    /// True when there are no chroma planes (written as neutral grey).
    fn monochrome(&self) -> bool;
    /// Row `y` of plane `plane` (0 = Y, 1 = Cb, 2 = Cr), exactly `len`
    /// bytes. Callers keep `y` below the plane's row count and `len` within
    /// its row.
    fn row(&self, plane: usize, y: usize, len: usize) -> &[u8];
}

/// Copies `pic` into `out`. Fails without writing when the picture does not
/// fit the target's size or format.
pub fn write_capture(pic: &impl Planar, out: &mut CaptureTarget<'_>) -> Result<(), DecodeError> {
    write(pic, out, true)
}

/// Like [`write_capture`], but only the chroma plane: for a picture whose
/// luma plane the decoder wrote straight into the target's (same memory,
/// same stride). The target's luma plane is not touched, not even its
/// padding beyond the picture (the decoder may still read it).
pub fn write_chroma(pic: &impl Planar, out: &mut CaptureTarget<'_>) -> Result<(), DecodeError> {
    write(pic, out, false)
}

fn write(pic: &impl Planar, out: &mut CaptureTarget<'_>, luma: bool) -> Result<(), DecodeError> {
    let (w, h, depth) = (pic.width(), pic.height(), pic.depth());
    if w == 0 || h == 0 || w > out.width as usize || h > out.height as usize {
        return Err(DecodeError::FormatMismatch(format!(
            "{w}x{h} into {}x{}",
            out.width, out.height
        )));
    }
    if depth == Depth::Bits10 && out.format.bit_depth() == 8 {
        return Err(DecodeError::FormatMismatch(format!(
            "10-bit picture into {:?}",
            out.format
        )));
    }
    out.check()?;
    let (ow, oh) = (out.width as usize, out.height as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let (ocw, och) = (ow.div_ceil(2), oh.div_ceil(2));
    let sb = depth.bytes();
    let osb = out.format.sample_bytes();
    let (ls, cs) = (out.luma.stride, out.chroma.stride);
    let luma_rows = if luma { oh } else { 0 };
    for y in 0..luma_rows {
        let src = pic.row(0, y.min(h - 1), w * sb);
        let dst = &mut out.luma.data[y * ls..y * ls + ow * osb];
        match (out.format, depth) {
            (CaptureFormat::Nv12 | CaptureFormat::Yuv420, _) => luma_8(src, dst),
            (CaptureFormat::P010, Depth::Bits8) => luma_8_to_16(src, dst),
            (CaptureFormat::P010, Depth::Bits10) => luma_10_to_16(src, dst),
        }
    }
    if let Some(cr) = out.cr.as_mut() {
        // Planar (8-bit, checked above): each chroma plane row by row.
        let (cb, crs) = (&mut out.chroma.data, cr.stride);
        for y in 0..och {
            let (u, v) = (
                &mut cb[y * cs..y * cs + ocw],
                &mut cr.data[y * crs..y * crs + ocw],
            );
            if pic.monochrome() {
                u.fill(0x80);
                v.fill(0x80);
            } else {
                let sy = y.min(ch - 1);
                luma_8(pic.row(1, sy, cw), u);
                luma_8(pic.row(2, sy, cw), v);
            }
        }
        return Ok(());
    }
    for y in 0..och {
        let dst = &mut out.chroma.data[y * cs..y * cs + 2 * ocw * osb];
        if pic.monochrome() {
            match out.format {
                CaptureFormat::Nv12 | CaptureFormat::Yuv420 => dst.fill(0x80),
                CaptureFormat::P010 => {
                    for d in dst.chunks_exact_mut(2) {
                        d.copy_from_slice(&0x8000u16.to_le_bytes());
                    }
                }
            }
            continue;
        }
        let sy = y.min(ch - 1);
        let (u, v) = (pic.row(1, sy, cw * sb), pic.row(2, sy, cw * sb));
        match (out.format, depth) {
            (CaptureFormat::Nv12 | CaptureFormat::Yuv420, _) => chroma_8(u, v, dst),
            (CaptureFormat::P010, Depth::Bits8) => chroma_8_to_16(u, v, dst),
            (CaptureFormat::P010, Depth::Bits10) => chroma_10_to_16(u, v, dst),
        }
    }
    Ok(())
}

/// 8-bit row into an 8-bit row at least as wide; the tail repeats the last
/// sample.
fn luma_8(src: &[u8], dst: &mut [u8]) {
    let w = src.len();
    dst[..w].copy_from_slice(src);
    dst[w..].fill(src[w - 1]);
}

/// 8-bit row into P010 (value << 8).
fn luma_8_to_16(src: &[u8], dst: &mut [u8]) {
    let w = src.len();
    let (head, tail) = dst.split_at_mut(2 * w);
    for (d, &s) in head.chunks_exact_mut(2).zip(src) {
        d[0] = 0;
        d[1] = s;
    }
    for d in tail.chunks_exact_mut(2) {
        d[0] = 0;
        d[1] = src[w - 1];
    }
}

fn p010(lo: u8, hi: u8) -> [u8; 2] {
    (u16::from_le_bytes([lo, hi]) << 6).to_le_bytes()
}

/// 10-bit little-endian row into P010 (value << 6).
fn luma_10_to_16(src: &[u8], dst: &mut [u8]) {
    let n = src.len();
    let (head, tail) = dst.split_at_mut(n);
    for (d, s) in head.chunks_exact_mut(2).zip(src.chunks_exact(2)) {
        d.copy_from_slice(&p010(s[0], s[1]));
    }
    let last = p010(src[n - 2], src[n - 1]);
    for d in tail.chunks_exact_mut(2) {
        d.copy_from_slice(&last);
    }
}

/// Two 8-bit chroma rows interleaved into one NV12 row.
fn chroma_8(u: &[u8], v: &[u8], dst: &mut [u8]) {
    let cw = u.len();
    let (head, tail) = dst.split_at_mut(2 * cw);
    for ((d, &a), &b) in head.chunks_exact_mut(2).zip(u).zip(v) {
        d[0] = a;
        d[1] = b;
    }
    for d in tail.chunks_exact_mut(2) {
        d[0] = u[cw - 1];
        d[1] = v[cw - 1];
    }
}

/// Two 8-bit chroma rows interleaved into one P010 row.
fn chroma_8_to_16(u: &[u8], v: &[u8], dst: &mut [u8]) {
    let cw = u.len();
    let (head, tail) = dst.split_at_mut(4 * cw);
    for ((d, &a), &b) in head.chunks_exact_mut(4).zip(u).zip(v) {
        d.copy_from_slice(&[0, a, 0, b]);
    }
    for d in tail.chunks_exact_mut(4) {
        d.copy_from_slice(&[0, u[cw - 1], 0, v[cw - 1]]);
    }
}

/// Two 10-bit chroma rows interleaved into one P010 row.
fn chroma_10_to_16(u: &[u8], v: &[u8], dst: &mut [u8]) {
    let n = u.len();
    let (head, tail) = dst.split_at_mut(2 * n);
    for ((d, a), b) in head
        .chunks_exact_mut(4)
        .zip(u.chunks_exact(2))
        .zip(v.chunks_exact(2))
    {
        let (x, y) = (p010(a[0], a[1]), p010(b[0], b[1]));
        d.copy_from_slice(&[x[0], x[1], y[0], y[1]]);
    }
    let (x, y) = (p010(u[n - 2], u[n - 1]), p010(v[n - 2], v[n - 1]));
    for d in tail.chunks_exact_mut(4) {
        d.copy_from_slice(&[x[0], x[1], y[0], y[1]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture held in vectors, sample value = f(plane, x, y).
    struct Pic {
        w: usize,
        h: usize,
        depth: Depth,
        mono: bool,
        planes: Vec<Vec<u8>>,
        strides: [usize; 3],
    }

    impl Pic {
        fn new(w: usize, h: usize, depth: Depth, mono: bool) -> Self {
            let sb = depth.bytes();
            let dims = [
                (w, h),
                (w.div_ceil(2), h.div_ceil(2)),
                (w.div_ceil(2), h.div_ceil(2)),
            ];
            let mut planes = Vec::new();
            let mut strides = [0; 3];
            for (p, &(pw, ph)) in dims.iter().enumerate() {
                let stride = pw * sb + 7; // padding a real decoder has too
                strides[p] = stride;
                let mut v = vec![0xEEu8; stride * ph];
                for y in 0..ph {
                    for x in 0..pw {
                        let s = Self::sample(depth, p, x, y);
                        let o = y * stride + x * sb;
                        match depth {
                            Depth::Bits8 => v[o] = s as u8,
                            Depth::Bits10 => v[o..o + 2].copy_from_slice(&s.to_le_bytes()),
                        }
                    }
                }
                planes.push(v);
            }
            Self {
                w,
                h,
                depth,
                mono,
                planes,
                strides,
            }
        }

        fn sample(depth: Depth, p: usize, x: usize, y: usize) -> u16 {
            let v = (p * 71 + x * 13 + y * 7) as u16;
            match depth {
                Depth::Bits8 => v & 0xff,
                Depth::Bits10 => v & 0x3ff,
            }
        }
    }

    impl Planar for Pic {
        fn width(&self) -> usize {
            self.w
        }
        fn height(&self) -> usize {
            self.h
        }
        fn depth(&self) -> Depth {
            self.depth
        }
        fn monochrome(&self) -> bool {
            self.mono
        }
        fn row(&self, plane: usize, y: usize, len: usize) -> &[u8] {
            let o = y * self.strides[plane];
            &self.planes[plane][o..o + len]
        }
    }

    /// Reference: the value a target sample must have, by the definition
    /// (clamped coordinates, depth scaling), computed sample by sample.
    fn expect(pic: &Pic, fmt: CaptureFormat, p: usize, x: usize, y: usize) -> u16 {
        let (pw, ph) = if p == 0 {
            (pic.w, pic.h)
        } else {
            (pic.w.div_ceil(2), pic.h.div_ceil(2))
        };
        let s = if p > 0 && pic.mono {
            match pic.depth {
                Depth::Bits8 => 128,
                Depth::Bits10 => 512,
            }
        } else {
            Pic::sample(pic.depth, p, x.min(pw - 1), y.min(ph - 1))
        };
        match (fmt, pic.depth) {
            (CaptureFormat::Nv12 | CaptureFormat::Yuv420, _) => s,
            (CaptureFormat::P010, Depth::Bits8) => s << 8,
            (CaptureFormat::P010, Depth::Bits10) => s << 6,
        }
    }

    fn check(w: usize, h: usize, ow: u32, oh: u32, depth: Depth, fmt: CaptureFormat, mono: bool) {
        let pic = Pic::new(w, h, depth, mono);
        let osb = fmt.sample_bytes();
        let stride = (ow as usize).div_ceil(2) * 2 * osb + 5;
        let mut buf = vec![0x55u8; stride * (oh as usize + (oh as usize).div_ceil(2))];
        let mut out = CaptureTarget::contiguous(fmt, ow, oh, stride, &mut buf).unwrap();
        write_capture(&pic, &mut out).unwrap();
        let rd = |o: usize| -> u16 {
            if osb == 1 {
                u16::from(buf[o])
            } else {
                u16::from_le_bytes([buf[o], buf[o + 1]])
            }
        };
        let (ow, oh) = (ow as usize, oh as usize);
        for y in 0..oh {
            for x in 0..ow {
                assert_eq!(
                    rd(y * stride + x * osb),
                    expect(&pic, fmt, 0, x, y),
                    "Y {x},{y}"
                );
            }
        }
        let base = stride * oh;
        for y in 0..oh.div_ceil(2) {
            for x in 0..ow.div_ceil(2) {
                let o = base + y * stride + 2 * x * osb;
                assert_eq!(rd(o), expect(&pic, fmt, 1, x, y), "U {x},{y}");
                assert_eq!(rd(o + osb), expect(&pic, fmt, 2, x, y), "V {x},{y}");
            }
        }
    }

    #[test]
    fn every_depth_and_format_with_padding() {
        for mono in [false, true] {
            for &(w, h, ow, oh) in &[
                (16, 8, 16, 8),
                (15, 7, 16, 8),
                (33, 17, 48, 32),
                (1, 1, 2, 2),
            ] {
                check(w, h, ow, oh, Depth::Bits8, CaptureFormat::Nv12, mono);
                check(w, h, ow, oh, Depth::Bits8, CaptureFormat::P010, mono);
                check(w, h, ow, oh, Depth::Bits10, CaptureFormat::P010, mono);
            }
        }
    }

    fn check_planar(w: usize, h: usize, ow: u32, oh: u32, mono: bool) {
        let pic = Pic::new(w, h, Depth::Bits8, mono);
        let (ls, cs) = (ow as usize + 3, (ow as usize).div_ceil(2) + 5);
        let crows = (oh as usize).div_ceil(2);
        let mut y = vec![0x55u8; ls * oh as usize];
        let mut u = vec![0x55u8; cs * crows];
        let mut v = vec![0x55u8; cs * crows];
        let plane = |data, stride| super::super::CapturePlane { data, stride };
        let mut out = CaptureTarget::planar(
            ow,
            oh,
            plane(&mut y, ls),
            plane(&mut u, cs),
            plane(&mut v, cs),
        )
        .unwrap();
        write_capture(&pic, &mut out).unwrap();
        let f = CaptureFormat::Yuv420;
        for row in 0..oh as usize {
            for x in 0..ow as usize {
                assert_eq!(u16::from(y[row * ls + x]), expect(&pic, f, 0, x, row));
            }
        }
        for row in 0..crows {
            for x in 0..(ow as usize).div_ceil(2) {
                assert_eq!(u16::from(u[row * cs + x]), expect(&pic, f, 1, x, row));
                assert_eq!(u16::from(v[row * cs + x]), expect(&pic, f, 2, x, row));
            }
        }
    }

    #[test]
    fn planar_with_padding() {
        for mono in [false, true] {
            for &(w, h, ow, oh) in &[(16, 8, 16, 8), (15, 7, 16, 8), (33, 17, 48, 32)] {
                check_planar(w, h, ow, oh, mono);
            }
        }
        // Three planes are refused for 10-bit pictures and by `contiguous`.
        let pic = Pic::new(16, 16, Depth::Bits10, false);
        let (mut y, mut u, mut v) = (vec![0u8; 256], vec![0u8; 64], vec![0u8; 64]);
        let plane = |data, stride| super::super::CapturePlane { data, stride };
        let mut out = CaptureTarget::planar(
            16,
            16,
            plane(&mut y, 16),
            plane(&mut u, 8),
            plane(&mut v, 8),
        )
        .unwrap();
        assert!(matches!(
            write_capture(&pic, &mut out),
            Err(DecodeError::FormatMismatch(_))
        ));
        let mut buf = vec![0u8; 16 * 24];
        assert!(CaptureTarget::contiguous(CaptureFormat::Yuv420, 16, 16, 16, &mut buf).is_none());
    }

    #[test]
    fn chroma_only_leaves_the_luma_plane_alone() {
        let pic = Pic::new(15, 7, Depth::Bits8, false);
        let stride = 20;
        let mut buf = vec![0x55u8; stride * 12];
        let mut out =
            CaptureTarget::contiguous(CaptureFormat::Nv12, 16, 8, stride, &mut buf).unwrap();
        write_chroma(&pic, &mut out).unwrap();
        assert!(buf[..stride * 8].iter().all(|&b| b == 0x55));
        for y in 0..4 {
            for x in 0..8 {
                let o = stride * 8 + y * stride + 2 * x;
                let e = |p| expect(&pic, CaptureFormat::Nv12, p, x, y);
                assert_eq!((u16::from(buf[o]), u16::from(buf[o + 1])), (e(1), e(2)));
            }
        }
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let pic = Pic::new(32, 16, Depth::Bits8, false);
        let mut buf = vec![0u8; 16 * 24];
        let mut out = CaptureTarget::contiguous(CaptureFormat::Nv12, 16, 16, 16, &mut buf).unwrap();
        assert!(matches!(
            write_capture(&pic, &mut out),
            Err(DecodeError::FormatMismatch(_))
        ));
        let pic = Pic::new(16, 16, Depth::Bits10, false);
        assert!(matches!(
            write_capture(&pic, &mut out),
            Err(DecodeError::FormatMismatch(_))
        ));
    }
}
