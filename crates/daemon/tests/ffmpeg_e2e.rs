//! End to end through the daemon: an H.264 stream (encoded by the `ffmpeg`
//! tool) -> client parser -> `Device` (requests, controls, buffers) -> the
//! bridge protocol over a socketpair -> the server -> the FFmpeg backend
//! writing into the mapped CAPTURE memfds. Every picture must be
//! byte-identical to the same jobs decoded by calling the backend directly,
//! so the wire, the control transfer, the reference resolution and the
//! zero-copy buffer path change nothing.
//!
//! Needs the `ffmpeg` command-line tool with libx264 (.ci/install-deps).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use daedalus_client::h264::{H264Parser, Packing};
use daedalus_client::{Job, StreamParser};
use daedalus_daemon::backend::ffmpeg::FfmpegH264;
use daedalus_daemon::backend::{
    Backend, CaptureFormat, CaptureTarget, DecodeOutcome, JobFlags, JobInput,
};
use daedalus_daemon::server::{Server, ServerConfig, SessionEnd};
use daedalus_daemon::transport::{SeqPacket, Shutdown};
use decoder_core::ctrl::{validate_write, Codec, ControlValues};
use decoder_core::fmt;
use decoder_core::proto::DV_STATUS_DONE;
use decoder_core::state::{Memory, Queue, BUF_FLAG_M2M_HOLD_CAPTURE_BUF};

const W: u32 = 160;
const H: u32 = 96;
const FRAMES: u32 = 24;
const SEC: Duration = Duration::from_secs(1);

fn encode(name: &str, x264_params: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dv-daemon-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{name}.264"));
    let st = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size={W}x{H}:rate=25"))
        .args(["-frames:v", &FRAMES.to_string(), "-pix_fmt", "yuv420p"])
        .args(["-c:v", "libx264", "-x264-params", x264_params, "-f", "h264"])
        .arg(&out)
        .status()
        .expect("the ffmpeg tool (with libx264) is needed: see .ci/install-deps");
    assert!(st.success(), "ffmpeg failed to encode the test stream");
    out
}

/// Decodes the stream's jobs by calling the backend directly; returns, per
/// completed picture (timestamp), its NV12 bytes.
fn direct(jobs: &[Job]) -> Vec<(u64, Vec<u8>)> {
    let mut backend = FfmpegH264::new().unwrap();
    let mut effective = ControlValues::defaults(Codec::H264);
    let mut pending: Option<Vec<u8>> = None;
    let mut out = Vec::new();
    for job in jobs {
        for (id, bytes) in job.controls.iter() {
            effective.set_raw(id, validate_write(Codec::H264, id, bytes).unwrap());
        }
        let mut refs = Vec::new();
        (Codec::H264.desc().reference_timestamps)(&effective, &mut refs);
        let (w, h) = job.picture.coded;
        let mut buf = pending
            .take()
            .unwrap_or_else(|| vec![0u8; (w * h * 3 / 2) as usize]);
        let mut t =
            CaptureTarget::contiguous(CaptureFormat::Nv12, w, h, w as usize, &mut buf).unwrap();
        let input = JobInput {
            codec: Codec::H264,
            controls: &effective,
            bitstream: &job.bitstream,
            timestamp: job.timestamp,
            flags: JobFlags {
                more_slices: job.flags.more_slices,
                continues_picture: job.flags.continues_picture,
            },
            references: &refs,
        };
        match backend.decode(&input, &mut t).unwrap() {
            DecodeOutcome::Held => pending = Some(buf),
            DecodeOutcome::Decoded => out.push((job.timestamp, buf)),
        }
    }
    out
}

