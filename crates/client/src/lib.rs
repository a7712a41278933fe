//! Stream-to-job client library: turns a coded stream into V4L2 stateless
//! decode jobs, the way GStreamer's `v4l2codecs` elements do.
//!
//! * A [`StreamParser`] per codec reads the stream, fills the codec's V4L2
//!   control structs (`decoder_core::ctrl`), tracks the decoded picture
//!   buffer and emits one [`Job`] per OUTPUT buffer (a slice, or a whole
//!   picture).
//! * A [`DisplayQueue`] takes the decoded pictures in decode order and
//!   yields them in display order, as a player's decoder would output them.
//!
//! Codecs: H.264 ([`h264::H264Parser`]). HEVC, VP8, VP9 and AV1 plug in
//! behind the same [`StreamParser`] / [`Job`] API.

use std::collections::BTreeMap;

use decoder_core::ctrl::{Codec, ControlValues};

mod annexb;
pub mod av1;
pub mod demux;
pub mod h264;
pub mod hevc;
pub mod ivf;
pub mod vp8;
pub mod vp9;

pub use ivf::{FrameEvent, FrameStreamParser};

/// Why parsing a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The bitstream cannot be parsed.
    #[error("bitstream: {0}")]
    Bitstream(String),
    /// The stream uses a feature this parser does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Reading the input failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Job flags, for the OUTPUT buffer of the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobFlags {
    /// More jobs of the same picture follow: queue this OUTPUT buffer with
    /// `V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF`.
    pub more_slices: bool,
    /// This job continues the picture of the previous job (same timestamp,
    /// same CAPTURE buffer).
    pub continues_picture: bool,
}

/// Where a picture goes in display order: pictures sort by `epoch` (bumped
/// at each point where the codec restarts its order count: H.264 IDR and
/// MMCO 5), then by `order` (H.264 picture order count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DisplayKey {
    /// Order-count epoch.
    pub epoch: u64,
    /// Order within the epoch.
    pub order: i64,
}

/// What the display side needs to know about the picture a job completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureInfo {
    /// Display position.
    pub key: DisplayKey,
    /// How many pictures may precede this one in decode order and follow it
    /// in display order (H.264 `max_num_reorder_frames`).
    pub max_reorder: usize,
    /// Visible rectangle inside the decoded (coded-size) picture:
    /// left, top, width, height.
    pub visible: (u32, u32, u32, u32),
    /// Coded (CAPTURE) size: width, height.
    pub coded: (u32, u32),
    /// Luma bit depth.
    pub bit_depth: u8,
}

/// One decode job: the content of one OUTPUT buffer and its request.
#[derive(Debug, Clone)]
pub struct Job {
    /// Coded format.
    pub codec: Codec,
    /// Control values to set in the job's request. They are complete (every
    /// control the codec needs for this job), so applying them on the
    /// context's current values gives the effective values.
    pub controls: ControlValues,
    /// OUTPUT buffer payload.
    pub bitstream: Vec<u8>,
    /// Timestamp (ns) of the OUTPUT buffer; the decoded picture's CAPTURE
    /// buffer gets it, and later jobs reference the picture by it.
    pub timestamp: u64,
    /// Buffer flags.
    pub flags: JobFlags,
    /// The picture this job (or slice) belongs to; it is complete once the
    /// job without [`JobFlags::more_slices`] is decoded.
    pub picture: PictureInfo,
}

/// A codec's stream parser.
pub trait StreamParser {
    /// The next job in decode order, `None` at the end of the stream.
    fn next_job(&mut self) -> Result<Option<Job>, ClientError>;
}

/// Reorders decoded pictures into display order (the H.264 "bumping"
/// output process): a picture is output once more than `max_reorder`
/// pictures wait, once a later epoch starts, or at the end of the stream.
#[derive(Debug)]
pub struct DisplayQueue<T> {
    waiting: BTreeMap<DisplayKey, (u64, T)>,
    max_reorder: usize,
    last_epoch: Option<u64>,
}

impl<T> Default for DisplayQueue<T> {
    fn default() -> Self {
        Self {
            waiting: BTreeMap::new(),
            max_reorder: 0,
            last_epoch: None,
        }
    }
}

impl<T> DisplayQueue<T> {
    /// Empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a decoded picture (its job's timestamp, its info and a payload,
    /// e.g. the CAPTURE buffer) and returns the pictures that are now due,
    /// in display order.
    pub fn push(&mut self, timestamp: u64, info: &PictureInfo, payload: T) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        if self.last_epoch.is_some_and(|e| e != info.key.epoch) {
            // A new order-count epoch: everything before it is due first.
            out.extend(self.drain());
        }
        self.last_epoch = Some(info.key.epoch);
        self.max_reorder = info.max_reorder;
        self.waiting.insert(info.key, (timestamp, payload));
        while self.waiting.len() > self.max_reorder {
            if let Some((_, v)) = self.waiting.pop_first() {
                out.push(v);
            }
        }
        out
    }

    /// Outputs every waiting picture in display order (end of stream).
    pub fn drain(&mut self) -> Vec<(u64, T)> {
        std::mem::take(&mut self.waiting).into_values().collect()
    }

    /// Pictures waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when no picture waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(epoch: u64, order: i64, max_reorder: usize) -> PictureInfo {
        PictureInfo {
            key: DisplayKey { epoch, order },
            max_reorder,
            visible: (0, 0, 16, 16),
            coded: (16, 16),
            bit_depth: 8,
        }
    }

    #[test]
    fn display_queue_reorders() {
        // Decode order I0 P6 B2 B4 | IDR I0 P2 with reorder depth 2.
        let mut q = DisplayQueue::new();
        let mut shown = Vec::new();
        for (ts, e, o) in [
            (1, 0, 0),
            (2, 0, 6),
            (3, 0, 2),
            (4, 0, 4),
            (5, 1, 0),
            (6, 1, 2),
        ] {
            shown.extend(q.push(ts, &info(e, o, 2), ()).into_iter().map(|(t, _)| t));
        }
        shown.extend(q.drain().into_iter().map(|(t, _)| t));
        assert_eq!(shown, vec![1, 3, 4, 2, 5, 6]);
    }

    #[test]
    fn zero_reorder_outputs_immediately() {
        let mut q = DisplayQueue::new();
        assert_eq!(q.push(7, &info(0, 0, 0), 'a'), vec![(7, 'a')]);
        assert!(q.is_empty());
    }
}
