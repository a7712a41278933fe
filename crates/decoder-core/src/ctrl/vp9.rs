//! VP9 stateless controls (Linux 6.12 `V4L2_CID_STATELESS_VP9_FRAME` and
//! `V4L2_CID_STATELESS_VP9_COMPRESSED_HDR`).
//!
//! Structs and constants are declared through the layout macros of
//! [`super::vp8`], which also feed the layout test.

use super::vp8::{check_range, NewZeroed};
use super::{
    ctrl_type, Codec, CodecDesc, CompoundControl, ControlValues, CtrlDesc, CtrlError,
    V4L2_CID_CODEC_STATELESS_BASE,
};

crate::uapi_consts! {
    V4L2_VP9_LOOP_FILTER_FLAG_DELTA_ENABLED: u8 = 0x1;
    V4L2_VP9_LOOP_FILTER_FLAG_DELTA_UPDATE: u8 = 0x2;
    V4L2_VP9_SEGMENTATION_FLAG_ENABLED: u8 = 0x01;
    V4L2_VP9_SEGMENTATION_FLAG_UPDATE_MAP: u8 = 0x02;
    V4L2_VP9_SEGMENTATION_FLAG_TEMPORAL_UPDATE: u8 = 0x04;
    V4L2_VP9_SEGMENTATION_FLAG_UPDATE_DATA: u8 = 0x08;
    V4L2_VP9_SEGMENTATION_FLAG_ABS_OR_DELTA_UPDATE: u8 = 0x10;
    V4L2_VP9_SEG_LVL_ALT_Q: u8 = 0;
    V4L2_VP9_SEG_LVL_ALT_L: u8 = 1;
    V4L2_VP9_SEG_LVL_REF_FRAME: u8 = 2;
    V4L2_VP9_SEG_LVL_SKIP: u8 = 3;
    V4L2_VP9_SEG_LVL_MAX: u8 = 4;
    V4L2_VP9_SEGMENT_FEATURE_ENABLED_MASK: u8 = 0xf;
    V4L2_VP9_FRAME_FLAG_KEY_FRAME: u32 = 0x001;
    V4L2_VP9_FRAME_FLAG_SHOW_FRAME: u32 = 0x002;
    V4L2_VP9_FRAME_FLAG_ERROR_RESILIENT: u32 = 0x004;
    V4L2_VP9_FRAME_FLAG_INTRA_ONLY: u32 = 0x008;
    V4L2_VP9_FRAME_FLAG_ALLOW_HIGH_PREC_MV: u32 = 0x010;
    V4L2_VP9_FRAME_FLAG_REFRESH_FRAME_CTX: u32 = 0x020;
    V4L2_VP9_FRAME_FLAG_PARALLEL_DEC_MODE: u32 = 0x040;
    V4L2_VP9_FRAME_FLAG_X_SUBSAMPLING: u32 = 0x080;
    V4L2_VP9_FRAME_FLAG_Y_SUBSAMPLING: u32 = 0x100;
    V4L2_VP9_FRAME_FLAG_COLOR_RANGE_FULL_SWING: u32 = 0x200;
    V4L2_VP9_SIGN_BIAS_LAST: u8 = 0x1;
    V4L2_VP9_SIGN_BIAS_GOLDEN: u8 = 0x2;
    V4L2_VP9_SIGN_BIAS_ALT: u8 = 0x4;
    V4L2_VP9_RESET_FRAME_CTX_NONE: u8 = 0;
    V4L2_VP9_RESET_FRAME_CTX_SPEC: u8 = 1;
    V4L2_VP9_RESET_FRAME_CTX_ALL: u8 = 2;
    V4L2_VP9_INTERP_FILTER_EIGHTTAP: u8 = 0;
    V4L2_VP9_INTERP_FILTER_EIGHTTAP_SMOOTH: u8 = 1;
    V4L2_VP9_INTERP_FILTER_EIGHTTAP_SHARP: u8 = 2;
    V4L2_VP9_INTERP_FILTER_BILINEAR: u8 = 3;
    V4L2_VP9_INTERP_FILTER_SWITCHABLE: u8 = 4;
    V4L2_VP9_REFERENCE_MODE_SINGLE_REFERENCE: u8 = 0;
    V4L2_VP9_REFERENCE_MODE_COMPOUND_REFERENCE: u8 = 1;
    V4L2_VP9_REFERENCE_MODE_SELECT: u8 = 2;
    V4L2_VP9_PROFILE_MAX: u8 = 3;
    V4L2_CID_STATELESS_VP9_FRAME: u32 = V4L2_CID_CODEC_STATELESS_BASE + 300;
    V4L2_VP9_NUM_FRAME_CTX: u8 = 4;
    V4L2_CID_STATELESS_VP9_COMPRESSED_HDR: u32 = V4L2_CID_CODEC_STATELESS_BASE + 301;
    V4L2_VP9_TX_MODE_ONLY_4X4: u8 = 0;
    V4L2_VP9_TX_MODE_ALLOW_8X8: u8 = 1;
    V4L2_VP9_TX_MODE_ALLOW_16X16: u8 = 2;
    V4L2_VP9_TX_MODE_ALLOW_32X32: u8 = 3;
    V4L2_VP9_TX_MODE_SELECT: u8 = 4;
}

