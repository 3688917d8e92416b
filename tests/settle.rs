//! `/settle` against a real anvil, on SQLite and on PostgreSQL: batching, idempotency, failures
//! found before broadcast, pending answers, and authorizations settled by someone else.

#[macro_use]
mod common;

use std::collections::HashSet;

use alloy::primitives::{Address, U256};
use alloy::providers::ext::AnvilApi;
use common::*;
use futures::future::join_all;
use serde_json::Value;
use x402d::ledger::TxStatus;

async fn harness(backend: Backend, settlement: &str) -> Option<Harness> {
    Harness::start_with(HarnessOptions {
        backend,
        settlement: settlement.into(),
        ..Default::default()
    })
    .await
}

fn tx_of(answer: &Value) -> String {
    answer["transaction"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Every transaction we sent was mined and succeeded.
async fn assert_no_reverted_transactions(h: &Harness) -> usize {
    let txs = h.ledger().transactions(CHAIN_ID).await.unwrap();
    for t in &txs {
        assert_eq!(
            t.status,
            TxStatus::Mined,
            "transaction {} is {:?}",
            t.tx_hash,
            t.status
        );
        let receipt =
            alloy::providers::Provider::get_transaction_receipt(h.chain.provider(), t.tx_hash)
                .await
                .unwrap()
                .unwrap();
        assert!(
            receipt.status(),
            "transaction {} reverted on chain",
            t.tx_hash
        );
    }
    txs.len()
}

on_both_backends!(two_hundred_concurrent_payments_settle_in_few_transactions);
async fn two_hundred_concurrent_payments_settle_in_few_transactions(backend: Backend) {
    let Some(h) = harness(backend, "").await else {
        return;
    };
    let payers = h.funded_payers(200, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies: Vec<Value> = payers
        .iter()
        .enumerate()
        .map(|(i, p)| h.body(if i % 2 == 0 { 2 } else { 1 }, &req, &h.sign(p, &req)))
        .collect();
    let answers = join_all(bodies.iter().map(|b| h.settle(b))).await;
    let mut hashes = HashSet::new();
    for (i, (status, a)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{a}");
        assert_eq!(a["success"], true, "{a}");
        assert_eq!(a["payer"], payers[i].address().to_checksum(None));
        let network = if i % 2 == 0 {
            "eip155:84532"
        } else {
            "base-sepolia"
        };
        assert_eq!(a["network"], network, "{a}");
        hashes.insert(tx_of(a));
    }
    assert!(
        hashes.len() < 10,
        "200 payments took {} transactions",
        hashes.len()
    );
    for p in &payers {
        assert_eq!(
            h.usdc_balance(p.address()).await,
            U256::ZERO,
            "payer debited exactly once"
        );
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(200 * ONE_CENT));
    assert_eq!(assert_no_reverted_transactions(&h).await, hashes.len());
}

on_both_backends!(fifty_copies_of_one_payload_broadcast_once);
async fn fifty_copies_of_one_payload_broadcast_once(backend: Backend) {
    let Some(h) = harness(backend, "").await else {
        return;
    };
    let payer = h.funded_payer(ONE_CENT * 5).await;
    let req = h.requirement(ONE_CENT);
    let body = h.body(2, &req, &h.sign(&payer, &req));
    let answers = join_all((0..50).map(|_| h.settle(&body))).await;
    let first = tx_of(&answers[0].1);
    assert!(
        first.starts_with("0x") && first.len() == 66,
        "{}",
        answers[0].1
    );
    for (status, a) in &answers {
        assert_eq!(
            (*status, a["success"].clone()),
            (200, Value::Bool(true)),
            "{a}"
        );
        assert_eq!(tx_of(a), first, "every copy gets the same transaction");
    }
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(ONE_CENT * 4),
        "debited once"
    );
    assert_eq!(
        assert_no_reverted_transactions(&h).await,
        1,
        "exactly one broadcast"
    );
    // And a 51st copy after the fact answers from the ledger.
    let (_, again) = h.settle(&body).await;
    assert_eq!(
        (again["success"].clone(), tx_of(&again)),
        (Value::Bool(true), first)
    );
    // A different payload reusing the same key is a used nonce.
    let mut other = body.clone();
    other["paymentPayload"]["payload"]["signature"] =
        Value::String(format!("0x{}", "11".repeat(65)));
    let (status, answer) = h.settle(&other).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["errorReason"], "invalid_exact_evm_nonce_already_used",
        "{answer}"
    );
}

on_both_backends!(a_payer_who_spent_the_balance_is_refused_alone_then_settles_after_a_top_up);
async fn a_payer_who_spent_the_balance_is_refused_alone_then_settles_after_a_top_up(
    backend: Backend,
) {
    let Some(h) = harness(backend, "").await else {
        return;
    };
    let payers = h.funded_payers(5, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies: Vec<Value> = payers
        .iter()
        .map(|p| h.body(2, &req, &h.sign(p, &req)))
        .collect();
    // payers[0] pays someone else directly first: its /settle is accepted (a plain key needs no
    // RPC to be claimed) and then refused by the batcher's simulation, before any broadcast.
    let mut elsewhere = h.requirement(ONE_CENT);
    elsewhere.pay_to = Address::random();
    let p = h.sign(&payers[0], &elsewhere);
    h.chain
        .call(
            h.chain.usdc,
            x402d::exact::transfer_bytes(&p.authorization, &p.signature).to_vec(),
        )
        .await
        .unwrap();
    let answers = join_all(bodies.iter().map(|b| h.settle(b))).await;
    assert_eq!(answers[0].1["success"], false, "{}", answers[0].1);
    assert_eq!(
        answers[0].1["errorReason"], "invalid_exact_evm_insufficient_balance",
        "{}",
        answers[0].1
    );
    assert_eq!(
        answers[0].1["transaction"], "",
        "nothing was broadcast for it"
    );
    for (_, a) in &answers[1..] {
        assert_eq!(a["success"], true, "{a}");
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(4 * ONE_CENT));
    let txs = assert_no_reverted_transactions(&h).await;
    assert!((1..=4).contains(&txs), "{txs} transactions for 4 payments");

    // The refusal did not hold the key: verify and settle agree before and after a top-up.
    let (_, v) = h.verify(&bodies[0]).await;
    assert_eq!(v["isValid"], false, "{v}");
    h.chain
        .mint(h.chain.usdc, payers[0].address(), U256::from(ONE_CENT))
        .await
        .unwrap();
    let (_, v) = h.verify(&bodies[0]).await;
    assert_eq!(v["isValid"], true, "after the top-up: {v}");
    let (status, again) = h.settle(&bodies[0]).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["success"], true,
        "the same payload settles once payable: {again}"
    );
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(5 * ONE_CENT));
    assert_eq!(h.usdc_balance(payers[0].address()).await, U256::ZERO);
    // And a third time answers the recorded success, with the same transaction.
    let (_, third) = h.settle(&bodies[0]).await;
    assert_eq!(third["transaction"], again["transaction"], "{third}");
}

