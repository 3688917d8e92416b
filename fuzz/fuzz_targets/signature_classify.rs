//! Any bytes as a payment's signature: classification (ECDSA, ERC-1271 contract, ERC-6492
//! wrapper) returns, never panics, and an ECDSA signature it accepts recovers without panicking.
#![no_main]

use alloy::primitives::{B256, Bytes, keccak256};
use libfuzzer_sys::fuzz_target;
use x402d::exact::signature::{SignatureClass, classify, recover};

fuzz_target!(|data: &[u8]| {
    let signature = Bytes::copy_from_slice(data);
    if let Ok(SignatureClass::Ecdsa(s)) = classify(&signature) {
        let digest: B256 = keccak256(data);
        let _ = recover(&s, digest);
    }
});
