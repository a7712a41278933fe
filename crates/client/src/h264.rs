//! H.264 Annex B streams to V4L2 stateless jobs.
//!
//! Parsing (NAL headers, SPS, PPS, slice headers) is cros-codecs' H.264
//! parser. Everything V4L2-specific is here: the control structs, picture
//! order counts (8.2.1), the reference picture marking (8.2.5, sliding window
//! and MMCO), the reference lists with their modifications (8.2.4) as DPB
//! indexes, and the packing of slices into jobs.
//!
//! Limits: frame pictures only (progressive and MBAFF; field pictures are
//! refused), no gaps in `frame_num`, no slice groups, no SVC/MVC NAL units.

use std::collections::VecDeque;
use std::io::Cursor;
use std::rc::Rc;

use cros_codecs::codec::h264::parser::{
    Nalu, NaluType, Parser, Pps, RefPicListModification, SliceHeader, SliceType, Sps,
};
use decoder_core::ctrl::h264::*;
use decoder_core::ctrl::{Codec, CompoundControl, ControlValues};
use zerocopy::FromZeros;

use crate::annexb::next_nal;
use crate::{ClientError, DisplayKey, Job, JobFlags, PictureInfo, StreamParser};

/// How slices are packed into jobs (OUTPUT buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// `DECODE_MODE_SLICE_BASED`: one slice per job; `annex_b` selects
    /// `START_CODE_ANNEX_B` (slices keep a start code) or `START_CODE_NONE`.
    SlicePerJob {
        /// Prefix each slice with a start code.
        annex_b: bool,
    },
    /// `DECODE_MODE_FRAME_BASED` with `START_CODE_ANNEX_B`: every slice of a
    /// picture in one job.
    PicturePerJob,
}

/// Timestamp spacing of successive pictures (ns).
pub const TIMESTAMP_STEP: u64 = 1000;

/// A reference picture of the DPB.
#[derive(Debug, Clone, Copy)]
struct RefPic {
    ts: u64,
    frame_num: u32,
    top_poc: i32,
    bottom_poc: i32,
    long_term: Option<u32>,
}

impl RefPic {
    fn poc(&self) -> i32 {
        self.top_poc.min(self.bottom_poc)
    }
}

/// POC / frame_num state carried from picture to picture.
#[derive(Debug, Default, Clone, Copy)]
struct OrderState {
    prev_poc_msb: i32,
    prev_poc_lsb: i32,
    prev_frame_num_offset: i32,
    prev_frame_num: u32,
    prev_ref_frame_num: u32,
    /// The previous picture had memory_management_control_operation 5.
    prev_mmco5: bool,
}

/// One slice NAL unit and its parsed header.
struct SliceUnit {
    nal: Vec<u8>,
    hdr: SliceHeader,
}

/// The slices of one picture.
struct PendingPicture {
    nal_ref_idc: u8,
    idr: bool,
    pps: Rc<Pps>,
    slices: Vec<SliceUnit>,
}

/// H.264 [`StreamParser`].
pub struct H264Parser {
    data: Vec<u8>,
    pos: usize,
    parser: Parser,
    packing: Packing,
    jobs: VecDeque<Job>,
    current: Option<PendingPicture>,
    refs: Vec<RefPic>,
    order: OrderState,
    max_long_term_idx: Option<u32>,
    epoch: u64,
    pictures: u64,
    seen_idr: bool,
}

impl std::fmt::Debug for H264Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Parser")
            .field("pos", &self.pos)
            .field("packing", &self.packing)
            .field("pictures", &self.pictures)
            .finish()
    }
}

/// Raster index of each position of the `n` x `n` zig-zag scan.
fn zigzag(n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n * n);
    for s in 0..2 * n - 1 {
        let rows = s.saturating_sub(n - 1)..=s.min(n - 1);
        let rows: Vec<usize> = if s % 2 == 0 {
            rows.rev().collect()
        } else {
            rows.collect()
        };
        out.extend(rows.into_iter().map(|r| r * n + (s - r)));
    }
    out
}

