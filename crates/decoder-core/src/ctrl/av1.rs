//! AV1 stateless controls (Linux 6.12 `V4L2_CID_STATELESS_AV1_*`).
//!
//! Structs and constants are declared through the layout macros of
//! [`super::vp8`], which also feed the layout test. The control set and the
//! tile group entry array size follow visl (and hantro / mediatek).

use super::vp8::{check_range, NewZeroed};
use super::{
    ctrl_type, Codec, CodecDesc, CompoundControl, ControlValues, CtrlDesc, CtrlError,
    V4L2_CID_CODEC_STATELESS_BASE,
};

crate::uapi_consts! {
    V4L2_AV1_TOTAL_REFS_PER_FRAME: u32 = 8;
    V4L2_AV1_CDEF_MAX: u32 = 8;
    V4L2_AV1_NUM_PLANES_MAX: u32 = 3;
    V4L2_AV1_MAX_SEGMENTS: u32 = 8;
    V4L2_AV1_MAX_OPERATING_POINTS: u32 = 1 << 5;
    V4L2_AV1_REFS_PER_FRAME: u32 = 7;
    V4L2_AV1_MAX_NUM_Y_POINTS: u32 = 1 << 4;
    V4L2_AV1_MAX_NUM_CB_POINTS: u32 = 1 << 4;
    V4L2_AV1_MAX_NUM_CR_POINTS: u32 = 1 << 4;
    V4L2_AV1_AR_COEFFS_SIZE: u32 = 25;
    V4L2_AV1_MAX_NUM_PLANES: u32 = 3;
    V4L2_AV1_MAX_TILE_COLS: u32 = 64;
    V4L2_AV1_MAX_TILE_ROWS: u32 = 64;
    V4L2_AV1_MAX_TILE_COUNT: u32 = 512;
    V4L2_AV1_SEQUENCE_FLAG_STILL_PICTURE: u32 = 0x00000001;
    V4L2_AV1_SEQUENCE_FLAG_USE_128X128_SUPERBLOCK: u32 = 0x00000002;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_FILTER_INTRA: u32 = 0x00000004;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_INTRA_EDGE_FILTER: u32 = 0x00000008;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_INTERINTRA_COMPOUND: u32 = 0x00000010;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_MASKED_COMPOUND: u32 = 0x00000020;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_WARPED_MOTION: u32 = 0x00000040;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_DUAL_FILTER: u32 = 0x00000080;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_ORDER_HINT: u32 = 0x00000100;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_JNT_COMP: u32 = 0x00000200;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_REF_FRAME_MVS: u32 = 0x00000400;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_SUPERRES: u32 = 0x00000800;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_CDEF: u32 = 0x00001000;
    V4L2_AV1_SEQUENCE_FLAG_ENABLE_RESTORATION: u32 = 0x00002000;
    V4L2_AV1_SEQUENCE_FLAG_MONO_CHROME: u32 = 0x00004000;
    V4L2_AV1_SEQUENCE_FLAG_COLOR_RANGE: u32 = 0x00008000;
    V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_X: u32 = 0x00010000;
    V4L2_AV1_SEQUENCE_FLAG_SUBSAMPLING_Y: u32 = 0x00020000;
    V4L2_AV1_SEQUENCE_FLAG_FILM_GRAIN_PARAMS_PRESENT: u32 = 0x00040000;
    V4L2_AV1_SEQUENCE_FLAG_SEPARATE_UV_DELTA_Q: u32 = 0x00080000;
    V4L2_CID_STATELESS_AV1_SEQUENCE: u32 = V4L2_CID_CODEC_STATELESS_BASE + 500;
    V4L2_CID_STATELESS_AV1_TILE_GROUP_ENTRY: u32 = V4L2_CID_CODEC_STATELESS_BASE + 501;
    V4L2_AV1_WARP_MODEL_IDENTITY: u32 = 0;
    V4L2_AV1_WARP_MODEL_TRANSLATION: u32 = 1;
    V4L2_AV1_WARP_MODEL_ROTZOOM: u32 = 2;
    V4L2_AV1_WARP_MODEL_AFFINE: u32 = 3;
    V4L2_AV1_REF_INTRA_FRAME: u32 = 0;
    V4L2_AV1_REF_LAST_FRAME: u32 = 1;
    V4L2_AV1_REF_LAST2_FRAME: u32 = 2;
    V4L2_AV1_REF_LAST3_FRAME: u32 = 3;
    V4L2_AV1_REF_GOLDEN_FRAME: u32 = 4;
    V4L2_AV1_REF_BWDREF_FRAME: u32 = 5;
    V4L2_AV1_REF_ALTREF2_FRAME: u32 = 6;
    V4L2_AV1_REF_ALTREF_FRAME: u32 = 7;
    V4L2_AV1_GLOBAL_MOTION_FLAG_IS_GLOBAL: u8 = 0x1;
    V4L2_AV1_GLOBAL_MOTION_FLAG_IS_ROT_ZOOM: u8 = 0x2;
    V4L2_AV1_GLOBAL_MOTION_FLAG_IS_TRANSLATION: u8 = 0x4;
    V4L2_AV1_FRAME_RESTORE_NONE: u32 = 0;
    V4L2_AV1_FRAME_RESTORE_WIENER: u32 = 1;
    V4L2_AV1_FRAME_RESTORE_SGRPROJ: u32 = 2;
    V4L2_AV1_FRAME_RESTORE_SWITCHABLE: u32 = 3;
    V4L2_AV1_LOOP_RESTORATION_FLAG_USES_LR: u8 = 0x1;
    V4L2_AV1_LOOP_RESTORATION_FLAG_USES_CHROMA_LR: u8 = 0x2;
    V4L2_AV1_SEGMENTATION_FLAG_ENABLED: u8 = 0x1;
    V4L2_AV1_SEGMENTATION_FLAG_UPDATE_MAP: u8 = 0x2;
    V4L2_AV1_SEGMENTATION_FLAG_TEMPORAL_UPDATE: u8 = 0x4;
    V4L2_AV1_SEGMENTATION_FLAG_UPDATE_DATA: u8 = 0x8;
    V4L2_AV1_SEGMENTATION_FLAG_SEG_ID_PRE_SKIP: u8 = 0x10;
    V4L2_AV1_SEG_LVL_ALT_Q: u32 = 0;
    V4L2_AV1_SEG_LVL_ALT_LF_Y_V: u32 = 1;
    V4L2_AV1_SEG_LVL_REF_FRAME: u32 = 5;
    V4L2_AV1_SEG_LVL_REF_SKIP: u32 = 6;
    V4L2_AV1_SEG_LVL_REF_GLOBALMV: u32 = 7;
    V4L2_AV1_SEG_LVL_MAX: u32 = 8;
    V4L2_AV1_LOOP_FILTER_FLAG_DELTA_ENABLED: u8 = 0x1;
    V4L2_AV1_LOOP_FILTER_FLAG_DELTA_UPDATE: u8 = 0x2;
    V4L2_AV1_LOOP_FILTER_FLAG_DELTA_LF_PRESENT: u8 = 0x4;
    V4L2_AV1_LOOP_FILTER_FLAG_DELTA_LF_MULTI: u8 = 0x8;
    V4L2_AV1_QUANTIZATION_FLAG_DIFF_UV_DELTA: u8 = 0x1;
    V4L2_AV1_QUANTIZATION_FLAG_USING_QMATRIX: u8 = 0x2;
    V4L2_AV1_QUANTIZATION_FLAG_DELTA_Q_PRESENT: u8 = 0x4;
    V4L2_AV1_TILE_INFO_FLAG_UNIFORM_TILE_SPACING: u8 = 0x1;
    V4L2_AV1_KEY_FRAME: u32 = 0;
    V4L2_AV1_INTER_FRAME: u32 = 1;
    V4L2_AV1_INTRA_ONLY_FRAME: u32 = 2;
    V4L2_AV1_SWITCH_FRAME: u32 = 3;
    V4L2_AV1_INTERPOLATION_FILTER_EIGHTTAP: u32 = 0;
    V4L2_AV1_INTERPOLATION_FILTER_EIGHTTAP_SMOOTH: u32 = 1;
    V4L2_AV1_INTERPOLATION_FILTER_EIGHTTAP_SHARP: u32 = 2;
    V4L2_AV1_INTERPOLATION_FILTER_BILINEAR: u32 = 3;
    V4L2_AV1_INTERPOLATION_FILTER_SWITCHABLE: u32 = 4;
    V4L2_AV1_TX_MODE_ONLY_4X4: u32 = 0;
    V4L2_AV1_TX_MODE_LARGEST: u32 = 1;
    V4L2_AV1_TX_MODE_SELECT: u32 = 2;
    V4L2_AV1_FRAME_FLAG_SHOW_FRAME: u32 = 0x00000001;
    V4L2_AV1_FRAME_FLAG_SHOWABLE_FRAME: u32 = 0x00000002;
    V4L2_AV1_FRAME_FLAG_ERROR_RESILIENT_MODE: u32 = 0x00000004;
    V4L2_AV1_FRAME_FLAG_DISABLE_CDF_UPDATE: u32 = 0x00000008;
    V4L2_AV1_FRAME_FLAG_ALLOW_SCREEN_CONTENT_TOOLS: u32 = 0x00000010;
    V4L2_AV1_FRAME_FLAG_FORCE_INTEGER_MV: u32 = 0x00000020;
    V4L2_AV1_FRAME_FLAG_ALLOW_INTRABC: u32 = 0x00000040;
    V4L2_AV1_FRAME_FLAG_USE_SUPERRES: u32 = 0x00000080;
    V4L2_AV1_FRAME_FLAG_ALLOW_HIGH_PRECISION_MV: u32 = 0x00000100;
    V4L2_AV1_FRAME_FLAG_IS_MOTION_MODE_SWITCHABLE: u32 = 0x00000200;
    V4L2_AV1_FRAME_FLAG_USE_REF_FRAME_MVS: u32 = 0x00000400;
    V4L2_AV1_FRAME_FLAG_DISABLE_FRAME_END_UPDATE_CDF: u32 = 0x00000800;
    V4L2_AV1_FRAME_FLAG_ALLOW_WARPED_MOTION: u32 = 0x00001000;
    V4L2_AV1_FRAME_FLAG_REFERENCE_SELECT: u32 = 0x00002000;
    V4L2_AV1_FRAME_FLAG_REDUCED_TX_SET: u32 = 0x00004000;
    V4L2_AV1_FRAME_FLAG_SKIP_MODE_ALLOWED: u32 = 0x00008000;
    V4L2_AV1_FRAME_FLAG_SKIP_MODE_PRESENT: u32 = 0x00010000;
    V4L2_AV1_FRAME_FLAG_FRAME_SIZE_OVERRIDE: u32 = 0x00020000;
    V4L2_AV1_FRAME_FLAG_BUFFER_REMOVAL_TIME_PRESENT: u32 = 0x00040000;
    V4L2_AV1_FRAME_FLAG_FRAME_REFS_SHORT_SIGNALING: u32 = 0x00080000;
    V4L2_CID_STATELESS_AV1_FRAME: u32 = V4L2_CID_CODEC_STATELESS_BASE + 502;
    V4L2_AV1_FILM_GRAIN_FLAG_APPLY_GRAIN: u8 = 0x1;
    V4L2_AV1_FILM_GRAIN_FLAG_UPDATE_GRAIN: u8 = 0x2;
    V4L2_AV1_FILM_GRAIN_FLAG_CHROMA_SCALING_FROM_LUMA: u8 = 0x4;
    V4L2_AV1_FILM_GRAIN_FLAG_OVERLAP: u8 = 0x8;
    V4L2_AV1_FILM_GRAIN_FLAG_CLIP_TO_RESTRICTED_RANGE: u8 = 0x10;
    V4L2_CID_STATELESS_AV1_FILM_GRAIN: u32 = V4L2_CID_CODEC_STATELESS_BASE + 505;
}

