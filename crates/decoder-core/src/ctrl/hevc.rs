//! Hevc stateless controls (placeholder: filled by the codec work).

use super::{Codec, CodecDesc, ControlValues};

/// The Hevc control family.
pub static CODEC: CodecDesc = CodecDesc {
    codec: Codec::Hevc,
    controls: &[],
    reference_timestamps: reference_timestamps,
};

fn reference_timestamps(_ctrls: &ControlValues, _out: &mut Vec<u64>) {}
