//! Decodes one H.264 (Annex B) file through a V4L2 stateless decoder and
//! prints one line per decoded picture: a minimal, synchronous client of
//! the stateless decoder uAPI built on v4l2r and daedalus-client's parser.
//!
//! ```text
//! cargo run --release --example v4l2_decode -p daedalus -- /dev/video0 file.h264
//! ```
//!
//! Per picture: a media request gets the parser's controls, one OUTPUT
//! buffer gets the bitstream and is queued in the request, the request is
//! queued; decoded CAPTURE buffers are dequeued and given back once no
//! later picture references them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use daedalus_client::h264::{H264Parser, Packing};
use daedalus_client::{Job, StreamParser};
use decoder_core::ctrl::Codec;
use decoder_core::fmt::{PIX_FMT_H264_SLICE, PIX_FMT_NV12};
use v4l2r::bindings::{self, v4l2_ext_control, v4l2_format, v4l2_requestbuffers};
use v4l2r::ioctl::{self as vio, CtrlWhich, MemoryConsistency, PlaneMapping, QueryBuffer, Request};
use v4l2r::ioctl::{DqBufIoctlError, IoctlConvertError, UncheckedV4l2Buffer};
use v4l2r::memory::MemoryType;
use v4l2r::QueueType::{VideoCaptureMplane as CAPTURE, VideoOutputMplane as OUTPUT};

const NUM_OUTPUT: u32 = 2;
const NUM_CAPTURE: u32 = 24;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dev, file] = &args[..] else {
        bail!("usage: v4l2_decode /dev/videoN FILE.h264");
    };
    let mut parser = H264Parser::from_file(Path::new(file), Packing::PicturePerJob)?;
    let mut job = parser.next_job()?.ok_or_else(|| anyhow!("no picture"))?;
    let (w, h) = job.picture.coded;

    // Open the decoder and the media controller node next to it in sysfs.
    let mut video = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(dev)
        .with_context(|| format!("opening {dev}"))?;
    let rdev = video.metadata()?.rdev();
    let sys = format!(
        "/sys/dev/char/{}:{}/device",
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    );
    let media_name = std::fs::read_dir(&sys)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("media"))
        .ok_or_else(|| anyhow!("no media node under {sys}"))?;
    let media = File::options()
        .read(true)
        .write(true)
        .open(format!("/dev/{media_name}"))?;

    // Formats: H.264 slices in, NV12 out.
    let mut f = v4l2_format {
        type_: OUTPUT as u32,
        ..Default::default()
    };
    // SAFETY: pix_mp is the union member of the _MPLANE buffer types.
    unsafe {
        f.fmt.pix_mp.pixelformat = PIX_FMT_H264_SLICE;
        f.fmt.pix_mp.width = w;
        f.fmt.pix_mp.height = h;
        f.fmt.pix_mp.num_planes = 1;
        f.fmt.pix_mp.plane_fmt[0].sizeimage = 1 << 20;
    }
    let _: v4l2_format = vio::s_fmt(&mut video, f).map_err(|e| anyhow!("S_FMT(OUTPUT): {e}"))?;
    let mut f: v4l2_format = vio::g_fmt(&video, CAPTURE)?;
    f.fmt.pix_mp.pixelformat = PIX_FMT_NV12; // writing a union field is safe
    let f: v4l2_format = vio::s_fmt(&mut video, f).map_err(|e| anyhow!("S_FMT(CAPTURE): {e}"))?;
    // SAFETY: as above.
    let (fourcc, cw, ch) = unsafe {
        (
            f.fmt.pix_mp.pixelformat,
            f.fmt.pix_mp.width,
            f.fmt.pix_mp.height,
        )
    };
    if fourcc != PIX_FMT_NV12 {
        bail!("the decoder does not offer NV12");
    }
    println!("{dev} ({media_name}): H.264 {w}x{h} -> NV12 {cw}x{ch}");

    // Buffers: allocate, map, stream.
    let map = |q, n: u32| -> Result<Vec<PlaneMapping>> {
        let rb: v4l2_requestbuffers =
            vio::reqbufs(&video, q, MemoryType::Mmap, n, MemoryConsistency::empty())?;
        (0..rb.count as usize)
            .map(|i| {
                let b: QueryBuffer = vio::querybuf(&video, q, i)?;
                Ok(vio::mmap(
                    &video,
                    b.planes[0].mem_offset,
                    b.planes[0].length,
                )?)
            })
            .collect()
    };
    let mut outputs = map(OUTPUT, NUM_OUTPUT)?;
    let captures = map(CAPTURE, NUM_CAPTURE)?;
    vio::streamon(&video, OUTPUT)?;
    vio::streamon(&video, CAPTURE)?;
    for i in 0..captures.len() as u32 {
        qbuf_capture(&video, i)?;
    }

    let mut free: Vec<u32> = (0..outputs.len() as u32).collect();
    let mut requests: HashMap<u32, Request> = HashMap::new();
    let mut held: Vec<(u32, u64)> = Vec::new(); // decoded, maybe still referenced
    let mut frames = 0u32;
    loop {
        // Wait for a free OUTPUT buffer, collecting decoded pictures.
        while free.is_empty() {
            wait(&video)?;
            reap(
                &video,
                &mut free,
                &mut requests,
                &mut held,
                &captures,
                &mut frames,
            )?;
        }
        // Give back the CAPTURE buffers this picture does not reference.
        let refs = references(&job);
        let mut keep = Vec::new();
        for (i, ts) in held.drain(..) {
            if refs.contains(&ts) {
                keep.push((i, ts))
            } else {
                qbuf_capture(&video, i)?
            }
        }
        held = keep;
        let index = free.pop().expect("free buffer");
        submit(
            &video,
            &media,
            &mut outputs[index as usize],
            index,
            &job,
            &mut requests,
        )?;
        match parser.next_job()? {
            Some(j) => job = j,
            None => break,
        }
    }
    let cmd = bindings::v4l2_decoder_cmd {
        cmd: bindings::V4L2_DEC_CMD_FLUSH,
        ..Default::default()
    };
    vio::decoder_cmd::<_, ()>(&video, cmd).map_err(|e| anyhow!("DECODER_CMD: {e}"))?;
    while free.len() < outputs.len() {
        wait(&video)?;
        reap(
            &video,
            &mut free,
            &mut requests,
            &mut held,
            &captures,
            &mut frames,
        )?;
    }
    reap(
        &video,
        &mut free,
        &mut requests,
        &mut held,
        &captures,
        &mut frames,
    )?;
    println!("{frames} pictures decoded");
    Ok(())
}

