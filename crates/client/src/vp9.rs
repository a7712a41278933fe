//! VP9 (IVF) to V4L2 stateless jobs.
//!
//! Superframe splitting and uncompressed header parsing are cros-codecs'
//! VP9 parser. cros-codecs does not parse the compressed header (its
//! accelerators read the probabilities themselves), so this module has its
//! own compressed header reader (VP9 spec 6.3, with the boolean decoder of
//! 9.2) for `V4L2_CID_STATELESS_VP9_COMPRESSED_HDR` and the frame's
//! `tx_mode` / `reference_mode`.
//!
//! One job per frame of a superframe, hidden frames (altrefs) included; the
//! OUTPUT buffer holds that frame alone (`V4L2_PIX_FMT_VP9_FRAME`). A
//! `show_existing_frame` frame codes no picture and becomes a
//! [`FrameEvent::ShowExisting`] of the job that decoded the slot it names.

use std::collections::VecDeque;

use cros_codecs::codec::vp9::parser::{
    BitDepth, ColorRange, FrameType, Header, InterpolationFilter, Parser,
};
use decoder_core::ctrl::vp9::*;
use decoder_core::ctrl::{Codec, ControlValues};
use zerocopy::FromZeros;

use crate::ivf::{next_job_of, FrameEvent, FrameStreamParser, IvfReader};
use crate::{ClientError, DisplayKey, Job, JobFlags, PictureInfo, StreamParser};

/// Timestamp spacing of successive jobs (ns).
pub const TIMESTAMP_STEP: u64 = 1000;

/// Counters of what the parser met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp9Stats {
    /// Jobs emitted (decoded frames).
    pub frames: u64,
    /// Frames decoded but not shown.
    pub hidden: u64,
    /// `show_existing_frame` frames.
    pub show_existing: u64,
    /// IVF frames holding a superframe of several frames.
    pub superframes: u64,
    /// Key frames.
    pub key_frames: u64,
    /// Frames with compound prediction allowed (`reference_mode` != single).
    pub compound: u64,
    /// Largest bit depth seen.
    pub max_bit_depth: u8,
}

/// The VP9 boolean decoder (spec 9.2), bit by bit.
struct BoolDecoder<'a> {
    data: &'a [u8],
    bit: usize,
    max_bits: usize,
    value: u32,
    range: u32,
    /// Every symbol read (value, probability), when tracing.
    trace: Option<Vec<(bool, u8)>>,
}

impl<'a> BoolDecoder<'a> {
    fn new(data: &'a [u8]) -> Result<Self, ClientError> {
        if data.is_empty() {
            return Err(ClientError::Bitstream("empty compressed header".into()));
        }
        let mut d = Self {
            data,
            bit: 8,
            max_bits: 8 * data.len() - 8,
            value: u32::from(data[0]),
            range: 255,
            trace: None,
        };
        if d.read(128) {
            return Err(ClientError::Bitstream(
                "compressed header marker bit set".into(),
            ));
        }
        Ok(d)
    }

    fn next_bit(&mut self) -> u32 {
        if self.max_bits == 0 {
            return 0;
        }
        self.max_bits -= 1;
        let b = (self.data[self.bit / 8] >> (7 - self.bit % 8)) & 1;
        self.bit += 1;
        u32::from(b)
    }

    fn read(&mut self, p: u8) -> bool {
        let split = 1 + (((self.range - 1) * u32::from(p)) >> 8);
        let bit = if self.value < split {
            self.range = split;
            false
        } else {
            self.range -= split;
            self.value -= split;
            true
        };
        while self.range < 128 {
            self.range <<= 1;
            self.value = (self.value << 1) | self.next_bit();
        }
        if let Some(t) = self.trace.as_mut() {
            t.push((bit, p));
        }
        bit
    }

    /// exit_bool(): the bits left after the last symbol are padding that a
    /// conformant stream sets to zero.
    fn padding_is_zero(&mut self) -> bool {
        let mut ok = true;
        while self.max_bits > 0 {
            ok &= self.next_bit() == 0;
        }
        ok
    }

    fn literal(&mut self, n: u32) -> u32 {
        (0..n).fold(0, |acc, _| (acc << 1) | u32::from(self.read(128)))
    }
}

/// `inv_map_table` of the VP9 spec: the first 20 entries are 7 + 13 k, the
/// rest the remaining values of 1..=253 in increasing order.
fn inv_map_table() -> [u8; 254] {
    let mut t = [0u8; 254];
    let mut n = 0;
    for k in 0..20u8 {
        t[n] = 7 + 13 * k;
        n += 1;
    }
    for v in 1..=253u8 {
        if v < 7 || (v - 7) % 13 != 0 {
            t[n] = v;
            n += 1;
        }
    }
    t
}

