//! HEVC stateless controls (Linux 6.12 `V4L2_CID_STATELESS_HEVC_*`).
//!
//! Structs and constants are declared through the layout macros of
//! [`super::vp8`], which also feed the layout test. Control set, dynamic
//! array sizes and menus follow the visl test driver.

use super::vp8::{check_range, NewZeroed};
use super::{
    ctrl_type, Codec, CodecDesc, CompoundControl, ControlValues, CtrlDesc, CtrlError,
    V4L2_CID_CODEC_STATELESS_BASE,
};

crate::uapi_consts! {
    V4L2_CID_STATELESS_HEVC_SPS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 400;
    V4L2_CID_STATELESS_HEVC_PPS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 401;
    V4L2_CID_STATELESS_HEVC_SLICE_PARAMS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 402;
    V4L2_CID_STATELESS_HEVC_SCALING_MATRIX: u32 = V4L2_CID_CODEC_STATELESS_BASE + 403;
    V4L2_CID_STATELESS_HEVC_DECODE_PARAMS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 404;
    V4L2_CID_STATELESS_HEVC_DECODE_MODE: u32 = V4L2_CID_CODEC_STATELESS_BASE + 405;
    V4L2_CID_STATELESS_HEVC_START_CODE: u32 = V4L2_CID_CODEC_STATELESS_BASE + 406;
    V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS: u32 = V4L2_CID_CODEC_STATELESS_BASE + 407;
    V4L2_STATELESS_HEVC_DECODE_MODE_SLICE_BASED: i32 = 0;
    V4L2_STATELESS_HEVC_DECODE_MODE_FRAME_BASED: i32 = 1;
    V4L2_STATELESS_HEVC_START_CODE_NONE: i32 = 0;
    V4L2_STATELESS_HEVC_START_CODE_ANNEX_B: i32 = 1;
    V4L2_HEVC_SLICE_TYPE_B: u8 = 0;
    V4L2_HEVC_SLICE_TYPE_P: u8 = 1;
    V4L2_HEVC_SLICE_TYPE_I: u8 = 2;
    V4L2_HEVC_SPS_FLAG_SEPARATE_COLOUR_PLANE: u64 = 1 << 0;
    V4L2_HEVC_SPS_FLAG_SCALING_LIST_ENABLED: u64 = 1 << 1;
    V4L2_HEVC_SPS_FLAG_AMP_ENABLED: u64 = 1 << 2;
    V4L2_HEVC_SPS_FLAG_SAMPLE_ADAPTIVE_OFFSET: u64 = 1 << 3;
    V4L2_HEVC_SPS_FLAG_PCM_ENABLED: u64 = 1 << 4;
    V4L2_HEVC_SPS_FLAG_PCM_LOOP_FILTER_DISABLED: u64 = 1 << 5;
    V4L2_HEVC_SPS_FLAG_LONG_TERM_REF_PICS_PRESENT: u64 = 1 << 6;
    V4L2_HEVC_SPS_FLAG_SPS_TEMPORAL_MVP_ENABLED: u64 = 1 << 7;
    V4L2_HEVC_SPS_FLAG_STRONG_INTRA_SMOOTHING_ENABLED: u64 = 1 << 8;
    V4L2_HEVC_PPS_FLAG_DEPENDENT_SLICE_SEGMENT_ENABLED: u64 = 1 << 0;
    V4L2_HEVC_PPS_FLAG_OUTPUT_FLAG_PRESENT: u64 = 1 << 1;
    V4L2_HEVC_PPS_FLAG_SIGN_DATA_HIDING_ENABLED: u64 = 1 << 2;
    V4L2_HEVC_PPS_FLAG_CABAC_INIT_PRESENT: u64 = 1 << 3;
    V4L2_HEVC_PPS_FLAG_CONSTRAINED_INTRA_PRED: u64 = 1 << 4;
    V4L2_HEVC_PPS_FLAG_TRANSFORM_SKIP_ENABLED: u64 = 1 << 5;
    V4L2_HEVC_PPS_FLAG_CU_QP_DELTA_ENABLED: u64 = 1 << 6;
    V4L2_HEVC_PPS_FLAG_PPS_SLICE_CHROMA_QP_OFFSETS_PRESENT: u64 = 1 << 7;
    V4L2_HEVC_PPS_FLAG_WEIGHTED_PRED: u64 = 1 << 8;
    V4L2_HEVC_PPS_FLAG_WEIGHTED_BIPRED: u64 = 1 << 9;
    V4L2_HEVC_PPS_FLAG_TRANSQUANT_BYPASS_ENABLED: u64 = 1 << 10;
    V4L2_HEVC_PPS_FLAG_TILES_ENABLED: u64 = 1 << 11;
    V4L2_HEVC_PPS_FLAG_ENTROPY_CODING_SYNC_ENABLED: u64 = 1 << 12;
    V4L2_HEVC_PPS_FLAG_LOOP_FILTER_ACROSS_TILES_ENABLED: u64 = 1 << 13;
    V4L2_HEVC_PPS_FLAG_PPS_LOOP_FILTER_ACROSS_SLICES_ENABLED: u64 = 1 << 14;
    V4L2_HEVC_PPS_FLAG_DEBLOCKING_FILTER_OVERRIDE_ENABLED: u64 = 1 << 15;
    V4L2_HEVC_PPS_FLAG_PPS_DISABLE_DEBLOCKING_FILTER: u64 = 1 << 16;
    V4L2_HEVC_PPS_FLAG_LISTS_MODIFICATION_PRESENT: u64 = 1 << 17;
    V4L2_HEVC_PPS_FLAG_SLICE_SEGMENT_HEADER_EXTENSION_PRESENT: u64 = 1 << 18;
    V4L2_HEVC_PPS_FLAG_DEBLOCKING_FILTER_CONTROL_PRESENT: u64 = 1 << 19;
    V4L2_HEVC_PPS_FLAG_UNIFORM_SPACING: u64 = 1 << 20;
    V4L2_HEVC_DPB_ENTRY_LONG_TERM_REFERENCE: u8 = 0x01;
    V4L2_HEVC_SEI_PIC_STRUCT_FRAME: u8 = 0;
    V4L2_HEVC_SEI_PIC_STRUCT_TOP_FIELD: u8 = 1;
    V4L2_HEVC_SEI_PIC_STRUCT_BOTTOM_FIELD: u8 = 2;
    V4L2_HEVC_SEI_PIC_STRUCT_TOP_BOTTOM: u8 = 3;
    V4L2_HEVC_SEI_PIC_STRUCT_BOTTOM_TOP: u8 = 4;
    V4L2_HEVC_SEI_PIC_STRUCT_TOP_BOTTOM_TOP: u8 = 5;
    V4L2_HEVC_SEI_PIC_STRUCT_BOTTOM_TOP_BOTTOM: u8 = 6;
    V4L2_HEVC_SEI_PIC_STRUCT_FRAME_DOUBLING: u8 = 7;
    V4L2_HEVC_SEI_PIC_STRUCT_FRAME_TRIPLING: u8 = 8;
    V4L2_HEVC_SEI_PIC_STRUCT_TOP_PAIRED_PREVIOUS_BOTTOM: u8 = 9;
    V4L2_HEVC_SEI_PIC_STRUCT_BOTTOM_PAIRED_PREVIOUS_TOP: u8 = 10;
    V4L2_HEVC_SEI_PIC_STRUCT_TOP_PAIRED_NEXT_BOTTOM: u8 = 11;
    V4L2_HEVC_SEI_PIC_STRUCT_BOTTOM_PAIRED_NEXT_TOP: u8 = 12;
    V4L2_HEVC_DPB_ENTRIES_NUM_MAX: u32 = 16;
    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_SAO_LUMA: u64 = 1 << 0;
    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_SAO_CHROMA: u64 = 1 << 1;
    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_TEMPORAL_MVP_ENABLED: u64 = 1 << 2;
    V4L2_HEVC_SLICE_PARAMS_FLAG_MVD_L1_ZERO: u64 = 1 << 3;
    V4L2_HEVC_SLICE_PARAMS_FLAG_CABAC_INIT: u64 = 1 << 4;
    V4L2_HEVC_SLICE_PARAMS_FLAG_COLLOCATED_FROM_L0: u64 = 1 << 5;
    V4L2_HEVC_SLICE_PARAMS_FLAG_USE_INTEGER_MV: u64 = 1 << 6;
    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_DEBLOCKING_FILTER_DISABLED: u64 = 1 << 7;
    V4L2_HEVC_SLICE_PARAMS_FLAG_SLICE_LOOP_FILTER_ACROSS_SLICES_ENABLED: u64 = 1 << 8;
    V4L2_HEVC_SLICE_PARAMS_FLAG_DEPENDENT_SLICE_SEGMENT: u64 = 1 << 9;
    V4L2_HEVC_DECODE_PARAM_FLAG_IRAP_PIC: u64 = 0x1;
    V4L2_HEVC_DECODE_PARAM_FLAG_IDR_PIC: u64 = 0x2;
    V4L2_HEVC_DECODE_PARAM_FLAG_NO_OUTPUT_OF_PRIOR: u64 = 0x4;
}

