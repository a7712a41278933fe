//! Property-based tests of the device state machine: random interleavings of
//! client operations, daemon results, daemon crash and reattach, garbage,
//! client close and deadline expiry. After every step the invariants of
//! `decoder_core::state` are checked; the number of steps is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use decoder_core::ctrl::ControlValues;
use decoder_core::proto::{self, Message};
use decoder_core::sim::{DaemonMode, Sim};
use decoder_core::state::{
    BufState, BufferInfo, Config, CtxId, Device, Event, Link, Memory, QbufArgs, Queue, ReqId,
    Which, BUF_FLAG_ERROR, BUF_FLAG_M2M_HOLD_CAPTURE_BUF,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};

static STEPS: AtomicU64 = AtomicU64::new(0);
static JOBS_DONE: AtomicU64 = AtomicU64::new(0);
static JOBS_FAILED: AtomicU64 = AtomicU64::new(0);
static FAIL_FAST: AtomicU64 = AtomicU64::new(0);
static DRAINED: AtomicU64 = AtomicU64::new(0);
static TIMEOUTS: AtomicU64 = AtomicU64::new(0);
static REJECTED: AtomicU64 = AtomicU64::new(0);
static RETURNED: AtomicU64 = AtomicU64::new(0);
/// Steps after which some context had more than one job running.
static PIPELINED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
enum Op {
    Open,
    Close(u8),
    Reqbufs(u8, bool, u8),
    Streamon(u8, bool),
    Streamoff(u8, bool),
    QueueCapture(u8, u8),
    Decode(u8, u8, u8, bool),
    Dqbuf(u8, bool),
    Flush(u8),
    /// A request gets a buffer and is then closed (true) or re-initialised
    /// without being queued.
    OrphanRequest(u8, u8, bool),
    DaemonStart,
    DaemonKill,
    DaemonStop,
    DaemonCont,
    DaemonAnswer(bool),
    DaemonGarbage(Vec<u8>),
    DaemonForeign,
    DaemonReplay,
    Advance(u16),
}

/// A random step. With a pipeline (`depth` > 1) a stopped daemon goes on
/// and time passes less often, and more jobs are queued, so that jobs pile
/// up in the daemon more.
fn op(depth: u32) -> impl Strategy<Value = Op> {
    let (cont, advance, capture, decode) = if depth > 1 {
        (1, 1, 10, 12)
    } else {
        (2, 2, 6, 8)
    };
    prop_oneof![
        1 => Just(Op::Open),
        1 => any::<u8>().prop_map(Op::Close),
        1 => (any::<u8>(), any::<bool>(), 0u8..5).prop_map(|(c, q, n)| Op::Reqbufs(c, q, n)),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(c, q)| Op::Streamon(c, q)),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(c, q)| Op::Streamoff(c, q)),
        capture => (any::<u8>(), 0u8..5).prop_map(|(c, i)| Op::QueueCapture(c, i)),
        decode => (any::<u8>(), 0u8..5, 0u8..6, prop::bool::weighted(0.2))
            .prop_map(|(c, i, t, h)| Op::Decode(c, i, t, h)),
        10 => (any::<u8>(), any::<bool>()).prop_map(|(c, q)| Op::Dqbuf(c, q)),
        1 => any::<u8>().prop_map(Op::Flush),
        1 => (any::<u8>(), 0u8..5, any::<bool>()).prop_map(|(c, i, x)| Op::OrphanRequest(c, i, x)),
        2 => Just(Op::DaemonStart),
        1 => Just(Op::DaemonKill),
        1 => Just(Op::DaemonStop),
        cont => Just(Op::DaemonCont),
        4 => any::<bool>().prop_map(Op::DaemonAnswer),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Op::DaemonGarbage),
        1 => Just(Op::DaemonForeign),
        1 => Just(Op::DaemonReplay),
        advance => (0u16..3000).prop_map(Op::Advance),
    ]
}

type BufKey = (CtxId, Queue, u32);

