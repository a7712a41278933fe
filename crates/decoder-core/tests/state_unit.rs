//! Unit tests: one or more per transition of `decoder_core::state::Device`
//! and per rejected input, with the errno V4L2 clients see.

use decoder_core::ctrl::{libc_errno as e, Codec, ControlValues};
use decoder_core::fmt::{self, PixFormat};
use decoder_core::proto::{self, Message};
use decoder_core::sim::{DaemonMode, Sim};
use decoder_core::state::*;

const MS: u64 = 1_000_000;

fn sim() -> Sim {
    Sim::new(Device::new(Config::default()))
}

/// A streaming context with `n` buffers per queue.
fn streaming(s: &mut Sim, n: u32) -> CtxId {
    let c = s.dev.open_context().unwrap();
    let now = s.now;
    for q in [Queue::Output, Queue::Capture] {
        assert_eq!(s.dev.reqbufs(c, q, Memory::Mmap, n), Ok(n));
        s.dev.streamon(c, q, now).unwrap();
    }
    c
}

fn decode(s: &mut Sim, c: CtxId, i: u32, ts: u64, flags: u32) -> Result<ReqId, i32> {
    decode_with(s, c, i, ts, flags, &[])
}

/// [`decode`] with `ctrls` set in the request before it is queued.
fn decode_with(
    s: &mut Sim,
    c: CtxId,
    i: u32,
    ts: u64,
    flags: u32,
    ctrls: &[(u32, &[u8])],
) -> Result<ReqId, i32> {
    let now = s.now;
    let r = s.dev.request_alloc().map_err(|e| e.errno())?;
    if !ctrls.is_empty() {
        s.dev
            .set_controls(c, Which::Request(r), ctrls, false)
            .map_err(|e| e.errno())?;
    }
    let args = QbufArgs {
        bytesused: [100, 0, 0, 0],
        timestamp: ts,
        flags,
        request: Some(r),
        memory_changed: false,
    };
    s.dev
        .qbuf(c, Queue::Output, i, Memory::Mmap, args, now)
        .map_err(|e| e.errno())?;
    s.dev.request_queue(r, now).map_err(|e| e.errno())?;
    s.pump();
    Ok(r)
}

fn qcap(s: &mut Sim, c: CtxId, i: u32) {
    let now = s.now;
    s.dev
        .qbuf(c, Queue::Capture, i, Memory::Mmap, QbufArgs::default(), now)
        .unwrap();
    s.pump();
}

fn sent(s: &mut Sim) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    while let Some(o) = s.dev.poll_transmit() {
        v.push(o.bytes);
    }
    v
}

#[test]
fn open_has_defaults_and_close_forgets() {
    let mut s = sim();
    let c = s.dev.open_context().unwrap();
    assert_eq!(s.dev.codec(c), Some(Codec::H264));
    let f = s.dev.format(c, Queue::Output).unwrap();
    assert_eq!(f.fourcc, fmt::PIX_FMT_H264_SLICE);
    assert_eq!(
        s.dev.format(c, Queue::Capture).unwrap().fourcc,
        fmt::PIX_FMT_NV12
    );
    s.dev.close_context(c, 0);
    assert!(s.dev.format(c, Queue::Output).is_none());
    assert_eq!(
        s.dev.reqbufs(c, Queue::Output, Memory::Mmap, 1),
        Err(BufError::NoContext)
    );
}

#[test]
fn context_limit() {
    let mut d = Device::new(Config {
        max_contexts: 2,
        ..Config::default()
    });
    assert!(d.open_context().is_some());
    assert!(d.open_context().is_some());
    assert!(d.open_context().is_none());
}

#[test]
fn set_format_selects_codec_and_is_busy_with_buffers() {
    let mut s = sim();
    let c = s.dev.open_context().unwrap();
    let want = PixFormat {
        fourcc: fmt::PIX_FMT_VP9_FRAME,
        width: 176,
        height: 100,
        ..Default::default()
    };
    let got = s.dev.set_format(c, Queue::Output, want).unwrap();
    assert_eq!(got.fourcc, fmt::PIX_FMT_VP9_FRAME);
    assert_eq!(s.dev.codec(c), Some(Codec::Vp9));
    let cap = s.dev.format(c, Queue::Capture).unwrap();
    assert_eq!((cap.width, cap.height), (176, 112));
    s.dev.reqbufs(c, Queue::Capture, Memory::Mmap, 1).unwrap();
    let e = s.dev.set_format(c, Queue::Output, want).unwrap_err();
    assert_eq!(e.errno(), e::EBUSY);
    assert_eq!(
        s.dev.set_format(c, Queue::Capture, cap).unwrap_err(),
        FmtError::Busy
    );
}

