//! The Rust test plugin behind the daemon's server: jobs sent over the
//! bridge protocol by `decoder_core::state::Device` are decoded by the
//! plugin into the shared CAPTURE memory; the codecs the plugin does not
//! announce go to the fallback factory.

mod common;
mod plugins;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use daedalus_daemon::backend::plugin::{self, PluginLibrary};
use daedalus_daemon::backend::{Backend, CaptureTarget, DecodeError, DecodeOutcome, JobInput};
use daedalus_daemon::server::{Server, ServerConfig, SessionEnd};
use daedalus_daemon::transport::{SeqPacket, Shutdown};
use decoder_core::ctrl::Codec;
use decoder_core::fmt;
use decoder_core::proto::{DV_STATUS_DONE, DV_STATUS_ERROR};
use decoder_core::state::{CtxId, Queue};

const SEC: Duration = Duration::from_secs(1);
const EBADMSG: u32 = 74;
const EAGAIN: u32 = 11;
const EINVAL: u32 = 22;
const W: usize = 64;
const H: usize = 48;
/// CAPTURE row stride: rows are padded to `fmt::CAPTURE_ROW_ALIGN` pixels.
const S: usize = W.next_multiple_of(fmt::CAPTURE_ROW_ALIGN as usize);

fn spawn() -> (
    std::thread::JoinHandle<ServeResult>,
    Shutdown,
    SeqPacket,
    Arc<Log>,
) {
    let log = Arc::new(Log::default());
    let lib = PluginLibrary::load(plugins::test_plugin()).unwrap();
    let server = Server::new(ServerConfig {
        threads: 2,
        backends: plugin::factory(lib, common::factory(log.clone(), Duration::ZERO)),
        close_timeout: 10 * SEC,
        ..ServerConfig::default()
    });
    let (d, f) = SeqPacket::pair().unwrap();
    let shutdown = Shutdown::new().unwrap();
    let sd = shutdown.clone();
    let t = std::thread::spawn(move || server.serve(Arc::new(d), &sd));
    (t, shutdown, f, log)
}

/// The 64x48 NV12 picture of CAPTURE buffer `i`.
fn picture(f: &Frontend, c: CtxId, i: u32) -> Vec<u8> {
    let mut buf = vec![0u8; S * H * 3 / 2];
    rustix::io::pread(&f.mem[&(c, Queue::Capture, i)][0], &mut buf, 0).unwrap();
    buf
}

/// Checks that `pic` is a test-plugin gradient (each plane's samples step
/// by the documented amounts across and down) and returns its three
/// starting values, which are bytes of the job's seed.
fn gradient_origin(pic: &[u8]) -> (u8, u8, u8) {
    let (y, uv) = pic.split_at(S * H);
    let o = (y[0], uv[0], uv[1]);
    for row in 0..H {
        for x in 0..W {
            let want = o.0.wrapping_add(x as u8).wrapping_add(3 * row as u8);
            assert_eq!(y[row * S + x], want, "luma ({x}, {row})");
        }
    }
    for row in 0..H / 2 {
        for x in 0..W / 2 {
            let cb = o.1.wrapping_add(2 * x as u8).wrapping_add(5 * row as u8);
            let cr = o.2.wrapping_add(3 * x as u8).wrapping_add(7 * row as u8);
            assert_eq!(uv[row * S + 2 * x], cb, "Cb ({x}, {row})");
            assert_eq!(uv[row * S + 2 * x + 1], cr, "Cr ({x}, {row})");
        }
    }
    o
}

