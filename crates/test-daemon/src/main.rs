//! `daedalus-test-daemon`: a scriptable stand-in for `daedalus-daemon`.
//!
//! ```text
//! daedalus-test-daemon (--connect SOCKET | --bridge DEVICE) --control CTRL_SOCKET
//! ```
//!
//! Binds the control socket (a unix stream socket; a stale file is
//! replaced), connects to the frontend (retrying for up to 5 s), answers
//! the handshake and every job (DONE by default), and obeys one command per
//! line on the control socket (`ok`, `fail`, `hold`, `release`, `late MS`,
//! `garbage`, `foreign`, `replay`, `crash`, `status`, `wait-attached MS`),
//! replying `ok ...` or `error ...`. When the frontend ends the connection
//! the daemon does not reconnect; it keeps serving the control socket until
//! a signal ends it.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daedalus_daemon::chardev::Chardev;
use daedalus_daemon::transport::{SeqPacket, Transport};
use daedalus_test_daemon::TestDaemon;

const USAGE: &str =
    "usage: daedalus-test-daemon (--connect SOCKET | --bridge DEVICE) --control CTRL_SOCKET

  --connect SOCKET   the frontend's unix SOCK_SEQPACKET socket (CUSE frontend)
  --bridge DEVICE    the kernel module's bridge device (/dev/daedalus-bridge)
  --control PATH     unix stream socket for commands, one per line:
                     ok | fail | hold | release | late MS | garbage | foreign |
                     replay | crash | status | wait-attached MS";

/// How long a connect to the frontend is retried.
const CONNECT_RETRY: Duration = Duration::from_secs(5);

enum Target {
    Socket(PathBuf),
    Bridge(PathBuf),
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<(Target, PathBuf), String> {
    let (mut target, mut control) = (None, None);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--connect" => target = Some(Target::Socket(value()?.into())),
            "--bridge" => target = Some(Target::Bridge(value()?.into())),
            "--control" => control = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((
        target.ok_or("--connect SOCKET or --bridge DEVICE is required")?,
        control.ok_or("--control PATH is required")?,
    ))
}

fn connect(target: &Target) -> Result<Arc<dyn Transport>, String> {
    match target {
        Target::Socket(p) => {
            let deadline = Instant::now() + CONNECT_RETRY;
            loop {
                match SeqPacket::connect(p) {
                    Ok(s) => return Ok(Arc::new(s)),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("connecting to {}: {e}", p.display()))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        Target::Bridge(p) => {
            // A daemon killed just before may still hold the device (EBUSY).
            let deadline = Instant::now() + CONNECT_RETRY;
            loop {
                match Chardev::open(p) {
                    Ok(c) => return Ok(Arc::new(c)),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("opening {}: {e}", p.display()))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let (target, control) = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("daedalus-test-daemon: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let _ = std::fs::remove_file(&control);
    let listener = match UnixListener::bind(&control) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("daedalus-test-daemon: binding {}: {e}", control.display());
            return ExitCode::FAILURE;
        }
    };
    let link = match connect(&target) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("daedalus-test-daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    let daemon = match TestDaemon::new(link) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("daedalus-test-daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    let d = daemon.clone();
    std::thread::spawn(move || d.serve_control(listener));
    let end = daemon.serve();
    eprintln!(
        "daedalus-test-daemon: connection ended ({end}); {:?}; serving the control socket until killed",
        daemon.stats()
    );
    loop {
        std::thread::park();
    }
}