crate::uapi_structs! {
    /// `struct v4l2_ctrl_av1_sequence`.
    "v4l2_ctrl_av1_sequence" pub struct V4l2CtrlAv1Sequence {
        pub flags: u32,
        pub seq_profile: u8,
        pub order_hint_bits: u8,
        pub bit_depth: u8,
        pub reserved: u8,
        pub max_frame_width_minus_1: u16,
        pub max_frame_height_minus_1: u16,
    }
    /// `struct v4l2_ctrl_av1_tile_group_entry`.
    "v4l2_ctrl_av1_tile_group_entry" pub struct V4l2CtrlAv1TileGroupEntry {
        pub tile_offset: u32,
        pub tile_size: u32,
        pub tile_row: u32,
        pub tile_col: u32,
    }
    /// `struct v4l2_av1_global_motion`.
    "v4l2_av1_global_motion" pub struct V4l2Av1GlobalMotion {
        pub flags: [u8; V4L2_AV1_TOTAL_REFS_PER_FRAME as usize],
        pub r#type: [u32; V4L2_AV1_TOTAL_REFS_PER_FRAME as usize],
        pub params: [[i32; 6]; V4L2_AV1_TOTAL_REFS_PER_FRAME as usize],
        pub invalid: u8,
        pub reserved: [u8; 3],
    }
    /// `struct v4l2_av1_loop_restoration`.
    "v4l2_av1_loop_restoration" pub struct V4l2Av1LoopRestoration {
        pub flags: u8,
        pub lr_unit_shift: u8,
        pub lr_uv_shift: u8,
        pub reserved: u8,
        pub frame_restoration_type: [u32; V4L2_AV1_NUM_PLANES_MAX as usize],
        pub loop_restoration_size: [u32; V4L2_AV1_MAX_NUM_PLANES as usize],
    }
    /// `struct v4l2_av1_cdef`.
    "v4l2_av1_cdef" pub struct V4l2Av1Cdef {
        pub damping_minus_3: u8,
        pub bits: u8,
        pub y_pri_strength: [u8; V4L2_AV1_CDEF_MAX as usize],
        pub y_sec_strength: [u8; V4L2_AV1_CDEF_MAX as usize],
        pub uv_pri_strength: [u8; V4L2_AV1_CDEF_MAX as usize],
        pub uv_sec_strength: [u8; V4L2_AV1_CDEF_MAX as usize],
    }
    /// `struct v4l2_av1_segmentation`.
    "v4l2_av1_segmentation" pub struct V4l2Av1Segmentation {
        pub flags: u8,
        pub last_active_seg_id: u8,
        pub feature_enabled: [u8; V4L2_AV1_MAX_SEGMENTS as usize],
        pub feature_data: [[i16; V4L2_AV1_SEG_LVL_MAX as usize]; V4L2_AV1_MAX_SEGMENTS as usize],
    }
    /// `struct v4l2_av1_loop_filter`.
    "v4l2_av1_loop_filter" pub struct V4l2Av1LoopFilter {
        pub flags: u8,
        pub level: [u8; 4],
        pub sharpness: u8,
        pub ref_deltas: [i8; V4L2_AV1_TOTAL_REFS_PER_FRAME as usize],
        pub mode_deltas: [i8; 2],
        pub delta_lf_res: u8,
    }
    /// `struct v4l2_av1_quantization`.
    "v4l2_av1_quantization" pub struct V4l2Av1Quantization {
        pub flags: u8,
        pub base_q_idx: u8,
        pub delta_q_y_dc: i8,
        pub delta_q_u_dc: i8,
        pub delta_q_u_ac: i8,
        pub delta_q_v_dc: i8,
        pub delta_q_v_ac: i8,
        pub qm_y: u8,
        pub qm_u: u8,
        pub qm_v: u8,
        pub delta_q_res: u8,
    }
    /// `struct v4l2_av1_tile_info`.
    "v4l2_av1_tile_info" pub struct V4l2Av1TileInfo {
        pub flags: u8,
        pub context_update_tile_id: u8,
        pub tile_cols: u8,
        pub tile_rows: u8,
        pub mi_col_starts: [u32; (V4L2_AV1_MAX_TILE_COLS + 1) as usize],
        pub mi_row_starts: [u32; (V4L2_AV1_MAX_TILE_ROWS + 1) as usize],
        pub width_in_sbs_minus_1: [u32; V4L2_AV1_MAX_TILE_COLS as usize],
        pub height_in_sbs_minus_1: [u32; V4L2_AV1_MAX_TILE_ROWS as usize],
        pub tile_size_bytes: u8,
        pub reserved: [u8; 3],
    }
    /// `struct v4l2_ctrl_av1_frame`.
    "v4l2_ctrl_av1_frame" pub struct V4l2CtrlAv1Frame {
        pub tile_info: V4l2Av1TileInfo,
        pub quantization: V4l2Av1Quantization,
        pub superres_denom: u8,
        pub segmentation: V4l2Av1Segmentation,
        pub loop_filter: V4l2Av1LoopFilter,
        pub cdef: V4l2Av1Cdef,
        pub skip_mode_frame: [u8; 2],
        pub primary_ref_frame: u8,
        pub loop_restoration: V4l2Av1LoopRestoration,
        pub global_motion: V4l2Av1GlobalMotion,
        pub flags: u32,
        pub frame_type: u32,
        pub order_hint: u32,
        pub upscaled_width: u32,
        pub interpolation_filter: u32,
        pub tx_mode: u32,
        pub frame_width_minus_1: u32,
        pub frame_height_minus_1: u32,
        pub render_width_minus_1: u16,
        pub render_height_minus_1: u16,
        pub current_frame_id: u32,
        pub buffer_removal_time: [u32; V4L2_AV1_MAX_OPERATING_POINTS as usize],
        pub reserved: [u8; 4],
        pub order_hints: [u32; V4L2_AV1_TOTAL_REFS_PER_FRAME as usize],
        pub reference_frame_ts: [u64; V4L2_AV1_TOTAL_REFS_PER_FRAME as usize],
        pub ref_frame_idx: [i8; V4L2_AV1_REFS_PER_FRAME as usize],
        pub refresh_frame_flags: u8,
    }
    /// `struct v4l2_ctrl_av1_film_grain`.
    "v4l2_ctrl_av1_film_grain" pub struct V4l2CtrlAv1FilmGrain {
        pub flags: u8,
        pub cr_mult: u8,
        pub grain_seed: u16,
        pub film_grain_params_ref_idx: u8,
        pub num_y_points: u8,
        pub point_y_value: [u8; V4L2_AV1_MAX_NUM_Y_POINTS as usize],
        pub point_y_scaling: [u8; V4L2_AV1_MAX_NUM_Y_POINTS as usize],
        pub num_cb_points: u8,
        pub point_cb_value: [u8; V4L2_AV1_MAX_NUM_CB_POINTS as usize],
        pub point_cb_scaling: [u8; V4L2_AV1_MAX_NUM_CB_POINTS as usize],
        pub num_cr_points: u8,
        pub point_cr_value: [u8; V4L2_AV1_MAX_NUM_CR_POINTS as usize],
        pub point_cr_scaling: [u8; V4L2_AV1_MAX_NUM_CR_POINTS as usize],
        pub grain_scaling_minus_8: u8,
        pub ar_coeff_lag: u8,
        pub ar_coeffs_y_plus_128: [u8; V4L2_AV1_AR_COEFFS_SIZE as usize],
        pub ar_coeffs_cb_plus_128: [u8; V4L2_AV1_AR_COEFFS_SIZE as usize],
        pub ar_coeffs_cr_plus_128: [u8; V4L2_AV1_AR_COEFFS_SIZE as usize],
        pub ar_coeff_shift_minus_6: u8,
        pub grain_scale_shift: u8,
        pub cb_mult: u8,
        pub cb_luma_mult: u8,
        pub cr_luma_mult: u8,
        pub cb_offset: u16,
        pub cr_offset: u16,
        pub reserved: [u8; 4],
    }
}