/// The SPS control for a parsed SPS.
pub fn sps_control(s: &Sps) -> V4l2CtrlH264Sps {
    let mut c = V4l2CtrlH264Sps::new_zeroed();
    c.profile_idc = s.profile_idc;
    c.constraint_set_flags = [
        s.constraint_set0_flag,
        s.constraint_set1_flag,
        s.constraint_set2_flag,
        s.constraint_set3_flag,
        s.constraint_set4_flag,
        s.constraint_set5_flag,
    ]
    .iter()
    .enumerate()
    .fold(0, |acc, (i, &f)| acc | (u8::from(f) << i));
    c.level_idc = s.level_idc as u8;
    c.seq_parameter_set_id = s.seq_parameter_set_id;
    c.chroma_format_idc = s.chroma_format_idc;
    c.bit_depth_luma_minus8 = s.bit_depth_luma_minus8;
    c.bit_depth_chroma_minus8 = s.bit_depth_chroma_minus8;
    c.log2_max_frame_num_minus4 = s.log2_max_frame_num_minus4;
    c.pic_order_cnt_type = s.pic_order_cnt_type;
    c.log2_max_pic_order_cnt_lsb_minus4 = s.log2_max_pic_order_cnt_lsb_minus4;
    c.max_num_ref_frames = s.max_num_ref_frames;
    c.num_ref_frames_in_pic_order_cnt_cycle = s.num_ref_frames_in_pic_order_cnt_cycle;
    c.offset_for_ref_frame = s.offset_for_ref_frame;
    c.offset_for_non_ref_pic = s.offset_for_non_ref_pic;
    c.offset_for_top_to_bottom_field = s.offset_for_top_to_bottom_field;
    c.pic_width_in_mbs_minus1 = s.pic_width_in_mbs_minus1;
    c.pic_height_in_map_units_minus1 = s.pic_height_in_map_units_minus1;
    let flags = [
        (
            s.separate_colour_plane_flag,
            V4L2_H264_SPS_FLAG_SEPARATE_COLOUR_PLANE,
        ),
        (
            s.qpprime_y_zero_transform_bypass_flag,
            V4L2_H264_SPS_FLAG_QPPRIME_Y_ZERO_TRANSFORM_BYPASS,
        ),
        (
            s.delta_pic_order_always_zero_flag,
            V4L2_H264_SPS_FLAG_DELTA_PIC_ORDER_ALWAYS_ZERO,
        ),
        (
            s.gaps_in_frame_num_value_allowed_flag,
            V4L2_H264_SPS_FLAG_GAPS_IN_FRAME_NUM_VALUE_ALLOWED,
        ),
        (s.frame_mbs_only_flag, V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY),
        (
            s.mb_adaptive_frame_field_flag,
            V4L2_H264_SPS_FLAG_MB_ADAPTIVE_FRAME_FIELD,
        ),
        (
            s.direct_8x8_inference_flag,
            V4L2_H264_SPS_FLAG_DIRECT_8X8_INFERENCE,
        ),
    ];
    c.flags = flags.iter().filter(|(f, _)| *f).fold(0, |a, (_, b)| a | b);
    c
}

/// The PPS control (and the scaling matrix, when one applies) for a parsed
/// PPS.
pub fn pps_control(p: &Pps) -> (V4l2CtrlH264Pps, Option<V4l2CtrlH264ScalingMatrix>) {
    let mut c = V4l2CtrlH264Pps::new_zeroed();
    c.pic_parameter_set_id = p.pic_parameter_set_id;
    c.seq_parameter_set_id = p.seq_parameter_set_id;
    c.num_slice_groups_minus1 = p.num_slice_groups_minus1.min(255) as u8;
    c.num_ref_idx_l0_default_active_minus1 = p.num_ref_idx_l0_default_active_minus1;
    c.num_ref_idx_l1_default_active_minus1 = p.num_ref_idx_l1_default_active_minus1;
    c.weighted_bipred_idc = p.weighted_bipred_idc;
    c.pic_init_qp_minus26 = p.pic_init_qp_minus26;
    c.pic_init_qs_minus26 = p.pic_init_qs_minus26;
    c.chroma_qp_index_offset = p.chroma_qp_index_offset;
    c.second_chroma_qp_index_offset = p.second_chroma_qp_index_offset;
    let scaling = p.pic_scaling_matrix_present_flag || p.sps.seq_scaling_matrix_present_flag;
    let flags = [
        (
            p.entropy_coding_mode_flag,
            V4L2_H264_PPS_FLAG_ENTROPY_CODING_MODE,
        ),
        (
            p.bottom_field_pic_order_in_frame_present_flag,
            V4L2_H264_PPS_FLAG_BOTTOM_FIELD_PIC_ORDER_IN_FRAME_PRESENT,
        ),
        (p.weighted_pred_flag, V4L2_H264_PPS_FLAG_WEIGHTED_PRED),
        (
            p.deblocking_filter_control_present_flag,
            V4L2_H264_PPS_FLAG_DEBLOCKING_FILTER_CONTROL_PRESENT,
        ),
        (
            p.constrained_intra_pred_flag,
            V4L2_H264_PPS_FLAG_CONSTRAINED_INTRA_PRED,
        ),
        (
            p.redundant_pic_cnt_present_flag,
            V4L2_H264_PPS_FLAG_REDUNDANT_PIC_CNT_PRESENT,
        ),
        (
            p.transform_8x8_mode_flag,
            V4L2_H264_PPS_FLAG_TRANSFORM_8X8_MODE,
        ),
        (scaling, V4L2_H264_PPS_FLAG_SCALING_MATRIX_PRESENT),
    ];
    c.flags = flags.iter().filter(|(f, _)| *f).fold(0, |a, (_, b)| a | b);
    let matrix = scaling.then(|| {
        // cros-codecs keeps the effective lists (fall-back rules applied,
        // SPS lists copied when the PPS has none) in zig-zag order; V4L2
        // wants raster order.
        let mut m = V4l2CtrlH264ScalingMatrix::new_zeroed();
        let (z4, z8) = (zigzag(4), zigzag(8));
        for (dst, src) in m.scaling_list_4x4.iter_mut().zip(&p.scaling_lists_4x4) {
            for (i, &pos) in z4.iter().enumerate() {
                dst[pos] = src[i];
            }
        }
        for (dst, src) in m.scaling_list_8x8.iter_mut().zip(&p.scaling_lists_8x8) {
            for (i, &pos) in z8.iter().enumerate() {
                dst[pos] = src[i];
            }
        }
        // Lists the stream cannot use (8x8 chroma lists outside 4:4:4) may
        // be unset: give them the flat value.
        for v in m.scaling_list_8x8.iter_mut().flatten() {
            if *v == 0 {
                *v = 16;
            }
        }
        m
    });
    (c, matrix)
}