#[test]
fn reqbufs_rules() {
    let mut s = sim();
    let c = s.dev.open_context().unwrap();
    // USERPTR is off in the default (kernel-like) config
    assert_eq!(
        s.dev
            .reqbufs(c, Queue::Output, Memory::Userptr, 2)
            .unwrap_err()
            .errno(),
        e::EINVAL
    );
    assert_eq!(s.dev.reqbufs(c, Queue::Output, Memory::Mmap, 100), Ok(32));
    assert_eq!(s.dev.reqbufs(c, Queue::Output, Memory::Dmabuf, 0), Ok(0));
    assert_eq!(s.dev.buffer_count(c, Queue::Output), 0);
    s.dev.reqbufs(c, Queue::Capture, Memory::Mmap, 2).unwrap();
    s.dev.streamon(c, Queue::Capture, 0).unwrap();
    assert_eq!(
        s.dev
            .reqbufs(c, Queue::Capture, Memory::Mmap, 4)
            .unwrap_err()
            .errno(),
        e::EBUSY
    );
    s.dev.streamoff(c, Queue::Capture, 0).unwrap();
    qcap(&mut s, c, 0);
    assert_eq!(
        s.dev.reqbufs(c, Queue::Capture, Memory::Mmap, 4),
        Err(BufError::Busy("buffers in use"))
    );
}

#[test]
fn create_bufs_appends_and_checks_memory() {
    let mut s = sim();
    let c = s.dev.open_context().unwrap();
    s.dev.reqbufs(c, Queue::Capture, Memory::Mmap, 2).unwrap();
    assert_eq!(
        s.dev.create_bufs(c, Queue::Capture, Memory::Mmap, 3),
        Ok((2, 3))
    );
    assert_eq!(s.dev.buffer_count(c, Queue::Capture), 5);
    assert!(s
        .dev
        .create_bufs(c, Queue::Capture, Memory::Dmabuf, 1)
        .is_err());
    assert_eq!(
        s.dev.create_bufs(c, Queue::Capture, Memory::Mmap, 100),
        Ok((5, 27))
    );
    let b = s.dev.buffer(c, Queue::Capture, 0).unwrap();
    let f = s.dev.format(c, Queue::Capture).unwrap();
    assert_eq!(b.length[0], f.planes[0].sizeimage);
}

#[test]
fn qbuf_rejections() {
    let mut s = Sim::new(Device::new(Config {
        requests_required: true,
        ..Config::default()
    }));
    let c = streaming(&mut s, 2);
    let now = s.now;
    let q = |s: &mut Sim, qq, i, m, a| s.dev.qbuf(c, qq, i, m, a, now).map_err(|e| e.errno());
    assert_eq!(
        q(&mut s, Queue::Capture, 9, Memory::Mmap, QbufArgs::default()),
        Err(e::EINVAL)
    );
    assert_eq!(
        q(
            &mut s,
            Queue::Capture,
            0,
            Memory::Dmabuf,
            QbufArgs::default()
        ),
        Err(e::EINVAL)
    );
    // OUTPUT requires a request here (EBADR), CAPTURE refuses one (EPERM,
    // as v4l2_m2m_qbuf() does)
    assert_eq!(
        q(&mut s, Queue::Output, 0, Memory::Mmap, QbufArgs::default()),
        Err(e::EBADR)
    );
    let r = s.dev.request_alloc().unwrap();
    let with_req = QbufArgs {
        request: Some(r),
        ..Default::default()
    };
    assert_eq!(
        q(&mut s, Queue::Capture, 0, Memory::Mmap, with_req),
        Err(e::EPERM)
    );
    // bytesused beyond the plane
    let big = QbufArgs {
        bytesused: [u32::MAX, 0, 0, 0],
        request: Some(r),
        ..Default::default()
    };
    assert_eq!(
        q(&mut s, Queue::Output, 0, Memory::Mmap, big),
        Err(e::EINVAL)
    );
    // double queue
    assert_eq!(
        q(&mut s, Queue::Capture, 1, Memory::Mmap, QbufArgs::default()),
        Ok(())
    );
    assert_eq!(
        q(&mut s, Queue::Capture, 1, Memory::Mmap, QbufArgs::default()),
        Err(e::EINVAL)
    );
    // a request of another context
    let c2 = streaming(&mut s, 1);
    assert_eq!(q(&mut s, Queue::Output, 0, Memory::Mmap, with_req), Ok(()));
    let other = s
        .dev
        .qbuf(c2, Queue::Output, 0, Memory::Mmap, with_req, now)
        .unwrap_err();
    assert_eq!(other.errno(), e::EINVAL);
    // a queued request takes no more buffers
    s.dev.request_queue(r, now).unwrap();
    let a2 = QbufArgs {
        request: Some(r),
        ..Default::default()
    };
    assert_eq!(q(&mut s, Queue::Output, 1, Memory::Mmap, a2), Err(e::EBUSY));
}

#[test]
fn dqbuf_not_streaming_and_would_block() {
    let mut s = sim();
    let c = s.dev.open_context().unwrap();
    s.dev.reqbufs(c, Queue::Capture, Memory::Mmap, 1).unwrap();
    assert_eq!(
        s.dev.dqbuf(c, Queue::Capture).unwrap_err().errno(),
        e::EINVAL
    );
    s.dev.streamon(c, Queue::Capture, 0).unwrap();
    assert_eq!(
        s.dev.dqbuf(c, Queue::Capture).unwrap_err().errno(),
        e::EAGAIN
    );
}

#[test]
fn streamon_needs_buffers() {
    let mut s = sim();
    let c = s.dev.open_context().unwrap();
    assert_eq!(
        s.dev.streamon(c, Queue::Output, 0).unwrap_err().errno(),
        e::EINVAL
    );
}

