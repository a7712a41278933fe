//! `daedalus-daemon`: connects to a frontend and decodes its jobs.
//!
//! ```text
//! daedalus-daemon --connect PATH [--once] [--threads N]
//! daedalus-daemon --bridge /dev/daedalus-bridge [--once] [--threads N]
//! ```
//!
//! `--job-stats PATH` writes, on exit, one line per decoded job: its
//! timestamp (ns), when its backend decode call started (µs after the first
//! one's) and how long it took (µs), for the benchmarks' per-job overhead of
//! the device paths.
//!
//! Reconnects with a growing delay whenever the frontend goes away or cannot
//! be reached, unless `--once` is given. SIGTERM and SIGINT end it cleanly.
//! Logging goes to stderr, filtered by `RUST_LOG` (default `info`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use daedalus_daemon::chardev::Chardev;
use daedalus_daemon::server::{ServeError, Server, ServerConfig, SessionEnd};
use daedalus_daemon::transport::{SeqPacket, Shutdown, Transport};

const USAGE: &str =
    "usage: daedalus-daemon (--connect PATH | --bridge DEV) [--once] [--threads N] [--plugin LIB]
                       [--job-stats PATH] [--idle-watch-us N]

  --connect PATH  unix SOCK_SEQPACKET socket of the frontend
  --bridge DEV    the kernel module's bridge device (/dev/daedalus-bridge)
  --once          serve one connection, do not reconnect
  --threads N     most jobs decoding at once (default: number of cores)
  --plugin LIB    decode the codecs LIB supports with this backend plugin
                  (include/daedalus_backend.h); others use the built-in backends
  --job-stats PATH
                  on exit, write 'TIMESTAMP_NS START_US BACKEND_US' per decoded
                  job (start relative to the first job's)
  --idle-watch-us N
                  an idle context worker watches its queue N us (yielding
                  the CPU) before it sleeps (default 250; 0: sleep at once)

Logging: RUST_LOG (default info).";

/// Where the frontend is.
#[derive(Debug, PartialEq)]
enum Endpoint {
    /// A unix seqpacket socket (CUSE frontend, embedded runner).
    Socket(PathBuf),
    /// The kernel module's bridge character device.
    Bridge(PathBuf),
}

impl Endpoint {
    fn path(&self) -> &std::path::Path {
        match self {
            Endpoint::Socket(p) | Endpoint::Bridge(p) => p,
        }
    }

    fn connect(&self) -> std::io::Result<Arc<dyn Transport>> {
        Ok(match self {
            Endpoint::Socket(p) => Arc::new(SeqPacket::connect(p)?),
            Endpoint::Bridge(p) => Arc::new(Chardev::open(p)?),
        })
    }
}

#[derive(Debug)]
struct Args {
    connect: Endpoint,
    once: bool,
    threads: Option<usize>,
    plugin: Option<PathBuf>,
    job_stats: Option<PathBuf>,
    idle_watch_us: Option<u64>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut connect = None;
    let mut once = false;
    let mut threads = None;
    let mut plugin = None;
    let mut job_stats = None;
    let mut idle_watch_us = None;
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--connect" | "--bridge" if connect.is_some() => {
                return Err("give one of --connect and --bridge".into())
            }
            "--connect" => connect = Some(Endpoint::Socket(PathBuf::from(value("--connect")?))),
            "--bridge" => connect = Some(Endpoint::Bridge(PathBuf::from(value("--bridge")?))),
            "--threads" => {
                let v = value("--threads")?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--threads: not a number: {v}"))?;
                if n == 0 {
                    return Err("--threads must be at least 1".into());
                }
                threads = Some(n);
            }
            "--plugin" => plugin = Some(PathBuf::from(value("--plugin")?)),
            "--job-stats" => job_stats = Some(PathBuf::from(value("--job-stats")?)),
            "--idle-watch-us" => {
                let v = value("--idle-watch-us")?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("--idle-watch-us: not a number: {v}"))?;
                if n > 100_000 {
                    return Err("--idle-watch-us: at most 100000".into());
                }
                idle_watch_us = Some(n);
            }
            "--once" => once = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        connect: connect.ok_or("--connect PATH or --bridge DEV is required")?,
        once,
        threads,
        plugin,
        job_stats,
        idle_watch_us,
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("daedalus-daemon: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let shutdown = match Shutdown::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("shutdown pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // The handler writes one byte to (a duplicate of) the latch's pipe;
        // the duplicate stays open for the life of the process.
        let registered = shutdown
            .signal_fd()
            .and_then(|fd| signal_hook::low_level::pipe::register(sig, fd));
        if let Err(e) = registered {
            tracing::error!("cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }

    let mut cfg = ServerConfig::default();
    if let Some(n) = args.threads {
        cfg.threads = n;
    }
    if let Some(us) = args.idle_watch_us {
        cfg.idle_watch = std::time::Duration::from_micros(us);
    }
    if let Some(path) = &args.plugin {
        match daedalus_daemon::backend::plugin::PluginLibrary::load(path) {
            Ok(lib) => {
                cfg.backends = daedalus_daemon::backend::plugin::factory(lib, cfg.backends.clone());
            }
            Err(e) => {
                eprintln!("daedalus-daemon: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    tracing::info!(path = %args.connect.path().display(), threads = cfg.threads, "daedalus-daemon starting");
    let server = Server::new(cfg);
    if args.job_stats.is_some() {
        daedalus_daemon::stats::enable();
    }
    let code = serve_loop(&args, &server, &shutdown);
    if let Some(path) = &args.job_stats {
        let samples = daedalus_daemon::stats::take_samples();
        let t0 = samples.iter().map(|s| s.start()).min();
        let lines: String = samples
            .iter()
            .map(|s| {
                let start = t0.map_or(0, |t0| s.start().duration_since(t0).as_micros());
                format!("{} {} {}\n", s.timestamp, start, s.took.as_micros())
            })
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("daedalus-daemon: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    code
}

/// Connects, serves and reconnects until the end (see the module docs).
fn serve_loop(args: &Args, server: &Server, shutdown: &Shutdown) -> ExitCode {
    // The delay before the next attempt grows while attempts fail (no
    // frontend, or one that keeps breaking the protocol) and starts over
    // after a connection that ended normally.
    let min_backoff = Duration::from_millis(100);
    let max_backoff = Duration::from_secs(5);
    let mut backoff = min_backoff;
    loop {
        if shutdown.is_triggered() {
            return ExitCode::SUCCESS;
        }
        let end = match args.connect.connect() {
            Ok(link) => {
                tracing::info!("connected");
                server.serve(link, shutdown)
            }
            Err(e) => {
                tracing::warn!(path = %args.connect.path().display(), "cannot connect: {e}");
                if args.once {
                    return ExitCode::FAILURE;
                }
                if shutdown.wait_timeout(backoff) {
                    return ExitCode::SUCCESS;
                }
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        match end {
            Ok(SessionEnd::Shutdown) => return ExitCode::SUCCESS,
            Ok(SessionEnd::PeerClosed) if args.once => return ExitCode::SUCCESS,
            Err(e) if args.once => {
                report(&e);
                return ExitCode::FAILURE;
            }
            Ok(SessionEnd::PeerClosed) => backoff = min_backoff,
            Err(e) => {
                report(&e);
                backoff = (backoff * 2).min(max_backoff);
            }
        }
        // Give a restarting frontend a moment before reconnecting.
        if shutdown.wait_timeout(backoff) {
            return ExitCode::SUCCESS;
        }
    }
}

fn report(e: &ServeError) {
    tracing::warn!("connection ended: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn args() {
        let a = parse(&["--connect", "/tmp/s", "--threads=3", "--once"]).unwrap();
        assert_eq!(a.connect, Endpoint::Socket(PathBuf::from("/tmp/s")));
        let b = parse(&["--bridge", "/dev/daedalus-bridge"]).unwrap();
        assert_eq!(
            b.connect,
            Endpoint::Bridge(PathBuf::from("/dev/daedalus-bridge"))
        );
        assert!(parse(&["--bridge", "/dev/x", "--connect", "/tmp/s"]).is_err());
        assert_eq!(a.threads, Some(3));
        assert!(a.once);
        assert!(parse(&["--threads", "2"]).is_err());
        assert!(parse(&["--connect"]).is_err());
        assert!(parse(&["--connect", "x", "--threads", "0"]).is_err());
        assert!(parse(&["--connect", "x", "--bogus"]).is_err());
        let w = parse(&["--connect", "x", "--idle-watch-us", "0"]).unwrap();
        assert_eq!(w.idle_watch_us, Some(0));
        assert!(parse(&["--connect", "x", "--idle-watch-us", "1000000"]).is_err());
        assert!(parse(&["--connect", "x", "--idle-watch-us", "-1"]).is_err());
        assert_eq!(parse(&["--help"]).unwrap_err(), "");
    }
}