on_both_backends!(paused_mining_answers_pending_with_the_hash_then_success);
async fn paused_mining_answers_pending_with_the_hash_then_success(backend: Backend) {
    let Some(h) = harness(backend, "settle_timeout_seconds = 2").await else {
        return;
    };
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let body = h.body(2, &req, &h.sign(&payer, &req));
    h.chain.provider().anvil_set_auto_mine(false).await.unwrap();
    let (status, pending) = h.settle(&body).await;
    assert_eq!(status, 200);
    assert_eq!(pending["success"], false, "{pending}");
    assert_eq!(pending["errorReason"], "settlement_pending", "{pending}");
    let hash = tx_of(&pending);
    assert_eq!(
        hash.len(),
        66,
        "a pending answer always carries the hash: {pending}"
    );
    h.chain.provider().evm_mine(None).await.unwrap();
    let (_, done) = h.settle(&body).await;
    assert_eq!(done["success"], true, "{done}");
    assert_eq!(tx_of(&done), hash);
    assert_eq!(h.usdc_balance(payer.address()).await, U256::ZERO);
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(ONE_CENT));
    h.chain.provider().anvil_set_auto_mine(true).await.unwrap();
    assert_eq!(assert_no_reverted_transactions(&h).await, 1);
}

on_both_backends!(an_authorization_settled_by_a_third_party_reports_its_transaction);
async fn an_authorization_settled_by_a_third_party_reports_its_transaction(backend: Backend) {
    let Some(h) = harness(backend, "").await else {
        return;
    };
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let p = h.sign(&payer, &req);
    let receipt = h
        .chain
        .call(
            h.chain.usdc,
            x402d::exact::transfer_bytes(&p.authorization, &p.signature).to_vec(),
        )
        .await
        .unwrap();
    let (status, a) = h.settle(&h.body(2, &req, &p)).await;
    assert_eq!(status, 200);
    assert_eq!(a["success"], true, "{a}");
    assert_eq!(tx_of(&a), format!("{:#x}", receipt.transaction_hash));
    assert_eq!(
        assert_no_reverted_transactions(&h).await,
        0,
        "we sent nothing"
    );
}