#[test]
fn request_validation() {
    let mut s = sim();
    let c = streaming(&mut s, 2);
    let now = s.now;
    let r = s.dev.request_alloc().unwrap();
    assert_eq!(s.dev.request_queue(r, now).unwrap_err().errno(), e::ENOENT);
    // controls only, no buffer
    let v = ControlValues::defaults(Codec::H264);
    let ctrls: Vec<(u32, &[u8])> = v.iter().take(1).collect();
    if !ctrls.is_empty() {
        s.dev
            .set_controls(c, Which::Request(r), &ctrls, false)
            .unwrap();
        assert_eq!(s.dev.request_queue(r, now).unwrap_err().errno(), e::ENOENT);
    }
    // two buffers
    for i in 0..2 {
        let a = QbufArgs {
            bytesused: [1, 0, 0, 0],
            request: Some(r),
            ..Default::default()
        };
        s.dev
            .qbuf(c, Queue::Output, i, Memory::Mmap, a, now)
            .unwrap();
    }
    assert_eq!(s.dev.request_queue(r, now).unwrap_err().errno(), e::EINVAL);
    // reinit returns both buffers to the client
    s.dev.request_reinit(r).unwrap();
    for i in 0..2 {
        assert_eq!(
            s.dev.buffer(c, Queue::Output, i).unwrap().state,
            BufState::Dequeued
        );
    }
    assert_eq!(s.dev.request_state(r), Some(ReqState::Idle));
    s.dev.request_close(r).unwrap();
    assert_eq!(s.dev.request_state(r), None);
    assert_eq!(s.dev.request_reinit(r).unwrap_err().errno(), e::EINVAL);
}

#[test]
fn queued_request_is_busy_then_completes_and_reinits() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 1);
    qcap(&mut s, c, 0);
    let r = decode(&mut s, c, 0, 7, 0).unwrap();
    assert_eq!(s.dev.request_state(r), Some(ReqState::Queued));
    assert_eq!(s.dev.request_reinit(r).unwrap_err().errno(), e::EBUSY);
    assert_eq!(s.dev.request_queue(r, 0).unwrap_err().errno(), e::EBUSY);
    let v = ControlValues::defaults(Codec::H264);
    let ctrls: Vec<(u32, &[u8])> = v.iter().take(1).collect();
    if !ctrls.is_empty() {
        let err = s
            .dev
            .set_controls(c, Which::Request(r), &ctrls, false)
            .unwrap_err();
        assert_eq!(err.errno(), e::EBUSY);
    }
    s.daemon.mode = DaemonMode::Running;
    s.pump();
    assert_eq!(s.dev.request_state(r), Some(ReqState::Complete));
    let evs: Vec<Event> = std::iter::from_fn(|| s.dev.poll_event()).collect();
    assert!(evs.contains(&Event::RequestDone(r)));
    s.dev.request_reinit(r).unwrap();
    assert_eq!(s.dev.request_state(r), Some(ReqState::Idle));
}

#[test]
fn closing_a_queued_request_keeps_it_until_completion() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 1);
    qcap(&mut s, c, 0);
    let r = decode(&mut s, c, 0, 7, 0).unwrap();
    s.dev.request_close(r).unwrap();
    assert_eq!(s.dev.request_state(r), Some(ReqState::Queued));
    s.daemon.mode = DaemonMode::Running;
    s.pump();
    assert_eq!(s.dev.request_state(r), None);
    assert_eq!(s.dev.request_count(), 0);
}

#[test]
fn controls_all_or_nothing_and_unknown_ids() {
    let mut s = sim();
    let c = s.dev.open_context().unwrap();
    let err = s
        .dev
        .set_controls(c, Which::Current, &[(0xdead_beef, &[0u8; 4][..])], false)
        .unwrap_err();
    assert_eq!(err.errno(), e::EINVAL);
    let v = ControlValues::defaults(Codec::H264);
    let Some((id, good)) = v.iter().next() else {
        return;
    };
    let bad = vec![0u8; good.len() + 1];
    let err = s
        .dev
        .set_controls(c, Which::Current, &[(id, good), (id, &bad)], false)
        .unwrap_err();
    match err {
        CtrlsError::Ctrl { index, .. } => assert_eq!(index, 1),
        other => panic!("{other:?}"),
    }
    // TRY stores nothing, SET stores
    assert_eq!(s.dev.get_control(c, Which::Current, id).unwrap(), good);
    s.dev
        .set_controls(c, Which::Current, &[(id, good)], true)
        .unwrap();
    s.dev
        .set_controls(c, Which::Current, &[(id, good)], false)
        .unwrap();
    assert!(s.dev.get_control(c, Which::Current, 0x1234).is_err());
}

