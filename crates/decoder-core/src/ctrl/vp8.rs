//! Vp8 stateless controls (placeholder: filled by the codec work).

use super::{Codec, CodecDesc, ControlValues};

/// The Vp8 control family.
pub static CODEC: CodecDesc = CodecDesc {
    codec: Codec::Vp8,
    controls: &[],
    reference_timestamps: reference_timestamps,
};

fn reference_timestamps(_ctrls: &ControlValues, _out: &mut Vec<u64>) {}
