//! The speed baseline of `just bench`: decodes a stream the way a plain
//! libavcodec (H.264, HEVC, VP8, VP9) or dav1d (AV1) client does, in this
//! process, with one decoding thread and the library's own picture
//! allocator, and prints how long the decode loop took (process start-up,
//! library loading and file reading left out, as `daedalus decode` leaves
//! out its own when it prints its time).
//!
//! `plain_decode FILE` (Annex B `.h264` / `.hevc`, or IVF); prints
//! `FRAMES frames in SECONDS s`.

use std::time::Instant;

use daedalus_client::ivf::IvfReader;
use daedalus_daemon::backend::{dav1d, ffmpeg};
use decoder_core::ctrl::Codec;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: plain_decode FILE")?;
    let data = std::fs::read(&path)?;
    ffmpeg::quiet_library_logs();
    let (frames, secs) = if path.ends_with(".h264") || path.ends_with(".hevc") {
        let codec = if path.ends_with(".h264") {
            Codec::H264
        } else {
            Codec::Hevc
        };
        let t = Instant::now();
        let n = ffmpeg::plain_decode(codec, &data)?;
        (n, t.elapsed().as_secs_f64())
    } else {
        let mut ivf = IvfReader::new(data)?;
        let fourcc = ivf.header().fourcc;
        let mut packets = Vec::new();
        while let Some((_, p)) = ivf.next_frame()? {
            packets.push(p.to_vec());
        }
        let packets: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        let t = Instant::now();
        let n = match &fourcc {
            b"AV01" => dav1d::plain_decode_packets(&packets)?,
            b"VP90" => ffmpeg::plain_decode_packets(Codec::Vp9, &packets)?,
            b"VP80" => ffmpeg::plain_decode_packets(Codec::Vp8, &packets)?,
            f => return Err(format!("IVF fourcc {f:?}").into()),
        };
        (n, t.elapsed().as_secs_f64())
    };
    println!("{frames} frames in {secs:.4} s");
    Ok(())
}