#[test]
fn request_controls_apply_at_dispatch_and_reach_the_daemon() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 1);
    qcap(&mut s, c, 0);
    let defaults = ControlValues::defaults(Codec::H264);
    let Some((id, v)) = defaults.iter().next() else {
        return;
    };
    let now = s.now;
    let r = s.dev.request_alloc().unwrap();
    s.dev
        .set_controls(c, Which::Request(r), &[(id, v)], false)
        .unwrap();
    let a = QbufArgs {
        bytesused: [5, 0, 0, 0],
        timestamp: 42,
        request: Some(r),
        ..Default::default()
    };
    s.dev
        .qbuf(c, Queue::Output, 0, Memory::Mmap, a, now)
        .unwrap();
    s.dev.request_queue(r, now).unwrap();
    let msgs = sent(&mut s);
    let job = msgs
        .iter()
        .find_map(|b| match proto::decode(b).unwrap() {
            Message::Decode(j, ctrls) => Some((j, ctrls.iter().map(|c| c.id).collect::<Vec<_>>())),
            _ => None,
        })
        .expect("a decode job was sent");
    assert_eq!(job.0.timestamp, 42);
    assert_eq!(job.0.bytesused, 5);
    assert!(job.1.contains(&id));
    assert_eq!(
        s.dev
            .get_control(c, Which::Request(r), id)
            .unwrap_err()
            .errno(),
        e::EBUSY
    );
}

#[test]
fn registration_precedes_the_job_and_is_redone_when_memory_changes() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 1);
    let kinds = |v: &[Vec<u8>]| -> Vec<proto::MsgKind> {
        v.iter().map(|b| proto::decode(b).unwrap().kind()).collect()
    };
    let now = s.now;
    s.dev
        .qbuf(c, Queue::Capture, 0, Memory::Mmap, QbufArgs::default(), now)
        .unwrap();
    let r = s.dev.request_alloc().unwrap();
    let a = QbufArgs {
        bytesused: [5, 0, 0, 0],
        request: Some(r),
        ..Default::default()
    };
    s.dev
        .qbuf(c, Queue::Output, 0, Memory::Mmap, a, now)
        .unwrap();
    s.dev.request_queue(r, now).unwrap();
    let first = sent(&mut s);
    use proto::MsgKind::*;
    assert_eq!(
        kinds(&first),
        vec![CtxOpen, BufRegister, BufRegister, Decode]
    );
    // answer, requeue the same buffers: nothing is registered again
    let cookie = match proto::decode(&first[3]).unwrap() {
        Message::Decode(j, _) => j.cookie,
        _ => unreachable!(),
    };
    let res = proto::JobResult {
        ctx_id: c.0,
        cookie,
        ..Default::default()
    };
    s.dev
        .daemon_receive(&Message::Result(res).to_bytes(0), now)
        .unwrap();
    s.dev.dqbuf(c, Queue::Capture).unwrap();
    s.dev.dqbuf(c, Queue::Output).unwrap();
    let changed = QbufArgs {
        memory_changed: true,
        ..Default::default()
    };
    s.dev
        .qbuf(c, Queue::Capture, 0, Memory::Mmap, changed, now)
        .unwrap();
    let r = s.dev.request_alloc().unwrap();
    let a = QbufArgs {
        bytesused: [5, 0, 0, 0],
        request: Some(r),
        ..Default::default()
    };
    s.dev
        .qbuf(c, Queue::Output, 0, Memory::Mmap, a, now)
        .unwrap();
    s.dev.request_queue(r, now).unwrap();
    assert_eq!(kinds(&sent(&mut s)), vec![BufRegister, Decode]);
}

#[test]
fn output_without_request_runs_with_current_controls() {
    // The default, as on visl and the kernel module.
    let mut s = sim();
    s.daemon_start();
    let c = streaming(&mut s, 2);
    qcap(&mut s, c, 0);
    let now = s.now;
    let args = QbufArgs {
        bytesused: [100, 0, 0, 0],
        timestamp: 7_000,
        ..Default::default()
    };
    s.dev
        .qbuf(c, Queue::Output, 1, Memory::Mmap, args, now)
        .unwrap();
    s.pump();
    let d = s.dev.dqbuf(c, Queue::Capture).unwrap();
    assert_eq!((d.index, d.timestamp), (0, 7_000));
    assert_eq!(d.flags & BUF_FLAG_ERROR, 0);
    assert_eq!(s.dev.dqbuf(c, Queue::Output).unwrap().index, 1);
}

#[test]
fn result_copies_timestamp_flags_and_bytesused() {
    let mut s = sim();
    s.daemon_start();
    let c = streaming(&mut s, 2);
    qcap(&mut s, c, 1);
    decode(&mut s, c, 0, 99_000, 0x08).unwrap();
    let d = s.dev.dqbuf(c, Queue::Capture).unwrap();
    assert_eq!(d.index, 1);
    assert_eq!(d.timestamp, 99_000);
    assert_eq!(d.flags & 0x08, 0x08);
    assert_eq!(d.flags & BUF_FLAG_ERROR, 0);
    let f = s.dev.format(c, Queue::Capture).unwrap();
    // the test daemon reports 0 bytes: the driver reports the full plane
    assert_eq!(d.bytesused[0], f.planes[0].sizeimage);
    assert_eq!(d.sequence, 0);
    let o = s.dev.dqbuf(c, Queue::Output).unwrap();
    assert_eq!(o.bytesused[0], 100);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 1, 100_000, 0).unwrap();
    assert_eq!(s.dev.dqbuf(c, Queue::Capture).unwrap().sequence, 1);
}

