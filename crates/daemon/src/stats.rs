//! Optional per-job timing of backend decode calls, for benchmarks: how
//! long each job spent inside `Backend::decode`, keyed by the job's
//! timestamp. Off unless [`enable`] was called; recording then costs one
//! mutex push per job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

static ENABLED: AtomicBool = AtomicBool::new(false);
static SAMPLES: Mutex<Vec<(u64, Duration)>> = Mutex::new(Vec::new());

/// Starts recording (process-wide).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// True when recording.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Records one backend call of the job with `timestamp`.
pub fn record_backend(timestamp: u64, took: Duration) {
    if enabled() {
        SAMPLES.lock().push((timestamp, took));
    }
}

/// Takes every sample recorded so far.
pub fn take() -> Vec<(u64, Duration)> {
    std::mem::take(&mut *SAMPLES.lock())
}
