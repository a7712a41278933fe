//! Random but well-formed message sequences (contexts opened, re-opened and
//! closed, buffers registered over and over, jobs naming anything, cancels
//! of anything) never panic the server, and while the connection stands
//! every decode job is answered exactly once.

mod common;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::*;
use daedalus_daemon::transport::{SeqPacket, Transport};
use decoder_core::fmt;
use decoder_core::proto::{self, Message};

const SEC: Duration = Duration::from_secs(1);

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

fn ctx_open(rng: &mut Rng) -> proto::CtxOpen {
    if rng.below(10) < 8 {
        // A context the daemon serves: H.264 (fast test backend) or VP9
        // (slow), 64x48 NV12.
        let (codec, coded) =
            rng.pick(&[(1u32, fmt::PIX_FMT_H264_SLICE), (4, fmt::PIX_FMT_VP9_FRAME)]);
        let d = fmt::try_decoded(fmt::PIX_FMT_NV12, 64, 48);
        let mut planes = [proto::PlaneFmt::default(); 4];
        planes[0] = proto::PlaneFmt {
            bytesperline: d.planes[0].bytesperline,
            sizeimage: d.planes[0].sizeimage,
        };
        return proto::CtxOpen {
            ctx_id: rng.below(2) as u32,
            codec,
            coded_fourcc: coded,
            capture_fourcc: fmt::PIX_FMT_NV12,
            width: 64,
            height: 48,
            num_planes: 1,
            reserved: 0,
            planes,
        };
    }
    let codec = rng.pick(&[1u32, 1, 1, 3, 4, 5]);
    let coded = match rng.below(8) {
        0 => fmt::PIX_FMT_HEVC_SLICE, // usually the wrong codec
        _ => fmt::CODED_FORMATS
            .iter()
            .find(|(_, c)| c.to_wire() == codec)
            .map(|(f, _)| *f)
            .unwrap(),
    };
    let capture = rng.pick(&[fmt::PIX_FMT_NV12, fmt::PIX_FMT_NV12M, fmt::PIX_FMT_P010, 0]);
    let (w, h) = (
        rng.pick(&[16u32, 64, 100, 0, 9000]),
        rng.pick(&[16u32, 48, 0]),
    );
    let d = fmt::try_decoded(capture, w, h);
    let mut planes = [proto::PlaneFmt::default(); 4];
    let num_planes = if rng.below(10) == 0 {
        1 + rng.below(4) as u32
    } else {
        d.num_planes
    };
    for (i, p) in planes.iter_mut().enumerate().take(num_planes as usize) {
        let l = d.planes[i.min(1)];
        *p = proto::PlaneFmt {
            bytesperline: l.bytesperline,
            sizeimage: if rng.below(10) == 0 {
                l.sizeimage / 2
            } else {
                l.sizeimage
            },
        };
    }
    proto::CtxOpen {
        ctx_id: rng.below(2) as u32,
        codec,
        coded_fourcc: coded,
        capture_fourcc: capture,
        width: w,
        height: h,
        num_planes,
        reserved: 0,
        planes,
    }
}

