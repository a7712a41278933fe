//! One decode worker per context.
//!
//! A context's jobs run in arrival order on its own thread, so a slow or
//! stuck backend only delays its own context. Overall decoding is bounded by
//! a [`Semaphore`] shared by every worker of a server (one permit per core
//! by default): a worker holds a permit only while a job decodes.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use decoder_core::ctrl::{Codec, ControlValues};
use parking_lot::{Condvar, Mutex};
use rustix::io::Errno;

use crate::backend::{Backend, CaptureRetain, DecodeError, DecodeOutcome, JobFlags, JobInput};
use crate::buffers::{CaptureLayout, RegisteredBuffer};
use crate::reply::{Outbox, Reply};

/// Counting semaphore bounding concurrent decodes.
#[derive(Debug)]
pub struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Semaphore {
    /// A semaphore with `n` permits (at least one).
    pub fn new(n: usize) -> Self {
        Semaphore {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }

    /// Waits for a permit.
    pub fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock();
        while *free == 0 {
            self.cv.wait(&mut free);
        }
        *free -= 1;
        Permit(self)
    }
}

/// A held permit, returned when dropped.
#[derive(Debug)]
pub struct Permit<'a>(&'a Semaphore);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.cv.notify_one();
    }
}

/// errno reported for a backend error.
pub fn decode_errno(e: &DecodeError) -> i32 {
    match e {
        DecodeError::Unsupported(_) => Errno::OPNOTSUPP,
        DecodeError::InvalidControls(_) | DecodeError::FormatMismatch(_) => Errno::INVAL,
        DecodeError::Corrupt(_) => Errno::BADMSG,
        DecodeError::MissingReference(_) => Errno::NODATA,
        DecodeError::WaitingForKeyframe => Errno::AGAIN,
        DecodeError::CaptureTooSmall => Errno::NOSPC,
        DecodeError::Internal(_) => Errno::IO,
    }
    .raw_os_error()
}

/// A job waiting for, or running on, its context's worker.
pub(crate) struct PendingJob {
    pub reply: Reply,
    pub cancelled: Arc<AtomicBool>,
    /// What to decode, or the errno of a job refused when it arrived (it
    /// is answered in its turn, so a context's results keep job order).
    pub work: Result<JobWork, i32>,
}

/// The resolved content of a job.
pub(crate) struct JobWork {
    pub timestamp: u64,
    pub bytesused: u32,
    pub flags: JobFlags,
    pub controls: ControlValues,
    pub references: Vec<u64>,
    pub output: Arc<RegisteredBuffer>,
    pub capture: Arc<RegisteredBuffer>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<PendingJob>,
    /// Cookie and cancel flag of the job the worker took.
    running: Option<(u64, Arc<AtomicBool>)>,
    closing: bool,
}

/// The queue between a context's reader side and its worker.
pub(crate) struct CtxQueue {
    q: Mutex<Queue>,
    cv: Condvar,
    /// Set (under `q`) whenever a job is pushed or the queue closes; lets
    /// an idle worker watch for work without the lock.
    stirred: AtomicBool,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelOutcome {
    /// Removed from the queue and answered ECANCELED.
    Dequeued,
    /// Running: it will be answered when it ends (or ECANCELED if it had
    /// not started decoding).
    Running,
    /// No such job (already answered).
    Unknown,
}

impl CtxQueue {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(CtxQueue {
            q: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            stirred: AtomicBool::new(false),
        })
    }

    /// Appends a job; after `close` the job is answered ECANCELED at once.
    pub(crate) fn push(&self, job: PendingJob) {
        let mut q = self.q.lock();
        if q.closing {
            drop(q);
            job.reply.error(Errno::CANCELED.raw_os_error());
            return;
        }
        q.jobs.push_back(job);
        self.stirred.store(true, Ordering::Release);
        drop(q);
        self.cv.notify_one();
    }

    pub(crate) fn cancel(&self, cookie: u64) -> CancelOutcome {
        let mut q = self.q.lock();
        if let Some(pos) = q.jobs.iter().position(|j| j.reply.cookie() == cookie) {
            let job = q.jobs.remove(pos);
            drop(q);
            if let Some(job) = job {
                job.reply.error(Errno::CANCELED.raw_os_error());
            }
            return CancelOutcome::Dequeued;
        }
        match &q.running {
            Some((c, flag)) if *c == cookie => {
                flag.store(true, Ordering::SeqCst);
                CancelOutcome::Running
            }
            _ => CancelOutcome::Unknown,
        }
    }

