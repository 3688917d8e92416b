//! Dial, the embedded merchant, end to end: real anvil, real database, x402d serving the facilitator
//! and Dial together; payments made with the same `pay` code as `x402d pay`.

mod common;

use alloy::primitives::{Address, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;
use x402d::client::{
    AuthorizationTerms, PayError, PayRequest, pay, payload_v2, sign_authorization,
};
use x402d::protocol::wire::{PaymentRequiredV2, RequirementsV2, SettleResponse};
use x402d::protocol::{ChainId, decode_header, encode_header};

const SMS_PRICE: u64 = 50_000; // $0.05

async fn dial_harness(extra: &str) -> Harness {
    Harness::start_with(HarnessOptions {
        dial: Some(extra.to_owned()),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The receipts live beside the ledger: the paid flow and its replay on PostgreSQL too.
#[tokio::test]
async fn paid_and_replayed_on_postgres() {
    let Some(h) = Harness::start_with(HarnessOptions {
        backend: Backend::Postgres,
        dial: Some(String::new()),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let payer = h.funded_payer(1_000_000).await;
    let body = json!({"to": "+14155550100", "message": "pg"});
    let (_, required) = offer_of(&h, "/api/v1/sms/send", &body).await;
    let offer = &required.accepts[0];
    let header = payment_header(
        &h,
        &payer,
        offer,
        &AuthorizationTerms::for_requirement(offer.pay_to, offer.amount, 60, now()),
    );
    for _ in 0..2 {
        let (status, _, answer) = post_paid(
            &h,
            "/api/v1/sms/send",
            &body,
            ("payment-signature", &header),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 1);
    assert_eq!(receipt_status(&h).await.len(), 1);
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(1_000_000 - SMS_PRICE)
    );
}

fn sms_request(h: &Harness, to: &str) -> PayRequest {
    PayRequest {
        method: reqwest::Method::POST,
        url: format!("{}/api/v1/sms/send", h.url()),
        body: Some(json!({"to": to, "message": "hello from x402"}).to_string()),
        headers: Vec::new(),
        network: None,
        asset: None,
        max_amount: "1".into(),
        force_v1: false,
        scheme: None,
    }
}

async fn count(h: &Harness, sql: &str) -> i64 {
    let store = x402d::merchant::store::Store::connect(&h.ledger_url)
        .await
        .unwrap();
    let pool = store.pool();
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap();
    row.try_get::<i64, _>(0).unwrap()
}

async fn receipt_status(h: &Harness) -> Vec<(String, Option<String>)> {
    let store = x402d::merchant::store::Store::connect(&h.ledger_url)
        .await
        .unwrap();
    let pool = store.pool();
    sqlx::query("SELECT status, tx_hash FROM dial_receipts ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.try_get("status").unwrap(), r.try_get("tx_hash").unwrap()))
        .collect()
}

/// The 402 of an unpaid request, decoded from its header.
async fn offer_of(
    h: &Harness,
    path: &str,
    body: &Value,
) -> (reqwest::header::HeaderMap, PaymentRequiredV2) {
    let r = h
        .http
        .post(format!("{}{path}", h.url()))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    let headers = r.headers().clone();
    let required: PaymentRequiredV2 =
        decode_header(headers["payment-required"].to_str().unwrap()).unwrap();
    let body: PaymentRequiredV2 = r.json().await.unwrap();
    assert_eq!(
        body, required,
        "the body carries the same JSON as the header"
    );
    (headers, required)
}

/// A `PAYMENT-SIGNATURE` value for `offer`, with terms the test chooses.
fn payment_header(
    h: &Harness,
    payer: &PrivateKeySigner,
    offer: &RequirementsV2,
    terms: &AuthorizationTerms,
) -> String {
    let signed = sign_authorization(
        payer,
        ChainId(CHAIN_ID),
        offer.asset,
        &h.chain.usdc_name,
        "2",
        terms,
    )
    .unwrap();
    encode_header(&payload_v2(offer, &signed))
}

async fn post_paid(
    h: &Harness,
    path: &str,
    body: &Value,
    header: (&str, &str),
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = h
        .http
        .post(format!("{}{path}", h.url()))
        .header(header.0, header.1)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn unpaid_requests_get_a_v2_offer_browsers_a_page() {
    let h = dial_harness("").await;
    let (headers, required) = offer_of(
        &h,
        "/api/v1/sms/send",
        &json!({"to": "+14155550100", "message": "hi"}),
    )
    .await;
    assert_eq!(
        required.accepts.len(),
        2,
        "the chain's USDC, exact and upto: {:?}",
        required.accepts
    );
    // Sending is metered: also offered as upto, up to the longest message, bound to the
    // facilitator's upto wallet.
    let upto = &required.accepts[1];
    assert_eq!(upto.scheme, "upto");
    assert_eq!(upto.amount.0, U256::from(SMS_PRICE * 10));
    let upto_extra = upto.extra.clone().unwrap();
    assert_eq!(upto_extra.asset_transfer_method.as_deref(), Some("permit2"));
    assert_eq!(upto_extra.facilitator_address, Some(h.gas_key.address()));
    let offer = &required.accepts[0];
    assert_eq!(offer.scheme, "exact");
    assert_eq!(offer.network, "eip155:84532");
    assert_eq!(offer.asset, h.chain.usdc);
    assert_eq!(offer.pay_to, h.pay_to);
    assert_eq!(offer.amount.0, U256::from(SMS_PRICE));
    let extra = offer.extra.clone().unwrap();
    assert_eq!(extra.name.as_deref(), Some(h.chain.usdc_name.as_str()));
    assert_eq!(extra.version.as_deref(), Some("2"));
    assert!(required.resource.url.ends_with("/api/v1/sms/send"));
    assert!(headers.contains_key("x-ratelimit-remaining"));

    // Browser: an HTML page, still a 402 with the header.
    let r = h
        .http
        .post(format!("{}/api/v1/sms/send", h.url()))
        .header("accept", "text/html,application/xhtml+xml")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .header("origin", "https://agent.example")
        .json(&json!({"to": "+14155550100", "message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(r.headers().contains_key("payment-required"));
    let expose = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for name in ["payment-required", "payment-response", "x-payment-response"] {
        assert!(expose.contains(name), "{name} not exposed: {expose}");
    }
    let page = r.text().await.unwrap();
    assert!(page.contains("<h1>Payment required</h1>") && page.contains("eip155:84532"));
}

#[tokio::test]
async fn a_paid_sms_settles_then_sends_and_is_receipted() {
    let h = dial_harness("").await;
    let payer = h.funded_payer(1_000_000).await;
    let before = h.usdc_balance(h.pay_to).await;
    let out = pay(&h.http, &payer, &sms_request(&h, "+14155550100"))
        .await
        .unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    let body: Value = serde_json::from_str(&out.body).unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["to"], "+14155550100");
    assert_eq!(body["segments"], 1);
    let receipt = out.receipt.expect("PAYMENT-RESPONSE");
    assert!(receipt.success);
    assert_eq!(receipt.network, "eip155:84532");
    assert_eq!(receipt.transaction.len(), 66);
    // Money moved on chain, exactly once.
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(1_000_000 - SMS_PRICE)
    );
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(SMS_PRICE)
    );
    // The sandbox recorded the message; the receipt names the transaction.
    let id = body["messageId"].as_str().unwrap();
    assert_eq!(count(&h, &format!("SELECT COUNT(*) FROM dial_messages WHERE message_id = '{id}' AND recipient = '+14155550100'")).await, 1);
    assert_eq!(
        receipt_status(&h).await,
        vec![("fulfilled".to_owned(), Some(receipt.transaction.clone()))]
    );
}

#[tokio::test]
async fn a_v1_x_payment_is_accepted_too() {
    let h = dial_harness("").await;
    let payer = h.funded_payer(1_000_000).await;
    let mut request = sms_request(&h, "+14155550100");
    request.force_v1 = true;
    let out = pay(&h.http, &payer, &request).await.unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    let receipt = out.receipt.expect("X-PAYMENT-RESPONSE");
    assert!(receipt.success);
    assert_eq!(
        receipt.network, "base-sepolia",
        "v1 answers carry the v1 network name"
    );
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(1_000_000 - SMS_PRICE)
    );
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 1);
}

#[tokio::test]
async fn bad_payments_get_402_with_the_reason_and_change_nothing() {
    let h = dial_harness("").await;
    let payer = h.funded_payer(1_000_000).await;
    let body = json!({"to": "+14155550100", "message": "hi"});
    let (_, required) = offer_of(&h, "/api/v1/sms/send", &body).await;
    let offer = &required.accepts[0];
    let usual = || AuthorizationTerms::for_requirement(offer.pay_to, offer.amount, 60, now());
    let underpaid = AuthorizationTerms {
        value: x402d::protocol::AtomicAmount::from_u64(SMS_PRICE - 1),
        ..usual()
    };
    let wrong_pay_to = AuthorizationTerms {
        to: Address::random(),
        ..usual()
    };
    let expired = AuthorizationTerms {
        valid_after: now() - 3600,
        valid_before: now() - 60,
        ..usual()
    };
    for (terms, reason) in [
        (
            underpaid,
            "invalid_exact_evm_payload_authorization_value_mismatch",
        ),
        (wrong_pay_to, "invalid_exact_evm_recipient_mismatch"),
        (
            expired,
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
    ] {
        let header = payment_header(&h, &payer, offer, &terms);
        let (status, headers, answer) = post_paid(
            &h,
            "/api/v1/sms/send",
            &body,
            ("payment-signature", &header),
        )
        .await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{answer}");
        assert_eq!(answer["error"], reason);
        let again: PaymentRequiredV2 =
            decode_header(headers["payment-required"].to_str().unwrap()).unwrap();
        assert_eq!(again.error.as_deref(), Some(reason));
    }
    // An offer we never made is refused before the facilitator is asked.
    let mut cheaper = offer.clone();
    cheaper.amount = x402d::protocol::AtomicAmount::from_u64(1);
    let header = payment_header(
        &h,
        &payer,
        &cheaper,
        &AuthorizationTerms::for_requirement(offer.pay_to, cheaper.amount, 60, now()),
    );
    let (status, _, answer) = post_paid(
        &h,
        "/api/v1/sms/send",
        &body,
        ("payment-signature", &header),
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid_payment_requirements")
    );
    // Garbage in the header: 402 with a reason, not a 500.
    let (status, _, answer) = post_paid(
        &h,
        "/api/v1/sms/send",
        &body,
        ("payment-signature", "%%%not base64"),
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid_payload")
    );

    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(1_000_000u64)
    );
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 0);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_receipts").await, 0);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM payments").await, 0);
}

#[tokio::test]
async fn a_replayed_payment_header_sends_nothing_twice() {
    let h = dial_harness("").await;
    let payer = h.funded_payer(1_000_000).await;
    let body = json!({"to": "+14155550100", "message": "once"});
    let (_, required) = offer_of(&h, "/api/v1/sms/send", &body).await;
    let offer = &required.accepts[0];
    let header = payment_header(
        &h,
        &payer,
        offer,
        &AuthorizationTerms::for_requirement(offer.pay_to, offer.amount, 60, now()),
    );
    let (s1, h1, a1) = post_paid(
        &h,
        "/api/v1/sms/send",
        &body,
        ("payment-signature", &header),
    )
    .await;
    let (s2, h2, a2) = post_paid(
        &h,
        "/api/v1/sms/send",
        &body,
        ("payment-signature", &header),
    )
    .await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{a1} {a2}");
    assert_eq!(a1, a2, "the replay gets the recorded answer");
    let r1: SettleResponse = decode_header(h1["payment-response"].to_str().unwrap()).unwrap();
    let r2: SettleResponse = decode_header(h2["payment-response"].to_str().unwrap()).unwrap();
    assert_eq!(r1.transaction, r2.transaction);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 1);
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(1_000_000 - SMS_PRICE)
    );
    // The same payment for a different request is refused.
    let other = json!({"to": "+14155550199", "message": "twice?"});
    let (s3, _, a3) = post_paid(
        &h,
        "/api/v1/sms/send",
        &other,
        ("payment-signature", &header),
    )
    .await;
    assert_eq!(s3, StatusCode::PAYMENT_REQUIRED);
    assert!(
        a3["error"]
            .as_str()
            .unwrap()
            .starts_with("payment_already_used"),
        "{a3}"
    );
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 1);
}