#[test]
fn references_resolve_to_capture_buffers_by_timestamp() {
    // H.264's reference_timestamps reads the decode params' DPB; with the
    // default (empty) DPB there are none, so check the message field count.
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 2);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 1, 0).unwrap();
    s.pump_rx();
    let j = s.daemon.pending.front().unwrap().job;
    assert_eq!(j.num_refs, 0);
    assert!(j.refs.iter().all(|r| *r == proto::RefEntry::default()));
}

#[test]
fn daemon_error_status_fails_the_context_fast() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 2);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 1, 0).unwrap();
    let st = proto::CtxStatus {
        ctx_id: c.0,
        error: e::EINVAL as u32,
    };
    s.dev
        .daemon_receive(&Message::CtxStatus(st).to_bytes(0), 0)
        .unwrap();
    s.daemon_answer_one(false);
    assert!(s.dev.dqbuf(c, Queue::Capture).unwrap().flags & BUF_FLAG_ERROR != 0);
    qcap(&mut s, c, 1);
    decode(&mut s, c, 1, 2, 0).unwrap();
    let d = s.dev.dqbuf(c, Queue::Capture).unwrap();
    assert_eq!(d.index, 1);
    assert!(d.flags & BUF_FLAG_ERROR != 0);
    assert_eq!(s.dev.stats().fail_fast, 1);
}

#[test]
fn handshake_waits_then_times_out_to_fail_fast() {
    let mut s = sim();
    s.daemon.mode = DaemonMode::Stopped;
    let gen = s.dev.daemon_attach(s.now);
    s.daemon.gen = Some(gen);
    let c = streaming(&mut s, 1);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 1, 0).unwrap();
    // waiting for the hello reply: not failed yet
    assert_eq!(
        s.dev.dqbuf(c, Queue::Capture).unwrap_err().errno(),
        e::EAGAIN
    );
    assert!(matches!(s.dev.link(), Link::Handshaking { .. }));
    s.advance(1500 * MS);
    assert_eq!(s.dev.link(), Link::Detached);
    assert!(s.dev.dqbuf(c, Queue::Capture).unwrap().flags & BUF_FLAG_ERROR != 0);
}

#[test]
fn handshake_rejects_unoffered_features_and_bad_versions() {
    for (major, features) in [(2u16, 0u64), (1, 1 << 40)] {
        let mut d = Device::new(Config::default());
        d.daemon_attach(0);
        let reply = proto::Hello {
            version_major: major,
            version_minor: 0,
            max_inflight: 1,
            features,
            max_msg_size: 4096,
            reserved: 0,
        };
        assert!(d
            .daemon_receive(&Message::HelloReply(reply).to_bytes(0), 0)
            .is_err());
        assert_eq!(d.link(), Link::Detached);
        assert_eq!(d.stats().protocol_errors, 1);
    }
}

#[test]
fn daemon_may_not_send_frontend_messages_or_results_before_hello() {
    let mut d = Device::new(Config::default());
    d.daemon_attach(0);
    let r = Message::Result(proto::JobResult::default()).to_bytes(0);
    assert!(matches!(
        d.daemon_receive(&r, 0),
        Err(DaemonError::Unexpected(_))
    ));
    d.daemon_attach(0);
    let bad = Message::CtxClose(proto::CtxClose::default()).to_bytes(0);
    assert!(d.daemon_receive(&bad, 0).is_err());
    assert_eq!(d.link(), Link::Detached);
    assert_eq!(d.daemon_receive(&r, 0), Err(DaemonError::NotAttached));
}

#[test]
fn results_unknown_duplicate_foreign_and_earlier_connection_are_rejected() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 2);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 1, 0).unwrap();
    s.pump_rx();
    let j = s.daemon.pending.front().unwrap().job;
    let res = |ctx: u32| {
        Message::Result(proto::JobResult {
            ctx_id: ctx,
            cookie: j.cookie,
            ..Default::default()
        })
        .to_bytes(0)
    };
    assert_eq!(
        s.dev.daemon_receive(&res(c.0 + 1), 0),
        Ok(Some(ResultDisposition::Foreign))
    );
    assert_eq!(
        s.dev.daemon_receive(&res(c.0), 0),
        Ok(Some(ResultDisposition::Applied))
    );
    assert_eq!(
        s.dev.daemon_receive(&res(c.0), 0),
        Ok(Some(ResultDisposition::Unknown))
    );
    // a new connection: results for the old one's cookie are unknown
    s.daemon_start();
    assert_eq!(
        s.dev.daemon_receive(&res(c.0), 0),
        Ok(Some(ResultDisposition::Unknown))
    );
    let st = s.dev.stats();
    assert_eq!(
        (st.rejected_foreign, st.rejected_unknown, st.done),
        (1, 2, 1)
    );
}

#[test]
fn deadline_fails_the_job_cancels_it_and_the_late_answer_is_an_ack() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 2);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 1, 0).unwrap();
    let deadline = s.dev.next_deadline().unwrap();
    assert_eq!(deadline, s.now + Config::default().job_timeout);
    s.dev.tick(deadline - 1);
    assert_eq!(
        s.dev.dqbuf(c, Queue::Capture).unwrap_err().errno(),
        e::EAGAIN
    );
    s.dev.tick(deadline);
    assert!(s.dev.dqbuf(c, Queue::Capture).unwrap().flags & BUF_FLAG_ERROR != 0);
    assert_eq!(s.dev.stats().timeouts, 1);
    s.pump_rx();
    assert!(s.daemon.pending.front().unwrap().cancelled);
    assert_eq!(s.dev.inflight_count(), 1);
    s.daemon.mode = DaemonMode::Running;
    s.pump();
    assert_eq!(s.dev.inflight_count(), 0);
    assert_eq!(s.dev.stats().late_acks, 1);
}

