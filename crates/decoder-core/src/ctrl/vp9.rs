//! Vp9 stateless controls (placeholder: filled by the codec work).

use super::{Codec, CodecDesc, ControlValues};

/// The Vp9 control family.
pub static CODEC: CodecDesc = CodecDesc {
    codec: Codec::Vp9,
    controls: &[],
    reference_timestamps: reference_timestamps,
};

fn reference_timestamps(_ctrls: &ControlValues, _out: &mut Vec<u64>) {}
