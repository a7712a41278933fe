//! HEVC Annex B streams to V4L2 stateless jobs.
//!
//! Parsing (NAL headers, VPS/SPS/PPS, slice segment headers) is cros-codecs'
//! H.265 parser. Everything V4L2-specific is here: the control structs,
//! picture order counts (8.3.1), the reference picture set and the DPB it
//! leaves (8.3.2), the RPS subsets as indexes into the DPB entries of the
//! decode parameters, the reference picture lists (8.3.4) as DPB indexes,
//! and the packing of slices into jobs.
//!
//! Conventions of the controls this parser fills (and the daemon's FFmpeg
//! backend reads):
//! * `data_byte_offset` is the offset of the slice segment data from the
//!   first byte of the slice NAL unit header (start code excluded),
//!   emulation prevention bytes included; `bit_size` is the NAL unit size
//!   in bits.
//! * `chroma_offset_l0/l1` of the prediction weight table hold the derived
//!   `ChromaOffsetL0/L1` (7-56), not the coded `delta_chroma_offset`.
//! * `ENTRY_POINT_OFFSETS` holds the `entry_point_offset_minus1` values of
//!   every slice of the job, in slice order.
//!
//! * `SCALING_MATRIX` lists are in raster order (the parser's coding-order
//!   lists are converted), DC values included.
//!
//! Slice headers with more than 32 entry points (cros-codecs' header holds
//! 32) are read by this module's own slice header reader.
//!
//! Limits: 8- and 10-bit 4:2:0 / 4:0:0, one
//! layer; RASL pictures of a CRA picture that starts decoding are skipped,
//! as the specification requires.

use std::collections::VecDeque;
use std::io::Cursor;
use std::rc::Rc;

use cros_codecs::codec::h265::parser::{
    Nalu, NaluType, Parser, Pps, ShortTermRefPicSet, SliceHeader, SliceType, Sps,
};
use decoder_core::ctrl::hevc::*;
use decoder_core::ctrl::{Codec, CompoundControl, ControlValues};
use zerocopy::IntoBytes;

use crate::annexb::next_nal;
pub use crate::h264::Packing;
use crate::{ClientError, DisplayKey, Job, JobFlags, PictureInfo, StreamParser};

/// Timestamp spacing of successive pictures (ns).
pub const TIMESTAMP_STEP: u64 = 1000;

/// A picture of the DPB that is still a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RefPic {
    ts: u64,
    poc: i32,
    long_term: bool,
}

/// One slice segment NAL unit (without start code) and its header.
struct SliceUnit {
    nal: Vec<u8>,
    hdr: SliceHeader,
    /// Entry points and header size (RBSP bytes, NAL header included) when
    /// the header was read by [`fallback_slice_header`] (more entry points
    /// than cros-codecs' header can hold).
    tail: Option<(Vec<u32>, usize)>,
    nal_type: u8,
    temporal_id_plus1: u8,
}

/// The slice segments of one picture.
struct PendingPicture {
    pps: Rc<Pps>,
    slices: Vec<SliceUnit>,
}

/// Stream parser producing HEVC decode jobs.
pub struct HevcParser {
    data: Vec<u8>,
    pos: usize,
    parser: Parser,
    packing: Packing,
    jobs: VecDeque<Job>,
    current: Option<PendingPicture>,
    /// Reference pictures (the DPB minus pictures only waiting for output).
    dpb: Vec<RefPic>,
    /// POC of the previous TemporalId 0 picture that is not RASL, RADL or
    /// a sub-layer non-reference picture.
    prev_tid0_poc: i32,
    /// The next IRAP picture starts decoding (stream start, end of
    /// sequence): NoRaslOutputFlag = 1.
    restart: bool,
    /// The last IRAP picture had NoRaslOutputFlag = 1: its RASL pictures
    /// are skipped.
    skip_rasl: bool,
    /// Last independent slice segment header (for dependent segments).
    last_independent: Option<SliceHeader>,
    epoch: u64,
    pictures: u64,
    seen_irap: bool,
    /// Read every slice header with this module's reader.
    own_reader: bool,
}

impl std::fmt::Debug for HevcParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HevcParser")
            .field("pos", &self.pos)
            .field("packing", &self.packing)
            .field("pictures", &self.pictures)
            .field("dpb", &self.dpb)
            .finish()
    }
}

/// Offset in the escaped NAL unit `nal` of RBSP byte `rbsp_bytes` (the
/// first byte after that many RBSP bytes), skipping emulation prevention
/// bytes.
fn escaped_offset(nal: &[u8], rbsp_bytes: usize) -> Option<usize> {
    let mut zeros = 0;
    let mut count = 0;
    for (i, &b) in nal.iter().enumerate() {
        if count == rbsp_bytes {
            // An emulation prevention byte right here belongs to the data.
            return Some(i);
        }
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        count += 1;
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    (count == rbsp_bytes).then_some(nal.len())
}

/// MSB-first reader over an RBSP (emulation prevention bytes removed).
struct RbspReader {
    data: Vec<u8>,
    pos: usize,
}

impl RbspReader {
    fn new(nal: &[u8]) -> Self {
        let mut data = Vec::with_capacity(nal.len());
        let mut zeros = 0;
        for &b in nal {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            data.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
        }
        Self { data, pos: 0 }
    }

    fn u(&mut self, n: u32) -> Result<u32, ClientError> {
        let mut v = 0u64;
        for _ in 0..n {
            let byte = *self
                .data
                .get(self.pos / 8)
                .ok_or_else(|| bs("slice header truncated"))?;
            v = (v << 1) | u64::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        u32::try_from(v).map_err(|_| bs("field too wide"))
    }

    fn flag(&mut self) -> Result<bool, ClientError> {
        Ok(self.u(1)? == 1)
    }

    fn ue(&mut self) -> Result<u32, ClientError> {
        let mut zeros = 0;
        while !self.flag()? {
            zeros += 1;
            if zeros > 31 {
                return Err(bs("bad exp-Golomb code"));
            }
        }
        Ok(((1u64 << zeros) - 1 + u64::from(self.u(zeros)?)) as u32)
    }

    fn se(&mut self) -> Result<i32, ClientError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) } as i32)
    }
}

/// `slice_pic_parameter_set_id` of a slice segment NAL unit.
fn peek_pps_id(nal: &[u8]) -> Option<u8> {
    let nal_type = (nal.first()? >> 1) & 0x3f;
    let mut r = RbspReader::new(nal.get(..nal.len().min(16))?);
    r.pos = 16;
    r.flag().ok()?;
    if (16..=23).contains(&nal_type) {
        r.flag().ok()?;
    }
    u8::try_from(r.ue().ok()?).ok()
}

fn ceil_log2(v: u32) -> u32 {
    if v <= 1 {
        0
    } else {
        32 - (v - 1).leading_zeros()
    }
}