#[tokio::test]
async fn settle_rejects_bad_input_like_verify() {
    let h = Harness::start().await;
    let (status, a) = h.post("/settle", "{oops").await;
    assert_eq!(
        (status, a["error"].clone()),
        (400, Value::String("invalid_json".into()))
    );
    let (status, _) = h.post("/settle", vec![b'x'; 1024 * 1024]).await;
    assert_eq!(status, 413);
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let mut short_nonce = h.body(2, &req, &h.sign(&payer, &req));
    short_nonce["paymentPayload"]["payload"]["authorization"]["nonce"] =
        Value::String(format!("0x{}", "ab".repeat(31)));
    let (status, _) = h.settle(&short_nonce).await;
    assert_eq!(status, 400);
    // An invalid payment is a 200 with success:false, transaction and network present.
    let mut underpaid = h.requirement(ONE_CENT);
    underpaid.amount = x402d::protocol::AtomicAmount::from_u64(ONE_CENT * 2);
    let (status, a) = h
        .settle(&h.body(2, &underpaid, &h.sign(&payer, &req)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(a["success"], false);
    assert_eq!(a["transaction"], "");
    assert_eq!(a["network"], "eip155:84532");
    assert_eq!(a["payer"], payer.address().to_checksum(None));
}

on_both_backends!(a_fee_on_transfer_token_is_caught_by_the_transfer_event_check);
/// A token that logs `AuthorizationUsed` but pays the payee less than was signed for must never be
/// reported as a successful payment; the USDC payments settled beside it are, with their `amount`.
async fn a_fee_on_transfer_token_is_caught_by_the_transfer_event_check(backend: Backend) {
    let Some(h) = harness(backend, "").await else {
        return;
    };
    let fee_payer = alloy::signers::local::PrivateKeySigner::random();
    h.chain
        .mint(h.fee_token, fee_payer.address(), U256::from(ONE_CENT))
        .await
        .unwrap();
    let mut fee_req = h.requirement(ONE_CENT);
    fee_req.asset = h.fee_token;
    fee_req.extra.as_mut().unwrap().name = Some("Fee Dollar".into());
    fee_req.extra.as_mut().unwrap().version = Some("1".into());
    let fee_body = h.body(2, &fee_req, &h.sign(&fee_payer, &fee_req));
    let (_, v) = h.verify(&fee_body).await;
    assert_eq!(v["isValid"], true, "nothing shows before the transfer: {v}");

    let payers = h.funded_payers(3, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let mut bodies = vec![fee_body.clone()];
    bodies.extend(payers.iter().map(|p| h.body(2, &req, &h.sign(p, &req))));
    let answers = join_all(bodies.iter().map(|b| h.settle(b))).await;

    let (status, fee) = &answers[0];
    assert_eq!(*status, 200, "{fee}");
    assert_eq!(fee["success"], false, "{fee}");
    assert_eq!(
        fee["errorReason"], "invalid_exact_evm_transfer_event_mismatch",
        "{fee}"
    );
    assert!(fee.get("amount").is_none(), "no amount on failure: {fee}");
    let message = fee["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("9900"), "says what moved: {message}");
    let hash = tx_of(fee);
    assert!(hash.starts_with("0x"), "the transaction that ran: {fee}");
    for (_, a) in &answers[1..] {
        assert_eq!(a["success"], true, "{a}");
        assert_eq!(a["amount"], ONE_CENT.to_string(), "{a}");
    }

    // On chain: the authorization was used once and the payee got 99 %.
    assert_eq!(
        h.chain.balance_of(h.fee_token, h.pay_to).await.unwrap(),
        U256::from(ONE_CENT - ONE_CENT / 100)
    );
    assert_eq!(
        h.chain
            .balance_of(h.fee_token, fee_payer.address())
            .await
            .unwrap(),
        U256::ZERO
    );
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(3 * ONE_CENT));
    let txs = assert_no_reverted_transactions(&h).await;

    // Asked again: the same recorded failure and transaction; nothing is sent again.
    let (_, again) = h.settle(&fee_body).await;
    assert_eq!(again["errorReason"], fee["errorReason"], "{again}");
    assert_eq!(tx_of(&again), hash);
    assert_eq!(h.ledger().transactions(CHAIN_ID).await.unwrap().len(), txs);
}

/// `body` with `extensions["payment-identifier"].info.id = id` in its payment payload.
fn with_identifier(mut body: Value, id: &str) -> Value {
    body["paymentPayload"]["extensions"] =
        serde_json::json!({"payment-identifier": {"info": {"id": id}}});
    body
}

on_both_backends!(a_payment_identifier_answers_its_recorded_outcome_and_refuses_another_payload);
async fn a_payment_identifier_answers_its_recorded_outcome_and_refuses_another_payload(
    backend: Backend,
) {
    let Some(h) = harness(backend, "").await else {
        return;
    };
    let supported: Value = h
        .http
        .get(format!("{}/supported", h.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        supported["extensions"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x == "payment-identifier")),
        "{supported}"
    );
    let payers = h.funded_payers(2, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let id = "order_2026-12-01_0001";
    let first = with_identifier(h.body(2, &req, &h.sign(&payers[0], &req)), id);
    let (_, v) = h.verify(&first).await;
    assert_eq!(v["isValid"], true, "{v}");
    let (status, settled) = h.settle(&first).await;
    assert_eq!(status, 200, "{settled}");
    assert_eq!(settled["success"], true, "{settled}");

    // Retried with the id: the recorded answers (without it, verify now sees a used nonce).
    let (_, v) = h.verify(&first).await;
    assert_eq!(v["isValid"], true, "the recorded verify answer: {v}");
    let mut plain = first.clone();
    plain["paymentPayload"]
        .as_object_mut()
        .unwrap()
        .remove("extensions");
    let (_, v) = h.verify(&plain).await;
    assert_eq!(v["isValid"], false, "{v}");
    // The same payload re-encoded (other key order and spacing) is the same payload.
    let reencoded = serde_json::to_string_pretty(&first).unwrap();
    let (status, again) = h.post("/settle", reencoded).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["transaction"], settled["transaction"], "{again}");

    // The same id with another payment: 409 on both routes, and nothing is settled.
    let other = with_identifier(h.body(2, &req, &h.sign(&payers[1], &req)), id);
    for route in ["/verify", "/settle"] {
        let (status, answer) = h.post(route, serde_json::to_vec(&other).unwrap()).await;
        assert_eq!(status, 409, "{route}: {answer}");
        assert_eq!(answer["error"], "payment_identifier_conflict", "{answer}");
        assert!(
            answer["message"].as_str().unwrap_or_default().contains(id),
            "{answer}"
        );
    }
    assert_eq!(
        h.usdc_balance(payers[1].address()).await,
        U256::from(ONE_CENT)
    );
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(ONE_CENT));

    // Another merchant (payTo) has its own ids.
    let mut elsewhere = h.requirement(ONE_CENT);
    elsewhere.pay_to = Address::random();
    let theirs = with_identifier(h.body(2, &elsewhere, &h.sign(&payers[1], &elsewhere)), id);
    let (status, v) = h.verify(&theirs).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["isValid"], true, "{v}");

    // Malformed ids are the client's mistake: 400 with a reason.
    for bad in [
        "short",
        "has space in it 0123456789",
        "ünïcödé-ünïcödé-ünïcödé",
    ] {
        let (status, answer) = h.verify(&with_identifier(plain.clone(), bad)).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains("payment-identifier"),
            "{answer}"
        );
    }
}