#[test]
fn server_decodes_with_the_plugin_into_shared_memory() {
    let (t, sd, sock, log) = spawn();
    let mut f = Frontend::new(sock);
    f.attach();
    let c = f.context(fmt::PIX_FMT_H264_SLICE, 6);
    let jobs: [(&[u8], u64); 6] = [
        (b"K first", 1000),
        (b"K second", 2000),
        (b"P inter", 3000),
        (b"E\x4a", 4000),
        (b"P after the error", 5000),
        (b"K again", 6000),
    ];
    for (i, (bits, ts)) in jobs.iter().enumerate() {
        f.queue_output(c, i as u32, *ts, bits);
    }
    assert!(f.pump_until(5 * SEC, |f| f.done(c).len() == jobs.len()));
    let mut origins = Vec::new();
    for j in &f.sent {
        let r = f.result_of(j.cookie).unwrap();
        match j.timestamp {
            4000 => assert_eq!((r.status, r.error), (DV_STATUS_ERROR, EBADMSG)),
            5000 => assert_eq!((r.status, r.error), (DV_STATUS_ERROR, EAGAIN)),
            ts => {
                assert_eq!((r.status, r.error), (DV_STATUS_DONE, 0), "job {ts}");
                assert_eq!(r.bytesused[0] as usize, S * H * 3 / 2);
                origins.push(gradient_origin(&picture(&f, c, j.capture)));
            }
        }
    }
    // Different jobs, different pictures.
    assert_eq!(origins.len(), 4);
    for (a, o) in origins.iter().enumerate() {
        assert!(!origins[..a].contains(o), "two jobs gave the same picture");
    }
    // None of the H.264 jobs reached the fallback backend.
    assert!(log.decoded.lock().is_empty());
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}

/// Fallback backend of the second test: fills luma with the first
/// bitstream byte and chroma with the second.
struct Fill(Codec);

impl Backend for Fill {
    fn name(&self) -> &'static str {
        "fill"
    }
    fn codec(&self) -> Codec {
        self.0
    }
    fn decode(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
    ) -> Result<DecodeOutcome, DecodeError> {
        out.check()?;
        out.luma.data.fill(job.bitstream[0]);
        out.chroma.data.fill(job.bitstream[1]);
        Ok(DecodeOutcome::Decoded)
    }
    fn reset(&mut self) {}
}

#[test]
fn codecs_the_plugin_lacks_go_to_the_fallback() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let a = asked.clone();
    let fallback: plugin::Factory = Arc::new(move |codec| {
        a.lock().unwrap().push(codec);
        Ok(Box::new(Fill(codec)) as Box<dyn Backend>)
    });
    let lib = PluginLibrary::load(plugins::test_plugin()).unwrap();
    let server = Server::new(ServerConfig {
        threads: 2,
        backends: plugin::factory(lib, fallback),
        close_timeout: 10 * SEC,
        ..ServerConfig::default()
    });
    let (d, sock) = SeqPacket::pair().unwrap();
    let sd = Shutdown::new().unwrap();
    let sd2 = sd.clone();
    let t = std::thread::spawn(move || server.serve(Arc::new(d), &sd2));
    let mut f = Frontend::new(sock);
    f.attach();
    let av1 = f.context(fmt::PIX_FMT_AV1_FRAME, 2);
    let vp8 = f.context(fmt::PIX_FMT_VP8_FRAME, 2);
    f.queue_output(av1, 0, 10, &[0x21, 0x84]);
    // 'E' 22: the plugin fails the job with EINVAL.
    f.queue_output(vp8, 0, 20, b"E\x16");
    assert!(f.pump_until(5 * SEC, |f| f.done(av1).len() == 1
        && f.done(vp8).len() == 1));
    let j = f.sent.iter().find(|j| j.ctx == av1.0).unwrap();
    let r = f.result_of(j.cookie).unwrap();
    assert_eq!(r.status, DV_STATUS_DONE);
    assert_eq!(f.capture_bytes(av1, j.capture), (0x21, 0x84));
    let r = f.result_of(f.done(vp8)[0].0).unwrap();
    assert_eq!((r.status, r.error), (DV_STATUS_ERROR, EINVAL));
    assert_eq!(*asked.lock().unwrap(), [Codec::Av1]);
    sd.trigger();
    assert!(matches!(join_timeout(t, 5 * SEC), Ok(SessionEnd::Shutdown)));
}