/// Reads a slice segment header (7.3.6.1) whose entry points do not fit
/// cros-codecs' header struct: the same fields, with the entry points
/// (`entry_point_offset_minus1`) and the header size in RBSP bytes (NAL
/// header included) returned on the side.
fn fallback_slice_header(
    nal: &[u8],
    parser: &Parser,
    prev: Option<&SliceHeader>,
) -> Result<(SliceHeader, Vec<u32>, usize), ClientError> {
    let nal_type = (nal[0] >> 1) & 0x3f;
    let mut r = RbspReader::new(nal);
    r.pos = 16;
    let first = r.flag()?;
    let no_output_of_prior = if (16..=23).contains(&nal_type) {
        r.flag()?
    } else {
        false
    };
    let pps_id = r.ue()?;
    let pps = parser
        .get_pps(u8::try_from(pps_id).map_err(|_| bs("pps id"))?)
        .cloned()
        .ok_or_else(|| bs("slice refers to an unknown PPS"))?;
    let sps = pps.sps.clone();
    let mut dependent = false;
    let mut address = 0;
    if !first {
        if pps.dependent_slice_segments_enabled_flag {
            dependent = r.flag()?;
        }
        address = r.u(ceil_log2(sps.pic_size_in_ctbs_y))?;
    }
    let mut h = if dependent {
        prev.cloned()
            .ok_or_else(|| bs("dependent slice segment first"))?
    } else {
        let mut h = SliceHeader::default();
        Parser::slice_header_set_defaults(&mut h, &sps, &pps);
        h
    };
    h.first_slice_segment_in_pic_flag = first;
    h.no_output_of_prior_pics_flag = no_output_of_prior;
    h.pic_parameter_set_id = pps_id as u8;
    h.dependent_slice_segment_flag = dependent;
    h.segment_address = address;
    if !dependent {
        r.u(u32::from(pps.num_extra_slice_header_bits))?;
        h.type_ = match r.ue()? {
            0 => SliceType::B,
            1 => SliceType::P,
            2 => SliceType::I,
            _ => return Err(bs("bad slice_type")),
        };
        h.pic_output_flag = if pps.output_flag_present_flag {
            r.flag()?
        } else {
            true
        };
        if sps.separate_colour_plane_flag {
            h.colour_plane_id = r.u(2)? as u8;
        }
        let mut num_pic_total_curr = 0u32;
        if nal_type != 19 && nal_type != 20 {
            let lsb_bits = u32::from(sps.log2_max_pic_order_cnt_lsb_minus4) + 4;
            h.pic_order_cnt_lsb = r.u(lsb_bits)? as u16;
            h.short_term_ref_pic_set_sps_flag = r.flag()?;
            if !h.short_term_ref_pic_set_sps_flag {
                let start = r.pos;
                h.short_term_ref_pic_set = read_st_rps(&mut r, &sps)?;
                h.st_rps_bits = (r.pos - start) as u32;
            } else {
                let n = u32::from(sps.num_short_term_ref_pic_sets);
                if n > 1 {
                    h.short_term_ref_pic_set_idx = r.u(ceil_log2(n))? as u8;
                }
                h.curr_rps_idx = h.short_term_ref_pic_set_idx;
            }
            let st = if h.short_term_ref_pic_set_sps_flag {
                sps.short_term_ref_pic_set
                    .get(usize::from(h.short_term_ref_pic_set_idx))
                    .ok_or_else(|| bs("bad short_term_ref_pic_set_idx"))?
                    .clone()
            } else {
                h.short_term_ref_pic_set.clone()
            };
            num_pic_total_curr += st.used_by_curr_pic_s0[..usize::from(st.num_negative_pics)]
                .iter()
                .chain(&st.used_by_curr_pic_s1[..usize::from(st.num_positive_pics)])
                .filter(|u| **u)
                .count() as u32;
            if sps.long_term_ref_pics_present_flag {
                if sps.num_long_term_ref_pics_sps > 0 {
                    h.num_long_term_sps = r.ue()? as u8;
                }
                h.num_long_term_pics = r.ue()? as u8;
                let n = usize::from(h.num_long_term_sps) + usize::from(h.num_long_term_pics);
                if n > 16 {
                    return Err(bs("too many long-term pictures"));
                }
                for i in 0..n {
                    if i < usize::from(h.num_long_term_sps) {
                        let bits = ceil_log2(u32::from(sps.num_long_term_ref_pics_sps));
                        let idx = if bits > 0 { r.u(bits)? } else { 0 } as usize;
                        h.lt_idx_sps[i] = idx as u8;
                        h.poc_lsb_lt[i] = *sps
                            .lt_ref_pic_poc_lsb_sps
                            .get(idx)
                            .ok_or_else(|| bs("lt_idx_sps"))?;
                        h.used_by_curr_pic_lt[i] = sps.used_by_curr_pic_lt_sps_flag[idx];
                    } else {
                        h.poc_lsb_lt[i] = r.u(lsb_bits)?;
                        h.used_by_curr_pic_lt[i] = r.flag()?;
                    }
                    h.delta_poc_msb_present_flag[i] = r.flag()?;
                    if h.delta_poc_msb_present_flag[i] {
                        h.delta_poc_msb_cycle_lt[i] = r.ue()?;
                    }
                    // 7-52: accumulate within the SPS and the slice groups.
                    if i != 0 && i != usize::from(h.num_long_term_sps) {
                        h.delta_poc_msb_cycle_lt[i] += h.delta_poc_msb_cycle_lt[i - 1];
                    }
                    if h.used_by_curr_pic_lt[i] {
                        num_pic_total_curr += 1;
                    }
                }
            }
            if sps.temporal_mvp_enabled_flag {
                h.temporal_mvp_enabled_flag = r.flag()?;
            }
        }
        h.num_pic_total_curr = num_pic_total_curr;
        if sps.sample_adaptive_offset_enabled_flag {
            h.sao_luma_flag = r.flag()?;
            if sps.chroma_array_type != 0 {
                h.sao_chroma_flag = r.flag()?;
            }
        }
        if !h.type_.is_i() {
            h.num_ref_idx_l0_active_minus1 = pps.num_ref_idx_l0_default_active_minus1;
            h.num_ref_idx_l1_active_minus1 = pps.num_ref_idx_l1_default_active_minus1;
            h.num_ref_idx_active_override_flag = r.flag()?;
            if h.num_ref_idx_active_override_flag {
                h.num_ref_idx_l0_active_minus1 = r.ue()?.min(14) as u8;
                if h.type_.is_b() {
                    h.num_ref_idx_l1_active_minus1 = r.ue()?.min(14) as u8;
                }
            }
            if pps.lists_modification_present_flag && num_pic_total_curr > 1 {
                let bits = ceil_log2(num_pic_total_curr);
                let m = &mut h.ref_pic_list_modification;
                m.ref_pic_list_modification_flag_l0 = r.flag()?;
                m.list_entry_l0.clear();
                if m.ref_pic_list_modification_flag_l0 {
                    for _ in 0..=h.num_ref_idx_l0_active_minus1 {
                        m.list_entry_l0.push(r.u(bits)?);
                    }
                }
                if h.type_.is_b() {
                    m.ref_pic_list_modification_flag_l1 = r.flag()?;
                    m.list_entry_l1.clear();
                    if m.ref_pic_list_modification_flag_l1 {
                        for _ in 0..=h.num_ref_idx_l1_active_minus1 {
                            m.list_entry_l1.push(r.u(bits)?);
                        }
                    }
                }
            }
            if h.type_.is_b() {
                h.mvd_l1_zero_flag = r.flag()?;
            }
            if pps.cabac_init_present_flag {
                h.cabac_init_flag = r.flag()?;
            }
            h.collocated_from_l0_flag = true;
            if h.temporal_mvp_enabled_flag {
                if h.type_.is_b() {
                    h.collocated_from_l0_flag = r.flag()?;
                }
                if (h.collocated_from_l0_flag && h.num_ref_idx_l0_active_minus1 > 0)
                    || (!h.collocated_from_l0_flag && h.num_ref_idx_l1_active_minus1 > 0)
                {
                    h.collocated_ref_idx = r.ue()? as u8;
                }
            }
            if (pps.weighted_pred_flag && h.type_.is_p())
                || (pps.weighted_bipred_flag && h.type_.is_b())
            {
                read_pred_weights(&mut r, &mut h, sps.chroma_array_type != 0)?;
            }
            h.five_minus_max_num_merge_cand = r.ue()? as u8;
        }
        h.qp_delta = r.se()? as i8;
        if pps.slice_chroma_qp_offsets_present_flag {
            h.cb_qp_offset = r.se()? as i8;
            h.cr_qp_offset = r.se()? as i8;
        }
        if pps.range_extension.chroma_qp_offset_list_enabled_flag {
            h.cu_chroma_qp_offset_enabled_flag = r.flag()?;
        }
        if pps.deblocking_filter_override_enabled_flag {
            h.deblocking_filter_override_flag = r.flag()?;
        }
        if h.deblocking_filter_override_flag {
            h.deblocking_filter_disabled_flag = r.flag()?;
            if !h.deblocking_filter_disabled_flag {
                h.beta_offset_div2 = r.se()? as i8;
                h.tc_offset_div2 = r.se()? as i8;
            }
        }
        if pps.loop_filter_across_slices_enabled_flag
            && (h.sao_luma_flag || h.sao_chroma_flag || !h.deblocking_filter_disabled_flag)
        {
            h.loop_filter_across_slices_enabled_flag = r.flag()?;
        }
    }
    let mut eps = Vec::new();
    if pps.tiles_enabled_flag || pps.entropy_coding_sync_enabled_flag {
        let n = r.ue()?;
        if n > 4096 {
            return Err(bs("too many entry points"));
        }
        if n > 0 {
            let bits = r.ue()? + 1;
            if bits > 32 {
                return Err(bs("offset_len_minus1"));
            }
            for _ in 0..n {
                eps.push(r.u(bits)?);
            }
        }
    }
    h.num_entry_point_offsets = eps.len() as u32;
    if pps.slice_segment_header_extension_present_flag {
        let len = r.ue()?;
        r.u(8 * len.min(256))?;
    }
    if !r.flag()? {
        return Err(bs("byte_alignment() without its one bit"));
    }
    while !r.pos.is_multiple_of(8) {
        if r.flag()? {
            return Err(bs("byte_alignment() with a one bit"));
        }
    }
    Ok((h, eps, r.pos / 8))
}

