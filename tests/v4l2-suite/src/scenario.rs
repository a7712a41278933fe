//! decoder-core's scenario files through real ioctls.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use decoder_core::ctrl::Codec;
use decoder_core::fmt;
use decoder_core::scenario::{Op, Scenario, SCENARIO_BYTESUSED};
use decoder_core::state::Queue;
use nix::errno::Errno;

use crate::daemon::DaemonSlot;
use crate::v4l2::{self, Mem, Plane, QbufArgs, Request, Which, CAP, OUT};

/// What an OUTPUT buffer holds: not a real slice (the test daemon does not
/// decode), but the frontend must carry the bytes.
const FAKE_BITSTREAM: [u8; SCENARIO_BYTESUSED as usize] = [0x5a; SCENARIO_BYTESUSED as usize];

/// Default bound of a `close` without `within`.
const CLOSE_DEFAULT_MS: u64 = 3000;

/// How the scenario's device is reached.
pub struct Env<'a> {
    /// The video node.
    pub video: &'a Path,
    /// The media node (requests).
    pub media: &'a File,
    /// Buffer memory.
    pub mem: Mem,
    /// Least wait of an `expect` (and the watch of `expect ... empty`),
    /// since real frontends complete buffers asynchronously.
    pub grace_ms: u64,
    /// Print every step.
    pub verbose: bool,
}

/// One open of the video node.
struct Ctx {
    // Planes before the fd: unmapped before it closes.
    out: Vec<Vec<Plane>>,
    cap: Vec<Vec<Plane>>,
    codec: Codec,
    video: File,
}

enum StepErr {
    Errno(i32),
    Fail(String),
}

impl From<Errno> for StepErr {
    fn from(e: Errno) -> Self {
        StepErr::Errno(e as i32)
    }
}

fn qty(q: Queue) -> u32 {
    match q {
        Queue::Output => OUT,
        Queue::Capture => CAP,
    }
}

fn errno_name(e: i32) -> String {
    if e == 0 {
        "success".into()
    } else {
        format!("{} ({e})", Errno::from_raw(e).desc())
    }
}

/// Result of one scenario.
pub struct Outcome {
    /// Steps run.
    pub steps: usize,
    /// Notes (skipped steps).
    pub notes: Vec<String>,
}

/// Runs one scenario; `Err` names the failing line.
pub fn run(env: &Env<'_>, daemon: &mut DaemonSlot, s: &Scenario) -> Result<Outcome, String> {
    let mut ctxs: HashMap<String, Ctx> = HashMap::new();
    let mut notes = Vec::new();
    let r = run_steps(env, daemon, s, &mut ctxs, &mut notes);
    // Whatever happened: close what is open (bounded) and end the daemon.
    for (name, c) in ctxs.drain() {
        if let Err(e) = close_within(c, CLOSE_DEFAULT_MS) {
            notes.push(format!("cleanup close {name}: {e}"));
        }
    }
    daemon.kill();
    r.map(|steps| Outcome { steps, notes })
}

fn run_steps(
    env: &Env<'_>,
    daemon: &mut DaemonSlot,
    s: &Scenario,
    ctxs: &mut HashMap<String, Ctx>,
    notes: &mut Vec<String>,
) -> Result<usize, String> {
    for step in &s.steps {
        let at = |m: String| format!("{}:{}: {m}", s.name, step.line);
        if env.verbose {
            eprintln!("  {}:{} {:?}", s.name, step.line, step.op);
        }
        let res = exec(env, daemon, ctxs, &step.op, notes);
        let got = match res {
            Ok(()) => 0,
            Err(StepErr::Errno(e)) => e,
            Err(StepErr::Fail(m)) => return Err(at(m)),
        };
        if got != step.errno {
            return Err(at(format!(
                "{:?}: got {}, expected {}",
                step.op,
                errno_name(got),
                errno_name(step.errno)
            )));
        }
    }
    Ok(s.steps.len())
}