#[tokio::test]
async fn an_invalid_request_with_a_valid_payment_is_400_and_free() {
    let h = dial_harness("").await;
    let payer = h.funded_payer(1_000_000).await;
    for (to, message) in [
        ("4155550100", "hi"),
        ("+14155550100", ""),
        ("+14155550100", &"x".repeat(2000)),
    ] {
        let mut request = sms_request(&h, to);
        request.body = Some(json!({"to": to, "message": message}).to_string());
        let out = pay(&h.http, &payer, &request).await.unwrap();
        assert_eq!(out.status, 400, "{}", out.body);
        let body: Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["error"], "invalid_request");
        assert!(out.receipt.is_none());
    }
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(1_000_000u64)
    );
    assert_eq!(count(&h, "SELECT COUNT(*) FROM payments").await, 0);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_receipts").await, 0);
}

#[tokio::test]
async fn the_client_refuses_a_price_above_its_limit() {
    let h = dial_harness("").await;
    let payer = h.funded_payer(200_000_000).await;
    let request = PayRequest {
        url: format!("{}/api/v1/numbers/buy/us", h.url()),
        body: Some("{}".into()),
        ..sms_request(&h, "+14155550100")
    };
    match pay(&h.http, &payer, &request).await {
        Err(PayError::TooExpensive { price, max }) => {
            assert_eq!(price, "$100");
            assert_eq!(max, "$1");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(200_000_000u64)
    );
    assert_eq!(count(&h, "SELECT COUNT(*) FROM payments").await, 0);
}

#[tokio::test]
async fn the_pay_cli_pays_as_printed() {
    let h = dial_harness("").await;
    let payer = h.funded_payer(1_000_000).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .args([
            "pay",
            "-X",
            "POST",
            "-d",
            r#"{"to":"+14155550100","message":"hello from the CLI"}"#,
        ])
        .arg(format!("{}/api/v1/sms/send", h.url()))
        .env("X402D_PAYER_KEY", alloy::hex::encode(payer.to_bytes()))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let body: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(body["success"], true);
    assert!(
        stderr.contains("HTTP 200") && stderr.contains("\"success\":true"),
        "{stderr}"
    );
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(1_000_000 - SMS_PRICE)
    );
}