/// `st_ref_pic_set(num_short_term_ref_pic_sets)` of a slice header
/// (7.3.7, with 7-61 / 7-62 for a set predicted from an SPS set).
fn read_st_rps(r: &mut RbspReader, sps: &Sps) -> Result<ShortTermRefPicSet, ClientError> {
    let mut st = ShortTermRefPicSet::default();
    let idx = usize::from(sps.num_short_term_ref_pic_sets);
    if idx != 0 {
        st.inter_ref_pic_set_prediction_flag = r.flag()?;
    }
    if st.inter_ref_pic_set_prediction_flag {
        st.delta_idx_minus1 = r.ue()? as u8;
        st.delta_rps_sign = r.flag()?;
        st.abs_delta_rps_minus1 = r.ue()? as u16;
        let ref_idx = idx
            .checked_sub(usize::from(st.delta_idx_minus1) + 1)
            .ok_or_else(|| bs("delta_idx_minus1"))?;
        let rs = &sps.short_term_ref_pic_set[ref_idx];
        let delta_rps =
            (1 - 2 * i32::from(st.delta_rps_sign)) * (i32::from(st.abs_delta_rps_minus1) + 1);
        let (nn, np) = (
            usize::from(rs.num_negative_pics),
            usize::from(rs.num_positive_pics),
        );
        let total = nn + np;
        let mut used = vec![false; total + 1];
        let mut use_delta = vec![true; total + 1];
        for j in 0..=total {
            used[j] = r.flag()?;
            if !used[j] {
                use_delta[j] = r.flag()?;
            }
        }
        // Negative pictures: the reference set's positive ones (last
        // first), the delta itself, then its negative ones.
        let mut neg = Vec::new();
        for j in (0..np).rev() {
            let d = rs.delta_poc_s1[j] + delta_rps;
            if d < 0 && use_delta[nn + j] {
                neg.push((d, used[nn + j]));
            }
        }
        if delta_rps < 0 && use_delta[total] {
            neg.push((delta_rps, used[total]));
        }
        for j in 0..nn {
            let d = rs.delta_poc_s0[j] + delta_rps;
            if d < 0 && use_delta[j] {
                neg.push((d, used[j]));
            }
        }
        let mut pos = Vec::new();
        for j in (0..nn).rev() {
            let d = rs.delta_poc_s0[j] + delta_rps;
            if d > 0 && use_delta[j] {
                pos.push((d, used[j]));
            }
        }
        if delta_rps > 0 && use_delta[total] {
            pos.push((delta_rps, used[total]));
        }
        for j in 0..np {
            let d = rs.delta_poc_s1[j] + delta_rps;
            if d > 0 && use_delta[nn + j] {
                pos.push((d, used[nn + j]));
            }
        }
        if neg.len() > st.delta_poc_s0.len() || pos.len() > st.delta_poc_s1.len() {
            return Err(bs("reference picture set too large"));
        }
        for (i, (d, u)) in neg.iter().enumerate() {
            st.delta_poc_s0[i] = *d;
            st.used_by_curr_pic_s0[i] = *u;
        }
        for (i, (d, u)) in pos.iter().enumerate() {
            st.delta_poc_s1[i] = *d;
            st.used_by_curr_pic_s1[i] = *u;
        }
        st.num_negative_pics = neg.len() as u8;
        st.num_positive_pics = pos.len() as u8;
    } else {
        let nn = r.ue()?;
        let np = r.ue()?;
        if nn as usize > st.delta_poc_s0.len() || np as usize > st.delta_poc_s1.len() {
            return Err(bs("reference picture set too large"));
        }
        st.num_negative_pics = nn as u8;
        st.num_positive_pics = np as u8;
        let mut prev = 0;
        for i in 0..nn as usize {
            prev -= r.ue()? as i32 + 1;
            st.delta_poc_s0[i] = prev;
            st.used_by_curr_pic_s0[i] = r.flag()?;
        }
        let mut prev = 0;
        for i in 0..np as usize {
            prev += r.ue()? as i32 + 1;
            st.delta_poc_s1[i] = prev;
            st.used_by_curr_pic_s1[i] = r.flag()?;
        }
    }
    st.num_delta_pocs = u32::from(st.num_negative_pics) + u32::from(st.num_positive_pics);
    Ok(st)
}

/// `pred_weight_table()` (7.3.6.3) into the parser's struct.
fn read_pred_weights(
    r: &mut RbspReader,
    h: &mut SliceHeader,
    chroma: bool,
) -> Result<(), ClientError> {
    let t = &mut h.pred_weight_table;
    t.luma_log2_weight_denom = r.ue()?.min(7) as u8;
    if chroma {
        t.delta_chroma_log2_weight_denom = r.se()? as i8;
    }
    let lists = if h.type_.is_b() { 2 } else { 1 };
    for l in 0..lists {
        let n = usize::from(if l == 0 {
            h.num_ref_idx_l0_active_minus1
        } else {
            h.num_ref_idx_l1_active_minus1
        }) + 1;
        let n = n.min(15);
        let mut lf = [false; 15];
        let mut cf = [false; 15];
        for f in lf.iter_mut().take(n) {
            *f = r.flag()?;
        }
        if chroma {
            for f in cf.iter_mut().take(n) {
                *f = r.flag()?;
            }
        }
        for i in 0..n {
            let (dlw, lo, dcw, dco) = if l == 0 {
                (
                    &mut t.delta_luma_weight_l0,
                    &mut t.luma_offset_l0,
                    &mut t.delta_chroma_weight_l0,
                    &mut t.delta_chroma_offset_l0,
                )
            } else {
                (
                    &mut t.delta_luma_weight_l1,
                    &mut t.luma_offset_l1,
                    &mut t.delta_chroma_weight_l1,
                    &mut t.delta_chroma_offset_l1,
                )
            };
            if lf[i] {
                dlw[i] = r.se()? as i8;
                lo[i] = r.se()? as i8;
            }
            if cf[i] {
                for j in 0..2 {
                    dcw[i][j] = r.se()? as i8;
                    dco[i][j] = r.se()? as i16;
                }
            }
        }
        if l == 0 {
            t.luma_weight_l0_flag = lf;
            t.chroma_weight_l0_flag = cf;
        } else {
            t.luma_weight_l1_flag = lf;
            t.chroma_weight_l1_flag = cf;
        }
    }
    Ok(())
}