/// Reads the compressed header into the V4L2 control: probability deltas in
/// the kernel's convention (`inv_map_table[decode_term_subexp()]`, 0 = no
/// update; motion vector probabilities as their new value, 0 = no update).
/// Returns the control and the frame's `reference_mode`.
pub fn parse_compressed_header(
    h: &Header,
    data: &[u8],
) -> Result<(V4l2CtrlVp9CompressedHdr, u8), ClientError> {
    parse_compressed_header_traced(h, data, None)
}

/// [`parse_compressed_header`] that also appends every boolean symbol it
/// reads (value, probability) to `trace`, the marker bit first. An encoder
/// that writes the same symbols reproduces the header, which is how the
/// tests check that the reader follows the syntax exactly.
pub fn parse_compressed_header_traced(
    h: &Header,
    data: &[u8],
    trace: Option<&mut Vec<(bool, u8)>>,
) -> Result<(V4l2CtrlVp9CompressedHdr, u8), ClientError> {
    let mut c = V4l2CtrlVp9CompressedHdr::new_zeroed();
    let mut d = BoolDecoder::new(data)?;
    if trace.is_some() {
        d.trace = Some(vec![(false, 128)]);
    }
    let inv_map = inv_map_table();
    let diff = |d: &mut BoolDecoder<'_>| -> u8 {
        if !d.read(252) {
            return 0;
        }
        let v = if d.literal(1) == 0 {
            d.literal(4)
        } else if d.literal(1) == 0 {
            d.literal(4) + 16
        } else if d.literal(1) == 0 {
            d.literal(5) + 32
        } else {
            let v = d.literal(7);
            if v < 65 {
                v + 64
            } else {
                (v << 1) - 1 + d.literal(1)
            }
        };
        inv_map.get(v as usize).copied().unwrap_or(0)
    };
    let mv = |d: &mut BoolDecoder<'_>| -> u8 {
        if d.read(252) {
            ((d.literal(7) << 1) | 1) as u8
        } else {
            0
        }
    };

    // read_tx_mode
    c.tx_mode = if h.lossless {
        V4L2_VP9_TX_MODE_ONLY_4X4
    } else {
        let mut m = d.literal(2) as u8;
        if m == V4L2_VP9_TX_MODE_ALLOW_32X32 {
            m += d.literal(1) as u8;
        }
        m
    };
    if c.tx_mode == V4L2_VP9_TX_MODE_SELECT {
        for i in 0..2 {
            c.tx8[i][0] = diff(&mut d);
        }
        for i in 0..2 {
            for j in 0..2 {
                c.tx16[i][j] = diff(&mut d);
            }
        }
        for i in 0..2 {
            for j in 0..3 {
                c.tx32[i][j] = diff(&mut d);
            }
        }
    }
    // read_coef_probs: transform sizes up to the largest the mode allows.
    let max_tx = usize::from(c.tx_mode.min(V4L2_VP9_TX_MODE_ALLOW_32X32));
    for tx in 0..=max_tx {
        if d.literal(1) == 1 {
            for i in 0..2 {
                for j in 0..2 {
                    for k in 0..6 {
                        let bands = if k == 0 { 3 } else { 6 };
                        for l in 0..bands {
                            for m in 0..3 {
                                c.coef[tx][i][j][k][l][m] = diff(&mut d);
                            }
                        }
                    }
                }
            }
        }
    }
    for i in 0..3 {
        c.skip[i] = diff(&mut d);
    }
    let intra = h.frame_type == FrameType::KeyFrame || h.intra_only;
    let mut reference_mode = V4L2_VP9_REFERENCE_MODE_SINGLE_REFERENCE;
    if !intra {
        for i in 0..7 {
            for j in 0..3 {
                c.inter_mode[i][j] = diff(&mut d);
            }
        }
        if h.interpolation_filter == InterpolationFilter::Switchable {
            for j in 0..4 {
                for i in 0..2 {
                    c.interp_filter[j][i] = diff(&mut d);
                }
            }
        }
        for i in 0..4 {
            c.is_inter[i] = diff(&mut d);
        }
        // frame_reference_mode
        let bias = &h.ref_frame_sign_bias;
        let compound_allowed = (2..4).any(|i| bias[i] != bias[1]);
        if compound_allowed && d.literal(1) == 1 {
            reference_mode = if d.literal(1) == 1 {
                V4L2_VP9_REFERENCE_MODE_SELECT
            } else {
                V4L2_VP9_REFERENCE_MODE_COMPOUND_REFERENCE
            };
        }
        // frame_reference_mode_probs
        if reference_mode == V4L2_VP9_REFERENCE_MODE_SELECT {
            for i in 0..5 {
                c.comp_mode[i] = diff(&mut d);
            }
        }
        if reference_mode != V4L2_VP9_REFERENCE_MODE_COMPOUND_REFERENCE {
            for i in 0..5 {
                c.single_ref[i][0] = diff(&mut d);
                c.single_ref[i][1] = diff(&mut d);
            }
        }
        if reference_mode != V4L2_VP9_REFERENCE_MODE_SINGLE_REFERENCE {
            for i in 0..5 {
                c.comp_ref[i] = diff(&mut d);
            }
        }
        for i in 0..4 {
            for j in 0..9 {
                c.y_mode[i][j] = diff(&mut d);
            }
        }
        for i in 0..16 {
            for j in 0..3 {
                c.partition[i][j] = diff(&mut d);
            }
        }
        // mv_probs
        let m = &mut c.mv;
        for j in 0..3 {
            m.joint[j] = mv(&mut d);
        }
        for i in 0..2 {
            m.sign[i] = mv(&mut d);
            for j in 0..10 {
                m.classes[i][j] = mv(&mut d);
            }
            m.class0_bit[i] = mv(&mut d);
            for j in 0..10 {
                m.bits[i][j] = mv(&mut d);
            }
        }
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..3 {
                    m.class0_fr[i][j][k] = mv(&mut d);
                }
            }
            for k in 0..3 {
                m.fr[i][k] = mv(&mut d);
            }
        }
        if h.allow_high_precision_mv {
            for i in 0..2 {
                m.class0_hp[i] = mv(&mut d);
                m.hp[i] = mv(&mut d);
            }
        }
    }
    if !d.padding_is_zero() {
        return Err(ClientError::Bitstream(
            "compressed header: non-zero padding after the last symbol".into(),
        ));
    }
    if let (Some(out), Some(t)) = (trace, d.trace.take()) {
        out.extend(t);
    }
    Ok((c, reference_mode))
}

