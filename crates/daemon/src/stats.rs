//! Optional per-job timing of backend decode calls, for benchmarks: how
//! long each job spent inside `Backend::decode` and when that call ended,
//! keyed by the job's timestamp. Off unless [`enable`] was called;
//! recording then costs one mutex push per job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

static ENABLED: AtomicBool = AtomicBool::new(false);
static SAMPLES: Mutex<Vec<Sample>> = Mutex::new(Vec::new());

/// One backend call.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The job's timestamp.
    pub timestamp: u64,
    /// Time inside the backend's decode call.
    pub took: Duration,
    /// When the call returned.
    pub end: Instant,
}

impl Sample {
    /// When the call started.
    pub fn start(&self) -> Instant {
        self.end - self.took
    }
}

/// Starts recording (process-wide).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// True when recording.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Records one backend call of the job with `timestamp` that just returned
/// after `took`.
pub fn record_backend(timestamp: u64, took: Duration) {
    if enabled() {
        SAMPLES.lock().push(Sample {
            timestamp,
            took,
            end: Instant::now(),
        });
    }
}

/// Takes every sample recorded so far.
pub fn take_samples() -> Vec<Sample> {
    std::mem::take(&mut *SAMPLES.lock())
}

/// The gaps between one backend call's end and the next call's start, in
/// the order the calls ended: with jobs queued ahead, the per-job cost of
/// the whole path outside the backend (result, completion, dispatch of the
/// next job). Samples must come from one decoding context.
pub fn gaps(samples: &[Sample]) -> Vec<Duration> {
    let mut s = samples.to_vec();
    s.sort_by_key(|s| s.end);
    s.windows(2)
        .map(|w| w[1].start().saturating_duration_since(w[0].end))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_between_consecutive_calls() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mk = |ts, start: u64, took: u64| Sample {
            timestamp: ts,
            took: ms(took),
            end: t0 + ms(start + took),
        };
        // Out of order on purpose: gaps follow the end times.
        let s = [mk(2, 12, 5), mk(1, 0, 10), mk(3, 20, 1)];
        assert_eq!(gaps(&s), [ms(2), ms(3)]);
        assert!(gaps(&s[..1]).is_empty());
    }
}