    /// Stops the worker after its current job; queued jobs are answered
    /// ECANCELED.
    pub(crate) fn close(&self) {
        let drained: Vec<PendingJob> = {
            let mut q = self.q.lock();
            q.closing = true;
            self.stirred.store(true, Ordering::Release);
            if let Some((_, flag)) = &q.running {
                flag.store(true, Ordering::SeqCst);
            }
            q.jobs.drain(..).collect()
        };
        self.cv.notify_all();
        for j in drained {
            j.reply.error(Errno::CANCELED.raw_os_error());
        }
    }

    /// The next job, or `None` once closed. With the queue empty, the
    /// worker first watches it for `idle_watch` (yielding the CPU: whoever
    /// brings the job may be waiting for it), then sleeps.
    fn next(&self, idle_watch: std::time::Duration) -> Option<PendingJob> {
        let mut q = self.q.lock();
        q.running = None;
        let mut watched = idle_watch.is_zero();
        loop {
            if q.closing {
                return None;
            }
            if let Some(j) = q.jobs.pop_front() {
                q.running = Some((j.reply.cookie(), j.cancelled.clone()));
                return Some(j);
            }
            self.stirred.store(false, Ordering::Relaxed);
            if watched {
                self.cv.wait(&mut q);
            } else {
                watched = true;
                drop(q);
                let until = std::time::Instant::now() + idle_watch;
                while !self.stirred.load(Ordering::Acquire) && std::time::Instant::now() < until {
                    std::thread::yield_now();
                }
                q = self.q.lock();
            }
        }
    }
}

/// How the worker creates its backend.
pub type BackendFactory = Arc<dyn Fn(Codec) -> Result<Box<dyn Backend>, DecodeError> + Send + Sync>;

pub(crate) struct WorkerArgs {
    pub ctx_id: u32,
    pub codec: Codec,
    pub layout: CaptureLayout,
    pub queue: Arc<CtxQueue>,
    pub factory: BackendFactory,
    pub permits: Arc<Semaphore>,
    pub out: Arc<Outbox>,
    pub idle_watch: std::time::Duration,
    pub cpus: Option<Vec<usize>>,
}

/// The worker thread's body.
pub(crate) fn run(a: WorkerArgs) {
    let span = tracing::info_span!("ctx", ctx = a.ctx_id, codec = ?a.codec);
    let _e = span.enter();
    if let Some(cpus) = &a.cpus {
        if let Err(e) = crate::affinity::confine(cpus) {
            tracing::warn!("cannot confine the worker to CPUs {cpus:?}: {e}");
        }
    }
    let mut backend = match catch_unwind(AssertUnwindSafe(|| (a.factory)(a.codec))) {
        Ok(Ok(b)) => {
            tracing::debug!(backend = b.name(), "session opened");
            Ok(b)
        }
        Ok(Err(e)) => {
            tracing::warn!("no backend: {e}");
            let errno = match e {
                DecodeError::Unsupported(_) => Errno::OPNOTSUPP.raw_os_error(),
                e => decode_errno(&e),
            };
            a.out.ctx_status(a.ctx_id, errno);
            Err(errno)
        }
        Err(_) => {
            tracing::error!("backend constructor panicked");
            a.out.ctx_status(a.ctx_id, Errno::IO.raw_os_error());
            Err(Errno::IO.raw_os_error())
        }
    };
    while let Some(job) = a.queue.next(a.idle_watch) {
        let work = match &job.work {
            Ok(w) => w,
            Err(errno) => {
                job.reply.error(*errno);
                continue;
            }
        };
        let b = match &mut backend {
            Ok(b) => b,
            Err(errno) => {
                job.reply.error(*errno);
                continue;
            }
        };
        let permit = a.permits.acquire();
        if job.cancelled.load(Ordering::SeqCst) {
            job.reply.error(Errno::CANCELED.raw_os_error());
            continue;
        }
        let cookie = job.reply.cookie();
        let span = tracing::info_span!("job", ctx = a.ctx_id, cookie);
        let _j = span.enter();
        let r = catch_unwind(AssertUnwindSafe(|| {
            decode_one(b.as_mut(), a.codec, &a.layout, work)
        }));
        drop(permit);
        match r {
            // The backend API does not report key frames or concealment
            // yet, so no DV_RESULT_* flag is set.
            Ok(Ok(DecodeOutcome::Decoded)) => {
                job.reply.done(a.layout.bytesused(&work.capture), 0);
            }
            Ok(Ok(DecodeOutcome::Held)) => job.reply.done([0; 4], 0),
            Ok(Err(errno)) => job.reply.error(errno),
            Err(_) => {
                // The backend's state is unknown after a panic: retire it.
                tracing::error!("backend panicked; context disabled");
                job.reply.error(Errno::IO.raw_os_error());
                a.out.ctx_status(a.ctx_id, Errno::IO.raw_os_error());
                backend = Err(Errno::IO.raw_os_error());
            }
        }
    }
    tracing::debug!("worker done");
}

