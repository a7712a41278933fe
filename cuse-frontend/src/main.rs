//! `daedalus-cuse`: the CUSE frontend of daedalus-v4l2.
//!
//! ```text
//! daedalus-cuse serve [--name video9] [--media-name media9]
//!                     (--socket PATH | --embedded-daemon) [--memory userptr|dmabuf]
//!                     [--threads N]
//! daedalus-cuse run -- CMD [ARGS...]
//! ```
//!
//! `serve` registers `/dev/<name>` (and the media node) through
//! `/dev/cuse` and serves them until killed. With `--socket` it listens
//! on a unix `SOCK_SEQPACKET` socket for `daedalus-daemon --connect PATH`
//! (each new connection replaces the previous daemon); with
//! `--embedded-daemon` the daemon runs in-process. `run` starts CMD under
//! the seccomp launcher that gives it media request fds (docs/cuse.md).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use daedalus_cuse::{cuse, launcher, media, video};
use daedalus_daemon::server::{EmbeddedDaemon, ServerConfig};
use daedalus_daemon::transport::SeqPacket;

const USAGE: &str = "usage:
  daedalus-cuse serve [--name NAME] [--media-name NAME] (--socket PATH | --embedded-daemon) [--memory userptr|dmabuf] [--job-timeout-ms MS] [--threads N] [--daemon-threads N]
  daedalus-cuse run -- CMD [ARGS...]";

#[derive(Debug)]
struct ServeArgs {
    name: String,
    media_name: Option<String>,
    socket: Option<PathBuf>,
    embedded: bool,
    threads: usize,
    daemon_threads: usize,
    memory: video::NodeMemory,
    job_timeout_ms: Option<u64>,
}