fn visible_rect(s: &Sps) -> (u32, u32, u32, u32) {
    let (w, h) = (
        (u32::from(s.pic_width_in_mbs_minus1) + 1) * 16,
        (u32::from(s.pic_height_in_map_units_minus1) + 1)
            * 16
            * if s.frame_mbs_only_flag { 1 } else { 2 },
    );
    if !s.frame_cropping_flag {
        return (0, 0, w, h);
    }
    let frame_factor = if s.frame_mbs_only_flag { 1 } else { 2 };
    let (ux, uy) = match (s.chroma_format_idc, s.separate_colour_plane_flag) {
        (0, _) | (3, true) => (1, frame_factor),
        (1, _) => (2, 2 * frame_factor),
        (2, _) => (2, frame_factor),
        _ => (1, frame_factor),
    };
    let l = ux * s.frame_crop_left_offset;
    let r = ux * s.frame_crop_right_offset;
    let t = uy * s.frame_crop_top_offset;
    let b = uy * s.frame_crop_bottom_offset;
    (l, t, w.saturating_sub(l + r), h.saturating_sub(t + b))
}

impl H264Parser {
    /// Parser over a whole Annex B stream.
    pub fn new(data: Vec<u8>, packing: Packing) -> Self {
        Self {
            data,
            pos: 0,
            parser: Parser::default(),
            packing,
            jobs: VecDeque::new(),
            current: None,
            refs: Vec::new(),
            order: OrderState::default(),
            max_long_term_idx: None,
            epoch: 0,
            pictures: 0,
            seen_idr: false,
        }
    }

    /// Reads an Annex B file.
    pub fn from_file(path: &std::path::Path, packing: Packing) -> Result<Self, ClientError> {
        Ok(Self::new(std::fs::read(path)?, packing))
    }

    /// Reads NAL units until at least one job is queued or the stream ends.
    fn fill(&mut self) -> Result<(), ClientError> {
        while self.jobs.is_empty() {
            let Some((start, end)) = next_nal(&self.data, &mut self.pos) else {
                if let Some(p) = self.current.take() {
                    self.finish_picture(p)?;
                }
                return Ok(());
            };
            if end <= start {
                continue;
            }
            let mut nal = Vec::with_capacity(end - start + 3);
            nal.extend_from_slice(&[0, 0, 1]);
            nal.extend_from_slice(&self.data[start..end]);
            self.handle_nal(nal)?;
        }
        Ok(())
    }

    fn handle_nal(&mut self, nal: Vec<u8>) -> Result<(), ClientError> {
        let bs = |e: String| ClientError::Bitstream(e);
        let parsed = Nalu::next(&mut Cursor::new(&nal[..])).map_err(bs)?;
        match parsed.header.type_ {
            NaluType::Slice | NaluType::SliceIdr => {
                let nal_ref_idc = parsed.header.ref_idc;
                let idr = parsed.header.idr_pic_flag;
                let slice = self.parser.parse_slice_header(parsed).map_err(bs)?;
                let hdr = slice.header;
                let pps = self
                    .parser
                    .get_pps(hdr.pic_parameter_set_id)
                    .cloned()
                    .ok_or_else(|| bs("slice refers to an unknown PPS".into()))?;
                let new_picture = match &self.current {
                    None => true,
                    Some(c) => {
                        let first = &c.slices[0].hdr;
                        hdr.first_mb_in_slice == 0
                            || hdr.frame_num != first.frame_num
                            || hdr.pic_parameter_set_id != first.pic_parameter_set_id
                            || (nal_ref_idc == 0) != (c.nal_ref_idc == 0)
                            || idr != c.idr
                            || (idr && hdr.idr_pic_id != first.idr_pic_id)
                            || hdr.pic_order_cnt_lsb != first.pic_order_cnt_lsb
                            || hdr.delta_pic_order_cnt_bottom != first.delta_pic_order_cnt_bottom
                            || hdr.delta_pic_order_cnt != first.delta_pic_order_cnt
                    }
                };
                if new_picture {
                    if let Some(p) = self.current.take() {
                        self.finish_picture(p)?;
                    }
                    self.current = Some(PendingPicture {
                        nal_ref_idc,
                        idr,
                        pps,
                        slices: Vec::new(),
                    });
                }
                if let Some(c) = self.current.as_mut() {
                    c.slices.push(SliceUnit { nal, hdr });
                }
            }
            t => {
                // Any non-VCL NAL unit ends the current access unit.
                if let Some(p) = self.current.take() {
                    self.finish_picture(p)?;
                }
                match t {
                    NaluType::Sps => {
                        self.parser.parse_sps(&parsed).map_err(bs)?;
                    }
                    NaluType::Pps => {
                        self.parser.parse_pps(&parsed).map_err(bs)?;
                    }
                    NaluType::SliceDpa | NaluType::SliceDpb | NaluType::SliceDpc => {
                        return Err(ClientError::Unsupported("data partitioning".into()))
                    }
                    _ => {} // SEI, AUD, end of sequence, filler...: nothing to do
                }
            }
        }
        Ok(())
    }