/// One random session; returns (jobs sent, results, dropped).
fn session(seed: u64) -> (Vec<u64>, Vec<proto::JobResult>, bool) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let (t, _sd, sock, _log) = spawn_server(2, Duration::from_millis(1));
    raw_send(&sock, &hello(proto::DV_FEAT_ALL), &[]);
    recv_timeout(&sock, 5 * SEC).unwrap();
    // Both contexts start usable.
    for ctx_id in 0..2 {
        let mut o = ctx_open(&mut Rng(3));
        o.ctx_id = ctx_id;
        raw_send(&sock, &Message::CtxOpen(o), &[]);
    }
    let mut sent = Vec::new();
    let mut results = Vec::new();
    let mut dropped = false;
    let drain = |sock: &SeqPacket, results: &mut Vec<proto::JobResult>| {
        let mut buf = vec![0u8; proto::DV_MAX_MSG_SIZE as usize];
        while let Ok(n) = sock.try_recv(&mut buf) {
            match proto::decode(&buf[..n]).expect("daemon sends valid messages") {
                Message::Result(r) => results.push(r),
                Message::CtxStatus(_) => {}
                m => panic!("daemon sent {m:?}"),
            }
        }
    };
    for step in 0..300u64 {
        let m = match rng.below(10) {
            0 if rng.below(2) == 0 => Message::CtxOpen(ctx_open(&mut rng)),
            1 if rng.below(10) == 0 => Message::CtxClose(proto::CtxClose {
                ctx_id: rng.below(2) as u32,
                reserved: 0,
            }),
            0..=2 => {
                // BufRegister: mostly one plane that fits any format used
                // here, sometimes random ranges.
                let good = rng.below(10) < 8;
                let n = if good { 1 } else { 1 + rng.below(3) as usize };
                let fds: Vec<_> = (0..n)
                    .map(|_| {
                        // 64x48 NV12 with 128-pixel rows: 9216 bytes.
                        memfd(if good {
                            16384
                        } else {
                            4096 * (1 + rng.below(8))
                        })
                    })
                    .collect();
                let num_planes = if good { 1 } else { 1 + rng.below(2) as u32 };
                let mut planes = [proto::BufPlane::default(); 4];
                if good {
                    planes[0].length = 16384;
                }
                for p in planes
                    .iter_mut()
                    .take(num_planes as usize)
                    .filter(|_| !good)
                {
                    *p = proto::BufPlane {
                        fd_index: rng.below(n as u64) as u32,
                        offset: rng.pick(&[0u32, 100, 4096, 30000]),
                        length: rng.pick(&[0u32, 1, 4096, 8192, 12288, 40000]),
                        reserved: 0,
                    };
                }
                let reg = proto::BufRegister {
                    ctx_id: rng.below(2) as u32,
                    queue: rng.below(2) as u32,
                    index: rng.below(2) as u32,
                    num_planes,
                    memory: proto::DV_MEM_MEMFD,
                    reserved: 0,
                    planes,
                };
                let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                if sock
                    .send(&Message::BufRegister(reg).to_bytes(0), &borrowed)
                    .is_err()
                {
                    dropped = true;
                    break;
                }
                continue;
            }
            3 => Message::BufUnregister(proto::BufUnregister {
                ctx_id: rng.below(2) as u32,
                queue: rng.below(2) as u32,
                index: rng.below(2) as u32,
                reserved: 0,
            }),
            4 if !sent.is_empty() && rng.below(3) == 0 => Message::Cancel(proto::Cancel {
                ctx_id: rng.below(2) as u32,
                reserved: 0,
                cookie: rng.pick(&sent),
            }),
            _ => {
                let num_refs = rng.below(3) as u32;
                let mut refs = [proto::RefEntry::default(); 16];
                for r in refs.iter_mut().take(num_refs as usize) {
                    r.timestamp = rng.below(5);
                    r.capture_index = rng.pick(&[0, 1, proto::DV_NO_BUFFER]);
                }
                sent.push(step);
                Message::Decode(
                    proto::DecodeJob {
                        ctx_id: rng.below(2) as u32,
                        flags: rng.below(4) as u32,
                        cookie: step,
                        timestamp: rng.below(5),
                        output_index: rng.below(2) as u32,
                        bytesused: rng.pick(&[0u32, 10, 10, 10, 4096, 100_000]),
                        capture_index: rng.below(2) as u32,
                        num_refs,
                        refs,
                        ..Default::default()
                    },
                    vec![],
                )
            }
        };
        if sock.send(&m.to_bytes(0), &[]).is_err() {
            dropped = true;
            break;
        }
        drain(&sock, &mut results);
        if t.is_finished() {
            dropped = true;
            break;
        }
    }
    if !dropped {
        let end = Instant::now() + 10 * SEC;
        while results.len() < sent.len() && Instant::now() < end && !t.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
            drain(&sock, &mut results);
        }
    }
    drop(sock);
    // Whatever happened, the server returned instead of panicking.
    let r = join_timeout(t, 10 * SEC);
    if r.is_err() {
        dropped = true;
    }
    (sent, results, dropped)
}

#[test]
fn random_sessions_answer_every_job_once_and_never_panic() {
    let mut kept = 0;
    let mut decoded = 0;
    for seed in 1..=12 {
        let (sent, results, dropped) = session(seed);
        let mut errs: BTreeMap<u32, usize> = BTreeMap::new();
        for r in &results {
            *errs.entry(r.error).or_default() += 1;
        }
        eprintln!("seed {seed}: dropped {dropped}, errno -> jobs {errs:?}");
        decoded += errs.get(&0).copied().unwrap_or(0);
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &results {
            *count.entry(r.cookie).or_default() += 1;
        }
        assert!(
            count.values().all(|n| *n == 1),
            "seed {seed}: a job answered twice"
        );
        assert!(
            count.keys().all(|c| sent.contains(c)),
            "seed {seed}: answer to an unknown job"
        );
        if !dropped {
            kept += 1;
            assert_eq!(
                count.len(),
                sent.len(),
                "seed {seed}: {} of {} jobs unanswered",
                sent.len() - count.len(),
                sent.len()
            );
        }
    }
    // Most sessions stay up: the generator mostly sends acceptable messages.
    assert!(kept >= 6, "only {kept} sessions stayed connected");
    // And a fair share of the jobs reach a backend.
    assert!(decoded >= 50, "only {decoded} jobs decoded");
}