#[test]
fn detach_drains_in_flight_with_error_exactly_once() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let a = streaming(&mut s, 1);
    let b = streaming(&mut s, 1);
    for c in [a, b] {
        qcap(&mut s, c, 0);
        decode(&mut s, c, 0, 1, 0).unwrap();
    }
    assert_eq!(s.dev.inflight_count(), 2);
    while s.dev.poll_event().is_some() {}
    s.daemon_kill();
    let done: Vec<Event> = std::iter::from_fn(|| s.dev.poll_event())
        .filter(|e| matches!(e, Event::JobDone { .. }))
        .collect();
    assert_eq!(done.len(), 2);
    assert!(done
        .iter()
        .all(|e| matches!(e, Event::JobDone { ok: false, .. })));
    assert_eq!(s.dev.inflight_count(), 0);
    assert_eq!(s.dev.stats().drained, 2);
    s.dev.daemon_detach(s.now); // idempotent
    assert!(std::iter::from_fn(|| s.dev.poll_event()).next().is_none());
}

#[test]
fn flush_releases_a_held_capture_buffer() {
    let mut s = sim();
    s.daemon_start();
    let c = streaming(&mut s, 2);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 5, BUF_FLAG_M2M_HOLD_CAPTURE_BUF).unwrap();
    assert_eq!(
        s.dev.buffer(c, Queue::Capture, 0).unwrap().state,
        BufState::Active
    );
    assert_eq!(
        s.dev.dqbuf(c, Queue::Capture).unwrap_err().errno(),
        e::EAGAIN
    );
    s.dev.decoder_flush(c).unwrap();
    let d = s.dev.dqbuf(c, Queue::Capture).unwrap();
    assert_eq!((d.index, d.flags & BUF_FLAG_ERROR), (0, 0));
    assert_eq!(d.timestamp, 5);
}

#[test]
fn flush_with_pending_output_clears_its_hold_flag() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 2);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 5, BUF_FLAG_M2M_HOLD_CAPTURE_BUF).unwrap();
    decode(&mut s, c, 1, 5, BUF_FLAG_M2M_HOLD_CAPTURE_BUF).unwrap();
    s.dev.decoder_flush(c).unwrap();
    s.daemon.mode = DaemonMode::Running;
    s.pump();
    let d = s.dev.dqbuf(c, Queue::Capture).unwrap();
    assert_eq!(d.index, 0);
    s.pump_rx();
    let flags: Vec<u32> = s.daemon.answered.iter().map(|(_, r)| r.status).collect();
    assert_eq!(flags, vec![proto::DV_STATUS_DONE; 2]);
}

#[test]
fn hold_is_not_kept_after_an_error() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Failing;
    let c = streaming(&mut s, 2);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 5, BUF_FLAG_M2M_HOLD_CAPTURE_BUF).unwrap();
    let d = s.dev.dqbuf(c, Queue::Capture).unwrap();
    assert!(d.flags & BUF_FLAG_ERROR != 0);
}

#[test]
fn poll_state_reports_readiness_and_error() {
    let mut s = sim();
    s.daemon_start();
    let c = s.dev.open_context().unwrap();
    assert!(s.dev.poll_state(c).error);
    s.dev.close_context(c, 0);
    let c = streaming(&mut s, 1);
    assert!(s.dev.poll_state(c).error);
    qcap(&mut s, c, 0);
    let p = s.dev.poll_state(c);
    assert!(!p.error && !p.capture_ready);
    decode(&mut s, c, 0, 1, 0).unwrap();
    let p = s.dev.poll_state(c);
    assert!(p.capture_ready && p.output_ready && !p.error);
}

#[test]
fn close_with_a_job_in_flight_returns_and_leaves_a_zombie_until_the_ack() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 1);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 1, 0).unwrap();
    s.dev.close_context(c, s.now);
    assert!(s.dev.context_ids().is_empty());
    assert_eq!(s.dev.inflight_count(), 1);
    s.pump_rx();
    assert!(s.daemon.pending.front().unwrap().cancelled);
    s.daemon.mode = DaemonMode::Running;
    s.pump();
    assert_eq!(s.dev.inflight_count(), 0);
}

#[test]
fn dropping_a_device_with_jobs_in_flight_completes_them() {
    let mut s = sim();
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = streaming(&mut s, 1);
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 1, 0).unwrap();
    drop(s); // must not panic: the job token is consumed by the drain
}

