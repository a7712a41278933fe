//! A scriptable stand-in for `daedalus-daemon`, for testing frontends.
//!
//! [`TestDaemon`] speaks the real bridge protocol ([`decoder_core::proto`])
//! over any [`Transport`] (a unix `SOCK_SEQPACKET` socket to the CUSE
//! frontend, the kernel module's bridge device): it answers HELLO, tracks
//! the contexts and buffers the frontend registers (and counts jobs naming
//! anything it was not told about), and answers every DECODE with a RESULT
//! without decoding anything. A line-based control socket changes its
//! behaviour while it runs (see [`Command`]); stopping, continuing and
//! killing it are left to signals.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use daedalus_daemon::transport::{Shutdown, Transport, TransportError};
use decoder_core::proto::{self, DecodeJob, Hello, JobResult, Message};

/// The malformed datagram `garbage` sends.
pub const GARBAGE: &[u8] = b"this is not a bridge message";

/// Context id offset of a `foreign` answer.
pub const FOREIGN_OFFSET: u32 = 1000;

/// errno-style reason of an ERROR result (EIO).
pub const FAIL_ERRNO: u32 = 5;

/// How long `foreign` waits for a job to answer when none is held.
pub const FOREIGN_WAIT: Duration = Duration::from_secs(1);

/// One control-socket command (one line each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `ok`: answer jobs DONE (the default).
    Ok,
    /// `fail`: answer jobs ERROR.
    Fail,
    /// `hold`: keep jobs unanswered.
    Hold,
    /// `release`: stop holding and answer every held job, oldest first.
    Release,
    /// `late MS`: answer each job MS milliseconds after it arrives (0: at
    /// once).
    Late(u64),
    /// `garbage`: send a malformed datagram.
    Garbage,
    /// `foreign`: answer the oldest held job (or, when none is held, the
    /// next job within [`FOREIGN_WAIT`]) naming another context.
    Foreign,
    /// `replay`: send the last result again.
    Replay,
    /// `crash`: abort the process.
    Crash,
    /// `status`: counters, as `key=value` words.
    Status,
    /// `wait-attached MS`: wait until the handshake is answered.
    WaitAttached(u64),
}

impl Command {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<Command, String> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let ms = |what: &str| -> Result<u64, String> {
            w.get(1)
                .ok_or_else(|| format!("{what} needs milliseconds"))?
                .parse()
                .map_err(|_| format!("{what}: not a number"))
        };
        Ok(match w.first().copied() {
            Some("ok") => Command::Ok,
            Some("fail") => Command::Fail,
            Some("hold") => Command::Hold,
            Some("release") => Command::Release,
            Some("late") => Command::Late(ms("late")?),
            Some("garbage") => Command::Garbage,
            Some("foreign") => Command::Foreign,
            Some("replay") => Command::Replay,
            Some("crash") => Command::Crash,
            Some("status") => Command::Status,
            Some("wait-attached") => Command::WaitAttached(ms("wait-attached")?),
            Some(other) => return Err(format!("unknown command {other:?}")),
            None => return Err("empty command".into()),
        })
    }
}

/// Counters of what the daemon saw and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// HELLO received.
    pub hellos: u64,
    /// DECODE received.
    pub jobs: u64,
    /// RESULT sent (replays and foreign answers included).
    pub results: u64,
    /// CANCEL received.
    pub cancels: u64,
    /// Jobs naming a context or buffer not registered on this connection.
    pub violations: u64,
    /// Datagrams from the frontend that did not decode (the connection is
    /// then closed, as the real daemon does).
    pub malformed: u64,
}

#[derive(Debug)]
struct State {
    answer_ok: bool,
    hold: bool,
    late: Option<Duration>,
    held: VecDeque<DecodeJob>,
    last_result: Option<JobResult>,
    /// Most recent job received and its sequence number (jobs so far).
    last_job: Option<DecodeJob>,
    contexts: BTreeSet<u32>,
    buffers: BTreeSet<(u32, u32, u32)>,
    attached: bool,
    closed: bool,
    stats: Stats,
    seq: u32,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    link: Arc<dyn Transport>,
    shutdown: Shutdown,
}

/// The test daemon on one connection.
#[derive(Clone)]
pub struct TestDaemon {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TestDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDaemon")
            .field("stats", &self.stats())
            .finish()
    }
}

