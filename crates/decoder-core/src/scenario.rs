//! Scenario files: event sequences with expected buffer outcomes.
//!
//! The same files (`tests/scenarios/*.scn`) run against decoder-core here
//! ([`run_on_sim`]) and, unchanged, against the CUSE frontend and the kernel
//! module through real ioctls and a scriptable test daemon. Grammar, one
//! step per line, `#` starts a comment:
//!
//! ```text
//! daemon start|stop|cont|kill|fail|ok|garbage|foreign|replay
//! open C [codec=h264|hevc|vp8|vp9|av1] [size=WxH]
//! reqbufs C output|capture N
//! streamon C output|capture        streamoff C output|capture
//! queue C I                        # QBUF CAPTURE buffer I
//! decode C I ts=T [hold]           # request + controls + QBUF OUTPUT I + queue
//! decode-noreq C I ts=T            # QBUF OUTPUT without a request
//! request-empty C                  # queue a request holding nothing
//! ctrl-invalid C                   # S_EXT_CTRLS with a malformed payload
//! flush C                          # V4L2_DEC_CMD_FLUSH
//! wait MS
//! close C [within MS]
//! expect C output|capture I done|error [within MS]
//! expect C output|capture empty
//! expect inflight N                # frontends that expose the count
//! ```
//!
//! Any operation may end with `=> ERRNO` (e.g. `=> EBADR`): it must fail
//! with that errno; without it, it must succeed. `daemon stop` and `cont`
//! are SIGSTOP and SIGCONT, `kill` is SIGKILL; `fail`/`ok` make the daemon
//! answer jobs with ERROR/DONE; `garbage` sends a malformed datagram,
//! `foreign` answers the oldest job naming another context, `replay`
//! re-sends the last result.

use crate::ctrl::{libc_errno as e, Codec, ControlValues};
use crate::fmt;
use crate::sim::{DaemonMode, Sim};
use crate::state::{
    BufError, Config, Device, Memory, QbufArgs, Queue, Which, BUF_FLAG_ERROR,
    BUF_FLAG_M2M_HOLD_CAPTURE_BUF,
};

/// A daemon action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonOp {
    /// Start (or restart) the daemon.
    Start,
    /// SIGSTOP.
    Stop,
    /// SIGCONT.
    Cont,
    /// SIGKILL.
    Kill,
    /// Answer jobs with ERROR.
    Fail,
    /// Answer jobs with DONE.
    Ok,
    /// Send a malformed datagram.
    Garbage,
    /// Answer the oldest job with another context's id.
    Foreign,
    /// Send the last result again.
    Replay,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Daemon action.
    Daemon(DaemonOp),
    /// Open context `name`.
    Open {
        /// Context name.
        name: String,
        /// Codec.
        codec: Codec,
        /// Coded size.
        size: (u32, u32),
    },
    /// REQBUFS.
    Reqbufs(String, Queue, u32),
    /// STREAMON.
    Streamon(String, Queue),
    /// STREAMOFF.
    Streamoff(String, Queue),
    /// QBUF a CAPTURE buffer.
    QueueCapture(String, u32),
    /// Decode OUTPUT buffer `index` through a request.
    Decode {
        /// Context.
        ctx: String,
        /// OUTPUT index.
        index: u32,
        /// Timestamp (ns).
        ts: u64,
        /// Set `V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF`.
        hold: bool,
    },
    /// QBUF OUTPUT without a request.
    DecodeNoRequest(String, u32, u64),
    /// Queue an empty request.
    RequestEmpty(String),
    /// S_EXT_CTRLS with a malformed payload.
    CtrlInvalid(String),
    /// DECODER_CMD flush.
    Flush(String),
    /// Let time pass.
    Wait(u64),
    /// close() of the context, which must return within the bound.
    Close(String, u64),
    /// DQBUF must return this buffer with this status within the bound.
    Expect {
        /// Context.
        ctx: String,
        /// Queue.
        queue: Queue,
        /// Index.
        index: u32,
        /// Expect `V4L2_BUF_FLAG_ERROR`.
        error: bool,
        /// Bound in milliseconds.
        within_ms: u64,
    },
    /// Nothing to dequeue.
    ExpectEmpty(String, Queue),
    /// In-flight count.
    ExpectInflight(usize),
}

