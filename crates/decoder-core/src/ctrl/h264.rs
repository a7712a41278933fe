//! H.264 stateless controls (`V4L2_CID_STATELESS_H264_*`, Linux 6.12 uAPI).
//!
//! The payload structs mirror `<linux/v4l2-controls.h>` byte for byte (checked
//! by `tests/ctrl_layout_h264.rs` against the real header). Validation does
//! what the kernel's `std_validate_compound` does for these types (same
//! refusals, same normalisation of conditionally valid fields and reserved
//! bytes) and adds the bounds a consumer needs before it uses a client value
//! as an index or a size.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::{
    ctrl_type, Codec, CodecDesc, CompoundControl, ControlValues, CtrlDesc, CtrlError,
    V4L2_CID_CODEC_STATELESS_BASE,
};

// ---------------------------------------------------------------------------
// Control ids
// ---------------------------------------------------------------------------

/// `V4L2_CID_STATELESS_H264_DECODE_MODE` (menu, [`V4l2StatelessH264DecodeMode`]).
pub const V4L2_CID_STATELESS_H264_DECODE_MODE: u32 = V4L2_CID_CODEC_STATELESS_BASE;
/// `V4L2_CID_STATELESS_H264_START_CODE` (menu, [`V4l2StatelessH264StartCode`]).
pub const V4L2_CID_STATELESS_H264_START_CODE: u32 = V4L2_CID_CODEC_STATELESS_BASE + 1;
/// `V4L2_CID_STATELESS_H264_SPS` ([`V4l2CtrlH264Sps`]).
pub const V4L2_CID_STATELESS_H264_SPS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 2;
/// `V4L2_CID_STATELESS_H264_PPS` ([`V4l2CtrlH264Pps`]).
pub const V4L2_CID_STATELESS_H264_PPS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 3;
/// `V4L2_CID_STATELESS_H264_SCALING_MATRIX` ([`V4l2CtrlH264ScalingMatrix`]).
pub const V4L2_CID_STATELESS_H264_SCALING_MATRIX: u32 = V4L2_CID_CODEC_STATELESS_BASE + 4;
/// `V4L2_CID_STATELESS_H264_PRED_WEIGHTS` ([`V4l2CtrlH264PredWeights`]).
pub const V4L2_CID_STATELESS_H264_PRED_WEIGHTS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 5;
/// `V4L2_CID_STATELESS_H264_SLICE_PARAMS` ([`V4l2CtrlH264SliceParams`]).
pub const V4L2_CID_STATELESS_H264_SLICE_PARAMS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 6;
/// `V4L2_CID_STATELESS_H264_DECODE_PARAMS` ([`V4l2CtrlH264DecodeParams`]).
pub const V4L2_CID_STATELESS_H264_DECODE_PARAMS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 7;

// ---------------------------------------------------------------------------
// Menus
// ---------------------------------------------------------------------------

/// `enum v4l2_stateless_h264_decode_mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum V4l2StatelessH264DecodeMode {
    /// `V4L2_STATELESS_H264_DECODE_MODE_SLICE_BASED`: one slice per OUTPUT
    /// buffer, `SLICE_PARAMS` describes it.
    SliceBased = 0,
    /// `V4L2_STATELESS_H264_DECODE_MODE_FRAME_BASED`: every slice of the
    /// picture in one OUTPUT buffer, `SLICE_PARAMS` unused.
    FrameBased = 1,
}

impl V4l2StatelessH264DecodeMode {
    /// The mode for a control value.
    pub fn from_value(v: i32) -> Option<Self> {
        match v {
            0 => Some(Self::SliceBased),
            1 => Some(Self::FrameBased),
            _ => None,
        }
    }
}

/// `enum v4l2_stateless_h264_start_code`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum V4l2StatelessH264StartCode {
    /// `V4L2_STATELESS_H264_START_CODE_NONE`: slices without start code.
    None = 0,
    /// `V4L2_STATELESS_H264_START_CODE_ANNEX_B`: each slice preceded by a
    /// 3- or 4-byte Annex B start code.
    AnnexB = 1,
}

impl V4l2StatelessH264StartCode {
    /// The start-code mode for a control value.
    pub fn from_value(v: i32) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::AnnexB),
            _ => None,
        }
    }
}

/// Menu names of `V4L2_CID_STATELESS_H264_DECODE_MODE` (`v4l2_ctrl_get_menu`).
pub const DECODE_MODE_MENU: &[&str] = &["Slice-Based", "Frame-Based"];
/// Menu names of `V4L2_CID_STATELESS_H264_START_CODE` (`v4l2_ctrl_get_menu`).
pub const START_CODE_MENU: &[&str] = &["No Start Code", "Annex B Start Code"];

// ---------------------------------------------------------------------------
// Flags and constants
// ---------------------------------------------------------------------------

/// `V4L2_H264_SPS_CONSTRAINT_SET0_FLAG`
pub const V4L2_H264_SPS_CONSTRAINT_SET0_FLAG: u8 = 0x01;
/// `V4L2_H264_SPS_CONSTRAINT_SET1_FLAG`
pub const V4L2_H264_SPS_CONSTRAINT_SET1_FLAG: u8 = 0x02;
/// `V4L2_H264_SPS_CONSTRAINT_SET2_FLAG`
pub const V4L2_H264_SPS_CONSTRAINT_SET2_FLAG: u8 = 0x04;
/// `V4L2_H264_SPS_CONSTRAINT_SET3_FLAG`
pub const V4L2_H264_SPS_CONSTRAINT_SET3_FLAG: u8 = 0x08;
/// `V4L2_H264_SPS_CONSTRAINT_SET4_FLAG`
pub const V4L2_H264_SPS_CONSTRAINT_SET4_FLAG: u8 = 0x10;
/// `V4L2_H264_SPS_CONSTRAINT_SET5_FLAG`
pub const V4L2_H264_SPS_CONSTRAINT_SET5_FLAG: u8 = 0x20;

/// `V4L2_H264_SPS_FLAG_SEPARATE_COLOUR_PLANE`
pub const V4L2_H264_SPS_FLAG_SEPARATE_COLOUR_PLANE: u32 = 0x01;
/// `V4L2_H264_SPS_FLAG_QPPRIME_Y_ZERO_TRANSFORM_BYPASS`
pub const V4L2_H264_SPS_FLAG_QPPRIME_Y_ZERO_TRANSFORM_BYPASS: u32 = 0x02;
/// `V4L2_H264_SPS_FLAG_DELTA_PIC_ORDER_ALWAYS_ZERO`
pub const V4L2_H264_SPS_FLAG_DELTA_PIC_ORDER_ALWAYS_ZERO: u32 = 0x04;
/// `V4L2_H264_SPS_FLAG_GAPS_IN_FRAME_NUM_VALUE_ALLOWED`
pub const V4L2_H264_SPS_FLAG_GAPS_IN_FRAME_NUM_VALUE_ALLOWED: u32 = 0x08;
/// `V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY`
pub const V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY: u32 = 0x10;
/// `V4L2_H264_SPS_FLAG_MB_ADAPTIVE_FRAME_FIELD`
pub const V4L2_H264_SPS_FLAG_MB_ADAPTIVE_FRAME_FIELD: u32 = 0x20;
/// `V4L2_H264_SPS_FLAG_DIRECT_8X8_INFERENCE`
pub const V4L2_H264_SPS_FLAG_DIRECT_8X8_INFERENCE: u32 = 0x40;