fn get<'c>(ctxs: &'c mut HashMap<String, Ctx>, n: &str) -> Result<&'c mut Ctx, StepErr> {
    ctxs.get_mut(n)
        .ok_or_else(|| StepErr::Fail(format!("unknown context {n}")))
}

fn exec(
    env: &Env<'_>,
    daemon: &mut DaemonSlot,
    ctxs: &mut HashMap<String, Ctx>,
    op: &Op,
    notes: &mut Vec<String>,
) -> Result<(), StepErr> {
    match op {
        Op::Daemon(d) => daemon.op(*d).map_err(StepErr::Fail),
        Op::Open { name, codec, size } => {
            let video = v4l2::open_video(env.video)?;
            let want = fmt::fourcc_of(*codec);
            let got = v4l2::s_fmt_output(&video, want, size.0, size.1)?;
            // SAFETY: MPLANE formats use pix_mp.
            let pf = unsafe { got.fmt.pix_mp.pixelformat };
            if pf != want {
                return Err(StepErr::Fail(format!(
                    "the device does not decode {codec:?} (S_FMT chose {:?})",
                    String::from_utf8_lossy(&pf.to_le_bytes())
                )));
            }
            ctxs.insert(
                name.clone(),
                Ctx {
                    out: Vec::new(),
                    cap: Vec::new(),
                    codec: *codec,
                    video,
                },
            );
            Ok(())
        }
        Op::Reqbufs(n, q, count) => {
            let c = get(ctxs, n)?;
            let ty = qty(*q);
            let (got, _) = v4l2::reqbufs(&c.video, ty, env.mem.v4l2(), *count)?;
            let planes = alloc_planes(&c.video, ty, env.mem, got).map_err(StepErr::Fail)?;
            match q {
                Queue::Output => c.out = planes,
                Queue::Capture => c.cap = planes,
            }
            Ok(())
        }
        Op::Streamon(n, q) => Ok(v4l2::stream(&get(ctxs, n)?.video, qty(*q), true)?),
        Op::Streamoff(n, q) => Ok(v4l2::stream(&get(ctxs, n)?.video, qty(*q), false)?),
        Op::QueueCapture(n, i) => {
            let c = get(ctxs, n)?;
            let planes = c.cap.get(*i as usize).map_or(&[][..], |v| &v[..]);
            Ok(v4l2::qbuf(
                &c.video,
                CAP,
                env.mem.v4l2(),
                *i,
                planes,
                QbufArgs::default(),
            )?)
        }
        Op::Decode {
            ctx,
            index,
            ts,
            hold,
        } => {
            let c = get(ctxs, ctx)?;
            let req = Request::alloc(env.media)?;
            v4l2::s_ext_ctrls(
                &c.video,
                c.codec,
                Which::Request(req.fd()),
                &v4l2::default_controls(c.codec),
            )?;
            if let Some(p) = c.out.get_mut(*index as usize).and_then(|v| v.first_mut()) {
                p.write(&FAKE_BITSTREAM);
            }
            let planes = c.out.get(*index as usize).map_or(&[][..], |v| &v[..]);
            let flags = if *hold {
                v4l2r::bindings::V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF
            } else {
                0
            };
            v4l2::qbuf(
                &c.video,
                OUT,
                env.mem.v4l2(),
                *index,
                planes,
                QbufArgs {
                    request: Some(req.fd()),
                    ts_us: *ts,
                    bytesused: SCENARIO_BYTESUSED,
                    flags,
                    length: 0,
                },
            )?;
            req.queue()?;
            Ok(())
        }
        Op::DecodeNoRequest(n, i, ts) => {
            let c = get(ctxs, n)?;
            let planes = c.out.get(*i as usize).map_or(&[][..], |v| &v[..]);
            Ok(v4l2::qbuf(
                &c.video,
                OUT,
                env.mem.v4l2(),
                *i,
                planes,
                QbufArgs {
                    ts_us: *ts,
                    bytesused: SCENARIO_BYTESUSED,
                    ..Default::default()
                },
            )?)
        }
        Op::RequestEmpty(_) => {
            let req = Request::alloc(env.media)?;
            Ok(req.queue()?)
        }
        Op::CtrlInvalid(n) => {
            let c = get(ctxs, n)?;
            let target = c
                .codec
                .desc()
                .controls
                .iter()
                .find(|d| d.is_compound())
                .map(|d| d.id)
                .unwrap_or(0);
            Ok(v4l2::s_ext_ctrls(
                &c.video,
                c.codec,
                Which::Current,
                &[(target, vec![0xff; 3])],
            )?)
        }
        Op::Flush(n) => Ok(v4l2::decoder_cmd(
            &get(ctxs, n)?.video,
            v4l2r::bindings::V4L2_DEC_CMD_FLUSH,
        )?),
        Op::Wait(ms) => {
            std::thread::sleep(Duration::from_millis(*ms));
            Ok(())
        }
        Op::Close(n, within) => {
            let c = ctxs
                .remove(n)
                .ok_or_else(|| StepErr::Fail(format!("unknown context {n}")))?;
            let bound = if *within == 0 {
                CLOSE_DEFAULT_MS
            } else {
                *within
            };
            close_within(c, bound).map_err(StepErr::Fail)
        }
        Op::Expect {
            ctx,
            queue,
            index,
            error,
            within_ms,
        } => {
            let c = get(ctxs, ctx)?;
            let bound = (*within_ms).max(env.grace_ms);
            let t0 = Instant::now();
            loop {
                match v4l2::dqbuf(&c.video, qty(*queue), env.mem.v4l2()) {
                    Ok(d) => {
                        if d.index != *index || d.error != *error {
                            return Err(StepErr::Fail(format!(
                                "dequeued {queue:?} {} {}, expected {index} {}",
                                d.index,
                                if d.error { "error" } else { "done" },
                                if *error { "error" } else { "done" }
                            )));
                        }
                        return Ok(());
                    }
                    Err(Errno::EAGAIN) if t0.elapsed() < Duration::from_millis(bound) => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        return Err(StepErr::Fail(format!(
                            "nothing dequeued from {queue:?} within {bound} ms: {}",
                            errno_name(e as i32)
                        )))
                    }
                }
            }
        }
        Op::ExpectEmpty(n, q) => {
            let c = get(ctxs, n)?;
            let t0 = Instant::now();
            loop {
                match v4l2::dqbuf(&c.video, qty(*q), env.mem.v4l2()) {
                    Ok(d) => {
                        return Err(StepErr::Fail(format!(
                            "unexpected {q:?} buffer {} ({})",
                            d.index,
                            if d.error { "error" } else { "done" }
                        )))
                    }
                    Err(Errno::EAGAIN) | Err(Errno::EINVAL) => {}
                    Err(e) => return Err(e.into()),
                }
                if t0.elapsed() >= Duration::from_millis(env.grace_ms) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Op::ExpectInflight(n) => {
            let st = daemon.status().unwrap_or_default();
            notes.push(format!(
                "`expect inflight {n}` skipped: the frontend exposes no in-flight count{}",
                if st.is_empty() {
                    String::new()
                } else {
                    format!(" (test daemon: {st})")
                }
            ));
            Ok(())
        }
    }
}

/// Buffers of a queue after REQBUFS granted `n`.
pub fn alloc_planes(video: &File, ty: u32, mem: Mem, n: u32) -> Result<Vec<Vec<Plane>>, String> {
    (0..n)
        .map(|i| match mem {
            Mem::Mmap => v4l2::mmap_buffer(video, ty, i),
            _ => v4l2::plane_sizes(video, ty)
                .map_err(|e| format!("G_FMT: {e}"))?
                .into_iter()
                .map(|s| Plane::alloc(mem, s as usize))
                .collect(),
        })
        .collect()
}

/// Closes a context on a thread and waits at most `ms` for close() to
/// return (a hung close leaves that thread behind).
fn close_within(c: Ctx, ms: u64) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        drop(c);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_millis(ms)) {
        Ok(()) => Ok(()),
        Err(_) => Err(format!(
            "close() did not return within {ms} ms (still blocked after {:?})",
            t0.elapsed()
        )),
    }
}
