//! `daedalus decode` on damaged input: truncated files, flipped bytes,
//! random bytes, a decode killed midway. Every run must end on its own
//! within a bound, with exit status 0 or 1 (never a panic, 101, or a
//! signal), and a failing run must say why on stderr.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_daedalus"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("daedalus-robust-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn make_h264(dir: &Path) -> Vec<u8> {
    let f = common::encode(
        dir,
        "src.h264",
        "176x144",
        30,
        &["-c:v", "libx264", "-bf", "2", "-x264-params", "keyint=10"],
    );
    std::fs::read(f).unwrap()
}

/// Runs a decode of `data`; returns (exit code, stderr).
fn run(dir: &Path, name: &str, data: &[u8]) -> (i32, String) {
    let f = dir.join(format!("{name}.h264"));
    std::fs::write(&f, data).unwrap();
    let start = Instant::now();
    let mut child = Command::new(bin())
        .arg("decode")
        .arg(&f)
        .args(["--framemd5", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let code = st
                .code()
                .unwrap_or_else(|| panic!("{name}: killed by a signal: {st:?}\n{err}"));
            return (code, err);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{name}: decode hung for 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check(name: &str, code: i32, err: &str) {
    assert!(
        code == 0 || code == 1,
        "{name}: exit {code} (panic?)\n{err}"
    );
    assert!(!err.contains("panicked"), "{name}: panicked\n{err}");
    if code == 1 {
        assert!(
            err.contains("daedalus:"),
            "{name}: failed without saying why\n{err}"
        );
    }
}

/// Small deterministic generator (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn damaged_inputs_end_cleanly() {
    let dir = tmpdir("damaged");
    let good = make_h264(&dir);
    let (code, err) = run(&dir, "intact", &good);
    assert_eq!(code, 0, "intact stream failed: {err}");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0;
    let mut failed = 0;
    // truncated at several points
    for cut in [
        0usize,
        3,
        40,
        good.len() / 3,
        good.len() / 2,
        good.len() - 7,
    ] {
        let (code, err) = run(&dir, &format!("cut{cut}"), &good[..cut]);
        check(&format!("truncated at {cut}"), code, &err);
        runs += 1;
        failed += usize::from(code != 0);
    }
    // flipped bytes past the first parameter sets
    for i in 0..12 {
        let mut bad = good.clone();
        for _ in 0..(1 + i * 3) {
            let at = 64 + (rng.next() as usize) % (bad.len() - 64);
            bad[at] ^= 1 << (rng.next() % 8);
        }
        let (code, err) = run(&dir, &format!("flip{i}"), &bad);
        check(&format!("flipped #{i}"), code, &err);
        runs += 1;
        failed += usize::from(code != 0);
    }
    // random bytes, with and without start codes sprinkled in
    for i in 0..6 {
        let mut junk: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
        if i % 2 == 1 {
            for k in (0..junk.len() - 4).step_by(97) {
                junk[k..k + 4].copy_from_slice(&[0, 0, 0, 1]);
            }
        }
        let (code, err) = run(&dir, &format!("junk{i}"), &junk);
        check(&format!("random #{i}"), code, &err);
        runs += 1;
        failed += usize::from(code != 0);
    }
    println!("damaged inputs: {runs} runs, {failed} ended with a clear error, 0 panics, 0 hangs");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_decode_killed_midway_leaves_nothing_behind() {
    let dir = tmpdir("kill");
    let good = make_h264(&dir);
    let mut big = Vec::new();
    for _ in 0..40 {
        big.extend_from_slice(&good);
    }
    let f = dir.join("big.h264");
    std::fs::write(&f, &big).unwrap();
    for delay in [5u64, 30, 80] {
        let mut child = Command::new(bin())
            .arg("decode")
            .arg(&f)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        let st = child.wait().unwrap();
        assert!(!st.success() || st.code() == Some(0));
    }
    // the machine is left usable: a new decode works
    let (code, err) = run(&dir, "after", &good);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
