//! Any datagram: decoding never panics, and what decodes re-encodes to the
//! same bytes.
#![no_main]

use decoder_core::proto;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = proto::decode(data) {
        let seq = u32::from_le_bytes(data[12..16].try_into().unwrap());
        let again = msg.to_bytes(seq);
        assert_eq!(again, data, "decode/encode round trip differs");
    }
});
