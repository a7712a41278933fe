//! What two thread wake-ups cost on this machine, for reading the per-job
//! overhead of `just bench`: the round-trip time of a datagram between two
//! threads over a unix `SOCK_SEQPACKET` socketpair, each waiting in `poll`,
//! when the sender has been busy for a while (as a decoding worker is) and
//! the receiver asleep, wherever the scheduler puts them. A job crosses at
//! least two such hand-offs (the result to the frontend, the next job to
//! the daemon); the embedded stack keeps them on one awake CPU to pay less.
//!
//! `wake_floor [BUSY_US] [ROUNDS]` (defaults: 3000 µs, 300 rounds).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::{
    recv, send, socketpair, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};

fn wait_recv(fd: &OwnedFd, buf: &mut [u8]) -> rustix::io::Result<usize> {
    let mut p = [PollFd::new(fd, PollFlags::IN)];
    poll(&mut p, None)?;
    recv(fd, buf, RecvFlags::empty()).map(|(n, _)| n)
}

fn main() -> rustix::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let busy = Duration::from_micros(args.next().and_then(|a| a.parse().ok()).unwrap_or(3000));
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n) = wait_recv(&b, &mut buf) {
            if n == 0 || send(b.as_fd(), &buf[..n], SendFlags::empty()).is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 64];
    let mut rtt = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        // Busy, as a worker decoding a picture.
        let until = Instant::now() + busy;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        let t0 = Instant::now();
        send(a.as_fd(), &[0u8; 32], SendFlags::empty())?;
        wait_recv(&a, &mut buf)?;
        rtt.push(t0.elapsed());
    }
    drop(a);
    let _ = echo.join();
    rtt.sort_unstable();
    let q = |p: f64| rtt[((rtt.len() - 1) as f64 * p).round() as usize].as_micros();
    println!(
        "two thread wake-ups (socketpair round trip after {} us busy, threads unplaced): median {} us, p99 {} us ({} rounds)",
        busy.as_micros(),
        q(0.5),
        q(0.99),
        rtt.len()
    );
    Ok(())
}