on_both_backends!(dust_far_expiry_foreign_payees_and_bad_payloads_cost_no_gas);
/// Guards against draining the operator's gas: dust, authorizations that would be held for ever,
/// payees the operator does not serve, amounts over the token's cap, and a stream of payloads that
/// fail simulation are all refused before anything is signed; a proper payment still settles.
async fn dust_far_expiry_foreign_payees_and_bad_payloads_cost_no_gas(backend: Backend) {
    use alloy::providers::Provider;
    let usdc = x402d::chain::builtin_usdc(CHAIN_ID).unwrap();
    let Some(h) = Harness::start_with(HarnessOptions {
        backend,
        exact: "pay_to_allowlist = [\"{pay_to}\"]".into(),
        tokens: format!(
            "[[networks.tokens]]\naddress = \"{}\"\nname = \"{}\"\nversion = \"2\"\ndecimals = 6\nmax_amount = \"1000000\"\n",
            usdc.0, usdc.1
        ),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let gas = h.gas_key.address();
    let gas_before = h.chain.provider().get_balance(gas).await.unwrap();
    let payer = h.funded_payer(5_000_000).await;
    let expect = |answer: &Value, reason: &str| {
        assert_eq!(answer["success"], false, "{answer}");
        assert_eq!(answer["errorReason"], reason, "{answer}");
        assert_eq!(answer["transaction"], "", "{answer}");
    };

    let dust = h.requirement(1);
    expect(
        &h.settle(&h.body(2, &dust, &h.sign(&payer, &dust))).await.1,
        "amount_below_minimum",
    );
    let over = h.requirement(2_000_000);
    expect(
        &h.settle(&h.body(2, &over, &h.sign(&payer, &over))).await.1,
        "amount_above_maximum",
    );
    let req = h.requirement(ONE_CENT);
    let mut far = x402d::client::AuthorizationTerms::for_requirement(
        req.pay_to,
        req.amount,
        req.max_timeout_seconds,
        now(),
    );
    far.valid_before = now() + 2 * 86_400;
    expect(
        &h.settle(&h.body(2, &req, &h.sign_terms(&payer, &req, &far)))
            .await
            .1,
        "invalid_exact_evm_payload_authorization_valid_before_too_far",
    );
    let mut foreign = h.requirement(ONE_CENT);
    foreign.pay_to = Address::random();
    expect(
        &h.settle(&h.body(2, &foreign, &h.sign(&payer, &foreign)))
            .await
            .1,
        "pay_to_not_allowed",
    );

    // 200 payloads that fail simulation (unfunded payers), all at once: refused, nothing sent.
    let broke: Vec<_> = (0..200)
        .map(|_| alloy::signers::local::PrivateKeySigner::random())
        .collect();
    let bodies: Vec<Value> = broke
        .iter()
        .map(|p| h.body(2, &req, &h.sign(p, &req)))
        .collect();
    let answers = join_all(bodies.iter().map(|b| h.settle(b))).await;
    for (status, a) in &answers {
        assert_eq!(*status, 200, "{a}");
        expect(a, "invalid_exact_evm_insufficient_balance");
    }
    assert!(h.ledger().transactions(CHAIN_ID).await.unwrap().is_empty());
    assert_eq!(
        h.chain.provider().get_transaction_count(gas).await.unwrap(),
        0
    );
    assert_eq!(
        h.chain.provider().get_balance(gas).await.unwrap(),
        gas_before
    );

    // The guards let a proper payment through.
    let (_, ok) = h.settle(&h.body(2, &req, &h.sign(&payer, &req))).await;
    assert_eq!(ok["success"], true, "{ok}");
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(ONE_CENT));
}
