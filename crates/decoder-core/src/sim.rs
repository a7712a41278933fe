//! A deterministic, in-memory test daemon driving a [`Device`].
//!
//! Used by the property tests and the scenario runner: it speaks the real
//! protocol (every datagram goes through [`crate::proto`]), checks that the
//! device registers contexts and buffers before naming them in a job, and
//! answers jobs according to its [`DaemonMode`]. It owns a fake clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::proto::{self, Message};
use crate::state::{Device, Nanos, Queue};

/// How the test daemon behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonMode {
    /// Answers every job DONE as soon as it is pumped.
    Running,
    /// Answers every job ERROR.
    Failing,
    /// Stopped (SIGSTOP): receives but never answers until resumed.
    Stopped,
}

/// A job the test daemon received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenJob {
    /// The job.
    pub job: proto::DecodeJob,
    /// Generation it arrived on.
    pub gen: u64,
    /// A cancel for it arrived.
    pub cancelled: bool,
}

/// The test daemon.
#[derive(Debug)]
pub struct TestDaemon {
    /// Behaviour.
    pub mode: DaemonMode,
    /// Connected generation, if any.
    pub gen: Option<u64>,
    /// Jobs received and not answered, oldest first.
    pub pending: VecDeque<SeenJob>,
    /// Results already sent (for duplicate / late replays).
    pub answered: Vec<(u64, proto::JobResult)>,
    /// Contexts opened on the current connection.
    open: BTreeSet<u32>,
    /// Buffers registered on the current connection.
    registered: BTreeMap<(u32, u32, u32), ()>,
    /// Protocol-order violations seen (job naming unregistered things).
    pub violations: Vec<String>,
}

impl Default for TestDaemon {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDaemon {
    /// A disconnected daemon.
    pub fn new() -> Self {
        TestDaemon {
            mode: DaemonMode::Running,
            gen: None,
            pending: VecDeque::new(),
            answered: Vec::new(),
            open: BTreeSet::new(),
            registered: BTreeMap::new(),
            violations: Vec::new(),
        }
    }
}

/// A device, its test daemon and a clock.
#[derive(Debug)]
pub struct Sim {
    /// The device under test.
    pub dev: Device,
    /// The daemon.
    pub daemon: TestDaemon,
    /// Current time.
    pub now: Nanos,
}

impl Sim {
    /// A simulation around a device.
    pub fn new(dev: Device) -> Self {
        Sim {
            dev,
            daemon: TestDaemon::new(),
            now: 1_000_000_000,
        }
    }

    /// Connects a daemon (a previous one is dropped) and completes the
    /// handshake unless the daemon is stopped.
    pub fn daemon_start(&mut self) {
        self.daemon_kill();
        let gen = self.dev.daemon_attach(self.now);
        self.daemon.gen = Some(gen);
        if self.daemon.mode == DaemonMode::Stopped {
            self.daemon.mode = DaemonMode::Running;
        }
        self.pump();
    }

    /// The daemon process dies: the device sees the connection close.
    pub fn daemon_kill(&mut self) {
        if self.daemon.gen.take().is_some() {
            self.dev.daemon_detach(self.now);
        }
        self.daemon.pending.clear();
        self.daemon.open.clear();
        self.daemon.registered.clear();
    }

    /// The daemon sends raw bytes (garbage or a crafted message).
    pub fn daemon_send_raw(&mut self, bytes: &[u8]) -> bool {
        if self.daemon.gen.is_none() {
            return false;
        }
        let r = self.dev.daemon_receive(bytes, self.now);
        if r.is_err() {
            // The device detached; the daemon's connection is closed.
            self.daemon.gen = None;
            self.daemon.pending.clear();
            self.daemon.open.clear();
            self.daemon.registered.clear();
        }
        r.is_ok()
    }