fn decode_one(
    backend: &mut dyn Backend,
    codec: Codec,
    layout: &CaptureLayout,
    job: &JobWork,
) -> Result<DecodeOutcome, i32> {
    let input = job.output.read().map_err(|e| e.errno())?;
    let bitstream = input.bitstream(job.bytesused).map_err(|e| {
        tracing::warn!("{e}");
        e.errno()
    })?;
    let mut cap = job.capture.write().map_err(|e| e.errno())?;
    let mut target = layout.target(cap.planes_mut()).map_err(|e| {
        tracing::warn!("{e}");
        e.errno()
    })?;
    let input = JobInput {
        codec,
        controls: &job.controls,
        bitstream,
        timestamp: job.timestamp,
        flags: job.flags,
        references: &job.references,
    };
    // A CAPTURE buffer stays mapped as long as its `RegisteredBuffer`
    // lives: the backend may decode into it and keep it as a reference
    // picture, if later reads need no sync bracketing (memfd, coherent
    // dmabuf exporter); other dmabufs are not offered.
    let retain = job.capture.retainable().then(|| {
        let keep: Arc<dyn Send + Sync> = job.capture.clone();
        // SAFETY: `target`'s planes are slices of the mappings
        // `job.capture` owns, which are unmapped only when the buffer is
        // dropped, i.e. after the last clone of `keep`; `retainable` means
        // the memory needs no access bracketing.
        unsafe { CaptureRetain::new(keep, &target) }
    });
    let started = crate::stats::enabled().then(std::time::Instant::now);
    let result = backend.decode_retained(&input, &mut target, retain.as_ref());
    if let Some(t) = started {
        crate::stats::record_backend(job.timestamp, t.elapsed());
    }
    match result {
        Ok(o) => Ok(o),
        Err(e) => {
            tracing::info!("decode failed: {e}");
            Err(decode_errno(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn job(out: &Arc<Outbox>, cookie: u64) -> PendingJob {
        PendingJob {
            reply: Reply::new(out.clone(), 1, cookie),
            cancelled: Arc::new(AtomicBool::new(false)),
            work: Err(Errno::IO.raw_os_error()),
        }
    }

    #[test]
    fn an_idle_worker_gets_jobs_and_the_close_whether_watching_or_asleep() {
        let (a, _b) = crate::transport::SeqPacket::pair().unwrap();
        let out = Arc::new(Outbox::new(
            Arc::new(a),
            crate::transport::Shutdown::new().unwrap(),
        ));
        let ms = std::time::Duration::from_millis;
        // Pushed during the watch, after it (asleep), and a close in each.
        for (watch, delay) in [(ms(200), ms(20)), (ms(1), ms(50)), (ms(0), ms(20))] {
            let q = CtxQueue::new();
            let q2 = q.clone();
            let t = std::thread::spawn(move || {
                q2.next(watch).map(|j| {
                    let c = j.reply.cookie();
                    j.reply.error(Errno::IO.raw_os_error());
                    c
                })
            });
            std::thread::sleep(delay);
            q.push(job(&out, 7));
            assert_eq!(t.join().unwrap(), Some(7), "watch {watch:?}");
            let q2 = q.clone();
            let t = std::thread::spawn(move || q2.next(watch).is_none());
            std::thread::sleep(delay);
            q.close();
            assert!(t.join().unwrap(), "watch {watch:?}: closed");
        }
    }

    #[test]
    fn semaphore_bounds_concurrency() {
        let sem = Arc::new(Semaphore::new(3));
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (sem, running, max) = (sem.clone(), running.clone(), max.clone());
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let _p = sem.acquire();
                        let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 3);
        assert_eq!(*sem.free.lock(), 3);
        assert_eq!(*Semaphore::new(0).free.lock(), 1);
    }

    #[test]
    fn errnos_of_decode_errors() {
        assert_eq!(decode_errno(&DecodeError::Corrupt(String::new())), 74);
        assert_eq!(decode_errno(&DecodeError::MissingReference(1)), 61);
        assert_eq!(decode_errno(&DecodeError::CaptureTooSmall), 28);
        assert_eq!(decode_errno(&DecodeError::Unsupported(String::new())), 95);
    }
}
