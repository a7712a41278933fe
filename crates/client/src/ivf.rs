//! IVF container reading, and the frame-event API shared by the VP8, VP9
//! and AV1 parsers.
//!
//! IVF is a 32-byte file header (`DKIF`, version, header size, fourcc,
//! width, height, time base, frame count) followed by frames, each a 12-byte
//! header (payload size, 64-bit presentation timestamp) and the payload.
//!
//! Frame-based codecs do not reorder in the H.264 sense: a frame is shown
//! when it is decoded (`show_frame`), never (a hidden frame such as a VP8/VP9
//! altref), or later through a `show_existing_frame` header that codes no
//! picture and so produces no job. [`FrameEvent`] expresses exactly that,
//! and [`FrameStreamParser`] yields those events in stream order; the order
//! of the shown pictures is the order of the `Decode { shown: true }` and
//! `ShowExisting` events.

use crate::{ClientError, Job, PictureInfo, StreamParser};

/// The IVF file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvfHeader {
    /// Codec fourcc (`VP80`, `VP90`, `AV01`).
    pub fourcc: [u8; 4],
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Time base denominator (frame rate numerator).
    pub timebase_den: u32,
    /// Time base numerator.
    pub timebase_num: u32,
    /// Frame count as written by the muxer (may be 0 or stale).
    pub frame_count: u32,
}

/// A whole IVF file in memory, iterated frame by frame.
#[derive(Debug, Clone)]
pub struct IvfReader {
    data: Vec<u8>,
    pos: usize,
    header: IvfHeader,
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl IvfReader {
    /// Parses the file header of `data`.
    pub fn new(data: Vec<u8>) -> Result<Self, ClientError> {
        if data.len() < 32 || &data[..4] != b"DKIF" {
            return Err(ClientError::Bitstream("not an IVF file".into()));
        }
        let header_len = usize::from(le16(&data[6..8]));
        if header_len < 32 || header_len > data.len() {
            return Err(ClientError::Bitstream(format!(
                "IVF header size {header_len}"
            )));
        }
        let header = IvfHeader {
            fourcc: [data[8], data[9], data[10], data[11]],
            width: le16(&data[12..14]),
            height: le16(&data[14..16]),
            timebase_den: le32(&data[16..20]),
            timebase_num: le32(&data[20..24]),
            frame_count: le32(&data[24..28]),
        };
        Ok(Self {
            data,
            pos: header_len,
            header,
        })
    }

    /// Reads a whole file.
    pub fn open(path: &std::path::Path) -> Result<Self, ClientError> {
        Self::new(std::fs::read(path)?)
    }

    /// The file header.
    pub fn header(&self) -> &IvfHeader {
        &self.header
    }

    /// The next frame: its presentation timestamp and payload. `Ok(None)` at
    /// the end; an error for a truncated frame.
    pub fn next_frame(&mut self) -> Result<Option<(u64, &[u8])>, ClientError> {
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        if rest.len() < 12 {
            return Err(ClientError::Bitstream("truncated IVF frame header".into()));
        }
        let size = le32(&rest[..4]) as usize;
        let pts = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
        if rest.len() - 12 < size {
            return Err(ClientError::Bitstream(format!(
                "IVF frame of {size} bytes, {} left",
                rest.len() - 12
            )));
        }
        let start = self.pos + 12;
        self.pos = start + size;
        Ok(Some((pts, &self.data[start..start + size])))
    }
}

/// What a frame-based stream asks of the decoder and the display next.
#[derive(Debug, Clone)]
pub enum FrameEvent {
    /// Decode this job (one frame). `shown` tells whether the decoded
    /// picture is displayed right away (`show_frame`); a hidden frame is
    /// decoded for reference only, or shown later by a
    /// [`FrameEvent::ShowExisting`].
    Decode {
        /// The decode job.
        job: Box<Job>,
        /// The picture is displayed now.
        shown: bool,
        /// Timestamps of the pictures in the codec's reference slots once
        /// this frame is decoded (VP8: last, golden, altref; VP9 and AV1:
        /// the 8 slots; repeats allowed). No later frame references or
        /// shows any other picture, so a player may recycle the rest.
        slots: Vec<u64>,
    },
    /// Display, again or for the first time, the picture that the job with
    /// this timestamp decoded (`show_existing_frame`). No job is queued: the
    /// picture is taken from that job's CAPTURE buffer.
    ShowExisting {
        /// Timestamp of the job that decoded the picture.
        timestamp: u64,
        /// Geometry of that picture.
        picture: PictureInfo,
    },
}

/// A frame-based codec's parser: VP8, VP9 and AV1.
///
/// Every such parser also implements [`StreamParser`] (the jobs alone, for
/// a decoder that does not care about display).
pub trait FrameStreamParser: StreamParser {
    /// The next event in stream order, `None` at the end of the stream.
    fn next_event(&mut self) -> Result<Option<FrameEvent>, ClientError>;
}

/// [`StreamParser::next_job`] for a [`FrameStreamParser`]: the next
/// decode event's job, skipping show-existing events.
pub(crate) fn next_job_of<P: FrameStreamParser + ?Sized>(
    p: &mut P,
) -> Result<Option<Job>, ClientError> {
    loop {
        match p.next_event()? {
            None => return Ok(None),
            Some(FrameEvent::Decode { job, .. }) => return Ok(Some(*job)),
            Some(FrameEvent::ShowExisting { .. }) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ivf(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = b"DKIF".to_vec();
        v.extend(0u16.to_le_bytes());
        v.extend(32u16.to_le_bytes());
        v.extend(b"VP90");
        v.extend(64u16.to_le_bytes());
        v.extend(48u16.to_le_bytes());
        v.extend(30u32.to_le_bytes());
        v.extend(1u32.to_le_bytes());
        v.extend((frames.len() as u32).to_le_bytes());
        v.extend(0u32.to_le_bytes());
        for (i, f) in frames.iter().enumerate() {
            v.extend((f.len() as u32).to_le_bytes());
            v.extend((i as u64 * 10).to_le_bytes());
            v.extend(*f);
        }
        v
    }

    #[test]
    fn reads_frames() {
        let mut r = IvfReader::new(ivf(&[b"abc", b"", b"xy"])).unwrap();
        assert_eq!(&r.header().fourcc, b"VP90");
        assert_eq!((r.header().width, r.header().height), (64, 48));
        assert_eq!(r.next_frame().unwrap(), Some((0, &b"abc"[..])));
        assert_eq!(r.next_frame().unwrap(), Some((10, &b""[..])));
        assert_eq!(r.next_frame().unwrap(), Some((20, &b"xy"[..])));
        assert_eq!(r.next_frame().unwrap(), None);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(IvfReader::new(b"RIFF".to_vec()).is_err());
        let mut data = ivf(&[b"abcdef"]);
        data.truncate(data.len() - 1);
        let mut r = IvfReader::new(data).unwrap();
        assert!(r.next_frame().is_err());
        let data = ivf(&[b"abc"]);
        let mut r = IvfReader::new(data[..40].to_vec()).unwrap();
        assert!(r.next_frame().is_err());
    }
}
