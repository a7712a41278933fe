//! The scenario's daemon: a `daedalus-test-daemon` process the suite
//! spawns, signals (stop, cont, kill) and commands over its control socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use daedalus_test_daemon::ControlClient;
use decoder_core::scenario::DaemonOp;

/// How the test daemon reaches the frontend.
#[derive(Debug, Clone)]
pub enum Target {
    /// `--connect SOCKET` (CUSE frontend).
    Socket(PathBuf),
    /// `--bridge DEVICE` (kernel module).
    Bridge(PathBuf),
}

/// A running (or stopped) test daemon.
pub struct Daemon {
    child: Child,
    ctl: ControlClient,
    stopped: bool,
}

/// The daemon of a scenario run (at most one at a time).
pub struct DaemonSlot {
    bin: PathBuf,
    target: Option<Target>,
    dir: PathBuf,
    current: Option<Daemon>,
}

fn signal(child: &Child, sig: rustix::process::Signal) -> Result<(), String> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).ok_or("bad pid")?;
    rustix::process::kill_process(pid, sig).map_err(|e| format!("kill({sig:?}): {e}"))
}

impl DaemonSlot {
    /// A slot that spawns `bin` towards `target`, with its control socket
    /// in `dir`.
    pub fn new(bin: PathBuf, target: Option<Target>, dir: PathBuf) -> Self {
        DaemonSlot {
            bin,
            target,
            dir,
            current: None,
        }
    }

    fn ctl_path(&self) -> PathBuf {
        self.dir.join("test-daemon.ctl")
    }

    fn start(&mut self) -> Result<(), String> {
        self.kill();
        let target = self
            .target
            .clone()
            .ok_or("`daemon start` needs --daemon-socket or --bridge")?;
        let ctl = self.ctl_path();
        let _ = std::fs::remove_file(&ctl);
        let mut cmd = Command::new(&self.bin);
        match &target {
            Target::Socket(p) => cmd.arg("--connect").arg(p),
            Target::Bridge(p) => cmd.arg("--bridge").arg(p),
        };
        cmd.arg("--control").arg(&ctl).stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.bin.display()))?;
        let mut c = match ControlClient::connect(&ctl, Duration::from_secs(5)) {
            Ok(c) => c,
            Err(e) => {
                let _ = child.kill();
                let st = child.wait();
                return Err(format!("test daemon control socket: {e} (daemon {st:?})"));
            }
        };
        if let Err(e) = c.send("wait-attached 5000") {
            let _ = child.kill();
            let st = child.wait();
            return Err(format!(
                "test daemon did not attach to the frontend: {e} (daemon {st:?})"
            ));
        }
        self.current = Some(Daemon {
            child,
            ctl: c,
            stopped: false,
        });
        Ok(())
    }

    /// SIGKILL and reap the current daemon, if any.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.current.take() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
    }

    fn cmd(d: &mut Daemon, line: &str) -> Result<(), String> {
        d.ctl
            .send(line)
            .map(|_| ())
            .map_err(|e| format!("test daemon `{line}`: {e}"))
    }

    /// Carries out a scenario's `daemon` step.
    ///
    /// `stop` is `hold` then SIGSTOP, `cont` SIGCONT then `release`; a
    /// command for a stopped daemon continues it for the command only
    /// (its jobs stay held), except `ok` and `fail`, which also resume it
    /// (as in decoder-core's simulator).
    pub fn op(&mut self, op: DaemonOp) -> Result<(), String> {
        if op == DaemonOp::Start {
            return self.start();
        }
        let Some(d) = self.current.as_mut() else {
            return Err(format!("daemon {op:?} without a running daemon"));
        };
        use rustix::process::Signal;
        match op {
            DaemonOp::Start => unreachable!(),
            DaemonOp::Stop => {
                if !d.stopped {
                    Self::cmd(d, "hold")?;
                    signal(&d.child, Signal::STOP)?;
                    d.stopped = true;
                }
            }
            DaemonOp::Cont => {
                if d.stopped {
                    signal(&d.child, Signal::CONT)?;
                    d.stopped = false;
                }
                Self::cmd(d, "release")?;
            }
            DaemonOp::Kill => self.kill(),
            DaemonOp::Ok | DaemonOp::Fail => {
                let line = if op == DaemonOp::Ok { "ok" } else { "fail" };
                if d.stopped {
                    signal(&d.child, Signal::CONT)?;
                    d.stopped = false;
                    Self::cmd(d, line)?;
                    Self::cmd(d, "release")?;
                } else {
                    Self::cmd(d, line)?;
                }
            }
            DaemonOp::Garbage | DaemonOp::Foreign | DaemonOp::Replay => {
                let line = match op {
                    DaemonOp::Garbage => "garbage",
                    DaemonOp::Foreign => "foreign",
                    _ => "replay",
                };
                if d.stopped {
                    signal(&d.child, Signal::CONT)?;
                    let r = Self::cmd(d, line);
                    signal(&d.child, Signal::STOP)?;
                    r?;
                } else {
                    Self::cmd(d, line)?;
                }
            }
        }
        Ok(())
    }

    /// The daemon's `status` line, when one runs.
    pub fn status(&mut self) -> Option<String> {
        let d = self.current.as_mut()?;
        if d.stopped {
            return None;
        }
        d.ctl.send("status").ok()
    }
}

impl Drop for DaemonSlot {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.ctl_path());
    }
}

/// `daedalus-test-daemon` next to this executable, or on PATH.
pub fn default_bin(name: &str) -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let p = dir.join(name);
            if p.exists() {
                return p;
            }
            // cargo test binaries live in target/*/deps.
            if let Some(up) = dir.parent() {
                let p = up.join(name);
                if p.exists() {
                    return p;
                }
            }
        }
    }
    Path::new(name).to_path_buf()
}
