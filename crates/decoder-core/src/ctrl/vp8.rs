//! VP8 stateless controls (Linux 6.12 `V4L2_CID_STATELESS_VP8_FRAME`).
//!
//! This module also holds the small layout-description machinery
//! ([`UapiStruct`], [`UapiField`], [`UapiConst`] and the `uapi_structs!` /
//! `uapi_consts!` macros) that the HEVC, VP9 and AV1 modules use too: every
//! struct and `#define` is declared once through those macros, which also
//! produce the `LAYOUTS` / `CONSTS` tables the layout test
//! (`tests/ctrl_layout_others.rs`) compares with the real 6.12 uAPI headers.

use super::{
    ctrl_type, Codec, CodecDesc, CompoundControl, ControlValues, CtrlDesc, CtrlError,
    V4L2_CID_CODEC_STATELESS_BASE,
};

/// Offset and size of one field of a uAPI struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UapiField {
    /// The C field name.
    pub name: &'static str,
    /// `offsetof` as computed by Rust.
    pub offset: usize,
    /// `sizeof` of the field as computed by Rust.
    pub size: usize,
}

/// Layout of one uAPI struct as Rust sees it.
#[derive(Debug, Clone, Copy)]
pub struct UapiStruct {
    /// The C struct tag (`v4l2_ctrl_vp8_frame`).
    pub c_name: &'static str,
    /// The Rust type name.
    pub rust_name: &'static str,
    /// `size_of`.
    pub size: usize,
    /// `align_of`.
    pub align: usize,
    /// Every field, in declaration order.
    pub fields: &'static [UapiField],
}

/// One `#define` (or enum constant) of the uAPI header.
#[derive(Debug, Clone, Copy)]
pub struct UapiConst {
    /// The C macro name.
    pub name: &'static str,
    /// Its value.
    pub value: i128,
}