    /// Picture order count of the current picture (8.2.1): (top, bottom).
    fn picture_order_count(
        &mut self,
        sps: &Sps,
        hdr: &SliceHeader,
        nal_ref_idc: u8,
        idr: bool,
    ) -> (i32, i32, i32) {
        let o = &self.order;
        let frame_num = i32::from(hdr.frame_num);
        let max_frame_num = 1i32 << (sps.log2_max_frame_num_minus4 + 4);
        let frame_num_offset = if idr {
            0
        } else {
            let prev_offset = if o.prev_mmco5 {
                0
            } else {
                o.prev_frame_num_offset
            };
            if o.prev_frame_num as i32 > frame_num {
                prev_offset + max_frame_num
            } else {
                prev_offset
            }
        };
        let (top, bottom) = match sps.pic_order_cnt_type {
            0 => {
                let (prev_msb, prev_lsb) = if idr {
                    (0, 0)
                } else {
                    (o.prev_poc_msb, o.prev_poc_lsb)
                };
                let max_lsb = 1i32 << (sps.log2_max_pic_order_cnt_lsb_minus4 + 4);
                let lsb = i32::from(hdr.pic_order_cnt_lsb);
                let msb = if lsb < prev_lsb && prev_lsb - lsb >= max_lsb / 2 {
                    prev_msb + max_lsb
                } else if lsb > prev_lsb && lsb - prev_lsb > max_lsb / 2 {
                    prev_msb - max_lsb
                } else {
                    prev_msb
                };
                let top = msb + lsb;
                if nal_ref_idc != 0 {
                    self.order.prev_poc_msb = msb;
                    self.order.prev_poc_lsb = lsb;
                }
                (top, top + hdr.delta_pic_order_cnt_bottom)
            }
            1 => {
                let n = i32::from(sps.num_ref_frames_in_pic_order_cnt_cycle);
                let mut abs = if n != 0 {
                    frame_num_offset + frame_num
                } else {
                    0
                };
                if nal_ref_idc == 0 && abs > 0 {
                    abs -= 1;
                }
                let mut expected = 0i32;
                if abs > 0 {
                    let cycle = (abs - 1) / n;
                    let in_cycle = (abs - 1) % n;
                    let delta: i32 = sps.offset_for_ref_frame[..n as usize].iter().sum();
                    expected = cycle.wrapping_mul(delta);
                    for i in 0..=in_cycle as usize {
                        expected = expected.wrapping_add(sps.offset_for_ref_frame[i]);
                    }
                }
                if nal_ref_idc == 0 {
                    expected += sps.offset_for_non_ref_pic;
                }
                let top = expected + hdr.delta_pic_order_cnt[0];
                (
                    top,
                    top + sps.offset_for_top_to_bottom_field + hdr.delta_pic_order_cnt[1],
                )
            }
            _ => {
                let t = if idr {
                    0
                } else if nal_ref_idc == 0 {
                    2 * (frame_num_offset + frame_num) - 1
                } else {
                    2 * (frame_num_offset + frame_num)
                };
                (t, t)
            }
        };
        (top, bottom, frame_num_offset)
    }

    /// Reference list `list` (0 or 1) of a slice, as DPB indexes (8.2.4).
    fn ref_list(
        &self,
        hdr: &SliceHeader,
        cur_poc: i32,
        list: usize,
    ) -> Result<Vec<Option<usize>>, ClientError> {
        let max_frame_num = hdr.max_pic_num as i64;
        let cur_frame_num = i64::from(hdr.frame_num);
        let pic_num = |r: &RefPic| {
            let f = i64::from(r.frame_num);
            if f > cur_frame_num {
                f - max_frame_num
            } else {
                f
            }
        };
        let short: Vec<usize> = (0..self.refs.len())
            .filter(|&i| self.refs[i].long_term.is_none())
            .collect();
        let mut long: Vec<usize> = (0..self.refs.len())
            .filter(|&i| self.refs[i].long_term.is_some())
            .collect();
        long.sort_by_key(|&i| self.refs[i].long_term);
        let mut init: Vec<usize> = if hdr.slice_type.is_b() {
            let mut before: Vec<usize> = short
                .iter()
                .copied()
                .filter(|&i| self.refs[i].poc() < cur_poc)
                .collect();
            before.sort_by_key(|&i| std::cmp::Reverse(self.refs[i].poc()));
            let mut after: Vec<usize> = short
                .iter()
                .copied()
                .filter(|&i| self.refs[i].poc() > cur_poc)
                .collect();
            after.sort_by_key(|&i| self.refs[i].poc());
            let mut l = if list == 0 {
                [before.clone(), after.clone()].concat()
            } else {
                [after, before].concat()
            };
            l.extend(&long);
            l
        } else {
            let mut s = short.clone();
            s.sort_by_key(|&i| std::cmp::Reverse(pic_num(&self.refs[i])));
            s.extend(&long);
            s
        };
        if hdr.slice_type.is_b() && list == 1 && init.len() > 1 {
            let l0 = self.ref_list_init_b0(cur_poc, &short, &long);
            if l0 == init {
                init.swap(0, 1);
            }
        }
        let n = usize::from(if list == 0 {
            hdr.num_ref_idx_l0_active_minus1
        } else {
            hdr.num_ref_idx_l1_active_minus1
        }) + 1;
        let mut l: Vec<Option<usize>> = init.into_iter().map(Some).collect();
        l.resize(n, None);
        let (flag, mods): (bool, &[RefPicListModification]) = if list == 0 {
            (
                hdr.ref_pic_list_modification_flag_l0,
                &hdr.ref_pic_list_modification_l0,
            )
        } else {
            (
                hdr.ref_pic_list_modification_flag_l1,
                &hdr.ref_pic_list_modification_l1,
            )
        };
        if flag {
            let mut pred = cur_frame_num;
            for (ref_idx, m) in mods.iter().enumerate() {
                let target = match m.modification_of_pic_nums_idc {
                    0 | 1 => {
                        let abs = i64::from(m.abs_diff_pic_num_minus1) + 1;
                        let mut no_wrap = if m.modification_of_pic_nums_idc == 0 {
                            pred - abs
                        } else {
                            pred + abs
                        };
                        if no_wrap < 0 {
                            no_wrap += max_frame_num;
                        } else if no_wrap >= max_frame_num {
                            no_wrap -= max_frame_num;
                        }
                        pred = no_wrap;
                        let num = if no_wrap > cur_frame_num {
                            no_wrap - max_frame_num
                        } else {
                            no_wrap
                        };
                        short
                            .iter()
                            .copied()
                            .find(|&i| pic_num(&self.refs[i]) == num)
                    }
                    2 => long
                        .iter()
                        .copied()
                        .find(|&i| self.refs[i].long_term == Some(m.long_term_pic_num)),
                    3 => break,
                    other => {
                        return Err(ClientError::Unsupported(format!(
                            "modification_of_pic_nums_idc {other}"
                        )))
                    }
                };
                let Some(t) = target else {
                    return Err(ClientError::Bitstream(
                        "reference list modification names a missing picture".into(),
                    ));
                };
                if ref_idx >= n {
                    return Err(ClientError::Bitstream("too many list modifications".into()));
                }
                l.insert(ref_idx, Some(t));
                let mut k = ref_idx + 1;
                while k < l.len() {
                    if l[k] == Some(t) {
                        l.remove(k);
                    } else {
                        k += 1;
                    }
                }
                l.resize(n, None);
            }
        }
        Ok(l)
    }

