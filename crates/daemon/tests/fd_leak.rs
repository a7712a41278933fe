//! Nothing a connection received or mapped survives it. Alone in its test
//! binary so that no other test opens descriptors meanwhile.

mod common;

use std::time::Duration;

use common::*;
use daedalus_daemon::server::SessionEnd;
use daedalus_daemon::transport::Transport;
use decoder_core::fmt;

const SEC: Duration = Duration::from_secs(1);

/// Mappings of the test's memfds in this process.
fn test_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:dv-test"))
        .count()
}

/// A session with decoding contexts, a job still running, and an unusable
/// context; ended by `end`.
fn session(end: &str) {
    let slow = Duration::from_millis(800);
    let (t, sd, sock, _log) = spawn_server(2, slow);
    let mut f = Frontend::new(sock);
    f.attach();
    let a = f.context(fmt::PIX_FMT_H264_SLICE, 3);
    let b = f.context(fmt::PIX_FMT_H264_SLICE, 2);
    let s = f.context(SLOW, 2);
    let u = f.context(fmt::PIX_FMT_AV1_FRAME, 1);
    for i in 0..3 {
        f.queue_output(a, i, u64::from(i + 1), &[i as u8]);
    }
    f.queue_output(b, 0, 1, &[9]);
    f.queue_output(s, 0, 1, &[7]);
    f.queue_output(u, 0, 1, &[7]);
    assert!(f.pump_until(5 * SEC, |f| f.done(a).len() == 3 && f.done(b).len() == 1));
    // Usually the slow job is still running now (not asserted: a loaded
    // machine may have finished it; the leak checks hold either way).
    // The daemon maps the registered buffers (this is what must go away).
    // a: 3 OUTPUT + 3 CAPTURE, b and s: 1 + 1 each (u has no session).
    let mapped = test_mappings();
    assert!(mapped >= 10, "{mapped} mappings");
    match end {
        "disconnect" => {
            drop(f);
            assert!(matches!(
                join_timeout(t, 5 * SEC),
                Ok(SessionEnd::PeerClosed)
            ));
        }
        "shutdown" => {
            sd.trigger();
            assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
            drop(f);
        }
        "garbage" => {
            f.sock.send(b"garbage", &[]).unwrap();
            assert!(join_timeout(t, 5 * SEC).is_err());
            drop(f);
        }
        _ => unreachable!(),
    }
}

#[test]
fn no_descriptor_or_mapping_survives_a_connection() {
    // Warm up anything the process opens once (thread stacks, caches).
    session("disconnect");
    let before = open_fds();
    assert_eq!(test_mappings(), 0);
    for end in ["disconnect", "shutdown", "garbage", "disconnect"] {
        session(end);
        assert_eq!(open_fds(), before, "descriptors leaked by a {end}");
        assert_eq!(test_mappings(), 0, "mappings leaked by a {end}");
    }
}