crate::uapi_structs! {
    /// `struct v4l2_vp9_loop_filter`.
    "v4l2_vp9_loop_filter" pub struct V4l2Vp9LoopFilter {
        pub ref_deltas: [i8; 4],
        pub mode_deltas: [i8; 2],
        pub level: u8,
        pub sharpness: u8,
        pub flags: u8,
        pub reserved: [u8; 7],
    }
    /// `struct v4l2_vp9_quantization`.
    "v4l2_vp9_quantization" pub struct V4l2Vp9Quantization {
        pub base_q_idx: u8,
        pub delta_q_y_dc: i8,
        pub delta_q_uv_dc: i8,
        pub delta_q_uv_ac: i8,
        pub reserved: [u8; 4],
    }
    /// `struct v4l2_vp9_segmentation`.
    "v4l2_vp9_segmentation" pub struct V4l2Vp9Segmentation {
        pub feature_data: [[i16; 4]; 8],
        pub feature_enabled: [u8; 8],
        pub tree_probs: [u8; 7],
        pub pred_probs: [u8; 3],
        pub flags: u8,
        pub reserved: [u8; 5],
    }
    /// `struct v4l2_ctrl_vp9_frame`.
    "v4l2_ctrl_vp9_frame" pub struct V4l2CtrlVp9Frame {
        pub lf: V4l2Vp9LoopFilter,
        pub quant: V4l2Vp9Quantization,
        pub seg: V4l2Vp9Segmentation,
        pub flags: u32,
        pub compressed_header_size: u16,
        pub uncompressed_header_size: u16,
        pub frame_width_minus_1: u16,
        pub frame_height_minus_1: u16,
        pub render_width_minus_1: u16,
        pub render_height_minus_1: u16,
        pub last_frame_ts: u64,
        pub golden_frame_ts: u64,
        pub alt_frame_ts: u64,
        pub ref_frame_sign_bias: u8,
        pub reset_frame_context: u8,
        pub frame_context_idx: u8,
        pub profile: u8,
        pub bit_depth: u8,
        pub interpolation_filter: u8,
        pub tile_cols_log2: u8,
        pub tile_rows_log2: u8,
        pub reference_mode: u8,
        pub reserved: [u8; 7],
    }
    /// `struct v4l2_vp9_mv_probs`.
    "v4l2_vp9_mv_probs" pub struct V4l2Vp9MvProbs {
        pub joint: [u8; 3],
        pub sign: [u8; 2],
        pub classes: [[u8; 10]; 2],
        pub class0_bit: [u8; 2],
        pub bits: [[u8; 10]; 2],
        pub class0_fr: [[[u8; 3]; 2]; 2],
        pub fr: [[u8; 3]; 2],
        pub class0_hp: [u8; 2],
        pub hp: [u8; 2],
    }
    /// `struct v4l2_ctrl_vp9_compressed_hdr`.
    "v4l2_ctrl_vp9_compressed_hdr" pub struct V4l2CtrlVp9CompressedHdr {
        pub tx_mode: u8,
        pub tx8: [[u8; 1]; 2],
        pub tx16: [[u8; 2]; 2],
        pub tx32: [[u8; 3]; 2],
        pub coef: [[[[[[u8; 3]; 6]; 6]; 2]; 2]; 4],
        pub skip: [u8; 3],
        pub inter_mode: [[u8; 3]; 7],
        pub interp_filter: [[u8; 2]; 4],
        pub is_inter: [u8; 4],
        pub comp_mode: [u8; 5],
        pub single_ref: [[u8; 2]; 5],
        pub comp_ref: [u8; 5],
        pub y_mode: [[u8; 9]; 4],
        pub uv_mode: [[u8; 9]; 10],
        pub partition: [[u8; 3]; 16],
        pub mv: V4l2Vp9MvProbs,
    }
}