/// Logs `signer` in with SIWE; returns the bearer token.
async fn login(h: &Harness, signer: &PrivateKeySigner) -> String {
    let (message, _) = siwe_message(h, signer).await;
    let signature = signer.sign_message_sync(message.as_bytes()).unwrap();
    let (status, answer) = siwe_post(h, &message, &signature.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    answer["token"].as_str().unwrap().to_owned()
}

async fn siwe_message(h: &Harness, signer: &PrivateKeySigner) -> (String, String) {
    let r: Value = h
        .http
        .get(format!(
            "{}/api/v1/auth/siwe?address={}&chainId={CHAIN_ID}",
            h.url(),
            signer.address()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        r["message"].as_str().unwrap().to_owned(),
        r["nonce"].as_str().unwrap().to_owned(),
    )
}

async fn siwe_post(h: &Harness, message: &str, signature: &str) -> (u16, Value) {
    h.post(
        "/api/v1/auth/siwe",
        json!({"message": message, "signature": signature}).to_string(),
    )
    .await
}

async fn get_with_token(h: &Harness, path: &str, token: &str) -> (u16, Value) {
    let r = h
        .http
        .get(format!("{}{path}", h.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn siwe_owners_see_only_their_numbers_and_send_within_quota_then_pay() {
    let h = dial_harness("number_text_quota = 2").await;
    let owner = h.funded_payer(200_000_000).await;
    let stranger = PrivateKeySigner::random();
    let buy = PayRequest {
        url: format!("{}/api/v1/numbers/buy/us", h.url()),
        body: Some("{}".into()),
        max_amount: "100".into(),
        ..sms_request(&h, "+14155550100")
    };
    let out = pay(&h.http, &owner, &buy).await.unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    let bought: Value = serde_json::from_str(&out.body).unwrap();
    let number = bought["phoneNumber"].as_str().unwrap().to_owned();
    assert!(number.starts_with("+1555"));
    assert_eq!(
        h.usdc_balance(owner.address()).await,
        U256::from(100_000_000u64)
    );

    let token = login(&h, &owner).await;
    let (status, mine) = get_with_token(&h, "/api/v1/numbers/mine", &token).await;
    assert_eq!(status, 200);
    assert_eq!(mine["numbers"].as_array().unwrap().len(), 1);
    assert_eq!(mine["numbers"][0]["phoneNumber"], number.as_str());
    let other_token = login(&h, &stranger).await;
    let (_, theirs) = get_with_token(&h, "/api/v1/numbers/mine", &other_token).await;
    assert_eq!(theirs["numbers"], json!([]));
    let (status, _) = get_with_token(&h, "/api/v1/numbers/mine", "dial_forged").await;
    assert_eq!(status, 401);

    // Replayed nonce and a message for another domain are refused.
    let (message, _) = siwe_message(&h, &owner).await;
    let signature = owner
        .sign_message_sync(message.as_bytes())
        .unwrap()
        .to_string();
    assert_eq!(siwe_post(&h, &message, &signature).await.0, 200);
    let (status, answer) = siwe_post(&h, &message, &signature).await;
    assert_eq!(status, 401);
    assert!(
        answer["message"].as_str().unwrap().contains("nonce"),
        "{answer}"
    );
    let (message, _) = siwe_message(&h, &owner).await;
    let forged = message.replacen("dial.test", "evil.example", 1);
    assert_ne!(forged, message);
    let signature = owner
        .sign_message_sync(forged.as_bytes())
        .unwrap()
        .to_string();
    let (status, answer) = siwe_post(&h, &forged, &signature).await;
    assert_eq!(status, 401);
    assert!(
        answer["message"].as_str().unwrap().contains("evil.example"),
        "{answer}"
    );
    // Someone else's signature over the owner's message.
    let (message, _) = siwe_message(&h, &owner).await;
    let signature = stranger
        .sign_message_sync(message.as_bytes())
        .unwrap()
        .to_string();
    assert_eq!(siwe_post(&h, &message, &signature).await.0, 401);

    // The quota: two free texts, then x402.
    let send = |token: String| {
        let h = &h;
        let number = number.clone();
        async move {
            let r = h
                .http
                .post(format!("{}/api/v1/numbers/mine/send", h.url()))
                .bearer_auth(token)
                .json(&json!({"from": number, "to": "+14155550100", "body": "from my number"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for _ in 0..2 {
        let (status, body) = send(token.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"charged\":false"));
    }
    let (status, _) = send(token.clone()).await;
    assert_eq!(status, 402, "the quota is spent");
    let (status, _) = send(other_token.clone()).await;
    assert_eq!(status, 403, "only the owner sends from a number");
    let paid = PayRequest {
        url: format!("{}/api/v1/numbers/mine/send", h.url()),
        body: Some(json!({"from": number, "to": "+14155550100", "body": "paid text"}).to_string()),
        headers: vec![("authorization".into(), format!("Bearer {token}"))],
        ..sms_request(&h, "+14155550100")
    };
    let out = pay(&h.http, &owner, &paid).await.unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.body.contains("\"charged\":true"));
    assert!(out.receipt.unwrap().success);
    assert_eq!(
        h.usdc_balance(owner.address()).await,
        U256::from(100_000_000 - SMS_PRICE)
    );
    assert_eq!(
        count(
            &h,
            "SELECT COUNT(*) FROM dial_messages WHERE owner IS NOT NULL"
        )
        .await,
        3
    );
}

/// The default 60 a minute is a burst of 60 replenished one a second (GCRA): 60 requests at once
/// are served, counting `X-RateLimit-Remaining` down, and the next is a 429 with `Retry-After`.
/// On a slow runner a second may pass during the burst, and then exactly one more is served per
/// second elapsed — never more.
#[tokio::test]
async fn past_a_burst_of_60_the_next_request_is_429() {
    let h = dial_harness("").await;
    let started = std::time::Instant::now();
    for i in 0..60u64 {
        let r = h
            .http
            .get(format!("{}/api/health", h.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let remaining: u64 = r.headers()["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let refilled = started.elapsed().as_secs();
        assert!(
            (59 - i..=59 - i + refilled).contains(&remaining),
            "request {i}: {remaining} remaining after {refilled} s"
        );
    }
    let mut served_beyond = 0;
    let r = loop {
        let r = h
            .http
            .get(format!("{}/api/health", h.url()))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            break r;
        }
        served_beyond += 1;
        assert!(
            served_beyond <= started.elapsed().as_secs(),
            "{served_beyond} served past the burst in {:?}",
            started.elapsed()
        );
    };
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 1, "the next cell is at most a second away");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // The facilitator's own routes are not Dial's to limit.
    assert_eq!(
        h.http
            .get(format!("{}/supported", h.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn discovery_is_generated_from_the_route_table() {
    let h = dial_harness("").await;
    let get = |path: &'static str| {
        let h = &h;
        async move {
            let r = h
                .http
                .get(format!("{}{path}", h.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let bazaar = get("/discovery/resources").await;
    let items = bazaar["items"].as_array().unwrap();
    assert_eq!(bazaar["pagination"]["total"], items.len());
    let sms = items
        .iter()
        .find(|i| {
            i["resource"]
                .as_str()
                .unwrap()
                .ends_with("/api/v1/sms/send")
        })
        .unwrap();
    assert_eq!(sms["accepts"][0]["amount"], SMS_PRICE.to_string());
    let listing = get("/api/v1/discovery").await;
    let number = listing["paid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/api/v1/numbers/buy")
        .unwrap();
    assert_eq!(number["price"], "$100");
    let openapi = get("/openapi.json").await;
    assert_eq!(
        openapi["paths"]["/api/v1/esim/checkout"]["post"]["x-x402-price"],
        "$2.45"
    );
    let well_known = get("/.well-known/x402").await;
    let http_items = items.iter().filter(|i| i["type"] == "http").count();
    assert_eq!(
        well_known["resources"].as_array().unwrap().len(),
        http_items
    );
    // The paid MCP tools are catalogued as `mcp` entries keyed by (the /mcp URL, tool name).
    let tools: Vec<&Value> = items.iter().filter(|i| i["type"] == "mcp").collect();
    assert_eq!(tools.len(), 6, "{tools:?}");
    let send = tools
        .iter()
        .find(|i| i["metadata"]["input"]["toolName"] == "send_sms")
        .unwrap();
    assert!(send["resource"].as_str().unwrap().ends_with("/mcp"));
    assert_eq!(send["metadata"]["input"]["type"], "mcp");
    assert_eq!(
        send["metadata"]["input"]["inputSchema"]["required"],
        json!(["to", "message"])
    );
    assert_eq!(send["accepts"][0]["amount"], SMS_PRICE.to_string());
    let page = get("/discovery/resources?limit=2&offset=1").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["resource"], items[1]["resource"]);
}

#[tokio::test]
async fn esim_and_verifications_deliver_and_record() {
    let h = dial_harness("").await;
    let payer = h.funded_payer(10_000_000).await;
    let esim = PayRequest {
        url: format!("{}/api/v1/esim/checkout", h.url()),
        body: Some(json!({"packageId": "eu-3gb-30d"}).to_string()),
        max_amount: "5".into(),
        ..sms_request(&h, "+14155550100")
    };
    let out = pay(&h.http, &payer, &esim).await.unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    let body: Value = serde_json::from_str(&out.body).unwrap();
    assert!(
        body["activationCode"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$")
    );
    assert_eq!(body["qrPayload"], body["activationCode"]);
    let unknown = PayRequest {
        body: Some(json!({"packageId": "mars-1tb"}).to_string()),
        ..esim.clone()
    };
    assert_eq!(pay(&h.http, &payer, &unknown).await.unwrap().status, 400);
    let verification = PayRequest {
        url: format!("{}/api/v1/verifications/start", h.url()),
        body: Some(json!({"service": "telegram"}).to_string()),
        ..esim
    };
    let out = pay(&h.http, &payer, &verification).await.unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(10_000_000u64 - 2_450_000 - 2_250_000)
    );
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_esims").await, 1);
    assert_eq!(
        count(&h, "SELECT COUNT(*) FROM dial_verifications").await,
        1
    );
}

mod twilio {
    //! The Twilio adapter against a local fake of Twilio's REST API.
    use super::*;
    use axum::extract::{Path, State};
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Fake {
        posts: Arc<Mutex<Vec<(String, String)>>>,
        fail: bool,
        /// Numbers released (DELETE IncomingPhoneNumbers/{sid}).
        deletes: Arc<Mutex<Vec<String>>>,
        /// An anvil RPC URL: a failed send first stops its automine (so the refund that follows
        /// waits in the pool).
        pause_chain: Arc<Mutex<Option<String>>>,
    }

    const SID: &str = "ACtest0000";
    const TOKEN: &str = "secret-token";

    fn authorized(headers: &HeaderMap) -> bool {
        use base64::Engine;
        let expected = base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"));
        headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Basic {expected}"))
    }

    async fn start(fake: Fake) -> String {
        use axum::routing::{get, post};
        let app = axum::Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(|State(f): State<Fake>, Path(sid): Path<String>, headers: HeaderMap, body: String| async move {
                    if !authorized(&headers) || sid != SID {
                        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"code": 20003, "message": "Authenticate"})));
                    }
                    if f.fail {
                        let rpc = f.pause_chain.lock().unwrap().clone();
                        if let Some(rpc) = rpc {
                            reqwest::Client::new()
                                .post(rpc)
                                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "evm_setAutomine", "params": [false]}))
                                .send()
                                .await
                                .unwrap();
                        }
                        return (StatusCode::BAD_REQUEST, axum::Json(json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient"})));
                    }
                    f.posts.lock().unwrap().push(("message".into(), body));
                    (StatusCode::CREATED, axum::Json(json!({"sid": "SM0123456789", "status": "queued"})))
                }),
            )
            .route(
                "/2010-04-01/Accounts/{sid}/AvailablePhoneNumbers/{country}/Local.json",
                get(|headers: HeaderMap, Path((_, country)): Path<(String, String)>| async move {
                    assert!(authorized(&headers));
                    assert_eq!(country, "GB");
                    axum::Json(json!({"available_phone_numbers": [{"phone_number": "+447700900123"}]}))
                }),
            )
            .route(
                "/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json",
                post(|State(f): State<Fake>, headers: HeaderMap, body: String| async move {
                    assert!(authorized(&headers));
                    f.posts.lock().unwrap().push(("number".into(), body));
                    (StatusCode::CREATED, axum::Json(json!({"sid": "PN0123456789", "phone_number": "+447700900123"})))
                }),
            )
            .route(
                "/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers/{number}",
                axum::routing::delete(|State(f): State<Fake>, headers: HeaderMap, Path((_, number)): Path<(String, String)>| async move {
                    assert!(authorized(&headers));
                    f.deletes.lock().unwrap().push(number);
                    StatusCode::NO_CONTENT
                }),
            )
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn provider(url: &str) -> String {
        format!(
            "[dial.provider]\nkind = \"twilio\"\naccount_sid = \"{SID}\"\nauth_token = \"{TOKEN}\"\nfrom_number = \"+15005550006\"\napi_url = \"{url}\""
        )
    }

    #[tokio::test]
    async fn sms_and_numbers_go_through_twilio() {
        let fake = Fake::default();
        let url = start(fake.clone()).await;
        let h = dial_harness(&provider(&url)).await;
        let payer = h.funded_payer(200_000_000).await;
        let out = pay(&h.http, &payer, &sms_request(&h, "+14155550100"))
            .await
            .unwrap();
        assert_eq!(out.status, 200, "{}", out.body);
        let body: Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(body["messageId"], "SM0123456789");
        assert_eq!(body["status"], "queued");
        let buy = PayRequest {
            url: format!("{}/api/v1/numbers/buy/intl", h.url()),
            body: Some(json!({"country": "GB"}).to_string()),
            max_amount: "100".into(),
            ..sms_request(&h, "+14155550100")
        };
        let out = pay(&h.http, &payer, &buy).await.unwrap();
        assert_eq!(out.status, 200, "{}", out.body);
        assert!(out.body.contains("+447700900123"));
        let posts = fake.posts.lock().unwrap().clone();
        assert_eq!(posts.len(), 2);
        assert_eq!(posts[0].0, "message");
        assert!(
            posts[0].1.contains("To=%2B14155550100") && posts[0].1.contains("From=%2B15005550006"),
            "{}",
            posts[0].1
        );
        assert_eq!(
            posts[1],
            ("number".into(), "PhoneNumber=%2B447700900123".into())
        );
    }

    #[tokio::test]
    async fn a_provider_failure_after_payment_is_recorded_for_refund() {
        let fake = Fake {
            fail: true,
            ..Default::default()
        };
        let url = start(fake).await;
        let h = dial_harness(&provider(&url)).await;
        let payer = h.funded_payer(1_000_000).await;
        let out = pay(&h.http, &payer, &sms_request(&h, "+14155550100"))
            .await
            .unwrap();
        assert_eq!(out.status, 502, "{}", out.body);
        let body: Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(body["error"], "fulfillment_failed");
        assert!(body["message"].as_str().unwrap().contains("unsubscribed"));
        let receipt = out.receipt.expect("the payment's receipt is still sent");
        assert!(receipt.success);
        assert_eq!(body["transaction"], receipt.transaction.as_str());
        assert_eq!(
            receipt_status(&h).await,
            vec![("fulfillment_failed".to_owned(), Some(receipt.transaction))]
        );
        assert_eq!(body["refund"]["status"], "owed", "{body}");
    }

    /// Twilio's form fields signed as Twilio does: HMAC-SHA1 over the URL and the sorted
    /// name+value pairs, base64.
    fn twilio_sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
        use base64::Engine;
        use hmac::{KeyInit, Mac};
        let mut sorted = params.to_vec();
        sorted.sort();
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
        mac.update(url.as_bytes());
        for (k, v) in sorted {
            mac.update(k.as_bytes());
            mac.update(v.as_bytes());
        }
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    async fn post_inbound(
        h: &Harness,
        params: &[(&str, &str)],
        signature: Option<&str>,
    ) -> (u16, String) {
        let mut r = h
            .http
            .post(format!("{}/api/v1/inbound/twilio", h.url()))
            .form(params);
        if let Some(s) = signature {
            r = r.header("X-Twilio-Signature", s);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    #[tokio::test]
    async fn inbound_is_signature_checked_and_numbers_go_grace_then_released_once() {
        let fake = Fake::default();
        let url = start(fake.clone()).await;
        let h = dial_harness(&format!(
            "rate_limit_per_minute = 100000\n{}",
            provider(&url)
        ))
        .await;
        let payer = h.funded_payer(300_000_000).await;
        let bought = super::receive::buy_number(
            &h,
            &payer,
            "/api/v1/numbers/buy/intl",
            json!({"country": "GB"}),
        )
        .await;
        let phone = bought["phoneNumber"].as_str().unwrap().to_owned();
        let token = login(&h, &payer).await;
        let inbound_url = format!("{DIAL_PUBLIC_URL}/api/v1/inbound/twilio");
        let params = [
            ("MessageSid", "SM9f0e0000000000000000000000000001"),
            ("AccountSid", SID),
            ("From", "+14155550100"),
            ("To", phone.as_str()),
            ("Body", "Your code is 7731"),
            ("NumSegments", "1"),
        ];
        let good = twilio_sign(TOKEN, &inbound_url, &params);
        // Refused, and nothing recorded: no signature, another account's, a tampered body.
        assert_eq!(post_inbound(&h, &params, None).await.0, 403);
        assert_eq!(
            post_inbound(
                &h,
                &params,
                Some(&twilio_sign("other-token", &inbound_url, &params))
            )
            .await
            .0,
            403
        );
        let mut tampered = params;
        tampered[4] = ("Body", "Your code is 0000");
        assert_eq!(post_inbound(&h, &tampered, Some(&good)).await.0, 403);
        assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_inbound").await, 0);
        // Signed: stored once, however often Twilio retries it.
        for _ in 0..2 {
            let (status, twiml) = post_inbound(&h, &params, Some(&good)).await;
            assert_eq!(status, 200, "{twiml}");
            assert!(twiml.contains("<Response>"), "{twiml}");
        }
        let (_, inbox) = get_with_token(&h, "/api/v1/numbers/mine/messages", &token).await;
        let messages = inbox["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1, "{inbox}");
        assert_eq!(messages[0]["body"], "Your code is 7731");
        assert_eq!(messages[0]["from"], "+14155550100");

        // The month passes: grace; renewing in grace extends it and makes it active again.
        let dial = super::receive::dial(&h);
        let month = 30 * 24 * 3600 * 1000i64;
        let grace = 7 * 24 * 3600 * 1000i64;
        let expires = |mine: &Value| {
            time::OffsetDateTime::parse(
                mine["numbers"][0]["expiresAt"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
            .unix_timestamp()
                * 1000
        };
        let (_, mine) = get_with_token(&h, "/api/v1/numbers/mine", &token).await;
        assert_eq!(mine["numbers"][0]["status"], "active");
        let first_expiry = expires(&mine);
        dial.run_due(first_expiry + 1_000).await;
        let (_, mine) = get_with_token(&h, "/api/v1/numbers/mine", &token).await;
        assert_eq!(mine["numbers"][0]["status"], "grace", "{mine}");
        let renew = PayRequest {
            url: format!("{}/api/v1/numbers/mine/renew", h.url()),
            body: Some(json!({"phoneNumber": phone}).to_string()),
            max_amount: "60".into(),
            ..sms_request(&h, "+14155550100")
        };
        let out = pay(&h.http, &payer, &renew).await.unwrap();
        assert_eq!(out.status, 200, "{}", out.body);
        let (_, mine) = get_with_token(&h, "/api/v1/numbers/mine", &token).await;
        assert_eq!(mine["numbers"][0]["status"], "active");
        let second_expiry = expires(&mine);
        assert_eq!(second_expiry, first_expiry + month);
        // Past the month and the grace: released at Twilio once, however often the sweep runs.
        dial.run_due(second_expiry + grace - 1_000).await;
        assert!(fake.deletes.lock().unwrap().is_empty());
        for later in [0, 1_000, 600_000] {
            dial.run_due(second_expiry + grace + 1_000 + later).await;
        }
        assert_eq!(
            *fake.deletes.lock().unwrap(),
            vec!["PN0123456789.json".to_owned()]
        );
        let (_, mine) = get_with_token(&h, "/api/v1/numbers/mine", &token).await;
        assert_eq!(mine["numbers"][0]["status"], "released", "{mine}");
        // A released number cannot be renewed (before any payment) and its texts are not yours.
        let r = h
            .http
            .post(format!("{}/api/v1/numbers/mine/renew", h.url()))
            .json(&json!({"phoneNumber": phone}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 410);
        let later = [
            ("MessageSid", "SM9f0e0000000000000000000000000002"),
            ("From", "+14155550100"),
            ("To", phone.as_str()),
            ("Body", "after"),
        ];
        assert_eq!(
            post_inbound(&h, &later, Some(&twilio_sign(TOKEN, &inbound_url, &later)))
                .await
                .0,
            200
        );
        let (_, inbox) = get_with_token(&h, "/api/v1/numbers/mine/messages", &token).await;
        assert_eq!(inbox["messages"].as_array().unwrap().len(), 1);
    }

    /// A provider failure after payment is refunded on chain from the refund wallet, exactly
    /// once, although x402d is killed (-9) while the refund waits in the pool and the pool is
    /// then lost: the stored transaction is sent again, never a second one.
    /// Waits (up to a minute) until some refund is in `status`.
    async fn wait_for_refund(h: &Harness, status: &str) {
        let sql = format!("SELECT COUNT(*) FROM dial_refunds WHERE status = '{status}'");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while count(h, &sql).await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no refund became {status}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_provider_failure_is_refunded_once_across_kill_9_on_sqlite() {
        refunded_once_across_kill_9(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_provider_failure_is_refunded_once_across_kill_9_on_postgres() {
        refunded_once_across_kill_9(Backend::Postgres).await
    }

    async fn refunded_once_across_kill_9(backend: Backend) {
        use alloy::providers::ext::AnvilApi;
        let fake = Fake {
            fail: true,
            ..Default::default()
        };
        let url = start(fake.clone()).await;
        let wallet = PrivateKeySigner::random();
        let h = Harness::start_with(HarnessOptions {
            backend,
            in_process: false,
            dial: Some(format!(
                "jobs_interval_ms = 200\n{}\n{}",
                super::receive::refund_key_line(&wallet),
                provider(&url)
            )),
            ..Default::default()
        })
        .await
        .unwrap();
        *fake.pause_chain.lock().unwrap() = Some(h.chain.rpc_url());
        super::receive::fund_refund_wallet(&h, &wallet, 5_000_000).await;
        let payer = h.funded_payer(1_000_000).await;
        let service = Service::start(&h, "").await;
        let send = PayRequest {
            method: reqwest::Method::POST,
            url: format!("{}/api/v1/sms/send", service.url),
            body: Some(json!({"to": "+14155550100", "message": "hello from x402"}).to_string()),
            headers: Vec::new(),
            network: None,
            asset: None,
            max_amount: "1".into(),
            force_v1: false,
            scheme: None,
        };
        let out = pay(&h.http, &payer, &send).await.unwrap();
        assert_eq!(out.status, 502, "{}", out.body);
        let body: Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(body["refund"]["status"], "owed", "{body}");
        assert_eq!(
            h.usdc_balance(payer.address()).await,
            U256::from(1_000_000 - SMS_PRICE)
        );
        // The refund is signed and broadcast; automine is off, so it waits in the pool.
        wait_for_refund(&h, "signed").await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        service.kill_9();
        h.chain
            .provider()
            .anvil_drop_all_transactions()
            .await
            .unwrap();
        h.chain.provider().anvil_set_auto_mine(true).await.unwrap();
        assert_eq!(
            h.usdc_balance(payer.address()).await,
            U256::from(1_000_000 - SMS_PRICE)
        );
        let service = Service::start(&h, "").await;
        wait_for_refund(&h, "confirmed").await;
        tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
        assert_eq!(
            h.usdc_balance(payer.address()).await,
            U256::from(1_000_000u64)
        );
        assert_eq!(
            super::receive::transfers(&h, wallet.address(), payer.address()).await,
            1
        );
        assert_eq!(
            h.usdc_balance(wallet.address()).await,
            U256::from(5_000_000 - SMS_PRICE)
        );
        let metrics = h
            .http
            .get(format!("{}/metrics", service.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("x402d_dial_refunds_paid_total 1"),
            "{metrics}"
        );
        drop(service);
    }
}

#[tokio::test]
async fn dial_works_with_a_remote_facilitator_and_502s_without_one() {
    let h = Harness::start().await;
    let payer = h.funded_payer(1_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let config = |facilitator: &str| {
        x402d::config::Config::from_toml(
            &format!(
                "[server]\npublic = true\nlisten = \"127.0.0.1:0\"\n[[networks]]\nchain_id = {CHAIN_ID}\nrpc_urls = [\"{}\"]\n[ledger]\nurl = \"sqlite://{}/merchant-{}.db\"\n[dial]\npay_to = \"{}\"\npublic_url = \"https://merchant.test\"\nfacilitator_url = \"{facilitator}\"\n",
                h.chain.rpc_url(),
                dir.path().display(),
                facilitator.len(),
                h.pay_to,
            ),
            &Default::default(),
        )
        .unwrap()
    };
    // A merchant whose facilitator is the harness's x402d, over HTTP.
    let merchant = x402d::http::server::RunningServer::start(&config(&h.url()))
        .await
        .unwrap();
    let request = PayRequest {
        url: format!("{}/api/v1/sms/send", merchant.url()),
        ..sms_request(&h, "+14155550100")
    };
    let out = pay(&h.http, &payer, &request).await.unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.receipt.unwrap().success);
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(1_000_000 - SMS_PRICE)
    );
    // One whose facilitator is down: 502, nothing charged.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let orphan = x402d::http::server::RunningServer::start(&config(&dead))
        .await
        .unwrap();
    let request = PayRequest {
        url: format!("{}/api/v1/sms/send", orphan.url()),
        ..sms_request(&h, "+14155550100")
    };
    let out = pay(&h.http, &payer, &request).await.unwrap();
    assert_eq!(out.status, 502, "{}", out.body);
    assert!(out.body.contains("facilitator_unavailable"));
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(1_000_000 - SMS_PRICE)
    );
}

/// No SIWE input reaches a panic (issue 12: a non-ASCII character inside `Issued At` dropped the
/// connection): that message, cuts of a real message at every third character, odd Unicode spliced
/// in, bodies that are not UTF-8 and the fuzz corpus (`fuzz/corpus/siwe_parse`) all get a 4xx.
/// The message's domain and URI are `dial.public_url`'s, whatever the request's `Host` says.
#[tokio::test]
async fn siwe_odd_inputs_get_4xx_never_a_dropped_connection() {
    let h = dial_harness("rate_limit_per_minute = 100000").await;
    let owner = PrivateKeySigner::random();
    let r: Value = h
        .http
        .get(format!(
            "{}/api/v1/auth/siwe?address={}&chainId={CHAIN_ID}",
            h.url(),
            owner.address()
        ))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let message = r["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("dial.test wants you to sign in"),
        "{message}"
    );
    assert!(message.contains("\nURI: https://dial.test\n"), "{message}");
    let signature = owner
        .sign_message_sync(message.as_bytes())
        .unwrap()
        .to_string();

    let issued = message
        .lines()
        .find(|l| l.starts_with("Issued At: "))
        .unwrap()
        .to_owned();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut texts: Vec<String> = [
        "2026-11-18T12:06:40+0\u{e9}00",
        "2026-11-18T12:06:4\u{e9}",
        "2026-11-18T12:06:40.\u{301}Z",
        "\u{feff}2026-11-18T12:06:40Z",
        "\u{1f600}",
        "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
    ]
    .iter()
    .map(|odd| message.replace(&issued, &format!("Issued At: {odd}")))
    .collect();
    let boundaries: Vec<usize> = message.char_indices().map(|(i, _)| i).collect();
    for at in boundaries.iter().step_by(3) {
        texts.push(message[..*at].to_owned());
    }
    for at in boundaries.iter().step_by(11) {
        let mut spliced = message.clone();
        spliced.insert_str(*at, "\u{e9}\u{200d}\u{1f600}");
        texts.push(spliced);
    }
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/siwe_parse");
    for entry in std::fs::read_dir(&corpus).unwrap() {
        texts.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    for text in &texts {
        bodies.push(
            json!({"message": text, "signature": signature})
                .to_string()
                .into_bytes(),
        );
    }
    bodies.push(br#"{"message":"\ud800","signature":"0x00"}"#.to_vec());
    bodies.push(b"{\"message\":\"\xc3\",\"signature\":\"0x00\"}".to_vec());
    bodies.push(vec![0xff, 0xfe, 0x00]);
    assert!(bodies.len() > 100, "{}", bodies.len());
    for body in bodies {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let r = h
            .http
            .post(format!("{}/api/v1/auth/siwe", h.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("no answer (a dropped connection?) for {shown}: {e}"));
        let status = r.status().as_u16();
        assert!((400..500).contains(&status), "{status} for {shown}");
    }
}

/// `sms/send` offered as upto: the payer authorises the longest message (10 segments) and is
/// charged for the segments its message takes; a bad number is refused before any charge.
#[tokio::test]
async fn upto_sms_charges_the_segments_sent() {
    let h = dial_harness("").await;
    let payer = h.funded_payer(10_000_000).await;
    h.chain.approve_permit2(&payer, h.chain.usdc).await.unwrap();
    let mut paid = 0u64;
    for (message, segments) in [("short", 1u64), (&"x".repeat(161)[..], 2)] {
        let body = json!({"to": "+14155550100", "message": message});
        let (_, required) = offer_of(&h, "/api/v1/sms/send", &body).await;
        let offer = required
            .accepts
            .iter()
            .find(|o| o.scheme == "upto")
            .expect("an upto offer")
            .clone();
        assert_eq!(offer.amount.0, U256::from(SMS_PRICE * 10));
        let signed = x402d::client::sign_permit2_for_v2(&payer, &offer, now()).unwrap();
        let header = encode_header(&payload_v2(&offer, &signed));
        let (status, headers, answer) = post_paid(
            &h,
            "/api/v1/sms/send",
            &body,
            ("payment-signature", &header),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["segments"], segments, "{answer}");
        let receipt: Value = decode_header(
            headers
                .get("payment-response")
                .and_then(|v| v.to_str().ok())
                .expect("a receipt"),
        )
        .unwrap();
        assert_eq!(receipt["success"], true, "{receipt}");
        assert_eq!(
            receipt["amount"],
            (SMS_PRICE * segments).to_string(),
            "{receipt}"
        );
        paid += SMS_PRICE * segments;
        assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(paid));
        assert_eq!(
            h.usdc_balance(payer.address()).await,
            U256::from(10_000_000 - paid)
        );
    }
    // The terminal twin: `x402d pay --scheme upto` signs the maximum and is charged one segment.
    let out = pay(
        &h.http,
        &payer,
        &PayRequest {
            scheme: Some("upto".into()),
            ..sms_request(&h, "+14155550100")
        },
    )
    .await
    .unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.paid.as_ref().map(|o| o.scheme.as_str()), Some("upto"));
    let receipt = out.receipt.expect("a receipt");
    assert_eq!(receipt.amount, Some(SMS_PRICE.to_string()));
    paid += SMS_PRICE;
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(paid));
    // Validation before payment: a bad number is a 400 and nothing moves.
    let body = json!({"to": "not-a-number", "message": "hi"});
    let (_, required) = offer_of(
        &h,
        "/api/v1/sms/send",
        &json!({"to": "+14155550100", "message": "hi"}),
    )
    .await;
    let offer = required
        .accepts
        .iter()
        .find(|o| o.scheme == "upto")
        .unwrap()
        .clone();
    let signed = x402d::client::sign_permit2_for_v2(&payer, &offer, now()).unwrap();
    let header = encode_header(&payload_v2(&offer, &signed));
    let (status, _, _) = post_paid(
        &h,
        "/api/v1/sms/send",
        &body,
        ("payment-signature", &header),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(paid));
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 3);
}

const MCP_HOSTS: &str = "mcp_allowed_hosts = [\"127.0.0.1\"]";

/// An MCP client session to Dial's `/mcp`.
async fn mcp_client(h: &Harness) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    use rmcp::ServiceExt;
    let transport =
        rmcp::transport::StreamableHttpClientTransport::from_uri(format!("{}/mcp", h.url()));
    ().serve(transport).await.unwrap()
}

async fn call_tool(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    tool: &str,
    arguments: Value,
) -> Value {
    let mut params = rmcp::model::CallToolRequestParams::new(tool.to_owned());
    params.arguments = arguments.as_object().cloned();
    serde_json::to_value(client.call_tool(params).await.unwrap()).unwrap()
}

/// The x402 MCP transport: tools from the route table; an unpaid call is isError with the
/// PaymentRequired both structured and as text; a bad phone number is a tool error before any
/// offer; nothing moves.
#[tokio::test]
async fn mcp_lists_the_tools_offers_unpaid_calls_and_refuses_bad_input_for_free() {
    // The harness's public URL is not where it listens: the listening host is allowed explicitly.
    let h = dial_harness(MCP_HOSTS).await;
    let client = mcp_client(&h).await;
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| {
            assert!(t.input_schema.contains_key("type"), "{t:?}");
            t.name.into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "buy_number",
            "buy_number_intl",
            "buy_number_us",
            "discovery",
            "esim_checkout",
            "get_verification",
            "read_messages",
            "send_sms",
            "start_verification"
        ]
    );
    let before = h.usdc_balance(h.pay_to).await;
    let unpaid = call_tool(
        &client,
        "send_sms",
        json!({"to": "+14155550100", "message": "hi"}),
    )
    .await;
    assert_eq!(unpaid["isError"], true, "{unpaid}");
    let required: PaymentRequiredV2 =
        serde_json::from_value(unpaid["structuredContent"].clone()).unwrap();
    let text: PaymentRequiredV2 =
        serde_json::from_str(unpaid["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(required, text);
    assert_eq!(required.accepts[0].amount.0, U256::from(SMS_PRICE));
    assert_eq!(required.accepts[0].pay_to, h.pay_to);

    let bad = call_tool(
        &client,
        "send_sms",
        json!({"to": "not-a-phone", "message": "hi"}),
    )
    .await;
    assert_eq!(bad["isError"], true, "{bad}");
    assert!(bad["structuredContent"].get("accepts").is_none(), "{bad}");
    assert_eq!(bad["structuredContent"]["success"], false, "{bad}");
    let bad_esim = call_tool(&client, "esim_checkout", json!({"packageId": "nope"})).await;
    assert_eq!(bad_esim["isError"], true);
    assert!(
        bad_esim["structuredContent"].get("accepts").is_none(),
        "{bad_esim}"
    );

    let discovery = call_tool(&client, "discovery", json!({})).await;
    assert_ne!(discovery["isError"], true, "{discovery}");
    assert_eq!(
        discovery["structuredContent"]["mcp"]["tools"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        h.usdc_balance(h.pay_to).await,
        before,
        "nothing was charged"
    );
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 0);

    // Hosts are checked (DNS rebinding): another Host is refused before any tool runs.
    let r = h
        .http
        .post(format!("{}/mcp", h.url()))
        .header("host", "evil.example")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = h
        .http
        .post(format!("{}/mcp", h.url()))
        .header("origin", "https://evil.example")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// Paying a tool through `_meta["x402/payment"]` (the library call and the CLI): settled, then
/// sent; the receipt in `_meta["x402/payment-response"]`; one `AuthorizationUsed` per payment.
#[tokio::test]
async fn mcp_send_sms_is_paid_in_meta_and_receipted() {
    let h = dial_harness(MCP_HOSTS).await;
    let payer = h.funded_payer(1_000_000).await;
    let before = h.usdc_balance(h.pay_to).await;
    let request = PayRequest {
        method: reqwest::Method::POST,
        url: format!("{}/mcp", h.url()),
        body: None,
        headers: vec![],
        network: None,
        asset: None,
        max_amount: "0.10".into(),
        force_v1: false,
        scheme: Some("exact".into()),
    };
    let arguments = json!({"to": "+14155550100", "message": "hi from mcp"});
    let out = x402d::client::pay_mcp(
        &payer,
        &request.url,
        "send_sms",
        arguments.as_object().cloned().unwrap(),
        &request,
    )
    .await
    .unwrap();
    assert_ne!(out.result["isError"], true, "{}", out.result);
    assert_eq!(out.result["structuredContent"]["success"], true);
    assert_eq!(out.result["structuredContent"]["to"], "+14155550100");
    let receipt = out.receipt.expect("_meta x402/payment-response");
    assert!(receipt.success);
    assert_eq!(receipt.transaction.len(), 66);
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(SMS_PRICE)
    );
    assert_eq!(h.authorizations_used(payer.address()).await, 1);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 1);

    // Too expensive for --max-amount: nothing is signed or paid.
    let cheap = PayRequest {
        max_amount: "0.01".into(),
        ..request.clone()
    };
    let refused = x402d::client::pay_mcp(
        &payer,
        &request.url,
        "send_sms",
        arguments.as_object().cloned().unwrap(),
        &cheap,
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(x402d::client::McpPayError::Pay(
                PayError::TooExpensive { .. }
            ))
        ),
        "{refused:?}"
    );

    // The CLI twin.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .args(["pay", "--mcp"])
        .arg(format!("{}/mcp", h.url()))
        .args([
            "send_sms",
            "--args",
            r#"{"to":"+14155550101","message":"from the CLI"}"#,
        ])
        .args(["--max-amount", "0.10", "--scheme", "exact"])
        .env("X402D_PAYER_KEY", alloy::hex::encode(payer.to_bytes()))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["structuredContent"]["to"], "+14155550101");
    assert!(
        stderr.contains("receipt: ") && stderr.contains("\"success\":true"),
        "{stderr}"
    );
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(2 * SMS_PRICE)
    );
    assert_eq!(h.authorizations_used(payer.address()).await, 2);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 2);
}

/// A settlement that has not landed is never answered with the tool's output: the result is the
/// 402 with the pending receipt in `_meta`, nothing is sent; the same payment, once mined, gets
/// the output, and the money moved once.
#[tokio::test]
async fn mcp_gives_no_tool_output_until_the_payment_settles() {
    use alloy::providers::ext::AnvilApi;
    let h = Harness::start_with(HarnessOptions {
        dial: Some(MCP_HOSTS.into()),
        settlement: "settle_timeout_seconds = 1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let payer = h.funded_payer(1_000_000).await;
    let before = h.usdc_balance(h.pay_to).await;
    let client = mcp_client(&h).await;
    let arguments = json!({"to": "+14155550100", "message": "after settlement only"});
    let unpaid = call_tool(&client, "send_sms", arguments.clone()).await;
    let required: PaymentRequiredV2 =
        serde_json::from_value(unpaid["structuredContent"].clone()).unwrap();
    let request = PayRequest {
        method: reqwest::Method::POST,
        url: String::new(),
        body: None,
        headers: vec![],
        network: None,
        asset: None,
        max_amount: "0.10".into(),
        force_v1: false,
        scheme: Some("exact".into()),
    };
    let signed =
        x402d::client::choose_and_sign(&payer, &request, required.accepts, None, false).unwrap();
    let paid_call = |payload: Value| {
        let mut params = rmcp::model::CallToolRequestParams::new("send_sms");
        params.arguments = arguments.as_object().cloned();
        let mut meta = rmcp::model::MetaObject::new();
        meta.insert("x402/payment".into(), payload);
        params.meta = Some(rmcp::model::RequestMetaObject(meta));
        let client = &client;
        async move { serde_json::to_value(client.call_tool(params).await.unwrap()).unwrap() }
    };

    h.chain.provider().anvil_set_auto_mine(false).await.unwrap();
    let pending = paid_call(signed.payload.clone()).await;
    assert_eq!(pending["isError"], true, "{pending}");
    assert_eq!(
        pending["structuredContent"]["error"], "settlement_pending",
        "{pending}"
    );
    assert!(
        pending["structuredContent"].get("messageId").is_none(),
        "{pending}"
    );
    let receipt = &pending["_meta"]["x402/payment-response"];
    assert_eq!(receipt["success"], false, "{pending}");
    assert_eq!(
        receipt["transaction"].as_str().unwrap().len(),
        66,
        "{pending}"
    );
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 0);

    h.chain.provider().anvil_set_auto_mine(true).await.unwrap();
    h.chain.provider().anvil_mine(Some(1), None).await.unwrap();
    let done = paid_call(signed.payload).await;
    assert_ne!(done["isError"], true, "{done}");
    assert_eq!(done["structuredContent"]["success"], true, "{done}");
    assert_eq!(done["_meta"]["x402/payment-response"]["success"], true);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_messages").await, 1);
    assert_eq!(h.authorizations_used(payer.address()).await, 1);
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(SMS_PRICE)
    );
}

mod receive {
    //! Texts that arrive: the sandbox carrier, the owner's inbox, verification codes, owner
    //! webhooks, the number's lifecycle and refunds paid on chain.
    use super::*;
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};

    const NUMBER_PRICE: u64 = 100_000_000; // $100
    const VERIFICATION_PRICE: u64 = 2_250_000; // $2.25

    pub(super) async fn harness_with(backend: Backend, extra: &str) -> Harness {
        Harness::start_with(HarnessOptions {
            backend,
            dial: Some(format!("rate_limit_per_minute = 100000\n{extra}")),
            ..Default::default()
        })
        .await
        .unwrap()
    }

    pub(super) fn dial(h: &Harness) -> &x402d::merchant::Dial {
        h.server.as_ref().unwrap().dial.as_ref().unwrap()
    }

    pub(super) async fn buy_number(
        h: &Harness,
        payer: &PrivateKeySigner,
        path: &str,
        body: Value,
    ) -> Value {
        let buy = PayRequest {
            url: format!("{}{path}", h.url()),
            body: Some(body.to_string()),
            max_amount: "100".into(),
            ..sms_request(h, "+14155550100")
        };
        let out = pay(&h.http, payer, &buy).await.unwrap();
        assert_eq!(out.status, 200, "{}", out.body);
        serde_json::from_str(&out.body).unwrap()
    }

    pub(super) async fn text(h: &Harness, to: &str, id: &str, body: &str) -> (u16, Value) {
        h.post(
            "/api/v1/dev/inbound",
            json!({"to": to, "from": "+14155550123", "body": body, "id": id}).to_string(),
        )
        .await
    }

    /// USDC `Transfer` logs from `from` to `to`.
    pub(super) async fn transfers(h: &Harness, from: Address, to: Address) -> usize {
        use alloy::primitives::B256;
        use alloy::providers::Provider;
        use alloy::sol_types::SolEvent;
        let filter = alloy::rpc::types::Filter::new()
            .address(h.chain.usdc)
            .event_signature(x402d::chain::bindings::IEip3009Token::Transfer::SIGNATURE_HASH)
            .topic1(B256::left_padding_from(from.as_slice()))
            .topic2(B256::left_padding_from(to.as_slice()))
            .from_block(0);
        h.chain.provider().get_logs(&filter).await.unwrap().len()
    }

    /// A wallet refunds are paid from, holding `usdc` and gas.
    pub(super) async fn fund_refund_wallet(h: &Harness, wallet: &PrivateKeySigner, usdc: u64) {
        h.chain
            .mint(h.chain.usdc, wallet.address(), U256::from(usdc))
            .await
            .unwrap();
        h.chain
            .fund_eth(wallet.address(), U256::from(10u128.pow(18)))
            .await
            .unwrap();
    }

    pub(super) fn refund_key_line(wallet: &PrivateKeySigner) -> String {
        format!(
            "refund_private_key = \"0x{}\"",
            alloy::hex::encode(wallet.to_bytes())
        )
    }

    async fn inbox_pages_codes_and_walls(backend: Backend) {
        let h = harness_with(backend, "").await;
        let payer = h.funded_payer(200_000_000).await;
        let bought = buy_number(&h, &payer, "/api/v1/numbers/buy/us", json!({})).await;
        let phone = bought["phoneNumber"].as_str().unwrap().to_owned();
        assert_eq!(
            h.usdc_balance(payer.address()).await,
            U256::from(200_000_000 - NUMBER_PRICE)
        );
        let token = login(&h, &payer).await;

        // 250 texts arrive; the carrier delivering one of them twice records it once.
        for i in 0..250 {
            let (status, answer) =
                text(&h, &phone, &format!("SM{i:04}"), &format!("text {i}")).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["deliveredTo"], "number");
        }
        let (status, again) = text(&h, &phone, "SM0007", "text 7").await;
        assert_eq!(
            (status, again["deliveredTo"].as_str()),
            (200, Some("duplicate"))
        );
        assert_eq!(count(&h, "SELECT COUNT(*) FROM dial_inbound").await, 250);

        // Pages of 100 in arrival order; the cursor continues exactly after the last one.
        let mut bodies = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = Vec::new();
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/v1/numbers/mine/messages?limit=100&cursor={c}"),
                None => "/api/v1/numbers/mine/messages?limit=100".to_owned(),
            };
            let (status, page) = get_with_token(&h, &path, &token).await;
            assert_eq!(status, 200, "{page}");
            let messages = page["messages"].as_array().unwrap();
            pages.push(messages.len());
            bodies.extend(
                messages
                    .iter()
                    .map(|m| m["body"].as_str().unwrap().to_owned()),
            );
            assert!(messages.iter().all(|m| m["phoneNumber"] == phone.as_str()));
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, vec![100, 100, 50]);
        assert_eq!(
            bodies,
            (0..250).map(|i| format!("text {i}")).collect::<Vec<_>>()
        );
        let (_, filtered) = get_with_token(
            &h,
            &format!(
                "/api/v1/numbers/mine/messages?number={}&limit=5",
                phone.replace('+', "%2B")
            ),
            &token,
        )
        .await;
        assert_eq!(filtered["messages"].as_array().unwrap().len(), 5);
        let (_, later) = get_with_token(
            &h,
            "/api/v1/numbers/mine/messages?since=2999-01-01T00:00:00Z",
            &token,
        )
        .await;
        assert_eq!(later["messages"].as_array().unwrap().len(), 0);
        for bad in [
            "cursor=zz",
            "limit=0",
            "limit=101",
            "since=yesterday",
            "number=12",
        ] {
            let (status, answer) =
                get_with_token(&h, &format!("/api/v1/numbers/mine/messages?{bad}"), &token).await;
            assert_eq!(status, 400, "{bad}: {answer}");
        }

        // Another wallet sees none of it, and asking for the number by name is refused.
        let other = PrivateKeySigner::random();
        let other_token = login(&h, &other).await;
        let (status, theirs) =
            get_with_token(&h, "/api/v1/numbers/mine/messages", &other_token).await;
        assert_eq!(status, 200);
        assert_eq!(theirs["messages"].as_array().unwrap().len(), 0);
        let (status, _) = get_with_token(
            &h,
            &format!(
                "/api/v1/numbers/mine/messages?number={}",
                phone.replace('+', "%2B")
            ),
            &other_token,
        )
        .await;
        assert_eq!(status, 403);
        let r = h
            .http
            .get(format!("{}/api/v1/numbers/mine/messages", h.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        // A verification rental: the paid answer carries a read token; a long poll returns
        // when the text arrives (sent with `x402d text`), with the code read from it.
        let rental = PayRequest {
            url: format!("{}/api/v1/verifications/start", h.url()),
            body: Some(json!({"service": "Google"}).to_string()),
            max_amount: "5".into(),
            ..sms_request(&h, "+14155550100")
        };
        let out = pay(&h.http, &payer, &rental).await.unwrap();
        assert_eq!(out.status, 200, "{}", out.body);
        let rented: Value = serde_json::from_str(&out.body).unwrap();
        let id = rented["verificationId"].as_str().unwrap().to_owned();
        let read_token = rented["readToken"].as_str().unwrap().to_owned();
        let rented_number = rented["phoneNumber"].as_str().unwrap().to_owned();
        let path = format!("/api/v1/verifications/{id}");
        let (status, waiting) = get_with_token(&h, &path, &read_token).await;
        assert_eq!(
            (status, waiting["status"].as_str()),
            (200, Some("waiting")),
            "{waiting}"
        );
        assert!(waiting["code"].is_null());
        let poll = {
            let (http, url, t) = (
                h.http.clone(),
                format!("{}{path}?wait=25", h.url()),
                read_token.clone(),
            );
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let v: Value = http
                    .get(url)
                    .bearer_auth(t)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (v, started.elapsed())
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let printed = x402d_text(
            &h.url(),
            &rented_number,
            "Google",
            "G-482913 is your Google verification code.",
        )
        .await;
        assert!(
            printed.contains("\"deliveredTo\":\"verification\""),
            "{printed}"
        );
        let (received, waited) = poll.await.unwrap();
        assert_eq!(received["status"], "received", "{received}");
        assert_eq!(received["code"], "482913");
        assert_eq!(
            received["text"],
            "G-482913 is your Google verification code."
        );
        assert!(
            waited < std::time::Duration::from_secs(20),
            "the long poll waited {waited:?}"
        );
        // The payer's SIWE session reads it too; nobody else does.
        let (status, by_session) = get_with_token(&h, &path, &token).await;
        assert_eq!((status, by_session["code"].as_str()), (200, Some("482913")));
        let (status, _) = get_with_token(&h, &path, &other_token).await;
        assert_eq!(status, 403);
        let (status, _) = get_with_token(&h, &path, "dial_0000").await;
        assert_eq!(status, 401);
        let (status, _) = get_with_token(&h, "/api/v1/verifications/ver_nope", &read_token).await;
        assert_eq!(status, 404);
        // A text to a number nobody holds is refused by the sandbox carrier.
        let (status, _) = text(&h, "+15550009999", "SMx", "hello?").await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn inbox_pages_codes_and_walls_on_sqlite() {
        inbox_pages_codes_and_walls(Backend::Sqlite).await
    }

    #[tokio::test]
    async fn inbox_pages_codes_and_walls_on_postgres() {
        inbox_pages_codes_and_walls(Backend::Postgres).await
    }

    /// A receiver that answers 500 to its first `failures` requests, then 200.
    #[derive(Clone, Default)]
    struct Receiver {
        got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
        failures: usize,
    }

    async fn start_receiver(r: Receiver) -> String {
        use axum::extract::State;
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State(r): State<Receiver>, headers: HeaderMap, body: String| async move {
                        let mut got = r.got.lock().unwrap();
                        got.push((headers, body));
                        if got.len() <= r.failures {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        }
                    },
                ),
            )
            .with_state(r);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    async fn put_webhook(h: &Harness, token: &str, phone: &str, url: Option<&str>) -> (u16, Value) {
        let r = h
            .http
            .put(format!("{}/api/v1/numbers/mine/webhook", h.url()))
            .bearer_auth(token)
            .json(&json!({"phoneNumber": phone, "url": url}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    #[tokio::test]
    async fn webhooks_are_signed_retried_recorded_and_never_reach_private_addresses() {
        let h = harness_with(
            Backend::Sqlite,
            "webhook_allow_private = [\"127.0.0.1\"]\nwebhook_retry_base_ms = 200\njobs_interval_ms = 100",
        )
        .await;
        let payer = h.funded_payer(200_000_000).await;
        let phone =
            buy_number(&h, &payer, "/api/v1/numbers/buy/us", json!({})).await["phoneNumber"]
                .as_str()
                .unwrap()
                .to_owned();
        let token = login(&h, &payer).await;
        for refused in [
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/hook",
            "http://192.168.1.10/",
            "http://0.0.0.0:80/",
            "ftp://example.com/",
            "http://user:pw@127.0.0.1/hook",
        ] {
            let (status, answer) = put_webhook(&h, &token, &phone, Some(refused)).await;
            assert_eq!(status, 400, "{refused}: {answer}");
            assert_eq!(answer["error"], "webhook_url_refused", "{refused}");
        }
        let receiver = Receiver {
            failures: 2,
            ..Default::default()
        };
        let url = start_receiver(receiver.clone()).await;
        let (status, _) = put_webhook(&h, &token, "+15550001111", Some(&url)).await;
        assert_eq!(status, 403, "not the caller's number");
        let (status, set) = put_webhook(&h, &token, &phone, Some(&url)).await;
        assert_eq!(status, 200, "{set}");
        let secret = set["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("whsec_"));
        let (_, again) = put_webhook(&h, &token, &phone, Some(&url)).await;
        assert!(
            again.get("secret").is_none(),
            "the secret is shown once: {again}"
        );

        let (status, _) = text(&h, &phone, "SMhook1", "ping 1234").await;
        assert_eq!(status, 200);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while receiver.got.lock().unwrap().len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "three attempts never came"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
        let got = receiver.got.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "delivered once, after two failures");
        let ids: Vec<&str> = got
            .iter()
            .map(|(h, _)| h["x-dial-delivery"].to_str().unwrap())
            .collect();
        assert!(
            ids.iter().all(|i| *i == ids[0]),
            "one delivery id across retries"
        );
        let (headers, body) = &got[2];
        let sig = headers["x-dial-signature"].to_str().unwrap();
        let (t, v1) = sig.strip_prefix("t=").unwrap().split_once(",v1=").unwrap();
        let t: i64 = t.parse().unwrap();
        assert!((t - now() as i64).abs() < 300, "timestamp within 5 minutes");
        {
            use hmac::{KeyInit, Mac};
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(format!("{t}.{body}").as_bytes());
            mac.verify_slice(&alloy::hex::decode(v1).unwrap())
                .expect("a valid signature");
        }
        let delivered: Value = serde_json::from_str(body).unwrap();
        assert_eq!(delivered["type"], "message.received");
        assert_eq!(delivered["data"]["body"], "ping 1234");
        assert_eq!(delivered["data"]["phoneNumber"], phone.as_str());
        let (_, deliveries) =
            get_with_token(&h, "/api/v1/numbers/mine/webhook-deliveries", &token).await;
        let d = &deliveries["deliveries"][0];
        assert_eq!(d["status"], "delivered", "{deliveries}");
        let statuses: Vec<i64> = d["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["httpStatus"].as_i64().unwrap())
            .collect();
        assert_eq!(statuses, vec![500, 500, 200]);

        // A URL that fails for a day is disabled, and the owner is told in numbers/mine.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/hook", l.local_addr().unwrap())
        };
        let (status, _) = put_webhook(&h, &token, &phone, Some(&dead)).await;
        assert_eq!(status, 200);
        text(&h, &phone, "SMhook2", "ping 2").await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, mine) = get_with_token(&h, "/api/v1/numbers/mine", &token).await;
            if mine["numbers"][0]["webhook"]["status"] == "failing" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{mine}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let now_ms = x402d::clock::now_ms();
        dial(&h).run_due(now_ms + 25 * 3600 * 1000).await;
        let (_, mine) = get_with_token(&h, "/api/v1/numbers/mine", &token).await;
        let hook = &mine["numbers"][0]["webhook"];
        assert_eq!(hook["status"], "disabled", "{mine}");
        assert!(hook["disabledAt"].is_string());
    }

    #[tokio::test]
    async fn a_verification_that_never_gets_its_code_is_refunded_on_chain_once() {
        let wallet = PrivateKeySigner::random();
        let h = harness_with(Backend::Sqlite, &refund_key_line(&wallet)).await;
        fund_refund_wallet(&h, &wallet, 10_000_000).await;
        let payer = h.funded_payer(10_000_000).await;
        let rental = PayRequest {
            url: format!("{}/api/v1/verifications/start", h.url()),
            body: Some(json!({"service": "acme"}).to_string()),
            max_amount: "5".into(),
            ..sms_request(&h, "+14155550100")
        };
        let out = pay(&h.http, &payer, &rental).await.unwrap();
        assert_eq!(out.status, 200, "{}", out.body);
        let rented: Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(
            h.usdc_balance(payer.address()).await,
            U256::from(10_000_000 - VERIFICATION_PRICE)
        );
        let path = format!(
            "/api/v1/verifications/{}",
            rented["verificationId"].as_str().unwrap()
        );
        let read_token = rented["readToken"].as_str().unwrap();
        // The window passes (an injected clock: 16 minutes on) with no text.
        let later = x402d::clock::now_ms() + 16 * 60 * 1000;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            dial(&h).run_due(later).await;
            let (_, v) = get_with_token(&h, &path, read_token).await;
            assert_eq!(v["status"], "expired", "{v}");
            if v["refund"]["status"] == "confirmed" {
                assert_eq!(v["refund"]["amount"], VERIFICATION_PRICE.to_string());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "refund never confirmed: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        for _ in 0..3 {
            dial(&h).run_due(later + 60_000).await;
        }
        assert_eq!(
            h.usdc_balance(payer.address()).await,
            U256::from(10_000_000u64)
        );
        assert_eq!(transfers(&h, wallet.address(), payer.address()).await, 1);
        assert_eq!(
            h.usdc_balance(wallet.address()).await,
            U256::from(10_000_000 - VERIFICATION_PRICE)
        );
        let metrics = h
            .http
            .get(format!("{}/metrics", h.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("x402d_dial_refunds{status=\"confirmed\"} 1"),
            "{metrics}"
        );
        // A code arriving after the window is not the rental's.
        let (status, _) = text(
            &h,
            rented["phoneNumber"].as_str().unwrap(),
            "SMlate",
            "1234",
        )
        .await;
        assert_eq!(status, 404);
    }

    /// The agents' way in: `read_messages` and `get_verification` are free MCP tools that
    /// answer only the owner (the token as an argument).
    #[tokio::test]
    async fn mcp_agents_read_their_texts_and_codes() {
        let h = harness_with(Backend::Sqlite, MCP_HOSTS).await;
        let client = mcp_client(&h).await;
        let payer = h.funded_payer(200_000_000).await;
        let phone =
            buy_number(&h, &payer, "/api/v1/numbers/buy/us", json!({})).await["phoneNumber"]
                .as_str()
                .unwrap()
                .to_owned();
        let token = login(&h, &payer).await;
        text(&h, &phone, "SMmcp1", "hello agent").await;
        let unauthorized = call_tool(&client, "read_messages", json!({})).await;
        assert_eq!(unauthorized["isError"], true, "{unauthorized}");
        assert_eq!(unauthorized["structuredContent"]["error"], "unauthorized");
        let inbox = call_tool(
            &client,
            "read_messages",
            json!({"token": token, "limit": 10}),
        )
        .await;
        assert_eq!(inbox["isError"], false, "{inbox}");
        assert_eq!(
            inbox["structuredContent"]["messages"][0]["body"],
            "hello agent"
        );
        let other = login(&h, &PrivateKeySigner::random()).await;
        let refused = call_tool(
            &client,
            "read_messages",
            json!({"token": other, "number": phone}),
        )
        .await;
        assert_eq!(
            refused["structuredContent"]["error"], "not_owner",
            "{refused}"
        );

        let out = pay(
            &h.http,
            &payer,
            &PayRequest {
                url: format!("{}/api/v1/verifications/start", h.url()),
                body: Some(json!({"service": "acme"}).to_string()),
                max_amount: "5".into(),
                ..sms_request(&h, "+14155550100")
            },
        )
        .await
        .unwrap();
        let rented: Value = serde_json::from_str(&out.body).unwrap();
        text(
            &h,
            rented["phoneNumber"].as_str().unwrap(),
            "SMmcp2",
            "acme: 5521 is your code",
        )
        .await;
        let args = json!({"verificationId": rented["verificationId"], "token": rented["readToken"], "wait": 2});
        let code = call_tool(&client, "get_verification", args).await;
        assert_eq!(code["structuredContent"]["code"], "5521", "{code}");
        let stranger = call_tool(
            &client,
            "get_verification",
            json!({"verificationId": rented["verificationId"], "token": other}),
        )
        .await;
        assert_eq!(
            stranger["structuredContent"]["error"], "not_owner",
            "{stranger}"
        );
    }

    #[tokio::test]
    async fn without_a_refund_wallet_owed_refunds_stay_listed() {
        let h = harness_with(Backend::Sqlite, "verification_window_seconds = 60").await;
        let payer = h.funded_payer(10_000_000).await;
        let rental = PayRequest {
            url: format!("{}/api/v1/verifications/start", h.url()),
            body: Some(json!({"service": "acme"}).to_string()),
            max_amount: "5".into(),
            ..sms_request(&h, "+14155550100")
        };
        assert_eq!(pay(&h.http, &payer, &rental).await.unwrap().status, 200);
        dial(&h).run_due(x402d::clock::now_ms() + 61_000).await;
        dial(&h).run_due(x402d::clock::now_ms() + 62_000).await;
        assert_eq!(
            count(
                &h,
                "SELECT COUNT(*) FROM dial_refunds WHERE status = 'owed'"
            )
            .await,
            1
        );
        let status = h.get_json("/status").await;
        let owed = &status["dial"]["refunds"];
        assert_eq!(owed[0]["status"], "owed", "{status}");
        assert_eq!(owed[0]["amount"], VERIFICATION_PRICE.to_string());
        assert_eq!(
            h.usdc_balance(payer.address()).await,
            U256::from(10_000_000 - VERIFICATION_PRICE)
        );
    }
}
