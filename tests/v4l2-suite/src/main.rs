//! `daedalus-v4l2-suite`: the integration suite shared by every frontend
//! (kernel module, CUSE, and, for what applies, visl), over real ioctls.
//!
//! ```text
//! daedalus-v4l2-suite --device /dev/videoN [--media /dev/mediaN]
//!     [--memory mmap|userptr|dmabuf] [--daemon-socket PATH | --bridge PATH]
//!     [--test-daemon BIN] [--daedalus BIN] [--grace MS] [--requests-optional] [-v]
//!     (scenario FILE... | decode FILE --framemd5 OUT | badinput)
//! ```
//!
//! See tests/v4l2-suite/README.md. One line per scenario or check
//! (`PASS ...` / `FAIL ...`), then `N passed, M failed`; the exit status
//! is 1 when anything failed, 2 for usage errors.

mod badinput;
mod daemon;
mod scenario;
mod v4l2;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use decoder_core::scenario::Scenario;

use crate::daemon::{DaemonSlot, Target};
use crate::v4l2::Mem;

const USAGE: &str = "usage: daedalus-v4l2-suite --device /dev/videoN [--media /dev/mediaN]
         [--memory mmap|userptr|dmabuf] [--daemon-socket PATH | --bridge PATH]
         [--test-daemon BIN] [--daedalus BIN] [--grace MS] [--requests-optional] [-v]
         (scenario FILE... | decode FILE --framemd5 OUT | badinput)

  --device         the stateless decoder's video node
  --media          its media controller node (required by scenario and badinput)
  --memory         buffer memory of both queues (default mmap)
  --daemon-socket  the frontend's daemon socket: `daemon start` runs
                   daedalus-test-daemon --connect PATH (CUSE frontend)
  --bridge         the kernel bridge device: daedalus-test-daemon --bridge PATH
  --test-daemon    daedalus-test-daemon binary (default: next to this one)
  --daedalus       daedalus binary for `decode` (default: next to this one)
  --grace          least wait of an `expect`, and how long `expect ... empty`
                   watches, in ms (default 200)
  --requests-optional  badinput: the OUTPUT queue may take buffers without a
                   request (vb2 without requires_requests, e.g. visl)
  -v               print every scenario step";

struct Args {
    device: PathBuf,
    media: Option<PathBuf>,
    mem: Mem,
    target: Option<Target>,
    test_daemon: Option<PathBuf>,
    daedalus: Option<PathBuf>,
    grace_ms: u64,
    verbose: bool,
    requests_optional: bool,
    cmd: Cmd,
}

enum Cmd {
    Scenario(Vec<PathBuf>),
    Decode { input: PathBuf, framemd5: PathBuf },
    Badinput,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut device, mut media, mut mem, mut target) = (None, None, Mem::Mmap, None);
    let (mut test_daemon, mut daedalus, mut grace_ms, mut verbose) = (None, None, 200, false);
    let mut requests_optional = false;
    let cmd = loop {
        let a = it
            .next()
            .ok_or("no command (scenario, decode or badinput)")?;
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--device" => device = Some(PathBuf::from(value()?)),
            "--media" => media = Some(PathBuf::from(value()?)),
            "--memory" => {
                let v = value()?;
                mem = Mem::parse(&v).ok_or_else(|| format!("--memory: unknown {v:?}"))?;
            }
            "--daemon-socket" => target = Some(Target::Socket(value()?.into())),
            "--bridge" => target = Some(Target::Bridge(value()?.into())),
            "--test-daemon" => test_daemon = Some(PathBuf::from(value()?)),
            "--daedalus" => daedalus = Some(PathBuf::from(value()?)),
            "--grace" => {
                let v = value()?;
                grace_ms = v
                    .parse()
                    .map_err(|_| format!("--grace: not a number: {v}"))?;
            }
            "-v" | "--verbose" => verbose = true,
            "--requests-optional" => requests_optional = true,
            "-h" | "--help" => return Err(String::new()),
            "scenario" => {
                let files: Vec<PathBuf> = it.by_ref().map(PathBuf::from).collect();
                if files.is_empty() {
                    return Err("scenario needs at least one FILE".into());
                }
                break Cmd::Scenario(files);
            }
            "decode" => {
                let input = PathBuf::from(it.next().ok_or("decode needs FILE")?);
                let mut framemd5 = None;
                while let Some(x) = it.next() {
                    match x.as_str() {
                        "--framemd5" => {
                            framemd5 =
                                Some(PathBuf::from(it.next().ok_or("--framemd5 needs a value")?))
                        }
                        other => return Err(format!("decode: unknown argument {other}")),
                    }
                }
                break Cmd::Decode {
                    input,
                    framemd5: framemd5.ok_or("decode needs --framemd5 OUT")?,
                };
            }
            "badinput" => break Cmd::Badinput,
            other => return Err(format!("unknown argument {other}")),
        }
    };
    if let Some(extra) = it.next() {
        return Err(format!("unexpected argument {extra}"));
    }
    Ok(Args {
        device: device.ok_or("--device is required")?,
        media,
        mem,
        target,
        test_daemon,
        daedalus,
        grace_ms,
        verbose,
        requests_optional,
        cmd,
    })
}