/// A step with its expected errno (0: must succeed) and source line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The step.
    pub op: Op,
    /// Expected errno, 0 for success.
    pub errno: i32,
    /// 1-based line number.
    pub line: usize,
}

/// A parsed scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Name (file stem).
    pub name: String,
    /// Steps in order.
    pub steps: Vec<Step>,
}

fn errno_by_name(s: &str) -> Option<i32> {
    Some(match s {
        "EINVAL" => e::EINVAL,
        "EBUSY" => e::EBUSY,
        "EBADR" => e::EBADR,
        "EFAULT" => e::EFAULT,
        "EPERM" => e::EPERM,
        "ENOENT" => e::ENOENT,
        "EAGAIN" => e::EAGAIN,
        "ERANGE" => e::ERANGE,
        "ENOSPC" => e::ENOSPC,
        "EACCES" => e::EACCES,
        "ENOMEM" => e::ENOMEM,
        _ => return None,
    })
}

fn queue_by_name(s: &str) -> Result<Queue, String> {
    match s {
        "output" => Ok(Queue::Output),
        "capture" => Ok(Queue::Capture),
        _ => Err(format!("unknown queue {s:?}")),
    }
}

fn codec_by_name(s: &str) -> Result<Codec, String> {
    Ok(match s {
        "h264" => Codec::H264,
        "hevc" => Codec::Hevc,
        "vp8" => Codec::Vp8,
        "vp9" => Codec::Vp9,
        "av1" => Codec::Av1,
        _ => return Err(format!("unknown codec {s:?}")),
    })
}

fn num<T: std::str::FromStr>(s: Option<&&str>, what: &str) -> Result<T, String> {
    s.ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("bad {what}"))
}

fn key<'a>(words: &'a [&str], k: &str) -> Option<&'a str> {
    words.iter().find_map(|w| w.strip_prefix(k))
}

fn within(words: &[&str]) -> Result<u64, String> {
    match words.iter().position(|w| *w == "within") {
        Some(i) => num(words.get(i + 1), "within"),
        None => Ok(0),
    }
}

impl Scenario {
    /// Parses a scenario file's text.
    pub fn parse(name: &str, text: &str) -> Result<Scenario, String> {
        let mut steps = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (body, errno) = match line.split_once("=>") {
                Some((b, err)) => (
                    b.trim(),
                    errno_by_name(err.trim())
                        .ok_or_else(|| format!("{name}:{}: unknown errno {err:?}", i + 1))?,
                ),
                None => (line, 0),
            };
            let w: Vec<&str> = body.split_whitespace().collect();
            let op = parse_op(&w).map_err(|m| format!("{name}:{}: {m}: {raw:?}", i + 1))?;
            steps.push(Step {
                op,
                errno,
                line: i + 1,
            });
        }
        Ok(Scenario {
            name: name.to_owned(),
            steps,
        })
    }
}

