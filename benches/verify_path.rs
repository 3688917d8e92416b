//! The pure verification path: parse a `/verify` body, compute the EIP-712 digest, classify and
//! recover the signature. Everything but the one RPC round trip.

use std::hint::black_box;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use criterion::{Criterion, criterion_group, criterion_main};
use x402d::client::{domain_separator, facilitator_body, payload_v2, sign_for_v2};
use x402d::exact::{SignatureClass, authorization_digest, classify, signature::recover};
use x402d::protocol::wire::{ExactExtra, RequirementsV2};
use x402d::protocol::{AtomicAmount, ChainId, PaymentBody, parse_facilitator_request};

fn bench(c: &mut Criterion) {
    let usdc = x402d::chain::builtin_usdc(84532)
        .map(|u| u.0)
        .unwrap_or_default();
    let req = RequirementsV2 {
        scheme: "exact".into(),
        network: "eip155:84532".into(),
        amount: AtomicAmount::from_u64(10_000),
        asset: usdc,
        pay_to: Address::repeat_byte(0x11),
        max_timeout_seconds: 60,
        extra: Some(ExactExtra {
            name: Some("USDC".into()),
            version: Some("2".into()),
            asset_transfer_method: None,
            facilitator_address: None,
        }),
    };
    let payer = PrivateKeySigner::random();
    let payload = sign_for_v2(&payer, &req, x402d::facilitator::unix_now()).expect("sign");
    let body = serde_json::to_vec(&facilitator_body(
        2,
        payload_v2(&req, &payload),
        serde_json::to_value(&req).expect("json"),
    ))
    .expect("json");
    let separator = domain_separator(ChainId(84532), usdc, "USDC", "2");

    c.bench_function("parse_verify_body", |b| {
        b.iter(|| parse_facilitator_request(black_box(&body)))
    });
    c.bench_function("parse_digest_recover", |b| {
        b.iter(|| {
            let request = parse_facilitator_request(black_box(&body)).expect("parse");
            let PaymentBody::Eip3009(p) = &request.body else {
                unreachable!()
            };
            let digest = authorization_digest(separator, &p.authorization);
            let Ok(SignatureClass::Ecdsa(sig)) = classify(&p.signature) else {
                unreachable!()
            };
            assert_eq!(recover(&sig, digest), Some(payer.address()));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
