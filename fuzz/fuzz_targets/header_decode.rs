//! Any text as an `X-PAYMENT` / `PAYMENT-SIGNATURE` header: decoding returns, never panics, and a
//! payload that decodes encodes back to a header that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x402d::protocol::codec::{decode_header, encode_header};
use x402d::protocol::wire::{PaymentPayloadV1, PaymentPayloadV2};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = decode_header::<PaymentPayloadV2>(&text) {
        let again: PaymentPayloadV2 = decode_header(&encode_header(&p)).expect("round trip");
        assert_eq!(
            serde_json::to_value(&again).ok(),
            serde_json::to_value(&p).ok()
        );
    }
    let _ = decode_header::<PaymentPayloadV1>(&text);
});
