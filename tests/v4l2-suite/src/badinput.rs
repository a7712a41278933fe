//! Client mistakes: each must fail with the errno the kernel's own
//! stateless decoders (vb2, v4l2-ctrls, media requests) give, and change
//! nothing. No daemon is needed: no check relies on a job completing.

use std::fs::File;
use std::path::Path;

use decoder_core::ctrl::Codec;
use decoder_core::fmt;
use nix::errno::Errno;
use v4l2r::bindings;

use crate::scenario::alloc_planes;
use crate::v4l2::{self, Mem, Plane, QbufArgs, Request, Which, CAP, OUT};

/// `V4L2_CID_STATELESS_H264_DECODE_MODE` (a menu control).
const CID_H264_DECODE_MODE: u32 = bindings::V4L2_CID_STATELESS_H264_DECODE_MODE;
/// A control id no decoder has.
const CID_NONE: u32 = 0x00a4_0fff;

/// One opened H.264 context with buffers on both queues.
struct Setup {
    out: Vec<Vec<Plane>>,
    cap: Vec<Vec<Plane>>,
    video: File,
}

/// Environment of the checks.
pub struct Env<'a> {
    /// Video node.
    pub video: &'a Path,
    /// Media node.
    pub media: &'a File,
    /// Memory type.
    pub mem: Mem,
    /// The OUTPUT queue accepts buffers without a request (vb2 queues
    /// without `requires_requests`, e.g. visl).
    pub requests_optional: bool,
}

impl Env<'_> {
    fn open(&self) -> Result<File, String> {
        let f = v4l2::open_video(self.video).map_err(|e| format!("open: {e}"))?;
        let got = v4l2::s_fmt_output(&f, fmt::PIX_FMT_H264_SLICE, 64, 64)
            .map_err(|e| format!("S_FMT(OUTPUT): {e}"))?;
        // SAFETY: MPLANE formats use pix_mp.
        if unsafe { got.fmt.pix_mp.pixelformat } != fmt::PIX_FMT_H264_SLICE {
            return Err("the device does not decode H.264 (S264)".into());
        }
        Ok(f)
    }

    fn setup(&self) -> Result<Setup, String> {
        let video = self.open()?;
        let mut bufs = Vec::new();
        for ty in [OUT, CAP] {
            let (n, _) = v4l2::reqbufs(&video, ty, self.mem.v4l2(), 2)
                .map_err(|e| format!("REQBUFS({}): {e}", self.mem.name()))?;
            bufs.push(alloc_planes(&video, ty, self.mem, n)?);
        }
        let cap = bufs.pop().unwrap_or_default();
        let out = bufs.pop().unwrap_or_default();
        Ok(Setup { out, cap, video })
    }

    fn qbuf_out(&self, s: &Setup, index: u32, a: QbufArgs) -> Result<(), Errno> {
        let p = s.out.get(index as usize).map_or(&[][..], |v| &v[..]);
        v4l2::qbuf(&s.video, OUT, self.mem.v4l2(), index, p, a)
    }

    fn qbuf_cap(&self, s: &Setup, index: u32, a: QbufArgs) -> Result<(), Errno> {
        let p = s.cap.get(index as usize).map_or(&[][..], |v| &v[..]);
        v4l2::qbuf(&s.video, CAP, self.mem.v4l2(), index, p, a)
    }

    fn with_request(&self, bytesused: u32, req: &Request) -> QbufArgs {
        QbufArgs {
            request: Some(req.fd()),
            ts_us: 1,
            bytesused,
            ..Default::default()
        }
    }
}

/// What a check expects.
enum Want {
    Errno(Errno),
    /// Success, with a note on what came back.
    Ok,
}

