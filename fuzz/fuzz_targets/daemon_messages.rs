//! A daemon sending arbitrary datagrams to a device with a job in flight,
//! and arbitrary scenario text: nothing panics; a rejected datagram
//! detaches the daemon with every job completed.
#![no_main]

use decoder_core::scenario::{run_on_sim, Scenario};
use decoder_core::sim::{DaemonMode, Sim};
use decoder_core::state::{Device, Link, Memory, QbufArgs, Queue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Scenario::parse("fuzz", &String::from_utf8_lossy(data)) {
        let _ = run_on_sim(&s);
    }
    let mut sim = Sim::new(Device::new(Default::default()));
    sim.daemon_start();
    sim.daemon.mode = DaemonMode::Stopped;
    let c = sim.dev.open_context().unwrap();
    let now = sim.now;
    for q in [Queue::Output, Queue::Capture] {
        sim.dev.reqbufs(c, q, Memory::Mmap, 2).unwrap();
        sim.dev.streamon(c, q, now).unwrap();
    }
    sim.dev.qbuf(c, Queue::Capture, 0, Memory::Mmap, QbufArgs::default(), now).unwrap();
    let r = sim.dev.request_alloc().unwrap();
    let args = QbufArgs { bytesused: [16, 0, 0, 0], request: Some(r), ..Default::default() };
    sim.dev.qbuf(c, Queue::Output, 0, Memory::Mmap, args, now).unwrap();
    sim.dev.request_queue(r, now).unwrap();
    sim.pump();
    for chunk in data.split(|b| *b == 0xff) {
        let before = sim.dev.link();
        let ok = sim.daemon_send_raw(chunk);
        if !ok && before != Link::Detached {
            assert_eq!(sim.dev.link(), Link::Detached);
            assert_eq!(sim.dev.inflight_count(), 0);
        }
    }
});