    /// Answers the oldest pending job (`ok` picks DONE or ERROR). Returns
    /// false when there was none.
    pub fn daemon_answer_one(&mut self, ok: bool) -> bool {
        self.pump_rx();
        let Some(j) = self.daemon.pending.pop_front() else {
            return false;
        };
        let r = proto::JobResult {
            ctx_id: j.job.ctx_id,
            status: if ok {
                proto::DV_STATUS_DONE
            } else {
                proto::DV_STATUS_ERROR
            },
            cookie: j.job.cookie,
            error: if ok { 0 } else { 5 },
            flags: 0,
            bytesused: [0; 4],
        };
        self.daemon.answered.push((j.gen, r));
        let bytes = Message::Result(r).to_bytes(0);
        self.daemon_send_raw(&bytes);
        self.pump();
        true
    }

    /// Moves device datagrams to the daemon and, if it runs, answers them.
    pub fn pump(&mut self) {
        loop {
            self.pump_rx();
            let ok = match self.daemon.mode {
                DaemonMode::Running => true,
                DaemonMode::Failing => false,
                DaemonMode::Stopped => return,
            };
            if self.daemon.pending.is_empty() {
                return;
            }
            self.daemon_answer_one(ok);
        }
    }

    /// Receives every datagram the device queued, answering the hello.
    pub fn pump_rx(&mut self) {
        while let Some(out) = self.dev.poll_transmit() {
            if self.daemon.gen != Some(out.gen) {
                continue; // addressed to a connection that is gone
            }
            let msg = proto::decode(&out.bytes).expect("device sent a malformed message");
            let d = &mut self.daemon;
            match msg {
                Message::Hello(h) => {
                    if d.mode == DaemonMode::Stopped {
                        continue;
                    }
                    let reply = proto::Hello {
                        version_major: proto::DV_VERSION_MAJOR,
                        version_minor: proto::DV_VERSION_MINOR,
                        max_inflight: 4,
                        features: h.features,
                        max_msg_size: proto::DV_MAX_MSG_SIZE,
                        reserved: 0,
                    };
                    let bytes = Message::HelloReply(reply).to_bytes(0);
                    self.dev
                        .daemon_receive(&bytes, self.now)
                        .expect("hello reply accepted");
                }
                Message::CtxOpen(o) => {
                    d.open.insert(o.ctx_id);
                }
                Message::CtxClose(c) => {
                    d.open.remove(&c.ctx_id);
                    d.registered.retain(|k, _| k.0 != c.ctx_id);
                }
                Message::BufRegister(b) => {
                    if out.fds.is_none() {
                        d.violations.push("buffer registered without fds".into());
                    }
                    d.registered.insert((b.ctx_id, b.queue, b.index), ());
                }
                Message::BufUnregister(b) => {
                    d.registered.remove(&(b.ctx_id, b.queue, b.index));
                }
                Message::Decode(job, _ctrls) => {
                    if !d.open.contains(&job.ctx_id) {
                        d.violations
                            .push(format!("job {} for unopened context", job.cookie));
                    }
                    for (q, i) in [
                        (proto::DV_QUEUE_OUTPUT, job.output_index),
                        (proto::DV_QUEUE_CAPTURE, job.capture_index),
                    ] {
                        if !d.registered.contains_key(&(job.ctx_id, q, i)) {
                            d.violations
                                .push(format!("job {} names unregistered buffer", job.cookie));
                        }
                    }
                    d.pending.push_back(SeenJob {
                        job,
                        gen: out.gen,
                        cancelled: false,
                    });
                }
                Message::Cancel(c) => {
                    for j in d.pending.iter_mut() {
                        if j.job.cookie == c.cookie {
                            j.cancelled = true;
                        }
                    }
                }
                other => d.violations.push(format!(
                    "device sent daemon-only message {:?}",
                    other.kind()
                )),
            }
        }
    }

    /// Lets time pass, calling `tick` at every deadline on the way.
    pub fn advance(&mut self, dt: Nanos) {
        let end = self.now.saturating_add(dt);
        loop {
            match self.dev.next_deadline() {
                Some(d) if d <= end => {
                    self.now = self.now.max(d);
                    self.dev.tick(self.now);
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = end;
        self.dev.tick(self.now);
        self.pump();
    }

    /// Queue of a `DV_QUEUE_*` value.
    pub fn queue_of(q: u32) -> Queue {
        if q == proto::DV_QUEUE_OUTPUT {
            Queue::Output
        } else {
            Queue::Capture
        }
    }
}