fn parse_serve(args: &[String]) -> Result<ServeArgs> {
    let mut a = ServeArgs {
        name: "video9".into(),
        media_name: None,
        socket: None,
        embedded: false,
        threads: 4,
        daemon_threads: 1,
        memory: video::NodeMemory::Userptr,
        job_timeout_ms: None,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{k} needs a value"))
        };
        match k.as_str() {
            "--name" => a.name = val()?,
            "--media-name" => a.media_name = Some(val()?),
            "--socket" => a.socket = Some(PathBuf::from(val()?)),
            "--embedded-daemon" => a.embedded = true,
            "--job-timeout-ms" => {
                a.job_timeout_ms = Some(val()?.parse().context("--job-timeout-ms")?)
            }
            "--memory" => {
                a.memory = match val()?.as_str() {
                    "userptr" => video::NodeMemory::Userptr,
                    "dmabuf" => video::NodeMemory::Dmabuf,
                    m => bail!("--memory {m}: userptr or dmabuf"),
                }
            }
            "--threads" => a.threads = val()?.parse().context("--threads")?,
            "--daemon-threads" => a.daemon_threads = val()?.parse().context("--daemon-threads")?,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if a.socket.is_none() && !a.embedded {
        bail!("one of --socket PATH or --embedded-daemon is required\n{USAGE}");
    }
    if a.name.is_empty() || a.name.contains('/') {
        bail!("bad device name {:?}", a.name);
    }
    Ok(a)
}

fn serve(a: ServeArgs) -> Result<()> {
    let mut cfg = video::device_config(a.memory);
    if let Some(ms) = a.job_timeout_ms {
        cfg.job_timeout = ms.saturating_mul(1_000_000);
    }
    let node = video::VideoNode::new(&a.name, cfg);
    let chan = cuse::Channel::open("/dev/cuse".as_ref()).context("opening /dev/cuse")?;
    node.set_channel(chan.clone());
    let mut threads = cuse::serve(chan, &a.name, Arc::new(node.clone()), a.threads)
        .context("registering the video node")?;
    eprintln!("daedalus-cuse: /dev/{} registered", a.name);
    let media_name = a
        .media_name
        .clone()
        .unwrap_or_else(|| format!("{}-media", a.name));
    threads.extend(media::start(&node.shared, &media_name, a.threads)?);
    eprintln!("daedalus-cuse: /dev/{media_name} registered");
    let _embedded = if a.embedded {
        let (d, sock) = EmbeddedDaemon::spawn(ServerConfig {
            threads: a.daemon_threads.max(1),
            ..ServerConfig::default()
        })?;
        node.shared.attach_daemon(sock)?;
        Some(d)
    } else {
        None
    };
    if let Some(path) = &a.socket {
        let _ = std::fs::remove_file(path);
        let listener = listen(path)?;
        eprintln!("daedalus-cuse: waiting for daemons on {}", path.display());
        let shared = node.shared.clone();
        threads.push(std::thread::spawn(move || loop {
            match rustix::net::accept_with(&listener, rustix::net::SocketFlags::CLOEXEC) {
                Ok(fd) => match SeqPacket::from_fd(fd) {
                    Ok(s) => {
                        eprintln!("daedalus-cuse: daemon connected");
                        if let Err(e) = shared.attach_daemon(s) {
                            eprintln!("daedalus-cuse: attach: {e}");
                        }
                    }
                    Err(e) => eprintln!("daedalus-cuse: accepted socket: {e}"),
                },
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    eprintln!("daedalus-cuse: accept: {e}");
                    return;
                }
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn listen(path: &std::path::Path) -> Result<std::os::fd::OwnedFd> {
    use rustix::net::{
        bind, listen, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
    };
    let fd = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    bind(&fd, &SocketAddrUnix::new(path)?).with_context(|| format!("bind {}", path.display()))?;
    listen(&fd, 4)?;
    Ok(fd)
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// Test helper (`daedalus-cuse probe-eintr /dev/videoN`): a blocking DQBUF
/// on a streaming CAPTURE queue with nothing to decode must sleep, and a
/// signal must end it with `EINTR` (FUSE_INTERRUPT → the parked reply is
/// answered). Prints the time the DQBUF took.
fn probe_eintr(dev: &str) -> Result<()> {
    use daedalus_cuse::uapi::*;
    use std::os::fd::AsRawFd;
    use zerocopy::FromZeros;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)?;
    let fd = f.as_raw_fd();
    let ioctl = |cmd: u32, arg: *mut libc::c_void| -> std::io::Result<()> {
        // SAFETY: each call passes a pointer to a struct of the size the
        // ioctl number encodes, alive across the call.
        if unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg) } < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    for ty in [BUF_TYPE_VIDEO_OUTPUT_MPLANE, BUF_TYPE_VIDEO_CAPTURE_MPLANE] {
        let mut r = RequestBuffers::new_zeroed();
        r.type_ = ty;
        r.memory = MEMORY_USERPTR;
        r.count = 1;
        ioctl(VIDIOC_REQBUFS, (&mut r as *mut RequestBuffers).cast())?;
        let mut t = ty;
        ioctl(VIDIOC_STREAMON, (&mut t as *mut u32).cast())?;
    }
    // SAFETY: installs a no-op handler without SA_RESTART for SIGUSR1.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        // SAFETY: `me` is the main thread, alive (it is in the DQBUF).
        unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
    });
    let mut planes = [Plane::default(); 1];
    let mut b = Buffer::new_zeroed();
    b.type_ = BUF_TYPE_VIDEO_CAPTURE_MPLANE;
    b.memory = MEMORY_USERPTR;
    b.length = 1;
    b.m = planes.as_mut_ptr() as u64;
    let t0 = std::time::Instant::now();
    let r = ioctl(VIDIOC_DQBUF, (&mut b as *mut Buffer).cast());
    let took = t0.elapsed();
    let _ = t.join();
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
            println!("blocking DQBUF: EINTR after {} ms", took.as_millis());
            if took < std::time::Duration::from_millis(400) {
                bail!("DQBUF returned before the signal: it did not block");
            }
            Ok(())
        }
        other => bail!("blocking DQBUF: expected EINTR, got {other:?} after {took:?}"),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("serve") => parse_serve(&args[1..]).and_then(serve),
        Some("run") => {
            let rest = match args.get(1).map(String::as_str) {
                Some("--") => &args[2..],
                _ => &args[1..],
            };
            if rest.is_empty() {
                Err(anyhow::anyhow!("run needs a command\n{USAGE}"))
            } else {
                launcher::run(rest).map(|code| std::process::exit(code))
            }
        }
        Some("probe-eintr") => match args.get(1) {
            Some(dev) => probe_eintr(dev),
            None => Err(anyhow::anyhow!("probe-eintr DEVICE")),
        },
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    if let Err(e) = r {
        eprintln!("daedalus-cuse: {e:#}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn serve_args() {
        let a = parse_serve(&s(&["--name", "video3", "--socket", "/tmp/x"])).unwrap();
        assert_eq!(a.name, "video3");
        assert_eq!(a.socket, Some(PathBuf::from("/tmp/x")));
        assert!(parse_serve(&s(&["--name", "v"])).is_err());
        assert!(parse_serve(&s(&["--embedded-daemon", "--bogus"])).is_err());
        assert!(parse_serve(&s(&["--embedded-daemon", "--name", "a/b"])).is_err());
    }
}