/// `V4L2_CID_STATELESS_HEVC_SPS` for a parsed SPS.
pub fn sps_control(s: &Sps) -> V4l2CtrlHevcSps {
    let mut c = V4l2CtrlHevcSps::default_value();
    let top = usize::from(s.max_sub_layers_minus1).min(6);
    c.video_parameter_set_id = s.video_parameter_set_id;
    c.seq_parameter_set_id = s.seq_parameter_set_id;
    c.pic_width_in_luma_samples = s.pic_width_in_luma_samples;
    c.pic_height_in_luma_samples = s.pic_height_in_luma_samples;
    c.bit_depth_luma_minus8 = s.bit_depth_luma_minus8;
    c.bit_depth_chroma_minus8 = s.bit_depth_chroma_minus8;
    c.log2_max_pic_order_cnt_lsb_minus4 = s.log2_max_pic_order_cnt_lsb_minus4;
    c.sps_max_dec_pic_buffering_minus1 = s.max_dec_pic_buffering_minus1[top];
    c.sps_max_num_reorder_pics = s.max_num_reorder_pics[top];
    c.sps_max_latency_increase_plus1 = s.max_latency_increase_plus1[top];
    c.log2_min_luma_coding_block_size_minus3 = s.log2_min_luma_coding_block_size_minus3;
    c.log2_diff_max_min_luma_coding_block_size = s.log2_diff_max_min_luma_coding_block_size;
    c.log2_min_luma_transform_block_size_minus2 = s.log2_min_luma_transform_block_size_minus2;
    c.log2_diff_max_min_luma_transform_block_size = s.log2_diff_max_min_luma_transform_block_size;
    c.max_transform_hierarchy_depth_inter = s.max_transform_hierarchy_depth_inter;
    c.max_transform_hierarchy_depth_intra = s.max_transform_hierarchy_depth_intra;
    c.pcm_sample_bit_depth_luma_minus1 = s.pcm_sample_bit_depth_luma_minus1;
    c.pcm_sample_bit_depth_chroma_minus1 = s.pcm_sample_bit_depth_chroma_minus1;
    c.log2_min_pcm_luma_coding_block_size_minus3 = s.log2_min_pcm_luma_coding_block_size_minus3;
    c.log2_diff_max_min_pcm_luma_coding_block_size = s.log2_diff_max_min_pcm_luma_coding_block_size;
    c.num_short_term_ref_pic_sets = s.num_short_term_ref_pic_sets;
    c.num_long_term_ref_pics_sps = s.num_long_term_ref_pics_sps;
    c.chroma_format_idc = s.chroma_format_idc;
    c.sps_max_sub_layers_minus1 = s.max_sub_layers_minus1;
    let flags = [
        (
            s.separate_colour_plane_flag,
            V4L2_HEVC_SPS_FLAG_SEPARATE_COLOUR_PLANE,
        ),
        (
            s.scaling_list_enabled_flag,
            V4L2_HEVC_SPS_FLAG_SCALING_LIST_ENABLED,
        ),
        (s.amp_enabled_flag, V4L2_HEVC_SPS_FLAG_AMP_ENABLED),
        (
            s.sample_adaptive_offset_enabled_flag,
            V4L2_HEVC_SPS_FLAG_SAMPLE_ADAPTIVE_OFFSET,
        ),
        (s.pcm_enabled_flag, V4L2_HEVC_SPS_FLAG_PCM_ENABLED),
        (
            s.pcm_loop_filter_disabled_flag,
            V4L2_HEVC_SPS_FLAG_PCM_LOOP_FILTER_DISABLED,
        ),
        (
            s.long_term_ref_pics_present_flag,
            V4L2_HEVC_SPS_FLAG_LONG_TERM_REF_PICS_PRESENT,
        ),
        (
            s.temporal_mvp_enabled_flag,
            V4L2_HEVC_SPS_FLAG_SPS_TEMPORAL_MVP_ENABLED,
        ),
        (
            s.strong_intra_smoothing_enabled_flag,
            V4L2_HEVC_SPS_FLAG_STRONG_INTRA_SMOOTHING_ENABLED,
        ),
    ];
    c.flags = flags.iter().filter(|f| f.0).fold(0, |a, f| a | f.1);
    c
}

/// `V4L2_CID_STATELESS_HEVC_PPS` for a parsed PPS.
pub fn pps_control(p: &Pps) -> V4l2CtrlHevcPps {
    let mut c = V4l2CtrlHevcPps::default_value();
    c.pic_parameter_set_id = p.pic_parameter_set_id;
    c.num_extra_slice_header_bits = p.num_extra_slice_header_bits;
    c.num_ref_idx_l0_default_active_minus1 = p.num_ref_idx_l0_default_active_minus1;
    c.num_ref_idx_l1_default_active_minus1 = p.num_ref_idx_l1_default_active_minus1;
    c.init_qp_minus26 = p.init_qp_minus26;
    c.diff_cu_qp_delta_depth = p.diff_cu_qp_delta_depth;
    c.pps_cb_qp_offset = p.cb_qp_offset;
    c.pps_cr_qp_offset = p.cr_qp_offset;
    if p.tiles_enabled_flag {
        c.num_tile_columns_minus1 = p.num_tile_columns_minus1;
        c.num_tile_rows_minus1 = p.num_tile_rows_minus1;
        for (d, s) in c.column_width_minus1.iter_mut().zip(&p.column_width_minus1) {
            *d = (*s).min(255) as u8;
        }
        for (d, s) in c.row_height_minus1.iter_mut().zip(&p.row_height_minus1) {
            *d = (*s).min(255) as u8;
        }
    }
    c.pps_beta_offset_div2 = p.beta_offset_div2;
    c.pps_tc_offset_div2 = p.tc_offset_div2;
    c.log2_parallel_merge_level_minus2 = p.log2_parallel_merge_level_minus2;
    let flags = [
        (
            p.dependent_slice_segments_enabled_flag,
            V4L2_HEVC_PPS_FLAG_DEPENDENT_SLICE_SEGMENT_ENABLED,
        ),
        (
            p.output_flag_present_flag,
            V4L2_HEVC_PPS_FLAG_OUTPUT_FLAG_PRESENT,
        ),
        (
            p.sign_data_hiding_enabled_flag,
            V4L2_HEVC_PPS_FLAG_SIGN_DATA_HIDING_ENABLED,
        ),
        (
            p.cabac_init_present_flag,
            V4L2_HEVC_PPS_FLAG_CABAC_INIT_PRESENT,
        ),
        (
            p.constrained_intra_pred_flag,
            V4L2_HEVC_PPS_FLAG_CONSTRAINED_INTRA_PRED,
        ),
        (
            p.transform_skip_enabled_flag,
            V4L2_HEVC_PPS_FLAG_TRANSFORM_SKIP_ENABLED,
        ),
        (
            p.cu_qp_delta_enabled_flag,
            V4L2_HEVC_PPS_FLAG_CU_QP_DELTA_ENABLED,
        ),
        (
            p.slice_chroma_qp_offsets_present_flag,
            V4L2_HEVC_PPS_FLAG_PPS_SLICE_CHROMA_QP_OFFSETS_PRESENT,
        ),
        (p.weighted_pred_flag, V4L2_HEVC_PPS_FLAG_WEIGHTED_PRED),
        (p.weighted_bipred_flag, V4L2_HEVC_PPS_FLAG_WEIGHTED_BIPRED),
        (
            p.transquant_bypass_enabled_flag,
            V4L2_HEVC_PPS_FLAG_TRANSQUANT_BYPASS_ENABLED,
        ),
        (p.tiles_enabled_flag, V4L2_HEVC_PPS_FLAG_TILES_ENABLED),
        (
            p.entropy_coding_sync_enabled_flag,
            V4L2_HEVC_PPS_FLAG_ENTROPY_CODING_SYNC_ENABLED,
        ),
        (
            p.tiles_enabled_flag && p.loop_filter_across_tiles_enabled_flag,
            V4L2_HEVC_PPS_FLAG_LOOP_FILTER_ACROSS_TILES_ENABLED,
        ),
        (
            p.loop_filter_across_slices_enabled_flag,
            V4L2_HEVC_PPS_FLAG_PPS_LOOP_FILTER_ACROSS_SLICES_ENABLED,
        ),
        (
            p.deblocking_filter_override_enabled_flag,
            V4L2_HEVC_PPS_FLAG_DEBLOCKING_FILTER_OVERRIDE_ENABLED,
        ),
        (
            p.deblocking_filter_disabled_flag,
            V4L2_HEVC_PPS_FLAG_PPS_DISABLE_DEBLOCKING_FILTER,
        ),
        (
            p.lists_modification_present_flag,
            V4L2_HEVC_PPS_FLAG_LISTS_MODIFICATION_PRESENT,
        ),
        (
            p.slice_segment_header_extension_present_flag,
            V4L2_HEVC_PPS_FLAG_SLICE_SEGMENT_HEADER_EXTENSION_PRESENT,
        ),
        (
            p.deblocking_filter_control_present_flag,
            V4L2_HEVC_PPS_FLAG_DEBLOCKING_FILTER_CONTROL_PRESENT,
        ),
        (
            p.tiles_enabled_flag && p.uniform_spacing_flag,
            V4L2_HEVC_PPS_FLAG_UNIFORM_SPACING,
        ),
    ];
    c.flags = flags.iter().filter(|f| f.0).fold(0, |a, f| a | f.1);
    c
}