    fn ref_list_init_b0(&self, cur_poc: i32, short: &[usize], long: &[usize]) -> Vec<usize> {
        let mut before: Vec<usize> = short
            .iter()
            .copied()
            .filter(|&i| self.refs[i].poc() < cur_poc)
            .collect();
        before.sort_by_key(|&i| std::cmp::Reverse(self.refs[i].poc()));
        let mut after: Vec<usize> = short
            .iter()
            .copied()
            .filter(|&i| self.refs[i].poc() > cur_poc)
            .collect();
        after.sort_by_key(|&i| self.refs[i].poc());
        let mut l = [before, after].concat();
        l.extend(long);
        l
    }

    /// Builds the jobs of a complete picture and updates the DPB.
    fn finish_picture(&mut self, p: PendingPicture) -> Result<(), ClientError> {
        let sps = p.pps.sps.clone();
        let first = &p.slices[0].hdr;
        if first.field_pic_flag {
            return Err(ClientError::Unsupported("field pictures".into()));
        }
        if p.pps.num_slice_groups_minus1 != 0 {
            return Err(ClientError::Unsupported("slice groups".into()));
        }
        if !p.idr && !self.seen_idr {
            // Nothing to predict from yet: skip until the first IDR.
            return Ok(());
        }
        let max_frame_num = 1u32 << (sps.log2_max_frame_num_minus4 + 4);
        let frame_num = u32::from(first.frame_num);
        if p.idr {
            self.refs.clear();
            self.order = OrderState::default();
            self.max_long_term_idx = None;
            if self.seen_idr {
                self.epoch += 1;
            }
            self.seen_idr = true;
        } else if frame_num != self.order.prev_ref_frame_num
            && frame_num != (self.order.prev_ref_frame_num + 1) % max_frame_num
        {
            return Err(ClientError::Unsupported("gaps in frame_num".into()));
        }
        let (top, bottom, frame_num_offset) =
            self.picture_order_count(&sps, first, p.nal_ref_idc, p.idr);
        let cur_poc = top.min(bottom);
        let ts = (self.pictures + 1) * TIMESTAMP_STEP;
        self.pictures += 1;

        // DPB: the current reference pictures.
        let mut dp = V4l2CtrlH264DecodeParams::new_zeroed();
        for (e, r) in dp.dpb.iter_mut().zip(&self.refs) {
            let cur = i64::from(frame_num);
            let f = i64::from(r.frame_num);
            let wrap = if f > cur {
                f - i64::from(max_frame_num)
            } else {
                f
            };
            e.reference_ts = r.ts;
            e.fields = V4L2_H264_FRAME_REF;
            e.top_field_order_cnt = r.top_poc;
            e.bottom_field_order_cnt = r.bottom_poc;
            e.flags = V4L2_H264_DPB_ENTRY_FLAG_VALID | V4L2_H264_DPB_ENTRY_FLAG_ACTIVE;
            match r.long_term {
                Some(idx) => {
                    e.flags |= V4L2_H264_DPB_ENTRY_FLAG_LONG_TERM;
                    e.pic_num = idx;
                    e.frame_num = idx as u16;
                }
                None => {
                    e.pic_num = wrap as i32 as u32;
                    e.frame_num = r.frame_num as u16;
                }
            }
        }
        dp.nal_ref_idc = p.nal_ref_idc.into();
        dp.frame_num = first.frame_num;
        dp.top_field_order_cnt = top;
        dp.bottom_field_order_cnt = bottom;
        dp.idr_pic_id = first.idr_pic_id;
        dp.pic_order_cnt_lsb = first.pic_order_cnt_lsb;
        dp.delta_pic_order_cnt_bottom = first.delta_pic_order_cnt_bottom;
        dp.delta_pic_order_cnt0 = first.delta_pic_order_cnt[0];
        dp.delta_pic_order_cnt1 = first.delta_pic_order_cnt[1];
        dp.dec_ref_pic_marking_bit_size = first.dec_ref_pic_marking_bit_size as u32;
        dp.pic_order_cnt_bit_size = first.pic_order_cnt_bit_size as u32;
        if p.idr {
            dp.flags |= V4L2_H264_DECODE_PARAM_FLAG_IDR_PIC;
        }
        for s in &p.slices {
            match s.hdr.slice_type {
                SliceType::P | SliceType::Sp => dp.flags |= V4L2_H264_DECODE_PARAM_FLAG_PFRAME,
                SliceType::B => dp.flags |= V4L2_H264_DECODE_PARAM_FLAG_BFRAME,
                _ => {}
            }
        }

        let mut base = ControlValues::new();
        base.set(&sps_control(&sps));
        let (pps_c, matrix) = pps_control(&p.pps);
        base.set(&pps_c);
        base.set(&matrix.unwrap_or_else(V4l2CtrlH264ScalingMatrix::default_value));
        base.set(&dp);
        let (mode, annex_b) = match self.packing {
            Packing::SlicePerJob { annex_b } => (V4l2StatelessH264DecodeMode::SliceBased, annex_b),
            Packing::PicturePerJob => (V4l2StatelessH264DecodeMode::FrameBased, true),
        };
        base.set_raw(
            V4L2_CID_STATELESS_H264_DECODE_MODE,
            (mode as i32).to_le_bytes().to_vec(),
        );
        let sc = if annex_b {
            V4l2StatelessH264StartCode::AnnexB
        } else {
            V4l2StatelessH264StartCode::None
        };
        base.set_raw(
            V4L2_CID_STATELESS_H264_START_CODE,
            (sc as i32).to_le_bytes().to_vec(),
        );

        let info = PictureInfo {
            key: DisplayKey {
                epoch: self.epoch,
                order: i64::from(cur_poc),
            },
            max_reorder: sps.max_num_order_frames() as usize,
            visible: visible_rect(&sps),
            coded: (
                (u32::from(sps.pic_width_in_mbs_minus1) + 1) * 16,
                (u32::from(sps.pic_height_in_map_units_minus1) + 1)
                    * 16
                    * if sps.frame_mbs_only_flag { 1 } else { 2 },
            ),
            bit_depth: sps.bit_depth_luma_minus8 + 8,
        };

        // Per-slice controls.
        let mut per_slice = Vec::with_capacity(p.slices.len());
        for s in &p.slices {
            let h = &s.hdr;
            let mut sp = V4l2CtrlH264SliceParams::new_zeroed();
            sp.header_bit_size = h.header_bit_size as u32;
            sp.first_mb_in_slice = h.first_mb_in_slice;
            sp.slice_type = h.slice_type as u8;
            sp.colour_plane_id = h.colour_plane_id;
            sp.redundant_pic_cnt = h.redundant_pic_cnt;
            sp.cabac_init_idc = h.cabac_init_idc;
            sp.slice_qp_delta = h.slice_qp_delta;
            sp.slice_qs_delta = h.slice_qs_delta;
            sp.disable_deblocking_filter_idc = h.disable_deblocking_filter_idc;
            sp.slice_alpha_c0_offset_div2 = h.slice_alpha_c0_offset_div2;
            sp.slice_beta_offset_div2 = h.slice_beta_offset_div2;
            if h.direct_spatial_mv_pred_flag {
                sp.flags |= V4L2_H264_SLICE_FLAG_DIRECT_SPATIAL_MV_PRED;
            }
            if h.sp_for_switch_flag {
                sp.flags |= V4L2_H264_SLICE_FLAG_SP_FOR_SWITCH;
            }
            let lists = if h.slice_type.is_i() || h.slice_type.is_si() {
                0
            } else if h.slice_type.is_b() {
                2
            } else {
                1
            };
            if lists >= 1 {
                sp.num_ref_idx_l0_active_minus1 = h.num_ref_idx_l0_active_minus1;
                let l0 = self.ref_list(h, cur_poc, 0)?;
                for (d, r) in sp.ref_pic_list0.iter_mut().zip(&l0) {
                    *d = reference(*r);
                }
            }
            if lists == 2 {
                sp.num_ref_idx_l1_active_minus1 = h.num_ref_idx_l1_active_minus1;
                let l1 = self.ref_list(h, cur_poc, 1)?;
                for (d, r) in sp.ref_pic_list1.iter_mut().zip(&l1) {
                    *d = reference(*r);
                }
            }
            let needs_weights = (p.pps.weighted_pred_flag
                && (h.slice_type.is_p() || h.slice_type.is_sp()))
                || (p.pps.weighted_bipred_idc == 1 && h.slice_type.is_b());
            let weights = needs_weights.then(|| pred_weights(h));
            per_slice.push((sp, weights));
        }

        // Jobs.
        let jobs_before = self.jobs.len();
        let start_code: &[u8] = &[0, 0, 0, 1];
        match self.packing {
            Packing::PicturePerJob => {
                let mut controls = base;
                controls.set(&per_slice[0].0);
                if let Some(w) = &per_slice[0].1 {
                    controls.set(w);
                }
                let mut bitstream = Vec::new();
                for s in &p.slices {
                    bitstream.extend_from_slice(start_code);
                    bitstream.extend_from_slice(&s.nal[3..]);
                }
                self.jobs.push_back(Job {
                    codec: Codec::H264,
                    controls,
                    bitstream,
                    timestamp: ts,
                    flags: JobFlags::default(),
                    picture: info,
                });
            }
            Packing::SlicePerJob { annex_b } => {
                let n = p.slices.len();
                for (i, (s, (sp, w))) in p.slices.iter().zip(&per_slice).enumerate() {
                    let mut controls = base.clone();
                    controls.set(sp);
                    if let Some(w) = w {
                        controls.set(w);
                    }
                    let mut bitstream = Vec::new();
                    if annex_b {
                        bitstream.extend_from_slice(start_code);
                    }
                    bitstream.extend_from_slice(&s.nal[3..]);
                    self.jobs.push_back(Job {
                        codec: Codec::H264,
                        controls,
                        bitstream,
                        timestamp: ts,
                        flags: JobFlags {
                            more_slices: i + 1 < n,
                            continues_picture: i > 0,
                        },
                        picture: info,
                    });
                }
            }
        }

        // Reference marking (8.2.5) and order state.
        let marking = &first.dec_ref_pic_marking;
        let mut mmco5 = false;
        let mut current_long_term = None;
        if p.nal_ref_idc != 0 {
            if p.idr {
                if marking.long_term_reference_flag {
                    current_long_term = Some(0);
                    self.max_long_term_idx = Some(0);
                } else {
                    self.max_long_term_idx = None;
                }
            } else if marking.adaptive_ref_pic_marking_mode_flag {
                for m in &marking.inner {
                    let pic_num_x =
                        i64::from(frame_num) - (i64::from(m.difference_of_pic_nums_minus1) + 1);
                    let short_idx = |refs: &[RefPic]| {
                        refs.iter().position(|r| {
                            let f = i64::from(r.frame_num);
                            let w = if f > i64::from(frame_num) {
                                f - i64::from(max_frame_num)
                            } else {
                                f
                            };
                            r.long_term.is_none() && w == pic_num_x
                        })
                    };
                    match m.memory_management_control_operation {
                        1 => {
                            if let Some(i) = short_idx(&self.refs) {
                                self.refs.remove(i);
                            }
                        }
                        2 => self
                            .refs
                            .retain(|r| r.long_term != Some(m.long_term_pic_num)),
                        3 => {
                            if let Some(i) = short_idx(&self.refs) {
                                let lt = m.long_term_frame_idx;
                                let keep = self.refs[i].ts;
                                self.refs
                                    .retain(|r| r.long_term != Some(lt) || r.ts == keep);
                                if let Some(r) = self.refs.iter_mut().find(|r| r.ts == keep) {
                                    r.long_term = Some(lt);
                                }
                            }
                        }
                        4 => {
                            let max = m.max_long_term_frame_idx.to_value_plus1();
                            self.max_long_term_idx = max.checked_sub(1);
                            self.refs
                                .retain(|r| !matches!(r.long_term, Some(idx) if idx >= max));
                        }
                        5 => {
                            self.refs.clear();
                            self.max_long_term_idx = None;
                            mmco5 = true;
                        }
                        6 => {
                            let lt = m.long_term_frame_idx;
                            self.refs.retain(|r| r.long_term != Some(lt));
                            current_long_term = Some(lt);
                        }
                        _ => {}
                    }
                }
            } else {
                let max = usize::from(sps.max_num_ref_frames.max(1));
                if self.refs.len() >= max {
                    let oldest = self
                        .refs
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.long_term.is_none())
                        .min_by_key(|(_, r)| {
                            let f = i64::from(r.frame_num);
                            if f > i64::from(frame_num) {
                                f - i64::from(max_frame_num)
                            } else {
                                f
                            }
                        })
                        .map(|(i, _)| i);
                    if let Some(i) = oldest {
                        self.refs.remove(i);
                    }
                }
            }
            let (mut t, mut b) = (top, bottom);
            if mmco5 {
                let temp = t.min(b);
                t -= temp;
                b -= temp;
            }
            self.refs.push(RefPic {
                ts,
                frame_num: if mmco5 { 0 } else { frame_num },
                top_poc: t,
                bottom_poc: b,
                long_term: current_long_term,
            });
            if self.refs.len() > V4L2_H264_NUM_DPB_ENTRIES {
                return Err(ClientError::Bitstream(
                    "more than 16 reference frames".into(),
                ));
            }
        }
        if mmco5 {
            // The picture restarts the order count: it opens a new display
            // epoch (everything before it is output first).
            self.epoch += 1;
            let key = DisplayKey {
                epoch: self.epoch,
                order: 0,
            };
            for j in self.jobs.iter_mut().skip(jobs_before) {
                j.picture.key = key;
            }
            let temp = top.min(bottom);
            self.order.prev_poc_msb = 0;
            self.order.prev_poc_lsb = top - temp;
            self.order.prev_frame_num_offset = 0;
            self.order.prev_frame_num = 0;
            self.order.prev_ref_frame_num = 0;
        } else {
            self.order.prev_frame_num_offset = frame_num_offset;
            self.order.prev_frame_num = frame_num;
            if p.nal_ref_idc != 0 {
                self.order.prev_ref_frame_num = frame_num;
            }
        }
        self.order.prev_mmco5 = mmco5;
        Ok(())
    }
}