fn open_media(a: &Args) -> Result<std::fs::File, String> {
    let p = a
        .media
        .as_ref()
        .ok_or("--media /dev/mediaN is required for this command")?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map_err(|e| format!("{}: {e}", p.display()))
}

fn run_scenarios(a: &Args, files: &[PathBuf]) -> Result<(usize, usize), String> {
    let media = open_media(a)?;
    let dir = std::env::temp_dir().join(format!("daedalus-v4l2-suite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bin = a
        .test_daemon
        .clone()
        .unwrap_or_else(|| daemon::default_bin("daedalus-test-daemon"));
    let mut slot = DaemonSlot::new(bin, a.target.clone(), dir.clone());
    let env = scenario::Env {
        video: &a.device,
        media: &media,
        mem: a.mem,
        grace_ms: a.grace_ms,
        verbose: a.verbose,
    };
    let (mut pass, mut fail) = (0, 0);
    for f in files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parsed = std::fs::read_to_string(f)
            .map_err(|e| format!("{}: {e}", f.display()))
            .and_then(|t| Scenario::parse(&name, &t));
        let r = parsed.and_then(|s| scenario::run(&env, &mut slot, &s));
        match r {
            Ok(o) => {
                pass += 1;
                println!("PASS scenario {name} ({} steps)", o.steps);
                for n in o.notes {
                    println!("     note: {n}");
                }
            }
            Err(m) => {
                fail += 1;
                println!("FAIL scenario {name}: {m}");
            }
        }
    }
    drop(slot);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((pass, fail))
}

fn run_decode(a: &Args, input: &Path, framemd5: &Path) -> (usize, usize) {
    let bin = a
        .daedalus
        .clone()
        .unwrap_or_else(|| daemon::default_bin("daedalus"));
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("decode")
        .arg(input)
        .arg("--device")
        .arg(&a.device)
        .arg("--memory")
        .arg(a.mem.name())
        .arg("--framemd5")
        .arg(framemd5);
    if let Some(m) = &a.media {
        cmd.arg("--media").arg(m);
    }
    let name = input.display();
    match cmd.status() {
        Ok(st) if st.success() => {
            let frames = std::fs::read_to_string(framemd5)
                .map(|t| t.lines().filter(|l| !l.starts_with('#')).count())
                .unwrap_or(0);
            if frames == 0 {
                println!("FAIL decode {name}: no frame written");
                (0, 1)
            } else {
                println!(
                    "PASS decode {name} ({} memory): {frames} frames",
                    a.mem.name()
                );
                (1, 0)
            }
        }
        Ok(st) => {
            println!("FAIL decode {name}: {} exited {st}", bin.display());
            (0, 1)
        }
        Err(e) => {
            println!("FAIL decode {name}: {}: {e}", bin.display());
            (0, 1)
        }
    }
}

fn main() -> ExitCode {
    let a = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("daedalus-v4l2-suite: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match v4l2::open_video(&a.device).and_then(|f| v4l2::querycap(&f)) {
        Ok(c) => {
            let s = |b: &[u8]| {
                let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
                String::from_utf8_lossy(&b[..end]).into_owned()
            };
            println!(
                "# {}: {} ({}), memory {}",
                a.device.display(),
                s(&c.card),
                s(&c.driver),
                a.mem.name()
            );
        }
        Err(e) => {
            eprintln!("daedalus-v4l2-suite: {}: {e}", a.device.display());
            return ExitCode::FAILURE;
        }
    }
    let r = match &a.cmd {
        Cmd::Scenario(files) => run_scenarios(&a, files),
        Cmd::Decode { input, framemd5 } => Ok(run_decode(&a, input, framemd5)),
        Cmd::Badinput => open_media(&a).map(|media| {
            badinput::run(&badinput::Env {
                video: &a.device,
                media: &media,
                mem: a.mem,
                requests_optional: a.requests_optional,
            })
        }),
    };
    match r {
        Ok((pass, fail)) => {
            println!("{pass} passed, {fail} failed");
            if fail == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("daedalus-v4l2-suite: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn command_lines() {
        let a = parse("--device /dev/video3 --media /dev/media1 --memory dmabuf --bridge /dev/daedalus-bridge scenario a.scn b.scn").unwrap();
        assert_eq!(a.device, PathBuf::from("/dev/video3"));
        assert_eq!(a.mem, Mem::Dmabuf);
        assert!(matches!(a.target, Some(Target::Bridge(_))));
        assert!(matches!(&a.cmd, Cmd::Scenario(f) if f.len() == 2));
        let a = parse("--device /dev/video0 --memory userptr --daemon-socket /run/d.sock decode x.h264 --framemd5 o.md5").unwrap();
        assert!(matches!(a.target, Some(Target::Socket(_))));
        assert!(matches!(&a.cmd, Cmd::Decode { framemd5, .. } if framemd5 == Path::new("o.md5")));
        let a = parse("--device /dev/video0 --requests-optional --grace 50 badinput").unwrap();
        assert!(a.requests_optional && a.grace_ms == 50 && matches!(a.cmd, Cmd::Badinput));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            "--device /dev/video0",
            "badinput",
            "--device /dev/video0 --memory overlay badinput",
            "--device /dev/video0 scenario",
            "--device /dev/video0 decode x.h264",
            "--device /dev/video0 badinput extra",
            "--device /dev/video0 --grace soon badinput",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