/// Raster position of each coefficient in up-right diagonal scan order of
/// an `n` x `n` block (6.5.3).
fn diagonal_scan(n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n * n);
    for d in 0..2 * n - 1 {
        for y in (0..n).rev() {
            if d >= y && d - y < n {
                out.push(y * n + (d - y));
            }
        }
    }
    out
}

/// `V4L2_CID_STATELESS_HEVC_SCALING_MATRIX` (raster order) for the lists in
/// effect: the PPS's, else the SPS's, else the default lists (which the
/// parser leaves in the PPS when it codes none). Lists are in coding
/// (up-right diagonal) order in the parser.
pub fn scaling_matrix_control(sps: &Sps, pps: &Pps) -> V4l2CtrlHevcScalingMatrix {
    let sl = if !pps.scaling_list_data_present_flag && sps.scaling_list_data_present_flag {
        &sps.scaling_list
    } else {
        &pps.scaling_list
    };
    let mut m = <V4l2CtrlHevcScalingMatrix as zerocopy::FromZeros>::new_zeroed();
    let (s4, s8) = (diagonal_scan(4), diagonal_scan(8));
    for i in 0..6 {
        for (k, &pos) in s4.iter().enumerate() {
            m.scaling_list_4x4[i][pos] = sl.scaling_list_4x4[i][k];
        }
        for (k, &pos) in s8.iter().enumerate() {
            m.scaling_list_8x8[i][pos] = sl.scaling_list_8x8[i][k];
            m.scaling_list_16x16[i][pos] = sl.scaling_list_16x16[i][k];
        }
        m.scaling_list_dc_coef_16x16[i] = (sl.scaling_list_dc_coef_minus8_16x16[i] + 8) as u8;
    }
    for i in 0..2 {
        for (k, &pos) in s8.iter().enumerate() {
            m.scaling_list_32x32[i][pos] = sl.scaling_list_32x32[i * 3][k];
        }
        m.scaling_list_dc_coef_32x32[i] = (sl.scaling_list_dc_coef_minus8_32x32[i * 3] + 8) as u8;
    }
    m
}

/// Visible rectangle (conformance window): left, top, width, height.
fn visible_rect(s: &Sps) -> (u32, u32, u32, u32) {
    let (w, h) = (
        u32::from(s.pic_width_in_luma_samples),
        u32::from(s.pic_height_in_luma_samples),
    );
    if !s.conformance_window_flag {
        return (0, 0, w, h);
    }
    let (ux, uy) = match s.chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let l = ux * s.conf_win_left_offset;
    let r = ux * s.conf_win_right_offset;
    let t = uy * s.conf_win_top_offset;
    let b = uy * s.conf_win_bottom_offset;
    (l, t, w.saturating_sub(l + r), h.saturating_sub(t + b))
}

/// The prediction weight table of a slice, with derived chroma offsets.
fn pred_weights(h: &SliceHeader, chroma: bool) -> V4l2HevcPredWeightTable {
    let t = &h.pred_weight_table;
    let mut w = V4l2HevcPredWeightTable::new_zeroed_value();
    w.luma_log2_weight_denom = t.luma_log2_weight_denom;
    w.delta_chroma_log2_weight_denom = if chroma {
        t.delta_chroma_log2_weight_denom
    } else {
        0
    };
    let cdenom = i32::from(t.luma_log2_weight_denom) + i32::from(w.delta_chroma_log2_weight_denom);
    // ChromaOffset (7-56) with WpOffsetHalfRangeC = 128.
    let offset = |dw: i8, doff: i16| -> i8 {
        let weight = (1 << cdenom) + i32::from(dw);
        (128 + i32::from(doff) - ((128 * weight) >> cdenom)).clamp(-128, 127) as i8
    };
    for i in 0..15 {
        if t.luma_weight_l0_flag[i] {
            w.delta_luma_weight_l0[i] = t.delta_luma_weight_l0[i];
            w.luma_offset_l0[i] = t.luma_offset_l0[i];
        }
        if chroma && t.chroma_weight_l0_flag[i] {
            for j in 0..2 {
                w.delta_chroma_weight_l0[i][j] = t.delta_chroma_weight_l0[i][j];
                w.chroma_offset_l0[i][j] = offset(
                    t.delta_chroma_weight_l0[i][j],
                    t.delta_chroma_offset_l0[i][j],
                );
            }
        }
        if t.luma_weight_l1_flag[i] {
            w.delta_luma_weight_l1[i] = t.delta_luma_weight_l1[i];
            w.luma_offset_l1[i] = t.luma_offset_l1[i];
        }
        if chroma && t.chroma_weight_l1_flag[i] {
            for j in 0..2 {
                w.delta_chroma_weight_l1[i][j] = t.delta_chroma_weight_l1[i][j];
                w.chroma_offset_l1[i][j] = offset(
                    t.delta_chroma_weight_l1[i][j],
                    t.delta_chroma_offset_l1[i][j],
                );
            }
        }
    }
    w
}

trait NewZeroed {
    fn new_zeroed_value() -> Self;
}

impl NewZeroed for V4l2HevcPredWeightTable {
    fn new_zeroed_value() -> Self {
        <Self as zerocopy::FromZeros>::new_zeroed()
    }
}

fn bs(e: impl Into<String>) -> ClientError {
    ClientError::Bitstream(e.into())
}

impl HevcParser {
    /// Parser over a whole Annex B stream.
    pub fn new(data: Vec<u8>, packing: Packing) -> Self {
        Self {
            data,
            pos: 0,
            parser: Parser::default(),
            packing,
            jobs: VecDeque::new(),
            current: None,
            dpb: Vec::new(),
            prev_tid0_poc: 0,
            restart: true,
            skip_rasl: false,
            last_independent: None,
            epoch: 0,
            pictures: 0,
            seen_irap: false,
            own_reader: false,
        }
    }

    /// Reads every slice segment header with this module's own reader
    /// instead of cros-codecs' (which is otherwise used except for headers
    /// with more than 32 entry points); lets tests check that reader on
    /// whole streams.
    pub fn with_own_slice_reader(mut self) -> Self {
        self.own_reader = true;
        self
    }

