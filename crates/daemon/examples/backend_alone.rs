//! The third figure of `just bench`: the daemon's own backend for a codec
//! (the FFmpeg or dav1d session `daedalus-daemon` opens) decoding a stream's
//! jobs directly, in this process and thread: no frontend, no protocol, no
//! hand-offs. Against `plain_decode` it shows what the backend's way of
//! decoding (controls, in-place pictures in CAPTURE-like buffers) costs;
//! against `daedalus decode` what the stack around it costs.
//!
//! The stream is parsed into jobs before the clock starts. The CAPTURE
//! buffers are YUV420M memfds of the layout the frontends negotiate, their
//! pages faulted in before the clock starts (the stack faults them in
//! beside the job, `daedalus_daemon::prefault`); each job takes the free
//! buffer used last, as the embedded stack's pool does, a buffer being free
//! when neither the job's references nor (VP8, VP9, AV1) the codec's
//! reference slots name its picture.
//!
//! `backend_alone FILE` (8-bit Annex B `.h264` / `.hevc`, or IVF); prints
//! `FRAMES frames in SECONDS s`.

use std::sync::Arc;
use std::time::Instant;

use daedalus_client::ivf::{FrameEvent, FrameStreamParser};
use daedalus_client::{Job, StreamParser};
use daedalus_daemon::backend::{self, CapturePlane, CaptureRetain, CaptureTarget, JobInput};
use decoder_core::ctrl::{validate_write, Codec, ControlValues};
use decoder_core::fmt;
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// CAPTURE buffers, as the embedded stack allocates.
const BUFFERS: usize = 32;

/// A populated shared memfd mapping.
struct Plane {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by the value; the decoder reaches it through
// the pointers the target hands out, on this one thread.
unsafe impl Send for Plane {}
// SAFETY: as above; `&Plane` itself never touches the memory.
unsafe impl Sync for Plane {}

impl Plane {
    fn new(len: usize) -> std::io::Result<Self> {
        let fd = memfd_create("backend-alone", MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, len as u64)?;
        // SAFETY: a fresh shared mapping of a memfd just sized to `len`;
        // nothing else refers to that range.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::POPULATE,
                &fd,
                0,
            )?
        };
        Ok(Plane { ptr: p.cast(), len })
    }

    /// The plane as a target plane of `stride` bytes per row. Targets are
    /// built one at a time, for the job that writes the buffer.
    fn target(&self, stride: u32) -> CapturePlane<'_> {
        CapturePlane {
            // SAFETY: `ptr` maps `len` bytes for the life of `self`; the one
            // slice of it alive at a time is the current job's.
            data: unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) },
            stride: stride as usize,
        }
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no slice outlives self.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// Jobs in decode order, each (frame codecs) with the pictures in the
/// codec's reference slots once it is decoded.
type Jobs = Vec<(Job, Vec<u64>)>;

/// A stream's codec and [`Jobs`].
fn jobs(path: &str) -> Result<(Codec, Jobs), Box<dyn std::error::Error>> {
    use daedalus_client::{av1, h264, hevc, vp8, vp9};
    let p = std::path::Path::new(path);
    let reorder = |codec, mut parser: Box<dyn StreamParser>| {
        let mut v = Vec::new();
        while let Some(j) = parser.next_job()? {
            v.push((j, Vec::new()));
        }
        Ok::<_, daedalus_client::ClientError>((codec, v))
    };
    if path.ends_with(".h264") {
        let parser = h264::H264Parser::from_file(p, h264::Packing::PicturePerJob)?;
        return Ok(reorder(Codec::H264, Box::new(parser))?);
    }
    if path.ends_with(".hevc") {
        let parser = hevc::HevcParser::from_file(p, hevc::Packing::PicturePerJob)?;
        return Ok(reorder(Codec::Hevc, Box::new(parser))?);
    }
    let data = std::fs::read(p)?;
    let (codec, mut parser): (Codec, Box<dyn FrameStreamParser>) = match data.get(8..12) {
        Some(b"AV01") => (
            Codec::Av1,
            Box::new(av1::Av1Parser::new(data, Default::default())?),
        ),
        Some(b"VP90") => (Codec::Vp9, Box::new(vp9::Vp9Parser::new(data)?)),
        Some(b"VP80") => (Codec::Vp8, Box::new(vp8::Vp8Parser::new(data)?)),
        _ => return Err("not Annex B .h264/.hevc or IVF".into()),
    };
    let mut v = Vec::new();
    while let Some(e) = parser.next_event()? {
        if let FrameEvent::Decode { job, slots, .. } = e {
            v.push((*job, slots));
        }
    }
    Ok((codec, v))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: backend_alone FILE")?;
    let (codec, jobs) = jobs(&path)?;
    let first = &jobs.first().ok_or("no jobs")?.0;
    let (w, h) = first.picture.coded;
    if first.picture.bit_depth != 8 || jobs.iter().any(|(j, _)| j.picture.coded != (w, h)) {
        return Err("8-bit streams of one size only".into());
    }
    let f = fmt::try_decoded(fmt::PIX_FMT_YUV420M, w, h);
    let bufs = (0..BUFFERS)
        .map(|_| {
            let planes = (0..3)
                .map(|i| Plane::new(f.planes[i].sizeimage as usize))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(Arc::new(planes))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    // Timestamp of the picture in each buffer, and when it was last used.
    let mut held: Vec<Option<u64>> = vec![None; BUFFERS];
    let mut used = vec![0usize; BUFFERS];
    backend::ffmpeg::quiet_library_logs();
    let mut be = backend::open(codec)?;
    let mut ctrls = ControlValues::defaults(codec);
    let mut refs = Vec::new();
    let mut slots: &[u64] = &[];
    let start = Instant::now();
    for (n, (job, after)) in jobs.iter().enumerate() {
        for (id, bytes) in job.controls.iter() {
            ctrls.set_raw(id, validate_write(codec, id, bytes)?);
        }
        refs.clear();
        (codec.desc().reference_timestamps)(&ctrls, &mut refs);
        let i = (0..BUFFERS)
            .filter(|&i| held[i].is_none_or(|t| !refs.contains(&t) && !slots.contains(&t)))
            .max_by_key(|&i| used[i])
            .ok_or("every buffer holds a reference")?;
        let b = &bufs[i];
        let mut target = CaptureTarget::planar(
            w,
            h,
            b[0].target(f.planes[0].bytesperline),
            b[1].target(f.planes[1].bytesperline),
            b[2].target(f.planes[2].bytesperline),
        )?;
        let keep: Arc<dyn Send + Sync> = b.clone();
        // SAFETY: `keep` owns the planes behind `target`, which stay mapped
        // at their addresses until its last clone is dropped.
        let retain = unsafe { CaptureRetain::new(keep, &target) };
        let input = JobInput {
            codec,
            controls: &ctrls,
            bitstream: &job.bitstream,
            timestamp: job.timestamp,
            flags: Default::default(),
            references: &refs,
        };
        be.decode_retained(&input, &mut target, Some(&retain))?;
        held[i] = Some(job.timestamp);
        used[i] = n + 1;
        slots = after;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{} frames in {secs:.4} s", jobs.len());
    Ok(())
}