/// Timestamps of the pictures `job` references.
fn references(job: &Job) -> Vec<u64> {
    let mut v = Vec::new();
    (Codec::H264.desc().reference_timestamps)(&job.controls, &mut v);
    v
}

fn qbuf_capture(video: &File, index: u32) -> Result<()> {
    let mut b = UncheckedV4l2Buffer::new_for_querybuf(CAPTURE, Some(index));
    b.0.memory = bindings::v4l2_memory_V4L2_MEMORY_MMAP;
    b.0.length = 1;
    vio::qbuf::<_, ()>(video, b).map_err(|e| anyhow!("QBUF(CAPTURE): {e}"))
}

/// One picture: controls into a new request, bitstream into OUTPUT buffer
/// `index`, the buffer into the request, the request queued.
fn submit(
    video: &File,
    media: &File,
    plane: &mut PlaneMapping,
    index: u32,
    job: &Job,
    requests: &mut HashMap<u32, Request>,
) -> Result<()> {
    if job.bitstream.len() > plane.len() {
        bail!(
            "a {}-byte picture does not fit the OUTPUT buffer",
            job.bitstream.len()
        );
    }
    plane[..job.bitstream.len()].copy_from_slice(&job.bitstream);
    let request = Request::alloc(media).map_err(|e| anyhow!("REQUEST_ALLOC: {e}"))?;
    let mut payloads: Vec<Vec<u8>> = job.controls.iter().map(|(_, b)| b.to_vec()).collect();
    let mut ctrls: Vec<v4l2_ext_control> = job
        .controls
        .iter()
        .zip(payloads.iter_mut())
        .map(|((id, _), bytes)| {
            let mut c = v4l2_ext_control {
                id,
                ..Default::default()
            };
            if Codec::H264.desc().find(id).is_some_and(|d| d.is_compound()) {
                c.size = bytes.len() as u32;
                c.__bindgen_anon_1.p_u8 = bytes.as_mut_ptr();
            } else {
                c.__bindgen_anon_1.value = i32::from_le_bytes(bytes[..4].try_into().unwrap());
            }
            c
        })
        .collect();
    vio::s_ext_ctrls(
        video,
        CtrlWhich::Request(request.as_raw_fd()),
        &mut ctrls[..],
    )
    .map_err(|e| anyhow!("S_EXT_CTRLS: {e}"))?;
    let mut b = UncheckedV4l2Buffer::new_for_querybuf(OUTPUT, Some(index));
    b.0.memory = bindings::v4l2_memory_V4L2_MEMORY_MMAP;
    b.0.length = 1;
    b.0.flags = bindings::V4L2_BUF_FLAG_REQUEST_FD;
    b.0.__bindgen_anon_1.request_fd = request.as_raw_fd();
    b.0.timestamp.tv_sec = (job.timestamp / 1_000_000_000) as _;
    b.0.timestamp.tv_usec = (job.timestamp % 1_000_000_000 / 1000) as _;
    if let Some(planes) = b.1.as_mut() {
        planes[0].bytesused = job.bitstream.len() as u32;
    }
    vio::qbuf::<_, ()>(video, b).map_err(|e| anyhow!("QBUF(OUTPUT): {e}"))?;
    request.queue().map_err(|e| anyhow!("REQUEST_QUEUE: {e}"))?;
    requests.insert(index, request);
    Ok(())
}