/// `V4L2_H264_PPS_FLAG_ENTROPY_CODING_MODE`
pub const V4L2_H264_PPS_FLAG_ENTROPY_CODING_MODE: u16 = 0x0001;
/// `V4L2_H264_PPS_FLAG_BOTTOM_FIELD_PIC_ORDER_IN_FRAME_PRESENT`
pub const V4L2_H264_PPS_FLAG_BOTTOM_FIELD_PIC_ORDER_IN_FRAME_PRESENT: u16 = 0x0002;
/// `V4L2_H264_PPS_FLAG_WEIGHTED_PRED`
pub const V4L2_H264_PPS_FLAG_WEIGHTED_PRED: u16 = 0x0004;
/// `V4L2_H264_PPS_FLAG_DEBLOCKING_FILTER_CONTROL_PRESENT`
pub const V4L2_H264_PPS_FLAG_DEBLOCKING_FILTER_CONTROL_PRESENT: u16 = 0x0008;
/// `V4L2_H264_PPS_FLAG_CONSTRAINED_INTRA_PRED`
pub const V4L2_H264_PPS_FLAG_CONSTRAINED_INTRA_PRED: u16 = 0x0010;
/// `V4L2_H264_PPS_FLAG_REDUNDANT_PIC_CNT_PRESENT`
pub const V4L2_H264_PPS_FLAG_REDUNDANT_PIC_CNT_PRESENT: u16 = 0x0020;
/// `V4L2_H264_PPS_FLAG_TRANSFORM_8X8_MODE`
pub const V4L2_H264_PPS_FLAG_TRANSFORM_8X8_MODE: u16 = 0x0040;
/// `V4L2_H264_PPS_FLAG_SCALING_MATRIX_PRESENT`: a non-flat scaling matrix
/// applies; its values are in `V4L2_CID_STATELESS_H264_SCALING_MATRIX`.
pub const V4L2_H264_PPS_FLAG_SCALING_MATRIX_PRESENT: u16 = 0x0080;

/// `V4L2_H264_SLICE_TYPE_P`
pub const V4L2_H264_SLICE_TYPE_P: u8 = 0;
/// `V4L2_H264_SLICE_TYPE_B`
pub const V4L2_H264_SLICE_TYPE_B: u8 = 1;
/// `V4L2_H264_SLICE_TYPE_I`
pub const V4L2_H264_SLICE_TYPE_I: u8 = 2;
/// `V4L2_H264_SLICE_TYPE_SP`
pub const V4L2_H264_SLICE_TYPE_SP: u8 = 3;
/// `V4L2_H264_SLICE_TYPE_SI`
pub const V4L2_H264_SLICE_TYPE_SI: u8 = 4;

/// `V4L2_H264_SLICE_FLAG_DIRECT_SPATIAL_MV_PRED`
pub const V4L2_H264_SLICE_FLAG_DIRECT_SPATIAL_MV_PRED: u32 = 0x01;
/// `V4L2_H264_SLICE_FLAG_SP_FOR_SWITCH`
pub const V4L2_H264_SLICE_FLAG_SP_FOR_SWITCH: u32 = 0x02;

/// `V4L2_H264_TOP_FIELD_REF`
pub const V4L2_H264_TOP_FIELD_REF: u8 = 0x1;
/// `V4L2_H264_BOTTOM_FIELD_REF`
pub const V4L2_H264_BOTTOM_FIELD_REF: u8 = 0x2;
/// `V4L2_H264_FRAME_REF`
pub const V4L2_H264_FRAME_REF: u8 = 0x3;

/// `V4L2_H264_NUM_DPB_ENTRIES`: maximum DPB size (level limits, A.3.1).
pub const V4L2_H264_NUM_DPB_ENTRIES: usize = 16;
/// `V4L2_H264_REF_LIST_LEN`: length of each reference picture list.
pub const V4L2_H264_REF_LIST_LEN: usize = 2 * V4L2_H264_NUM_DPB_ENTRIES;

/// `V4L2_H264_DPB_ENTRY_FLAG_VALID`
pub const V4L2_H264_DPB_ENTRY_FLAG_VALID: u32 = 0x01;
/// `V4L2_H264_DPB_ENTRY_FLAG_ACTIVE`
pub const V4L2_H264_DPB_ENTRY_FLAG_ACTIVE: u32 = 0x02;
/// `V4L2_H264_DPB_ENTRY_FLAG_LONG_TERM`
pub const V4L2_H264_DPB_ENTRY_FLAG_LONG_TERM: u32 = 0x04;
/// `V4L2_H264_DPB_ENTRY_FLAG_FIELD`
pub const V4L2_H264_DPB_ENTRY_FLAG_FIELD: u32 = 0x08;

/// `V4L2_H264_DECODE_PARAM_FLAG_IDR_PIC`
pub const V4L2_H264_DECODE_PARAM_FLAG_IDR_PIC: u32 = 0x01;
/// `V4L2_H264_DECODE_PARAM_FLAG_FIELD_PIC`
pub const V4L2_H264_DECODE_PARAM_FLAG_FIELD_PIC: u32 = 0x02;
/// `V4L2_H264_DECODE_PARAM_FLAG_BOTTOM_FIELD`
pub const V4L2_H264_DECODE_PARAM_FLAG_BOTTOM_FIELD: u32 = 0x04;
/// `V4L2_H264_DECODE_PARAM_FLAG_PFRAME`
pub const V4L2_H264_DECODE_PARAM_FLAG_PFRAME: u32 = 0x08;
/// `V4L2_H264_DECODE_PARAM_FLAG_BFRAME`
pub const V4L2_H264_DECODE_PARAM_FLAG_BFRAME: u32 = 0x10;

/// Largest frame size in macroblocks any level allows (`MaxFS` of level 6.2,
/// table A-1).
pub const MAX_FRAME_SIZE_MBS: u32 = 139_264;
/// Largest picture width or height in macroblocks any level allows
/// (`Sqrt(MaxFS * 8)` of level 6.2, A.3.1 f and g).
pub const MAX_DIMENSION_MBS: u32 = 1055;

