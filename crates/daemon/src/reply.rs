//! Answers to the frontend.
//!
//! Every decode job is answered exactly once. [`Reply`] is that obligation
//! as a value: [`Reply::done`] and [`Reply::error`] consume it, and dropping
//! it unanswered (a worker that panicked, a queue torn down) sends an ERROR
//! result, so no path can forget a job or answer it twice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use decoder_core::proto::{self, Message, DV_STATUS_DONE, DV_STATUS_ERROR};
use rustix::io::Errno;

use crate::transport::{Shutdown, Transport};

/// The sending half of a connection, shared by the reader and the workers.
pub(crate) struct Outbox {
    transport: Arc<dyn Transport>,
    shutdown: Shutdown,
    seq: AtomicU32,
}

impl Outbox {
    pub(crate) fn new(transport: Arc<dyn Transport>, shutdown: Shutdown) -> Self {
        Outbox {
            transport,
            shutdown,
            seq: AtomicU32::new(0),
        }
    }

    /// Sends a message; a failure (connection gone, or shutdown while the
    /// frontend was not reading) is logged only: the reader notices the end
    /// of the connection on its side.
    pub(crate) fn send(&self, m: &Message<'_>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let bytes = m.to_bytes(seq);
        if let Err(e) = self.transport.send_until(&bytes, &[], &self.shutdown) {
            tracing::debug!(kind = ?m.kind(), "send failed: {e}");
        }
    }

    /// Reports a context-level condition.
    pub(crate) fn ctx_status(&self, ctx_id: u32, errno: i32) {
        self.send(&Message::CtxStatus(proto::CtxStatus {
            ctx_id,
            error: errno.unsigned_abs(),
        }));
    }
}

/// The pending answer to one decode job.
#[must_use = "a job must be answered; dropping the reply answers ERROR"]
pub struct Reply {
    out: Arc<Outbox>,
    ctx_id: u32,
    cookie: u64,
    armed: bool,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("ctx_id", &self.ctx_id)
            .field("cookie", &self.cookie)
            .finish()
    }
}

impl Reply {
    pub(crate) fn new(out: Arc<Outbox>, ctx_id: u32, cookie: u64) -> Self {
        Reply {
            out,
            ctx_id,
            cookie,
            armed: true,
        }
    }

    /// The job's context.
    pub fn ctx_id(&self) -> u32 {
        self.ctx_id
    }

    /// The job's cookie.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Answers DONE with the CAPTURE planes' `bytesused` and `DV_RESULT_*`
    /// flags.
    pub fn done(mut self, bytesused: [u32; 4], flags: u32) {
        self.send(DV_STATUS_DONE, 0, bytesused, flags);
    }

    /// Answers ERROR with a positive errno.
    pub fn error(mut self, errno: i32) {
        let errno = match errno.unsigned_abs() {
            0 => Errno::IO.raw_os_error().unsigned_abs(),
            e => e,
        };
        self.send(DV_STATUS_ERROR, errno, [0; 4], 0);
    }

    fn send(&mut self, status: u32, error: u32, bytesused: [u32; 4], flags: u32) {
        self.armed = false;
        tracing::debug!(
            ctx = self.ctx_id,
            cookie = self.cookie,
            status,
            error,
            "result"
        );
        self.out.send(&Message::Result(proto::JobResult {
            ctx_id: self.ctx_id,
            status,
            cookie: self.cookie,
            error,
            flags: flags & proto::DV_RESULT_ALL,
            bytesused,
        }));
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.armed {
            tracing::warn!(
                ctx = self.ctx_id,
                cookie = self.cookie,
                "job dropped unanswered"
            );
            self.send(
                DV_STATUS_ERROR,
                Errno::IO.raw_os_error().unsigned_abs(),
                [0; 4],
                0,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::SeqPacket;
    use decoder_core::proto::DV_MAX_MSG_SIZE;

    fn results(peer: &SeqPacket) -> Vec<proto::JobResult> {
        let mut buf = vec![0u8; DV_MAX_MSG_SIZE as usize];
        let mut v = Vec::new();
        // Drain what is queued.
        while let Ok(r) = peer.try_recv(&mut buf) {
            match proto::decode(&buf[..r]).unwrap() {
                Message::Result(r) => v.push(r),
                m => panic!("{m:?}"),
            }
        }
        v
    }

    #[test]
    fn every_reply_answers_exactly_once() {
        let (a, b) = SeqPacket::pair().unwrap();
        let out = Arc::new(Outbox::new(Arc::new(a), Shutdown::new().unwrap()));
        Reply::new(out.clone(), 1, 10).done([5, 6, 0, 0], proto::DV_RESULT_KEYFRAME);
        Reply::new(out.clone(), 1, 11).error(-22);
        Reply::new(out.clone(), 1, 12).error(0);
        drop(Reply::new(out.clone(), 2, 13));
        let r = results(&b);
        let got: Vec<_> = r
            .iter()
            .map(|r| (r.ctx_id, r.cookie, r.status, r.error))
            .collect();
        assert_eq!(
            got,
            [
                (1, 10, DV_STATUS_DONE, 0),
                (1, 11, DV_STATUS_ERROR, 22),
                (1, 12, DV_STATUS_ERROR, 5),
                (2, 13, DV_STATUS_ERROR, 5),
            ]
        );
        assert_eq!(r[0].bytesused, [5, 6, 0, 0]);
        assert_eq!(r[0].flags, proto::DV_RESULT_KEYFRAME);
    }
}