struct Checker {
    sim: Sim,
    ctxs: Vec<CtxId>,
    /// Buffers the client owns (as far as the client knows).
    client_owned: BTreeSet<BufKey>,
    /// Buffers handed to the driver.
    driver_owned: BTreeSet<BufKey>,
    job_done: BTreeSet<u64>,
    dispatched: BTreeSet<u64>,
    answered_ok: BTreeSet<u64>,
    returned: u64,
    /// `Config::pipeline_depth` of the device.
    depth: usize,
    /// Cookie of each context's last completed job.
    last_done: BTreeMap<CtxId, u64>,
}

fn q(b: bool) -> Queue {
    if b {
        Queue::Capture
    } else {
        Queue::Output
    }
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

impl Checker {
    fn new(depth: u32) -> Self {
        Checker {
            sim: Sim::new(Device::new(Config {
                pipeline_depth: depth,
                ..Config::default()
            })),
            ctxs: Vec::new(),
            client_owned: BTreeSet::new(),
            driver_owned: BTreeSet::new(),
            job_done: BTreeSet::new(),
            dispatched: BTreeSet::new(),
            answered_ok: BTreeSet::new(),
            returned: 0,
            depth: depth as usize,
            last_done: BTreeMap::new(),
        }
    }

    fn pick(&self, c: u8) -> Option<CtxId> {
        if self.ctxs.is_empty() {
            None
        } else {
            Some(self.ctxs[c as usize % self.ctxs.len()])
        }
    }

    fn snapshot(&self, except: Option<CtxId>) -> BTreeMap<BufKey, BufferInfo> {
        let mut m = BTreeMap::new();
        for &c in &self.ctxs {
            if Some(c) == except {
                continue;
            }
            for qq in [Queue::Output, Queue::Capture] {
                for i in 0..self.sim.dev.buffer_count(c, qq) {
                    m.insert((c, qq, i), self.sim.dev.buffer(c, qq, i).unwrap());
                }
            }
        }
        m
    }

    fn all_buffers(&self) -> Vec<(BufKey, BufferInfo)> {
        self.snapshot(None).into_iter().collect()
    }

    fn sync_buffer_set(&mut self, c: CtxId, qq: Queue) {
        // After REQBUFS the queue's buffers are all new and client-owned.
        self.client_owned.retain(|k| !(k.0 == c && k.1 == qq));
        self.driver_owned.retain(|k| !(k.0 == c && k.1 == qq));
        for i in 0..self.sim.dev.buffer_count(c, qq) {
            self.client_owned.insert((c, qq, i));
        }
    }

    fn give(&mut self, k: BufKey) -> Result<(), TestCaseError> {
        if !self.client_owned.remove(&k) {
            return Err(fail(format!("queued {k:?} which the client did not own")));
        }
        self.driver_owned.insert(k);
        Ok(())
    }

    fn take_back(&mut self, k: BufKey, how: &str) -> Result<(), TestCaseError> {
        if !self.driver_owned.remove(&k) {
            return Err(fail(format!(
                "{how} returned {k:?} which was not queued (second return?)"
            )));
        }
        self.client_owned.insert(k);
        self.returned += 1;
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.sim.now;
        let mut client_ctx = None;
        let mut returning = false;
        let before = self.all_buffers();
        match op {
            Op::Open => {
                if self.ctxs.len() < 3 {
                    if let Some(c) = self.sim.dev.open_context() {
                        self.ctxs.push(c);
                    }
                }
            }
            Op::Close(c) => {
                if let Some(c) = self.pick(*c) {
                    self.sim.dev.close_context(c, now);
                    self.ctxs.retain(|x| *x != c);
                    let mine: Vec<BufKey> = self
                        .driver_owned
                        .iter()
                        .filter(|k| k.0 == c)
                        .copied()
                        .collect();
                    for k in mine {
                        self.take_back(k, "close")?;
                    }
                    self.client_owned.retain(|k| k.0 != c);
                    client_ctx = Some(c);
                }
            }
            Op::Reqbufs(c, qq, n) => {
                if let Some(c) = self.pick(*c) {
                    client_ctx = Some(c);
                    if self
                        .sim
                        .dev
                        .reqbufs(c, q(*qq), Memory::Mmap, u32::from(*n))
                        .is_ok()
                    {
                        let still: Vec<BufKey> = self
                            .driver_owned
                            .iter()
                            .filter(|k| k.0 == c && k.1 == q(*qq))
                            .copied()
                            .collect();
                        if !still.is_empty() {
                            return Err(fail(format!("REQBUFS freed queued buffers {still:?}")));
                        }
                        self.sync_buffer_set(c, q(*qq));
                    }
                    returning = true;
                }
            }
            Op::Streamon(c, qq) => {
                if let Some(c) = self.pick(*c) {
                    client_ctx = Some(c);
                    let _ = self.sim.dev.streamon(c, q(*qq), now);
                }
            }
            Op::Streamoff(c, qq) => {
                if let Some(c) = self.pick(*c) {
                    client_ctx = Some(c);
                    returning = true;
                    self.sim
                        .dev
                        .streamoff(c, q(*qq), now)
                        .map_err(|e| fail(format!("streamoff: {e}")))?;
                }
            }
            Op::QueueCapture(c, i) => {
                if let Some(c) = self.pick(*c) {
                    client_ctx = Some(c);
                    let k = (c, Queue::Capture, u32::from(*i));
                    if self
                        .sim
                        .dev
                        .qbuf(
                            c,
                            Queue::Capture,
                            u32::from(*i),
                            Memory::Mmap,
                            QbufArgs::default(),
                            now,
                        )
                        .is_ok()
                    {
                        self.give(k)?;
                    }
                }
            }
            Op::Decode(c, i, ts, hold) => {
                if let Some(c) = self.pick(*c) {
                    client_ctx = Some(c);
                    self.decode(c, u32::from(*i), u64::from(*ts) * 1000, *hold)?;
                }
            }
            Op::Dqbuf(c, qq) => {
                if let Some(c) = self.pick(*c) {
                    client_ctx = Some(c);
                    if let Ok(d) = self.sim.dev.dqbuf(c, q(*qq)) {
                        self.take_back((c, q(*qq), d.index), "DQBUF")?;
                        let _ = d.flags & BUF_FLAG_ERROR;
                    }
                }
            }
            Op::Flush(c) => {
                if let Some(c) = self.pick(*c) {
                    client_ctx = Some(c);
                    let _ = self.sim.dev.decoder_flush(c);
                }
            }
            Op::OrphanRequest(c, i, close) => {
                if let Some(c) = self.pick(*c) {
                    client_ctx = Some(c);
                    returning = true;
                    let r = self
                        .sim
                        .dev
                        .request_alloc()
                        .map_err(|e| fail(e.to_string()))?;
                    let args = QbufArgs {
                        bytesused: [10, 0, 0, 0],
                        request: Some(r),
                        ..Default::default()
                    };
                    let k = (c, Queue::Output, u32::from(*i));
                    if self
                        .sim
                        .dev
                        .qbuf(c, Queue::Output, u32::from(*i), Memory::Mmap, args, now)
                        .is_ok()
                    {
                        self.give(k)?;
                    }
                    if *close {
                        self.sim
                            .dev
                            .request_close(r)
                            .map_err(|e| fail(e.to_string()))?;
                    } else {
                        self.sim
                            .dev
                            .request_reinit(r)
                            .map_err(|e| fail(e.to_string()))?;
                        self.sim
                            .dev
                            .request_close(r)
                            .map_err(|e| fail(e.to_string()))?;
                    }
                }
            }
            Op::DaemonStart => self.sim.daemon_start(),
            Op::DaemonKill => self.sim.daemon_kill(),
            Op::DaemonStop => self.sim.daemon.mode = DaemonMode::Stopped,
            Op::DaemonCont => {
                self.sim.daemon.mode = DaemonMode::Running;
            }
            Op::DaemonAnswer(ok) => {
                self.sim.daemon_answer_one(*ok);
            }
            Op::DaemonGarbage(bytes) => {
                self.sim.daemon_send_raw(bytes);
            }
            Op::DaemonForeign => {
                self.sim.pump_rx();
                if let Some(j) = self.sim.daemon.pending.front().copied() {
                    let r = proto::JobResult {
                        ctx_id: j.job.ctx_id ^ 0x8000,
                        cookie: j.job.cookie,
                        ..Default::default()
                    };
                    self.sim.daemon_send_raw(&Message::Result(r).to_bytes(0));
                }
            }
            Op::DaemonReplay => {
                if let Some((_, r)) = self.sim.daemon.answered.first().copied() {
                    self.sim.daemon_send_raw(&Message::Result(r).to_bytes(0));
                }
            }
            Op::Advance(ms) => self.sim.advance(u64::from(*ms) * 1_000_000),
        }
        self.sim.pump();
        self.collect_events()?;
        self.check(op, client_ctx, returning, &before)
    }

    fn decode(&mut self, c: CtxId, i: u32, ts: u64, hold: bool) -> Result<(), TestCaseError> {
        let now = self.sim.now;
        let r: ReqId = self
            .sim
            .dev
            .request_alloc()
            .map_err(|e| fail(e.to_string()))?;
        let codec = self.sim.dev.codec(c).unwrap();
        let defaults = ControlValues::defaults(codec);
        let ctrls: Vec<(u32, &[u8])> = defaults.iter().collect();
        self.sim
            .dev
            .set_controls(c, Which::Request(r), &ctrls, false)
            .map_err(|e| fail(format!("default controls refused: {e}")))?;
        let args = QbufArgs {
            bytesused: [100, 0, 0, 0],
            timestamp: ts,
            flags: if hold {
                BUF_FLAG_M2M_HOLD_CAPTURE_BUF
            } else {
                0
            },
            request: Some(r),
            memory_changed: false,
        };
        let k = (c, Queue::Output, i);
        if self
            .sim
            .dev
            .qbuf(c, Queue::Output, i, Memory::Mmap, args, now)
            .is_ok()
        {
            self.give(k)?;
            self.sim
                .dev
                .request_queue(r, now)
                .map_err(|e| fail(format!("request with one buffer refused: {e}")))?;
        }
        self.sim
            .dev
            .request_close(r)
            .map_err(|e| fail(e.to_string()))?;
        Ok(())
    }

    fn collect_events(&mut self) -> Result<(), TestCaseError> {
        for j in &self.sim.daemon.pending {
            self.dispatched.insert(j.job.cookie);
        }
        for (_, r) in &self.sim.daemon.answered {
            self.dispatched.insert(r.cookie);
            if r.status == proto::DV_STATUS_DONE {
                self.answered_ok.insert(r.cookie);
            }
        }
        while let Some(ev) = self.sim.dev.poll_event() {
            if let Event::JobDone { ctx, cookie, ok } = ev {
                if !self.job_done.insert(cookie) {
                    return Err(fail(format!("job {cookie} completed twice")));
                }
                // a context's jobs complete in dispatch (cookie) order
                if let Some(last) = self.last_done.insert(ctx, cookie) {
                    if last > cookie {
                        return Err(fail(format!(
                            "job {cookie} of {ctx:?} completed after job {last}"
                        )));
                    }
                }
                if ok && !self.answered_ok.contains(&cookie) {
                    return Err(fail(format!(
                        "job {cookie} completed DONE without a DONE result"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check(
        &mut self,
        op: &Op,
        client_ctx: Option<CtxId>,
        returning: bool,
        before: &[(BufKey, BufferInfo)],
    ) -> Result<(), TestCaseError> {
        STEPS.fetch_add(1, Ordering::Relaxed);
        // 6. isolation: a client operation on one context leaves the others alone.
        if let Some(c) = client_ctx {
            let now_others = self.snapshot(Some(c));
            let before_others: BTreeMap<BufKey, BufferInfo> =
                before.iter().filter(|(k, _)| k.0 != c).cloned().collect();
            let now_others: BTreeMap<BufKey, BufferInfo> = now_others
                .into_iter()
                .filter(|(k, _)| before_others.contains_key(k))
                .collect();
            if now_others != before_others {
                return Err(fail(format!(
                    "{op:?} on {c:?} changed another context's buffers"
                )));
            }
        }
        // 1. buffers come back only through DQBUF or a returning operation.
        let after = self.all_buffers();
        for (k, info) in &after {
            let dequeued = info.state == BufState::Dequeued;
            if dequeued && self.driver_owned.contains(k) {
                if returning && Some(k.0) == client_ctx {
                    self.take_back(*k, "a returning operation")?;
                } else {
                    return Err(fail(format!(
                        "{op:?}: {k:?} went back to the client without DQBUF"
                    )));
                }
            } else if !dequeued && self.client_owned.contains(k) {
                return Err(fail(format!(
                    "{op:?}: client-owned {k:?} is {:?} in the driver",
                    info.state
                )));
            }
        }
        // at most `depth` jobs run per context (one with depth 1, the m2m model)
        for &c in &self.ctxs {
            let active = (0..self.sim.dev.buffer_count(c, Queue::Output))
                .filter(|i| {
                    self.sim.dev.buffer(c, Queue::Output, *i).unwrap().state == BufState::Active
                })
                .count();
            if active > self.depth {
                return Err(fail(format!("{op:?}: {active} jobs running on {c:?}")));
            }
            if active > 1 {
                PIPELINED.fetch_add(1, Ordering::Relaxed);
            }
            // a job runs only while both queues stream
            let dev = &self.sim.dev;
            if active > 0
                && !(dev.is_streaming(c, Queue::Output) && dev.is_streaming(c, Queue::Capture))
            {
                return Err(fail(format!(
                    "{op:?}: job running on {c:?} after STREAMOFF"
                )));
            }
        }
        // 4. with no daemon, nothing is active and no ready job waits.
        let dev = &self.sim.dev;
        if dev.link() == Link::Detached {
            for &c in &self.ctxs {
                let active_out = (0..dev.buffer_count(c, Queue::Output))
                    .any(|i| dev.buffer(c, Queue::Output, i).unwrap().state == BufState::Active);
                if active_out {
                    return Err(fail(format!("{op:?}: job active on {c:?} with no daemon")));
                }
                let p = dev.poll_state(c);
                let _ = p;
            }
            if dev.inflight_count() > 0 {
                return Err(fail(format!(
                    "{op:?}: {} jobs in flight with no daemon",
                    dev.inflight_count()
                )));
            }
        }
        // every wait is bounded
        if let Some(d) = dev.next_deadline() {
            let bound = self.sim.now + dev.config().job_timeout.max(dev.config().handshake_timeout);
            if d > bound {
                return Err(fail(format!("deadline {d} beyond {bound}")));
            }
        }
        Ok(())
    }

    /// Ends the case: every context closed, time passes; nothing may remain.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for c in self.ctxs.clone() {
            self.apply(&Op::Close(
                self.ctxs.iter().position(|x| *x == c).unwrap() as u8
            ))?;
        }
        let t = self.sim.dev.config().job_timeout;
        self.sim.advance(2 * t + 1);
        self.collect_events()?;
        if self.sim.dev.inflight_count() != 0 {
            return Err(fail(format!(
                "{} jobs still in flight after close and deadlines",
                self.sim.dev.inflight_count()
            )));
        }
        if !self.driver_owned.is_empty() {
            return Err(fail(format!(
                "buffers never returned: {:?}",
                self.driver_owned
            )));
        }
        let missing: Vec<&u64> = self.dispatched.difference(&self.job_done).collect();
        if !missing.is_empty() {
            return Err(fail(format!(
                "dispatched jobs never completed: {missing:?}"
            )));
        }
        if let Some(v) = self.sim.daemon.violations.first() {
            return Err(fail(format!("protocol order: {v}")));
        }
        if self.sim.dev.request_count() != 0 {
            return Err(fail(format!(
                "{} requests leaked",
                self.sim.dev.request_count()
            )));
        }
        Ok(())
    }
}

fn run_case(ops: Vec<Op>, depth: u32) -> Result<(), TestCaseError> {
    let mut c = Checker::new(depth);
    // Most cases start from two streaming contexts and a daemon, so that the
    // random part spends its steps on jobs rather than on setup.
    if !ops.len().is_multiple_of(4) {
        let prelude = [
            Op::Open,
            Op::Open,
            Op::Reqbufs(0, false, 4),
            Op::Reqbufs(0, true, 4),
            Op::Reqbufs(1, false, 3),
            Op::Reqbufs(1, true, 3),
            Op::Streamon(0, false),
            Op::Streamon(0, true),
            Op::Streamon(1, false),
            Op::Streamon(1, true),
            Op::DaemonStart,
        ];
        for op in &prelude {
            c.apply(op)?;
        }
        // With a pipeline, half of those start with the daemon stopped, so
        // that jobs pile up in it until it answers them one by one or goes on.
        if depth > 1 && ops.len() % 2 == 1 {
            c.apply(&Op::DaemonStop)?;
        }
    }
    for op in &ops {
        c.apply(op)?;
    }
    c.finish()?;
    let st = c.sim.dev.stats();
    JOBS_DONE.fetch_add(st.done, Ordering::Relaxed);
    JOBS_FAILED.fetch_add(st.errors, Ordering::Relaxed);
    FAIL_FAST.fetch_add(st.fail_fast, Ordering::Relaxed);
    DRAINED.fetch_add(st.drained, Ordering::Relaxed);
    TIMEOUTS.fetch_add(st.timeouts, Ordering::Relaxed);
    REJECTED.fetch_add(
        st.rejected_unknown + st.rejected_foreign + st.protocol_errors,
        Ordering::Relaxed,
    );
    RETURNED.fetch_add(c.returned, Ordering::Relaxed);
    Ok(())
}

#[test]
fn random_interleavings_keep_every_invariant() {
    random_interleavings(1, 1500, 100_000);
}

/// The same with two jobs of a context in flight at once, as the embedded
/// stack runs (`Config::pipeline_depth`).
#[test]
fn random_interleavings_keep_every_invariant_with_two_jobs_in_flight() {
    random_interleavings(2, 2000, 200_000);
}

/// The two runs share the step and job counters: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn random_interleavings(depth: u32, default_cases: u32, min_steps: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for a in [
        &STEPS,
        &JOBS_DONE,
        &JOBS_FAILED,
        &FAIL_FAST,
        &DRAINED,
        &TIMEOUTS,
        &REJECTED,
        &RETURNED,
        &PIPELINED,
    ] {
        a.store(0, Ordering::Relaxed);
    }
    let cases: u32 = std::env::var("DAEDALUS_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(depth), 1..220), |ops| {
        run_case(ops, depth)
    });
    let steps = STEPS.load(Ordering::Relaxed);
    if let Err(e) = result {
        panic!("{e}");
    }
    println!(
        "state machine (pipeline depth {depth}): {steps} random steps in {cases} cases, every invariant held"
    );
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "  jobs done {}, failed {} (fail-fast {}, drained {}, timed out {}), bad results rejected {}, buffers returned {}",
        l(&JOBS_DONE), l(&JOBS_FAILED), l(&FAIL_FAST), l(&DRAINED), l(&TIMEOUTS), l(&REJECTED), l(&RETURNED)
    );
    let pipelined = l(&PIPELINED);
    println!("  steps with more than one job of a context running: {pipelined}");
    if cases >= default_cases {
        assert!(steps >= min_steps, "only {steps} steps");
        // With a pipeline, a good many steps must have had it full.
        let enough = if depth > 1 {
            pipelined >= 100
        } else {
            pipelined == 0
        };
        assert!(
            enough,
            "depth {depth}: {pipelined} steps with more than one job of a context running"
        );
    }
}

#[test]
fn the_checker_catches_a_double_return() {
    // The invariant machinery must be able to fail.
    let mut c = Checker::new(1);
    c.apply(&Op::Open).unwrap();
    c.apply(&Op::Reqbufs(0, true, 1)).unwrap();
    let k = (c.ctxs[0], Queue::Capture, 0);
    assert!(c.take_back(k, "test").is_err());
    c.give(k).unwrap();
    assert!(c.give(k).is_err());
}
