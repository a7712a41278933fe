//! Decoded pictures out: tight packing of the visible area, FFmpeg's
//! framemd5 format and raw YUV files.

use std::io::Write;

use decoder_core::fmt::{PixFormat, PIX_FMT_P010, PIX_FMT_YUV420M};

/// Packs the visible rectangle of a picture into the tight NV12 (P010)
/// layout FFmpeg hashes (`-pix_fmt nv12`): luma rows of `w` samples, then
/// interleaved chroma rows of `2 * ceil(w / 2)` samples, `ceil(h / 2)` of
/// them. `planes` are the CAPTURE buffer's memory planes in `fmt`'s layout
/// (NV12, NV12M, P010, or YUV420M, whose chroma planes are interleaved
/// here).
pub fn pack_visible(fmt: &PixFormat, planes: &[&[u8]], visible: (u32, u32, u32, u32)) -> Vec<u8> {
    let bps = if fmt.fourcc == PIX_FMT_P010 { 2 } else { 1 };
    let (x, y, w, h) = visible;
    let (x, y, w, h) = (x as usize, y as usize, w as usize, h as usize);
    let bpl = fmt.planes[0].bytesperline as usize;
    if fmt.fourcc == PIX_FMT_YUV420M {
        let cbpl = fmt.planes[1].bytesperline as usize;
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut out = Vec::with_capacity(w * h + 2 * cw * ch);
        for row in 0..h {
            let s = (y + row) * bpl + x;
            out.extend_from_slice(&planes[0][s..s + w]);
        }
        for row in 0..ch {
            let s = (y / 2 + row) * cbpl + x / 2;
            let (u, v) = (&planes[1][s..s + cw], &planes[2][s..s + cw]);
            out.extend(u.iter().zip(v).flat_map(|(a, b)| [*a, *b]));
        }
        return out;
    }
    let (luma, chroma): (&[u8], &[u8]) = if fmt.num_planes >= 2 {
        (planes[0], planes[1])
    } else {
        let split = (bpl * fmt.height as usize).min(planes[0].len());
        planes[0].split_at(split)
    };
    let cbpl = if fmt.num_planes >= 2 {
        fmt.planes[1].bytesperline as usize
    } else {
        bpl
    };
    let cw = w.div_ceil(2) * 2;
    let ch = h.div_ceil(2);
    let mut out = Vec::with_capacity((w * h + cw * ch) * bps);
    for row in 0..h {
        let s = (y + row) * bpl + x * bps;
        out.extend_from_slice(&luma[s..s + w * bps]);
    }
    for row in 0..ch {
        let s = (y / 2 + row) * cbpl + (x / 2) * 2 * bps;
        out.extend_from_slice(&chroma[s..s + cw * bps]);
    }
    out
}

/// Writes FFmpeg's framemd5 format (`ffmpeg -f framemd5`), one line per
/// displayed frame.
#[derive(Debug)]
pub struct FrameMd5<W: Write> {
    out: W,
    frames: u64,
}

impl<W: Write> FrameMd5<W> {
    /// Writes the header for a stream of `w`x`h` frames.
    pub fn new(mut out: W, w: u32, h: u32) -> std::io::Result<Self> {
        writeln!(out, "#format: frame checksums")?;
        writeln!(out, "#version: 2")?;
        writeln!(out, "#hash: MD5")?;
        writeln!(out, "#tb 0: 1/25")?;
        writeln!(out, "#media_type 0: video")?;
        writeln!(out, "#codec_id 0: rawvideo")?;
        writeln!(out, "#dimensions 0: {w}x{h}")?;
        writeln!(out, "#sar 0: 1/1")?;
        writeln!(out, "#stream#, dts,        pts, duration,     size, hash")?;
        Ok(FrameMd5 { out, frames: 0 })
    }

    /// One displayed frame.
    pub fn frame(&mut self, packed: &[u8]) -> std::io::Result<()> {
        let n = self.frames;
        writeln!(
            self.out,
            "0, {n:>10}, {n:>10}, {:>8}, {:>8}, {:x}",
            1,
            packed.len(),
            md5::compute(packed)
        )?;
        self.frames += 1;
        Ok(())
    }

    /// Flushes the writer.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The hash column of a framemd5 text, one entry per frame.
#[cfg(test)]
pub fn framemd5_hashes(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use decoder_core::fmt::{try_decoded, PIX_FMT_NV12, PIX_FMT_YUV420M};

    #[test]
    fn packs_odd_visible_sizes_like_ffmpeg() {
        let f = try_decoded(PIX_FMT_NV12, 5, 3); // 16x16, rows of 128 bytes
        let s = f.planes[0].bytesperline as usize;
        let mut buf = vec![0u8; f.planes[0].sizeimage as usize];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let p = pack_visible(&f, &[&buf], (0, 0, 5, 3));
        // 5x3 luma + 6x2 chroma
        assert_eq!(p.len(), 15 + 12);
        assert_eq!(&p[..5], &buf[..5]);
        assert_eq!(&p[5..10], &buf[s..s + 5]);
        let c = s * 16;
        assert_eq!(&p[15..21], &buf[c..c + 6]);
        assert_eq!(&p[21..27], &buf[c + s..c + s + 6]);
    }

    #[test]
    fn packs_three_planes_as_nv12() {
        let f = try_decoded(PIX_FMT_YUV420M, 5, 3);
        let (s, cs) = (
            f.planes[0].bytesperline as usize,
            f.planes[1].bytesperline as usize,
        );
        let y: Vec<u8> = (0..f.planes[0].sizeimage)
            .map(|i| (i % 251) as u8)
            .collect();
        let u = vec![7u8; f.planes[1].sizeimage as usize];
        let mut v = vec![9u8; f.planes[2].sizeimage as usize];
        v[cs + 2] = 10;
        let p = pack_visible(&f, &[&y, &u, &v], (0, 0, 5, 3));
        assert_eq!(p.len(), 15 + 12);
        assert_eq!(&p[5..10], &y[s..s + 5]);
        assert_eq!(&p[15..21], &[7, 9, 7, 9, 7, 9]);
        assert_eq!(&p[21..27], &[7, 9, 7, 9, 7, 10]);
    }

    #[test]
    fn framemd5_lines_parse_back() {
        let mut v = Vec::new();
        let mut w = FrameMd5::new(&mut v, 2, 2).unwrap();
        w.frame(b"abcdef").unwrap();
        w.finish().unwrap();
        let text = String::from_utf8(v).unwrap();
        assert_eq!(
            framemd5_hashes(&text),
            vec![format!("{:x}", md5::compute(b"abcdef"))]
        );
    }
}