// Sizes from the linux-libc-dev 6.12 headers (also checked field by field by
// tests/ctrl_layout_others.rs).
const _: () = assert!(core::mem::size_of::<V4l2CtrlAv1Sequence>() == 12);
const _: () = assert!(core::mem::size_of::<V4l2CtrlAv1TileGroupEntry>() == 16);
const _: () = assert!(core::mem::size_of::<V4l2Av1GlobalMotion>() == 236);
const _: () = assert!(core::mem::size_of::<V4l2Av1LoopRestoration>() == 28);
const _: () = assert!(core::mem::size_of::<V4l2Av1Cdef>() == 34);
const _: () = assert!(core::mem::size_of::<V4l2Av1Segmentation>() == 138);
const _: () = assert!(core::mem::size_of::<V4l2Av1LoopFilter>() == 17);
const _: () = assert!(core::mem::size_of::<V4l2Av1Quantization>() == 11);
const _: () = assert!(core::mem::size_of::<V4l2Av1TileInfo>() == 1040);
const _: () = assert!(core::mem::size_of::<V4l2CtrlAv1Frame>() == 1784);
const _: () = assert!(core::mem::size_of::<V4l2CtrlAv1FilmGrain>() == 194);

/// Maximum tile group entries per request (`V4L2_AV1_MAX_TILE_COUNT`, the
/// dims visl, hantro and mediatek use).
pub const AV1_MAX_TILE_GROUP_ENTRIES: u32 = V4L2_AV1_MAX_TILE_COUNT;

/// `PRIMARY_REF_NONE` of the AV1 specification.
pub const AV1_PRIMARY_REF_NONE: u8 = 7;

/// C names of the controls of this module, for the layout test:
/// (id, `V4L2_CID_*`, `V4L2_CTRL_TYPE_*`, C type of one element).
pub const CONTROL_C_NAMES: &[(u32, &str, &str, &str)] = &[
    (
        V4L2_CID_STATELESS_AV1_SEQUENCE,
        "V4L2_CID_STATELESS_AV1_SEQUENCE",
        "V4L2_CTRL_TYPE_AV1_SEQUENCE",
        "struct v4l2_ctrl_av1_sequence",
    ),
    (
        V4L2_CID_STATELESS_AV1_TILE_GROUP_ENTRY,
        "V4L2_CID_STATELESS_AV1_TILE_GROUP_ENTRY",
        "V4L2_CTRL_TYPE_AV1_TILE_GROUP_ENTRY",
        "struct v4l2_ctrl_av1_tile_group_entry",
    ),
    (
        V4L2_CID_STATELESS_AV1_FRAME,
        "V4L2_CID_STATELESS_AV1_FRAME",
        "V4L2_CTRL_TYPE_AV1_FRAME",
        "struct v4l2_ctrl_av1_frame",
    ),
    (
        V4L2_CID_STATELESS_AV1_FILM_GRAIN,
        "V4L2_CID_STATELESS_AV1_FILM_GRAIN",
        "V4L2_CTRL_TYPE_AV1_FILM_GRAIN",
        "struct v4l2_ctrl_av1_film_grain",
    ),
];

impl CompoundControl for V4l2CtrlAv1Sequence {
    const ID: u32 = V4L2_CID_STATELESS_AV1_SEQUENCE;
    const NAME: &'static str = "AV1 Sequence Parameters";
    const V4L2_TYPE: u32 = ctrl_type::AV1_SEQUENCE;

