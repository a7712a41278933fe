//! Containers (MP4, MKV, WebM, ...) through libavformat: the video stream's
//! packets are rewritten into the elementary form the parsers read —
//! Annex-B for H.264/HEVC (length-prefixed NAL units and the avcC/hvcC
//! parameter sets converted here), an in-memory IVF file for VP8/VP9/AV1.
//! All libavformat FFI of the client is in this module.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr;

use ffmpeg_sys_next as ff;

use crate::ClientError;

/// The elementary stream of a container's first video track.
#[derive(Debug)]
pub enum Elementary {
    /// Annex-B H.264.
    H264(Vec<u8>),
    /// Annex-B HEVC.
    Hevc(Vec<u8>),
    /// An IVF file (VP8, VP9 or AV1; the fourcc tells).
    Ivf(Vec<u8>),
}

fn err(what: &str, code: i32) -> ClientError {
    let mut buf = [0 as std::ffi::c_char; 128];
    // SAFETY: `buf` is writable for its length; av_strerror NUL-terminates.
    unsafe { ff::av_strerror(code, buf.as_mut_ptr(), buf.len()) };
    // SAFETY: NUL-terminated by av_strerror above (or zero-filled).
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    ClientError::Bitstream(format!("{what}: {msg}"))
}

/// Owns the demuxer and the packet; frees them on drop.
struct Demuxer {
    fmt: *mut ff::AVFormatContext,
    pkt: *mut ff::AVPacket,
}

impl Drop for Demuxer {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or owned by this value; the free
        // functions accept null and reset the pointer.
        unsafe {
            ff::av_packet_free(&mut self.pkt);
            ff::avformat_close_input(&mut self.fmt);
        }
    }
}

/// How an H.264/HEVC track stores NAL units.
#[derive(Debug, Clone)]
struct NalFormat {
    /// Bytes of each NAL unit's length prefix (0: already Annex-B).
    length_size: usize,
    /// Parameter sets from the avcC/hvcC record, Annex-B, for the start.
    prefix: Vec<u8>,
}

