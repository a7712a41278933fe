//! The `daedalus-daemon` binary: connects, reconnects, exits on signals.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use daedalus_daemon::transport::{SeqPacket, Transport};
use decoder_core::state::Link;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use rustix::process::{kill_process, Pid, Signal};

const SEC: Duration = Duration::from_secs(1);

fn sock_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("dv-daemon-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn listen(path: &PathBuf) -> OwnedFd {
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

fn accept(l: &OwnedFd, timeout: Duration) -> Option<SeqPacket> {
    let mut fds = [rustix::event::PollFd::new(l, rustix::event::PollFlags::IN)];
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut fds, Some(&ts)).unwrap() == 0 {
        return None;
    }
    let s = rustix::net::accept_with(l.as_fd(), SocketFlags::CLOEXEC).unwrap();
    Some(SeqPacket::from_fd(s).unwrap())
}

fn daemon(path: &PathBuf, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_daedalus-daemon"))
        .arg("--connect")
        .arg(path)
        .args(["--threads", "1"])
        .args(extra)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait(child: &mut Child, timeout: Duration) -> ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("daemon did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, sig: Signal) {
    kill_process(Pid::from_child(child), sig).unwrap();
}

#[test]
fn sigterm_ends_a_connected_daemon_cleanly() {
    let path = sock_path("term");
    let l = listen(&path);
    let mut child = daemon(&path, &[]);
    let sock = accept(&l, 10 * SEC).expect("daemon connects");
    let mut f = Frontend::new(sock);
    f.attach();
    assert!(matches!(f.dev.link(), Link::Attached { .. }));
    signal(&child, Signal::TERM);
    let st = wait(&mut child, 10 * SEC);
    assert!(st.success(), "{st:?}");
    // The daemon closed its end.
    assert!(recv_timeout(&f.sock, 5 * SEC).is_err());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn reconnects_after_the_frontend_goes_away_and_sigint_ends_it() {
    let path = sock_path("reconnect");
    let l = listen(&path);
    let mut child = daemon(&path, &[]);
    for _ in 0..2 {
        let sock = accept(&l, 10 * SEC).expect("daemon (re)connects");
        let mut f = Frontend::new(sock);
        f.attach();
        // Frontend goes away.
        drop(f);
    }
    // A frontend that breaks the protocol is dropped, then reconnected to.
    let sock = accept(&l, 10 * SEC).expect("daemon reconnects");
    raw_send(&sock, &hello(0), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    sock.send(b"garbage", &[]).unwrap();
    assert!(recv_timeout(&sock, 5 * SEC).is_err(), "dropped");
    let sock = accept(&l, 10 * SEC).expect("daemon reconnects after an error");
    let mut f = Frontend::new(sock);
    f.attach();
    signal(&child, Signal::INT);
    assert!(wait(&mut child, 10 * SEC).success());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn sigterm_while_waiting_to_connect() {
    use std::io::BufRead;
    let path = sock_path("absent");
    let mut child = Command::new(env!("CARGO_BIN_EXE_daedalus-daemon"))
        .arg("--connect")
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Signal only once it runs (handlers installed) and has failed to
    // connect twice: it keeps retrying.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("cannot connect") && tx.send(()).is_err() {
                break;
            }
        }
    });
    for _ in 0..2 {
        rx.recv_timeout(30 * SEC)
            .expect("daemon retries connecting");
    }
    assert!(child.try_wait().unwrap().is_none(), "keeps retrying");
    let t = Instant::now();
    signal(&child, Signal::TERM);
    assert!(wait(&mut child, 10 * SEC).success());
    assert!(t.elapsed() < 3 * SEC);
}

#[test]
fn once_exits_when_the_frontend_leaves() {
    let path = sock_path("once");
    let l = listen(&path);
    let mut child = daemon(&path, &["--once"]);
    let sock = accept(&l, 10 * SEC).expect("daemon connects");
    let mut f = Frontend::new(sock);
    f.attach();
    drop(f);
    assert!(wait(&mut child, 10 * SEC).success());
    // A frontend that breaks the protocol makes `--once` fail.
    let mut child = daemon(&path, &["--once"]);
    let sock = accept(&l, 10 * SEC).expect("daemon connects");
    raw_send(&sock, &hello(0), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    sock.send(b"garbage", &[]).unwrap();
    assert_eq!(wait(&mut child, 10 * SEC).code(), Some(1));
    // Nothing to connect to.
    drop(l);
    let _ = std::fs::remove_file(&path);
    let mut child = daemon(&path, &["--once"]);
    assert_eq!(wait(&mut child, 10 * SEC).code(), Some(1));
    // Bad arguments.
    let st = Command::new(env!("CARGO_BIN_EXE_daedalus-daemon"))
        .arg("--threads")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
}
