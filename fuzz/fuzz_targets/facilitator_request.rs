//! Any bytes as a `/verify` or `/settle` body: parsing returns a request or a 4xx reason, never
//! panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x402d::protocol::request::parse_facilitator_request;

fuzz_target!(|data: &[u8]| {
    let _ = parse_facilitator_request(data);
});