fn reference(r: Option<usize>) -> V4l2H264Reference {
    match r {
        Some(i) => V4l2H264Reference {
            fields: V4L2_H264_FRAME_REF,
            index: i as u8,
        },
        None => V4l2H264Reference {
            fields: 0,
            index: V4L2_H264_REF_INDEX_NONE,
        },
    }
}

fn pred_weights(h: &SliceHeader) -> V4l2CtrlH264PredWeights {
    let t = &h.pred_weight_table;
    let mut w = V4l2CtrlH264PredWeights::new_zeroed();
    w.luma_log2_weight_denom = t.luma_log2_weight_denom.into();
    w.chroma_log2_weight_denom = t.chroma_log2_weight_denom.into();
    let f0 = &mut w.weight_factors[0];
    f0.luma_weight = t.luma_weight_l0;
    for i in 0..32 {
        f0.luma_offset[i] = t.luma_offset_l0[i].into();
        for c in 0..2 {
            f0.chroma_weight[i][c] = t.chroma_weight_l0[i][c];
            f0.chroma_offset[i][c] = t.chroma_offset_l0[i][c].into();
        }
    }
    if h.slice_type.is_b() {
        let f1 = &mut w.weight_factors[1];
        f1.luma_weight = t.luma_weight_l1;
        f1.luma_offset = t.luma_offset_l1;
        for i in 0..32 {
            for c in 0..2 {
                f1.chroma_weight[i][c] = t.chroma_weight_l1[i][c];
                f1.chroma_offset[i][c] = t.chroma_offset_l1[i][c].into();
            }
        }
    }
    w
}

