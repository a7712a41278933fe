//! The daemon's server driven over a real socketpair, with
//! `decoder_core::state::Device` as the frontend on the other end.

mod common;

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use daedalus_daemon::server::{ServeError, SessionEnd, SUPPORTED_FEATURES};
use daedalus_daemon::transport::Transport;
use decoder_core::fmt;
use decoder_core::proto::{self, Message, DV_STATUS_DONE, DV_STATUS_ERROR};
use decoder_core::state::{Link, Queue};

const ECANCELED: u32 = 125;
const EOPNOTSUPP: u32 = 95;
const EINVAL: u32 = 22;
const EBADMSG: u32 = 74;
const EIO: u32 = 5;
const EBADF: u32 = 9;
const SEC: Duration = Duration::from_secs(1);

/// Bytes per CAPTURE row of the 64x48 test contexts (rows padded to
/// `fmt::CAPTURE_ROW_ALIGN` pixels).
const S: u32 = 64u32.next_multiple_of(fmt::CAPTURE_ROW_ALIGN);

#[test]
fn handshake_agrees_on_common_features() {
    let (t, sd, sock, _log) = spawn_server(2, Duration::ZERO);
    let mut f = Frontend::new(sock);
    f.attach();
    let h = f.hello_reply.unwrap();
    assert_eq!(h.version_major, proto::DV_VERSION_MAJOR);
    assert_eq!(h.features, proto::DV_FEAT_ALL & SUPPORTED_FEATURES);
    assert_eq!(h.max_inflight, 2);
    assert_eq!(h.max_msg_size, proto::DV_MAX_MSG_SIZE);
    assert!(matches!(f.dev.link(), Link::Attached { .. }));
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));

    // Unknown feature bits are not agreed to; an offer of only CANCEL gets
    // only CANCEL.
    let (t, _sd, sock, _log) = spawn_server(1, Duration::ZERO);
    raw_send(&sock, &hello(proto::DV_FEAT_CANCEL | 1 << 40), &[]);
    let reply = recv_timeout(&sock, 5 * SEC).unwrap();
    match proto::decode(&reply).unwrap() {
        Message::HelloReply(h) => assert_eq!(h.features, proto::DV_FEAT_CANCEL),
        m => panic!("{m:?}"),
    }
    drop(sock);
    assert!(matches!(
        join_timeout(t, 5 * SEC),
        Ok(SessionEnd::PeerClosed)
    ));
}

#[test]
fn jobs_decode_into_the_shared_capture_memory() {
    let (t, sd, sock, log) = spawn_server(2, Duration::ZERO);
    let mut f = Frontend::new(sock);
    f.attach();
    let c = f.context(fmt::PIX_FMT_H264_SLICE, 3);
    for (i, ts) in [(0u32, 1000u64), (1, 2000), (2, 3000)] {
        f.queue_output(c, i, ts, &[0x10 + i as u8, 0x80 + i as u8, 0, 0, 1]);
    }
    assert!(f.pump_until(5 * SEC, |f| f.done(c).len() == 3));
    assert!(f.done(c).iter().all(|(_, ok)| *ok));
    // FIFO: the backend saw the jobs in queue order.
    let ts: Vec<u64> = log.decoded.lock().iter().map(|d| d.timestamp).collect();
    assert_eq!(ts, [1000, 2000, 3000]);
    // Each picture landed in the CAPTURE buffer its job named.
    for j in &f.sent {
        let k = (j.timestamp / 1000 - 1) as u8;
        assert_eq!(f.capture_bytes(c, j.capture), (0x10 + k, 0x80 + k));
        let r = f.result_of(j.cookie).unwrap();
        assert_eq!(r.status, DV_STATUS_DONE);
        assert_eq!(r.bytesused[0], S * 48 * 3 / 2);
    }
    let info = f.dev.buffer(c, Queue::Capture, f.sent[0].capture).unwrap();
    assert_eq!(info.bytesused[0], S * 48 * 3 / 2);
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}

