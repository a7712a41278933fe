//! Any control payload for any control of any codec: validation never
//! panics, and a value it accepts is accepted again unchanged (the
//! normalisation is idempotent).
#![no_main]

use decoder_core::ctrl::{validate_write, Codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let codec = Codec::ALL[data[0] as usize % Codec::ALL.len()];
    let ctrls = codec.desc().controls;
    if ctrls.is_empty() {
        return;
    }
    let d = &ctrls[data[1] as usize % ctrls.len()];
    let payload = &data[2..];
    // Also try the payload cut or repeated to the control's exact size, so
    // validation code (not only the size check) is reached.
    let elem = d.elem_size as usize;
    let mut sized = payload.to_vec();
    sized.resize(elem.max(1), 0);
    for p in [payload, &sized[..]] {
        if let Ok(v) = validate_write(codec, d.id, p) {
            let v2 = validate_write(codec, d.id, &v).expect("accepted value refused on re-validation");
            assert_eq!(v, v2, "validation is not idempotent for {}", d.name);
        }
    }
});