fn parse_op(w: &[&str]) -> Result<Op, String> {
    let ctx = || w.get(1).map(|s| s.to_string()).ok_or("missing context");
    Ok(match w[0] {
        "daemon" => Op::Daemon(match w.get(1).copied() {
            Some("start") => DaemonOp::Start,
            Some("stop") => DaemonOp::Stop,
            Some("cont") => DaemonOp::Cont,
            Some("kill") => DaemonOp::Kill,
            Some("fail") => DaemonOp::Fail,
            Some("ok") => DaemonOp::Ok,
            Some("garbage") => DaemonOp::Garbage,
            Some("foreign") => DaemonOp::Foreign,
            Some("replay") => DaemonOp::Replay,
            other => return Err(format!("unknown daemon action {other:?}")),
        }),
        "open" => {
            let codec = codec_by_name(key(w, "codec=").unwrap_or("h264"))?;
            let size = match key(w, "size=") {
                Some(s) => {
                    let (a, b) = s.split_once('x').ok_or("size is WxH")?;
                    (
                        a.parse().map_err(|_| "bad width")?,
                        b.parse().map_err(|_| "bad height")?,
                    )
                }
                None => (64, 64),
            };
            Op::Open {
                name: ctx()?,
                codec,
                size,
            }
        }
        "reqbufs" => Op::Reqbufs(
            ctx()?,
            queue_by_name(w.get(2).ok_or("missing queue")?)?,
            num(w.get(3), "count")?,
        ),
        "streamon" => Op::Streamon(ctx()?, queue_by_name(w.get(2).ok_or("missing queue")?)?),
        "streamoff" => Op::Streamoff(ctx()?, queue_by_name(w.get(2).ok_or("missing queue")?)?),
        "queue" => Op::QueueCapture(ctx()?, num(w.get(2), "index")?),
        "decode" => Op::Decode {
            ctx: ctx()?,
            index: num(w.get(2), "index")?,
            ts: key(w, "ts=")
                .ok_or("missing ts=")?
                .parse()
                .map_err(|_| "bad ts")?,
            hold: w.contains(&"hold"),
        },
        "decode-noreq" => Op::DecodeNoRequest(
            ctx()?,
            num(w.get(2), "index")?,
            key(w, "ts=").unwrap_or("0").parse().map_err(|_| "bad ts")?,
        ),
        "request-empty" => Op::RequestEmpty(ctx()?),
        "ctrl-invalid" => Op::CtrlInvalid(ctx()?),
        "flush" => Op::Flush(ctx()?),
        "wait" => Op::Wait(num(w.get(1), "milliseconds")?),
        "close" => Op::Close(ctx()?, within(w)?),
        "expect" if w.get(1) == Some(&"inflight") => Op::ExpectInflight(num(w.get(2), "count")?),
        "expect" => {
            let queue = queue_by_name(w.get(2).ok_or("missing queue")?)?;
            if w.get(3) == Some(&"empty") {
                Op::ExpectEmpty(ctx()?, queue)
            } else {
                Op::Expect {
                    ctx: ctx()?,
                    queue,
                    index: num(w.get(3), "index")?,
                    error: match w.get(4).copied() {
                        Some("done") => false,
                        Some("error") => true,
                        other => return Err(format!("expected done|error, got {other:?}")),
                    },
                    within_ms: within(w)?,
                }
            }
        }
        other => return Err(format!("unknown step {other:?}")),
    })
}

/// Bytes a scenario's OUTPUT buffers claim to hold.
pub const SCENARIO_BYTESUSED: u32 = 1024;

