//! Faults in the pages of newly registered CAPTURE buffers on a thread of
//! their own ([`RegisteredBuffer::prefault`]).
//!
//! A buffer is registered when its first job is dispatched, so the pages
//! of a fresh memfd would otherwise be allocated, zeroed and mapped one
//! fault at a time inside the backend's decode call, on the job's path. The
//! prefaulter runs beside the job instead, on the CPUs the job path does
//! not use when the server is placed ([`crate::server::ServerConfig::cpus`]):
//! it is usually ahead of the decoder's writes, and a page it has not
//! reached yet simply faults in as before. Populating never changes a byte,
//! so it is safe while the buffer is written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::buffers::RegisteredBuffer;

/// The prefault thread of one connection. Dropping it stops the thread
/// after the plane it is populating and joins it.
#[derive(Debug)]
pub struct Prefaulter {
    tx: Option<Sender<Arc<RegisteredBuffer>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Prefaulter {
    /// Starts the thread, confined to `cpus` when given.
    pub fn spawn(cpus: Option<Vec<usize>>) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Arc<RegisteredBuffer>>();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dv-prefault".into())
            .spawn(move || {
                if let Some(cpus) = cpus {
                    if let Err(e) = crate::affinity::confine(&cpus) {
                        tracing::debug!("cannot confine the prefaulter to CPUs {cpus:?}: {e}");
                    }
                }
                while let Ok(b) = rx.recv() {
                    if st.load(Ordering::Relaxed) {
                        break;
                    }
                    b.prefault();
                }
            })?;
        Ok(Prefaulter {
            tx: Some(tx),
            stop,
            thread: Some(thread),
        })
    }

    /// Queues `b` for populating if it [wants](RegisteredBuffer::wants_prefault) it.
    pub fn submit(&self, b: &Arc<RegisteredBuffer>) {
        if b.wants_prefault() {
            if let Some(tx) = &self.tx {
                // A thread that is gone only means no prefaulting.
                let _ = tx.send(b.clone());
            }
        }
    }
}

impl Drop for Prefaulter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the prefault thread panicked");
            }
        }
    }
}