    fn default_value() -> Self {
        // std_init_compound: 8-bit.
        let mut v = Self::new_zeroed_value();
        v.bit_depth = 8;
        v
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_AV1_SEQUENCE;
        // Kernel validate_av1_sequence.
        if self.flags & !(V4L2_AV1_SEQUENCE_FLAG_SEPARATE_UV_DELTA_Q * 2 - 1) != 0 {
            return Err(CtrlError::range(ID, "flags"));
        }
        if self.seq_profile == 1 && self.flags & V4L2_AV1_SEQUENCE_FLAG_MONO_CHROME != 0 {
            return Err(CtrlError::range(ID, "flags"));
        }
        check_range(ID, "seq_profile", self.seq_profile, 0, 2)?;
        // Stricter: 8/10/12-bit only; bounds sample sizes, shifts and clipping tables.
        if !matches!(self.bit_depth, 8 | 10 | 12) {
            return Err(CtrlError::range(ID, "bit_depth"));
        }
        // Stricter: OrderHintBits <= 8 keeps get_relative_dist's shifts in range.
        check_range(ID, "order_hint_bits", self.order_hint_bits, 0, 8)?;
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlAv1TileGroupEntry {
    const ID: u32 = V4L2_CID_STATELESS_AV1_TILE_GROUP_ENTRY;
    const NAME: &'static str = "AV1 Tile Group Entry";
    const V4L2_TYPE: u32 = ctrl_type::AV1_TILE_GROUP_ENTRY;
    const MAX_ELEMS: u32 = AV1_MAX_TILE_GROUP_ENTRIES;

    fn default_value() -> Self {
        Self::new_zeroed_value()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        // Kernel: nothing. Everything below is stricter.
        const ID: u32 = V4L2_CID_STATELESS_AV1_TILE_GROUP_ENTRY;
        // Stricter: tile_row/tile_col index per-tile arrays of 64 rows/columns.
        check_range(ID, "tile_row", self.tile_row, 0, V4L2_AV1_MAX_TILE_ROWS - 1)?;
        check_range(ID, "tile_col", self.tile_col, 0, V4L2_AV1_MAX_TILE_COLS - 1)?;
        // Stricter: the tile's end offset is computed without u32 overflow.
        if self.tile_offset.checked_add(self.tile_size).is_none() {
            return Err(CtrlError::range(ID, "tile_size"));
        }
        Ok(())
    }
}

impl V4l2CtrlAv1Frame {
    /// True for key and intra-only frames (`FrameIsIntra`): they predict
    /// from no reference.
    pub fn is_intra(&self) -> bool {
        matches!(
            self.frame_type,
            V4L2_AV1_KEY_FRAME | V4L2_AV1_INTRA_ONLY_FRAME
        )
    }

    /// `MiCols` of the (downscaled) frame.
    pub fn mi_cols(&self) -> u64 {
        2 * ((u64::from(self.frame_width_minus_1) + 8) >> 3)
    }

    /// `MiRows` of the frame.
    pub fn mi_rows(&self) -> u64 {
        2 * ((u64::from(self.frame_height_minus_1) + 8) >> 3)
    }

    /// Kernel validate_av1_quantization.
    fn validate_quantization(&self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_AV1_FRAME;
        let q = &self.quantization;
        check_range(ID, "quantization.flags", q.flags, 0, 7)?;
        for (name, d) in [
            ("quantization.delta_q_y_dc", q.delta_q_y_dc),
            ("quantization.delta_q_u_dc", q.delta_q_u_dc),
            ("quantization.delta_q_v_dc", q.delta_q_v_dc),
            ("quantization.delta_q_u_ac", q.delta_q_u_ac),
            ("quantization.delta_q_v_ac", q.delta_q_v_ac),
        ] {
            check_range(ID, name, d, -64, 63)?;
        }
        check_range(ID, "quantization.delta_q_res", q.delta_q_res, 0, 3)?;
        check_range(ID, "quantization.qm_y", q.qm_y, 0, 15)?;
        check_range(ID, "quantization.qm_u", q.qm_u, 0, 15)?;
        check_range(ID, "quantization.qm_v", q.qm_v, 0, 15)
    }

    /// Kernel validate_av1_segmentation.
    fn validate_segmentation(&self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_AV1_FRAME;
        let s = &self.segmentation;
        check_range(ID, "segmentation.flags", s.flags, 0, 31)?;
        // Per feature: signed?, maximum magnitude.
        const LIMITS: [(bool, i16); 8] = [
            (true, 255),
            (true, 63),
            (true, 63),
            (true, 63),
            (true, 63),
            (false, 7),
            (false, 0),
            (false, 0),
        ];
        for seg in s.feature_data {
            for (v, (signed, max)) in seg.into_iter().zip(LIMITS) {
                let min = if signed { -max } else { 0 };
                check_range(ID, "segmentation.feature_data", v, min, max)?;
            }
        }
        Ok(())
    }

    /// Kernel validate_av1_loop_filter.
    fn validate_loop_filter(&self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_AV1_FRAME;
        let lf = &self.loop_filter;
        check_range(ID, "loop_filter.flags", lf.flags, 0, 15)?;
        for l in lf.level {
            check_range(ID, "loop_filter.level", l, 0, 63)?;
        }
        check_range(ID, "loop_filter.sharpness", lf.sharpness, 0, 7)?;
        for d in lf.ref_deltas {
            check_range(ID, "loop_filter.ref_deltas", d, -64, 63)?;
        }
        for d in lf.mode_deltas {
            check_range(ID, "loop_filter.mode_deltas", d, -64, 63)?;
        }
        Ok(())
    }

    /// Kernel validate_av1_cdef.
    fn validate_cdef(&self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_AV1_FRAME;
        let c = &self.cdef;
        check_range(ID, "cdef.damping_minus_3", c.damping_minus_3, 0, 3)?;
        check_range(ID, "cdef.bits", c.bits, 0, 3)?;
        for i in 0..1usize << c.bits {
            check_range(ID, "cdef.y_pri_strength", c.y_pri_strength[i], 0, 15)?;
            check_range(ID, "cdef.y_sec_strength", c.y_sec_strength[i], 0, 4)?;
            check_range(ID, "cdef.uv_pri_strength", c.uv_pri_strength[i], 0, 15)?;
            check_range(ID, "cdef.uv_sec_strength", c.uv_sec_strength[i], 0, 4)?;
        }
        Ok(())
    }

    /// Stricter tile checks: everything a consumer walks per tile.
    fn validate_tile_info(&self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_AV1_FRAME;
        let t = &self.tile_info;
        // Stricter: tile counts bound loops over mi_col/row_starts[65] and width/height_in_sbs_minus_1[64].
        check_range(
            ID,
            "tile_info.tile_cols",
            u32::from(t.tile_cols),
            0,
            V4L2_AV1_MAX_TILE_COLS,
        )?;
        check_range(
            ID,
            "tile_info.tile_rows",
            u32::from(t.tile_rows),
            0,
            V4L2_AV1_MAX_TILE_ROWS,
        )?;
        // Stricter: at most V4L2_AV1_MAX_TILE_COUNT tiles, the size of per-tile arrays (tile group entries).
        let tiles = u32::from(t.tile_cols) * u32::from(t.tile_rows);
        check_range(ID, "tile_info.tile_rows", tiles, 0, V4L2_AV1_MAX_TILE_COUNT)?;
        // Stricter: the tile whose CDFs are saved exists.
        if u32::from(t.context_update_tile_id) >= tiles.max(1) {
            return Err(CtrlError::range(ID, "tile_info.context_update_tile_id"));
        }
        // Stricter: tile boundaries increase and stay inside the frame, so every tile is non-empty
        // and per-tile loops over mode-info units never leave the frame.
        let cols = usize::from(t.tile_cols);
        if cols > 0 {
            let starts = &t.mi_col_starts[..=cols];
            if starts.windows(2).any(|w| w[0] >= w[1]) || u64::from(starts[cols]) > self.mi_cols() {
                return Err(CtrlError::range(ID, "tile_info.mi_col_starts"));
            }
            let max_sbs = self.mi_cols();
            if t.width_in_sbs_minus_1[..cols]
                .iter()
                .any(|w| u64::from(*w) >= max_sbs)
            {
                return Err(CtrlError::range(ID, "tile_info.width_in_sbs_minus_1"));
            }
        }
        let rows = usize::from(t.tile_rows);
        if rows > 0 {
            let starts = &t.mi_row_starts[..=rows];
            if starts.windows(2).any(|w| w[0] >= w[1]) || u64::from(starts[rows]) > self.mi_rows() {
                return Err(CtrlError::range(ID, "tile_info.mi_row_starts"));
            }
            let max_sbs = self.mi_rows();
            if t.height_in_sbs_minus_1[..rows]
                .iter()
                .any(|h| u64::from(*h) >= max_sbs)
            {
                return Err(CtrlError::range(ID, "tile_info.height_in_sbs_minus_1"));
            }
        }
        // Stricter: tile sizes are coded on 1..=4 bytes (read into a u32).
        check_range(ID, "tile_info.tile_size_bytes", t.tile_size_bytes, 0, 4)?;
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlAv1Frame {
    const ID: u32 = V4L2_CID_STATELESS_AV1_FRAME;
    const NAME: &'static str = "AV1 Frame Parameters";
    const V4L2_TYPE: u32 = ctrl_type::AV1_FRAME;

    fn default_value() -> Self {
        Self::new_zeroed_value()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_AV1_FRAME;
        // Kernel validate_av1_frame, in its order.
        self.validate_quantization()?;
        self.validate_segmentation()?;
        self.validate_loop_filter()?;
        self.validate_cdef()?;
        check_range(
            ID,
            "loop_restoration.lr_unit_shift",
            self.loop_restoration.lr_unit_shift,
            0,
            3,
        )?;
        check_range(
            ID,
            "loop_restoration.lr_uv_shift",
            self.loop_restoration.lr_uv_shift,
            0,
            1,
        )?;
        if self.flags & !(V4L2_AV1_FRAME_FLAG_FRAME_REFS_SHORT_SIGNALING * 2 - 1) != 0 {
            return Err(CtrlError::range(ID, "flags"));
        }
        check_range(ID, "superres_denom", self.superres_denom, 0, 16)?;

        // Stricter: superres divides by the denominator (9..=16 when used).
        if self.flags & V4L2_AV1_FRAME_FLAG_USE_SUPERRES != 0 {
            check_range(ID, "superres_denom", self.superres_denom, 9, 16)?;
        }
        self.validate_tile_info()?;
        // Stricter: enums index per-type tables.
        check_range(ID, "frame_type", self.frame_type, 0, V4L2_AV1_SWITCH_FRAME)?;
        check_range(
            ID,
            "interpolation_filter",
            self.interpolation_filter,
            0,
            V4L2_AV1_INTERPOLATION_FILTER_SWITCHABLE,
        )?;
        check_range(ID, "tx_mode", self.tx_mode, 0, V4L2_AV1_TX_MODE_SELECT)?;
        for t in self.global_motion.r#type {
            check_range(ID, "global_motion.type", t, 0, V4L2_AV1_WARP_MODEL_AFFINE)?;
        }
        // Stricter: restoration types index per-type tables; a used plane divides by its unit size.
        let lr = &self.loop_restoration;
        for (t, size) in lr
            .frame_restoration_type
            .into_iter()
            .zip(lr.loop_restoration_size)
        {
            check_range(
                ID,
                "loop_restoration.frame_restoration_type",
                t,
                0,
                V4L2_AV1_FRAME_RESTORE_SWITCHABLE,
            )?;
            if t != V4L2_AV1_FRAME_RESTORE_NONE && !matches!(size, 32 | 64 | 128 | 256) {
                return Err(CtrlError::range(
                    ID,
                    "loop_restoration.loop_restoration_size",
                ));
            }
        }
        // Stricter: last_active_seg_id indexes the 8 segments.
        check_range(
            ID,
            "segmentation.last_active_seg_id",
            self.segmentation.last_active_seg_id,
            0,
            V4L2_AV1_MAX_SEGMENTS as u8 - 1,
        )?;
        // Stricter: delta_lf_res is a 2-bit shift.
        check_range(
            ID,
            "loop_filter.delta_lf_res",
            self.loop_filter.delta_lf_res,
            0,
            3,
        )?;
        // Stricter: primary_ref_frame indexes ref_frame_idx[7] (7 = none).
        check_range(
            ID,
            "primary_ref_frame",
            self.primary_ref_frame,
            0,
            AV1_PRIMARY_REF_NONE,
        )?;
        // Stricter: skip-mode references are reference types (0..=7) indexing 8-entry arrays.
        for r in self.skip_mode_frame {
            check_range(
                ID,
                "skip_mode_frame",
                u32::from(r),
                0,
                V4L2_AV1_REF_ALTREF_FRAME,
            )?;
        }
        // Stricter: order hints have at most 8 bits (relative-distance arithmetic).
        check_range(ID, "order_hint", self.order_hint, 0, 255)?;
        for h in self.order_hints {
            check_range(ID, "order_hints", h, 0, 255)?;
        }
        // Stricter: an inter frame's references index the 8 reference slots.
        if !self.is_intra() {
            for i in self.ref_frame_idx {
                check_range(
                    ID,
                    "ref_frame_idx",
                    i,
                    0,
                    V4L2_AV1_TOTAL_REFS_PER_FRAME as i8 - 1,
                )?;
            }
        }
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlAv1FilmGrain {
    const ID: u32 = V4L2_CID_STATELESS_AV1_FILM_GRAIN;
    const NAME: &'static str = "AV1 Film Grain";
    const V4L2_TYPE: u32 = ctrl_type::AV1_FILM_GRAIN;

    fn default_value() -> Self {
        Self::new_zeroed_value()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_AV1_FILM_GRAIN;
        // Kernel validate_av1_film_grain.
        check_range(ID, "flags", self.flags, 0, 31)?;
        check_range(
            ID,
            "film_grain_params_ref_idx",
            self.film_grain_params_ref_idx,
            0,
            7,
        )?;
        check_range(ID, "num_y_points", self.num_y_points, 0, 14)?;
        check_range(ID, "num_cb_points", self.num_cb_points, 0, 10)?;
        check_range(ID, "num_cr_points", self.num_cr_points, 0, 15)?;
        check_range(
            ID,
            "grain_scaling_minus_8",
            self.grain_scaling_minus_8,
            0,
            3,
        )?;
        check_range(ID, "ar_coeff_lag", self.ar_coeff_lag, 0, 3)?;
        check_range(
            ID,
            "ar_coeff_shift_minus_6",
            self.ar_coeff_shift_minus_6,
            0,
            3,
        )?;
        check_range(ID, "grain_scale_shift", self.grain_scale_shift, 0, 3)?;
        // Stricter: cr points are at most 10 like cb (spec), bounding the chroma scaling LUT build.
        check_range(ID, "num_cr_points", self.num_cr_points, 0, 10)?;
        if self.flags & V4L2_AV1_FILM_GRAIN_FLAG_APPLY_GRAIN == 0 {
            return Ok(());
        }
        // Kernel: point values strictly increase (the scaling LUT divides by their differences).
        for (name, values, n) in [
            ("point_y_value", &self.point_y_value, self.num_y_points),
            ("point_cb_value", &self.point_cb_value, self.num_cb_points),
            ("point_cr_value", &self.point_cr_value, self.num_cr_points),
        ] {
            if values[..usize::from(n)].windows(2).any(|w| w[1] <= w[0]) {
                return Err(CtrlError::range(ID, name));
            }
        }
        Ok(())
    }
}

/// Every AV1 control, as visl exposes them.
pub static CONTROLS: [CtrlDesc; 4] = [
    CtrlDesc::compound::<V4l2CtrlAv1Frame>(),
    CtrlDesc::compound::<V4l2CtrlAv1TileGroupEntry>(),
    CtrlDesc::compound::<V4l2CtrlAv1Sequence>(),
    CtrlDesc::compound::<V4l2CtrlAv1FilmGrain>(),
];

/// The AV1 control family.
pub static CODEC: CodecDesc = CodecDesc {
    codec: Codec::Av1,
    controls: &CONTROLS,
    reference_timestamps,
};

/// Reference order: LAST, LAST2, LAST3, GOLDEN, BWDREF, ALTREF2, ALTREF,
/// i.e. `reference_frame_ts[ref_frame_idx[i]]` for i in 0..7 (the same slot
/// may appear more than once). Key and intra-only frames reference nothing,
/// so nothing is appended for them.
fn reference_timestamps(ctrls: &ControlValues, out: &mut Vec<u64>) {
    let Some(f) = ctrls.get::<V4l2CtrlAv1Frame>() else {
        return;
    };
    if f.is_intra() {
        return;
    }
    for i in f.ref_frame_idx {
        // Validated to 0..=7 for inter frames; skip anything else defensively.
        if let Some(ts) = usize::try_from(i)
            .ok()
            .and_then(|i| f.reference_frame_ts.get(i))
        {
            out.push(*ts);
        }
    }
}

/// Checks between controls of one request that per-control validation cannot
/// see: order hints fit the sequence's `order_hint_bits`, and every tile group
/// entry names a tile of the frame's tile grid (at most one entry per tile).
/// A frontend should call it before handing the request to a decoder.
pub fn check_request(ctrls: &ControlValues) -> Result<(), CtrlError> {
    let Some(f) = ctrls.get::<V4l2CtrlAv1Frame>() else {
        return Ok(());
    };
    if let Some(seq) = ctrls.get::<V4l2CtrlAv1Sequence>() {
        let limit = 1u32 << seq.order_hint_bits.min(8);
        if f.order_hint >= limit.max(1) {
            return Err(CtrlError::range(V4L2_CID_STATELESS_AV1_FRAME, "order_hint"));
        }
    }
    const TG: u32 = V4L2_CID_STATELESS_AV1_TILE_GROUP_ENTRY;
    let entries = ctrls.get_array::<V4l2CtrlAv1TileGroupEntry>();
    let tiles = usize::from(f.tile_info.tile_cols) * usize::from(f.tile_info.tile_rows);
    if entries.len() > tiles.max(1) {
        return Err(CtrlError::TooManyElems {
            id: TG,
            got: entries.len(),
            max: tiles.max(1) as u32,
        });
    }
    for e in &entries {
        if e.tile_col >= u32::from(f.tile_info.tile_cols).max(1) {
            return Err(CtrlError::range(TG, "tile_col"));
        }
        if e.tile_row >= u32::from(f.tile_info.tile_rows).max(1) {
            return Err(CtrlError::range(TG, "tile_row"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctrl::validate_write;
    use zerocopy::{FromBytes, IntoBytes};

    const SEQ: u32 = V4L2_CID_STATELESS_AV1_SEQUENCE;
    const TG: u32 = V4L2_CID_STATELESS_AV1_TILE_GROUP_ENTRY;
    const FRAME: u32 = V4L2_CID_STATELESS_AV1_FRAME;
    const FG: u32 = V4L2_CID_STATELESS_AV1_FILM_GRAIN;

    fn write<T: CompoundControl>(v: &T) -> Result<T, CtrlError> {
        validate_write(Codec::Av1, T::ID, v.as_bytes()).map(|b| T::read_from_bytes(&b).unwrap())
    }

    /// A 1920x1080 inter frame with 2x2 tiles (64x64 superblocks).
    fn frame() -> V4l2CtrlAv1Frame {
        let mut f = V4l2CtrlAv1Frame::default_value();
        f.frame_type = V4L2_AV1_INTER_FRAME;
        f.frame_width_minus_1 = 1919;
        f.frame_height_minus_1 = 1079;
        f.upscaled_width = 1920;
        f.superres_denom = 8;
        f.primary_ref_frame = AV1_PRIMARY_REF_NONE;
        f.order_hint = 5;
        f.ref_frame_idx = [0, 1, 2, 3, 4, 5, 6];
        for (i, ts) in f.reference_frame_ts.iter_mut().enumerate() {
            *ts = 100 * (i as u64 + 1);
        }
        let t = &mut f.tile_info;
        t.tile_cols = 2;
        t.tile_rows = 2;
        t.mi_col_starts[..3].copy_from_slice(&[0, 256, 480]);
        t.mi_row_starts[..3].copy_from_slice(&[0, 144, 270]);
        t.width_in_sbs_minus_1[..2].copy_from_slice(&[15, 13]);
        t.height_in_sbs_minus_1[..2].copy_from_slice(&[8, 7]);
        t.context_update_tile_id = 3;
        t.tile_size_bytes = 4;
        f
    }

    fn grain() -> V4l2CtrlAv1FilmGrain {
        let mut g = V4l2CtrlAv1FilmGrain::default_value();
        g.flags = V4L2_AV1_FILM_GRAIN_FLAG_APPLY_GRAIN;
        g.num_y_points = 14;
        for i in 0..14 {
            g.point_y_value[i] = 10 * i as u8;
        }
        g.num_cb_points = 2;
        g.point_cb_value[..2].copy_from_slice(&[0, 255]);
        g.num_cr_points = 1;
        g
    }

    #[test]
    fn ids_and_names() {
        assert_eq!(SEQ, 0x00a4_0900 + 500);
        assert_eq!(TG, 0x00a4_0900 + 501);
        assert_eq!(FRAME, 0x00a4_0900 + 502);
        assert_eq!(FG, 0x00a4_0900 + 505);
        let names: Vec<_> = CODEC.controls.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "AV1 Frame Parameters",
                "AV1 Tile Group Entry",
                "AV1 Sequence Parameters",
                "AV1 Film Grain"
            ]
        );
        let tg = CODEC.find(TG).unwrap();
        assert!(tg.is_dynamic_array());
        assert_eq!((tg.max_elems, tg.elem_size), (512, 16));
        assert!(!CODEC.find(FRAME).unwrap().is_dynamic_array());
        assert_eq!(CODEC.find(FRAME).unwrap().elem_size, 1784);
    }

    #[test]
    fn defaults_match_kernel_and_validate() {
        let vals = ControlValues::defaults(Codec::Av1);
        for c in CODEC.controls {
            let b = vals.get_raw(c.id).unwrap();
            assert_eq!(
                validate_write(Codec::Av1, c.id, b).unwrap(),
                b,
                "{}",
                c.name
            );
            if c.id == SEQ {
                let s = V4l2CtrlAv1Sequence::read_from_bytes(b).unwrap();
                assert_eq!(s.bit_depth, 8);
                let mut z = b.to_vec();
                z[core::mem::offset_of!(V4l2CtrlAv1Sequence, bit_depth)] = 0;
                assert!(z.iter().all(|x| *x == 0));
            } else {
                assert!(b.iter().all(|x| *x == 0), "{}", c.name);
            }
        }
        assert!(write(&frame()).is_ok());
        assert!(write(&grain()).is_ok());
    }

    #[test]
    fn kernel_sequence_checks() {
        let mut s = V4l2CtrlAv1Sequence::default_value();
        s.flags = 0x10_0000;
        assert_eq!(write(&s).unwrap_err(), CtrlError::range(SEQ, "flags"));
        s.flags = V4L2_AV1_SEQUENCE_FLAG_MONO_CHROME;
        assert!(write(&s).is_ok());
        s.seq_profile = 1;
        assert_eq!(write(&s).unwrap_err(), CtrlError::range(SEQ, "flags"));
        s.flags = 0;
        assert!(write(&s).is_ok());
        s.seq_profile = 3;
        assert_eq!(write(&s).unwrap_err(), CtrlError::range(SEQ, "seq_profile"));
    }

    #[test]
    fn stricter_sequence_checks() {
        let mut s = V4l2CtrlAv1Sequence::default_value();
        for d in [10, 12] {
            s.bit_depth = d;
            assert!(write(&s).is_ok());
        }
        s.bit_depth = 9;
        assert_eq!(write(&s).unwrap_err(), CtrlError::range(SEQ, "bit_depth"));
        s.bit_depth = 8;
        s.order_hint_bits = 8;
        assert!(write(&s).is_ok());
        s.order_hint_bits = 9;
        assert_eq!(
            write(&s).unwrap_err(),
            CtrlError::range(SEQ, "order_hint_bits")
        );
    }

    #[test]
    fn kernel_frame_checks() {
        type M = fn(&mut V4l2CtrlAv1Frame);
        let cases: &[(&str, M)] = &[
            ("quantization.flags", |f| f.quantization.flags = 8),
            ("quantization.delta_q_y_dc", |f| {
                f.quantization.delta_q_y_dc = 64
            }),
            ("quantization.delta_q_u_dc", |f| {
                f.quantization.delta_q_u_dc = -65
            }),
            ("quantization.delta_q_v_dc", |f| {
                f.quantization.delta_q_v_dc = 64
            }),
            ("quantization.delta_q_u_ac", |f| {
                f.quantization.delta_q_u_ac = 64
            }),
            ("quantization.delta_q_v_ac", |f| {
                f.quantization.delta_q_v_ac = 64
            }),
            ("quantization.delta_q_res", |f| {
                f.quantization.delta_q_res = 4
            }),
            ("quantization.qm_y", |f| f.quantization.qm_y = 16),
            ("quantization.qm_u", |f| f.quantization.qm_u = 16),
            ("quantization.qm_v", |f| f.quantization.qm_v = 16),
            ("segmentation.flags", |f| f.segmentation.flags = 32),
            ("segmentation.feature_data", |f| {
                f.segmentation.feature_data[0][0] = -256
            }),
            ("segmentation.feature_data", |f| {
                f.segmentation.feature_data[7][4] = 64
            }),
            ("segmentation.feature_data", |f| {
                f.segmentation.feature_data[1][5] = 8
            }),
            ("segmentation.feature_data", |f| {
                f.segmentation.feature_data[1][5] = -1
            }),
            ("segmentation.feature_data", |f| {
                f.segmentation.feature_data[2][6] = 1
            }),
            ("segmentation.feature_data", |f| {
                f.segmentation.feature_data[2][7] = 1
            }),
            ("loop_filter.flags", |f| f.loop_filter.flags = 16),
            ("loop_filter.level", |f| f.loop_filter.level[3] = 64),
            ("loop_filter.sharpness", |f| f.loop_filter.sharpness = 8),
            ("loop_filter.ref_deltas", |f| {
                f.loop_filter.ref_deltas[7] = -65
            }),
            ("loop_filter.mode_deltas", |f| {
                f.loop_filter.mode_deltas[1] = 64
            }),
            ("cdef.damping_minus_3", |f| f.cdef.damping_minus_3 = 4),
            ("cdef.bits", |f| f.cdef.bits = 4),
            ("cdef.y_pri_strength", |f| f.cdef.y_pri_strength[0] = 16),
            ("cdef.y_sec_strength", |f| {
                f.cdef.bits = 3;
                f.cdef.y_sec_strength[7] = 5;
            }),
            ("cdef.uv_pri_strength", |f| f.cdef.uv_pri_strength[0] = 16),
            ("cdef.uv_sec_strength", |f| f.cdef.uv_sec_strength[0] = 5),
            ("loop_restoration.lr_unit_shift", |f| {
                f.loop_restoration.lr_unit_shift = 4
            }),
            ("loop_restoration.lr_uv_shift", |f| {
                f.loop_restoration.lr_uv_shift = 2
            }),
            ("flags", |f| f.flags = 0x10_0000),
            ("superres_denom", |f| f.superres_denom = 17),
        ];
        for (field, m) in cases {
            let mut f = frame();
            m(&mut f);
            assert_eq!(
                write(&f).unwrap_err(),
                CtrlError::range(FRAME, field),
                "{field}"
            );
        }
        // cdef entries past 1 << bits are not looked at.
        let mut f = frame();
        f.cdef.y_sec_strength[1] = 200;
        assert!(write(&f).is_ok());
    }

    #[test]
    fn stricter_frame_checks() {
        type M = fn(&mut V4l2CtrlAv1Frame);
        let cases: &[(&str, M)] = &[
            ("superres_denom", |f| {
                f.flags |= V4L2_AV1_FRAME_FLAG_USE_SUPERRES
            }),
            ("tile_info.tile_cols", |f| f.tile_info.tile_cols = 65),
            ("tile_info.tile_rows", |f| f.tile_info.tile_rows = 65),
            ("tile_info.tile_rows", |f| {
                // 64 x 9 = 576 tiles > 512
                f.frame_width_minus_1 = 16383;
                f.frame_height_minus_1 = 16383;
                f.tile_info.tile_cols = 64;
                f.tile_info.tile_rows = 9;
            }),
            ("tile_info.context_update_tile_id", |f| {
                f.tile_info.context_update_tile_id = 4
            }),
            ("tile_info.mi_col_starts", |f| {
                f.tile_info.mi_col_starts[1] = 0
            }),
            ("tile_info.mi_col_starts", |f| {
                f.tile_info.mi_col_starts[2] = 481
            }),
            ("tile_info.mi_row_starts", |f| {
                f.tile_info.mi_row_starts[2] = 144
            }),
            ("tile_info.mi_row_starts", |f| {
                f.tile_info.mi_row_starts[2] = 271
            }),
            ("tile_info.width_in_sbs_minus_1", |f| {
                f.tile_info.width_in_sbs_minus_1[1] = 480
            }),
            ("tile_info.height_in_sbs_minus_1", |f| {
                f.tile_info.height_in_sbs_minus_1[0] = 270
            }),
            ("tile_info.tile_size_bytes", |f| {
                f.tile_info.tile_size_bytes = 5
            }),
            ("frame_type", |f| f.frame_type = 4),
            ("interpolation_filter", |f| f.interpolation_filter = 5),
            ("tx_mode", |f| f.tx_mode = 3),
            ("global_motion.type", |f| f.global_motion.r#type[7] = 4),
            ("loop_restoration.frame_restoration_type", |f| {
                f.loop_restoration.frame_restoration_type[2] = 4
            }),
            ("loop_restoration.loop_restoration_size", |f| {
                f.loop_restoration.frame_restoration_type[0] = V4L2_AV1_FRAME_RESTORE_WIENER;
                f.loop_restoration.loop_restoration_size[0] = 0;
            }),
            ("loop_restoration.loop_restoration_size", |f| {
                f.loop_restoration.frame_restoration_type[1] = V4L2_AV1_FRAME_RESTORE_SGRPROJ;
                f.loop_restoration.loop_restoration_size[1] = 48;
            }),
            ("segmentation.last_active_seg_id", |f| {
                f.segmentation.last_active_seg_id = 8
            }),
            ("loop_filter.delta_lf_res", |f| {
                f.loop_filter.delta_lf_res = 4
            }),
            ("primary_ref_frame", |f| f.primary_ref_frame = 8),
            ("skip_mode_frame", |f| f.skip_mode_frame[1] = 8),
            ("order_hint", |f| f.order_hint = 256),
            ("order_hints", |f| f.order_hints[7] = 256),
            ("ref_frame_idx", |f| f.ref_frame_idx[6] = 8),
            ("ref_frame_idx", |f| f.ref_frame_idx[0] = -1),
        ];
        for (field, m) in cases {
            let mut f = frame();
            m(&mut f);
            assert_eq!(
                write(&f).unwrap_err(),
                CtrlError::range(FRAME, field),
                "{field}"
            );
        }
        // Accepted limits.
        let mut f = frame();
        f.flags |= V4L2_AV1_FRAME_FLAG_USE_SUPERRES;
        f.superres_denom = 16;
        f.loop_restoration.frame_restoration_type = [1, 2, 3];
        f.loop_restoration.loop_restoration_size = [256, 128, 32];
        f.skip_mode_frame = [1, 7];
        f.primary_ref_frame = 6;
        assert!(write(&f).is_ok());
        // Intra frames do not use ref_frame_idx.
        f.frame_type = V4L2_AV1_KEY_FRAME;
        f.ref_frame_idx = [-1; 7];
        assert!(write(&f).is_ok());
    }

    #[test]
    fn tile_group_entry_checks() {
        let mut e = V4l2CtrlAv1TileGroupEntry::default_value();
        e.tile_row = 63;
        e.tile_col = 63;
        e.tile_offset = 100;
        e.tile_size = u32::MAX - 100;
        assert!(write(&e).is_ok());
        let mut bad = e;
        bad.tile_row = 64;
        assert_eq!(write(&bad).unwrap_err(), CtrlError::range(TG, "tile_row"));
        let mut bad = e;
        bad.tile_col = 64;
        assert_eq!(write(&bad).unwrap_err(), CtrlError::range(TG, "tile_col"));
        let mut bad = e;
        bad.tile_size += 1;
        assert_eq!(write(&bad).unwrap_err(), CtrlError::range(TG, "tile_size"));
    }

    #[test]
    fn film_grain_checks() {
        type M = fn(&mut V4l2CtrlAv1FilmGrain);
        let cases: &[(&str, M)] = &[
            // kernel
            ("flags", |g| g.flags = 32),
            ("film_grain_params_ref_idx", |g| {
                g.film_grain_params_ref_idx = 8
            }),
            ("num_y_points", |g| g.num_y_points = 15),
            ("num_cb_points", |g| g.num_cb_points = 11),
            ("num_cr_points", |g| g.num_cr_points = 16),
            ("grain_scaling_minus_8", |g| g.grain_scaling_minus_8 = 4),
            ("ar_coeff_lag", |g| g.ar_coeff_lag = 4),
            ("ar_coeff_shift_minus_6", |g| g.ar_coeff_shift_minus_6 = 4),
            ("grain_scale_shift", |g| g.grain_scale_shift = 4),
            ("point_y_value", |g| {
                g.point_y_value[13] = g.point_y_value[12]
            }),
            ("point_cb_value", |g| g.point_cb_value[1] = 0),
            ("point_cr_value", |g| {
                g.num_cr_points = 2;
                g.point_cr_value[..2].copy_from_slice(&[9, 3]);
            }),
            // stricter
            ("num_cr_points", |g| g.num_cr_points = 11),
        ];
        for (field, m) in cases {
            let mut g = grain();
            m(&mut g);
            assert_eq!(
                write(&g).unwrap_err(),
                CtrlError::range(FG, field),
                "{field}"
            );
        }
        // Without APPLY_GRAIN the points are not looked at (kernel).
        let mut g = grain();
        g.flags = 0;
        g.point_y_value = [0; 16];
        assert!(write(&g).is_ok());
    }

    #[test]
    fn wrong_sizes_and_array_limits() {
        for (id, len) in [(SEQ, 12usize), (FRAME, 1784), (FG, 194)] {
            for bad in [0, len - 1] {
                assert!(matches!(
                    validate_write(Codec::Av1, id, &vec![0; bad]),
                    Err(CtrlError::Size { .. })
                ));
            }
            for long in [len + 1, 2 * len] {
                assert_eq!(
                    validate_write(Codec::Av1, id, &vec![0; long]),
                    validate_write(Codec::Av1, id, &vec![0; len])
                );
            }
        }
        assert!(matches!(
            validate_write(Codec::Av1, TG, &[]),
            Err(CtrlError::Size { .. })
        ));
        assert!(matches!(
            validate_write(Codec::Av1, TG, &[0; 15]),
            Err(CtrlError::Size { .. })
        ));
        assert_eq!(
            validate_write(Codec::Av1, TG, &[0; 17]),
            validate_write(Codec::Av1, TG, &[0; 16])
        );
        assert!(validate_write(Codec::Av1, TG, &vec![0; 16 * 512]).is_ok());
        assert_eq!(
            validate_write(Codec::Av1, TG, &vec![0; 16 * 513]),
            Err(CtrlError::TooManyElems {
                id: TG,
                got: 513,
                max: 512
            })
        );
    }

    #[test]
    fn reference_timestamps_follow_ref_frame_idx() {
        let mut vals = ControlValues::defaults(Codec::Av1);
        let mut f = frame();
        f.ref_frame_idx = [7, 0, 0, 3, 5, 6, 1];
        vals.set_raw(FRAME, f.as_bytes().to_vec());
        let mut out = Vec::new();
        (CODEC.reference_timestamps)(&vals, &mut out);
        assert_eq!(out, [800, 100, 100, 400, 600, 700, 200]);
        for t in [V4L2_AV1_KEY_FRAME, V4L2_AV1_INTRA_ONLY_FRAME] {
            f.frame_type = t;
            vals.set_raw(FRAME, f.as_bytes().to_vec());
            let mut out = Vec::new();
            (CODEC.reference_timestamps)(&vals, &mut out);
            assert!(out.is_empty());
        }
        f.frame_type = V4L2_AV1_SWITCH_FRAME;
        vals.set_raw(FRAME, f.as_bytes().to_vec());
        let mut out = Vec::new();
        (CODEC.reference_timestamps)(&vals, &mut out);
        assert_eq!(out.len(), 7);
    }

    #[test]
    fn request_checks() {
        let mut vals = ControlValues::defaults(Codec::Av1);
        let f = frame();
        vals.set_raw(FRAME, f.as_bytes().to_vec());
        let mut seq = V4l2CtrlAv1Sequence::default_value();
        seq.order_hint_bits = 3; // hints 0..=7
        vals.set_raw(SEQ, seq.as_bytes().to_vec());
        let entry = |row: u32, col: u32| {
            let mut e = V4l2CtrlAv1TileGroupEntry::default_value();
            e.tile_row = row;
            e.tile_col = col;
            e.as_bytes().to_vec()
        };
        let mut tg = Vec::new();
        for (r, c) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            tg.extend(entry(r, c));
        }
        vals.set_raw(TG, tg.clone());
        assert_eq!(check_request(&vals), Ok(()));

        seq.order_hint_bits = 2; // hint 5 does not fit
        vals.set_raw(SEQ, seq.as_bytes().to_vec());
        assert_eq!(
            check_request(&vals),
            Err(CtrlError::range(FRAME, "order_hint"))
        );
        seq.order_hint_bits = 3;
        vals.set_raw(SEQ, seq.as_bytes().to_vec());

        vals.set_raw(TG, entry(0, 2));
        assert_eq!(check_request(&vals), Err(CtrlError::range(TG, "tile_col")));
        vals.set_raw(TG, entry(2, 0));
        assert_eq!(check_request(&vals), Err(CtrlError::range(TG, "tile_row")));
        tg.extend(entry(0, 0));
        vals.set_raw(TG, tg);
        assert_eq!(
            check_request(&vals),
            Err(CtrlError::TooManyElems {
                id: TG,
                got: 5,
                max: 4
            })
        );
    }
}