/// The frame control for a parsed header and its reference timestamps.
pub fn frame_control(h: &Header, refs: [u64; 3], reference_mode: u8) -> V4l2CtrlVp9Frame {
    let mut c = V4l2CtrlVp9Frame::new_zeroed();
    let f = |on: bool, bit: u8| if on { bit } else { 0 };
    c.lf.ref_deltas = h.lf.ref_deltas;
    c.lf.mode_deltas = h.lf.mode_deltas;
    c.lf.level = h.lf.level;
    c.lf.sharpness = h.lf.sharpness;
    c.lf.flags = f(h.lf.delta_enabled, V4L2_VP9_LOOP_FILTER_FLAG_DELTA_ENABLED)
        | f(h.lf.delta_update, V4L2_VP9_LOOP_FILTER_FLAG_DELTA_UPDATE);
    c.quant.base_q_idx = h.quant.base_q_idx;
    c.quant.delta_q_y_dc = h.quant.delta_q_y_dc;
    c.quant.delta_q_uv_dc = h.quant.delta_q_uv_dc;
    c.quant.delta_q_uv_ac = h.quant.delta_q_uv_ac;
    let s = &h.seg;
    c.seg.feature_data = s.feature_data;
    for i in 0..8 {
        c.seg.feature_enabled[i] = s.feature_enabled[i]
            .iter()
            .enumerate()
            .fold(0, |acc, (j, on)| acc | (u8::from(*on) << j));
    }
    c.seg.tree_probs = s.tree_probs;
    c.seg.pred_probs = s.pred_probs;
    c.seg.flags = f(s.enabled, V4L2_VP9_SEGMENTATION_FLAG_ENABLED)
        | f(s.update_map, V4L2_VP9_SEGMENTATION_FLAG_UPDATE_MAP)
        | f(
            s.temporal_update,
            V4L2_VP9_SEGMENTATION_FLAG_TEMPORAL_UPDATE,
        )
        | f(s.update_data, V4L2_VP9_SEGMENTATION_FLAG_UPDATE_DATA)
        | f(
            s.abs_or_delta_update,
            V4L2_VP9_SEGMENTATION_FLAG_ABS_OR_DELTA_UPDATE,
        );
    let g = |on: bool, bit: u32| if on { bit } else { 0 };
    c.flags = g(
        h.frame_type == FrameType::KeyFrame,
        V4L2_VP9_FRAME_FLAG_KEY_FRAME,
    ) | g(h.show_frame, V4L2_VP9_FRAME_FLAG_SHOW_FRAME)
        | g(h.error_resilient_mode, V4L2_VP9_FRAME_FLAG_ERROR_RESILIENT)
        | g(h.intra_only, V4L2_VP9_FRAME_FLAG_INTRA_ONLY)
        | g(
            h.allow_high_precision_mv,
            V4L2_VP9_FRAME_FLAG_ALLOW_HIGH_PREC_MV,
        )
        | g(
            h.refresh_frame_context,
            V4L2_VP9_FRAME_FLAG_REFRESH_FRAME_CTX,
        )
        | g(
            h.frame_parallel_decoding_mode,
            V4L2_VP9_FRAME_FLAG_PARALLEL_DEC_MODE,
        )
        | g(h.subsampling_x, V4L2_VP9_FRAME_FLAG_X_SUBSAMPLING)
        | g(h.subsampling_y, V4L2_VP9_FRAME_FLAG_Y_SUBSAMPLING)
        | g(
            h.color_range == ColorRange::FullSwing,
            V4L2_VP9_FRAME_FLAG_COLOR_RANGE_FULL_SWING,
        );
    c.compressed_header_size = h.header_size_in_bytes;
    c.uncompressed_header_size = h.uncompressed_header_size_in_bytes;
    c.frame_width_minus_1 = (h.width.saturating_sub(1)) as u16;
    c.frame_height_minus_1 = (h.height.saturating_sub(1)) as u16;
    c.render_width_minus_1 = (h.render_width.saturating_sub(1)) as u16;
    c.render_height_minus_1 = (h.render_height.saturating_sub(1)) as u16;
    let intra = h.frame_type == FrameType::KeyFrame || h.intra_only;
    if !intra {
        (c.last_frame_ts, c.golden_frame_ts, c.alt_frame_ts) = (refs[0], refs[1], refs[2]);
    }
    c.ref_frame_sign_bias = f(h.ref_frame_sign_bias[1] != 0, V4L2_VP9_SIGN_BIAS_LAST)
        | f(h.ref_frame_sign_bias[2] != 0, V4L2_VP9_SIGN_BIAS_GOLDEN)
        | f(h.ref_frame_sign_bias[3] != 0, V4L2_VP9_SIGN_BIAS_ALT);
    c.reset_frame_context = h.reset_frame_context;
    c.frame_context_idx = h.frame_context_idx;
    c.profile = h.profile as u8;
    c.bit_depth = bit_depth(h);
    c.interpolation_filter = h.interpolation_filter as u8;
    c.tile_cols_log2 = h.tile_cols_log2;
    c.tile_rows_log2 = h.tile_rows_log2;
    c.reference_mode = reference_mode;
    c
}

