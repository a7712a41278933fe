//! The test daemon over a `SOCK_SEQPACKET` pair, driven like a frontend
//! would: real protocol datagrams in, results checked out; and the binary
//! against a listening socket (control socket, crash).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daedalus_daemon::transport::{SeqPacket, Transport};
use daedalus_test_daemon::{Command, ControlClient, TestDaemon, FOREIGN_OFFSET, GARBAGE};
use decoder_core::proto::{self, Message};

struct Frontend {
    link: SeqPacket,
    buf: Vec<u8>,
    seq: u32,
}

impl Frontend {
    fn send(&mut self, m: &Message<'_>) {
        self.seq += 1;
        self.link.send(&m.to_bytes(self.seq), &[]).unwrap();
    }

    fn send_raw(&mut self, b: &[u8]) {
        self.link.send(b, &[]).unwrap();
    }

    /// The next datagram within `ms`, raw.
    fn recv_raw(&mut self, ms: u64) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            match self.link.try_recv(&mut self.buf) {
                Ok(n) => return Some(self.buf[..n].to_vec()),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => return None,
            }
        }
    }

    fn result(&mut self, ms: u64) -> Option<proto::JobResult> {
        let b = self.recv_raw(ms)?;
        match proto::decode(&b).expect("daemon sent a malformed datagram") {
            Message::Result(r) => Some(r),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    fn handshake(&mut self) -> proto::Hello {
        self.send(&Message::Hello(proto::Hello {
            version_major: proto::DV_VERSION_MAJOR,
            version_minor: proto::DV_VERSION_MINOR,
            max_inflight: 8,
            features: proto::DV_FEAT_ALL,
            max_msg_size: proto::DV_MAX_MSG_SIZE,
            reserved: 0,
        }));
        let b = self.recv_raw(1000).expect("hello reply");
        match proto::decode(&b).unwrap() {
            Message::HelloReply(h) => h,
            other => panic!("expected a hello reply, got {other:?}"),
        }
    }

    fn open_ctx(&mut self, ctx: u32) {
        self.send(&Message::CtxOpen(proto::CtxOpen {
            ctx_id: ctx,
            codec: decoder_core::ctrl::Codec::H264.to_wire(),
            coded_fourcc: u32::from_le_bytes(*b"S264"),
            capture_fourcc: u32::from_le_bytes(*b"NV12"),
            width: 64,
            height: 64,
            num_planes: 1,
            ..Default::default()
        }));
        for (q, i) in [(proto::DV_QUEUE_OUTPUT, 0), (proto::DV_QUEUE_CAPTURE, 0)] {
            self.send(&Message::BufRegister(proto::BufRegister {
                ctx_id: ctx,
                queue: q,
                index: i,
                num_planes: 1,
                memory: proto::DV_MEM_MEMFD,
                ..Default::default()
            }));
        }
    }

    fn decode(&mut self, ctx: u32, cookie: u64) {
        let job = proto::DecodeJob {
            ctx_id: ctx,
            cookie,
            timestamp: cookie * 1000,
            bytesused: 16,
            ..Default::default()
        };
        self.send(&Message::Decode(job, Vec::new()));
    }
}

/// A daemon serving one end of a pair on a thread; the other end.
fn start() -> (TestDaemon, Frontend, std::thread::JoinHandle<()>) {
    let (d, f) = SeqPacket::pair().unwrap();
    let daemon = TestDaemon::new(Arc::new(d)).unwrap();
    let dd = daemon.clone();
    let t = std::thread::spawn(move || {
        dd.serve();
    });
    (
        daemon,
        Frontend {
            link: f,
            buf: vec![0u8; proto::DV_MAX_MSG_SIZE as usize],
            seq: 0,
        },
        t,
    )
}

#[test]
fn commands_parse() {
    assert_eq!(Command::parse("late 250").unwrap(), Command::Late(250));
    assert_eq!(Command::parse(" hold ").unwrap(), Command::Hold);
    assert_eq!(
        Command::parse("wait-attached 5").unwrap(),
        Command::WaitAttached(5)
    );
    assert!(Command::parse("late").is_err());
    assert!(Command::parse("late soon").is_err());
    assert!(Command::parse("dance").is_err());
}

#[test]
fn handshake_then_jobs_done_by_default_then_failed() {
    let (d, mut f, _t) = start();
    assert!(!d.attached());
    let h = f.handshake();
    assert_eq!(h.version_major, proto::DV_VERSION_MAJOR);
    assert_eq!(h.features & !proto::DV_FEAT_ALL, 0);
    assert!(d.attached());
    f.open_ctx(7);
    f.decode(7, 1);
    let r = f.result(1000).expect("result");
    assert_eq!(
        (r.ctx_id, r.cookie, r.status),
        (7, 1, proto::DV_STATUS_DONE)
    );
    assert_eq!(d.command(Command::Fail), "ok");
    f.decode(7, 2);
    let r = f.result(1000).expect("result");
    assert_eq!((r.cookie, r.status), (2, proto::DV_STATUS_ERROR));
    assert_ne!(r.error, 0);
    d.command(Command::Ok);
    f.decode(7, 3);
    assert_eq!(f.result(1000).unwrap().status, proto::DV_STATUS_DONE);
    let s = d.stats();
    assert_eq!((s.hellos, s.jobs, s.results, s.violations), (1, 3, 3, 0));
}

#[test]
fn hold_stalls_and_release_answers_in_order() {
    let (d, mut f, _t) = start();
    f.handshake();
    f.open_ctx(1);
    d.command(Command::Hold);
    f.decode(1, 10);
    f.decode(1, 11);
    assert!(f.result(200).is_none(), "held jobs must not be answered");
    assert!(d.command(Command::Status).contains("held=2"));
    assert_eq!(d.command(Command::Release), "ok released=2");
    assert_eq!(f.result(1000).unwrap().cookie, 10);
    assert_eq!(f.result(1000).unwrap().cookie, 11);
    // Not holding any more.
    f.decode(1, 12);
    assert_eq!(f.result(1000).unwrap().cookie, 12);
}

#[test]
fn late_answers_after_the_delay() {
    let (d, mut f, _t) = start();
    f.handshake();
    f.open_ctx(1);
    d.command(Command::Late(300));
    let t0 = Instant::now();
    f.decode(1, 5);
    assert!(f.result(150).is_none(), "answered too early");
    let r = f.result(2000).expect("late result");
    assert_eq!(r.cookie, 5);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    d.command(Command::Late(0));
    f.decode(1, 6);
    assert_eq!(f.result(200).unwrap().cookie, 6);
}

#[test]
fn garbage_foreign_and_replay() {
    let (d, mut f, _t) = start();
    f.handshake();
    f.open_ctx(3);
    d.command(Command::Garbage);
    let g = f.recv_raw(1000).unwrap();
    assert_eq!(g, GARBAGE);
    assert!(proto::decode(&g).is_err());

    d.command(Command::Hold);
    f.decode(3, 40);
    // Wait until the job is held, then answer it naming another context.
    let t0 = Instant::now();
    while !d.command(Command::Status).contains("held=1") {
        assert!(t0.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(d.command(Command::Foreign), "ok cookie=40");
    let r = f.result(1000).unwrap();
    assert_eq!((r.ctx_id, r.cookie), (3 + FOREIGN_OFFSET, 40));
    // The job itself is still held and answered normally on release.
    d.command(Command::Release);
    let r = f.result(1000).unwrap();
    assert_eq!((r.ctx_id, r.cookie), (3, 40));
    // Replay repeats the genuine answer, not the foreign one.
    assert_eq!(d.command(Command::Replay), "ok cookie=40");
    assert_eq!(f.result(1000).unwrap(), r);
}

#[test]
fn foreign_waits_for_the_next_job_when_none_is_held() {
    let (d, mut f, _t) = start();
    f.handshake();
    f.open_ctx(2);
    let dd = d.clone();
    let t = std::thread::spawn(move || dd.command(Command::Foreign));
    std::thread::sleep(Duration::from_millis(100));
    f.decode(2, 9);
    assert_eq!(t.join().unwrap(), "ok cookie=9");
    // Both the real and the foreign answer arrive, in some order.
    let mut got = [f.result(1000).unwrap(), f.result(1000).unwrap()];
    got.sort_by_key(|r| r.ctx_id);
    assert_eq!((got[0].ctx_id, got[1].ctx_id), (2, 2 + FOREIGN_OFFSET));
    // With no job at all it gives up.
    let t0 = Instant::now();
    assert_eq!(d.command(Command::Foreign), "ok no-job");
    assert!(t0.elapsed() >= Duration::from_millis(900));
    assert_eq!(d.command(Command::Replay), "ok cookie=9");
}

#[test]
fn unregistered_names_are_counted_and_malformed_input_ends_the_connection() {
    let (d, mut f, t) = start();
    f.handshake();
    f.decode(99, 1); // context 99 never opened
    assert_eq!(f.result(1000).unwrap().cookie, 1);
    assert_eq!(d.stats().violations, 1);
    f.send_raw(b"\x00\x01garbage from the frontend");
    t.join().unwrap();
    assert_eq!(d.stats().malformed, 1);
    assert!(!d.attached());
    // The daemon closed its end: the frontend reads end of stream.
    let mut b = vec![0u8; proto::DV_MAX_MSG_SIZE as usize];
    assert!(f.link.recv_blocking(&mut b).is_err());
    assert_eq!(d.command(Command::WaitAttached(50)), "error not attached");
}

#[test]
fn a_new_hello_forgets_the_previous_registrations() {
    let (d, mut f, _t) = start();
    f.handshake();
    f.open_ctx(4);
    f.handshake();
    f.decode(4, 1);
    assert_eq!(f.result(1000).unwrap().cookie, 1);
    assert_eq!(d.stats().violations, 1);
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_daedalus-test-daemon"))
}

fn listen(path: &Path) -> OwnedFd {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&fd, &SocketAddrUnix::new(path).unwrap()).unwrap();
    rustix::net::listen(&fd, 4).unwrap();
    fd
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dv-testd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn binary_serves_the_control_socket_and_crashes_on_command() {
    let dir = tmpdir("bin");
    let sock = dir.join("front");
    let ctl = dir.join("ctl");
    let l = listen(&sock);
    let mut child = std::process::Command::new(bin())
        .args(["--connect", sock.to_str().unwrap(), "--control"])
        .arg(&ctl)
        .spawn()
        .unwrap();
    let conn = rustix::net::accept(&l).unwrap();
    let mut f = Frontend {
        link: SeqPacket::from_fd(conn).unwrap(),
        buf: vec![0u8; proto::DV_MAX_MSG_SIZE as usize],
        seq: 0,
    };
    let mut c = ControlClient::connect(&ctl, Duration::from_secs(5)).unwrap();
    f.handshake();
    assert_eq!(c.send("wait-attached 1000").unwrap(), "ok");
    f.open_ctx(1);
    c.send("fail").unwrap();
    f.decode(1, 1);
    assert_eq!(f.result(1000).unwrap().status, proto::DV_STATUS_ERROR);
    assert!(c.send("bogus").is_err());
    let st = c.send("status").unwrap();
    assert!(st.contains("jobs=1") && st.contains("results=1"), "{st}");
    let _ = c.send("crash");
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(6), "{status:?}"); // SIGABRT
    let mut b = vec![0u8; proto::DV_MAX_MSG_SIZE as usize];
    assert!(f.link.recv_blocking(&mut b).is_err(), "connection must end");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_usage_errors() {
    let out = std::process::Command::new(bin()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = tmpdir("bridge");
    let out = std::process::Command::new(bin())
        .args(["--bridge", "/nonexistent/daedalus-bridge", "--control"])
        .arg(dir.join("ctl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