#[test]
fn unsupported_codec_gets_ctx_status_and_error() {
    let (t, sd, sock, _log) = spawn_server(2, Duration::ZERO);
    let mut f = Frontend::new(sock);
    f.attach();
    let c = f.context(fmt::PIX_FMT_AV1_FRAME, 2);
    f.queue_output(c, 0, 1000, &[1, 2, 3]);
    assert!(f.pump_until(5 * SEC, |f| f.done(c).len() == 1));
    assert!(!f.done(c)[0].1);
    let r = f.result_of(f.sent[0].cookie).unwrap();
    assert_eq!((r.status, r.error), (DV_STATUS_ERROR, EOPNOTSUPP));
    assert!(f.pump_until(5 * SEC, |f| !f.statuses.is_empty()));
    assert_eq!(f.statuses[0].ctx_id, c.0);
    assert_eq!(f.statuses[0].error, EOPNOTSUPP);
    // The device now fails this context's jobs itself.
    let before = f.dev.stats().fail_fast;
    f.queue_output(c, 1, 2000, &[1]);
    assert_eq!(f.dev.stats().fail_fast, before + 1);

    // Other contexts still work, a failing backend answers ERROR per job,
    // and a panicking backend answers ERROR and disables only its context.
    let h = f.context(fmt::PIX_FMT_H264_SLICE, 2);
    let v8 = f.context(fmt::PIX_FMT_VP8_FRAME, 2);
    let v9 = f.context(fmt::PIX_FMT_H264_SLICE, 2);
    f.queue_output(v8, 0, 1, &[1]);
    f.queue_output(v9, 0, 1, PANIC);
    f.queue_output(h, 0, 1, &[1]);
    assert!(f.pump_until(5 * SEC, |f| [h, v8, v9]
        .iter()
        .all(|c| f.done(*c).len() == 1)));
    assert!(f.done(h)[0].1);
    let err = |f: &Frontend, c| f.result_of(f.done(c)[0].0).unwrap().error;
    assert_eq!(err(&f, v8), EBADMSG);
    assert_eq!(err(&f, v9), EIO);
    assert!(f.pump_until(5 * SEC, |f| f
        .statuses
        .iter()
        .any(|s| s.ctx_id == v9.0 && s.error == EIO)));
    f.queue_output(h, 1, 2, &[2]);
    assert!(f.pump_until(5 * SEC, |f| f.done(h).len() == 2));
    assert!(f.done(h)[1].1);
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}