fn bit_depth(h: &Header) -> u8 {
    match h.bit_depth {
        BitDepth::Depth8 => 8,
        BitDepth::Depth10 => 10,
        BitDepth::Depth12 => 12,
    }
}

/// VP9 [`FrameStreamParser`] over an IVF file.
pub struct Vp9Parser {
    ivf: IvfReader,
    parser: Parser,
    events: VecDeque<FrameEvent>,
    slot_ts: [u64; 8],
    slot_pic: [Option<PictureInfo>; 8],
    next_ts: u64,
    shown: i64,
    stats: Vp9Stats,
}

impl std::fmt::Debug for Vp9Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp9Parser")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Vp9Parser {
    /// A parser over an IVF file's bytes.
    pub fn new(ivf: Vec<u8>) -> Result<Self, ClientError> {
        let ivf = IvfReader::new(ivf)?;
        if &ivf.header().fourcc != b"VP90" {
            return Err(ClientError::Unsupported(format!(
                "IVF fourcc {:?} is not VP90",
                String::from_utf8_lossy(&ivf.header().fourcc)
            )));
        }
        Ok(Self {
            ivf,
            parser: Parser::default(),
            events: VecDeque::new(),
            slot_ts: [0; 8],
            slot_pic: [None; 8],
            next_ts: TIMESTAMP_STEP,
            shown: 0,
            stats: Vp9Stats::default(),
        })
    }

    /// What the parser met so far.
    pub fn stats(&self) -> Vp9Stats {
        self.stats
    }

    fn next_key(&mut self) -> DisplayKey {
        self.shown += 1;
        DisplayKey {
            epoch: 0,
            order: self.shown,
        }
    }

    fn parse_chunk(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if data.is_empty() {
            return Ok(());
        }
        let frames = self
            .parser
            .parse_chunk(data)
            .map_err(ClientError::Bitstream)?;
        if frames.len() > 1 {
            self.stats.superframes += 1;
        }
        for frame in frames {
            let h = &frame.header;
            if h.show_existing_frame {
                let idx = usize::from(h.frame_to_show_map_idx & 7);
                let Some(mut pic) = self.slot_pic[idx] else {
                    return Err(ClientError::Bitstream(format!(
                        "show_existing_frame of empty slot {idx}"
                    )));
                };
                pic.key = self.next_key();
                self.stats.show_existing += 1;
                self.events.push_back(FrameEvent::ShowExisting {
                    timestamp: self.slot_ts[idx],
                    picture: pic,
                });
                continue;
            }
            let bytes: &[u8] = frame.as_ref();
            let uh = usize::from(h.uncompressed_header_size_in_bytes);
            let ch = usize::from(h.header_size_in_bytes);
            let comp = bytes
                .get(uh..uh + ch)
                .ok_or_else(|| ClientError::Bitstream("compressed header past the frame".into()))?;
            let (hdr, reference_mode) = parse_compressed_header(h, comp)?;
            let refs = [0, 1, 2].map(|i| self.slot_ts[usize::from(h.ref_frame_idx[i] & 7)]);
            let ctrl = frame_control(h, refs, reference_mode);
            let mut controls = ControlValues::new();
            controls.set(&ctrl);
            controls.set(&hdr);

            let ts = self.next_ts;
            self.next_ts += TIMESTAMP_STEP;
            let mut pic = PictureInfo {
                key: DisplayKey { epoch: 0, order: 0 },
                max_reorder: 0,
                visible: (0, 0, h.width, h.height),
                coded: (h.width.next_multiple_of(16), h.height.next_multiple_of(16)),
                bit_depth: bit_depth(h),
            };
            if h.show_frame {
                pic.key = self.next_key();
            } else {
                self.stats.hidden += 1;
            }
            self.stats.frames += 1;
            self.stats.key_frames += u64::from(h.frame_type == FrameType::KeyFrame);
            self.stats.compound +=
                u64::from(reference_mode != V4L2_VP9_REFERENCE_MODE_SINGLE_REFERENCE);
            self.stats.max_bit_depth = self.stats.max_bit_depth.max(bit_depth(h));
            for i in 0..8 {
                if h.refresh_frame_flags & (1 << i) != 0 {
                    self.slot_ts[i] = ts;
                    self.slot_pic[i] = Some(pic);
                }
            }
            let job = Job {
                codec: Codec::Vp9,
                controls,
                bitstream: bytes.to_vec(),
                timestamp: ts,
                flags: JobFlags::default(),
                picture: pic,
            };
            self.events.push_back(FrameEvent::Decode {
                job: Box::new(job),
                shown: h.show_frame,
                slots: self.slot_ts.to_vec(),
            });
        }
        Ok(())
    }
}