#[test]
fn new_formats_lift_a_daemon_refusal() {
    let mut s = sim();
    s.daemon_start();
    let c = s.dev.open_context().unwrap();
    let st = proto::CtxStatus {
        ctx_id: c.0,
        error: e::EINVAL as u32,
    };
    // the daemon refuses the context once it has been opened
    let now = s.now;
    for q in [Queue::Output, Queue::Capture] {
        s.dev.reqbufs(c, q, Memory::Mmap, 1).unwrap();
        s.dev.streamon(c, q, now).unwrap();
    }
    s.daemon.mode = DaemonMode::Stopped;
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 1, 0).unwrap();
    s.dev
        .daemon_receive(&Message::CtxStatus(st).to_bytes(0), now)
        .unwrap();
    s.daemon_answer_one(false);
    s.dev.dqbuf(c, Queue::Capture).unwrap();
    s.dev.dqbuf(c, Queue::Output).unwrap();
    for q in [Queue::Output, Queue::Capture] {
        s.dev.streamoff(c, q, now).unwrap();
        s.dev.reqbufs(c, q, Memory::Mmap, 0).unwrap();
    }
    // S_FMT: a new CtxOpen; the next job is sent, not failed fast
    let f = s.dev.format(c, Queue::Output).unwrap();
    s.dev.set_format(c, Queue::Output, f).unwrap();
    for q in [Queue::Output, Queue::Capture] {
        s.dev.reqbufs(c, q, Memory::Mmap, 1).unwrap();
        s.dev.streamon(c, q, now).unwrap();
    }
    s.daemon.mode = DaemonMode::Running;
    qcap(&mut s, c, 0);
    decode(&mut s, c, 0, 2, 0).unwrap();
    let d = s.dev.dqbuf(c, Queue::Capture).unwrap();
    assert_eq!(d.flags & BUF_FLAG_ERROR, 0);
    assert_eq!(s.dev.stats().fail_fast, 0);
}

/// A device running two jobs of a context at once (`Config::pipeline_depth`)
/// with a stopped daemon, and a VP8 context streaming 4 buffers a queue.
fn pipelined() -> (Sim, CtxId) {
    let mut s = Sim::new(Device::new(Config {
        pipeline_depth: 2,
        ..Config::default()
    }));
    s.daemon_start();
    s.daemon.mode = DaemonMode::Stopped;
    let c = s.dev.open_context().unwrap();
    let want = PixFormat {
        fourcc: fmt::PIX_FMT_VP8_FRAME,
        width: 176,
        height: 144,
        ..Default::default()
    };
    s.dev.set_format(c, Queue::Output, want).unwrap();
    let now = s.now;
    for q in [Queue::Output, Queue::Capture] {
        assert_eq!(s.dev.reqbufs(c, q, Memory::Mmap, 4), Ok(4));
        s.dev.streamon(c, q, now).unwrap();
    }
    (s, c)
}

/// Queues OUTPUT buffer `i` (timestamp `ts`) in a request whose VP8 frame
/// names `refs` as last, golden and altref picture (a key frame if none).
fn decode_vp8(s: &mut Sim, c: CtxId, i: u32, ts: u64, refs: Option<u64>, flags: u32) {
    use decoder_core::ctrl::vp8::V4l2CtrlVp8Frame;
    use decoder_core::ctrl::CompoundControl;
    let mut f = V4l2CtrlVp8Frame::default_value();
    match refs {
        Some(t) => (f.last_frame_ts, f.golden_frame_ts, f.alt_frame_ts) = (t, t, t),
        None => f.flags |= 1, // V4L2_VP8_FRAME_FLAG_KEY_FRAME
    }
    let bytes = zerocopy::IntoBytes::as_bytes(&f);
    decode_with(s, c, i, ts, flags, &[(V4l2CtrlVp8Frame::ID, bytes)]).unwrap();
}

fn pending(s: &mut Sim) -> Vec<proto::DecodeJob> {
    s.pump_rx();
    s.daemon.pending.iter().map(|j| j.job).collect()
}

#[test]
fn a_pipelined_job_references_the_picture_still_being_decoded() {
    let (mut s, c) = pipelined();
    for i in 0..4 {
        qcap(&mut s, c, i);
    }
    decode_vp8(&mut s, c, 0, 10, None, 0);
    decode_vp8(&mut s, c, 1, 20, Some(10), 0);
    decode_vp8(&mut s, c, 2, 30, Some(20), 0);
    // Two sent: the second names the first one's CAPTURE buffer, which
    // holds no picture yet; the third waits for a slot.
    let p = pending(&mut s);
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].capture_index, p[1].capture_index), (0, 1));
    assert_eq!(p[1].num_refs, 3);
    assert!(p[1].refs[..3]
        .iter()
        .all(|r| (r.timestamp, r.capture_index) == (10, 0)));
    // The first result sends the third job.
    assert!(s.daemon_answer_one(true));
    let p = pending(&mut s);
    assert_eq!(p.len(), 2);
    assert_eq!((p[1].output_index, p[1].capture_index), (2, 2));
    assert!(p[1].refs[..3]
        .iter()
        .all(|r| (r.timestamp, r.capture_index) == (20, 1)));
    let d = s.dev.dqbuf(c, Queue::Capture).unwrap();
    assert_eq!((d.index, d.timestamp, d.flags & BUF_FLAG_ERROR), (0, 10, 0));
    assert_eq!(
        s.dev.dqbuf(c, Queue::Capture).unwrap_err().errno(),
        e::EAGAIN
    );
}