// ---------------------------------------------------------------------------
// Payload structs
// ---------------------------------------------------------------------------

/// `struct v4l2_ctrl_h264_sps`: the sequence parameter set.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct V4l2CtrlH264Sps {
    pub profile_idc: u8,
    /// `V4L2_H264_SPS_CONSTRAINT_SET*_FLAG`
    pub constraint_set_flags: u8,
    pub level_idc: u8,
    pub seq_parameter_set_id: u8,
    pub chroma_format_idc: u8,
    pub bit_depth_luma_minus8: u8,
    pub bit_depth_chroma_minus8: u8,
    pub log2_max_frame_num_minus4: u8,
    pub pic_order_cnt_type: u8,
    pub log2_max_pic_order_cnt_lsb_minus4: u8,
    pub max_num_ref_frames: u8,
    pub num_ref_frames_in_pic_order_cnt_cycle: u8,
    pub offset_for_ref_frame: [i32; 255],
    pub offset_for_non_ref_pic: i32,
    pub offset_for_top_to_bottom_field: i32,
    pub pic_width_in_mbs_minus1: u16,
    pub pic_height_in_map_units_minus1: u16,
    /// `V4L2_H264_SPS_FLAG_*`
    pub flags: u32,
}

/// `struct v4l2_ctrl_h264_pps`: the picture parameter set.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct V4l2CtrlH264Pps {
    pub pic_parameter_set_id: u8,
    pub seq_parameter_set_id: u8,
    pub num_slice_groups_minus1: u8,
    pub num_ref_idx_l0_default_active_minus1: u8,
    pub num_ref_idx_l1_default_active_minus1: u8,
    pub weighted_bipred_idc: u8,
    pub pic_init_qp_minus26: i8,
    pub pic_init_qs_minus26: i8,
    pub chroma_qp_index_offset: i8,
    pub second_chroma_qp_index_offset: i8,
    /// `V4L2_H264_PPS_FLAG_*`
    pub flags: u16,
}

/// `struct v4l2_ctrl_h264_scaling_matrix`: scaling lists after the inverse
/// scan (raster order). 4x4 lists: Intra Y, Intra Cb, Intra Cr, Inter Y,
/// Inter Cb, Inter Cr. 8x8 lists: Intra Y, Inter Y, Intra Cb, Inter Cb,
/// Intra Cr, Inter Cr.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct V4l2CtrlH264ScalingMatrix {
    pub scaling_list_4x4: [[u8; 16]; 6],
    pub scaling_list_8x8: [[u8; 64]; 6],
}

/// `struct v4l2_h264_weight_factors`: one list's explicit weights.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct V4l2H264WeightFactors {
    pub luma_weight: [i16; 32],
    pub luma_offset: [i16; 32],
    pub chroma_weight: [[i16; 2]; 32],
    pub chroma_offset: [[i16; 2]; 32],
}

/// `struct v4l2_ctrl_h264_pred_weights`: the prediction weight table.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct V4l2CtrlH264PredWeights {
    pub luma_log2_weight_denom: u16,
    pub chroma_log2_weight_denom: u16,
    /// Index 0: list 0, index 1: list 1.
    pub weight_factors: [V4l2H264WeightFactors; 2],
}

/// `struct v4l2_h264_reference`: one entry of a reference picture list.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub struct V4l2H264Reference {
    /// `V4L2_H264_{TOP_FIELD,BOTTOM_FIELD,FRAME}_REF`
    pub fields: u8,
    /// Index into [`V4l2CtrlH264DecodeParams::dpb`].
    pub index: u8,
}

/// `struct v4l2_ctrl_h264_slice_params`: per-slice header values.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct V4l2CtrlH264SliceParams {
    /// Offset in bits from the start of the slice NAL to `slice_data()`.
    pub header_bit_size: u32,
    pub first_mb_in_slice: u32,
    /// `V4L2_H264_SLICE_TYPE_*`
    pub slice_type: u8,
    pub colour_plane_id: u8,
    pub redundant_pic_cnt: u8,
    pub cabac_init_idc: u8,
    pub slice_qp_delta: i8,
    pub slice_qs_delta: i8,
    pub disable_deblocking_filter_idc: u8,
    pub slice_alpha_c0_offset_div2: i8,
    pub slice_beta_offset_div2: i8,
    pub num_ref_idx_l0_active_minus1: u8,
    pub num_ref_idx_l1_active_minus1: u8,
    /// Zeroed by validation.
    pub reserved: u8,
    /// List 0 after the per-slice modifications.
    pub ref_pic_list0: [V4l2H264Reference; V4L2_H264_REF_LIST_LEN],
    /// List 1 after the per-slice modifications.
    pub ref_pic_list1: [V4l2H264Reference; V4L2_H264_REF_LIST_LEN],
    /// `V4L2_H264_SLICE_FLAG_*`
    pub flags: u32,
}

/// `struct v4l2_h264_dpb_entry`: one decoded picture buffer entry.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub struct V4l2H264DpbEntry {
    /// Timestamp (ns) of the CAPTURE buffer holding this reference.
    pub reference_ts: u64,
    /// `PicNum` of the reference list construction.
    pub pic_num: u32,
    /// `frame_num` of the picture.
    pub frame_num: u16,
    /// `V4L2_H264_{TOP_FIELD,BOTTOM_FIELD,FRAME}_REF`
    pub fields: u8,
    /// Zeroed by validation.
    pub reserved: [u8; 5],
    /// `TopFieldOrderCnt`
    pub top_field_order_cnt: i32,
    /// `BottomFieldOrderCnt`
    pub bottom_field_order_cnt: i32,
    /// `V4L2_H264_DPB_ENTRY_FLAG_*`
    pub flags: u32,
}