impl FrameStreamParser for Vp9Parser {
    fn next_event(&mut self) -> Result<Option<FrameEvent>, ClientError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let Some((_, data)) = self.ivf.next_frame()? else {
                return Ok(None);
            };
            let data = data.to_vec();
            self.parse_chunk(&data)?;
        }
    }
}

impl StreamParser for Vp9Parser {
    fn next_job(&mut self) -> Result<Option<Job>, ClientError> {
        next_job_of(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_map_table_is_a_permutation() {
        let t = inv_map_table();
        assert_eq!(&t[..3], &[7, 20, 33]);
        assert_eq!(t[19], 254);
        assert_eq!(&t[20..27], &[1, 2, 3, 4, 5, 6, 8]);
        assert_eq!(t[253], 253);
        let mut s = t.to_vec();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s, (1..=254).collect::<Vec<u8>>());
    }

    #[test]
    fn bool_decoder_reads_literals() {
        // With p = 128 each bool costs one bit: the first byte is the
        // initial value, so after the marker bit the literal bits follow.
        let data = [0b0101_0000, 0, 0, 0];
        let mut d = BoolDecoder::new(&data).unwrap();
        assert_eq!(d.literal(3), 0b101);
        let bad = [0x80, 0];
        assert!(BoolDecoder::new(&bad).is_err());
    }
}