    /// Reads an Annex B file.
    pub fn from_file(path: &std::path::Path, packing: Packing) -> Result<Self, ClientError> {
        Ok(Self::new(std::fs::read(path)?, packing))
    }

    fn fill(&mut self) -> Result<(), ClientError> {
        while self.jobs.is_empty() {
            let Some((start, end)) = next_nal(&self.data, &mut self.pos) else {
                if let Some(p) = self.current.take() {
                    self.finish_picture(p)?;
                }
                return Ok(());
            };
            if end < start + 2 {
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
        let parsed = Nalu::next(&mut Cursor::new(&nal[..])).map_err(bs)?;
        let raw_type = (nal[3] >> 1) & 0x3f;
        if parsed.header.nuh_layer_id != 0 {
            return Ok(()); // only the base layer
        }
        if raw_type <= 21 && !(10..16).contains(&raw_type) {
            let temporal_id_plus1 = parsed.header.nuh_temporal_id_plus1;
            // cros-codecs indexes a fixed 32-entry array with the coded
            // entry point count: a slice with more entry points panics
            // there, which becomes an error here.
            // (The slice is then read by this module's own reader.)
            // Use this module's reader directly when the picture may have
            // more entry points than cros-codecs' header holds.
            let many_entry_points = peek_pps_id(&nal[3..])
                .and_then(|id| self.parser.get_pps(id))
                .is_some_and(|pps| {
                    let rows = pps.sps.pic_height_in_ctbs_y;
                    let tiles = if pps.tiles_enabled_flag {
                        (u32::from(pps.num_tile_columns_minus1) + 1)
                            * (u32::from(pps.num_tile_rows_minus1) + 1)
                    } else {
                        1
                    };
                    let bound = if pps.entropy_coding_sync_enabled_flag {
                        rows * (u32::from(pps.num_tile_columns_minus1) + 1)
                    } else {
                        tiles
                    };
                    bound > 32
                });
            let parser = &mut self.parser;
            let parsed_hdr = if self.own_reader || many_entry_points {
                Err(Box::new(()) as Box<dyn std::any::Any + Send>)
            } else {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    parser.parse_slice_header(parsed).map(|s| s.header)
                }))
            };
            let (hdr, tail) = match parsed_hdr {
                Ok(h) => {
                    let mut h = h.map_err(bs)?;
                    if h.dependent_slice_segment_flag {
                        let mut prev = self
                            .last_independent
                            .clone()
                            .ok_or_else(|| bs("dependent slice segment first"))?;
                        prev.first_slice_segment_in_pic_flag = h.first_slice_segment_in_pic_flag;
                        prev.no_output_of_prior_pics_flag = h.no_output_of_prior_pics_flag;
                        prev.dependent_slice_segment_flag = true;
                        prev.segment_address = h.segment_address;
                        prev.num_entry_point_offsets = h.num_entry_point_offsets;
                        prev.offset_len_minus1 = h.offset_len_minus1;
                        prev.entry_point_offset_minus1 = h.entry_point_offset_minus1;
                        prev.header_bit_size = h.header_bit_size;
                        h = prev;
                    } else {
                        self.last_independent = Some(h.clone());
                    }
                    (h, None)
                }
                Err(_) => {
                    let (h, eps, bytes) = fallback_slice_header(
                        &nal[3..],
                        &self.parser,
                        self.last_independent.as_ref(),
                    )?;
                    if !h.dependent_slice_segment_flag {
                        self.last_independent = Some(h.clone());
                    }
                    (h, Some((eps, bytes)))
                }
            };
            if hdr.first_slice_segment_in_pic_flag {
                if let Some(p) = self.current.take() {
                    self.finish_picture(p)?;
                }
                let pps = self
                    .parser
                    .get_pps(hdr.pic_parameter_set_id)
                    .cloned()
                    .ok_or_else(|| bs("slice refers to an unknown PPS"))?;
                self.current = Some(PendingPicture {
                    pps,
                    slices: Vec::new(),
                });
            }
            let Some(c) = self.current.as_mut() else {
                return Err(bs("slice segment without a first segment"));
            };
            c.slices.push(SliceUnit {
                nal: nal[3..].to_vec(),
                hdr,
                tail,
                nal_type: raw_type,
                temporal_id_plus1,
            });
            return Ok(());
        }
        match parsed.header.type_ {
            NaluType::VpsNut
            | NaluType::SpsNut
            | NaluType::PpsNut
            | NaluType::AudNut
            | NaluType::EosNut
            | NaluType::EobNut => {
                if let Some(p) = self.current.take() {
                    self.finish_picture(p)?;
                }
            }
            _ => {}
        }
        match parsed.header.type_ {
            NaluType::VpsNut => {
                self.parser.parse_vps(&parsed).map_err(bs)?;
            }
            NaluType::SpsNut => {
                self.parser.parse_sps(&parsed).map_err(bs)?;
            }
            NaluType::PpsNut => {
                self.parser.parse_pps(&parsed).map_err(bs)?;
            }
            NaluType::EosNut | NaluType::EobNut => self.restart = true,
            _ => {}
        }
        Ok(())
    }

    fn finish_picture(&mut self, p: PendingPicture) -> Result<(), ClientError> {
        let first = &p.slices[0];
        let hdr0 = &first.hdr;
        let pps = &p.pps;
        let sps = pps.sps.clone();
        let nal_type = first.nal_type;
        let irap = (16..=23).contains(&nal_type);
        let idr = nal_type == 19 || nal_type == 20;
        let rasl = nal_type == 8 || nal_type == 9;
        let radl = nal_type == 6 || nal_type == 7;
        let slnr = nal_type <= 14 && nal_type.is_multiple_of(2);
        if sps.chroma_format_idc > 1 || sps.bit_depth_luma_minus8 > 2 {
            return Err(ClientError::Unsupported(
                "only 8/10-bit 4:2:0 or 4:0:0".into(),
            ));
        }
        if !self.seen_irap && !irap {
            return Ok(()); // leading pictures before the first IRAP
        }
        let no_rasl_output = irap && (idr || (16..=18).contains(&nal_type) || self.restart);
        if irap {
            self.seen_irap = true;
            self.skip_rasl = no_rasl_output;
            self.restart = false;
        }
        if rasl && self.skip_rasl {
            return Ok(());
        }

        // 8.3.1: picture order count.
        let lsb_bits = u32::from(sps.log2_max_pic_order_cnt_lsb_minus4) + 4;
        let max_lsb = 1i32 << lsb_bits;
        let lsb = i32::from(hdr0.pic_order_cnt_lsb);
        let msb = if irap && no_rasl_output {
            0
        } else {
            let prev_lsb = self.prev_tid0_poc.rem_euclid(max_lsb);
            let prev_msb = self.prev_tid0_poc - prev_lsb;
            if lsb < prev_lsb && prev_lsb - lsb >= max_lsb / 2 {
                prev_msb + max_lsb
            } else if lsb > prev_lsb && lsb - prev_lsb > max_lsb / 2 {
                prev_msb - max_lsb
            } else {
                prev_msb
            }
        };
        let poc = msb + lsb;
        if first.temporal_id_plus1 == 1 && !rasl && !radl && !slnr {
            self.prev_tid0_poc = poc;
        }
        if irap && no_rasl_output {
            // A new POC epoch: earlier pictures are displayed first.
            self.epoch += 1;
        }

        // 8.3.2: reference picture set.
        if irap && no_rasl_output {
            self.dpb.clear();
        }
        let mut before = Vec::new();
        let mut after = Vec::new();
        let mut foll = Vec::new();
        let mut lt_curr = Vec::new();
        let mut lt_foll = Vec::new();
        if !idr {
            let st = if hdr0.short_term_ref_pic_set_sps_flag {
                sps.short_term_ref_pic_set
                    .get(usize::from(hdr0.short_term_ref_pic_set_idx))
                    .ok_or_else(|| bs("bad short_term_ref_pic_set_idx"))?
            } else {
                &hdr0.short_term_ref_pic_set
            };
            for i in 0..usize::from(st.num_negative_pics) {
                let v = poc + st.delta_poc_s0[i];
                if st.used_by_curr_pic_s0[i] {
                    before.push(v);
                } else {
                    foll.push(v);
                }
            }
            for i in 0..usize::from(st.num_positive_pics) {
                let v = poc + st.delta_poc_s1[i];
                if st.used_by_curr_pic_s1[i] {
                    after.push(v);
                } else {
                    foll.push(v);
                }
            }
            let n_lt = usize::from(hdr0.num_long_term_sps + hdr0.num_long_term_pics).min(16);
            for i in 0..n_lt {
                let mut v = hdr0.poc_lsb_lt[i] as i32;
                let full = hdr0.delta_poc_msb_present_flag[i];
                if full {
                    v += poc - hdr0.delta_poc_msb_cycle_lt[i] as i32 * max_lsb - lsb;
                }
                if hdr0.used_by_curr_pic_lt[i] {
                    lt_curr.push((v, full));
                } else {
                    lt_foll.push((v, full));
                }
            }
        }
        let lt_match = |r: &RefPic, (v, full): (i32, bool)| {
            if full {
                r.poc == v
            } else {
                r.poc.rem_euclid(max_lsb) == v
            }
        };
        // Long-term first (they may be short-term pictures now turning
        // long-term), then short-term among the rest.
        let mut new_dpb: Vec<RefPic> = Vec::new();
        let old = std::mem::take(&mut self.dpb);
        let mut lt_idx = Vec::new();
        for &e in lt_curr.iter().chain(&lt_foll) {
            let Some(r) = old.iter().find(|r| lt_match(r, e)) else {
                return Err(bs(format!("missing long-term reference {}", e.0)));
            };
            lt_idx.push(new_dpb.len());
            new_dpb.push(RefPic {
                long_term: true,
                ..*r
            });
        }
        let st_idx = |v: i32, new_dpb: &mut Vec<RefPic>| -> Result<usize, ClientError> {
            if let Some(i) = new_dpb.iter().position(|r| !r.long_term && r.poc == v) {
                return Ok(i);
            }
            let r = old
                .iter()
                .find(|r| !r.long_term && r.poc == v)
                .ok_or_else(|| bs(format!("missing short-term reference POC {v} (POC {poc})")))?;
            new_dpb.push(*r);
            Ok(new_dpb.len() - 1)
        };
        let before_idx: Vec<usize> = before
            .iter()
            .map(|&v| st_idx(v, &mut new_dpb))
            .collect::<Result<_, _>>()?;
        let after_idx: Vec<usize> = after
            .iter()
            .map(|&v| st_idx(v, &mut new_dpb))
            .collect::<Result<_, _>>()?;
        for &v in &foll {
            // Missing "foll" pictures are allowed (never used by this
            // picture).
            let _ = st_idx(v, &mut new_dpb);
        }
        if new_dpb.len() > V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize {
            return Err(bs("more than 16 reference pictures"));
        }
        let lt_curr_idx = &lt_idx[..lt_curr.len()];

        let ts = (self.pictures + 1) * TIMESTAMP_STEP;
        self.pictures += 1;

        // Decode parameters.
        let mut dp = <V4l2CtrlHevcDecodeParams as zerocopy::FromZeros>::new_zeroed();
        dp.pic_order_cnt_val = poc;
        dp.num_active_dpb_entries = new_dpb.len() as u8;
        for (d, r) in dp.dpb.iter_mut().zip(&new_dpb) {
            d.timestamp = r.ts;
            d.pic_order_cnt_val = r.poc;
            d.flags = if r.long_term {
                V4L2_HEVC_DPB_ENTRY_LONG_TERM_REFERENCE
            } else {
                0
            };
        }
        dp.num_poc_st_curr_before = before_idx.len() as u8;
        dp.num_poc_st_curr_after = after_idx.len() as u8;
        dp.num_poc_lt_curr = lt_curr_idx.len() as u8;
        for (d, &i) in dp.poc_st_curr_before.iter_mut().zip(&before_idx) {
            *d = i as u8;
        }
        for (d, &i) in dp.poc_st_curr_after.iter_mut().zip(&after_idx) {
            *d = i as u8;
        }
        for (d, &i) in dp.poc_lt_curr.iter_mut().zip(lt_curr_idx) {
            *d = i as u8;
        }
        if !hdr0.short_term_ref_pic_set_sps_flag {
            dp.short_term_ref_pic_set_size = hdr0.st_rps_bits as u16;
        }
        dp.flags = if irap {
            V4L2_HEVC_DECODE_PARAM_FLAG_IRAP_PIC
        } else {
            0
        } | if idr {
            V4L2_HEVC_DECODE_PARAM_FLAG_IDR_PIC
        } else {
            0
        } | if irap && hdr0.no_output_of_prior_pics_flag {
            V4L2_HEVC_DECODE_PARAM_FLAG_NO_OUTPUT_OF_PRIOR
        } else {
            0
        };

        // Slice parameters and reference lists (8.3.4).
        let temp0: Vec<usize> = before_idx
            .iter()
            .chain(&after_idx)
            .chain(lt_curr_idx)
            .copied()
            .collect();
        let temp1: Vec<usize> = after_idx
            .iter()
            .chain(&before_idx)
            .chain(lt_curr_idx)
            .copied()
            .collect();
        let chroma = sps.chroma_array_type != 0;
        let mut params = Vec::with_capacity(p.slices.len());
        let mut entry_points: Vec<Vec<u32>> = Vec::new();
        for s in &p.slices {
            let h = &s.hdr;
            let mut sp = V4l2CtrlHevcSliceParams::default_value();
            sp.bit_size = (s.nal.len() * 8) as u32;
            let rbsp_bytes = match &s.tail {
                Some((_, bytes)) => *bytes,
                None => (h.header_bit_size / 8) as usize,
            };
            sp.data_byte_offset = escaped_offset(&s.nal, rbsp_bytes)
                .filter(|&o| o < s.nal.len())
                .ok_or_else(|| bs("slice header overruns its NAL unit"))?
                as u32;
            match &s.tail {
                Some((eps, _)) => {
                    sp.num_entry_point_offsets = eps.len() as u32;
                    entry_points.push(eps.clone());
                }
                None => {
                    sp.num_entry_point_offsets = h.num_entry_point_offsets;
                    let n_ep = (h.num_entry_point_offsets as usize).min(32);
                    entry_points.push(h.entry_point_offset_minus1[..n_ep].to_vec());
                }
            }
            sp.nal_unit_type = s.nal_type;
            sp.nuh_temporal_id_plus1 = s.temporal_id_plus1;
            sp.slice_type = match h.type_ {
                SliceType::B => V4L2_HEVC_SLICE_TYPE_B,
                SliceType::P => V4L2_HEVC_SLICE_TYPE_P,
                SliceType::I => V4L2_HEVC_SLICE_TYPE_I,
            };
            sp.colour_plane_id = h.colour_plane_id;
            sp.slice_pic_order_cnt = poc;
            sp.collocated_ref_idx = h.collocated_ref_idx;
            sp.five_minus_max_num_merge_cand = h.five_minus_max_num_merge_cand;
            sp.slice_qp_delta = h.qp_delta;
            sp.slice_cb_qp_offset = h.cb_qp_offset;
            sp.slice_cr_qp_offset = h.cr_qp_offset;
            sp.slice_act_y_qp_offset = h.slice_act_y_qp_offset;
            sp.slice_act_cb_qp_offset = h.slice_act_cb_qp_offset;
            sp.slice_act_cr_qp_offset = h.slice_act_cr_qp_offset;
            sp.slice_beta_offset_div2 = h.beta_offset_div2;
            sp.slice_tc_offset_div2 = h.tc_offset_div2;
            sp.slice_segment_addr = h.segment_address;
            let total = temp0.len();
            if !h.type_.is_i() {
                if total == 0 {
                    return Err(bs("inter slice without references"));
                }
                sp.num_ref_idx_l0_active_minus1 = h.num_ref_idx_l0_active_minus1;
                let m = &h.ref_pic_list_modification;
                for i in 0..=usize::from(h.num_ref_idx_l0_active_minus1).min(15) {
                    let k = if m.ref_pic_list_modification_flag_l0 {
                        *m.list_entry_l0.get(i).ok_or_else(|| bs("list_entry_l0"))? as usize
                    } else {
                        i
                    };
                    sp.ref_idx_l0[i] = temp0[k % total] as u8;
                }
                if h.type_.is_b() {
                    sp.num_ref_idx_l1_active_minus1 = h.num_ref_idx_l1_active_minus1;
                    for i in 0..=usize::from(h.num_ref_idx_l1_active_minus1).min(15) {
                        let k = if m.ref_pic_list_modification_flag_l1 {
                            *m.list_entry_l1.get(i).ok_or_else(|| bs("list_entry_l1"))? as usize
                        } else {
                            i
                        };
                        sp.ref_idx_l1[i] = temp1[k % total] as u8;
                    }
                }
                if (pps.weighted_pred_flag && h.type_.is_p())
                    || (pps.weighted_bipred_flag && h.type_.is_b())
                {
                    sp.pred_weight_table = pred_weights(h, chroma);
                }
            }
            let flags = [
                (h.sao_luma_flag, V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_SAO_LUMA),
                (
                    h.sao_chroma_flag,
                    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_SAO_CHROMA,
                ),
                (
                    h.temporal_mvp_enabled_flag,
                    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_TEMPORAL_MVP_ENABLED,
                ),
                (h.mvd_l1_zero_flag, V4L2_HEVC_SLICE_PARAMS_FLAG_MVD_L1_ZERO),
                (h.cabac_init_flag, V4L2_HEVC_SLICE_PARAMS_FLAG_CABAC_INIT),
                (
                    h.collocated_from_l0_flag,
                    V4L2_HEVC_SLICE_PARAMS_FLAG_COLLOCATED_FROM_L0,
                ),
                (
                    h.use_integer_mv_flag,
                    V4L2_HEVC_SLICE_PARAMS_FLAG_USE_INTEGER_MV,
                ),
                (
                    h.deblocking_filter_disabled_flag,
                    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_DEBLOCKING_FILTER_DISABLED,
                ),
                (
                    h.loop_filter_across_slices_enabled_flag,
                    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_LOOP_FILTER_ACROSS_SLICES_ENABLED,
                ),
                (
                    h.dependent_slice_segment_flag,
                    V4L2_HEVC_SLICE_PARAMS_FLAG_DEPENDENT_SLICE_SEGMENT,
                ),
            ];
            sp.flags = flags.iter().filter(|f| f.0).fold(0, |a, f| a | f.1);
            // Dependent segments: their own address and segment flags,
            // the rest inherited from the independent segment.
            params.push(sp);
        }
        for (sp, s) in params.iter_mut().zip(&p.slices) {
            if !s.hdr.dependent_slice_segment_flag {
                continue;
            }
            sp.flags |= V4L2_HEVC_SLICE_PARAMS_FLAG_DEPENDENT_SLICE_SEGMENT;
        }

        let mut base = ControlValues::new();
        base.set(&sps_control(&sps));
        base.set(&pps_control(pps));
        base.set(&dp);
        if sps.scaling_list_enabled_flag {
            base.set(&scaling_matrix_control(&sps, pps));
        }
        let (visible, coded) = (
            visible_rect(&sps),
            (
                u32::from(sps.pic_width_in_luma_samples),
                u32::from(sps.pic_height_in_luma_samples),
            ),
        );
        let info = PictureInfo {
            key: DisplayKey {
                epoch: self.epoch,
                order: i64::from(poc),
            },
            max_reorder: usize::from(
                sps.max_num_reorder_pics[usize::from(sps.max_sub_layers_minus1).min(6)],
            ),
            visible,
            coded,
            bit_depth: sps.bit_depth_luma_minus8 + 8,
        };
        let mode = |frame: bool, annex_b: bool, v: &mut ControlValues| {
            v.set_raw(
                V4L2_CID_STATELESS_HEVC_DECODE_MODE,
                (if frame {
                    V4L2_STATELESS_HEVC_DECODE_MODE_FRAME_BASED
                } else {
                    V4L2_STATELESS_HEVC_DECODE_MODE_SLICE_BASED
                })
                .to_le_bytes()
                .to_vec(),
            );
            v.set_raw(
                V4L2_CID_STATELESS_HEVC_START_CODE,
                (if annex_b {
                    V4L2_STATELESS_HEVC_START_CODE_ANNEX_B
                } else {
                    V4L2_STATELESS_HEVC_START_CODE_NONE
                })
                .to_le_bytes()
                .to_vec(),
            );
        };
        let epo_bytes = |eps: &[Vec<u32>]| -> Vec<u8> {
            eps.iter().flatten().flat_map(|v| v.to_le_bytes()).collect()
        };
        match self.packing {
            Packing::PicturePerJob => {
                let mut c = base;
                mode(true, true, &mut c);
                c.set_raw(
                    V4L2_CID_STATELESS_HEVC_SLICE_PARAMS,
                    params.as_bytes().to_vec(),
                );
                let epo = epo_bytes(&entry_points);
                if !epo.is_empty() {
                    c.set_raw(V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS, epo);
                }
                let mut bitstream = Vec::new();
                for s in &p.slices {
                    bitstream.extend_from_slice(&[0, 0, 0, 1]);
                    bitstream.extend_from_slice(&s.nal);
                }
                self.jobs.push_back(Job {
                    codec: Codec::Hevc,
                    controls: c,
                    bitstream,
                    timestamp: ts,
                    flags: JobFlags::default(),
                    picture: info,
                });
            }
            Packing::SlicePerJob { annex_b } => {
                let n = p.slices.len();
                for (i, s) in p.slices.iter().enumerate() {
                    let mut c = base.clone();
                    mode(false, annex_b, &mut c);
                    c.set_raw(
                        V4L2_CID_STATELESS_HEVC_SLICE_PARAMS,
                        params[i].as_bytes().to_vec(),
                    );
                    let epo = epo_bytes(&entry_points[i..=i]);
                    if !epo.is_empty() {
                        c.set_raw(V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS, epo);
                    }
                    let mut bitstream = Vec::new();
                    if annex_b {
                        bitstream.extend_from_slice(&[0, 0, 0, 1]);
                    }
                    bitstream.extend_from_slice(&s.nal);
                    self.jobs.push_back(Job {
                        codec: Codec::Hevc,
                        controls: c,
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
        // The current picture becomes a short-term reference.
        new_dpb.push(RefPic {
            ts,
            poc,
            long_term: false,
        });
        self.dpb = new_dpb;
        Ok(())
    }
}

impl StreamParser for HevcParser {
    fn next_job(&mut self) -> Result<Option<Job>, ClientError> {
        self.fill()?;
        Ok(self.jobs.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_offsets_skip_emulation_prevention() {
        // RBSP 00 00 01 02 is escaped as 00 00 03 01 02.
        let nal = [0x26, 0x01, 0, 0, 3, 1, 2];
        assert_eq!(escaped_offset(&nal, 2), Some(2));
        assert_eq!(escaped_offset(&nal, 4), Some(4));
        assert_eq!(escaped_offset(&nal, 5), Some(6));
        assert_eq!(escaped_offset(&nal, 6), Some(7));
        assert_eq!(escaped_offset(&nal, 7), None);
    }
}