#[test]
fn bad_formats_and_unknown_buffers_fail_jobs_not_the_link() {
    let (t, _sd, sock, _log) = spawn_server(1, Duration::ZERO);
    raw_send(&sock, &hello(proto::DV_FEAT_ALL), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    let f = fmt::try_decoded(fmt::PIX_FMT_NV12, 64, 48);
    let mut planes = [proto::PlaneFmt::default(); 4];
    planes[0] = proto::PlaneFmt {
        bytesperline: f.planes[0].bytesperline,
        sizeimage: f.planes[0].sizeimage,
    };
    let open = proto::CtxOpen {
        ctx_id: 7,
        codec: 1,
        coded_fourcc: fmt::PIX_FMT_H264_SLICE,
        capture_fourcc: fmt::fourcc(b"YUYV"),
        width: 64,
        height: 48,
        num_planes: 1,
        reserved: 0,
        planes,
    };
    raw_send(&sock, &Message::CtxOpen(open), &[]);
    match proto::decode(&recv_timeout(&sock, 5 * SEC).unwrap()).unwrap() {
        Message::CtxStatus(s) => assert_eq!((s.ctx_id, s.error), (7, EINVAL)),
        m => panic!("{m:?}"),
    }
    let job = |ctx_id, cookie| {
        Message::Decode(
            proto::DecodeJob {
                ctx_id,
                cookie,
                ..Default::default()
            },
            vec![],
        )
    };
    raw_send(&sock, &job(7, 1), &[]);
    // A usable context whose job names unregistered buffers.
    let ok_open = proto::CtxOpen {
        ctx_id: 8,
        capture_fourcc: fmt::PIX_FMT_NV12,
        ..open
    };
    raw_send(&sock, &Message::CtxOpen(ok_open), &[]);
    raw_send(&sock, &job(8, 2), &[]);
    // A context that does not exist.
    raw_send(&sock, &job(9, 3), &[]);
    let mut got = Vec::new();
    while got.len() < 3 {
        match proto::decode(&recv_timeout(&sock, 5 * SEC).unwrap()).unwrap() {
            Message::Result(r) => got.push((r.cookie, r.status, r.error)),
            m => panic!("{m:?}"),
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            (1, DV_STATUS_ERROR, EINVAL),
            (2, DV_STATUS_ERROR, EINVAL),
            (3, DV_STATUS_ERROR, EBADF)
        ]
    );
    // A buffer whose range exceeds its memfd is refused; the link survives.
    let mut bp = [proto::BufPlane::default(); 4];
    bp[0] = proto::BufPlane {
        fd_index: 0,
        offset: 0,
        length: 8192,
        reserved: 0,
    };
    let reg = proto::BufRegister {
        ctx_id: 8,
        queue: proto::DV_QUEUE_OUTPUT,
        index: 0,
        num_planes: 1,
        memory: proto::DV_MEM_MEMFD,
        reserved: 0,
        planes: bp,
    };
    let small = memfd(4096);
    raw_send(&sock, &Message::BufRegister(reg), &[small.as_fd()]);
    raw_send(&sock, &job(8, 4), &[]);
    match proto::decode(&recv_timeout(&sock, 5 * SEC).unwrap()).unwrap() {
        Message::Result(r) => assert_eq!((r.cookie, r.error), (4, EINVAL)),
        m => panic!("{m:?}"),
    }
    drop(sock);
    assert!(matches!(
        join_timeout(t, 5 * SEC),
        Ok(SessionEnd::PeerClosed)
    ));
}

#[test]
fn cancel_answers_a_queued_job_without_decoding_it() {
    let slow = Duration::from_millis(800);
    let (t, sd, sock, log) = spawn_server(2, slow);
    let mut f = Frontend::new(sock);
    f.attach();
    let c = f.context(SLOW, 2);
    f.queue_output(c, 0, 1000, &[1]);
    f.queue_output(c, 1, 2000, &[2]);
    assert_eq!(f.sent.len(), 1, "one job in flight per context");
    let a = f.sent[0].cookie;
    // Job A is decoding.
    let start = Instant::now();
    while log.started.lock().is_empty() {
        assert!(start.elapsed() < 5 * SEC);
        std::thread::sleep(Duration::from_millis(2));
    }
    // A times out at the device: it cancels A and dispatches B, which queues
    // behind A at the daemon; then B times out too and is cancelled.
    let timeout = f.dev.config().job_timeout;
    f.now += timeout + 1;
    f.dev.tick(f.now);
    f.flush();
    assert_eq!(f.sent.len(), 2);
    let b = f.sent[1].cookie;
    f.now += timeout + 1;
    f.dev.tick(f.now);
    f.flush();
    assert_eq!(f.cancels, [a, b]);
    assert!(f.pump_until(5 * SEC, |f| f.result_of(a).is_some()
        && f.result_of(b).is_some()));
    let rb = f.result_of(b).unwrap();
    assert_eq!((rb.status, rb.error), (DV_STATUS_ERROR, ECANCELED));
    // B was answered at once, A (running) when it ended, with its outcome.
    let pos = |c| f.results.iter().position(|r| r.cookie == c).unwrap();
    assert!(pos(b) < pos(a));
    assert_eq!(f.result_of(a).unwrap().status, DV_STATUS_DONE);
    assert_eq!(
        log.started.lock().iter().map(|s| s.1).collect::<Vec<_>>(),
        [1000],
        "the cancelled job never reached the backend"
    );
    // Every job was answered exactly once.
    let mut cookies: Vec<u64> = f.results.iter().map(|r| r.cookie).collect();
    cookies.sort();
    cookies.dedup();
    assert_eq!(cookies.len(), f.results.len());
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}

#[test]
fn ctx_close_cancels_queued_jobs() {
    let slow = Duration::from_millis(500);
    let (t, _sd, sock, log) = spawn_server(2, slow);
    raw_send(&sock, &hello(proto::DV_FEAT_ALL), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    let d = fmt::try_decoded(fmt::PIX_FMT_NV12, 64, 48);
    let mut planes = [proto::PlaneFmt::default(); 4];
    planes[0] = proto::PlaneFmt {
        bytesperline: d.planes[0].bytesperline,
        sizeimage: d.planes[0].sizeimage,
    };
    raw_send(
        &sock,
        &Message::CtxOpen(proto::CtxOpen {
            ctx_id: 1,
            codec: 4, // VP9: the slow test backend
            coded_fourcc: SLOW,
            capture_fourcc: fmt::PIX_FMT_NV12,
            width: 64,
            height: 48,
            num_planes: 1,
            reserved: 0,
            planes,
        }),
        &[],
    );
    let register = |queue, len: u32| {
        let mut bp = [proto::BufPlane::default(); 4];
        bp[0] = proto::BufPlane {
            fd_index: 0,
            offset: 0,
            length: len,
            reserved: 0,
        };
        let fd = memfd(u64::from(len));
        raw_send(
            &sock,
            &Message::BufRegister(proto::BufRegister {
                ctx_id: 1,
                queue,
                index: 0,
                num_planes: 1,
                memory: proto::DV_MEM_MEMFD,
                reserved: 0,
                planes: bp,
            }),
            &[fd.as_fd()],
        );
    };
    register(proto::DV_QUEUE_OUTPUT, 4096);
    register(proto::DV_QUEUE_CAPTURE, d.planes[0].sizeimage);
    for cookie in 1..=3 {
        raw_send(
            &sock,
            &Message::Decode(
                proto::DecodeJob {
                    ctx_id: 1,
                    cookie,
                    timestamp: cookie * 1000,
                    bytesused: 16,
                    ..Default::default()
                },
                vec![],
            ),
            &[],
        );
    }
    while log.started.lock().is_empty() {
        std::thread::sleep(Duration::from_millis(2));
    }
    raw_send(
        &sock,
        &Message::CtxClose(proto::CtxClose {
            ctx_id: 1,
            reserved: 0,
        }),
        &[],
    );
    let mut got = Vec::new();
    while got.len() < 3 {
        match proto::decode(&recv_timeout(&sock, 5 * SEC).unwrap()).unwrap() {
            Message::Result(r) => got.push((r.cookie, r.status, r.error)),
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(
        got,
        [
            (2, DV_STATUS_ERROR, ECANCELED),
            (3, DV_STATUS_ERROR, ECANCELED),
            (1, DV_STATUS_DONE, 0)
        ]
    );
    assert_eq!(log.started.lock().len(), 1);
    // The worker is gone and its backend dropped.
    let start = Instant::now();
    while log.sessions.load(Ordering::SeqCst) != 0 {
        assert!(start.elapsed() < 5 * SEC);
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(sock);
    assert!(matches!(
        join_timeout(t, 5 * SEC),
        Ok(SessionEnd::PeerClosed)
    ));
}

#[test]
fn a_slow_context_does_not_block_the_others() {
    let slow = Duration::from_millis(3000);
    let (t, sd, sock, log) = spawn_server(2, slow);
    let mut f = Frontend::new(sock);
    f.attach();
    let s = f.context(SLOW, 2);
    let fast: Vec<_> = (0..3)
        .map(|_| f.context(fmt::PIX_FMT_H264_SLICE, 4))
        .collect();
    let t0 = Instant::now();
    f.queue_output(s, 0, 1, &[0xee]);
    for (k, c) in fast.iter().enumerate() {
        for i in 0..4u32 {
            f.queue_output(
                *c,
                i,
                u64::from(i + 1) * 1000,
                &[k as u8 * 16 + i as u8, 0x42],
            );
        }
    }
    assert!(f.pump_until(5 * SEC, |f| fast.iter().all(|c| f.done(*c).len() == 4)));
    let fast_done = t0.elapsed();
    assert!(
        fast_done < slow,
        "fast contexts took {fast_done:?}, blocked by the slow one"
    );
    assert!(f.done(s).is_empty(), "the slow job cannot be done yet");
    for c in &fast {
        assert!(f.done(*c).iter().all(|(_, ok)| *ok));
    }
    // Per-context order and content.
    for (k, c) in fast.iter().enumerate() {
        let jobs: Vec<_> = f.sent.iter().filter(|j| j.ctx == c.0).copied().collect();
        assert_eq!(
            jobs.iter().map(|j| j.timestamp).collect::<Vec<_>>(),
            [1000, 2000, 3000, 4000]
        );
        let last = jobs[3];
        assert_eq!(f.capture_bytes(*c, last.capture), (k as u8 * 16 + 3, 0x42));
    }
    assert!(f.pump_until(5 * SEC, |f| f.done(s).len() == 1));
    assert!(f.done(s)[0].1);
    assert!(
        log.max_running.load(Ordering::SeqCst) <= 2,
        "concurrency bound"
    );
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}

#[test]
fn the_concurrency_bound_holds() {
    let slow = Duration::from_millis(200);
    let (t, sd, sock, log) = spawn_server(2, slow);
    let mut f = Frontend::new(sock);
    f.attach();
    let ctxs: Vec<_> = (0..5).map(|_| f.context(SLOW, 1)).collect();
    for c in &ctxs {
        f.queue_output(*c, 0, 1, &[1]);
    }
    assert!(f.pump_until(10 * SEC, |f| ctxs.iter().all(|c| f.done(*c).len() == 1)));
    assert_eq!(log.max_running.load(Ordering::SeqCst), 2);
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}

/// A handshaken raw connection.
fn attached() -> (
    std::thread::JoinHandle<ServeResult>,
    daedalus_daemon::transport::SeqPacket,
) {
    let (t, _sd, sock, _log) = spawn_server(1, Duration::ZERO);
    raw_send(&sock, &hello(proto::DV_FEAT_ALL), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    (t, sock)
}

fn assert_dropped(
    t: std::thread::JoinHandle<ServeResult>,
    sock: &daedalus_daemon::transport::SeqPacket,
) {
    let r = join_timeout(t, 5 * SEC);
    assert!(r.is_err(), "connection not dropped: {r:?}");
    assert!(recv_timeout(sock, 5 * SEC).is_err(), "socket still open");
}

#[test]
fn garbage_drops_the_connection_without_panic() {
    // Random bytes after the handshake.
    let (t, sock) = attached();
    sock.send(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3], &[]).unwrap();
    assert_dropped(t, &sock);

    // A valid header with a bad length.
    let (t, sock) = attached();
    let mut b = Message::Cancel(proto::Cancel::default()).to_bytes(0);
    b[8] = 99;
    sock.send(&b, &[]).unwrap();
    assert!(matches!(
        join_timeout(t, 5 * SEC),
        Err(ServeError::Proto(_))
    ));

    // Daemon-only messages from the frontend.
    let (t, sock) = attached();
    raw_send(&sock, &Message::Result(proto::JobResult::default()), &[]);
    assert_dropped(t, &sock);

    // A second hello.
    let (t, sock) = attached();
    raw_send(&sock, &hello(0), &[]);
    assert_dropped(t, &sock);

    // Descriptors on a message that takes none.
    let (t, sock) = attached();
    let fd = memfd(1);
    raw_send(
        &sock,
        &Message::Cancel(proto::Cancel::default()),
        &[fd.as_fd()],
    );
    assert_dropped(t, &sock);

    // A buffer naming a descriptor that did not come with it.
    let (t, sock) = attached();
    raw_send(
        &sock,
        &Message::CtxOpen(proto::CtxOpen {
            ctx_id: 1,
            codec: 1,
            coded_fourcc: fmt::PIX_FMT_H264_SLICE,
            capture_fourcc: fmt::PIX_FMT_NV12,
            width: 64,
            height: 48,
            num_planes: 1,
            planes: {
                let mut p = [proto::PlaneFmt::default(); 4];
                p[0] = proto::PlaneFmt {
                    bytesperline: 64,
                    sizeimage: 64 * 48 * 3 / 2,
                };
                p
            },
            ..Default::default()
        }),
        &[],
    );
    let mut bp = [proto::BufPlane::default(); 4];
    bp[0] = proto::BufPlane {
        fd_index: 1,
        offset: 0,
        length: 1,
        reserved: 0,
    };
    raw_send(
        &sock,
        &Message::BufRegister(proto::BufRegister {
            ctx_id: 1,
            queue: 0,
            index: 0,
            num_planes: 1,
            memory: proto::DV_MEM_MEMFD,
            reserved: 0,
            planes: bp,
        }),
        &[fd.as_fd()],
    );
    assert_dropped(t, &sock);

    // A buffer index no V4L2 queue has.
    let (t, sock) = attached();
    let mut reg = proto::BufRegister {
        ctx_id: 1,
        queue: 0,
        index: daedalus_daemon::server::MAX_BUFFER_INDEX,
        num_planes: 1,
        memory: proto::DV_MEM_MEMFD,
        reserved: 0,
        planes: [proto::BufPlane::default(); 4],
    };
    reg.planes[0].length = 1;
    raw_send(&sock, &Message::BufRegister(reg), &[fd.as_fd()]);
    assert_dropped(t, &sock);

    // Anything but a hello first; a hello of another major version.
    let (t, _sd, sock, _log) = spawn_server(1, Duration::ZERO);
    raw_send(&sock, &Message::CtxClose(proto::CtxClose::default()), &[]);
    assert_dropped(t, &sock);
    let (t, _sd, sock, _log) = spawn_server(1, Duration::ZERO);
    let mut h = hello(0);
    if let Message::Hello(b) = &mut h {
        b.version_major = 2;
    }
    raw_send(&sock, &h, &[]);
    assert_dropped(t, &sock);

    // An empty datagram.
    let (t, sock) = attached();
    sock.send(&[], &[]).unwrap();
    let r = join_timeout(t, 5 * SEC);
    // Zero bytes read as end of stream on a seqpacket socket.
    assert!(matches!(r, Ok(SessionEnd::PeerClosed) | Err(_)), "{r:?}");
}

#[test]
fn a_device_sees_the_daemon_go_away_on_garbage() {
    let (t, _sd, sock, _log) = spawn_server(1, Duration::ZERO);
    let mut f = Frontend::new(sock);
    f.attach();
    f.sock.send(b"not a message", &[]).unwrap();
    assert!(f.pump_until(5 * SEC, |f| f.closed));
    assert_eq!(f.dev.link(), Link::Detached);
    assert!(join_timeout(t, 5 * SEC).is_err());
}

#[test]
fn embedded_daemon_serves_and_stops() {
    use daedalus_daemon::server::{EmbeddedDaemon, ServerConfig};
    let log = std::sync::Arc::new(Log::default());
    // Workers sleep at once when idle (the other tests watch first).
    let cfg = ServerConfig {
        threads: 1,
        backends: factory(log.clone(), Duration::ZERO),
        idle_watch: Duration::ZERO,
        ..ServerConfig::default()
    };
    let (d, sock) = EmbeddedDaemon::spawn(cfg).unwrap();
    let mut f = Frontend::new(sock);
    f.attach();
    let c = f.context(fmt::PIX_FMT_H264_SLICE, 1);
    f.queue_output(c, 0, 5, &[0x33, 0x44]);
    assert!(f.pump_until(5 * SEC, |f| f.done(c).len() == 1));
    assert_eq!(f.capture_bytes(c, 0), (0x33, 0x44));
    assert!(!d.is_finished());
    assert!(matches!(d.stop(), Ok(SessionEnd::Shutdown)));
    assert!(recv_timeout(&f.sock, 5 * SEC).is_err());
    assert_eq!(log.sessions.load(Ordering::SeqCst), 0);

    // The frontend leaving ends it too; dropping it then just joins.
    let (d, sock) = EmbeddedDaemon::spawn(ServerConfig {
        threads: 1,
        backends: factory(log.clone(), Duration::ZERO),
        ..ServerConfig::default()
    })
    .unwrap();
    drop(sock);
    let start = Instant::now();
    while !d.is_finished() {
        assert!(start.elapsed() < 5 * SEC);
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(d);
}

#[test]
fn a_context_reopened_after_s_fmt_keeps_its_output_buffers() {
    use decoder_core::state::Memory;
    let (t, sd, sock, log) = spawn_server(2, Duration::ZERO);
    let mut f = Frontend::new(sock);
    f.attach();
    let c = f.context(fmt::PIX_FMT_H264_SLICE, 1);
    f.queue_output(c, 0, 1000, &[1, 2]);
    assert!(f.pump_until(5 * SEC, |f| f.done(c).len() == 1));
    assert_eq!(f.opens.len(), 1);
    // The client switches CAPTURE to NV12M: STREAMOFF, REQBUFS(0), S_FMT,
    // REQBUFS, STREAMON. The OUTPUT buffer stays registered.
    f.dev.dqbuf(c, Queue::Output).unwrap();
    f.dev.streamoff(c, Queue::Capture, f.now).unwrap();
    f.dev.reqbufs(c, Queue::Capture, Memory::Mmap, 0).unwrap();
    let want = fmt::try_decoded(fmt::PIX_FMT_NV12M, 64, 48);
    f.dev.set_format(c, Queue::Capture, want).unwrap();
    f.dev.reqbufs(c, Queue::Capture, Memory::Mmap, 1).unwrap();
    f.alloc(c, Queue::Capture, 1);
    f.dev.streamon(c, Queue::Capture, f.now).unwrap();
    f.queue_capture(c, 0);
    f.queue_output(c, 0, 2000, &[5, 6]);
    assert!(f.pump_until(5 * SEC, |f| f.done(c).len() == 2));
    assert!(f.done(c)[1].1, "{:?}", f.results);
    assert_eq!(f.opens.len(), 2);
    assert_eq!(f.opens[1].num_planes, 2);
    let mut b = [0u8];
    let planes = &f.mem[&(c, Queue::Capture, 0)];
    rustix::io::pread(&planes[0], &mut b, 0).unwrap();
    assert_eq!(b[0], 5);
    rustix::io::pread(&planes[1], &mut b, 0).unwrap();
    assert_eq!(b[0], 6);
    let r = f.result_of(f.sent[1].cookie).unwrap();
    assert_eq!(r.bytesused[..2], [S * 48, S * 48 / 2]);
    // Two sessions were opened, the first one goes away.
    let start = Instant::now();
    while log.sessions.load(Ordering::SeqCst) != 1 {
        assert!(start.elapsed() < 5 * SEC);
        std::thread::sleep(Duration::from_millis(2));
    }
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}

#[test]
fn held_slices_share_one_capture_buffer() {
    use daedalus_daemon::backend::JobFlags;
    use decoder_core::state::BUF_FLAG_M2M_HOLD_CAPTURE_BUF;
    let (t, sd, sock, log) = spawn_server(2, Duration::ZERO);
    let mut f = Frontend::new(sock);
    f.attach();
    let c = f.context(fmt::PIX_FMT_H264_SLICE, 2);
    f.queue_output_flags(c, 0, 1000, &[0x21, 0x22], BUF_FLAG_M2M_HOLD_CAPTURE_BUF);
    f.queue_output(c, 1, 1000, &[0x31, 0x32]);
    assert!(f.pump_until(5 * SEC, |f| f.done(c).len() == 2));
    assert!(f.done(c).iter().all(|(_, ok)| *ok));
    assert_eq!(f.sent[0].capture, f.sent[1].capture);
    assert_eq!(
        *log.flags.lock(),
        [
            (
                1000,
                JobFlags {
                    more_slices: true,
                    continues_picture: false
                }
            ),
            (
                1000,
                JobFlags {
                    more_slices: false,
                    continues_picture: true
                }
            )
        ]
    );
    // The held job reported no bytes; the last slice completed the picture.
    assert_eq!(f.result_of(f.sent[0].cookie).unwrap().bytesused, [0; 4]);
    assert_eq!(f.capture_bytes(c, f.sent[1].capture), (0x31, 0x32));
    let info = f.dev.buffer(c, Queue::Capture, f.sent[1].capture).unwrap();
    assert_eq!(info.bytesused[0], S * 48 * 3 / 2);
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}

#[test]
fn reopening_a_refused_context_withdraws_the_refusal() {
    let (t, _sd, sock, _log) = spawn_server(1, Duration::ZERO);
    raw_send(&sock, &hello(proto::DV_FEAT_ALL), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    let d = fmt::try_decoded(fmt::PIX_FMT_NV12, 64, 48);
    let mut planes = [proto::PlaneFmt::default(); 4];
    planes[0] = proto::PlaneFmt {
        bytesperline: d.planes[0].bytesperline,
        sizeimage: d.planes[0].sizeimage,
    };
    let good = proto::CtxOpen {
        ctx_id: 3,
        codec: 1,
        coded_fourcc: fmt::PIX_FMT_H264_SLICE,
        capture_fourcc: fmt::PIX_FMT_NV12,
        width: 64,
        height: 48,
        num_planes: 1,
        reserved: 0,
        planes,
    };
    // Coded format of another codec: refused.
    let bad = proto::CtxOpen {
        coded_fourcc: fmt::PIX_FMT_VP8_FRAME,
        ..good
    };
    let status = |sock: &daedalus_daemon::transport::SeqPacket| match proto::decode(
        &recv_timeout(sock, 5 * SEC).unwrap(),
    )
    .unwrap()
    {
        Message::CtxStatus(s) => (s.ctx_id, s.error),
        m => panic!("{m:?}"),
    };
    raw_send(&sock, &Message::CtxOpen(bad), &[]);
    assert_eq!(status(&sock), (3, EINVAL));
    raw_send(&sock, &Message::CtxOpen(good), &[]);
    assert_eq!(status(&sock), (3, 0));
    // A good context re-opened as good says nothing.
    raw_send(&sock, &Message::CtxOpen(good), &[]);
    assert!(recv_timeout(&sock, Duration::from_millis(200)).is_err());
    drop(sock);
    assert!(matches!(
        join_timeout(t, 5 * SEC),
        Ok(SessionEnd::PeerClosed)
    ));
}

#[test]
fn shutdown_is_not_blocked_by_a_frontend_that_stopped_reading() {
    let (t, sd, sock, _log) = spawn_server(1, Duration::ZERO);
    raw_send(&sock, &hello(proto::DV_FEAT_ALL), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    // Jobs of an unknown context are answered at once; never read the
    // answers, so the daemon's reader ends up blocked sending.
    let job = Message::Decode(
        proto::DecodeJob {
            ctx_id: 42,
            cookie: 1,
            ..Default::default()
        },
        vec![],
    )
    .to_bytes(1);
    let writer = std::thread::spawn(move || {
        let mut sent = 0;
        while sock.send(&job, &[]).is_ok() {
            sent += 1;
        }
        (sent, sock)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!t.is_finished());
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
    // The daemon closed the connection, which ends the writer too.
    let (sent, _sock) = join_timeout(writer, 5 * SEC);
    assert!(sent > 100, "only {sent} jobs went out");
}

#[test]
fn unregister_and_close_unmap_buffers() {
    let (t, _sd, sock, _log) = spawn_server(1, Duration::ZERO);
    raw_send(&sock, &hello(proto::DV_FEAT_ALL), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    let d = fmt::try_decoded(fmt::PIX_FMT_NV12, 64, 48);
    let mut planes = [proto::PlaneFmt::default(); 4];
    planes[0] = proto::PlaneFmt {
        bytesperline: d.planes[0].bytesperline,
        sizeimage: d.planes[0].sizeimage,
    };
    raw_send(
        &sock,
        &Message::CtxOpen(proto::CtxOpen {
            ctx_id: 1,
            codec: 1,
            coded_fourcc: fmt::PIX_FMT_H264_SLICE,
            capture_fourcc: fmt::PIX_FMT_NV12,
            width: 64,
            height: 48,
            num_planes: 1,
            reserved: 0,
            planes,
        }),
        &[],
    );
    // Memfds with names only this test uses, to find their mappings.
    let name = |i: u32| format!("dv-unmap-{}-{i}", std::process::id());
    let mapped = |i: u32| {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .contains(&format!("memfd:{}", name(i)))
    };
    for i in 0..2u32 {
        let fd = rustix::fs::memfd_create(name(i), rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        let mut bp = [proto::BufPlane::default(); 4];
        bp[0] = proto::BufPlane {
            fd_index: 0,
            offset: 0,
            length: 4096,
            reserved: 0,
        };
        raw_send(
            &sock,
            &Message::BufRegister(proto::BufRegister {
                ctx_id: 1,
                queue: proto::DV_QUEUE_OUTPUT,
                index: i,
                num_planes: 1,
                memory: proto::DV_MEM_MEMFD,
                reserved: 0,
                planes: bp,
            }),
            &[fd.as_fd()],
        );
    }
    // A job of an unknown context is answered by the reader at once: a
    // barrier after which every earlier message was handled.
    let mut cookie = 100;
    let mut barrier = |sock: &daedalus_daemon::transport::SeqPacket| {
        cookie += 1;
        raw_send(
            sock,
            &Message::Decode(
                proto::DecodeJob {
                    ctx_id: 99,
                    cookie,
                    ..Default::default()
                },
                vec![],
            ),
            &[],
        );
        match proto::decode(&recv_timeout(sock, 5 * SEC).unwrap()).unwrap() {
            Message::Result(r) => assert_eq!(r.cookie, cookie),
            m => panic!("{m:?}"),
        }
    };
    barrier(&sock);
    assert!(mapped(0) && mapped(1));
    raw_send(
        &sock,
        &Message::BufUnregister(proto::BufUnregister {
            ctx_id: 1,
            queue: proto::DV_QUEUE_OUTPUT,
            index: 0,
            reserved: 0,
        }),
        &[],
    );
    barrier(&sock);
    assert!(!mapped(0) && mapped(1));
    raw_send(
        &sock,
        &Message::CtxClose(proto::CtxClose {
            ctx_id: 1,
            reserved: 0,
        }),
        &[],
    );
    barrier(&sock);
    assert!(!mapped(1));
    drop(sock);
    assert!(matches!(
        join_timeout(t, 5 * SEC),
        Ok(SessionEnd::PeerClosed)
    ));
}

#[test]
fn a_contexts_results_keep_job_order_even_for_refused_jobs() {
    let (t, _sd, sock, log) = spawn_server(2, Duration::from_millis(300));
    raw_send(&sock, &hello(proto::DV_FEAT_ALL), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    let d = fmt::try_decoded(fmt::PIX_FMT_NV12, 64, 48);
    let mut planes = [proto::PlaneFmt::default(); 4];
    planes[0] = proto::PlaneFmt {
        bytesperline: d.planes[0].bytesperline,
        sizeimage: d.planes[0].sizeimage,
    };
    raw_send(
        &sock,
        &Message::CtxOpen(proto::CtxOpen {
            ctx_id: 1,
            codec: 4, // VP9: the slow test backend
            coded_fourcc: SLOW,
            capture_fourcc: fmt::PIX_FMT_NV12,
            width: 64,
            height: 48,
            num_planes: 1,
            reserved: 0,
            planes,
        }),
        &[],
    );
    for (queue, len) in [
        (proto::DV_QUEUE_OUTPUT, 4096),
        (proto::DV_QUEUE_CAPTURE, d.planes[0].sizeimage),
    ] {
        let mut bp = [proto::BufPlane::default(); 4];
        bp[0].length = len;
        let fd = memfd(u64::from(len));
        raw_send(
            &sock,
            &Message::BufRegister(proto::BufRegister {
                ctx_id: 1,
                queue,
                index: 0,
                num_planes: 1,
                memory: proto::DV_MEM_MEMFD,
                reserved: 0,
                planes: bp,
            }),
            &[fd.as_fd()],
        );
    }
    // Job 2 names an unregistered CAPTURE buffer, job 3 an invalid control.
    let bad_ctrl = [0u8; 3];
    for (cookie, capture, ctrls) in [
        (1u64, 0u32, vec![]),
        (2, 5, vec![]),
        (
            3,
            0,
            vec![proto::WireCtrl {
                id: 0x00a4_0901,
                payload: &bad_ctrl[..],
            }],
        ),
        (4, 0, vec![]),
    ] {
        raw_send(
            &sock,
            &Message::Decode(
                proto::DecodeJob {
                    ctx_id: 1,
                    cookie,
                    timestamp: cookie,
                    bytesused: 8,
                    capture_index: capture,
                    ..Default::default()
                },
                ctrls,
            ),
            &[],
        );
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        match proto::decode(&recv_timeout(&sock, 5 * SEC).unwrap()).unwrap() {
            Message::Result(r) => got.push((r.cookie, r.status, r.error)),
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(got[0], (1, DV_STATUS_DONE, 0));
    assert_eq!(got[1], (2, DV_STATUS_ERROR, EINVAL));
    assert_eq!((got[2].0, got[2].1), (3, DV_STATUS_ERROR));
    assert_ne!(got[2].2, 0);
    assert_eq!(got[3], (4, DV_STATUS_DONE, 0));
    assert_eq!(log.decoded.lock().len(), 2);
    drop(sock);
    assert!(matches!(
        join_timeout(t, 5 * SEC),
        Ok(SessionEnd::PeerClosed)
    ));
}