/// Declares `#[repr(C)]` zerocopy structs with the kernel's field names and
/// a `pub const LAYOUTS: &[UapiStruct]` describing all of them.
#[doc(hidden)]
#[macro_export]
macro_rules! uapi_structs {
    (
        $(
            $(#[doc = $doc:literal])*
            $c_name:literal pub struct $name:ident {
                $( $(#[doc = $fdoc:literal])* pub $field:ident : $ty:ty ),* $(,)?
            }
        )*
    ) => {
        $(
            $(#[doc = $doc])*
            #[repr(C)]
            #[derive(
                zerocopy::FromBytes,
                zerocopy::IntoBytes,
                zerocopy::Immutable,
                zerocopy::KnownLayout,
                Clone,
                Copy,
                Debug
            )]
            pub struct $name {
                $( $(#[doc = $fdoc])* pub $field: $ty, )*
            }
        )*

        /// Layout of every uAPI struct of this module (for the layout test).
        pub const LAYOUTS: &[$crate::ctrl::vp8::UapiStruct] = &[
            $(
                $crate::ctrl::vp8::UapiStruct {
                    c_name: $c_name,
                    rust_name: stringify!($name),
                    size: ::core::mem::size_of::<$name>(),
                    align: ::core::mem::align_of::<$name>(),
                    fields: &[
                        $(
                            $crate::ctrl::vp8::UapiField {
                                name: stringify!($field),
                                offset: ::core::mem::offset_of!($name, $field),
                                size: ::core::mem::size_of::<$ty>(),
                            },
                        )*
                    ],
                },
            )*
        ];
    };
}

/// Declares uAPI `#define`s as `pub const`s and a
/// `pub const CONSTS: &[UapiConst]` listing them (for the layout test).
#[doc(hidden)]
#[macro_export]
macro_rules! uapi_consts {
    ( $( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $val:expr; )* ) => {
        $(
            $(#[doc = $doc])*
            #[allow(missing_docs)]
            pub const $name: $ty = $val;
        )*

        /// Every uAPI constant of this module (for the layout test).
        pub const CONSTS: &[$crate::ctrl::vp8::UapiConst] = &[
            $( $crate::ctrl::vp8::UapiConst { name: stringify!($name), value: $name as i128 }, )*
        ];
    };
}

crate::uapi_consts! {
    V4L2_VP8_SEGMENT_FLAG_ENABLED: u32 = 0x01;
    V4L2_VP8_SEGMENT_FLAG_UPDATE_MAP: u32 = 0x02;
    V4L2_VP8_SEGMENT_FLAG_UPDATE_FEATURE_DATA: u32 = 0x04;
    V4L2_VP8_SEGMENT_FLAG_DELTA_VALUE_MODE: u32 = 0x08;
    V4L2_VP8_LF_ADJ_ENABLE: u32 = 0x01;
    V4L2_VP8_LF_DELTA_UPDATE: u32 = 0x02;
    V4L2_VP8_LF_FILTER_TYPE_SIMPLE: u32 = 0x04;
    V4L2_VP8_COEFF_PROB_CNT: u32 = 11;
    V4L2_VP8_MV_PROB_CNT: u32 = 19;
    V4L2_VP8_FRAME_FLAG_KEY_FRAME: u64 = 0x01;
    V4L2_VP8_FRAME_FLAG_EXPERIMENTAL: u64 = 0x02;
    V4L2_VP8_FRAME_FLAG_SHOW_FRAME: u64 = 0x04;
    V4L2_VP8_FRAME_FLAG_MB_NO_SKIP_COEFF: u64 = 0x08;
    V4L2_VP8_FRAME_FLAG_SIGN_BIAS_GOLDEN: u64 = 0x10;
    V4L2_VP8_FRAME_FLAG_SIGN_BIAS_ALT: u64 = 0x20;
    /// `V4L2_CID_CODEC_STATELESS_BASE + 200`
    V4L2_CID_STATELESS_VP8_FRAME: u32 = V4L2_CID_CODEC_STATELESS_BASE + 200;
}

crate::uapi_structs! {
    /// `struct v4l2_vp8_segment`: segment-based adjustments.
    "v4l2_vp8_segment" pub struct V4l2Vp8Segment {
        pub quant_update: [i8; 4],
        pub lf_update: [i8; 4],
        pub segment_probs: [u8; 3],
        pub padding: u8,
        pub flags: u32,
    }
    /// `struct v4l2_vp8_loop_filter`: loop filter type, levels and deltas.
    "v4l2_vp8_loop_filter" pub struct V4l2Vp8LoopFilter {
        pub ref_frm_delta: [i8; 4],
        pub mb_mode_delta: [i8; 4],
        pub sharpness_level: u8,
        pub level: u8,
        pub padding: u16,
        pub flags: u32,
    }
    /// `struct v4l2_vp8_quantization`: dequantisation indices.
    "v4l2_vp8_quantization" pub struct V4l2Vp8Quantization {
        pub y_ac_qi: u8,
        pub y_dc_delta: i8,
        pub y2_dc_delta: i8,
        pub y2_ac_delta: i8,
        pub uv_dc_delta: i8,
        pub uv_ac_delta: i8,
        pub padding: u16,
    }
    /// `struct v4l2_vp8_entropy`: probability tables after this frame's updates.
    "v4l2_vp8_entropy" pub struct V4l2Vp8Entropy {
        pub coeff_probs: [[[[u8; V4L2_VP8_COEFF_PROB_CNT as usize]; 3]; 8]; 4],
        pub y_mode_probs: [u8; 4],
        pub uv_mode_probs: [u8; 3],
        pub mv_probs: [[u8; V4L2_VP8_MV_PROB_CNT as usize]; 2],
        pub padding: [u8; 3],
    }
    /// `struct v4l2_vp8_entropy_coder_state`: boolean decoder state after
    /// the frame header.
    "v4l2_vp8_entropy_coder_state" pub struct V4l2Vp8EntropyCoderState {
        pub range: u8,
        pub value: u8,
        pub bit_count: u8,
        pub padding: u8,
    }
    /// `struct v4l2_ctrl_vp8_frame`: payload of `V4L2_CID_STATELESS_VP8_FRAME`.
    "v4l2_ctrl_vp8_frame" pub struct V4l2CtrlVp8Frame {
        pub segment: V4l2Vp8Segment,
        pub lf: V4l2Vp8LoopFilter,
        pub quant: V4l2Vp8Quantization,
        pub entropy: V4l2Vp8Entropy,
        pub coder_state: V4l2Vp8EntropyCoderState,
        pub width: u16,
        pub height: u16,
        pub horizontal_scale: u8,
        pub vertical_scale: u8,
        pub version: u8,
        pub prob_skip_false: u8,
        pub prob_intra: u8,
        pub prob_last: u8,
        pub prob_gf: u8,
        pub num_dct_parts: u8,
        pub first_part_size: u32,
        pub first_part_header_bits: u32,
        pub dct_part_sizes: [u32; 8],
        pub last_frame_ts: u64,
        pub golden_frame_ts: u64,
        pub alt_frame_ts: u64,
        pub flags: u64,
    }
}

// Sizes from the linux-libc-dev 6.12 headers (also checked field by field by
// tests/ctrl_layout_others.rs).
const _: () = assert!(core::mem::size_of::<V4l2Vp8Segment>() == 16);
const _: () = assert!(core::mem::size_of::<V4l2Vp8LoopFilter>() == 16);
const _: () = assert!(core::mem::size_of::<V4l2Vp8Quantization>() == 8);
const _: () = assert!(core::mem::size_of::<V4l2Vp8Entropy>() == 1104);
const _: () = assert!(core::mem::size_of::<V4l2Vp8EntropyCoderState>() == 4);
const _: () = assert!(core::mem::size_of::<V4l2CtrlVp8Frame>() == 1232);

/// C names of the controls of this module, for the layout test:
/// (id, `V4L2_CID_*`, `V4L2_CTRL_TYPE_*`, C type of one element).
pub const CONTROL_C_NAMES: &[(u32, &str, &str, &str)] = &[(
    V4L2_CID_STATELESS_VP8_FRAME,
    "V4L2_CID_STATELESS_VP8_FRAME",
    "V4L2_CTRL_TYPE_VP8_FRAME",
    "struct v4l2_ctrl_vp8_frame",
)];

/// Checks `v` lies in `lo..=hi`, else a range error naming `field`.
pub(crate) fn check_range<T: PartialOrd>(
    id: u32,
    field: &'static str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), CtrlError> {
    if v < lo || v > hi {
        Err(CtrlError::range(id, field))
    } else {
        Ok(())
    }
}

impl V4l2CtrlVp8Frame {
    /// True when this is a key frame (`V4L2_VP8_FRAME_FLAG_KEY_FRAME`).
    pub fn is_key_frame(&self) -> bool {
        self.flags & V4L2_VP8_FRAME_FLAG_KEY_FRAME != 0
    }
}

impl CompoundControl for V4l2CtrlVp8Frame {
    const ID: u32 = V4L2_CID_STATELESS_VP8_FRAME;
    const NAME: &'static str = "VP8 Frame Parameters";
    const V4L2_TYPE: u32 = ctrl_type::VP8_FRAME;

    fn default_value() -> Self {
        let mut v = Self::new_zeroed_value();
        // std_init_compound: one DCT partition.
        v.num_dct_parts = 1;
        v
    }

    fn validate(&mut self) -> Result<(), CtrlError> {
        const ID: u32 = V4L2_CID_STATELESS_VP8_FRAME;
        // Kernel: only 1, 2, 4 or 8 DCT partitions.
        if !matches!(self.num_dct_parts, 1 | 2 | 4 | 8) {
            return Err(CtrlError::range(ID, "num_dct_parts"));
        }
        // Kernel: zero every padding field.
        self.segment.padding = 0;
        self.lf.padding = 0;
        self.quant.padding = 0;
        self.entropy.padding = [0; 3];
        self.coder_state.padding = 0;

        // Stricter: y_ac_qi indexes the 128-entry dequantisation tables.
        check_range(ID, "quant.y_ac_qi", self.quant.y_ac_qi, 0, 127)?;
        // Stricter: 4-bit signed deltas keep y_ac_qi + delta within the table after clamping.
        let q = &self.quant;
        for (name, d) in [
            ("quant.y_dc_delta", q.y_dc_delta),
            ("quant.y2_dc_delta", q.y2_dc_delta),
            ("quant.y2_ac_delta", q.y2_ac_delta),
            ("quant.uv_dc_delta", q.uv_dc_delta),
            ("quant.uv_ac_delta", q.uv_ac_delta),
        ] {
            check_range(ID, name, d, -15, 15)?;
        }
        // Stricter: segment quantiser updates are 7-bit magnitudes (per-segment q index stays bounded).
        for d in self.segment.quant_update {
            check_range(ID, "segment.quant_update", d, -127, 127)?;
        }
        // Stricter: segment loop filter updates are 6-bit magnitudes (filter level stays bounded).
        for d in self.segment.lf_update {
            check_range(ID, "segment.lf_update", d, -63, 63)?;
        }
        // Stricter: level (6 bits) and sharpness (3 bits) index the loop filter limit tables.
        check_range(ID, "lf.level", self.lf.level, 0, 63)?;
        check_range(ID, "lf.sharpness_level", self.lf.sharpness_level, 0, 7)?;
        // Stricter: 6-bit magnitude deltas keep the per-macroblock filter level bounded.
        for d in self.lf.ref_frm_delta {
            check_range(ID, "lf.ref_frm_delta", d, -63, 63)?;
        }
        for d in self.lf.mb_mode_delta {
            check_range(ID, "lf.mb_mode_delta", d, -63, 63)?;
        }
        // Stricter: 2-bit scaling fields select one of 4 upscaling modes.
        check_range(ID, "horizontal_scale", self.horizontal_scale, 0, 3)?;
        check_range(ID, "vertical_scale", self.vertical_scale, 0, 3)?;
        // Stricter: version selects one of 4 reconstruction/loop filter variants.
        check_range(ID, "version", self.version, 0, 3)?;
        // Stricter: the header bits lie inside the first partition, so
        // skipping them never leaves it.
        if u64::from(self.first_part_header_bits) > u64::from(self.first_part_size) * 8 {
            return Err(CtrlError::range(ID, "first_part_header_bits"));
        }
        // Stricter: partition offsets (first partition + the used DCT
        // partitions) are computed without u32 overflow.
        let mut end = u64::from(self.first_part_size);
        for s in &self.dct_part_sizes[..usize::from(self.num_dct_parts)] {
            end += u64::from(*s);
        }
        if end > u64::from(u32::MAX) {
            return Err(CtrlError::range(ID, "dct_part_sizes"));
        }
        Ok(())
    }
}

/// Zero value helper shared by the codec modules.
pub(crate) trait NewZeroed: zerocopy::FromZeros + Sized {
    /// All-zero value.
    fn new_zeroed_value() -> Self {
        <Self as zerocopy::FromZeros>::new_zeroed()
    }
}
impl<T: zerocopy::FromZeros> NewZeroed for T {}

/// Every VP8 control: only the frame parameters (as in visl).
pub static CONTROLS: [CtrlDesc; 1] = [CtrlDesc::compound::<V4l2CtrlVp8Frame>()];

/// The VP8 control family.
pub static CODEC: CodecDesc = CodecDesc {
    codec: Codec::Vp8,
    controls: &CONTROLS,
    reference_timestamps,
};

/// Reference order: `last_frame_ts`, `golden_frame_ts`, `alt_frame_ts`.
/// A key frame references nothing, so nothing is appended for it.
fn reference_timestamps(ctrls: &ControlValues, out: &mut Vec<u64>) {
    let Some(f) = ctrls.get::<V4l2CtrlVp8Frame>() else {
        return;
    };
    if f.is_key_frame() {
        return;
    }
    out.extend([f.last_frame_ts, f.golden_frame_ts, f.alt_frame_ts]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctrl::{validate_write, ControlValues};
    use zerocopy::IntoBytes;

    const ID: u32 = V4L2_CID_STATELESS_VP8_FRAME;

    fn write(f: &V4l2CtrlVp8Frame) -> Result<Vec<u8>, CtrlError> {
        validate_write(Codec::Vp8, ID, f.as_bytes())
    }

    #[test]
    fn ids_and_names() {
        assert_eq!(V4L2_CID_STATELESS_VP8_FRAME, 0x00a4_0900 + 200);
        let d = CODEC.find(ID).unwrap();
        assert_eq!(d.name, "VP8 Frame Parameters");
        assert_eq!(d.elem_size, 1232);
        assert!(!d.is_dynamic_array());
        assert_eq!(CODEC.controls.len(), CONTROL_C_NAMES.len());
    }

    #[test]
    fn default_matches_kernel_and_validates() {
        let d = V4l2CtrlVp8Frame::default_value();
        assert_eq!(d.num_dct_parts, 1);
        let mut bytes = d.as_bytes().to_vec();
        bytes[ /* num_dct_parts */ core::mem::offset_of!(V4l2CtrlVp8Frame, num_dct_parts)] = 0;
        assert!(
            bytes.iter().all(|b| *b == 0),
            "only num_dct_parts is non-zero"
        );
        assert_eq!(write(&d).unwrap(), d.as_bytes());
        let vals = ControlValues::defaults(Codec::Vp8);
        assert_eq!(vals.get::<V4l2CtrlVp8Frame>().unwrap().num_dct_parts, 1);
    }

    #[test]
    fn num_dct_parts_kernel_rule() {
        for n in 0..=9u8 {
            let mut f = V4l2CtrlVp8Frame::default_value();
            f.num_dct_parts = n;
            assert_eq!(write(&f).is_ok(), matches!(n, 1 | 2 | 4 | 8), "n={n}");
        }
    }

    #[test]
    fn padding_is_zeroed() {
        let mut f = V4l2CtrlVp8Frame::default_value();
        f.segment.padding = 1;
        f.lf.padding = 2;
        f.quant.padding = 3;
        f.entropy.padding = [4; 3];
        f.coder_state.padding = 5;
        let out = write(&f).unwrap();
        let back = <V4l2CtrlVp8Frame as zerocopy::FromBytes>::read_from_bytes(&out).unwrap();
        assert_eq!(back.segment.padding, 0);
        assert_eq!(back.lf.padding, 0);
        assert_eq!(back.quant.padding, 0);
        assert_eq!(back.entropy.padding, [0; 3]);
        assert_eq!(back.coder_state.padding, 0);
    }

    #[test]
    fn stricter_checks_reject() {
        type Mutator = fn(&mut V4l2CtrlVp8Frame);
        let cases: &[(&str, Mutator)] = &[
            ("quant.y_ac_qi", |f| f.quant.y_ac_qi = 128),
            ("quant.y_dc_delta", |f| f.quant.y_dc_delta = 16),
            ("quant.y2_dc_delta", |f| f.quant.y2_dc_delta = -16),
            ("quant.y2_ac_delta", |f| f.quant.y2_ac_delta = 16),
            ("quant.uv_dc_delta", |f| f.quant.uv_dc_delta = 16),
            ("quant.uv_ac_delta", |f| f.quant.uv_ac_delta = -16),
            ("segment.quant_update", |f| f.segment.quant_update[2] = -128),
            ("segment.lf_update", |f| f.segment.lf_update[3] = 64),
            ("lf.level", |f| f.lf.level = 64),
            ("lf.sharpness_level", |f| f.lf.sharpness_level = 8),
            ("lf.ref_frm_delta", |f| f.lf.ref_frm_delta[0] = -64),
            ("lf.mb_mode_delta", |f| f.lf.mb_mode_delta[1] = 64),
            ("horizontal_scale", |f| f.horizontal_scale = 4),
            ("vertical_scale", |f| f.vertical_scale = 4),
            ("version", |f| f.version = 4),
            ("first_part_header_bits", |f| {
                f.first_part_size = 10;
                f.first_part_header_bits = 81;
            }),
            ("dct_part_sizes", |f| {
                f.num_dct_parts = 2;
                f.first_part_size = u32::MAX;
                f.dct_part_sizes[1] = 1;
            }),
        ];
        for (field, m) in cases {
            let mut f = V4l2CtrlVp8Frame::default_value();
            m(&mut f);
            assert_eq!(write(&f), Err(CtrlError::range(ID, field)), "{field}");
        }
    }

    #[test]
    fn stricter_checks_accept_limits() {
        let mut f = V4l2CtrlVp8Frame::default_value();
        f.quant.y_ac_qi = 127;
        f.quant.uv_ac_delta = -15;
        f.segment.quant_update = [-127, 127, 0, 5];
        f.segment.lf_update = [-63, 63, 0, 0];
        f.lf.level = 63;
        f.lf.sharpness_level = 7;
        f.horizontal_scale = 3;
        f.version = 3;
        f.first_part_size = 10;
        f.first_part_header_bits = 80;
        f.num_dct_parts = 8;
        f.dct_part_sizes = [100; 8];
        // Unused partition sizes do not count.
        f.num_dct_parts = 1;
        f.dct_part_sizes[7] = u32::MAX;
        assert!(write(&f).is_ok());
    }

    #[test]
    fn wrong_sizes() {
        let f = V4l2CtrlVp8Frame::default_value();
        let b = f.as_bytes();
        for len in [0, 1, b.len() - 1] {
            let mut v = b.to_vec();
            v.resize(len, 0);
            assert!(
                matches!(
                    validate_write(Codec::Vp8, ID, &v),
                    Err(CtrlError::Size { .. })
                ),
                "len {len}"
            );
        }
        // Longer payloads are cut to the control, as the kernel does.
        for len in [b.len() + 1, 2 * b.len()] {
            let mut v = b.to_vec();
            v.resize(len, 0xff);
            assert_eq!(validate_write(Codec::Vp8, ID, &v).unwrap(), b, "len {len}");
        }
    }

    #[test]
    fn reference_timestamps_order() {
        let mut vals = ControlValues::defaults(Codec::Vp8);
        let mut f = V4l2CtrlVp8Frame::default_value();
        f.last_frame_ts = 11;
        f.golden_frame_ts = 22;
        f.alt_frame_ts = 33;
        vals.set_raw(ID, f.as_bytes().to_vec());
        let mut out = vec![7];
        (CODEC.reference_timestamps)(&vals, &mut out);
        assert_eq!(out, [7, 11, 22, 33]);

        f.flags |= V4L2_VP8_FRAME_FLAG_KEY_FRAME;
        vals.set_raw(ID, f.as_bytes().to_vec());
        let mut out = Vec::new();
        (CODEC.reference_timestamps)(&vals, &mut out);
        assert!(out.is_empty());
    }
}