impl TestDaemon {
    /// A daemon on a connected transport. Nothing runs until
    /// [`TestDaemon::serve`].
    pub fn new(link: Arc<dyn Transport>) -> std::io::Result<Self> {
        Ok(TestDaemon {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    answer_ok: true,
                    hold: false,
                    late: None,
                    held: VecDeque::new(),
                    last_result: None,
                    last_job: None,
                    contexts: BTreeSet::new(),
                    buffers: BTreeSet::new(),
                    attached: false,
                    closed: false,
                    stats: Stats::default(),
                    seq: 0,
                }),
                changed: Condvar::new(),
                link,
                shutdown: Shutdown::new()?,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// True once the handshake was answered and until the connection ends.
    pub fn attached(&self) -> bool {
        self.lock().attached
    }

    /// Stops [`TestDaemon::serve`] (it returns at once).
    pub fn stop(&self) {
        self.shared.shutdown.trigger();
    }

    /// Receives and answers datagrams until the connection ends or
    /// [`TestDaemon::stop`]. Returns why it ended.
    pub fn serve(&self) -> TransportError {
        let mut buf = vec![0u8; proto::DV_MAX_MSG_SIZE as usize];
        let end = loop {
            let r = match self.shared.link.recv(&mut buf, &self.shared.shutdown) {
                Ok(r) => r,
                Err(e) => break e,
            };
            // Descriptors (buffer memory) are not used: no decoding here.
            drop(r.fds);
            if !self.handle(&buf[..r.len]) {
                self.shared.link.close();
                break TransportError::Closed;
            }
        };
        let mut st = self.lock();
        st.attached = false;
        st.closed = true;
        self.shared.changed.notify_all();
        end
    }

    /// Handles one datagram; false when it was malformed.
    fn handle(&self, bytes: &[u8]) -> bool {
        let msg = match proto::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("daedalus-test-daemon: malformed datagram from the frontend: {e}");
                self.lock().stats.malformed += 1;
                return false;
            }
        };
        let mut st = self.lock();
        match msg {
            Message::Hello(h) => {
                st.stats.hellos += 1;
                st.contexts.clear();
                st.buffers.clear();
                let reply = Hello {
                    version_major: proto::DV_VERSION_MAJOR,
                    version_minor: proto::DV_VERSION_MINOR,
                    max_inflight: 4,
                    features: h.features & proto::DV_FEAT_ALL,
                    max_msg_size: proto::DV_MAX_MSG_SIZE,
                    reserved: 0,
                };
                self.send(&mut st, &Message::HelloReply(reply));
                st.attached = true;
            }
            Message::CtxOpen(o) => {
                st.contexts.insert(o.ctx_id);
            }
            Message::CtxClose(c) => {
                st.contexts.remove(&c.ctx_id);
                st.buffers.retain(|b| b.0 != c.ctx_id);
            }
            Message::BufRegister(b) => {
                st.buffers.insert((b.ctx_id, b.queue, b.index));
            }
            Message::BufUnregister(b) => {
                st.buffers.remove(&(b.ctx_id, b.queue, b.index));
            }
            Message::Decode(job, _ctrls) => {
                st.stats.jobs += 1;
                let known = st.contexts.contains(&job.ctx_id)
                    && st
                        .buffers
                        .contains(&(job.ctx_id, proto::DV_QUEUE_OUTPUT, job.output_index))
                    && st.buffers.contains(&(
                        job.ctx_id,
                        proto::DV_QUEUE_CAPTURE,
                        job.capture_index,
                    ));
                if !known {
                    eprintln!(
                        "daedalus-test-daemon: job {} names a context or buffer never registered",
                        job.cookie
                    );
                    st.stats.violations += 1;
                }
                st.last_job = Some(job);
                if st.hold {
                    st.held.push_back(job);
                } else if let Some(d) = st.late {
                    let me = self.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(d);
                        let mut st = me.lock();
                        let r = me.result_for(&st, &job);
                        me.send_result(&mut st, r);
                    });
                } else {
                    let r = self.result_for(&st, &job);
                    self.send_result(&mut st, r);
                }
            }
            Message::Cancel(_) => st.stats.cancels += 1,
            other => {
                eprintln!(
                    "daedalus-test-daemon: the frontend sent a daemon message {:?}",
                    other.kind()
                );
                st.stats.malformed += 1;
                drop(st);
                return false;
            }
        }
        self.shared.changed.notify_all();
        true
    }

    fn result_for(&self, st: &State, job: &DecodeJob) -> JobResult {
        JobResult {
            ctx_id: job.ctx_id,
            status: if st.answer_ok {
                proto::DV_STATUS_DONE
            } else {
                proto::DV_STATUS_ERROR
            },
            cookie: job.cookie,
            error: if st.answer_ok { 0 } else { FAIL_ERRNO },
            flags: 0,
            bytesused: [0; 4],
        }
    }

    fn send_result(&self, st: &mut State, r: JobResult) {
        self.send(st, &Message::Result(r));
        st.stats.results += 1;
        st.last_result = Some(r);
    }

    fn send(&self, st: &mut State, m: &Message<'_>) {
        st.seq = st.seq.wrapping_add(1);
        self.send_raw(&m.to_bytes(st.seq));
    }

    fn send_raw(&self, bytes: &[u8]) {
        if let Err(e) = self.shared.link.send(bytes, &[]) {
            eprintln!("daedalus-test-daemon: send: {e}");
        }
    }

    /// Carries out one command; returns the reply line (without newline):
    /// `ok`, `ok WORDS`, or `error MESSAGE`. `crash` does not return.
    pub fn command(&self, c: Command) -> String {
        let mut st = self.lock();
        match c {
            Command::Ok => st.answer_ok = true,
            Command::Fail => st.answer_ok = false,
            Command::Hold => st.hold = true,
            Command::Release => {
                st.hold = false;
                let n = st.held.len();
                while let Some(j) = st.held.pop_front() {
                    let r = self.result_for(&st, &j);
                    self.send_result(&mut st, r);
                }
                return format!("ok released={n}");
            }
            Command::Late(ms) => st.late = (ms > 0).then(|| Duration::from_millis(ms)),
            Command::Garbage => self.send_raw(GARBAGE),
            Command::Foreign => {
                let seen = st.stats.jobs;
                let deadline = Instant::now() + FOREIGN_WAIT;
                let job = loop {
                    if let Some(j) = st.held.front() {
                        break Some(*j);
                    }
                    if st.stats.jobs > seen {
                        break st.last_job;
                    }
                    let now = Instant::now();
                    if now >= deadline || st.closed {
                        break None;
                    }
                    st = self
                        .shared
                        .changed
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                };
                let Some(j) = job else {
                    return "ok no-job".into();
                };
                let mut r = self.result_for(&st, &j);
                r.ctx_id = j.ctx_id.wrapping_add(FOREIGN_OFFSET);
                // Not remembered as the last result: `replay` repeats a
                // genuine answer.
                self.send(&mut st, &Message::Result(r));
                st.stats.results += 1;
                return format!("ok cookie={}", j.cookie);
            }
            Command::Replay => {
                let Some(r) = st.last_result else {
                    return "ok no-result".into();
                };
                self.send(&mut st, &Message::Result(r));
                st.stats.results += 1;
                return format!("ok cookie={}", r.cookie);
            }
            Command::Crash => {
                eprintln!("daedalus-test-daemon: crashing on command");
                std::process::abort();
            }
            Command::Status => {
                let s = st.stats;
                return format!(
                    "ok attached={} hellos={} jobs={} results={} held={} cancels={} contexts={} buffers={} violations={} malformed={}",
                    u8::from(st.attached),
                    s.hellos,
                    s.jobs,
                    s.results,
                    st.held.len(),
                    s.cancels,
                    st.contexts.len(),
                    st.buffers.len(),
                    s.violations,
                    s.malformed
                );
            }
            Command::WaitAttached(ms) => {
                let deadline = Instant::now() + Duration::from_millis(ms);
                while !st.attached {
                    let now = Instant::now();
                    if now >= deadline || st.closed {
                        return "error not attached".into();
                    }
                    st = self
                        .shared
                        .changed
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        "ok".into()
    }

    /// Serves the control socket: every connection on its own thread, one
    /// command per line, one reply line each. Runs until the listener
    /// fails.
    pub fn serve_control(&self, listener: UnixListener) {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let me = self.clone();
            std::thread::spawn(move || me.control_connection(conn));
        }
    }

    fn control_connection(&self, conn: UnixStream) {
        let Ok(mut out) = conn.try_clone() else {
            return;
        };
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { return };
            if line.trim().is_empty() {
                continue;
            }
            let reply = match Command::parse(&line) {
                Ok(c) => self.command(c),
                Err(e) => format!("error {e}"),
            };
            if writeln!(out, "{reply}").is_err() {
                return;
            }
        }
    }
}

/// A client of a test daemon's control socket.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// Connects to the control socket at `path`, retrying until `timeout`
    /// (the daemon may still be starting).
    pub fn connect(path: &std::path::Path, timeout: Duration) -> std::io::Result<Self> {
        let deadline = Instant::now() + timeout;
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        Ok(ControlClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one command line and returns the reply line; an `error` reply
    /// is an `Err`.
    pub fn send(&mut self, line: &str) -> std::io::Result<String> {
        writeln!(self.writer, "{line}")?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "control socket closed",
            ));
        }
        let reply = reply.trim_end().to_owned();
        if reply == "ok" || reply.starts_with("ok ") {
            Ok(reply)
        } else {
            Err(std::io::Error::other(format!("{line}: {reply}")))
        }
    }
}