type Check = fn(&Env<'_>) -> Result<(Want, Result<String, Errno>), String>;

fn e<T>(r: Result<T, Errno>) -> Result<String, Errno> {
    r.map(|_| String::new())
}

/// The size S_FMT chose, checked by `ok`: `Ok(note)` when it holds, an
/// error when S_FMT failed; a size `ok` refuses is reported as ERANGE
/// (never an errno S_FMT gives, so the check fails visibly).
fn sized(
    got: Result<v4l2r::bindings::v4l2_format, Errno>,
    ok: impl Fn(u32, u32) -> bool,
) -> Result<String, Errno> {
    let f = got?;
    // SAFETY: MPLANE formats use pix_mp.
    let (w, h) = unsafe { (f.fmt.pix_mp.width, f.fmt.pix_mp.height) };
    if ok(w, h) {
        Ok(format!("driver chose {w}x{h}"))
    } else {
        eprintln!("S_FMT(OUTPUT) chose {w}x{h}");
        Err(Errno::ERANGE)
    }
}

/// Every check: a name and its body, which returns the expectation and
/// what the device answered.
const CHECKS: &[(&str, Check)] = &[
    ("qbuf-output-without-request", |env| {
        let s = env.setup()?;
        let r = env.qbuf_out(
            &s,
            0,
            QbufArgs {
                bytesused: 16,
                ..Default::default()
            },
        );
        if env.requests_optional {
            // vb2 without `requires_requests` (visl): a plain QBUF is fine.
            return Ok((
                Want::Ok,
                e(r).map(|_| "accepted (--requests-optional)".into()),
            ));
        }
        Ok((Want::Errno(Errno::EBADR), e(r)))
    }),
    ("qbuf-capture-with-request", |env| {
        // v4l2-mem2mem refuses a request on a CAPTURE buffer with EPERM
        // (v4l2_m2m_qbuf), before vb2 would look at it.
        let s = env.setup()?;
        let req = Request::alloc(env.media).map_err(|e| format!("REQUEST_ALLOC: {e}"))?;
        let r = env.qbuf_cap(&s, 0, env.with_request(0, &req));
        Ok((Want::Errno(Errno::EPERM), e(r)))
    }),
    ("qbuf-index-out-of-range", |env| {
        let s = env.setup()?;
        let n = s.cap.len() as u32;
        Ok((
            Want::Errno(Errno::EINVAL),
            e(env.qbuf_cap(&s, n, QbufArgs::default())),
        ))
    }),
    ("qbuf-wrong-memory-type", |env| {
        let s = env.setup()?;
        let other = if env.mem == Mem::Mmap {
            Mem::Dmabuf
        } else {
            Mem::Mmap
        };
        let r = v4l2::qbuf(
            &s.video,
            CAP,
            other.v4l2(),
            0,
            &s.cap[0],
            QbufArgs::default(),
        );
        Ok((Want::Errno(Errno::EINVAL), e(r)))
    }),
    ("qbuf-capture-twice", |env| {
        let s = env.setup()?;
        env.qbuf_cap(&s, 0, QbufArgs::default())
            .map_err(|e| format!("first QBUF: {e}"))?;
        Ok((
            Want::Errno(Errno::EINVAL),
            e(env.qbuf_cap(&s, 0, QbufArgs::default())),
        ))
    }),
    ("qbuf-bytesused-beyond-plane", |env| {
        let s = env.setup()?;
        let len = s.out[0][0].len() as u32;
        let req = Request::alloc(env.media).map_err(|e| format!("REQUEST_ALLOC: {e}"))?;
        let r = env.qbuf_out(&s, 0, env.with_request(len + 4096, &req));
        Ok((Want::Errno(Errno::EINVAL), e(r)))
    }),
    ("qbuf-capture-buffer-too-small", |env| {
        if env.mem == Mem::Mmap {
            return Ok((Want::Ok, Ok("not applicable to MMAP".into())));
        }
        let s = env.setup()?;
        let need: u32 = v4l2::plane_sizes(&s.video, CAP)
            .map_err(|e| format!("G_FMT: {e}"))?
            .iter()
            .sum();
        // One page: smaller than the 64x64 NV12 picture (6144 bytes).
        let small = vec![Plane::alloc(env.mem, 1)?];
        if small[0].len() as u32 >= need {
            return Ok((Want::Ok, Ok("picture fits a page: not checked".into())));
        }
        let r = v4l2::qbuf(
            &s.video,
            CAP,
            env.mem.v4l2(),
            0,
            &small,
            QbufArgs::default(),
        );
        Ok((Want::Errno(Errno::EINVAL), e(r)))
    }),
    ("request-queue-empty", |env| {
        let _s = env.setup()?;
        let req = Request::alloc(env.media).map_err(|e| format!("REQUEST_ALLOC: {e}"))?;
        Ok((Want::Errno(Errno::ENOENT), e(req.queue())))
    }),
    ("request-controls-without-buffer", |env| {
        let s = env.setup()?;
        let req = Request::alloc(env.media).map_err(|e| format!("REQUEST_ALLOC: {e}"))?;
        v4l2::s_ext_ctrls(
            &s.video,
            Codec::H264,
            Which::Request(req.fd()),
            &v4l2::default_controls(Codec::H264),
        )
        .map_err(|e| format!("S_EXT_CTRLS(request): {e}"))?;
        Ok((Want::Errno(Errno::ENOENT), e(req.queue())))
    }),
    ("request-two-output-buffers", |env| {
        let s = env.setup()?;
        let req = Request::alloc(env.media).map_err(|e| format!("REQUEST_ALLOC: {e}"))?;
        for i in 0..2 {
            env.qbuf_out(&s, i, env.with_request(16, &req))
                .map_err(|e| format!("QBUF(OUTPUT {i}, request): {e}"))?;
        }
        Ok((Want::Errno(Errno::EINVAL), e(req.queue())))
    }),
    ("request-queued-twice", |env| {
        let s = env.setup()?;
        let req = Request::alloc(env.media).map_err(|e| format!("REQUEST_ALLOC: {e}"))?;
        env.qbuf_out(&s, 0, env.with_request(16, &req))
            .map_err(|e| format!("QBUF(OUTPUT, request): {e}"))?;
        req.queue()
            .map_err(|e| format!("first REQUEST_QUEUE: {e}"))?;
        // Not streaming: the request stays queued.
        Ok((Want::Errno(Errno::EBUSY), e(req.queue())))
    }),
    ("request-reinit-while-queued", |env| {
        let s = env.setup()?;
        let req = Request::alloc(env.media).map_err(|e| format!("REQUEST_ALLOC: {e}"))?;
        env.qbuf_out(&s, 0, env.with_request(16, &req))
            .map_err(|e| format!("QBUF(OUTPUT, request): {e}"))?;
        req.queue().map_err(|e| format!("REQUEST_QUEUE: {e}"))?;
        Ok((Want::Errno(Errno::EBUSY), e(req.reinit())))
    }),
    ("controls-into-queued-request", |env| {
        let s = env.setup()?;
        let req = Request::alloc(env.media).map_err(|e| format!("REQUEST_ALLOC: {e}"))?;
        env.qbuf_out(&s, 0, env.with_request(16, &req))
            .map_err(|e| format!("QBUF(OUTPUT, request): {e}"))?;
        req.queue().map_err(|e| format!("REQUEST_QUEUE: {e}"))?;
        let r = v4l2::s_ext_ctrls(
            &s.video,
            Codec::H264,
            Which::Request(req.fd()),
            &v4l2::default_controls(Codec::H264),
        );
        Ok((Want::Errno(Errno::EBUSY), e(r)))
    }),
    ("ctrl-unknown-id", |env| {
        let f = env.open()?;
        let r = v4l2::s_ext_ctrls(&f, Codec::H264, Which::Current, &[(CID_NONE, vec![0; 4])]);
        Ok((Want::Errno(Errno::EINVAL), e(r)))
    }),
    ("ctrl-compound-payload-too-short", |env| {
        // decoder-core's `ctrl-invalid` payload: 3 bytes of the first
        // compound control (the H.264 SPS).
        let f = env.open()?;
        let id = Codec::H264
            .desc()
            .controls
            .iter()
            .find(|d| d.is_compound())
            .map(|d| d.id)
            .ok_or("no compound H.264 control")?;
        let r = v4l2::s_ext_ctrls(&f, Codec::H264, Which::Current, &[(id, vec![0xff; 3])]);
        // The kernel's control framework answers EFAULT for a compound
        // payload shorter than the control (v4l2-ctrls-api.c
        // prepare_ext_ctrls); decoder-core answers EINVAL.
        Ok((Want::Errno(Errno::EFAULT), e(r)))
    }),
    ("ctrl-menu-out-of-range", |env| {
        let f = env.open()?;
        let r = v4l2::s_ext_ctrls(
            &f,
            Codec::H264,
            Which::Current,
            &[(CID_H264_DECODE_MODE, 99i32.to_le_bytes().to_vec())],
        );
        Ok((Want::Errno(Errno::ERANGE), e(r)))
    }),
    ("reqbufs-while-streaming", |env| {
        let s = env.setup()?;
        v4l2::stream(&s.video, OUT, true).map_err(|e| format!("STREAMON: {e}"))?;
        let r = v4l2::reqbufs(&s.video, OUT, env.mem.v4l2(), 2);
        Ok((Want::Errno(Errno::EBUSY), e(r)))
    }),
    ("s-fmt-output-with-buffers", |env| {
        let s = env.setup()?;
        let r = v4l2::s_fmt_output(&s.video, fmt::PIX_FMT_H264_SLICE, 128, 128);
        Ok((Want::Errno(Errno::EBUSY), e(r)))
    }),
    ("s-fmt-unknown-fourcc-substituted", |env| {
        let f = v4l2::open_video(env.video).map_err(|e| format!("open: {e}"))?;
        let bogus = u32::from_le_bytes(*b"XXXX");
        match v4l2::s_fmt_output(&f, bogus, 64, 64) {
            Ok(got) => {
                // SAFETY: MPLANE formats use pix_mp.
                let pf = unsafe { got.fmt.pix_mp.pixelformat };
                if pf == bogus {
                    Err("S_FMT accepted the fourcc XXXX".into())
                } else {
                    Ok((
                        Want::Ok,
                        Ok(format!(
                            "driver chose {}",
                            String::from_utf8_lossy(&pf.to_le_bytes())
                        )),
                    ))
                }
            }
            Err(err) => Ok((Want::Ok, Err(err))),
        }
    }),
    ("reqbufs-bad-memory", |env| {
        let f = env.open()?;
        Ok((Want::Errno(Errno::EINVAL), e(v4l2::reqbufs(&f, OUT, 99, 2))))
    }),
    ("reqbufs-single-planar-type", |env| {
        let f = env.open()?;
        let r = v4l2::reqbufs(
            &f,
            bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE,
            env.mem.v4l2(),
            2,
        );
        Ok((Want::Errno(Errno::EINVAL), e(r)))
    }),
    ("reqbufs-huge-count-clamped", |env| {
        let f = env.open()?;
        match v4l2::reqbufs(&f, CAP, env.mem.v4l2(), 100_000) {
            Ok((n, _)) if n > 0 && n < 100_000 => {
                Ok((Want::Ok, Ok(format!("granted {n} buffers"))))
            }
            Ok((n, _)) => Err(format!("granted {n} of 100000 buffers")),
            Err(err) => Ok((Want::Ok, Err(err))),
        }
    }),
    ("create-bufs-appends", |env| {
        let s = env.setup()?;
        match v4l2::create_bufs(&s.video, CAP, env.mem.v4l2(), 1) {
            Ok((index, count)) if index == s.cap.len() as u32 && count == 1 => {
                Ok((Want::Ok, Ok(format!("buffer {index} created"))))
            }
            Ok((index, count)) => Err(format!(
                "CREATE_BUFS gave index {index} count {count}, expected {} 1",
                s.cap.len()
            )),
            Err(err) => Ok((Want::Ok, Err(err))),
        }
    }),
    ("qbuf-after-reqbufs-zero", |env| {
        let s = env.setup()?;
        v4l2::reqbufs(&s.video, CAP, env.mem.v4l2(), 0).map_err(|e| format!("REQBUFS(0): {e}"))?;
        Ok((
            Want::Errno(Errno::EINVAL),
            e(env.qbuf_cap(&s, 0, QbufArgs::default())),
        ))
    }),
    ("s-fmt-output-size-zero-adjusted", |env| {
        let f = v4l2::open_video(env.video).map_err(|e| format!("open: {e}"))?;
        let got = v4l2::s_fmt_output(&f, fmt::PIX_FMT_H264_SLICE, 0, 0);
        Ok((Want::Ok, sized(got, |w, h| w > 0 && h > 0)))
    }),
    ("s-fmt-output-size-huge-clamped", |env| {
        let f = v4l2::open_video(env.video).map_err(|e| format!("open: {e}"))?;
        let got = v4l2::s_fmt_output(&f, fmt::PIX_FMT_H264_SLICE, 1 << 20, 1 << 20);
        Ok((Want::Ok, sized(got, |w, h| w < 1 << 20 && h < 1 << 20)))
    }),
    ("s-fmt-capture-unknown-fourcc-substituted", |env| {
        let f = env.open()?;
        let bogus = u32::from_le_bytes(*b"XXXX");
        let mut cf = v4l2::g_fmt(&f, CAP).map_err(|e| format!("G_FMT: {e}"))?;
        // MPLANE formats use pix_mp (writing a union field is safe).
        cf.fmt.pix_mp.pixelformat = bogus;
        match v4l2::s_fmt(&f, cf) {
            // SAFETY: as above.
            Ok(got) => match unsafe { got.fmt.pix_mp.pixelformat } {
                pf if pf == bogus => Err("S_FMT(CAPTURE) accepted the fourcc XXXX".into()),
                pf => Ok((
                    Want::Ok,
                    Ok(format!(
                        "driver chose {}",
                        String::from_utf8_lossy(&pf.to_le_bytes())
                    )),
                )),
            },
            Err(err) => Ok((Want::Ok, Err(err))),
        }
    }),
    ("dqbuf-not-streaming", |env| {
        let s = env.setup()?;
        Ok((
            Want::Errno(Errno::EINVAL),
            e(v4l2::dqbuf(&s.video, CAP, env.mem.v4l2())),
        ))
    }),
    ("dqbuf-nothing-done", |env| {
        let s = env.setup()?;
        v4l2::stream(&s.video, CAP, true).map_err(|e| format!("STREAMON: {e}"))?;
        env.qbuf_cap(&s, 0, QbufArgs::default())
            .map_err(|e| format!("QBUF: {e}"))?;
        Ok((
            Want::Errno(Errno::EAGAIN),
            e(v4l2::dqbuf(&s.video, CAP, env.mem.v4l2())),
        ))
    }),
    ("streamon-single-planar-type", |env| {
        let s = env.setup()?;
        let r = v4l2::stream(
            &s.video,
            bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_OUTPUT,
            true,
        );
        Ok((Want::Errno(Errno::EINVAL), e(r)))
    }),
    ("decoder-cmd-unknown", |env| {
        let f = env.open()?;
        Ok((Want::Errno(Errno::EINVAL), e(v4l2::decoder_cmd(&f, 99))))
    }),
];

/// Runs every check; returns (passed, failed).
pub fn run(env: &Env<'_>) -> (usize, usize) {
    let (mut pass, mut fail) = (0, 0);
    // Memory types the queues refuse make every other check meaningless.
    let probe = env.open().and_then(|f| {
        v4l2::reqbufs(&f, OUT, env.mem.v4l2(), 0)
            .and_then(|_| v4l2::reqbufs(&f, CAP, env.mem.v4l2(), 0))
            .map_err(|e| format!("REQBUFS({}, 0): {e}", env.mem.name()))
    });
    if let Err(m) = probe {
        println!(
            "FAIL badinput memory-type: the device refuses {} buffers or H.264: {m}",
            env.mem.name()
        );
        return (0, 1);
    }
    for (name, check) in CHECKS {
        let line = match check(env) {
            Err(setup) => Err(format!("setup failed: {setup}")),
            Ok((Want::Errno(want), Err(got))) if got == want => Ok(format!("{want}")),
            Ok((Want::Errno(want), Err(got))) => Err(format!("got {got}, expected {want}")),
            Ok((Want::Errno(want), Ok(_))) => Err(format!("succeeded, expected {want}")),
            Ok((Want::Ok, Ok(note))) => Ok(if note.is_empty() { "ok".into() } else { note }),
            Ok((Want::Ok, Err(got))) => Err(format!("got {got}, expected success")),
        };
        match line {
            Ok(m) => {
                pass += 1;
                println!("PASS badinput {name}: {m}");
            }
            Err(m) => {
                fail += 1;
                println!("FAIL badinput {name}: {m}");
            }
        }
    }
    (pass, fail)
}
