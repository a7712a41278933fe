//! What `daedalus decode` needs from a decoder: the embedded stack
//! ([`crate::embedded::Embedded`]) or a real V4L2 stateless device.

use std::time::{Duration, Instant};

use anyhow::Result;
use decoder_core::ctrl::ControlValues;
use decoder_core::fmt::PixFormat;

/// A picture dequeued from CAPTURE.
#[derive(Debug, Clone, Copy)]
pub struct Picture {
    /// CAPTURE buffer index.
    pub index: u32,
    /// Timestamp of the job that produced it.
    pub timestamp: u64,
    /// The job failed (`V4L2_BUF_FLAG_ERROR`).
    pub error: bool,
}

/// A V4L2 stateless decoder as the decode loop drives it: formats are set
/// and both queues stream once constructed; every CAPTURE buffer starts
/// dequeued (owned by the caller).
pub trait Frontend {
    /// The negotiated CAPTURE format.
    fn capture_format(&self) -> PixFormat;
    /// CAPTURE buffers allocated.
    fn capture_count(&self) -> u32;
    /// The memory planes of a dequeued CAPTURE buffer.
    fn capture_planes(&self, index: u32) -> Vec<&[u8]>;
    /// QBUF of a CAPTURE buffer.
    fn queue_capture(&mut self, index: u32) -> Result<()>;
    /// True when an OUTPUT buffer is free for [`Frontend::submit`].
    fn can_submit(&self) -> bool;
    /// One job through a media request: controls into the request, the
    /// bitstream into a free OUTPUT buffer (`hold`: more slices follow).
    fn submit(
        &mut self,
        controls: &ControlValues,
        bitstream: &[u8],
        timestamp: u64,
        hold: bool,
    ) -> Result<()>;
    /// `V4L2_DEC_CMD_FLUSH`.
    fn flush(&mut self) -> Result<()>;
    /// OUTPUT buffers still owned by the decoder.
    fn outputs_in_flight(&self) -> usize;
    /// Waits up to `timeout` for completions; returns CAPTURE buffers
    /// dequeued meanwhile and recycles finished OUTPUT buffers.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Picture>>;
    /// Per-job round trips recorded so far, when timing is on.
    fn take_job_timings(&mut self) -> Vec<JobTiming> {
        Vec::new()
    }
}

/// One job's round trip through the daemon.
#[derive(Debug, Clone, Copy)]
pub struct JobTiming {
    /// The job's timestamp.
    pub timestamp: u64,
    /// When the job's datagram left for the daemon.
    pub dispatched: Instant,
    /// When its result arrived.
    pub done: Instant,
}