#[test]
fn a_buffer_being_written_is_not_a_reference() {
    let (mut s, c) = pipelined();
    qcap(&mut s, c, 0);
    decode_vp8(&mut s, c, 0, 10, None, 0);
    s.daemon_answer_one(true);
    assert_eq!(s.dev.dqbuf(c, Queue::Capture).unwrap().index, 0);
    // CAPTURE 0 holds picture 10 and is queued again, after CAPTURE 1: job
    // 20 (into 1) may use picture 10, but job 30, sent while job 20 runs,
    // overwrites buffer 0 and so cannot.
    qcap(&mut s, c, 1);
    qcap(&mut s, c, 0);
    decode_vp8(&mut s, c, 1, 20, Some(10), 0);
    decode_vp8(&mut s, c, 2, 30, Some(10), 0);
    let p = pending(&mut s);
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].capture_index, p[0].refs[0].capture_index), (1, 0));
    assert_eq!(p[1].capture_index, 0);
    assert_eq!(p[1].refs[0].capture_index, proto::DV_NO_BUFFER);
}

#[test]
fn pipelined_jobs_complete_in_order_whatever_the_daemon_does() {
    // A result for the second job first: the first completes with ERROR
    // before it, and the daemon's late answer for it is rejected.
    let (mut s, c) = pipelined();
    for i in 0..2 {
        qcap(&mut s, c, i);
    }
    decode_vp8(&mut s, c, 0, 10, None, 0);
    decode_vp8(&mut s, c, 1, 20, None, 0);
    let p = pending(&mut s);
    let answer = |s: &mut Sim, j: &proto::DecodeJob| {
        let r = proto::JobResult {
            ctx_id: j.ctx_id,
            status: proto::DV_STATUS_DONE,
            cookie: j.cookie,
            error: 0,
            flags: 0,
            bytesused: [0; 4],
        };
        s.dev
            .daemon_receive(&Message::Result(r).to_bytes(0), s.now)
            .unwrap()
    };
    assert_eq!(answer(&mut s, &p[1]), Some(ResultDisposition::Applied));
    let a = s.dev.dqbuf(c, Queue::Capture).unwrap();
    let b = s.dev.dqbuf(c, Queue::Capture).unwrap();
    assert_eq!((a.index, a.flags & BUF_FLAG_ERROR != 0), (0, true));
    assert_eq!((b.index, b.flags & BUF_FLAG_ERROR != 0), (1, false));
    assert_eq!(answer(&mut s, &p[0]), Some(ResultDisposition::Unknown));

    // The daemon dies with two jobs in it: both fail, in order, and the
    // next job fails fast after them.
    let (mut s, c) = pipelined();
    for i in 0..3 {
        qcap(&mut s, c, i);
    }
    for (i, ts) in [(0, 10), (1, 20), (2, 30)] {
        decode_vp8(&mut s, c, i, ts, None, 0);
    }
    assert_eq!(pending(&mut s).len(), 2);
    s.daemon_kill();
    let order: Vec<(u32, bool)> = (0..3)
        .map(|_| s.dev.dqbuf(c, Queue::Capture).unwrap())
        .map(|d| (d.index, d.flags & BUF_FLAG_ERROR != 0))
        .collect();
    assert_eq!(order, [(0, true), (1, true), (2, true)]);
    assert_eq!(s.dev.stats().drained, 2);
    assert_eq!(s.dev.stats().fail_fast, 1);
    assert_eq!(s.dev.inflight_count(), 0);

    // STREAMOFF on OUTPUT cancels both: their CAPTURE buffers complete
    // with ERROR in order, the daemon is told.
    let (mut s, c) = pipelined();
    for i in 0..2 {
        qcap(&mut s, c, i);
    }
    decode_vp8(&mut s, c, 0, 10, None, 0);
    decode_vp8(&mut s, c, 1, 20, None, 0);
    assert_eq!(pending(&mut s).len(), 2);
    let now = s.now;
    s.dev.streamoff(c, Queue::Output, now).unwrap();
    let order: Vec<u32> = (0..2)
        .map(|_| s.dev.dqbuf(c, Queue::Capture).unwrap().index)
        .collect();
    assert_eq!(order, [0, 1]);
    s.pump_rx();
    assert!(s.daemon.pending.iter().all(|j| j.cancelled));
    assert_eq!(s.dev.stats().cancelled, 2);
}

#[test]
fn no_job_is_sent_ahead_of_one_holding_its_capture_buffer() {
    let (mut s, c) = pipelined();
    for i in 0..2 {
        qcap(&mut s, c, i);
    }
    // Two slices of picture 10, then picture 20.
    decode_vp8(&mut s, c, 0, 10, None, BUF_FLAG_M2M_HOLD_CAPTURE_BUF);
    decode_vp8(&mut s, c, 1, 10, None, 0);
    decode_vp8(&mut s, c, 2, 20, None, 0);
    assert_eq!(pending(&mut s).len(), 1);
    s.daemon_answer_one(true);
    // The second slice continues in the held buffer; picture 20 may go
    // along with it.
    let p = pending(&mut s);
    assert_eq!(p.len(), 2);
    assert_eq!(
        (p[0].capture_index, p[0].flags),
        (0, proto::DV_DECODE_CONTINUE)
    );
    assert_eq!((p[1].capture_index, p[1].flags), (1, 0));
}