/// Waits up to a second for the decoder.
fn wait(video: &File) -> Result<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(video, PollFlags::IN | PollFlags::OUT)];
    poll(
        &mut fds,
        Some(&Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        }),
    )?;
    Ok(())
}

/// Dequeues finished OUTPUT buffers and decoded CAPTURE buffers, printing
/// one line per picture.
fn reap(
    video: &File,
    free: &mut Vec<u32>,
    requests: &mut HashMap<u32, Request>,
    held: &mut Vec<(u32, u64)>,
    captures: &[PlaneMapping],
    frames: &mut u32,
) -> Result<()> {
    let not_ready = |e: &IoctlConvertError<DqBufIoctlError, _>| {
        matches!(
            e,
            IoctlConvertError::IoctlError(DqBufIoctlError::NotReady | DqBufIoctlError::Eos)
        )
    };
    loop {
        match vio::dqbuf::<UncheckedV4l2Buffer>(video, OUTPUT) {
            Ok(b) => {
                requests.remove(&b.0.index);
                free.push(b.0.index);
            }
            Err(e) if not_ready(&e) => break,
            Err(e) => bail!("DQBUF(OUTPUT): {e}"),
        }
    }
    loop {
        match vio::dqbuf::<UncheckedV4l2Buffer>(video, CAPTURE) {
            Ok(b) => {
                let ts = b.0.timestamp.tv_sec as u64 * 1_000_000_000
                    + b.0.timestamp.tv_usec as u64 * 1000;
                let error = b.0.flags & bindings::V4L2_BUF_FLAG_ERROR != 0;
                let picture = &captures[b.0.index as usize][..];
                println!(
                    "frame {:3} ts {ts:>8} CAPTURE {:2} md5 {:x} {}",
                    *frames,
                    b.0.index,
                    md5::compute(picture),
                    if error { "ERROR" } else { "ok" }
                );
                *frames += 1;
                held.push((b.0.index, ts));
            }
            Err(e) if not_ready(&e) => break,
            Err(e) => bail!("DQBUF(CAPTURE): {e}"),
        }
    }
    Ok(())
}