/// The same jobs through a Device and the daemon's server.
fn through_daemon(jobs: &[Job]) -> Vec<(u64, Vec<u8>)> {
    let (daemon_end, front) = SeqPacket::pair().unwrap();
    let shutdown = Shutdown::new().unwrap();
    let sd = shutdown.clone();
    let server = Server::new(ServerConfig {
        threads: 2,
        ..ServerConfig::default()
    });
    let t = std::thread::spawn(move || server.serve(Arc::new(daemon_end), &sd));
    let mut f = Frontend::new(front);
    f.attach();
    let c = f.dev.open_context().unwrap();
    let want = fmt::try_coded(fmt::PIX_FMT_H264_SLICE, W, H, 0);
    f.dev.set_format(c, Queue::Output, want).unwrap();
    let (outputs, captures) = (4u32, 32u32);
    let pictures_in_stream = jobs.iter().filter(|j| !j.flags.continues_picture).count();
    assert!(pictures_in_stream <= captures as usize);
    for (q, n) in [(Queue::Output, outputs), (Queue::Capture, captures)] {
        assert_eq!(f.dev.reqbufs(c, q, Memory::Mmap, n), Ok(n));
        f.alloc(c, q, n);
        f.dev.streamon(c, q, f.now).unwrap();
    }
    // One CAPTURE buffer per picture, never reused: every reference stays
    // in the buffer that holds it.
    let mut next_capture = 0;
    let mut pictures = Vec::new();
    for (k, job) in jobs.iter().enumerate() {
        if !job.flags.continues_picture {
            f.queue_capture(c, next_capture);
            next_capture += 1;
        }
        let out = k as u32 % outputs;
        if k as u32 >= outputs {
            f.dev.dqbuf(c, Queue::Output).unwrap();
        }
        let flags = if job.flags.more_slices {
            BUF_FLAG_M2M_HOLD_CAPTURE_BUF
        } else {
            0
        };
        let done = f.done(c).len();
        f.queue_output_with(c, out, job.timestamp, &job.bitstream, flags, &job.controls);
        assert!(
            f.pump_until(10 * SEC, |f| f.done(c).len() == done + 1),
            "job {k} not answered"
        );
        let (cookie, ok) = f.done(c)[done];
        let r = f.result_of(cookie).unwrap();
        assert!(ok && r.status == DV_STATUS_DONE, "job {k}: {r:?}");
        if !job.flags.more_slices {
            let sent = f.sent.iter().find(|s| s.cookie == cookie).unwrap();
            let fd = &f.mem[&(c, Queue::Capture, sent.capture)][0];
            let (w, h) = job.picture.coded;
            let cf = f.dev.format(c, Queue::Capture).unwrap();
            assert_eq!(cf.height, h);
            let stride = cf.planes[0].bytesperline as usize;
            let mut raw = vec![0u8; cf.planes[0].sizeimage as usize];
            rustix::io::pread(fd, &mut raw, 0).unwrap();
            assert_eq!(r.bytesused[0], cf.planes[0].sizeimage);
            // Y rows then CbCr rows, without the row padding.
            let buf: Vec<u8> = (0..(h + h / 2) as usize)
                .flat_map(|y| raw[y * stride..y * stride + w as usize].iter().copied())
                .collect();
            pictures.push((job.timestamp, buf));
        }
    }
    shutdown.trigger();
    assert!(matches!(
        join_timeout(t, 10 * SEC),
        Ok(SessionEnd::Shutdown)
    ));
    pictures
}

fn check(name: &str, x264_params: &str, packing: Packing) {
    let file = encode(name, x264_params);
    let mut parser = H264Parser::from_file(&file, packing).unwrap();
    let mut jobs = Vec::new();
    while let Some(j) = parser.next_job().unwrap() {
        jobs.push(j);
    }
    if matches!(packing, Packing::SlicePerJob { .. }) {
        assert!(
            jobs.iter().filter(|j| j.flags.more_slices).count() >= FRAMES as usize,
            "{name}: several slices per picture"
        );
    }
    let want = direct(&jobs);
    assert_eq!(want.len(), FRAMES as usize, "{name}: direct decode");
    let got = through_daemon(&jobs);
    assert_eq!(got.len(), want.len(), "{name}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.0, w.0, "{name}: picture {i} timestamp");
        assert!(g.1 == w.1, "{name}: picture {i} differs");
    }
    // The pictures are not trivially equal (a moving test pattern).
    assert_ne!(want[0].1, want[FRAMES as usize - 1].1);
    let _ = std::fs::remove_file(file);
}

#[test]
fn h264_pictures_through_the_daemon_match_direct_decoding() {
    check(
        "ibp",
        "keyint=12:bframes=2:ref=3:b-pyramid=normal",
        Packing::PicturePerJob,
    );
}

#[test]
fn h264_slices_through_the_daemon_match_direct_decoding() {
    check(
        "slices",
        "keyint=8:bframes=1:slices=3",
        Packing::SlicePerJob { annex_b: false },
    );
}