/// Runs a scenario against decoder-core with the in-memory test daemon.
/// Returns the number of steps run.
pub fn run_on_sim(s: &Scenario) -> Result<usize, String> {
    let mut sim = Sim::new(Device::new(Config::default()));
    let mut names: Vec<(String, crate::state::CtxId)> = Vec::new();
    for step in &s.steps {
        let at = |m: String| format!("{}:{}: {m}", s.name, step.line);
        let id = |n: &str| {
            names
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| *v)
                .ok_or_else(|| at(format!("unknown context {n}")))
        };
        let res: Result<(), i32> = match &step.op {
            Op::Daemon(d) => {
                match d {
                    DaemonOp::Start => sim.daemon_start(),
                    DaemonOp::Stop => sim.daemon.mode = DaemonMode::Stopped,
                    DaemonOp::Cont | DaemonOp::Ok => {
                        sim.daemon.mode = DaemonMode::Running;
                        sim.pump();
                    }
                    DaemonOp::Fail => {
                        sim.daemon.mode = DaemonMode::Failing;
                        sim.pump();
                    }
                    DaemonOp::Kill => sim.daemon_kill(),
                    DaemonOp::Garbage => {
                        sim.daemon_send_raw(b"this is not a bridge message");
                    }
                    DaemonOp::Foreign => {
                        sim.pump_rx();
                        if let Some(j) = sim.daemon.pending.front().copied() {
                            let r = crate::proto::JobResult {
                                ctx_id: j.job.ctx_id.wrapping_add(1000),
                                status: crate::proto::DV_STATUS_DONE,
                                cookie: j.job.cookie,
                                ..Default::default()
                            };
                            sim.daemon_send_raw(&crate::proto::Message::Result(r).to_bytes(0));
                        }
                    }
                    DaemonOp::Replay => {
                        if let Some((_, r)) = sim.daemon.answered.last().copied() {
                            sim.daemon_send_raw(&crate::proto::Message::Result(r).to_bytes(0));
                        }
                    }
                }
                Ok(())
            }
            Op::Open { name, codec, size } => {
                let c = sim.dev.open_context().ok_or(e::ENOMEM);
                match c {
                    Ok(c) => {
                        let want = fmt::PixFormat {
                            fourcc: fmt::fourcc_of(*codec),
                            width: size.0,
                            height: size.1,
                            ..Default::default()
                        };
                        sim.dev
                            .set_format(c, Queue::Output, want)
                            .map_err(|err| err.errno())
                            .map(|_| names.push((name.clone(), c)))
                    }
                    Err(err) => Err(err),
                }
            }
            Op::Reqbufs(c, q, n) => sim
                .dev
                .reqbufs(id(c)?, *q, Memory::Mmap, *n)
                .map(|_| ())
                .map_err(|err| err.errno()),
            Op::Streamon(c, q) => {
                let now = sim.now;
                let r = sim.dev.streamon(id(c)?, *q, now).map_err(|err| err.errno());
                sim.pump();
                r
            }
            Op::Streamoff(c, q) => {
                let now = sim.now;
                let r = sim
                    .dev
                    .streamoff(id(c)?, *q, now)
                    .map_err(|err| err.errno());
                sim.pump();
                r
            }
            Op::QueueCapture(c, i) => {
                let now = sim.now;
                let r = sim
                    .dev
                    .qbuf(
                        id(c)?,
                        Queue::Capture,
                        *i,
                        Memory::Mmap,
                        QbufArgs::default(),
                        now,
                    )
                    .map_err(|err| err.errno());
                sim.pump();
                r
            }
            Op::Decode {
                ctx,
                index,
                ts,
                hold,
            } => {
                let c = id(ctx)?;
                let r = decode_via_request(&mut sim, c, *index, *ts, *hold);
                sim.pump();
                r
            }
            Op::DecodeNoRequest(c, i, ts) => {
                let now = sim.now;
                let args = QbufArgs {
                    bytesused: [SCENARIO_BYTESUSED, 0, 0, 0],
                    timestamp: *ts,
                    ..Default::default()
                };
                sim.dev
                    .qbuf(id(c)?, Queue::Output, *i, Memory::Mmap, args, now)
                    .map_err(|err| err.errno())
            }
            Op::RequestEmpty(_) => match sim.dev.request_alloc() {
                Ok(r) => {
                    let now = sim.now;
                    let res = sim.dev.request_queue(r, now).map_err(|err| err.errno());
                    let _ = sim.dev.request_close(r);
                    res
                }
                Err(err) => Err(err.errno()),
            },
            Op::CtrlInvalid(c) => {
                let c = id(c)?;
                let codec = sim.dev.codec(c).expect("open");
                let target = codec
                    .desc()
                    .controls
                    .iter()
                    .find(|d| d.is_compound())
                    .map(|d| d.id)
                    .unwrap_or(0);
                let junk = [0xffu8; 3];
                sim.dev
                    .set_controls(c, Which::Current, &[(target, &junk[..])], false)
                    .map_err(|err| err.errno())
            }
            Op::Flush(c) => {
                let r = sim.dev.decoder_flush(id(c)?).map_err(|err| err.errno());
                sim.pump();
                r
            }
            Op::Wait(ms) => {
                sim.advance(ms * 1_000_000);
                Ok(())
            }
            Op::Close(c, _within) => {
                let c = id(c)?;
                let now = sim.now;
                sim.dev.close_context(c, now);
                sim.pump();
                names.retain(|(_, v)| *v != c);
                Ok(())
            }
            Op::Expect {
                ctx,
                queue,
                index,
                error,
                within_ms,
            } => {
                let c = id(ctx)?;
                let deadline = sim.now + within_ms * 1_000_000;
                let got = loop {
                    match sim.dev.dqbuf(c, *queue) {
                        Err(BufError::WouldBlock) if sim.now < deadline => {
                            let step = (deadline - sim.now).min(1_000_000);
                            sim.advance(step);
                        }
                        other => break other,
                    }
                };
                match got {
                    Ok(d) => {
                        let is_err = d.flags & BUF_FLAG_ERROR != 0;
                        if d.index != *index || is_err != *error {
                            return Err(at(format!(
                                "dequeued {queue:?} {} {}, expected {index} {}",
                                d.index,
                                if is_err { "error" } else { "done" },
                                if *error { "error" } else { "done" }
                            )));
                        }
                        Ok(())
                    }
                    Err(err) => {
                        return Err(at(format!(
                            "nothing dequeued from {queue:?} within {within_ms} ms: {err}"
                        )))
                    }
                }
            }
            Op::ExpectEmpty(c, q) => match sim.dev.dqbuf(id(c)?, *q) {
                Err(BufError::WouldBlock) | Err(BufError::NotStreaming) => Ok(()),
                Ok(d) => return Err(at(format!("unexpected buffer {} on {q:?}", d.index))),
                Err(err) => Err(err.errno()),
            },
            Op::ExpectInflight(n) => {
                if sim.dev.inflight_count() != *n {
                    return Err(at(format!(
                        "{} jobs in flight, expected {n}",
                        sim.dev.inflight_count()
                    )));
                }
                Ok(())
            }
        };
        let got = res.err().unwrap_or(0);
        if got != step.errno {
            return Err(at(format!(
                "{:?} returned errno {got}, expected {}",
                step.op, step.errno
            )));
        }
        if let Some(v) = sim.daemon.violations.first() {
            return Err(at(format!("protocol order violation: {v}")));
        }
    }
    Ok(s.steps.len())
}

fn decode_via_request(
    sim: &mut Sim,
    c: crate::state::CtxId,
    index: u32,
    ts: u64,
    hold: bool,
) -> Result<(), i32> {
    let now = sim.now;
    let r = sim.dev.request_alloc().map_err(|err| err.errno())?;
    let codec = sim.dev.codec(c).expect("open");
    let defaults = ControlValues::defaults(codec);
    let ctrls: Vec<(u32, &[u8])> = defaults.iter().collect();
    let res = sim
        .dev
        .set_controls(c, Which::Request(r), &ctrls, false)
        .map_err(|err| err.errno())
        .and_then(|_| {
            let args = QbufArgs {
                bytesused: [SCENARIO_BYTESUSED, 0, 0, 0],
                timestamp: ts,
                flags: if hold {
                    BUF_FLAG_M2M_HOLD_CAPTURE_BUF
                } else {
                    0
                },
                request: Some(r),
                memory_changed: false,
            };
            sim.dev
                .qbuf(c, Queue::Output, index, Memory::Mmap, args, now)
                .map_err(|err| err.errno())
        })
        .and_then(|_| sim.dev.request_queue(r, now).map_err(|err| err.errno()));
    let _ = sim.dev.request_close(r);
    res
}