// Sizes from the linux-libc-dev 6.12 headers (also checked field by field by
// tests/ctrl_layout_others.rs).
const _: () = assert!(core::mem::size_of::<V4l2Vp9LoopFilter>() == 16);
const _: () = assert!(core::mem::size_of::<V4l2Vp9Quantization>() == 8);
const _: () = assert!(core::mem::size_of::<V4l2Vp9Segmentation>() == 88);
const _: () = assert!(core::mem::size_of::<V4l2CtrlVp9Frame>() == 168);
const _: () = assert!(core::mem::size_of::<V4l2Vp9MvProbs>() == 69);
const _: () = assert!(core::mem::size_of::<V4l2CtrlVp9CompressedHdr>() == 2040);

/// C names of the controls of this module, for the layout test:
/// (id, `V4L2_CID_*`, `V4L2_CTRL_TYPE_*`, C type of one element).
pub const CONTROL_C_NAMES: &[(u32, &str, &str, &str)] = &[
    (
        V4L2_CID_STATELESS_VP9_FRAME,
        "V4L2_CID_STATELESS_VP9_FRAME",
        "V4L2_CTRL_TYPE_VP9_FRAME",
        "struct v4l2_ctrl_vp9_frame",
    ),
    (
        V4L2_CID_STATELESS_VP9_COMPRESSED_HDR,
        "V4L2_CID_STATELESS_VP9_COMPRESSED_HDR",
        "V4L2_CTRL_TYPE_VP9_COMPRESSED_HDR",
        "struct v4l2_ctrl_vp9_compressed_hdr",
    ),
];

/// Superblock (64x64) limits on tile widths, VP9 spec section 7.3.
const MIN_TILE_WIDTH_B64: u32 = 4;
const MAX_TILE_WIDTH_B64: u32 = 64;

/// Allowed `tile_cols_log2` range for a frame `width` pixels wide
/// (`calc_min_log2_tile_cols` / `calc_max_log2_tile_cols` of the spec).
fn tile_cols_log2_range(width: u32) -> (u8, u8) {
    let sb64_cols = width.div_ceil(64);
    let mut min = 0u8;
    while (MAX_TILE_WIDTH_B64 << min) < sb64_cols {
        min += 1;
    }
    let mut max = 1u8;
    while (sb64_cols >> max) >= MIN_TILE_WIDTH_B64 {
        max += 1;
    }
    (min, max - 1)
}

impl V4l2CtrlVp9Frame {
    /// True for key frames and intra-only frames: they predict from no
    /// reference.
    pub fn is_intra(&self) -> bool {
        self.flags & (V4L2_VP9_FRAME_FLAG_KEY_FRAME | V4L2_VP9_FRAME_FLAG_INTRA_ONLY) != 0
    }

    /// Kernel `validate_vp9_lf_params`.
    fn validate_lf(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_VP9_FRAME;
        let lf = &mut self.lf;
        if lf.flags
            & !(V4L2_VP9_LOOP_FILTER_FLAG_DELTA_ENABLED | V4L2_VP9_LOOP_FILTER_FLAG_DELTA_UPDATE)
            != 0
        {
            return Err(CtrlError::range(ID, "lf.flags"));
        }
        check_range(ID, "lf.level", lf.level, 0, 63)?;
        check_range(ID, "lf.sharpness", lf.sharpness, 0, 7)?;
        for d in lf.ref_deltas {
            check_range(ID, "lf.ref_deltas", d, -63, 63)?;
        }
        for d in lf.mode_deltas {
            check_range(ID, "lf.mode_deltas", d, -63, 63)?;
        }
        lf.reserved = [0; 7];
        Ok(())
    }