/// `struct v4l2_ctrl_h264_decode_params`: per-picture values and the DPB.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct V4l2CtrlH264DecodeParams {
    pub dpb: [V4l2H264DpbEntry; V4L2_H264_NUM_DPB_ENTRIES],
    pub nal_ref_idc: u16,
    pub frame_num: u16,
    pub top_field_order_cnt: i32,
    pub bottom_field_order_cnt: i32,
    pub idr_pic_id: u16,
    pub pic_order_cnt_lsb: u16,
    pub delta_pic_order_cnt_bottom: i32,
    pub delta_pic_order_cnt0: i32,
    pub delta_pic_order_cnt1: i32,
    /// Size in bits of `dec_ref_pic_marking()` in the slice header.
    pub dec_ref_pic_marking_bit_size: u32,
    /// Size in bits of the picture order count syntax in the slice header.
    pub pic_order_cnt_bit_size: u32,
    pub slice_group_change_cycle: u32,
    /// Zeroed by validation.
    pub reserved: u32,
    /// `V4L2_H264_DECODE_PARAM_FLAG_*`
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<V4l2CtrlH264Sps>() == 1048);
const _: () = assert!(core::mem::align_of::<V4l2CtrlH264Sps>() == 4);
const _: () = assert!(core::mem::size_of::<V4l2CtrlH264Pps>() == 12);
const _: () = assert!(core::mem::size_of::<V4l2CtrlH264ScalingMatrix>() == 480);
const _: () = assert!(core::mem::size_of::<V4l2H264WeightFactors>() == 384);
const _: () = assert!(core::mem::size_of::<V4l2CtrlH264PredWeights>() == 772);
const _: () = assert!(core::mem::size_of::<V4l2H264Reference>() == 2);
const _: () = assert!(core::mem::size_of::<V4l2CtrlH264SliceParams>() == 152);
const _: () = assert!(core::mem::size_of::<V4l2H264DpbEntry>() == 32);
const _: () = assert!(core::mem::align_of::<V4l2H264DpbEntry>() == 8);
const _: () = assert!(core::mem::size_of::<V4l2CtrlH264DecodeParams>() == 560);

impl V4l2CtrlH264Sps {
    /// `V4L2_H264_SPS_HAS_CHROMA_FORMAT`: whether this profile codes
    /// `chroma_format_idc` and the bit depths (else they are 4:2:0, 8 bits).
    pub fn has_chroma_format(&self) -> bool {
        matches!(
            self.profile_idc,
            100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
        )
    }

    /// Coded width in luma samples.
    pub fn width(&self) -> u32 {
        (u32::from(self.pic_width_in_mbs_minus1) + 1) * 16
    }

    /// Coded frame height in luma samples (both fields when not frame-only).
    pub fn height(&self) -> u32 {
        let map_units = u32::from(self.pic_height_in_map_units_minus1) + 1;
        let frame_mbs_only = self.flags & V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY != 0;
        map_units * if frame_mbs_only { 1 } else { 2 } * 16
    }
}

/// `index` value of a reference list entry that names no picture ("no
/// reference picture", when a slice's active list is longer than the DPB
/// content). GStreamer's `v4l2codecs` uses it; validation accepts it.
pub const V4L2_H264_REF_INDEX_NONE: u8 = 0xff;

impl V4l2H264Reference {
    /// The DPB entry this reference names, `None` for
    /// [`V4L2_H264_REF_INDEX_NONE`] (or any other index past the DPB).
    /// Consumers index the DPB through this, never with `index` directly.
    pub fn dpb_index(&self) -> Option<usize> {
        let i = usize::from(self.index);
        (i < V4L2_H264_NUM_DPB_ENTRIES).then_some(i)
    }

    /// Accepted by validation: a DPB index or the "no reference" marker.
    pub fn is_well_formed(&self) -> bool {
        self.dpb_index().is_some() || self.index == V4L2_H264_REF_INDEX_NONE
    }
}

impl V4l2CtrlH264DecodeParams {
    /// True for an IDR picture.
    pub fn is_idr(&self) -> bool {
        self.flags & V4L2_H264_DECODE_PARAM_FLAG_IDR_PIC != 0
    }
}

impl V4l2CtrlH264SliceParams {
    /// The active part of reference list `list` (0 or 1): the entries the
    /// slice uses. Empty for list 1 of a non-B slice and for I/SI slices.
    pub fn active_refs(&self, list: usize) -> &[V4l2H264Reference] {
        let (refs, n) = match (list, self.slice_type) {
            (_, V4L2_H264_SLICE_TYPE_I | V4L2_H264_SLICE_TYPE_SI) => (&self.ref_pic_list0, 0),
            (0, _) => (
                &self.ref_pic_list0,
                usize::from(self.num_ref_idx_l0_active_minus1) + 1,
            ),
            (_, V4L2_H264_SLICE_TYPE_B) => (
                &self.ref_pic_list1,
                usize::from(self.num_ref_idx_l1_active_minus1) + 1,
            ),
            _ => (&self.ref_pic_list1, 0),
        };
        &refs[..n.min(V4L2_H264_REF_LIST_LEN)]
    }
}

// ---------------------------------------------------------------------------
// Defaults and validation
// ---------------------------------------------------------------------------

impl CompoundControl for V4l2CtrlH264Sps {
    const ID: u32 = V4L2_CID_STATELESS_H264_SPS;
    const NAME: &'static str = "H264 Sequence Parameter Set";
    const V4L2_TYPE: u32 = ctrl_type::H264_SPS;