impl StreamParser for H264Parser {
    fn next_job(&mut self) -> Result<Option<Job>, ClientError> {
        self.fill()?;
        Ok(self.jobs.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_refs(refs: &[(u32, i32, Option<u32>)]) -> H264Parser {
        let mut p = H264Parser::new(Vec::new(), Packing::PicturePerJob);
        p.refs = refs
            .iter()
            .enumerate()
            .map(|(i, &(frame_num, poc, long_term))| RefPic {
                ts: i as u64,
                frame_num,
                top_poc: poc,
                bottom_poc: poc,
                long_term,
            })
            .collect();
        p
    }

    fn header(ty: SliceType, frame_num: u16, l0: u8, l1: u8) -> SliceHeader {
        SliceHeader {
            slice_type: ty,
            frame_num,
            max_pic_num: 16,
            num_ref_idx_l0_active_minus1: l0,
            num_ref_idx_l1_active_minus1: l1,
            ..Default::default()
        }
    }

    #[test]
    fn p_list_by_descending_pic_num_then_long_term() {
        // frame_num 14, 15, 0 with wrap (current 1), plus a long-term one.
        let p = with_refs(&[(14, 0, None), (3, 0, Some(1)), (15, 0, None), (0, 0, None)]);
        let h = header(SliceType::P, 1, 4, 0);
        assert_eq!(
            (p.ref_list(&h, 0, 0).unwrap()),
            vec![Some(3), Some(2), Some(0), Some(1), None]
        );
    }

    #[test]
    fn b_lists_by_poc_and_swap_rule() {
        let p = with_refs(&[(0, 0, None), (1, 8, None), (2, 4, Some(0))]);
        let h = header(SliceType::B, 3, 2, 2);
        assert_eq!(
            (p.ref_list(&h, 2, 0).unwrap()),
            vec![Some(0), Some(1), Some(2)]
        );
        assert_eq!(
            (p.ref_list(&h, 2, 1).unwrap()),
            vec![Some(1), Some(0), Some(2)]
        );
        // Only past pictures: list 1 would equal list 0, so its first two
        // entries are swapped.
        let p = with_refs(&[(0, 0, None), (1, 2, None)]);
        let h = header(SliceType::B, 2, 1, 1);
        assert_eq!((p.ref_list(&h, 4, 0).unwrap()), vec![Some(1), Some(0)]);
        assert_eq!((p.ref_list(&h, 4, 1).unwrap()), vec![Some(0), Some(1)]);
    }

    #[test]
    fn list_modification_moves_a_picture_first() {
        let p = with_refs(&[(0, 0, None), (1, 2, None), (2, 4, None)]);
        let mut h = header(SliceType::P, 3, 2, 0);
        h.ref_pic_list_modification_flag_l0 = true;
        h.ref_pic_list_modification_l0 = vec![
            RefPicListModification {
                modification_of_pic_nums_idc: 0,
                abs_diff_pic_num_minus1: 2, // 3 - 3 = PicNum 0
                ..Default::default()
            },
            RefPicListModification {
                modification_of_pic_nums_idc: 3,
                ..Default::default()
            },
        ];
        assert_eq!(
            (p.ref_list(&h, 6, 0).unwrap()),
            vec![Some(0), Some(2), Some(1)]
        );
        // A modification naming a picture that is not in the DPB.
        h.ref_pic_list_modification_l0[0].abs_diff_pic_num_minus1 = 5;
        assert!(p.ref_list(&h, 6, 0).is_err());
    }

    #[test]
    fn zigzag_is_a_permutation() {
        assert_eq!(
            zigzag(4),
            vec![0, 1, 4, 8, 5, 2, 3, 6, 9, 12, 13, 10, 7, 11, 14, 15]
        );
        let mut z = zigzag(8);
        z.sort();
        assert_eq!(z, (0..64).collect::<Vec<_>>());
    }
}