    /// Kernel `validate_vp9_quant_params`.
    fn validate_quant(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_VP9_FRAME;
        let q = &mut self.quant;
        check_range(ID, "quant.delta_q_y_dc", q.delta_q_y_dc, -15, 15)?;
        check_range(ID, "quant.delta_q_uv_dc", q.delta_q_uv_dc, -15, 15)?;
        check_range(ID, "quant.delta_q_uv_ac", q.delta_q_uv_ac, -15, 15)?;
        q.reserved = [0; 4];
        Ok(())
    }

    /// Kernel `validate_vp9_seg_params`.
    fn validate_seg(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_VP9_FRAME;
        let seg = &mut self.seg;
        let known = V4L2_VP9_SEGMENTATION_FLAG_ENABLED
            | V4L2_VP9_SEGMENTATION_FLAG_UPDATE_MAP
            | V4L2_VP9_SEGMENTATION_FLAG_TEMPORAL_UPDATE
            | V4L2_VP9_SEGMENTATION_FLAG_UPDATE_DATA
            | V4L2_VP9_SEGMENTATION_FLAG_ABS_OR_DELTA_UPDATE;
        if seg.flags & !known != 0 {
            return Err(CtrlError::range(ID, "seg.flags"));
        }
        if seg
            .feature_enabled
            .iter()
            .any(|f| f & !V4L2_VP9_SEGMENT_FEATURE_ENABLED_MASK != 0)
        {
            return Err(CtrlError::range(ID, "seg.feature_enabled"));
        }
        // ALT_Q, ALT_L, REF_FRAME, SKIP
        const RANGE: [i16; 4] = [255, 63, 3, 0];
        for seg_data in seg.feature_data {
            for (v, r) in seg_data.into_iter().zip(RANGE) {
                check_range(ID, "seg.feature_data", v, -r, r)?;
            }
        }
        seg.reserved = [0; 5];
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlVp9Frame {
    const ID: u32 = V4L2_CID_STATELESS_VP9_FRAME;
    const NAME: &'static str = "VP9 Frame Decode Parameters";
    const V4L2_TYPE: u32 = ctrl_type::VP9_FRAME;

    fn default_value() -> Self {
        // std_init_compound: profile 0, 8 bits, 4:2:0.
        let mut v = Self::new_zeroed_value();
        v.profile = 0;
        v.bit_depth = 8;
        v.flags = V4L2_VP9_FRAME_FLAG_X_SUBSAMPLING | V4L2_VP9_FRAME_FLAG_Y_SUBSAMPLING;
        v
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_VP9_FRAME;
        // Kernel validate_vp9_frame, in its order.
        let known = V4L2_VP9_FRAME_FLAG_KEY_FRAME
            | V4L2_VP9_FRAME_FLAG_SHOW_FRAME
            | V4L2_VP9_FRAME_FLAG_ERROR_RESILIENT
            | V4L2_VP9_FRAME_FLAG_INTRA_ONLY
            | V4L2_VP9_FRAME_FLAG_ALLOW_HIGH_PREC_MV
            | V4L2_VP9_FRAME_FLAG_REFRESH_FRAME_CTX
            | V4L2_VP9_FRAME_FLAG_PARALLEL_DEC_MODE
            | V4L2_VP9_FRAME_FLAG_X_SUBSAMPLING
            | V4L2_VP9_FRAME_FLAG_Y_SUBSAMPLING
            | V4L2_VP9_FRAME_FLAG_COLOR_RANGE_FULL_SWING;
        if self.flags & !known != 0 {
            return Err(CtrlError::range(ID, "flags"));
        }
        if self.flags & V4L2_VP9_FRAME_FLAG_ERROR_RESILIENT != 0
            && self.flags & V4L2_VP9_FRAME_FLAG_REFRESH_FRAME_CTX != 0
        {
            return Err(CtrlError::range(ID, "flags"));
        }
        check_range(ID, "profile", self.profile, 0, V4L2_VP9_PROFILE_MAX)?;
        check_range(
            ID,
            "reset_frame_context",
            self.reset_frame_context,
            0,
            V4L2_VP9_RESET_FRAME_CTX_ALL,
        )?;
        check_range(
            ID,
            "frame_context_idx",
            self.frame_context_idx,
            0,
            V4L2_VP9_NUM_FRAME_CTX - 1,
        )?;
        let depth_ok = if self.profile < 2 {
            self.bit_depth == 8
        } else {
            matches!(self.bit_depth, 10 | 12)
        };
        if !depth_ok {
            return Err(CtrlError::range(ID, "bit_depth"));
        }
        let ss_x = self.flags & V4L2_VP9_FRAME_FLAG_X_SUBSAMPLING != 0;
        let ss_y = self.flags & V4L2_VP9_FRAME_FLAG_Y_SUBSAMPLING != 0;
        let is_420 = ss_x && ss_y;
        // Profiles 0 and 2 are 4:2:0 only; 1 and 3 never 4:2:0.
        if (self.profile & 1 == 0) != is_420 {
            return Err(CtrlError::range(ID, "flags"));
        }
        check_range(
            ID,
            "interpolation_filter",
            self.interpolation_filter,
            0,
            V4L2_VP9_INTERP_FILTER_SWITCHABLE,
        )?;
        check_range(ID, "tile_cols_log2", self.tile_cols_log2, 0, 6)?;
        check_range(
            ID,
            "reference_mode",
            self.reference_mode,
            0,
            V4L2_VP9_REFERENCE_MODE_SELECT,
        )?;
        self.validate_lf()?;
        self.validate_quant()?;
        self.validate_seg()?;
        self.reserved = [0; 7];

        // Stricter: tile_rows_log2 is 0..=2 in the bitstream; consumers size per-row state by 1 << it.
        check_range(ID, "tile_rows_log2", self.tile_rows_log2, 0, 2)?;
        // Stricter: tile_cols_log2 within the spec's width-derived bounds, so
        // no tile column is empty or wider than 64 superblocks.
        let (min, max) = tile_cols_log2_range(u32::from(self.frame_width_minus_1) + 1);
        check_range(ID, "tile_cols_log2", self.tile_cols_log2, min, max)?;
        // Stricter: only LAST/GOLDEN/ALT exist; a consumer indexing a 3-entry bias table by bit stays in bounds.
        if self.ref_frame_sign_bias
            & !(V4L2_VP9_SIGN_BIAS_LAST | V4L2_VP9_SIGN_BIAS_GOLDEN | V4L2_VP9_SIGN_BIAS_ALT)
            != 0
        {
            return Err(CtrlError::range(ID, "ref_frame_sign_bias"));
        }
        Ok(())
    }
}

impl CompoundControl for V4l2CtrlVp9CompressedHdr {
    const ID: u32 = V4L2_CID_STATELESS_VP9_COMPRESSED_HDR;
    const NAME: &'static str = "VP9 Probabilities Updates";
    const V4L2_TYPE: u32 = ctrl_type::VP9_COMPRESSED_HDR;

    fn default_value() -> Self {
        Self::new_zeroed_value()
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        // Kernel validate_vp9_compressed_hdr: tx_mode <= TX_MODE_SELECT
        // (also what a consumer indexes its tx-size tables with).
        check_range(
            V4L2_CID_STATELESS_VP9_COMPRESSED_HDR,
            "tx_mode",
            self.tx_mode,
            0,
            V4L2_VP9_TX_MODE_SELECT,
        )
    }
}

/// Every VP9 control (as visl exposes them).
pub static CONTROLS: [CtrlDesc; 2] = [
    CtrlDesc::compound::<V4l2CtrlVp9Frame>(),
    CtrlDesc::compound::<V4l2CtrlVp9CompressedHdr>(),
];

/// The VP9 control family.
pub static CODEC: CodecDesc = CodecDesc {
    codec: Codec::Vp9,
    controls: &CONTROLS,
    reference_timestamps,
};

/// Reference order: `last_frame_ts`, `golden_frame_ts`, `alt_frame_ts`.
/// Key frames and intra-only frames reference nothing, so nothing is
/// appended for them.
fn reference_timestamps(ctrls: &ControlValues, out: &mut Vec<u64>) {
    let Some(f) = ctrls.get::<V4l2CtrlVp9Frame>() else {
        return;
    };
    if f.is_intra() {
        return;
    }
    out.extend([f.last_frame_ts, f.golden_frame_ts, f.alt_frame_ts]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctrl::validate_write;
    use zerocopy::{FromBytes, IntoBytes};

    const FRAME: u32 = V4L2_CID_STATELESS_VP9_FRAME;
    const HDR: u32 = V4L2_CID_STATELESS_VP9_COMPRESSED_HDR;

    fn write(f: &V4l2CtrlVp9Frame) -> Result<Vec<u8>, CtrlError> {
        validate_write(Codec::Vp9, FRAME, f.as_bytes())
    }

    /// A valid 1920-wide inter frame.
    fn inter() -> V4l2CtrlVp9Frame {
        let mut f = V4l2CtrlVp9Frame::default_value();
        f.frame_width_minus_1 = 1919;
        f.frame_height_minus_1 = 1079;
        f
    }

    #[test]
    fn ids_and_names() {
        assert_eq!(FRAME, 0x00a4_0900 + 300);
        assert_eq!(HDR, 0x00a4_0900 + 301);
        assert_eq!(
            CODEC.find(FRAME).unwrap().name,
            "VP9 Frame Decode Parameters"
        );
        assert_eq!(CODEC.find(HDR).unwrap().name, "VP9 Probabilities Updates");
        assert_eq!(CODEC.find(FRAME).unwrap().elem_size, 168);
        assert_eq!(CODEC.find(HDR).unwrap().elem_size, 2040);
    }

    #[test]
    fn defaults_match_kernel_and_validate() {
        let d = V4l2CtrlVp9Frame::default_value();
        assert_eq!((d.profile, d.bit_depth), (0, 8));
        assert_eq!(d.flags, 0x180);
        assert_eq!(write(&d).unwrap(), d.as_bytes());
        let h = V4l2CtrlVp9CompressedHdr::default_value();
        assert!(h.as_bytes().iter().all(|b| *b == 0));
        assert!(validate_write(Codec::Vp9, HDR, h.as_bytes()).is_ok());
        for c in CODEC.controls {
            let mut b = c.default_bytes();
            (c.validate.unwrap())(&mut b).unwrap();
        }
    }

    #[test]
    fn kernel_checks_reject() {
        type Mutator = fn(&mut V4l2CtrlVp9Frame);
        let cases: &[(&str, Mutator)] = &[
            ("flags", |f| f.flags |= 0x400),
            ("flags", |f| {
                f.flags |=
                    V4L2_VP9_FRAME_FLAG_ERROR_RESILIENT | V4L2_VP9_FRAME_FLAG_REFRESH_FRAME_CTX
            }),
            ("profile", |f| f.profile = 4),
            ("reset_frame_context", |f| f.reset_frame_context = 3),
            ("frame_context_idx", |f| f.frame_context_idx = 4),
            ("bit_depth", |f| f.bit_depth = 10),
            ("bit_depth", |f| {
                f.profile = 2;
                f.bit_depth = 8;
            }),
            ("flags", |f| f.flags &= !V4L2_VP9_FRAME_FLAG_Y_SUBSAMPLING),
            ("flags", |f| f.profile = 1),
            ("interpolation_filter", |f| f.interpolation_filter = 5),
            ("tile_cols_log2", |f| f.tile_cols_log2 = 7),
            ("reference_mode", |f| f.reference_mode = 3),
            ("lf.flags", |f| f.lf.flags = 4),
            ("lf.level", |f| f.lf.level = 64),
            ("lf.sharpness", |f| f.lf.sharpness = 8),
            ("lf.ref_deltas", |f| f.lf.ref_deltas[3] = -64),
            ("lf.mode_deltas", |f| f.lf.mode_deltas[1] = 64),
            ("quant.delta_q_y_dc", |f| f.quant.delta_q_y_dc = 16),
            ("quant.delta_q_uv_dc", |f| f.quant.delta_q_uv_dc = -16),
            ("quant.delta_q_uv_ac", |f| f.quant.delta_q_uv_ac = 16),
            ("seg.flags", |f| f.seg.flags = 0x20),
            ("seg.feature_enabled", |f| f.seg.feature_enabled[7] = 0x10),
            ("seg.feature_data", |f| f.seg.feature_data[0][0] = 256),
            ("seg.feature_data", |f| f.seg.feature_data[1][1] = -64),
            ("seg.feature_data", |f| f.seg.feature_data[2][2] = 4),
            ("seg.feature_data", |f| f.seg.feature_data[3][3] = 1),
        ];
        for (field, m) in cases {
            let mut f = inter();
            m(&mut f);
            assert_eq!(write(&f), Err(CtrlError::range(FRAME, field)), "{field}");
        }
    }

    #[test]
    fn kernel_accepts_other_profiles() {
        let mut f = inter();
        f.profile = 1;
        f.flags &= !V4L2_VP9_FRAME_FLAG_Y_SUBSAMPLING; // 4:2:2
        assert!(write(&f).is_ok());
        f.profile = 3;
        f.bit_depth = 12;
        assert!(write(&f).is_ok());
        f.profile = 2;
        f.bit_depth = 10;
        f.flags |= V4L2_VP9_FRAME_FLAG_Y_SUBSAMPLING;
        assert!(write(&f).is_ok());
    }

    #[test]
    fn reserved_fields_are_zeroed() {
        let mut f = inter();
        f.reserved = [1; 7];
        f.lf.reserved = [2; 7];
        f.quant.reserved = [3; 4];
        f.seg.reserved = [4; 5];
        let out = V4l2CtrlVp9Frame::read_from_bytes(&write(&f).unwrap()).unwrap();
        assert_eq!(out.reserved, [0; 7]);
        assert_eq!(out.lf.reserved, [0; 7]);
        assert_eq!(out.quant.reserved, [0; 4]);
        assert_eq!(out.seg.reserved, [0; 5]);
    }

    #[test]
    fn stricter_checks_reject() {
        type Mutator = fn(&mut V4l2CtrlVp9Frame);
        let cases: &[(&str, Mutator)] = &[
            ("tile_rows_log2", |f| f.tile_rows_log2 = 3),
            // 1920 wide: 30 superblocks, at most 2 tile columns of >= 4 SBs.
            ("tile_cols_log2", |f| f.tile_cols_log2 = 3),
            // 8192 wide: 128 superblocks need at least 2 tile columns.
            ("tile_cols_log2", |f| f.frame_width_minus_1 = 8191),
            ("ref_frame_sign_bias", |f| f.ref_frame_sign_bias = 0x8),
        ];
        for (field, m) in cases {
            let mut f = inter();
            m(&mut f);
            assert_eq!(write(&f), Err(CtrlError::range(FRAME, field)), "{field}");
        }
        let mut h = V4l2CtrlVp9CompressedHdr::default_value();
        h.tx_mode = 5;
        assert_eq!(
            validate_write(Codec::Vp9, HDR, h.as_bytes()),
            Err(CtrlError::range(HDR, "tx_mode"))
        );
    }

    #[test]
    fn tile_cols_bounds() {
        assert_eq!(tile_cols_log2_range(1), (0, 0));
        assert_eq!(tile_cols_log2_range(1920), (0, 2));
        assert_eq!(tile_cols_log2_range(4096), (0, 4));
        assert_eq!(tile_cols_log2_range(8192), (1, 5));
        let mut f = inter();
        f.tile_cols_log2 = 2;
        f.tile_rows_log2 = 2;
        f.ref_frame_sign_bias = 0x7;
        f.reference_mode = V4L2_VP9_REFERENCE_MODE_SELECT;
        assert!(write(&f).is_ok());
    }

    #[test]
    fn wrong_sizes() {
        for (id, len) in [(FRAME, 168usize), (HDR, 2040)] {
            for bad in [0, 1, len - 1] {
                assert!(matches!(
                    validate_write(Codec::Vp9, id, &vec![0; bad]),
                    Err(CtrlError::Size { .. })
                ));
            }
            assert_eq!(
                validate_write(Codec::Vp9, id, &vec![0; len + 1]),
                validate_write(Codec::Vp9, id, &vec![0; len])
            );
        }
    }

    #[test]
    fn reference_timestamps_order() {
        let mut vals = ControlValues::defaults(Codec::Vp9);
        let mut f = inter();
        f.last_frame_ts = 1;
        f.golden_frame_ts = 2;
        f.alt_frame_ts = 3;
        vals.set_raw(FRAME, f.as_bytes().to_vec());
        let mut out = Vec::new();
        (CODEC.reference_timestamps)(&vals, &mut out);
        assert_eq!(out, [1, 2, 3]);
        for flag in [
            V4L2_VP9_FRAME_FLAG_KEY_FRAME,
            V4L2_VP9_FRAME_FLAG_INTRA_ONLY,
        ] {
            let mut g = f;
            g.flags |= flag;
            vals.set_raw(FRAME, g.as_bytes().to_vec());
            let mut out = Vec::new();
            (CODEC.reference_timestamps)(&vals, &mut out);
            assert!(out.is_empty());
        }
    }
}