    fn default_value() -> Self {
        Self::new_zeroed()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        let id = Self::ID;
        // Kernel normalisation of conditionally present syntax elements. The
        // `else if` is the kernel's own: for type 0 it clears the type-1
        // fields, for types 1 and 2 it only clears the lsb size.
        if self.pic_order_cnt_type != 0 {
            self.log2_max_pic_order_cnt_lsb_minus4 = 0;
        } else if self.pic_order_cnt_type != 1 {
            self.num_ref_frames_in_pic_order_cnt_cycle = 0;
            self.offset_for_non_ref_pic = 0;
            self.offset_for_top_to_bottom_field = 0;
            self.offset_for_ref_frame = [0; 255];
        }
        if !self.has_chroma_format() {
            self.chroma_format_idc = 1;
            self.bit_depth_luma_minus8 = 0;
            self.bit_depth_chroma_minus8 = 0;
            self.flags &= !V4L2_H264_SPS_FLAG_QPPRIME_Y_ZERO_TRANSFORM_BYPASS;
        }
        if self.chroma_format_idc < 3 {
            self.flags &= !V4L2_H264_SPS_FLAG_SEPARATE_COLOUR_PLANE;
        }
        if self.flags & V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY != 0 {
            self.flags &= !V4L2_H264_SPS_FLAG_MB_ADAPTIVE_FRAME_FIELD;
        }
        // Kernel checks.
        if self.profile_idc < 122 && self.chroma_format_idc > 1 {
            return Err(CtrlError::range(id, "chroma_format_idc"));
        }
        if self.profile_idc < 244 && self.chroma_format_idc > 2 {
            return Err(CtrlError::range(id, "chroma_format_idc"));
        }
        // Indexes chroma subsampling tables (4:0:0 .. 4:4:4).
        if self.chroma_format_idc > 3 {
            return Err(CtrlError::range(id, "chroma_format_idc"));
        }
        // Bounds the sample size (8..14 bits) used for buffer sizing and shifts.
        if self.bit_depth_luma_minus8 > 6 {
            return Err(CtrlError::range(id, "bit_depth_luma_minus8"));
        }
        // Same for chroma.
        if self.bit_depth_chroma_minus8 > 6 {
            return Err(CtrlError::range(id, "bit_depth_chroma_minus8"));
        }
        // Bounds the frame_num bit width (<= 16) used in shifts and bit reads.
        if self.log2_max_frame_num_minus4 > 12 {
            return Err(CtrlError::range(id, "log2_max_frame_num_minus4"));
        }
        // Selects one of the three POC derivations; others have no meaning.
        if self.pic_order_cnt_type > 2 {
            return Err(CtrlError::range(id, "pic_order_cnt_type"));
        }
        // Bounds the POC lsb bit width (<= 16) used in shifts and bit reads.
        if self.log2_max_pic_order_cnt_lsb_minus4 > 12 {
            return Err(CtrlError::range(id, "log2_max_pic_order_cnt_lsb_minus4"));
        }
        // Kernel bound is 32; the DPB has 16 entries, so more reference
        // frames would overflow any DPB sized from this value.
        if usize::from(self.max_num_ref_frames) > V4L2_H264_NUM_DPB_ENTRIES {
            return Err(CtrlError::range(id, "max_num_ref_frames"));
        }
        // `num_ref_frames_in_pic_order_cnt_cycle` is a u8, so every cycle
        // index (< 255) is inside `offset_for_ref_frame`: nothing to check.
        //
        // Bounds the picture size used to size CAPTURE buffers and MB maps
        // (largest level, 6.2: width and height <= 1055 MBs, area <= MaxFS).
        let w_mbs = u32::from(self.pic_width_in_mbs_minus1) + 1;
        let h_mbs = self.height() / 16;
        if w_mbs > MAX_DIMENSION_MBS {
            return Err(CtrlError::range(id, "pic_width_in_mbs_minus1"));
        }
        // Same, for the frame height in MBs and the frame area.
        if h_mbs > MAX_DIMENSION_MBS || w_mbs * h_mbs > MAX_FRAME_SIZE_MBS {
            return Err(CtrlError::range(id, "pic_height_in_map_units_minus1"));
        }
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlH264Pps {
    const ID: u32 = V4L2_CID_STATELESS_H264_PPS;
    const NAME: &'static str = "H264 Picture Parameter Set";
    const V4L2_TYPE: u32 = ctrl_type::H264_PPS;

    fn default_value() -> Self {
        Self::new_zeroed()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        let id = Self::ID;
        // Bounds slice group map arrays (at most 8 groups).
        if self.num_slice_groups_minus1 > 7 {
            return Err(CtrlError::range(id, "num_slice_groups_minus1"));
        }
        // Bounds default reference list lengths to the 32-entry lists.
        if usize::from(self.num_ref_idx_l0_default_active_minus1) >= V4L2_H264_REF_LIST_LEN {
            return Err(CtrlError::range(id, "num_ref_idx_l0_default_active_minus1"));
        }
        // Same for list 1.
        if usize::from(self.num_ref_idx_l1_default_active_minus1) >= V4L2_H264_REF_LIST_LEN {
            return Err(CtrlError::range(id, "num_ref_idx_l1_default_active_minus1"));
        }
        // Selects one of three bi-prediction weighting modes.
        if self.weighted_bipred_idc > 2 {
            return Err(CtrlError::range(id, "weighted_bipred_idc"));
        }
        // QP ranges: QP is used to index dequantisation tables.
        if !(-62..=25).contains(&self.pic_init_qp_minus26) {
            return Err(CtrlError::range(id, "pic_init_qp_minus26"));
        }
        // Same for the SP/SI QP.
        if !(-26..=25).contains(&self.pic_init_qs_minus26) {
            return Err(CtrlError::range(id, "pic_init_qs_minus26"));
        }
        // Chroma QP offsets feed the chroma QP table lookup.
        if !(-12..=12).contains(&self.chroma_qp_index_offset) {
            return Err(CtrlError::range(id, "chroma_qp_index_offset"));
        }
        // Same for the Cr offset.
        if !(-12..=12).contains(&self.second_chroma_qp_index_offset) {
            return Err(CtrlError::range(id, "second_chroma_qp_index_offset"));
        }
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlH264ScalingMatrix {
    const ID: u32 = V4L2_CID_STATELESS_H264_SCALING_MATRIX;
    const NAME: &'static str = "H264 Scaling Matrix";
    const V4L2_TYPE: u32 = ctrl_type::H264_SCALING_MATRIX;

    /// Flat matrices (every weight 16), as the kernel initialises them.
    fn default_value() -> Self {
        Self {
            scaling_list_4x4: [[16; 16]; 6],
            scaling_list_8x8: [[16; 64]; 6],
        }
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        // The kernel accepts any value; every u8 is a usable weight and the
        // arrays have fixed sizes, so nothing can index out of bounds.
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlH264PredWeights {
    const ID: u32 = V4L2_CID_STATELESS_H264_PRED_WEIGHTS;
    const NAME: &'static str = "H264 Prediction Weight Table";
    const V4L2_TYPE: u32 = ctrl_type::H264_PRED_WEIGHTS;

    fn default_value() -> Self {
        Self::new_zeroed()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        let id = Self::ID;
        // Bounds the shift of the weighted prediction formula (8-270 ff.).
        if self.luma_log2_weight_denom > 7 {
            return Err(CtrlError::range(id, "luma_log2_weight_denom"));
        }
        // Same for chroma.
        if self.chroma_log2_weight_denom > 7 {
            return Err(CtrlError::range(id, "chroma_log2_weight_denom"));
        }
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlH264SliceParams {
    const ID: u32 = V4L2_CID_STATELESS_H264_SLICE_PARAMS;
    const NAME: &'static str = "H264 Slice Parameters";
    const V4L2_TYPE: u32 = ctrl_type::H264_SLICE_PARAMS;

    fn default_value() -> Self {
        Self::new_zeroed()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        let id = Self::ID;
        // Kernel normalisation.
        if self.slice_type != V4L2_H264_SLICE_TYPE_B {
            self.flags &= !V4L2_H264_SLICE_FLAG_DIRECT_SPATIAL_MV_PRED;
        }
        // Kernel checks.
        // Selects one of three colour planes (4:4:4 separate planes).
        if self.colour_plane_id > 2 {
            return Err(CtrlError::range(id, "colour_plane_id"));
        }
        // Indexes the three CABAC initialisation tables.
        if self.cabac_init_idc > 2 {
            return Err(CtrlError::range(id, "cabac_init_idc"));
        }
        // Selects one of three deblocking modes.
        if self.disable_deblocking_filter_idc > 2 {
            return Err(CtrlError::range(id, "disable_deblocking_filter_idc"));
        }
        // Offsets into the deblocking alpha/beta tables.
        if !(-6..=6).contains(&self.slice_alpha_c0_offset_div2) {
            return Err(CtrlError::range(id, "slice_alpha_c0_offset_div2"));
        }
        // Same for beta.
        if !(-6..=6).contains(&self.slice_beta_offset_div2) {
            return Err(CtrlError::range(id, "slice_beta_offset_div2"));
        }
        if self.slice_type == V4L2_H264_SLICE_TYPE_I || self.slice_type == V4L2_H264_SLICE_TYPE_SI {
            self.num_ref_idx_l0_active_minus1 = 0;
        }
        if self.slice_type != V4L2_H264_SLICE_TYPE_B {
            self.num_ref_idx_l1_active_minus1 = 0;
        }
        // Bounds the active part of `ref_pic_list0` (32 entries).
        if usize::from(self.num_ref_idx_l0_active_minus1) >= V4L2_H264_REF_LIST_LEN {
            return Err(CtrlError::range(id, "num_ref_idx_l0_active_minus1"));
        }
        // Bounds the active part of `ref_pic_list1` (32 entries).
        if usize::from(self.num_ref_idx_l1_active_minus1) >= V4L2_H264_REF_LIST_LEN {
            return Err(CtrlError::range(id, "num_ref_idx_l1_active_minus1"));
        }
        self.reserved = 0;
        // Stricter checks.
        // Slice type indexes per-type tables (P, B, I, SP, SI).
        if self.slice_type > V4L2_H264_SLICE_TYPE_SI {
            return Err(CtrlError::range(id, "slice_type"));
        }
        // Active list entries index the 16-entry DPB (or are the
        // "no reference picture" marker); entries past the active count are
        // unused and left as given.
        if !self
            .active_refs(0)
            .iter()
            .all(V4l2H264Reference::is_well_formed)
        {
            return Err(CtrlError::range(id, "ref_pic_list0"));
        }
        // Same for list 1.
        if !self
            .active_refs(1)
            .iter()
            .all(V4l2H264Reference::is_well_formed)
        {
            return Err(CtrlError::range(id, "ref_pic_list1"));
        }
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlH264DecodeParams {
    const ID: u32 = V4L2_CID_STATELESS_H264_DECODE_PARAMS;
    const NAME: &'static str = "H264 Decode Parameters";
    const V4L2_TYPE: u32 = ctrl_type::H264_DECODE_PARAMS;

    fn default_value() -> Self {
        Self::new_zeroed()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        let id = Self::ID;
        // nal_ref_idc is a 2-bit syntax element.
        if self.nal_ref_idc > 3 {
            return Err(CtrlError::range(id, "nal_ref_idc"));
        }
        for e in &mut self.dpb {
            e.reserved = [0; 5];
        }
        self.reserved = 0;
        // Stricter: `fields` of an entry in use selects top/bottom/frame
        // (a 2-bit mask); other bits would select nonexistent fields.
        if self.dpb.iter().any(|e| {
            e.flags & V4L2_H264_DPB_ENTRY_FLAG_VALID != 0 && e.fields > V4L2_H264_FRAME_REF
        }) {
            return Err(CtrlError::range(id, "dpb.fields"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Family description
// ---------------------------------------------------------------------------

static CONTROLS: [CtrlDesc; 8] = [
    CtrlDesc::menu(
        V4L2_CID_STATELESS_H264_DECODE_MODE,
        "H264 Decode Mode",
        DECODE_MODE_MENU,
        V4l2StatelessH264DecodeMode::SliceBased as i64,
        V4l2StatelessH264DecodeMode::FrameBased as i64,
        V4l2StatelessH264DecodeMode::SliceBased as i64,
        0,
    ),
    CtrlDesc::menu(
        V4L2_CID_STATELESS_H264_START_CODE,
        "H264 Start Code",
        START_CODE_MENU,
        V4l2StatelessH264StartCode::None as i64,
        V4l2StatelessH264StartCode::AnnexB as i64,
        V4l2StatelessH264StartCode::AnnexB as i64,
        0,
    ),
    CtrlDesc::compound::<V4l2CtrlH264Sps>(),
    CtrlDesc::compound::<V4l2CtrlH264Pps>(),
    CtrlDesc::compound::<V4l2CtrlH264ScalingMatrix>(),
    CtrlDesc::compound::<V4l2CtrlH264PredWeights>(),
    CtrlDesc::compound::<V4l2CtrlH264SliceParams>(),
    CtrlDesc::compound::<V4l2CtrlH264DecodeParams>(),
];

/// The H.264 control family.
pub static CODEC: CodecDesc = CodecDesc {
    codec: Codec::H264,
    controls: &CONTROLS,
    reference_timestamps,
};

/// Timestamps of the DPB entries flagged `ACTIVE`, in DPB order.
fn reference_timestamps(ctrls: &ControlValues, out: &mut Vec<u64>) {
    if let Some(dp) = ctrls.get::<V4l2CtrlH264DecodeParams>() {
        out.extend(
            dp.dpb
                .iter()
                .filter(|e| e.flags & V4L2_H264_DPB_ENTRY_FLAG_ACTIVE != 0)
                .map(|e| e.reference_ts),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctrl::{validate_write, ControlValues};

    fn write<T: CompoundControl>(v: &T) -> Result<T, CtrlError> {
        let out = validate_write(Codec::H264, T::ID, v.as_bytes())?;
        Ok(T::read_from_bytes(&out).unwrap())
    }

    fn sps_high() -> V4l2CtrlH264Sps {
        let mut s = V4l2CtrlH264Sps::new_zeroed();
        s.profile_idc = 100;
        s.level_idc = 40;
        s.chroma_format_idc = 1;
        s.log2_max_frame_num_minus4 = 4;
        s.log2_max_pic_order_cnt_lsb_minus4 = 2;
        s.max_num_ref_frames = 4;
        s.pic_width_in_mbs_minus1 = 119;
        s.pic_height_in_map_units_minus1 = 67;
        s.flags = V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY | V4L2_H264_SPS_FLAG_DIRECT_8X8_INFERENCE;
        s
    }

    #[test]
    fn ids_names_and_family() {
        assert_eq!(V4L2_CID_STATELESS_H264_DECODE_MODE, 0x00a4_0900);
        assert_eq!(V4L2_CID_STATELESS_H264_DECODE_PARAMS, 0x00a4_0907);
        let d = Codec::H264.desc();
        assert_eq!(d.controls.len(), 8);
        let names: Vec<_> = d
            .controls
            .iter()
            .map(|c| (c.id - 0x00a4_0900, c.name))
            .collect();
        assert_eq!(names[0], (0, "H264 Decode Mode"));
        assert_eq!(names[5], (5, "H264 Prediction Weight Table"));
        let sps = d.find(V4L2_CID_STATELESS_H264_SPS).unwrap();
        assert_eq!(sps.elem_size, 1048);
        assert_eq!(sps.v4l2_type, ctrl_type::H264_SPS);
        assert!(!d
            .find(V4L2_CID_STATELESS_H264_SLICE_PARAMS)
            .unwrap()
            .is_dynamic_array());
        let sc = d.find(V4L2_CID_STATELESS_H264_START_CODE).unwrap();
        assert_eq!(sc.menu[1], "Annex B Start Code");
    }

    #[test]
    fn defaults() {
        let v = ControlValues::defaults(Codec::H264);
        let m = v.get::<V4l2CtrlH264ScalingMatrix>().unwrap();
        assert!(m.scaling_list_4x4.iter().flatten().all(|&x| x == 16));
        assert!(m.scaling_list_8x8.iter().flatten().all(|&x| x == 16));
        assert_eq!(
            v.get::<V4l2CtrlH264Sps>().unwrap(),
            V4l2CtrlH264Sps::new_zeroed()
        );
        assert_eq!(v.get_int(V4L2_CID_STATELESS_H264_DECODE_MODE), Some(0));
        assert_eq!(v.get_int(V4L2_CID_STATELESS_H264_START_CODE), Some(1));
        // The zeroed default SPS is itself acceptable (profile 0 → 4:2:0).
        assert!(write(&V4l2CtrlH264Sps::new_zeroed()).is_ok());
    }

    #[test]
    fn menu_range() {
        assert!(validate_write(
            Codec::H264,
            V4L2_CID_STATELESS_H264_DECODE_MODE,
            &1i32.to_le_bytes()
        )
        .is_ok());
        assert_eq!(
            validate_write(
                Codec::H264,
                V4L2_CID_STATELESS_H264_START_CODE,
                &2i32.to_le_bytes()
            ),
            Err(CtrlError::range(
                V4L2_CID_STATELESS_H264_START_CODE,
                "value"
            ))
        );
    }

    #[test]
    fn sps_normalisation_like_kernel() {
        // Baseline: chroma/bit depth forced to 4:2:0 8-bit, bypass cleared.
        let mut s = sps_high();
        s.profile_idc = 66;
        s.chroma_format_idc = 0;
        s.bit_depth_luma_minus8 = 2;
        s.flags |= V4L2_H264_SPS_FLAG_QPPRIME_Y_ZERO_TRANSFORM_BYPASS
            | V4L2_H264_SPS_FLAG_MB_ADAPTIVE_FRAME_FIELD
            | V4L2_H264_SPS_FLAG_SEPARATE_COLOUR_PLANE;
        s.num_ref_frames_in_pic_order_cnt_cycle = 3;
        s.offset_for_ref_frame[0] = 7;
        let got = write(&s).unwrap();
        assert_eq!(got.chroma_format_idc, 1);
        assert_eq!(got.bit_depth_luma_minus8, 0);
        assert_eq!(
            got.flags,
            V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY | V4L2_H264_SPS_FLAG_DIRECT_8X8_INFERENCE
        );
        // POC type 0: type-1 fields cleared.
        assert_eq!(got.num_ref_frames_in_pic_order_cnt_cycle, 0);
        assert_eq!(got.offset_for_ref_frame[0], 0);
        // POC type 1: lsb size cleared, cycle kept.
        s.pic_order_cnt_type = 1;
        let got = write(&s).unwrap();
        assert_eq!(got.log2_max_pic_order_cnt_lsb_minus4, 0);
        assert_eq!(got.num_ref_frames_in_pic_order_cnt_cycle, 3);
        assert_eq!(got.offset_for_ref_frame[0], 7);
    }

    #[test]
    fn sps_refusals() {
        type F = fn(&mut V4l2CtrlH264Sps);
        let cases: &[(F, &str)] = &[
            (|s| s.chroma_format_idc = 2, "chroma_format_idc"), // 4:2:2 needs profile >= 122
            (
                |s| {
                    s.profile_idc = 122;
                    s.chroma_format_idc = 3
                },
                "chroma_format_idc",
            ),
            (
                |s| {
                    s.profile_idc = 244;
                    s.chroma_format_idc = 4
                },
                "chroma_format_idc",
            ),
            (|s| s.bit_depth_luma_minus8 = 7, "bit_depth_luma_minus8"),
            (|s| s.bit_depth_chroma_minus8 = 7, "bit_depth_chroma_minus8"),
            (
                |s| s.log2_max_frame_num_minus4 = 13,
                "log2_max_frame_num_minus4",
            ),
            (|s| s.pic_order_cnt_type = 3, "pic_order_cnt_type"),
            (
                |s| s.log2_max_pic_order_cnt_lsb_minus4 = 13,
                "log2_max_pic_order_cnt_lsb_minus4",
            ),
            (|s| s.max_num_ref_frames = 17, "max_num_ref_frames"),
            (
                |s| s.pic_width_in_mbs_minus1 = 1055,
                "pic_width_in_mbs_minus1",
            ),
            (
                |s| s.pic_height_in_map_units_minus1 = 1055,
                "pic_height_in_map_units_minus1",
            ),
            (
                |s| {
                    s.pic_width_in_mbs_minus1 = 999;
                    s.pic_height_in_map_units_minus1 = 999;
                },
                "pic_height_in_map_units_minus1",
            ),
            (
                |s| {
                    s.flags &= !V4L2_H264_SPS_FLAG_FRAME_MBS_ONLY;
                    s.pic_height_in_map_units_minus1 = 600;
                },
                "pic_height_in_map_units_minus1",
            ),
        ];
        for (f, field) in cases {
            let mut s = sps_high();
            f(&mut s);
            assert_eq!(
                write(&s),
                Err(CtrlError::range(V4L2_CID_STATELESS_H264_SPS, field))
            );
        }
        let mut s = sps_high();
        s.pic_width_in_mbs_minus1 = 1054;
        s.pic_height_in_map_units_minus1 = 131;
        assert!(write(&s).is_ok());
        assert_eq!(s.width(), 16880);
    }

    #[test]
    fn pps_checks() {
        let mut p = V4l2CtrlH264Pps::new_zeroed();
        assert!(write(&p).is_ok());
        p.pic_init_qp_minus26 = -62;
        assert!(write(&p).is_ok());
        p.pic_init_qp_minus26 = -63;
        assert_eq!(
            write(&p),
            Err(CtrlError::range(
                V4L2_CID_STATELESS_H264_PPS,
                "pic_init_qp_minus26"
            ))
        );
        let mut p = V4l2CtrlH264Pps::new_zeroed();
        p.num_ref_idx_l1_default_active_minus1 = 32;
        assert!(write(&p).is_err());
        let mut p = V4l2CtrlH264Pps::new_zeroed();
        p.num_slice_groups_minus1 = 8;
        assert!(write(&p).is_err());
        let mut p = V4l2CtrlH264Pps::new_zeroed();
        p.weighted_bipred_idc = 3;
        assert!(write(&p).is_err());
        let mut p = V4l2CtrlH264Pps::new_zeroed();
        p.second_chroma_qp_index_offset = 13;
        assert!(write(&p).is_err());
    }

    #[test]
    fn pred_weights_checks() {
        let mut w = V4l2CtrlH264PredWeights::new_zeroed();
        w.luma_log2_weight_denom = 7;
        w.weight_factors[1].chroma_offset[31][1] = -128;
        assert_eq!(write(&w).unwrap(), w);
        w.chroma_log2_weight_denom = 8;
        assert!(write(&w).is_err());
    }

    #[test]
    fn slice_params_checks() {
        let mut sp = V4l2CtrlH264SliceParams::new_zeroed();
        sp.slice_type = V4L2_H264_SLICE_TYPE_P;
        sp.num_ref_idx_l0_active_minus1 = 1;
        sp.num_ref_idx_l1_active_minus1 = 5;
        sp.reserved = 9;
        sp.flags = V4L2_H264_SLICE_FLAG_DIRECT_SPATIAL_MV_PRED;
        sp.ref_pic_list0[0] = V4l2H264Reference {
            fields: 3,
            index: 15,
        };
        sp.ref_pic_list0[1] = V4l2H264Reference {
            fields: 3,
            index: 2,
        };
        // Past the active count: not an index in use, left alone.
        sp.ref_pic_list0[2] = V4l2H264Reference {
            fields: 0,
            index: 0xff,
        };
        sp.ref_pic_list1[0] = V4l2H264Reference {
            fields: 0,
            index: 0xff,
        };
        let got = write(&sp).unwrap();
        assert_eq!(got.reserved, 0);
        assert_eq!(got.flags, 0);
        assert_eq!(got.num_ref_idx_l1_active_minus1, 0);
        assert_eq!(got.ref_pic_list0[2].index, 0xff);

        sp.ref_pic_list0[1].index = V4L2_H264_REF_INDEX_NONE;
        assert!(write(&sp).is_ok());
        assert_eq!(sp.ref_pic_list0[1].dpb_index(), None);
        assert_eq!(sp.ref_pic_list0[0].dpb_index(), Some(15));
        sp.ref_pic_list0[1].index = 16;
        assert_eq!(
            write(&sp),
            Err(CtrlError::range(
                V4L2_CID_STATELESS_H264_SLICE_PARAMS,
                "ref_pic_list0"
            ))
        );
        // I slice: no active entries at all.
        sp.slice_type = V4L2_H264_SLICE_TYPE_I;
        assert_eq!(write(&sp).unwrap().num_ref_idx_l0_active_minus1, 0);
        // B slice: list 1 checked.
        sp.slice_type = V4L2_H264_SLICE_TYPE_B;
        sp.ref_pic_list0[1].index = 1;
        sp.ref_pic_list1[0].index = 0x20;
        assert_eq!(
            write(&sp),
            Err(CtrlError::range(
                V4L2_CID_STATELESS_H264_SLICE_PARAMS,
                "ref_pic_list1"
            ))
        );
        sp.num_ref_idx_l1_active_minus1 = 32;
        assert_eq!(
            write(&sp),
            Err(CtrlError::range(
                V4L2_CID_STATELESS_H264_SLICE_PARAMS,
                "num_ref_idx_l1_active_minus1"
            ))
        );
        type F = fn(&mut V4l2CtrlH264SliceParams);
        let cases: &[(F, &str)] = &[
            (|s| s.slice_type = 5, "slice_type"),
            (|s| s.colour_plane_id = 3, "colour_plane_id"),
            (|s| s.cabac_init_idc = 3, "cabac_init_idc"),
            (
                |s| s.disable_deblocking_filter_idc = 3,
                "disable_deblocking_filter_idc",
            ),
            (
                |s| s.slice_alpha_c0_offset_div2 = -7,
                "slice_alpha_c0_offset_div2",
            ),
            (|s| s.slice_beta_offset_div2 = 7, "slice_beta_offset_div2"),
        ];
        for (f, field) in cases {
            let mut s = V4l2CtrlH264SliceParams::new_zeroed();
            f(&mut s);
            assert_eq!(
                write(&s),
                Err(CtrlError::range(
                    V4L2_CID_STATELESS_H264_SLICE_PARAMS,
                    field
                ))
            );
        }
    }

    #[test]
    fn decode_params_and_references() {
        let mut dp = V4l2CtrlH264DecodeParams::new_zeroed();
        dp.reserved = 5;
        for (i, e) in dp.dpb.iter_mut().enumerate() {
            e.reference_ts = 1000 + i as u64;
            e.reserved = [1; 5];
            e.fields = V4L2_H264_FRAME_REF;
        }
        dp.dpb[3].flags = V4L2_H264_DPB_ENTRY_FLAG_VALID | V4L2_H264_DPB_ENTRY_FLAG_ACTIVE;
        dp.dpb[1].flags = V4L2_H264_DPB_ENTRY_FLAG_VALID | V4L2_H264_DPB_ENTRY_FLAG_ACTIVE;
        dp.dpb[7].flags = V4L2_H264_DPB_ENTRY_FLAG_VALID; // valid, not a reference
        let got = write(&dp).unwrap();
        assert_eq!(got.reserved, 0);
        assert!(got.dpb.iter().all(|e| e.reserved == [0; 5]));

        let mut v = ControlValues::new();
        v.set_raw(
            V4L2_CID_STATELESS_H264_DECODE_PARAMS,
            got.as_bytes().to_vec(),
        );
        let mut ts = Vec::new();
        (Codec::H264.desc().reference_timestamps)(&v, &mut ts);
        assert_eq!(ts, vec![1001, 1003]);

        dp.nal_ref_idc = 4;
        assert_eq!(
            write(&dp),
            Err(CtrlError::range(
                V4L2_CID_STATELESS_H264_DECODE_PARAMS,
                "nal_ref_idc"
            ))
        );
        dp.nal_ref_idc = 1;
        dp.dpb[7].fields = 4;
        assert_eq!(
            write(&dp),
            Err(CtrlError::range(
                V4L2_CID_STATELESS_H264_DECODE_PARAMS,
                "dpb.fields"
            ))
        );
    }

    #[test]
    fn wrong_size_refused() {
        let r = validate_write(Codec::H264, V4L2_CID_STATELESS_H264_PPS, &[0u8; 11]);
        assert!(matches!(r, Err(CtrlError::Size { expected: 12, .. })));
    }
}