crate::uapi_structs! {
    /// `struct v4l2_ctrl_hevc_sps`.
    "v4l2_ctrl_hevc_sps" pub struct V4l2CtrlHevcSps {
        pub video_parameter_set_id: u8,
        pub seq_parameter_set_id: u8,
        pub pic_width_in_luma_samples: u16,
        pub pic_height_in_luma_samples: u16,
        pub bit_depth_luma_minus8: u8,
        pub bit_depth_chroma_minus8: u8,
        pub log2_max_pic_order_cnt_lsb_minus4: u8,
        pub sps_max_dec_pic_buffering_minus1: u8,
        pub sps_max_num_reorder_pics: u8,
        pub sps_max_latency_increase_plus1: u8,
        pub log2_min_luma_coding_block_size_minus3: u8,
        pub log2_diff_max_min_luma_coding_block_size: u8,
        pub log2_min_luma_transform_block_size_minus2: u8,
        pub log2_diff_max_min_luma_transform_block_size: u8,
        pub max_transform_hierarchy_depth_inter: u8,
        pub max_transform_hierarchy_depth_intra: u8,
        pub pcm_sample_bit_depth_luma_minus1: u8,
        pub pcm_sample_bit_depth_chroma_minus1: u8,
        pub log2_min_pcm_luma_coding_block_size_minus3: u8,
        pub log2_diff_max_min_pcm_luma_coding_block_size: u8,
        pub num_short_term_ref_pic_sets: u8,
        pub num_long_term_ref_pics_sps: u8,
        pub chroma_format_idc: u8,
        pub sps_max_sub_layers_minus1: u8,
        pub reserved: [u8; 6],
        pub flags: u64,
    }
    /// `struct v4l2_ctrl_hevc_pps`.
    "v4l2_ctrl_hevc_pps" pub struct V4l2CtrlHevcPps {
        pub pic_parameter_set_id: u8,
        pub num_extra_slice_header_bits: u8,
        pub num_ref_idx_l0_default_active_minus1: u8,
        pub num_ref_idx_l1_default_active_minus1: u8,
        pub init_qp_minus26: i8,
        pub diff_cu_qp_delta_depth: u8,
        pub pps_cb_qp_offset: i8,
        pub pps_cr_qp_offset: i8,
        pub num_tile_columns_minus1: u8,
        pub num_tile_rows_minus1: u8,
        pub column_width_minus1: [u8; 20],
        pub row_height_minus1: [u8; 22],
        pub pps_beta_offset_div2: i8,
        pub pps_tc_offset_div2: i8,
        pub log2_parallel_merge_level_minus2: u8,
        pub reserved: u8,
        pub flags: u64,
    }
    /// `struct v4l2_hevc_dpb_entry`.
    "v4l2_hevc_dpb_entry" pub struct V4l2HevcDpbEntry {
        pub timestamp: u64,
        pub flags: u8,
        pub field_pic: u8,
        pub reserved: u16,
        pub pic_order_cnt_val: i32,
    }
    /// `struct v4l2_hevc_pred_weight_table`.
    "v4l2_hevc_pred_weight_table" pub struct V4l2HevcPredWeightTable {
        pub delta_luma_weight_l0: [i8; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub luma_offset_l0: [i8; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub delta_chroma_weight_l0: [[i8; 2]; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub chroma_offset_l0: [[i8; 2]; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub delta_luma_weight_l1: [i8; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub luma_offset_l1: [i8; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub delta_chroma_weight_l1: [[i8; 2]; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub chroma_offset_l1: [[i8; 2]; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub luma_log2_weight_denom: u8,
        pub delta_chroma_log2_weight_denom: i8,
    }
    /// `struct v4l2_ctrl_hevc_slice_params`.
    "v4l2_ctrl_hevc_slice_params" pub struct V4l2CtrlHevcSliceParams {
        pub bit_size: u32,
        pub data_byte_offset: u32,
        pub num_entry_point_offsets: u32,
        pub nal_unit_type: u8,
        pub nuh_temporal_id_plus1: u8,
        pub slice_type: u8,
        pub colour_plane_id: u8,
        pub slice_pic_order_cnt: i32,
        pub num_ref_idx_l0_active_minus1: u8,
        pub num_ref_idx_l1_active_minus1: u8,
        pub collocated_ref_idx: u8,
        pub five_minus_max_num_merge_cand: u8,
        pub slice_qp_delta: i8,
        pub slice_cb_qp_offset: i8,
        pub slice_cr_qp_offset: i8,
        pub slice_act_y_qp_offset: i8,
        pub slice_act_cb_qp_offset: i8,
        pub slice_act_cr_qp_offset: i8,
        pub slice_beta_offset_div2: i8,
        pub slice_tc_offset_div2: i8,
        pub pic_struct: u8,
        pub reserved0: [u8; 3],
        pub slice_segment_addr: u32,
        pub ref_idx_l0: [u8; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub ref_idx_l1: [u8; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub short_term_ref_pic_set_size: u16,
        pub long_term_ref_pic_set_size: u16,
        pub pred_weight_table: V4l2HevcPredWeightTable,
        pub reserved1: [u8; 2],
        pub flags: u64,
    }
    /// `struct v4l2_ctrl_hevc_decode_params`.
    "v4l2_ctrl_hevc_decode_params" pub struct V4l2CtrlHevcDecodeParams {
        pub pic_order_cnt_val: i32,
        pub short_term_ref_pic_set_size: u16,
        pub long_term_ref_pic_set_size: u16,
        pub num_active_dpb_entries: u8,
        pub num_poc_st_curr_before: u8,
        pub num_poc_st_curr_after: u8,
        pub num_poc_lt_curr: u8,
        pub poc_st_curr_before: [u8; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub poc_st_curr_after: [u8; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub poc_lt_curr: [u8; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub num_delta_pocs_of_ref_rps_idx: u8,
        pub reserved: [u8; 3],
        pub dpb: [V4l2HevcDpbEntry; V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize],
        pub flags: u64,
    }
    /// `struct v4l2_ctrl_hevc_scaling_matrix`.
    "v4l2_ctrl_hevc_scaling_matrix" pub struct V4l2CtrlHevcScalingMatrix {
        pub scaling_list_4x4: [[u8; 16]; 6],
        pub scaling_list_8x8: [[u8; 64]; 6],
        pub scaling_list_16x16: [[u8; 64]; 6],
        pub scaling_list_32x32: [[u8; 64]; 2],
        pub scaling_list_dc_coef_16x16: [u8; 6],
        pub scaling_list_dc_coef_32x32: [u8; 2],
    }
}

// Sizes from the linux-libc-dev 6.12 headers (also checked field by field by
// tests/ctrl_layout_others.rs).
const _: () = assert!(core::mem::size_of::<V4l2CtrlHevcSps>() == 40);
const _: () = assert!(core::mem::size_of::<V4l2CtrlHevcPps>() == 64);
const _: () = assert!(core::mem::size_of::<V4l2HevcDpbEntry>() == 16);
const _: () = assert!(core::mem::size_of::<V4l2HevcPredWeightTable>() == 194);
const _: () = assert!(core::mem::size_of::<V4l2CtrlHevcSliceParams>() == 280);
const _: () = assert!(core::mem::size_of::<V4l2CtrlHevcDecodeParams>() == 328);
const _: () = assert!(core::mem::size_of::<V4l2CtrlHevcScalingMatrix>() == 1000);
const _: () = assert!(core::mem::size_of::<V4l2CtrlHevcEntryPointOffset>() == 4);

/// One element of the `V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS`
/// dynamic array (`__u32` in C).
#[repr(transparent)]
#[derive(
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
)]
pub struct V4l2CtrlHevcEntryPointOffset(pub u32);

/// Maximum slices per request (`V4L2_CID_STATELESS_HEVC_SLICE_PARAMS`
/// dims, as visl: the absolute maximum for levels above 6).
pub const HEVC_MAX_SLICES: u32 = 600;
/// Maximum entry point offsets per request (visl's dims).
pub const HEVC_MAX_ENTRY_POINTS: u32 = 256;

const DPB_MAX: usize = V4L2_HEVC_DPB_ENTRIES_NUM_MAX as usize;

/// C names of the controls of this module, for the layout test:
/// (id, `V4L2_CID_*`, `V4L2_CTRL_TYPE_*`, C type of one element).
pub const CONTROL_C_NAMES: &[(u32, &str, &str, &str)] = &[
    (
        V4L2_CID_STATELESS_HEVC_SPS,
        "V4L2_CID_STATELESS_HEVC_SPS",
        "V4L2_CTRL_TYPE_HEVC_SPS",
        "struct v4l2_ctrl_hevc_sps",
    ),
    (
        V4L2_CID_STATELESS_HEVC_PPS,
        "V4L2_CID_STATELESS_HEVC_PPS",
        "V4L2_CTRL_TYPE_HEVC_PPS",
        "struct v4l2_ctrl_hevc_pps",
    ),
    (
        V4L2_CID_STATELESS_HEVC_SLICE_PARAMS,
        "V4L2_CID_STATELESS_HEVC_SLICE_PARAMS",
        "V4L2_CTRL_TYPE_HEVC_SLICE_PARAMS",
        "struct v4l2_ctrl_hevc_slice_params",
    ),
    (
        V4L2_CID_STATELESS_HEVC_SCALING_MATRIX,
        "V4L2_CID_STATELESS_HEVC_SCALING_MATRIX",
        "V4L2_CTRL_TYPE_HEVC_SCALING_MATRIX",
        "struct v4l2_ctrl_hevc_scaling_matrix",
    ),
    (
        V4L2_CID_STATELESS_HEVC_DECODE_PARAMS,
        "V4L2_CID_STATELESS_HEVC_DECODE_PARAMS",
        "V4L2_CTRL_TYPE_HEVC_DECODE_PARAMS",
        "struct v4l2_ctrl_hevc_decode_params",
    ),
    (
        V4L2_CID_STATELESS_HEVC_DECODE_MODE,
        "V4L2_CID_STATELESS_HEVC_DECODE_MODE",
        "V4L2_CTRL_TYPE_MENU",
        "__s32",
    ),
    (
        V4L2_CID_STATELESS_HEVC_START_CODE,
        "V4L2_CID_STATELESS_HEVC_START_CODE",
        "V4L2_CTRL_TYPE_MENU",
        "__s32",
    ),
    (
        V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS,
        "V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS",
        "V4L2_CTRL_TYPE_U32",
        "__u32",
    ),
];

impl CompoundControl for V4l2CtrlHevcSps {
    const ID: u32 = V4L2_CID_STATELESS_HEVC_SPS;
    const NAME: &'static str = "HEVC Sequence Parameter Set";
    const V4L2_TYPE: u32 = ctrl_type::HEVC_SPS;

    fn default_value() -> Self {
        Self::new_zeroed_value()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_HEVC_SPS;
        // Kernel: PCM fields only count with PCM enabled, the long-term count
        // only with long-term references present.
        if self.flags & V4L2_HEVC_SPS_FLAG_PCM_ENABLED == 0 {
            self.pcm_sample_bit_depth_luma_minus1 = 0;
            self.pcm_sample_bit_depth_chroma_minus1 = 0;
            self.log2_min_pcm_luma_coding_block_size_minus3 = 0;
            self.log2_diff_max_min_pcm_luma_coding_block_size = 0;
        }
        if self.flags & V4L2_HEVC_SPS_FLAG_LONG_TERM_REF_PICS_PRESENT == 0 {
            self.num_long_term_ref_pics_sps = 0;
        }

        // Stricter: chroma_format_idc indexes the 4-entry SubWidthC/SubHeightC tables.
        check_range(ID, "chroma_format_idc", self.chroma_format_idc, 0, 3)?;
        // Stricter: bit depths 8..=16 bound sample sizes and shifts.
        check_range(
            ID,
            "bit_depth_luma_minus8",
            self.bit_depth_luma_minus8,
            0,
            8,
        )?;
        check_range(
            ID,
            "bit_depth_chroma_minus8",
            self.bit_depth_chroma_minus8,
            0,
            8,
        )?;
        // Stricter: MaxPicOrderCntLsb = 1 << (x + 4) stays a valid 32-bit shift.
        check_range(
            ID,
            "log2_max_pic_order_cnt_lsb_minus4",
            self.log2_max_pic_order_cnt_lsb_minus4,
            0,
            12,
        )?;
        // Stricter: the DPB has at most 16 pictures.
        check_range(
            ID,
            "sps_max_dec_pic_buffering_minus1",
            self.sps_max_dec_pic_buffering_minus1,
            0,
            15,
        )?;
        // Stricter: CtbLog2SizeY <= 6 bounds CTB sizes and per-CTB arrays.
        check_range(
            ID,
            "log2_diff_max_min_luma_coding_block_size",
            u32::from(self.log2_min_luma_coding_block_size_minus3)
                + 3
                + u32::from(self.log2_diff_max_min_luma_coding_block_size),
            0,
            6,
        )?;
        // Stricter: MaxTbLog2SizeY <= 5 indexes the 4x4..32x32 transform tables.
        check_range(
            ID,
            "log2_diff_max_min_luma_transform_block_size",
            u32::from(self.log2_min_luma_transform_block_size_minus2)
                + 2
                + u32::from(self.log2_diff_max_min_luma_transform_block_size),
            0,
            5,
        )?;
        // Stricter: transform-tree recursion depth is at most CtbLog2 - MinTbLog2 <= 4.
        check_range(
            ID,
            "max_transform_hierarchy_depth_inter",
            self.max_transform_hierarchy_depth_inter,
            0,
            4,
        )?;
        check_range(
            ID,
            "max_transform_hierarchy_depth_intra",
            self.max_transform_hierarchy_depth_intra,
            0,
            4,
        )?;
        // Stricter: PCM sample depth never exceeds the coded depth (bounds PCM sample reads).
        check_range(
            ID,
            "pcm_sample_bit_depth_luma_minus1",
            self.pcm_sample_bit_depth_luma_minus1,
            0,
            self.bit_depth_luma_minus8 + 7,
        )?;
        check_range(
            ID,
            "pcm_sample_bit_depth_chroma_minus1",
            self.pcm_sample_bit_depth_chroma_minus1,
            0,
            self.bit_depth_chroma_minus8 + 7,
        )?;
        // Stricter: Log2MaxIpcmCbSizeY <= 5 bounds PCM block sizes.
        check_range(
            ID,
            "log2_diff_max_min_pcm_luma_coding_block_size",
            u32::from(self.log2_min_pcm_luma_coding_block_size_minus3)
                + 3
                + u32::from(self.log2_diff_max_min_pcm_luma_coding_block_size),
            0,
            5,
        )?;
        // Stricter: at most 64 short-term RPS (arrays of 65 with the slice's own).
        check_range(
            ID,
            "num_short_term_ref_pic_sets",
            self.num_short_term_ref_pic_sets,
            0,
            64,
        )?;
        // Stricter: at most 32 long-term candidates in the SPS.
        check_range(
            ID,
            "num_long_term_ref_pics_sps",
            self.num_long_term_ref_pics_sps,
            0,
            32,
        )?;
        // Stricter: per-sub-layer arrays hold 7 entries.
        check_range(
            ID,
            "sps_max_sub_layers_minus1",
            self.sps_max_sub_layers_minus1,
            0,
            6,
        )?;
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlHevcPps {
    const ID: u32 = V4L2_CID_STATELESS_HEVC_PPS;
    const NAME: &'static str = "HEVC Picture Parameter Set";
    const V4L2_TYPE: u32 = ctrl_type::HEVC_PPS;

    fn default_value() -> Self {
        Self::new_zeroed_value()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_HEVC_PPS;
        // Kernel: zero what the flags say is absent.
        if self.flags & V4L2_HEVC_PPS_FLAG_CU_QP_DELTA_ENABLED == 0 {
            self.diff_cu_qp_delta_depth = 0;
        }
        if self.flags & V4L2_HEVC_PPS_FLAG_TILES_ENABLED == 0 {
            self.num_tile_columns_minus1 = 0;
            self.num_tile_rows_minus1 = 0;
            self.column_width_minus1 = [0; 20];
            self.row_height_minus1 = [0; 22];
            self.flags &= !V4L2_HEVC_PPS_FLAG_LOOP_FILTER_ACROSS_TILES_ENABLED;
        }
        if self.flags & V4L2_HEVC_PPS_FLAG_PPS_DISABLE_DEBLOCKING_FILTER != 0 {
            self.pps_beta_offset_div2 = 0;
            self.pps_tc_offset_div2 = 0;
        }

        // Stricter: tile counts index column_width_minus1[20] / row_height_minus1[22].
        check_range(
            ID,
            "num_tile_columns_minus1",
            self.num_tile_columns_minus1,
            0,
            19,
        )?;
        check_range(ID, "num_tile_rows_minus1", self.num_tile_rows_minus1, 0, 21)?;
        // Stricter: default list sizes fit the 16-entry reference lists (spec: 0..=14).
        check_range(
            ID,
            "num_ref_idx_l0_default_active_minus1",
            self.num_ref_idx_l0_default_active_minus1,
            0,
            14,
        )?;
        check_range(
            ID,
            "num_ref_idx_l1_default_active_minus1",
            self.num_ref_idx_l1_default_active_minus1,
            0,
            14,
        )?;
        // Stricter: initial QP within -(26 + 6 * 8)..=25 keeps QP table lookups in range.
        check_range(ID, "init_qp_minus26", self.init_qp_minus26, -74, 25)?;
        // Stricter: quantisation group depth is below the CTB depth (<= 3).
        check_range(
            ID,
            "diff_cu_qp_delta_depth",
            self.diff_cu_qp_delta_depth,
            0,
            3,
        )?;
        // Stricter: chroma QP offsets index the chroma QP mapping table.
        check_range(ID, "pps_cb_qp_offset", self.pps_cb_qp_offset, -12, 12)?;
        check_range(ID, "pps_cr_qp_offset", self.pps_cr_qp_offset, -12, 12)?;
        // Stricter: deblocking offsets index the beta/tc tables.
        check_range(ID, "pps_beta_offset_div2", self.pps_beta_offset_div2, -6, 6)?;
        check_range(ID, "pps_tc_offset_div2", self.pps_tc_offset_div2, -6, 6)?;
        // Stricter: Log2ParMrgLevel <= CtbLog2SizeY <= 6 (a shift amount).
        check_range(
            ID,
            "log2_parallel_merge_level_minus2",
            self.log2_parallel_merge_level_minus2,
            0,
            4,
        )?;
        Ok(())
    }
}

impl V4l2CtrlHevcSliceParams {
    /// True for P and B slices (they use list 0).
    pub fn uses_l0(&self) -> bool {
        self.slice_type != V4L2_HEVC_SLICE_TYPE_I
    }

    /// True for B slices (they use list 1).
    pub fn uses_l1(&self) -> bool {
        self.slice_type == V4L2_HEVC_SLICE_TYPE_B
    }
}

impl CompoundControl for V4l2CtrlHevcSliceParams {
    const ID: u32 = V4L2_CID_STATELESS_HEVC_SLICE_PARAMS;
    const NAME: &'static str = "HEVC Slice Parameters";
    const V4L2_TYPE: u32 = ctrl_type::HEVC_SLICE_PARAMS;
    const MAX_ELEMS: u32 = HEVC_MAX_SLICES;

    fn default_value() -> Self {
        Self::new_zeroed_value()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        // Kernel: nothing. Everything below is stricter.
        const ID: u32 = V4L2_CID_STATELESS_HEVC_SLICE_PARAMS;
        // Stricter: when bit_size is given, the slice data starts inside the slice
        // (bit_size - 8 * data_byte_offset cannot underflow; with 0 a consumer uses the buffer size).
        if self.bit_size != 0 && u64::from(self.data_byte_offset) * 8 > u64::from(self.bit_size) {
            return Err(CtrlError::range(ID, "data_byte_offset"));
        }
        // Stricter: a slice never has more entry points than the offsets array can hold.
        check_range(
            ID,
            "num_entry_point_offsets",
            self.num_entry_point_offsets,
            0,
            HEVC_MAX_ENTRY_POINTS,
        )?;
        // Stricter: nal_unit_type is 6 bits, nuh_temporal_id_plus1 3 bits (per-type/per-layer tables).
        check_range(ID, "nal_unit_type", self.nal_unit_type, 0, 63)?;
        check_range(
            ID,
            "nuh_temporal_id_plus1",
            self.nuh_temporal_id_plus1,
            0,
            7,
        )?;
        // Stricter: slice_type selects among B/P/I tables (e.g. CABAC init).
        check_range(ID, "slice_type", self.slice_type, 0, V4L2_HEVC_SLICE_TYPE_I)?;
        // Stricter: colour_plane_id indexes the 3 planes.
        check_range(ID, "colour_plane_id", self.colour_plane_id, 0, 2)?;
        // Stricter: list sizes fit ref_idx_l0/l1[16] and pred weight tables.
        check_range(
            ID,
            "num_ref_idx_l0_active_minus1",
            self.num_ref_idx_l0_active_minus1,
            0,
            14,
        )?;
        check_range(
            ID,
            "num_ref_idx_l1_active_minus1",
            self.num_ref_idx_l1_active_minus1,
            0,
            14,
        )?;
        // Stricter: the used list entries index the 16-entry DPB array.
        if self.uses_l0() {
            let n = usize::from(self.num_ref_idx_l0_active_minus1) + 1;
            if self.ref_idx_l0[..n]
                .iter()
                .any(|i| usize::from(*i) >= DPB_MAX)
            {
                return Err(CtrlError::range(ID, "ref_idx_l0"));
            }
        }
        if self.uses_l1() {
            let n = usize::from(self.num_ref_idx_l1_active_minus1) + 1;
            if self.ref_idx_l1[..n]
                .iter()
                .any(|i| usize::from(*i) >= DPB_MAX)
            {
                return Err(CtrlError::range(ID, "ref_idx_l1"));
            }
        }
        // Stricter: collocated_ref_idx indexes a 16-entry reference list.
        check_range(ID, "collocated_ref_idx", self.collocated_ref_idx, 0, 14)?;
        // Stricter: MaxNumMergeCand = 5 - x is 1..=5 (merge candidate array of 5).
        check_range(
            ID,
            "five_minus_max_num_merge_cand",
            self.five_minus_max_num_merge_cand,
            0,
            4,
        )?;
        // Stricter: chroma QP offsets index the chroma QP mapping table.
        for (name, v) in [
            ("slice_cb_qp_offset", self.slice_cb_qp_offset),
            ("slice_cr_qp_offset", self.slice_cr_qp_offset),
            ("slice_act_y_qp_offset", self.slice_act_y_qp_offset),
            ("slice_act_cb_qp_offset", self.slice_act_cb_qp_offset),
            ("slice_act_cr_qp_offset", self.slice_act_cr_qp_offset),
        ] {
            check_range(ID, name, v, -12, 12)?;
        }
        // Stricter: deblocking offsets index the beta/tc tables.
        check_range(
            ID,
            "slice_beta_offset_div2",
            self.slice_beta_offset_div2,
            -6,
            6,
        )?;
        check_range(ID, "slice_tc_offset_div2", self.slice_tc_offset_div2, -6, 6)?;
        // Stricter: pic_struct is one of the 13 SEI values (field-mode tables).
        check_range(
            ID,
            "pic_struct",
            self.pic_struct,
            0,
            V4L2_HEVC_SEI_PIC_STRUCT_BOTTOM_PAIRED_NEXT_TOP,
        )?;
        // Stricter: weight denominators are shift amounts in 0..=7.
        let pw = &self.pred_weight_table;
        check_range(
            ID,
            "pred_weight_table.luma_log2_weight_denom",
            pw.luma_log2_weight_denom,
            0,
            7,
        )?;
        check_range(
            ID,
            "pred_weight_table.delta_chroma_log2_weight_denom",
            i16::from(pw.luma_log2_weight_denom) + i16::from(pw.delta_chroma_log2_weight_denom),
            0,
            7,
        )?;
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlHevcScalingMatrix {
    const ID: u32 = V4L2_CID_STATELESS_HEVC_SCALING_MATRIX;
    const NAME: &'static str = "HEVC Scaling Matrix";
    const V4L2_TYPE: u32 = ctrl_type::HEVC_SCALING_MATRIX;

    fn default_value() -> Self {
        Self::new_zeroed_value()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        // Kernel: nothing; every u8 value is a valid scaling factor.
        Ok(())
    }
}

impl V4l2CtrlHevcDecodeParams {
    /// The active DPB entries (at most 16 even for an unvalidated value).
    pub fn active_dpb(&self) -> &[V4l2HevcDpbEntry] {
        &self.dpb[..usize::from(self.num_active_dpb_entries).min(DPB_MAX)]
    }
}

impl CompoundControl for V4l2CtrlHevcDecodeParams {
    const ID: u32 = V4L2_CID_STATELESS_HEVC_DECODE_PARAMS;
    const NAME: &'static str = "HEVC Decode Parameters";
    const V4L2_TYPE: u32 = ctrl_type::HEVC_DECODE_PARAMS;

    fn default_value() -> Self {
        Self::new_zeroed_value()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_HEVC_DECODE_PARAMS;
        // Kernel: at most V4L2_HEVC_DPB_ENTRIES_NUM_MAX active entries.
        check_range(
            ID,
            "num_active_dpb_entries",
            self.num_active_dpb_entries,
            0,
            V4L2_HEVC_DPB_ENTRIES_NUM_MAX as u8,
        )?;
        let active = self.num_active_dpb_entries;
        // Stricter: the RPS counts bound loops over poc_*[16], and together
        // (NumPicTotalCurr) fit a 16-entry reference list.
        for (name, n) in [
            ("num_poc_st_curr_before", self.num_poc_st_curr_before),
            ("num_poc_st_curr_after", self.num_poc_st_curr_after),
            ("num_poc_lt_curr", self.num_poc_lt_curr),
        ] {
            check_range(ID, name, n, 0, V4L2_HEVC_DPB_ENTRIES_NUM_MAX as u8)?;
        }
        let total = u32::from(self.num_poc_st_curr_before)
            + u32::from(self.num_poc_st_curr_after)
            + u32::from(self.num_poc_lt_curr);
        check_range(
            ID,
            "num_poc_lt_curr",
            total,
            0,
            V4L2_HEVC_DPB_ENTRIES_NUM_MAX,
        )?;
        // Stricter: every RPS entry is an index into the active DPB entries.
        for (name, list, n) in [
            (
                "poc_st_curr_before",
                &self.poc_st_curr_before,
                self.num_poc_st_curr_before,
            ),
            (
                "poc_st_curr_after",
                &self.poc_st_curr_after,
                self.num_poc_st_curr_after,
            ),
            ("poc_lt_curr", &self.poc_lt_curr, self.num_poc_lt_curr),
        ] {
            if list[..usize::from(n)].iter().any(|i| *i >= active) {
                return Err(CtrlError::range(ID, name));
            }
        }
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlHevcEntryPointOffset {
    const ID: u32 = V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS;
    const NAME: &'static str = "HEVC Entry Point Offsets";
    const V4L2_TYPE: u32 = ctrl_type::U32;
    const MAX_ELEMS: u32 = HEVC_MAX_ENTRY_POINTS;

    fn default_value() -> Self {
        V4l2CtrlHevcEntryPointOffset(0)
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        // Kernel (visl): min 0, max 0xffffffff, step 1: every value is valid.
        Ok(())
    }
}

/// Menu entries of `V4L2_CID_STATELESS_HEVC_DECODE_MODE`.
pub const HEVC_DECODE_MODE_MENU: &[&str] = &["Slice-Based", "Frame-Based"];
/// Menu entries of `V4L2_CID_STATELESS_HEVC_START_CODE`.
pub const HEVC_START_CODE_MENU: &[&str] = &["No Start Code", "Annex B Start Code"];

/// Every HEVC control, as visl exposes them.
pub static CONTROLS: [CtrlDesc; 8] = [
    CtrlDesc::compound::<V4l2CtrlHevcSps>(),
    CtrlDesc::compound::<V4l2CtrlHevcPps>(),
    CtrlDesc::compound::<V4l2CtrlHevcSliceParams>(),
    CtrlDesc::compound::<V4l2CtrlHevcScalingMatrix>(),
    CtrlDesc::compound::<V4l2CtrlHevcDecodeParams>(),
    CtrlDesc::menu(
        V4L2_CID_STATELESS_HEVC_DECODE_MODE,
        "HEVC Decode Mode",
        HEVC_DECODE_MODE_MENU,
        V4L2_STATELESS_HEVC_DECODE_MODE_SLICE_BASED as i64,
        V4L2_STATELESS_HEVC_DECODE_MODE_FRAME_BASED as i64,
        V4L2_STATELESS_HEVC_DECODE_MODE_SLICE_BASED as i64,
        0,
    ),
    CtrlDesc::menu(
        V4L2_CID_STATELESS_HEVC_START_CODE,
        "HEVC Start Code",
        HEVC_START_CODE_MENU,
        V4L2_STATELESS_HEVC_START_CODE_NONE as i64,
        V4L2_STATELESS_HEVC_START_CODE_ANNEX_B as i64,
        V4L2_STATELESS_HEVC_START_CODE_NONE as i64,
        0,
    ),
    // A U32 array: QUERY_EXT_CTRL reports visl's min 0 / max 0xffffffff / step 1.
    CtrlDesc {
        max: 0xffff_ffff,
        step: 1,
        ..CtrlDesc::compound::<V4l2CtrlHevcEntryPointOffset>()
    },
];

/// The HEVC control family.
pub static CODEC: CodecDesc = CodecDesc {
    codec: Codec::Hevc,
    controls: &CONTROLS,
    reference_timestamps,
};

/// Reference order: `dpb[0..num_active_dpb_entries].timestamp`, in DPB
/// order (the order `poc_*` and `ref_idx_l0/l1` index).
fn reference_timestamps(ctrls: &ControlValues, out: &mut Vec<u64>) {
    let Some(dp) = ctrls.get::<V4l2CtrlHevcDecodeParams>() else {
        return;
    };
    out.extend(dp.active_dpb().iter().map(|e| e.timestamp));
}

/// Checks between controls of one request that per-control validation cannot
/// see: every reference index a slice uses names an active DPB entry.
/// A frontend should call it before handing the request to a decoder.
pub fn check_request(ctrls: &ControlValues) -> Result<(), CtrlError> {
    const ID: u32 = V4L2_CID_STATELESS_HEVC_SLICE_PARAMS;
    let active = ctrls
        .get::<V4l2CtrlHevcDecodeParams>()
        .map_or(0, |d| d.num_active_dpb_entries);
    for s in ctrls.get_array::<V4l2CtrlHevcSliceParams>() {
        if s.uses_l0() {
            let n = usize::from(s.num_ref_idx_l0_active_minus1).min(DPB_MAX - 1) + 1;
            if s.ref_idx_l0[..n].iter().any(|i| *i >= active) {
                return Err(CtrlError::range(ID, "ref_idx_l0"));
            }
        }
        if s.uses_l1() {
            let n = usize::from(s.num_ref_idx_l1_active_minus1).min(DPB_MAX - 1) + 1;
            if s.ref_idx_l1[..n].iter().any(|i| *i >= active) {
                return Err(CtrlError::range(ID, "ref_idx_l1"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctrl::{ctrl_flag, validate_write};
    use zerocopy::IntoBytes;

    const SPS: u32 = V4L2_CID_STATELESS_HEVC_SPS;
    const PPS: u32 = V4L2_CID_STATELESS_HEVC_PPS;
    const SLICE: u32 = V4L2_CID_STATELESS_HEVC_SLICE_PARAMS;
    const DEC: u32 = V4L2_CID_STATELESS_HEVC_DECODE_PARAMS;
    const SM: u32 = V4L2_CID_STATELESS_HEVC_SCALING_MATRIX;
    const EPO: u32 = V4L2_CID_STATELESS_HEVC_ENTRY_POINT_OFFSETS;

    fn write<T: CompoundControl>(v: &T) -> Result<T, CtrlError> {
        validate_write(Codec::Hevc, T::ID, v.as_bytes()).map(|b| T::read_from_bytes(&b).unwrap())
    }

    /// 1080p 4:2:0 8-bit, 64x64 CTBs.
    fn sps() -> V4l2CtrlHevcSps {
        let mut s = V4l2CtrlHevcSps::default_value();
        s.pic_width_in_luma_samples = 1920;
        s.pic_height_in_luma_samples = 1080;
        s.chroma_format_idc = 1;
        s.log2_max_pic_order_cnt_lsb_minus4 = 4;
        s.sps_max_dec_pic_buffering_minus1 = 5;
        s.log2_diff_max_min_luma_coding_block_size = 3;
        s.log2_diff_max_min_luma_transform_block_size = 3;
        s
    }

    /// A B slice with two references in each list.
    fn slice() -> V4l2CtrlHevcSliceParams {
        let mut s = V4l2CtrlHevcSliceParams::default_value();
        s.bit_size = 8000;
        s.data_byte_offset = 10;
        s.slice_type = V4L2_HEVC_SLICE_TYPE_B;
        s.nuh_temporal_id_plus1 = 1;
        s.num_ref_idx_l0_active_minus1 = 1;
        s.num_ref_idx_l1_active_minus1 = 1;
        s.ref_idx_l0[..2].copy_from_slice(&[0, 1]);
        s.ref_idx_l1[..2].copy_from_slice(&[1, 2]);
        s
    }

    fn decode_params() -> V4l2CtrlHevcDecodeParams {
        let mut d = V4l2CtrlHevcDecodeParams::default_value();
        d.num_active_dpb_entries = 3;
        for (i, e) in d.dpb.iter_mut().enumerate() {
            e.timestamp = 1000 + i as u64;
        }
        d.num_poc_st_curr_before = 2;
        d.poc_st_curr_before[..2].copy_from_slice(&[0, 1]);
        d.num_poc_st_curr_after = 1;
        d.poc_st_curr_after[0] = 2;
        d
    }

    #[test]
    fn ids_names_and_flags() {
        assert_eq!(SPS, 0x00a4_0900 + 400);
        assert_eq!(EPO, 0x00a4_0900 + 407);
        let names: Vec<_> = CODEC.controls.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "HEVC Sequence Parameter Set",
                "HEVC Picture Parameter Set",
                "HEVC Slice Parameters",
                "HEVC Scaling Matrix",
                "HEVC Decode Parameters",
                "HEVC Decode Mode",
                "HEVC Start Code",
                "HEVC Entry Point Offsets",
            ]
        );
        let slice = CODEC.find(SLICE).unwrap();
        assert!(slice.is_dynamic_array());
        assert_eq!((slice.max_elems, slice.elem_size), (600, 280));
        let epo = CODEC.find(EPO).unwrap();
        assert_eq!(epo.v4l2_type, ctrl_type::U32);
        assert_eq!(epo.flags, ctrl_flag::HAS_PAYLOAD | ctrl_flag::DYNAMIC_ARRAY);
        assert_eq!(
            (epo.max_elems, epo.elem_size, epo.max, epo.step),
            (256, 4, 0xffff_ffff, 1)
        );
        let dm = CODEC.find(V4L2_CID_STATELESS_HEVC_DECODE_MODE).unwrap();
        assert_eq!(
            (dm.v4l2_type, dm.min, dm.max, dm.default),
            (ctrl_type::MENU, 0, 1, 0)
        );
        assert_eq!(dm.menu, ["Slice-Based", "Frame-Based"]);
        let sc = CODEC.find(V4L2_CID_STATELESS_HEVC_START_CODE).unwrap();
        assert_eq!(sc.menu, ["No Start Code", "Annex B Start Code"]);
        for c in &CODEC.controls[..5] {
            assert!(!c.is_dynamic_array() || c.id == SLICE);
        }
    }

    #[test]
    fn defaults_are_zero_and_validate() {
        let vals = ControlValues::defaults(Codec::Hevc);
        for c in CODEC.controls {
            let b = vals.get_raw(c.id).unwrap();
            if c.is_compound() {
                assert!(b.iter().all(|x| *x == 0), "{}", c.name);
            }
            assert_eq!(
                validate_write(Codec::Hevc, c.id, b).unwrap(),
                b,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn menus() {
        for id in [
            V4L2_CID_STATELESS_HEVC_DECODE_MODE,
            V4L2_CID_STATELESS_HEVC_START_CODE,
        ] {
            assert!(validate_write(Codec::Hevc, id, &1i32.to_le_bytes()).is_ok());
            assert_eq!(
                validate_write(Codec::Hevc, id, &2i32.to_le_bytes()),
                Err(CtrlError::range(id, "value"))
            );
            assert_eq!(
                validate_write(Codec::Hevc, id, &(-1i32).to_le_bytes()),
                Err(CtrlError::range(id, "value"))
            );
        }
    }

    #[test]
    fn kernel_sps_normalisation() {
        let mut s = sps();
        s.pcm_sample_bit_depth_luma_minus1 = 7;
        s.pcm_sample_bit_depth_chroma_minus1 = 7;
        s.log2_min_pcm_luma_coding_block_size_minus3 = 1;
        s.log2_diff_max_min_pcm_luma_coding_block_size = 1;
        s.num_long_term_ref_pics_sps = 3;
        let out = write(&s).unwrap();
        assert_eq!(out.pcm_sample_bit_depth_luma_minus1, 0);
        assert_eq!(out.pcm_sample_bit_depth_chroma_minus1, 0);
        assert_eq!(out.log2_min_pcm_luma_coding_block_size_minus3, 0);
        assert_eq!(out.log2_diff_max_min_pcm_luma_coding_block_size, 0);
        assert_eq!(out.num_long_term_ref_pics_sps, 0);
        s.flags = V4L2_HEVC_SPS_FLAG_PCM_ENABLED | V4L2_HEVC_SPS_FLAG_LONG_TERM_REF_PICS_PRESENT;
        let out = write(&s).unwrap();
        assert_eq!(out.pcm_sample_bit_depth_luma_minus1, 7);
        assert_eq!(out.log2_diff_max_min_pcm_luma_coding_block_size, 1);
        assert_eq!(out.num_long_term_ref_pics_sps, 3);
    }

    #[test]
    fn kernel_pps_normalisation() {
        let mut p = V4l2CtrlHevcPps::default_value();
        p.diff_cu_qp_delta_depth = 2;
        p.num_tile_columns_minus1 = 3;
        p.num_tile_rows_minus1 = 2;
        p.column_width_minus1 = [5; 20];
        p.row_height_minus1 = [6; 22];
        p.pps_beta_offset_div2 = 3;
        p.pps_tc_offset_div2 = -3;
        p.flags = V4L2_HEVC_PPS_FLAG_LOOP_FILTER_ACROSS_TILES_ENABLED
            | V4L2_HEVC_PPS_FLAG_PPS_DISABLE_DEBLOCKING_FILTER;
        let out = write(&p).unwrap();
        assert_eq!(out.diff_cu_qp_delta_depth, 0);
        assert_eq!(
            (out.num_tile_columns_minus1, out.num_tile_rows_minus1),
            (0, 0)
        );
        assert_eq!(out.column_width_minus1, [0; 20]);
        assert_eq!(out.row_height_minus1, [0; 22]);
        assert_eq!(out.flags, V4L2_HEVC_PPS_FLAG_PPS_DISABLE_DEBLOCKING_FILTER);
        assert_eq!((out.pps_beta_offset_div2, out.pps_tc_offset_div2), (0, 0));
        p.flags = V4L2_HEVC_PPS_FLAG_TILES_ENABLED
            | V4L2_HEVC_PPS_FLAG_CU_QP_DELTA_ENABLED
            | V4L2_HEVC_PPS_FLAG_LOOP_FILTER_ACROSS_TILES_ENABLED;
        let out = write(&p).unwrap();
        assert_eq!(out.diff_cu_qp_delta_depth, 2);
        assert_eq!(
            (out.num_tile_columns_minus1, out.num_tile_rows_minus1),
            (3, 2)
        );
        assert_eq!(out.column_width_minus1, [5; 20]);
        assert_eq!((out.pps_beta_offset_div2, out.pps_tc_offset_div2), (3, -3));
        assert_eq!(out.flags, p.flags);
    }

    #[test]
    fn kernel_dpb_limit() {
        let mut d = V4l2CtrlHevcDecodeParams::default_value();
        d.num_active_dpb_entries = 16;
        assert!(write(&d).is_ok());
        d.num_active_dpb_entries = 17;
        assert_eq!(
            write(&d).unwrap_err(),
            CtrlError::range(DEC, "num_active_dpb_entries")
        );
    }

    #[test]
    fn stricter_sps_checks() {
        type M = fn(&mut V4l2CtrlHevcSps);
        let cases: &[(&str, M)] = &[
            ("chroma_format_idc", |s| s.chroma_format_idc = 4),
            ("bit_depth_luma_minus8", |s| s.bit_depth_luma_minus8 = 9),
            ("bit_depth_chroma_minus8", |s| s.bit_depth_chroma_minus8 = 9),
            ("log2_max_pic_order_cnt_lsb_minus4", |s| {
                s.log2_max_pic_order_cnt_lsb_minus4 = 13
            }),
            ("sps_max_dec_pic_buffering_minus1", |s| {
                s.sps_max_dec_pic_buffering_minus1 = 16
            }),
            ("log2_diff_max_min_luma_coding_block_size", |s| {
                s.log2_min_luma_coding_block_size_minus3 = 1
            }),
            ("log2_diff_max_min_luma_transform_block_size", |s| {
                s.log2_diff_max_min_luma_transform_block_size = 4
            }),
            ("max_transform_hierarchy_depth_inter", |s| {
                s.max_transform_hierarchy_depth_inter = 5
            }),
            ("max_transform_hierarchy_depth_intra", |s| {
                s.max_transform_hierarchy_depth_intra = 5
            }),
            ("pcm_sample_bit_depth_luma_minus1", |s| {
                s.flags |= V4L2_HEVC_SPS_FLAG_PCM_ENABLED;
                s.pcm_sample_bit_depth_luma_minus1 = 8;
            }),
            ("pcm_sample_bit_depth_chroma_minus1", |s| {
                s.flags |= V4L2_HEVC_SPS_FLAG_PCM_ENABLED;
                s.pcm_sample_bit_depth_chroma_minus1 = 8;
            }),
            ("log2_diff_max_min_pcm_luma_coding_block_size", |s| {
                s.flags |= V4L2_HEVC_SPS_FLAG_PCM_ENABLED;
                s.log2_min_pcm_luma_coding_block_size_minus3 = 2;
                s.log2_diff_max_min_pcm_luma_coding_block_size = 1;
            }),
            ("num_short_term_ref_pic_sets", |s| {
                s.num_short_term_ref_pic_sets = 65
            }),
            ("num_long_term_ref_pics_sps", |s| {
                s.flags |= V4L2_HEVC_SPS_FLAG_LONG_TERM_REF_PICS_PRESENT;
                s.num_long_term_ref_pics_sps = 33;
            }),
            ("sps_max_sub_layers_minus1", |s| {
                s.sps_max_sub_layers_minus1 = 7
            }),
        ];
        assert!(write(&sps()).is_ok());
        for (field, m) in cases {
            let mut s = sps();
            m(&mut s);
            assert_eq!(
                write(&s).unwrap_err(),
                CtrlError::range(SPS, field),
                "{field}"
            );
        }
    }

    #[test]
    fn stricter_pps_checks() {
        type M = fn(&mut V4l2CtrlHevcPps);
        let cases: &[(&str, M)] = &[
            ("num_tile_columns_minus1", |p| {
                p.flags |= V4L2_HEVC_PPS_FLAG_TILES_ENABLED;
                p.num_tile_columns_minus1 = 20;
            }),
            ("num_tile_rows_minus1", |p| {
                p.flags |= V4L2_HEVC_PPS_FLAG_TILES_ENABLED;
                p.num_tile_rows_minus1 = 22;
            }),
            ("num_ref_idx_l0_default_active_minus1", |p| {
                p.num_ref_idx_l0_default_active_minus1 = 15
            }),
            ("num_ref_idx_l1_default_active_minus1", |p| {
                p.num_ref_idx_l1_default_active_minus1 = 15
            }),
            ("init_qp_minus26", |p| p.init_qp_minus26 = 26),
            ("init_qp_minus26", |p| p.init_qp_minus26 = -75),
            ("diff_cu_qp_delta_depth", |p| {
                p.flags |= V4L2_HEVC_PPS_FLAG_CU_QP_DELTA_ENABLED;
                p.diff_cu_qp_delta_depth = 4;
            }),
            ("pps_cb_qp_offset", |p| p.pps_cb_qp_offset = 13),
            ("pps_cr_qp_offset", |p| p.pps_cr_qp_offset = -13),
            ("pps_beta_offset_div2", |p| p.pps_beta_offset_div2 = 7),
            ("pps_tc_offset_div2", |p| p.pps_tc_offset_div2 = -7),
            ("log2_parallel_merge_level_minus2", |p| {
                p.log2_parallel_merge_level_minus2 = 5
            }),
        ];
        for (field, m) in cases {
            let mut p = V4l2CtrlHevcPps::default_value();
            m(&mut p);
            assert_eq!(
                write(&p).unwrap_err(),
                CtrlError::range(PPS, field),
                "{field}"
            );
        }
        let mut p = V4l2CtrlHevcPps::default_value();
        p.flags |= V4L2_HEVC_PPS_FLAG_TILES_ENABLED;
        p.num_tile_columns_minus1 = 19;
        p.num_tile_rows_minus1 = 21;
        assert!(write(&p).is_ok());
    }

    #[test]
    fn stricter_slice_checks() {
        type M = fn(&mut V4l2CtrlHevcSliceParams);
        let cases: &[(&str, M)] = &[
            ("data_byte_offset", |s| s.data_byte_offset = 1001),
            ("num_entry_point_offsets", |s| {
                s.num_entry_point_offsets = 257
            }),
            ("nal_unit_type", |s| s.nal_unit_type = 64),
            ("nuh_temporal_id_plus1", |s| s.nuh_temporal_id_plus1 = 8),
            ("slice_type", |s| s.slice_type = 3),
            ("colour_plane_id", |s| s.colour_plane_id = 3),
            ("num_ref_idx_l0_active_minus1", |s| {
                s.num_ref_idx_l0_active_minus1 = 15
            }),
            ("num_ref_idx_l1_active_minus1", |s| {
                s.num_ref_idx_l1_active_minus1 = 15
            }),
            ("ref_idx_l0", |s| s.ref_idx_l0[1] = 16),
            ("ref_idx_l1", |s| s.ref_idx_l1[0] = 200),
            ("collocated_ref_idx", |s| s.collocated_ref_idx = 15),
            ("five_minus_max_num_merge_cand", |s| {
                s.five_minus_max_num_merge_cand = 5
            }),
            ("slice_cb_qp_offset", |s| s.slice_cb_qp_offset = 13),
            ("slice_cr_qp_offset", |s| s.slice_cr_qp_offset = -13),
            ("slice_act_y_qp_offset", |s| s.slice_act_y_qp_offset = 13),
            ("slice_act_cb_qp_offset", |s| s.slice_act_cb_qp_offset = 13),
            ("slice_act_cr_qp_offset", |s| s.slice_act_cr_qp_offset = 13),
            ("slice_beta_offset_div2", |s| s.slice_beta_offset_div2 = 7),
            ("slice_tc_offset_div2", |s| s.slice_tc_offset_div2 = -7),
            ("pic_struct", |s| s.pic_struct = 13),
            ("pred_weight_table.luma_log2_weight_denom", |s| {
                s.pred_weight_table.luma_log2_weight_denom = 8
            }),
            ("pred_weight_table.delta_chroma_log2_weight_denom", |s| {
                s.pred_weight_table.luma_log2_weight_denom = 2;
                s.pred_weight_table.delta_chroma_log2_weight_denom = -3;
            }),
            ("pred_weight_table.delta_chroma_log2_weight_denom", |s| {
                s.pred_weight_table.luma_log2_weight_denom = 7;
                s.pred_weight_table.delta_chroma_log2_weight_denom = 1;
            }),
        ];
        assert!(write(&slice()).is_ok());
        for (field, m) in cases {
            let mut s = slice();
            m(&mut s);
            assert_eq!(
                write(&s).unwrap_err(),
                CtrlError::range(SLICE, field),
                "{field}"
            );
        }
        // bit_size 0 (not given): the offset is not compared.
        let mut s = slice();
        s.bit_size = 0;
        assert!(write(&s).is_ok());
        // Unused list entries are not checked: L1 of a P slice, entries past the count.
        let mut s = slice();
        s.slice_type = V4L2_HEVC_SLICE_TYPE_P;
        s.ref_idx_l1 = [255; 16];
        s.ref_idx_l0[2..].fill(255);
        assert!(write(&s).is_ok());
        s.slice_type = V4L2_HEVC_SLICE_TYPE_I;
        s.ref_idx_l0 = [255; 16];
        assert!(write(&s).is_ok());
    }

    #[test]
    fn stricter_decode_params_checks() {
        type M = fn(&mut V4l2CtrlHevcDecodeParams);
        let cases: &[(&str, M)] = &[
            ("num_poc_st_curr_before", |d| d.num_poc_st_curr_before = 17),
            ("num_poc_st_curr_after", |d| d.num_poc_st_curr_after = 17),
            ("num_poc_lt_curr", |d| d.num_poc_lt_curr = 17),
            ("num_poc_lt_curr", |d| {
                d.num_active_dpb_entries = 16;
                d.num_poc_st_curr_before = 8;
                d.num_poc_st_curr_after = 8;
                d.num_poc_lt_curr = 1;
            }),
            ("poc_st_curr_before", |d| d.poc_st_curr_before[1] = 3),
            ("poc_st_curr_after", |d| d.poc_st_curr_after[0] = 3),
            ("poc_lt_curr", |d| {
                d.num_poc_lt_curr = 1;
                d.poc_lt_curr[0] = 16;
            }),
        ];
        assert!(write(&decode_params()).is_ok());
        for (field, m) in cases {
            let mut d = decode_params();
            m(&mut d);
            assert_eq!(
                write(&d).unwrap_err(),
                CtrlError::range(DEC, field),
                "{field}"
            );
        }
    }

    #[test]
    fn wrong_sizes_and_array_limits() {
        for (id, len) in [(SPS, 40usize), (PPS, 64), (DEC, 328), (SM, 1000)] {
            for bad in [0, len - 1] {
                assert!(
                    matches!(
                        validate_write(Codec::Hevc, id, &vec![0; bad]),
                        Err(CtrlError::Size { .. })
                    ),
                    "{id:#x} {bad}"
                );
            }
            // Longer payloads are cut to the control, as the kernel does.
            for long in [len + 1, 2 * len] {
                assert_eq!(
                    validate_write(Codec::Hevc, id, &vec![0; long]),
                    validate_write(Codec::Hevc, id, &vec![0; len]),
                    "{id:#x} {long}"
                );
            }
        }
        // Dynamic arrays: cut to whole elements, 1..=max of them.
        for (id, elem, max) in [(SLICE, 280usize, 600usize), (EPO, 4, 256)] {
            assert!(matches!(
                validate_write(Codec::Hevc, id, &[]),
                Err(CtrlError::Size { .. })
            ));
            assert!(matches!(
                validate_write(Codec::Hevc, id, &vec![0; elem - 1]),
                Err(CtrlError::Size { .. })
            ));
            assert_eq!(
                validate_write(Codec::Hevc, id, &vec![0; elem + 1]),
                validate_write(Codec::Hevc, id, &vec![0; elem])
            );
            assert_eq!(
                validate_write(Codec::Hevc, id, &vec![0; elem * max])
                    .unwrap()
                    .len(),
                elem * max
            );
            assert_eq!(
                validate_write(Codec::Hevc, id, &vec![0; elem * (max + 1)]),
                Err(CtrlError::TooManyElems {
                    id,
                    got: max + 1,
                    max: max as u32
                })
            );
        }
        // Each slice of an array is validated.
        let mut two = slice().as_bytes().to_vec();
        let mut bad = slice();
        bad.slice_type = 7;
        two.extend_from_slice(bad.as_bytes());
        assert_eq!(
            validate_write(Codec::Hevc, SLICE, &two),
            Err(CtrlError::range(SLICE, "slice_type"))
        );
    }

    #[test]
    fn reference_timestamps_are_active_dpb() {
        let mut vals = ControlValues::defaults(Codec::Hevc);
        let mut out = Vec::new();
        (CODEC.reference_timestamps)(&vals, &mut out);
        assert!(out.is_empty());
        vals.set_raw(DEC, decode_params().as_bytes().to_vec());
        (CODEC.reference_timestamps)(&vals, &mut out);
        assert_eq!(out, [1000, 1001, 1002]);
    }

    #[test]
    fn request_check_uses_active_dpb() {
        let mut vals = ControlValues::defaults(Codec::Hevc);
        vals.set_raw(DEC, decode_params().as_bytes().to_vec());
        let mut slices = slice().as_bytes().to_vec();
        vals.set_raw(SLICE, slices.clone());
        assert_eq!(check_request(&vals), Ok(()));
        let mut s = slice();
        s.ref_idx_l1[1] = 3; // only 3 active entries
        slices.extend_from_slice(s.as_bytes());
        vals.set_raw(SLICE, slices);
        assert_eq!(
            check_request(&vals),
            Err(CtrlError::range(SLICE, "ref_idx_l1"))
        );
        let mut s = slice();
        s.ref_idx_l0[0] = 3;
        vals.set_raw(SLICE, s.as_bytes().to_vec());
        assert_eq!(
            check_request(&vals),
            Err(CtrlError::range(SLICE, "ref_idx_l0"))
        );
    }
}