const START: [u8; 4] = [0, 0, 0, 1];

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], ClientError> {
    if b.len() < n {
        return Err(ClientError::Bitstream(
            "truncated codec configuration".into(),
        ));
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn u16_be(b: &mut &[u8]) -> Result<usize, ClientError> {
    let v = take(b, 2)?;
    Ok(usize::from(u16::from_be_bytes([v[0], v[1]])))
}

/// Parses an avcC (`hevc == false`) or hvcC record.
fn nal_format(extradata: &[u8], hevc: bool) -> Result<NalFormat, ClientError> {
    if extradata.first() != Some(&1) {
        // No configuration record: the packets are Annex-B already.
        return Ok(NalFormat {
            length_size: 0,
            prefix: Vec::new(),
        });
    }
    let mut b = extradata;
    let mut prefix = Vec::new();
    let mut push = |b: &mut &[u8]| -> Result<(), ClientError> {
        let n = u16_be(b)?;
        prefix.extend_from_slice(&START);
        prefix.extend_from_slice(take(b, n)?);
        Ok(())
    };
    let length_size;
    if hevc {
        let head = take(&mut b, 23)?;
        length_size = usize::from(head[21] & 3) + 1;
        for _ in 0..head[22] {
            take(&mut b, 1)?;
            for _ in 0..u16_be(&mut b)? {
                push(&mut b)?;
            }
        }
    } else {
        let head = take(&mut b, 6)?;
        length_size = usize::from(head[4] & 3) + 1;
        for _ in 0..(head[5] & 0x1f) {
            push(&mut b)?;
        }
        let pps = take(&mut b, 1)?[0];
        for _ in 0..pps {
            push(&mut b)?;
        }
    }
    Ok(NalFormat {
        length_size,
        prefix,
    })
}

/// Appends one packet's NAL units to `out` in Annex-B form.
fn to_annex_b(f: &NalFormat, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), ClientError> {
    if f.length_size == 0 {
        out.extend_from_slice(data);
        return Ok(());
    }
    while !data.is_empty() {
        let len = take(&mut data, f.length_size)?
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        let nal = take(&mut data, len)
            .map_err(|_| ClientError::Bitstream("NAL unit length beyond the packet".into()))?;
        out.extend_from_slice(&START);
        out.extend_from_slice(nal);
    }
    Ok(())
}

fn ivf_header(fourcc: &[u8; 4], w: u16, h: u16, frames: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(b"DKIF");
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(&32u16.to_le_bytes());
    v.extend_from_slice(fourcc);
    v.extend_from_slice(&w.to_le_bytes());
    v.extend_from_slice(&h.to_le_bytes());
    v.extend_from_slice(&25u32.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&frames.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// Reads the first video stream of `path` into its elementary form.
pub fn read(path: &Path) -> Result<Elementary, ClientError> {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| ClientError::Unsupported("path with a NUL byte".into()))?;
    let mut d = Demuxer {
        fmt: ptr::null_mut(),
        pkt: ptr::null_mut(),
    };
    // SAFETY: `d.fmt` is a valid out-pointer; the path is NUL-terminated.
    let r = unsafe {
        ff::avformat_open_input(&mut d.fmt, cpath.as_ptr(), ptr::null(), ptr::null_mut())
    };
    if r < 0 {
        return Err(err(&format!("opening {}", path.display()), r));
    }
    // SAFETY: `d.fmt` was opened above.
    let r = unsafe { ff::avformat_find_stream_info(d.fmt, ptr::null_mut()) };
    if r < 0 {
        return Err(err("reading stream info", r));
    }
    // SAFETY: `d.fmt` is open; a null decoder out-pointer is allowed.
    let index = unsafe {
        ff::av_find_best_stream(
            d.fmt,
            ff::AVMediaType::AVMEDIA_TYPE_VIDEO,
            -1,
            -1,
            ptr::null_mut(),
            0,
        )
    };
    if index < 0 {
        return Err(ClientError::Unsupported(format!(
            "{}: no video stream",
            path.display()
        )));
    }
    // SAFETY: `index` is a valid stream index of the open context, whose
    // `streams` array has `nb_streams` entries.
    let par = unsafe { (**(*d.fmt).streams.add(index as usize)).codecpar };
    // SAFETY: codecpar of an open stream is valid while the context is.
    let (codec_id, w, h) = unsafe { ((*par).codec_id, (*par).width, (*par).height) };
    use ff::AVCodecID::*;
    let (nal, fourcc): (Option<bool>, Option<&[u8; 4]>) = match codec_id {
        AV_CODEC_ID_H264 => (Some(false), None),
        AV_CODEC_ID_HEVC => (Some(true), None),
        AV_CODEC_ID_VP8 => (None, Some(b"VP80")),
        AV_CODEC_ID_VP9 => (None, Some(b"VP90")),
        AV_CODEC_ID_AV1 => (None, Some(b"AV01")),
        other => {
            return Err(ClientError::Unsupported(format!(
                "{}: video codec {other:?}",
                path.display()
            )))
        }
    };
    // SAFETY: `extradata` has `extradata_size` bytes when non-null.
    let extradata = unsafe {
        if (*par).extradata.is_null() || (*par).extradata_size <= 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts((*par).extradata, (*par).extradata_size as usize)
        }
    };
    let nal = nal.map(|hevc| nal_format(extradata, hevc)).transpose()?;
    // SAFETY: plain allocation.
    d.pkt = unsafe { ff::av_packet_alloc() };
    if d.pkt.is_null() {
        return Err(ClientError::Unsupported("out of memory".into()));
    }
    let mut out = nal.as_ref().map(|n| n.prefix.clone()).unwrap_or_default();
    let mut frames = 0u32;
    loop {
        // SAFETY: open context and allocated packet.
        let r = unsafe { ff::av_read_frame(d.fmt, d.pkt) };
        if r < 0 {
            break;
        }
        // SAFETY: the packet was just filled; `data` has `size` bytes.
        let (ours, data) = unsafe {
            let p = &*d.pkt;
            let data = if p.data.is_null() || p.size <= 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(p.data, p.size as usize)
            };
            (p.stream_index == index, data)
        };
        let r = if !ours {
            Ok(())
        } else if let Some(n) = &nal {
            to_annex_b(n, data, &mut out)
        } else {
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&u64::from(frames).to_le_bytes());
            out.extend_from_slice(data);
            frames += 1;
            Ok(())
        };
        // SAFETY: unref of the packet filled above (its data is not used after).
        unsafe { ff::av_packet_unref(d.pkt) };
        r?;
    }
    Ok(match (codec_id, fourcc) {
        (_, Some(fcc)) => {
            let mut ivf = ivf_header(
                fcc,
                w.clamp(0, 65535) as u16,
                h.clamp(0, 65535) as u16,
                frames,
            );
            ivf.extend_from_slice(&out);
            Elementary::Ivf(ivf)
        }
        (AV_CODEC_ID_H264, None) => Elementary::H264(out),
        _ => Elementary::Hevc(out),
    })
}
