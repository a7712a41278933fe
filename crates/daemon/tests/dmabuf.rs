//! `DV_MEM_DMABUF` buffers with real dmabufs (made by `/dev/udmabuf` from
//! memfds, so the test can check the bytes through the memfd). Where the
//! kernel offers no `/dev/udmabuf` (containers) the tests say so and pass
//! without checking anything; the VM (`vm/run.sh`, Linux 6.12 with udmabuf)
//! runs them for real.

mod common;

use std::time::Duration;

use common::*;
use daedalus_daemon::buffers::{BufferError, RegisteredBuffer};
use daedalus_daemon::server::SessionEnd;
use decoder_core::fmt;
use decoder_core::proto::{self, DV_MEM_DMABUF, DV_QUEUE_CAPTURE, DV_QUEUE_OUTPUT};
use decoder_core::state::Queue;

const SEC: Duration = Duration::from_secs(1);

fn dev() -> Option<std::os::fd::OwnedFd> {
    let d = udmabuf_dev();
    if d.is_none() {
        // tests/vm/30-daemon-dmabuf.sh sets this: there the paths must run.
        assert!(
            std::env::var_os("DAEDALUS_REQUIRE_UDMABUF").is_none(),
            "DAEDALUS_REQUIRE_UDMABUF is set but /dev/udmabuf is not usable"
        );
        eprintln!("no usable /dev/udmabuf here: dmabuf paths not exercised (run in the VM)");
    }
    d
}

fn register(queue: u32, planes: &[(u32, u32)]) -> proto::BufRegister {
    let mut p = [proto::BufPlane::default(); 4];
    for (slot, &(offset, length)) in p.iter_mut().zip(planes) {
        *slot = proto::BufPlane {
            fd_index: 0,
            offset,
            length,
            reserved: 0,
        };
    }
    proto::BufRegister {
        ctx_id: 1,
        queue,
        index: 0,
        num_planes: planes.len() as u32,
        memory: DV_MEM_DMABUF,
        reserved: 0,
        planes: p,
    }
}

#[test]
fn dmabuf_planes_are_sized_mapped_and_synced() {
    let Some(dev) = dev() else { return };
    let (memfd, dmabuf) = udmabuf(&dev, 3 * 4096);
    rustix::io::pwrite(&memfd, b"slice data", 100).unwrap();
    // The size comes from the dmabuf (lseek): a range past it is refused.
    let dup = || rustix::io::fcntl_dupfd_cloexec(&dmabuf, 0).unwrap();
    let e = RegisteredBuffer::map(&register(DV_QUEUE_OUTPUT, &[(8192, 8193)]), vec![dup()])
        .unwrap_err();
    assert!(
        matches!(e, BufferError::OutOfRange { size: 12288, .. }),
        "{e}"
    );
    // OUTPUT: read through the mapping, with sync start/end around it.
    let out =
        RegisteredBuffer::map(&register(DV_QUEUE_OUTPUT, &[(100, 4000)]), vec![dup()]).unwrap();
    assert_eq!(out.read().unwrap().bitstream(10).unwrap(), b"slice data");
    // CAPTURE: two planes of one dmabuf, written through the mappings.
    let cap = RegisteredBuffer::map(
        &register(DV_QUEUE_CAPTURE, &[(0, 4096), (4096 + 8, 4000)]),
        vec![dup()],
    )
    .unwrap();
    {
        let mut w = cap.write().unwrap();
        let mut p = w.planes_mut();
        p[0].fill(0x11);
        p[1].fill(0x22);
    }
    let mut got = vec![0u8; 3 * 4096];
    rustix::io::pread(&memfd, &mut got, 0).unwrap();
    assert!(got[..4096].iter().all(|b| *b == 0x11));
    assert_eq!(&got[4096..4096 + 8], &[0; 8]);
    assert!(got[4104..4104 + 4000].iter().all(|b| *b == 0x22));
    assert!(got[4104 + 4000..].iter().all(|b| *b == 0));
    // udmabuf syncs caches in begin/end_cpu_access: never retained.
    assert!(!cap.retainable());
    // Access works again after the previous one ended.
    drop(cap.write().unwrap());
    drop(cap.read().unwrap());
}

#[test]
fn jobs_on_dmabufs_through_the_server() {
    let Some(dev) = dev() else { return };
    let (t, sd, sock, log) = spawn_server(2, Duration::ZERO);
    let mut f = Frontend::new_dmabuf(sock, dev);
    f.attach();
    let a = f.context(fmt::PIX_FMT_H264_SLICE, 2);
    let b = f.context(fmt::PIX_FMT_VP8_FRAME, 1);
    f.queue_output(a, 0, 1000, &[0x41, 0x61]);
    f.queue_output(a, 1, 2000, &[0x42, 0x62]);
    f.queue_output(b, 0, 1000, &[0x43, 0x63]);
    assert!(f.pump_until(5 * SEC, |f| f.done(a).len() == 2 && f.done(b).len() == 1));
    assert!(f.done(a).iter().all(|(_, ok)| *ok));
    assert!(!f.done(b)[0].1, "the VP8 test backend always fails");
    for j in f.sent.iter().filter(|j| j.ctx == a.0) {
        let k = (j.timestamp / 1000) as u8;
        assert_eq!(f.capture_bytes(a, j.capture), (0x40 + k, 0x60 + k));
    }
    assert_eq!(log.decoded.lock().len(), 3);
    // What went to the daemon were dmabufs (their fdinfo names the exporter).
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f.mem[&(a, Queue::Capture, 0)][0]);
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    assert!(info.contains("exp_name:"), "{info}");
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}
