//! Permit2 payments against a real anvil with Permit2 and the x402 proxies at their canonical
//! addresses: `exact` for a plain ERC-20 (no EIP-3009), `upto` charged at settle time, every
//! reason code of both paths from real signed payloads, and Permit2 and EIP-3009 payments mixed
//! in one batch, each settled exactly once. Every test asserts money: balances and nonce bits.

mod common;

use std::collections::HashSet;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use common::*;
use futures::future::join_all;
use serde_json::{Value, json};
use x402d::chain::bindings::{EXACT_PERMIT2_PROXY, IPermit2, PERMIT2, UPTO_PERMIT2_PROXY};
use x402d::client::{facilitator_body, payload_v2, sign_permit2, sign_permit2_for_v2};
use x402d::exact::permit2::Scheme;
use x402d::protocol::wire::{ExactExtra, Permit2Authorization, Permit2Payload, RequirementsV2};
use x402d::protocol::{AtomicAmount, ChainId};

const AMOUNT: u64 = 25_000;

/// An upto requirement for at most `max` of the plain token, bound to the harness's gas wallet.
fn upto_requirement(h: &Harness, max: u64) -> RequirementsV2 {
    RequirementsV2 {
        scheme: "upto".into(),
        extra: Some(ExactExtra {
            asset_transfer_method: Some("permit2".into()),
            facilitator_address: Some(h.gas_key.address()),
            ..Default::default()
        }),
        ..h.permit2_requirement(max)
    }
}

fn sign(payer: &PrivateKeySigner, req: &RequirementsV2) -> Permit2Payload {
    sign_permit2_for_v2(payer, req, now()).unwrap()
}

/// Signs `a` (after `edit`) as `payer` for `scheme`: a payload whose signature is genuine.
fn resign(
    payer: &PrivateKeySigner,
    scheme: Scheme,
    a: &Permit2Authorization,
    edit: impl FnOnce(&mut Permit2Authorization),
) -> Permit2Payload {
    let mut a = a.clone();
    edit(&mut a);
    sign_permit2(payer, ChainId(CHAIN_ID), PERMIT2, scheme, a).unwrap()
}

async fn plain_balance(h: &Harness, who: Address) -> U256 {
    h.chain.balance_of(h.chain.plain_token, who).await.unwrap()
}

/// Whether Permit2 has the payer's nonce bit set.
async fn nonce_used(h: &Harness, owner: Address, nonce: U256) -> bool {
    let data = IPermit2::nonceBitmapCall {
        owner,
        wordPos: nonce >> 8,
    }
    .abi_encode();
    let out = h
        .chain
        .provider()
        .call(
            TransactionRequest::default()
                .with_to(PERMIT2)
                .with_input(data),
        )
        .await
        .unwrap();
    let word = IPermit2::nonceBitmapCall::abi_decode_returns(&out).unwrap();
    word & (U256::from(1u8) << (nonce & U256::from(0xffu8)).to::<usize>()) != U256::ZERO
}

async fn expect_refused(h: &Harness, req: &RequirementsV2, payload: &Permit2Payload, reason: &str) {
    let (status, answer) = h.verify(&h.permit2_body(req, payload)).await;
    let want_status = if reason == "permit2_allowance_required" {
        412
    } else {
        200
    };
    assert_eq!(status, want_status, "{reason}: {answer}");
    assert_eq!(answer["isValid"], false, "{reason}: {answer}");
    assert_eq!(answer["invalidReason"], reason, "{answer}");
    assert_eq!(
        answer["payer"],
        payload.permit2_authorization.from.to_checksum(None),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_erc20_is_paid_through_permit2_exactly_once() {
    let h = Harness::start().await;
    let payer = h.plain_payer(AMOUNT * 2, true).await;
    let req = h.permit2_requirement(AMOUNT);
    let payload = sign(&payer, &req);
    assert_eq!(payload.permit2_authorization.spender, EXACT_PERMIT2_PROXY);
    let (status, verified) = h.verify(&h.permit2_body(&req, &payload)).await;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["isValid"], true, "{verified}");
    let before = plain_balance(&h, h.pay_to).await;
    let (status, settled) = h.settle(&h.permit2_body(&req, &payload)).await;
    assert_eq!(status, 200, "{settled}");
    assert_eq!(settled["success"], true, "{settled}");
    assert_eq!(settled["amount"], AMOUNT.to_string(), "{settled}");
    assert_eq!(
        plain_balance(&h, h.pay_to).await,
        before + U256::from(AMOUNT)
    );
    assert_eq!(plain_balance(&h, payer.address()).await, U256::from(AMOUNT));
    assert!(nonce_used(&h, payer.address(), payload.permit2_authorization.nonce).await);
    // The same payload again joins the first: same transaction, no second transfer.
    let (_, again) = h.settle(&h.permit2_body(&req, &payload)).await;
    assert_eq!(again["success"], true, "{again}");
    assert_eq!(again["transaction"], settled["transaction"]);
    assert_eq!(
        plain_balance(&h, h.pay_to).await,
        before + U256::from(AMOUNT)
    );
    // A verify of a settled permit is refused: its nonce is held.
    expect_refused(&h, &req, &payload, "permit2_invalid_nonce").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_permit2_reason_comes_from_a_real_signed_payload() {
    let h = Harness::start().await;
    let payer = h.plain_payer(AMOUNT, true).await;
    let req = h.permit2_requirement(AMOUNT);
    let good = sign(&payer, &req);
    let a = good.permit2_authorization.clone();
    let t = now();
    let cases: Vec<(&str, Permit2Payload)> = vec![
        (
            "invalid_permit2_spender",
            resign(&payer, Scheme::Exact, &a, |a| {
                a.spender = UPTO_PERMIT2_PROXY
            }),
        ),
        (
            "invalid_permit2_recipient_mismatch",
            resign(&payer, Scheme::Exact, &a, |a| {
                a.witness.to = Address::random()
            }),
        ),
        (
            "permit2_token_mismatch",
            resign(&payer, Scheme::Exact, &a, |a| {
                a.permitted.token = h.chain.usdc
            }),
        ),
        (
            "permit2_insufficient_amount",
            resign(&payer, Scheme::Exact, &a, |a| {
                a.permitted.amount = AtomicAmount::from_u64(AMOUNT + 1)
            }),
        ),
        (
            "permit2_deadline_expired",
            resign(&payer, Scheme::Exact, &a, |a| {
                a.deadline = U256::from(t - 1)
            }),
        ),
        (
            "permit2_not_yet_valid",
            resign(&payer, Scheme::Exact, &a, |a| {
                a.witness.valid_after = U256::from(t + 600)
            }),
        ),
        (
            "invalid_exact_evm_payload_authorization_valid_before_too_far",
            resign(&payer, Scheme::Exact, &a, |a| {
                a.deadline = U256::from(t + 10 * 86_400)
            }),
        ),
    ];
    for (reason, payload) in &cases {
        expect_refused(&h, &req, payload, reason).await;
    }
    // Signed by someone else, claiming the payer: the signature does not recover.
    let stranger = PrivateKeySigner::random();
    let mut forged = resign(&stranger, Scheme::Exact, &a, |_| {});
    forged.permit2_authorization.from = payer.address();
    expect_refused(&h, &req, &forged, "invalid_permit2_signature").await;
    // No approval to Permit2: 412, the payer's cue to approve once.
    let unapproved = h.plain_payer(AMOUNT, false).await;
    expect_refused(
        &h,
        &req,
        &sign(&unapproved, &req),
        "permit2_allowance_required",
    )
    .await;
    // Approved but too poor.
    let poor = h.plain_payer(AMOUNT - 1, true).await;
    expect_refused(
        &h,
        &req,
        &sign(&poor, &req),
        "invalid_exact_evm_insufficient_balance",
    )
    .await;
    // The plain token has no EIP-3009: an EIP-3009 payload for it is the wrong method.
    let mut eip3009_req = req.clone();
    eip3009_req.extra = Some(ExactExtra {
        name: Some("Test Token".into()),
        version: Some("1".into()),
        ..Default::default()
    });
    let eip3009 = h.sign(&payer, &eip3009_req);
    let (_, answer) = h.verify(&h.body(2, &eip3009_req, &eip3009)).await;
    assert_eq!(
        answer["invalidReason"], "unsupported_payload_type",
        "{answer}"
    );
    // A nonce the payer already used on chain (settled by anyone) is refused before settling.
    let (_, settled) = h.settle(&h.permit2_body(&req, &good)).await;
    assert_eq!(settled["success"], true, "{settled}");
    let payer2 = h.plain_payer(AMOUNT, true).await;
    let mut reused = sign(&payer2, &req);
    let nonce = reused.permit2_authorization.nonce;
    h.chain
        .send_from(
            &payer2,
            TransactionRequest::default().with_to(PERMIT2).with_input(
                IPermit2::invalidateUnorderedNoncesCall {
                    wordPos: nonce >> 8,
                    mask: U256::from(1u8) << (nonce & U256::from(0xffu8)).to::<usize>(),
                }
                .abi_encode(),
            ),
        )
        .await
        .unwrap();
    expect_refused(&h, &req, &reused, "permit2_invalid_nonce").await;
    let (_, refused) = h.settle(&h.permit2_body(&req, &reused)).await;
    assert_eq!(refused["success"], false, "{refused}");
    assert_eq!(refused["errorReason"], "permit2_invalid_nonce", "{refused}");
    assert_eq!(
        plain_balance(&h, payer2.address()).await,
        U256::from(AMOUNT)
    );
    // A payload whose signature covers another nonce: what the chain would refuse.
    reused.permit2_authorization.nonce += U256::from(1u8);
    expect_refused(&h, &req, &reused, "invalid_permit2_signature").await;
    // Nothing moved but the one good payment.
    assert_eq!(plain_balance(&h, h.pay_to).await, U256::from(AMOUNT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upto_charges_zero_part_or_the_maximum_and_never_more() {
    let h = Harness::start().await;
    let (_, supported) = {
        let r = h
            .http
            .get(format!("{}/supported", h.url()))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let kind = supported["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["scheme"] == "upto")
        .cloned()
        .unwrap_or_else(|| panic!("no upto kind: {supported}"));
    assert_eq!(
        kind["extra"]["facilitatorAddress"],
        h.gas_key.address().to_checksum(None)
    );
    let max = 100_000u64;
    let req = upto_requirement(&h, max);
    let mut paid = U256::ZERO;
    for charge in [0, 40_000, max] {
        let payer = h.plain_payer(max, true).await;
        let payload = sign(&payer, &req);
        assert_eq!(payload.permit2_authorization.spender, UPTO_PERMIT2_PROXY);
        let (status, verified) = h.verify(&h.permit2_body(&req, &payload)).await;
        assert_eq!(
            (status, &verified["isValid"]),
            (200, &json!(true)),
            "{verified}"
        );
        let mut at_settle = req.clone();
        at_settle.amount = AtomicAmount::from_u64(charge);
        let settle_body = facilitator_body(
            2,
            payload_v2(&req, &payload),
            serde_json::to_value(&at_settle).unwrap(),
        );
        let (_, settled) = h.settle(&settle_body).await;
        assert_eq!(settled["success"], true, "charge {charge}: {settled}");
        assert_eq!(settled["amount"], charge.to_string(), "{settled}");
        paid += U256::from(charge);
        assert_eq!(plain_balance(&h, h.pay_to).await, paid, "charge {charge}");
        assert_eq!(
            plain_balance(&h, payer.address()).await,
            U256::from(max - charge)
        );
        assert!(nonce_used(&h, payer.address(), payload.permit2_authorization.nonce).await);
        // Another amount for the same permit is not a retry: refused, nothing moves.
        let mut other = at_settle.clone();
        other.amount = AtomicAmount::from_u64(1);
        let (_, again) = h
            .settle(&facilitator_body(
                2,
                payload_v2(&req, &payload),
                serde_json::to_value(&other).unwrap(),
            ))
            .await;
        assert_eq!(again["success"], false, "{again}");
        assert_eq!(plain_balance(&h, h.pay_to).await, paid);
    }
    // Over the maximum: refused at settle, nothing sent.
    let payer = h.plain_payer(max * 2, true).await;
    let payload = sign(&payer, &req);
    let mut over = req.clone();
    over.amount = AtomicAmount::from_u64(max + 1);
    let (_, refused) = h
        .settle(&facilitator_body(
            2,
            payload_v2(&req, &payload),
            serde_json::to_value(&over).unwrap(),
        ))
        .await;
    assert_eq!(refused["success"], false, "{refused}");
    assert_eq!(
        refused["errorReason"],
        "invalid_upto_evm_payload_settlement_exceeds_amount"
    );
    // A witness bound to a wallet that is not ours cannot be settled by us.
    let mut elsewhere = req.clone();
    elsewhere.extra = Some(ExactExtra {
        asset_transfer_method: Some("permit2".into()),
        facilitator_address: Some(Address::random()),
        ..Default::default()
    });
    let foreign = sign(&payer, &elsewhere);
    expect_refused(
        &h,
        &req,
        &foreign,
        "invalid_upto_evm_payload_facilitator_mismatch",
    )
    .await;
    assert_eq!(
        plain_balance(&h, payer.address()).await,
        U256::from(max * 2)
    );
    assert!(!nonce_used(&h, payer.address(), payload.permit2_authorization.nonce).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permit2_and_eip3009_payments_share_batches_and_each_settles_once() {
    let h = Harness::start_with(HarnessOptions {
        settlement: "batch_window_ms = 300".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    const EACH: usize = 6;
    let usdc_payers = h.funded_payers(EACH, AMOUNT).await;
    let mut plain_payers = Vec::new();
    for _ in 0..EACH {
        plain_payers.push(h.plain_payer(AMOUNT, true).await);
    }
    let usdc_req = h.requirement(AMOUNT);
    let plain_req = h.permit2_requirement(AMOUNT);
    let mut bodies = h.v2_bodies(&usdc_payers, &usdc_req);
    bodies.extend(
        plain_payers
            .iter()
            .map(|p| h.permit2_body(&plain_req, &sign(p, &plain_req))),
    );
    // Each body twice, all at once: duplicates must join, never pay twice.
    let twice: Vec<Value> = bodies.iter().chain(bodies.iter()).cloned().collect();
    let answers = join_all(twice.iter().map(|b| h.settle(b))).await;
    let mut hashes = HashSet::new();
    for (status, a) in &answers {
        assert_eq!(*status, 200, "{a}");
        assert_eq!(a["success"], true, "{a}");
        hashes.insert(a["transaction"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        h.usdc_balance(h.pay_to).await,
        U256::from(AMOUNT * EACH as u64)
    );
    assert_eq!(
        plain_balance(&h, h.pay_to).await,
        U256::from(AMOUNT * EACH as u64)
    );
    for p in usdc_payers.iter().chain(&plain_payers) {
        assert_eq!(h.usdc_balance(p.address()).await, U256::ZERO);
        assert_eq!(plain_balance(&h, p.address()).await, U256::ZERO);
    }
    // Batched: fewer transactions than payments, and at least one carries both kinds.
    assert!(hashes.len() < 2 * EACH, "{} transactions", hashes.len());
    let mut mixed = false;
    for hash in &hashes {
        let receipt = h
            .chain
            .provider()
            .get_transaction_receipt(hash.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        let tokens: HashSet<Address> = receipt.inner.logs().iter().map(|l| l.address()).collect();
        mixed |= tokens.contains(&h.chain.usdc) && tokens.contains(&h.chain.plain_token);
    }
    assert!(mixed, "no transaction settled both kinds");
}

alloy::sol! {
    /// contracts/src/SmartWallet.sol: its owner makes it call out.
    interface ISmartWallet {
        function execute(address target, uint256 value, bytes data) external returns (bytes);
    }
}

/// A deployed ERC-1271 wallet pays a plain ERC-20 through Permit2 (its owner signs, Permit2 asks
/// the wallet); a stranger's signature is refused with no ECDSA fallback; a counterfactual
/// (ERC-6492) wallet cannot have approved Permit2 yet, which is what it is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_wallets_pay_through_permit2() {
    use alloy::primitives::B256;
    use alloy::sol_types::SolValue;
    let h = Harness::start().await;
    let token = h.chain.plain_token;
    let owner = PrivateKeySigner::random();
    let wallet = h
        .chain
        .create_wallet(
            h.chain.wallet_factory,
            owner.address(),
            B256::repeat_byte(9),
        )
        .await
        .unwrap();
    h.chain
        .fund_token(token, wallet, U256::from(AMOUNT))
        .await
        .unwrap();
    h.chain
        .fund_eth(owner.address(), U256::from(10u128.pow(17)))
        .await
        .unwrap();
    let approve = ISmartWallet::executeCall {
        target: token,
        value: U256::ZERO,
        data: x402d::chain::bindings::IErc20::approveCall {
            spender: PERMIT2,
            amount: U256::MAX,
        }
        .abi_encode()
        .into(),
    };
    h.chain
        .send_from(
            &owner,
            TransactionRequest::default()
                .with_to(wallet)
                .with_input(approve.abi_encode()),
        )
        .await
        .unwrap();
    let req = h.permit2_requirement(AMOUNT);
    // The digest does not cover the owner: the owner signs, the wallet is `from`.
    let as_wallet = |signer: &PrivateKeySigner| {
        let mut p = sign(signer, &req);
        p.permit2_authorization.from = wallet;
        p
    };
    expect_refused(
        &h,
        &req,
        &as_wallet(&PrivateKeySigner::random()),
        "invalid_permit2_signature",
    )
    .await;
    let payload = as_wallet(&owner);
    let (_, verified) = h.verify(&h.permit2_body(&req, &payload)).await;
    assert_eq!(verified["isValid"], true, "{verified}");
    let (_, settled) = h.settle(&h.permit2_body(&req, &payload)).await;
    assert_eq!(settled["success"], true, "{settled}");
    assert_eq!(plain_balance(&h, h.pay_to).await, U256::from(AMOUNT));
    assert_eq!(plain_balance(&h, wallet).await, U256::ZERO);

    // Counterfactual: funded at its future address, never deployed, so never approved.
    let salt = B256::repeat_byte(10);
    let future = h
        .chain
        .predicted_wallet(h.chain.wallet_factory, owner.address(), salt)
        .await
        .unwrap();
    h.chain
        .fund_token(token, future, U256::from(AMOUNT))
        .await
        .unwrap();
    let mut p = sign(&owner, &req);
    p.permit2_authorization.from = future;
    let mut wrapped = (
        h.chain.wallet_factory,
        x402d::dev::chain::DevChain::create_wallet_calldata(owner.address(), salt),
        p.signature.clone(),
    )
        .abi_encode_params();
    wrapped.extend_from_slice(&x402d::exact::signature::ERC6492_MAGIC);
    p.signature = wrapped.into();
    expect_refused(&h, &req, &p, "permit2_allowance_required").await;
    assert_eq!(plain_balance(&h, future).await, U256::from(AMOUNT));
}
