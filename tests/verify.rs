//! `/verify` against a real anvil: every reason code the verifier emits, under v2 and v1, from real
//! signed payloads; and the 4xx/5xx discipline of the endpoint.

mod common;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolValue;
use common::*;
use serde_json::json;
use x402d::client::{AuthorizationTerms, domain_separator};
use x402d::dev::chain::DevChain;
use x402d::exact::authorization_digest;
use x402d::exact::signature::ERC6492_MAGIC;
use x402d::protocol::wire::{Eip3009Authorization, ExactEvmPayload};
use x402d::protocol::{AtomicAmount, ChainId};

#[tokio::test]
async fn valid_eoa_payment() {
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    h.expect_valid(&req, &h.sign(&payer, &req)).await;
}

#[tokio::test]
async fn signature_problems() {
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT * 10).await;
    let req = h.requirement(ONE_CENT);

    // Signed by another key, claiming to be the payer.
    let mut wrong_key = h.sign(&PrivateKeySigner::random(), &req);
    wrong_key.authorization.from = payer.address();
    let msg = h
        .expect_invalid(
            &req,
            &wrong_key,
            "invalid_exact_evm_signature",
            "invalid_exact_evm_payload_signature",
        )
        .await;
    assert!(msg.contains("recover"), "{msg}");

    // Value changed after signing (requirements changed to match, so only the signature is wrong).
    let mut tampered = h.sign(&payer, &req);
    tampered.authorization.value = AtomicAmount::from_u64(ONE_CENT * 2);
    let tampered_req = h.requirement(ONE_CENT * 2);
    h.expect_invalid(
        &tampered_req,
        &tampered,
        "invalid_exact_evm_signature",
        "invalid_exact_evm_payload_signature",
    )
    .await;

    // A long signature from an account without code: an undeployed smart wallet.
    let mut long = h.sign(&payer, &req);
    long.signature = Bytes::from(vec![7u8; 96]);
    h.expect_invalid(
        &req,
        &long,
        "invalid_exact_evm_payload_undeployed_smart_wallet",
        "invalid_exact_evm_payload_undeployed_smart_wallet",
    )
    .await;

    // High-s (malleable) form of a valid signature.
    let good = h.sign(&payer, &req);
    let n = U256::from_str_radix(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
        16,
    )
    .unwrap();
    let mut high = good.signature.to_vec();
    let s = U256::from_be_slice(&high[32..64]);
    high[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    high[64] = if high[64] == 27 { 28 } else { 27 };
    let high_s = ExactEvmPayload {
        signature: high.into(),
        authorization: good.authorization.clone(),
    };
    h.expect_invalid(
        &req,
        &high_s,
        "invalid_exact_evm_signature",
        "invalid_exact_evm_payload_signature",
    )
    .await;
}

#[tokio::test]
async fn requirement_mismatches() {
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT * 10).await;
    let req = h.requirement(ONE_CENT);

    let mut other_pay_to = req.clone();
    other_pay_to.pay_to = Address::random();
    let p = h.sign(&payer, &req);
    h.expect_invalid(
        &other_pay_to,
        &p,
        "invalid_exact_evm_recipient_mismatch",
        "invalid_exact_evm_payload_recipient_mismatch",
    )
    .await;

    for paid in [ONE_CENT - 1, ONE_CENT + 1] {
        let mut r = req.clone();
        r.amount = AtomicAmount::from_u64(paid);
        let p = h.sign(&payer, &r);
        let msg = h
            .expect_invalid(
                &req,
                &p,
                "invalid_exact_evm_payload_authorization_value_mismatch",
                "invalid_exact_evm_payload_authorization_value",
            )
            .await;
        assert!(msg.contains("equal"), "{msg}");
    }

    let mut wrong_name = req.clone();
    wrong_name.extra.as_mut().unwrap().name = Some("USD Coin".into());
    let p = h.sign(&payer, &wrong_name);
    h.expect_invalid(
        &wrong_name,
        &p,
        "invalid_exact_evm_token_name_mismatch",
        "invalid_payment_requirements",
    )
    .await;

    let mut wrong_version = req.clone();
    wrong_version.extra.as_mut().unwrap().version = Some("1".into());
    let p = h.sign(&payer, &wrong_version);
    h.expect_invalid(
        &wrong_version,
        &p,
        "invalid_exact_evm_token_version_mismatch",
        "invalid_payment_requirements",
    )
    .await;

    let mut no_domain = req.clone();
    no_domain.extra = None;
    let p = h.sign(&payer, &req);
    h.expect_invalid(
        &no_domain,
        &p,
        "invalid_exact_evm_missing_eip712_domain",
        "invalid_payment_requirements",
    )
    .await;

    let mut unknown_network = req.clone();
    unknown_network.network = "eip155:1".into();
    h.expect_invalid(&unknown_network, &p, "invalid_network", "invalid_network")
        .await;

    let mut unserved_asset = req.clone();
    unserved_asset.asset = Address::random();
    h.expect_invalid(
        &unserved_asset,
        &p,
        "invalid_payment_requirements",
        "invalid_payment_requirements",
    )
    .await;

    let mut other_scheme = req.clone();
    other_scheme.scheme = "deferred".into();
    h.expect_invalid(
        &other_scheme,
        &p,
        "invalid_exact_evm_scheme",
        "invalid_scheme",
    )
    .await;

    // upto is a Permit2 scheme: an EIP-3009 payload under it is malformed (400, naming the field).
    let mut upto = req.clone();
    upto.scheme = "upto".into();
    let (status, answer) = h.verify(&h.body(2, &upto, &p)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_payload", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("permit2Authorization"),
        "{answer}"
    );
}

#[tokio::test]
async fn network_mismatch_between_payload_and_requirements() {
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let p = h.sign(&payer, &req);
    let mut accepted = req.clone();
    accepted.network = "eip155:8453".into();
    let body = x402d::client::facilitator_body(
        2,
        x402d::client::payload_v2(&accepted, &p),
        serde_json::to_value(&req).unwrap(),
    );
    let (status, answer) = h.verify(&body).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["invalidReason"], "invalid_exact_evm_network_mismatch",
        "{answer}"
    );
    assert_eq!(answer["payer"], payer.address().to_checksum(None));
}

#[tokio::test]
async fn time_window() {
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT * 10).await;
    let req = h.requirement(ONE_CENT);
    let t = now();
    let terms = |after: u64, before: u64| AuthorizationTerms {
        to: req.pay_to,
        value: req.amount,
        valid_after: after,
        valid_before: before,
        nonce: random_nonce(),
    };
    let expired = h.sign_terms(&payer, &req, &terms(t - 3600, t - 10));
    h.expect_invalid(
        &req,
        &expired,
        "invalid_exact_evm_payload_authorization_valid_before",
        "invalid_exact_evm_payload_authorization_valid_before",
    )
    .await;
    let in_buffer = h.sign_terms(&payer, &req, &terms(t - 600, t + 3));
    h.expect_invalid(
        &req,
        &in_buffer,
        "invalid_exact_evm_payload_authorization_valid_before",
        "invalid_exact_evm_payload_authorization_valid_before",
    )
    .await;
    let not_yet = h.sign_terms(&payer, &req, &terms(t + 3600, t + 7200));
    h.expect_invalid(
        &req,
        &not_yet,
        "invalid_exact_evm_payload_authorization_valid_after",
        "invalid_exact_evm_payload_authorization_valid_after",
    )
    .await;
    // Just outside the buffer is fine.
    let edge = h.sign_terms(&payer, &req, &terms(t - 600, t + 30));
    h.expect_valid(&req, &edge).await;
}

#[tokio::test]
async fn nonce_already_used_on_chain() {
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT * 10).await;
    let req = h.requirement(ONE_CENT);
    let p = h.sign(&payer, &req);
    h.expect_valid(&req, &p).await;
    // Someone settles it directly on the token first.
    let calldata = x402d::exact::transfer_bytes(&p.authorization, &p.signature);
    h.chain.call(h.chain.usdc, calldata.to_vec()).await.unwrap();
    h.expect_invalid(
        &req,
        &p,
        "invalid_exact_evm_nonce_already_used",
        "invalid_transaction_state",
    )
    .await;
}

#[tokio::test]
async fn insufficient_balance() {
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT - 1).await;
    let req = h.requirement(ONE_CENT);
    let msg = h
        .expect_invalid(
            &req,
            &h.sign(&payer, &req),
            "invalid_exact_evm_insufficient_balance",
            "insufficient_funds",
        )
        .await;
    assert!(msg.contains("9999"), "{msg}");
}

#[tokio::test]
async fn a_malformed_permit2_payload_is_a_400_naming_the_field() {
    let h = Harness::start().await;
    let req = h.requirement(ONE_CENT);
    for version in [2u8, 1] {
        let inner =
            json!({"signature": "0x00", "permit2Authorization": {"from": Address::random()}});
        let (payload, requirements) = if version == 2 {
            (
                json!({"x402Version": 2, "accepted": req, "payload": inner}),
                serde_json::to_value(&req).unwrap(),
            )
        } else {
            let v1 = to_v1(&req);
            (
                json!({"x402Version": 1, "scheme": "exact", "network": v1.network, "payload": inner}),
                serde_json::to_value(&v1).unwrap(),
            )
        };
        let (status, answer) = h
            .verify(&x402d::client::facilitator_body(
                version,
                payload,
                requirements,
            ))
            .await;
        assert_eq!(status, 400, "v{version}: {answer}");
        assert_eq!(answer["error"], "invalid_payload", "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains("permit2Authorization") && message.contains("permitted"),
            "v{version}: {message}"
        );
    }
}

#[tokio::test]
async fn paused_token_and_blacklisted_payer() {
    let h = Harness::start().await;
    // The operator-configured second token, paused.
    let payer = PrivateKeySigner::random();
    h.chain
        .mint(h.extra_token, payer.address(), U256::from(ONE_CENT))
        .await
        .unwrap();
    let mut req = h.requirement(ONE_CENT);
    req.asset = h.extra_token;
    req.extra.as_mut().unwrap().name = Some("Extra Dollar".into());
    req.extra.as_mut().unwrap().version = Some("1".into());
    let p = h.sign(&payer, &req);
    h.expect_valid(&req, &p).await;
    h.chain.pause(h.extra_token).await.unwrap();
    let msg = h
        .expect_invalid(
            &req,
            &p,
            "invalid_exact_evm_transaction_simulation_failed",
            "invalid_transaction_state",
        )
        .await;
    assert!(msg.contains("paused"), "{msg}");

    let listed = h.funded_payer(ONE_CENT).await;
    let usdc_req = h.requirement(ONE_CENT);
    let p = h.sign(&listed, &usdc_req);
    h.chain
        .blacklist(h.chain.usdc, listed.address())
        .await
        .unwrap();
    let msg = h
        .expect_invalid(
            &usdc_req,
            &p,
            "invalid_exact_evm_transaction_simulation_failed",
            "invalid_transaction_state",
        )
        .await;
    assert!(msg.contains("blacklisted"), "{msg}");
}

#[tokio::test]
async fn asset_problems_found_on_chain() {
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT).await;
    let mut ghost = h.requirement(ONE_CENT);
    ghost.asset = h.ghost_token;
    ghost.extra.as_mut().unwrap().name = Some("Ghost".into());
    ghost.extra.as_mut().unwrap().version = Some("1".into());
    h.expect_invalid(
        &ghost,
        &h.sign(&payer, &ghost),
        "asset_not_deployed_contract",
        "invalid_payment_requirements",
    )
    .await;

    let mut not_3009 = ghost.clone();
    not_3009.asset = h.not_3009_token;
    not_3009.extra.as_mut().unwrap().name = Some("Not3009".into());
    h.expect_invalid(
        &not_3009,
        &h.sign(&payer, &not_3009),
        "invalid_exact_evm_eip3009_not_supported",
        "invalid_payment_requirements",
    )
    .await;
}

/// Signs an authorization from a smart wallet: the owner signs the EIP-712 digest itself.
fn sign_as_wallet(
    h: &Harness,
    owner: &PrivateKeySigner,
    wallet: Address,
    req: &x402d::protocol::wire::RequirementsV2,
) -> ExactEvmPayload {
    let t = now();
    let authorization = Eip3009Authorization {
        from: wallet,
        to: req.pay_to,
        value: req.amount,
        valid_after: U256::from(t - 600),
        valid_before: U256::from(t + 60),
        nonce: B256::random(),
    };
    let sep = domain_separator(ChainId(CHAIN_ID), req.asset, &h.chain.usdc_name, "2");
    let sig = owner
        .sign_hash_sync(&authorization_digest(sep, &authorization))
        .unwrap();
    ExactEvmPayload {
        signature: sig.as_bytes().to_vec().into(),
        authorization,
    }
}

fn wrap_6492(factory: Address, calldata: Bytes, inner: &Bytes) -> Bytes {
    let mut wrapped = (factory, calldata, inner.clone()).abi_encode_params();
    wrapped.extend_from_slice(&ERC6492_MAGIC);
    wrapped.into()
}

#[tokio::test]
async fn erc1271_wallet() {
    let h = Harness::start().await;
    let owner = PrivateKeySigner::random();
    let salt = B256::repeat_byte(1);
    let wallet = h
        .chain
        .create_wallet(h.chain.wallet_factory, owner.address(), salt)
        .await
        .unwrap();
    h.chain
        .mint(h.chain.usdc, wallet, U256::from(ONE_CENT))
        .await
        .unwrap();
    let req = h.requirement(ONE_CENT);
    h.expect_valid(&req, &sign_as_wallet(&h, &owner, wallet, &req))
        .await;
    // Signed by someone who does not own the wallet: ERC-1271 refuses, and there is no ECDSA fallback.
    let stranger = PrivateKeySigner::random();
    let msg = h
        .expect_invalid(
            &req,
            &sign_as_wallet(&h, &stranger, wallet, &req),
            "invalid_exact_evm_signature",
            "invalid_exact_evm_payload_signature",
        )
        .await;
    assert!(msg.contains("ERC-1271"), "{msg}");
}

#[tokio::test]
async fn erc6492_counterfactual_wallet() {
    let h = Harness::start().await;
    let owner = PrivateKeySigner::random();
    let salt = B256::repeat_byte(2);
    let req = h.requirement(ONE_CENT);

    // Allowed factory: valid without deploying anything.
    let wallet = h
        .chain
        .predicted_wallet(h.chain.wallet_factory, owner.address(), salt)
        .await
        .unwrap();
    h.chain
        .mint(h.chain.usdc, wallet, U256::from(ONE_CENT))
        .await
        .unwrap();
    let mut p = sign_as_wallet(&h, &owner, wallet, &req);
    p.signature = wrap_6492(
        h.chain.wallet_factory,
        DevChain::create_wallet_calldata(owner.address(), salt),
        &p.signature,
    );
    h.expect_valid(&req, &p).await;
    let code = alloy::providers::Provider::get_code_at(h.chain.provider(), wallet)
        .await
        .unwrap();
    assert!(code.is_empty(), "verification must not deploy the wallet");

    // Allowed factory, but its call reverts.
    let mut broken = sign_as_wallet(&h, &owner, wallet, &req);
    broken.signature = wrap_6492(
        h.chain.wallet_factory,
        Bytes::from(vec![0xde, 0xad, 0xbe, 0xef]),
        &broken.signature,
    );
    h.expect_invalid(
        &req,
        &broken,
        "smart_wallet_deployment_failed",
        "smart_wallet_deployment_failed",
    )
    .await;

    // A factory not on the allowlist is refused before anything is simulated.
    let other = h
        .chain
        .predicted_wallet(h.unlisted_factory, owner.address(), salt)
        .await
        .unwrap();
    let mut q = sign_as_wallet(&h, &owner, other, &req);
    q.signature = wrap_6492(
        h.unlisted_factory,
        DevChain::create_wallet_calldata(owner.address(), salt),
        &q.signature,
    );
    h.expect_invalid(
        &req,
        &q,
        "eip6492_factory_not_allowed",
        "eip6492_factory_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn malformed_requests_get_4xx_with_a_reason() {
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let good = h.body(2, &req, &h.sign(&payer, &req));

    let (status, answer) = h.post("/verify", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "invalid_json", "{answer}");

    // A base64 header value posted as the body (a common client mistake), and base64 that is not even that.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&good).unwrap());
    let (status, answer) = h.post("/verify", b64).await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = h.post("/verify", "%%%not-base64%%%").await;
    assert_eq!(status, 400);

    let mut sig32 = good.clone();
    sig32["paymentPayload"]["payload"]["signature"] = json!(format!("0x{}", "11".repeat(32)));
    let (status, answer) = h.verify(&sig32).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"].as_str().unwrap().contains("signature"),
        "{answer}"
    );

    let mut nonce31 = good.clone();
    nonce31["paymentPayload"]["payload"]["authorization"]["nonce"] =
        json!(format!("0x{}", "22".repeat(31)));
    let (status, answer) = h.verify(&nonce31).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("authorization.nonce"),
        "{answer}"
    );

    let mut bad_version = good.clone();
    bad_version["paymentPayload"]["x402Version"] = json!(7);
    bad_version["x402Version"] = json!(7);
    let (status, answer) = h.verify(&bad_version).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "invalid_x402_version");

    let mut bad_amount = good.clone();
    bad_amount["paymentRequirements"]["amount"] = json!("1e6");
    let (status, answer) = h.verify(&bad_amount).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("paymentRequirements.amount"),
        "{answer}"
    );

    let huge = vec![b' '; 1024 * 1024];
    let (status, answer) = h.post("/verify", huge).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "body_too_large");

    // The good body still verifies after all that.
    let (status, answer) = h.verify(&good).await;
    assert_eq!(
        (status, answer["isValid"].clone()),
        (200, json!(true)),
        "{answer}"
    );
}

#[tokio::test]
async fn supported_lists_v1_and_v2_kinds_and_signers() {
    let h = Harness::start().await;
    let r = h
        .http
        .get(format!("{}/supported", h.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s: serde_json::Value = r.json().await.unwrap();
    let kinds = s["kinds"].as_array().unwrap();
    assert!(
        kinds.contains(&json!({"x402Version": 2, "scheme": "exact", "network": "eip155:84532"})),
        "{s}"
    );
    assert!(
        kinds.contains(&json!({"x402Version": 1, "scheme": "exact", "network": "base-sepolia"})),
        "{s}"
    );
    assert_eq!(s["signers"]["eip155:*"].as_array().unwrap().len(), 1, "{s}");
    assert!(s["extensions"].is_array());
    let health = h
        .http
        .get(format!("{}/health", h.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn unreachable_rpc_is_503() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let text = format!(
        "[server]\npublic = true\nlisten = \"127.0.0.1:0\"\n[[networks]]\nchain_id = 84532\nrpc_urls = [\"http://127.0.0.1:{port}\"]\n"
    );
    let config = x402d::config::Config::from_toml(&text, &Default::default()).unwrap();
    let server = x402d::http::server::RunningServer::start(&config)
        .await
        .unwrap();
    let payer = PrivateKeySigner::random();
    let usdc = x402d::chain::builtin_usdc(84532).unwrap().0;
    let req = x402d::protocol::wire::RequirementsV2 {
        scheme: "exact".into(),
        network: "eip155:84532".into(),
        amount: AtomicAmount::from_u64(ONE_CENT),
        asset: usdc,
        pay_to: Address::random(),
        max_timeout_seconds: 60,
        extra: Some(x402d::protocol::wire::ExactExtra {
            name: Some("USDC".into()),
            version: Some("2".into()),
            asset_transfer_method: None,
            facilitator_address: None,
        }),
    };
    let payload = x402d::client::sign_for_v2(&payer, &req, now()).unwrap();
    let body = x402d::client::facilitator_body(
        2,
        x402d::client::payload_v2(&req, &payload),
        serde_json::to_value(&req).unwrap(),
    );
    let r = reqwest::Client::new()
        .post(format!("{}/verify", server.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["error"], "chain_unavailable");
    server.stop().await;
}

/// Simulations that arrive together share one `aggregate3`, in arrival order on one state: two
/// payments that each fit the payer's balance pass, a third that together with them overdraws it
/// fails (alone it would pass), an identical copy of the first shares its answer instead of seeing
/// its nonce used, and a bad signature keeps its own revert reason.
#[tokio::test]
async fn coalesced_simulations_run_in_order_on_one_state() {
    use std::sync::Arc;
    use x402d::chain::RpcClient;
    use x402d::chain::simulate::Simulator;

    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT * 2).await;
    let req = h.requirement(ONE_CENT);
    let call = |p: &ExactEvmPayload| {
        let sig = alloy::primitives::Signature::from_raw(&p.signature).unwrap();
        x402d::exact::transfer_vrs(&p.authorization, &sig)
    };
    let (first, second, third) = (
        h.sign(&payer, &req),
        h.sign(&payer, &req),
        h.sign(&payer, &req),
    );
    let mut forged = h.sign(&PrivateKeySigner::random(), &req);
    forged.authorization.from = payer.address();
    let rpc = RpcClient::new(&[h.chain.rpc_url()], std::time::Duration::from_secs(10)).unwrap();
    let sim = Simulator::new(Arc::new(rpc));
    let calls = [&first, &second, &first, &third, &forged].map(|p| sim.call(h.chain.usdc, call(p)));
    let answers: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|a| a.expect("the node answers"))
        .collect();
    assert_eq!(answers[0], Ok(()));
    assert_eq!(answers[1], Ok(()));
    assert_eq!(answers[2], Ok(()), "the copy shares the first's answer");
    let overdraft = answers[3].as_ref().unwrap_err();
    assert!(overdraft.contains("balance"), "{overdraft}");
    let forged = answers[4].as_ref().unwrap_err();
    assert!(forged.contains("signature"), "{forged}");
    // Alone, the third passes: the overdraft was found only on the state the others left.
    assert_eq!(sim.call(h.chain.usdc, call(&third)).await.unwrap(), Ok(()));
    // Simulations move nothing.
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(ONE_CENT * 2)
    );
}

/// The process's resident memory, from /proc (Linux).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Every seed of the fuzz corpora posted to the real routes, then 10,000 invalid payloads (each a
/// different mutation of a good one) at full speed: never a 5xx, the same payloads refused for
/// the same reasons, memory bounded, and not a wei of gas spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_seeds_and_ten_thousand_invalid_payloads_cost_nothing() {
    use alloy::providers::Provider;
    use base64::Engine;
    use futures::StreamExt;
    let h = Harness::start().await;
    let gas = h.gas_key.address();
    let p = h.chain.provider();
    let gas_before = p.get_balance(gas).await.unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (corpus, route) in [
        ("facilitator_request", "/verify"),
        ("facilitator_request", "/settle"),
        ("header_decode", "/verify"),
    ] {
        for seed in std::fs::read_dir(root.join(corpus)).unwrap() {
            let bytes = std::fs::read(seed.unwrap().path()).unwrap();
            let (status, answer) = h.post(route, bytes).await;
            assert!(
                (200..500).contains(&status),
                "{corpus} {route}: {status} {answer}"
            );
        }
    }
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let good = h.body(2, &req, &h.sign(&payer, &req));
    let text = serde_json::to_string(&good).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&text);
    let sig = good["paymentPayload"]["payload"]["signature"]
        .as_str()
        .unwrap();
    let sig_at = text.find(sig).unwrap() + 2;
    // Mutations, each surely invalid: a signature byte changed, the body cut, the amount
    // changed, another signature, the body as cut base64.
    let mutants: Vec<Vec<u8>> = (0..10_000usize)
        .map(|i| {
            let mut b = text.clone().into_bytes();
            match i % 5 {
                0 => {
                    // A byte of the signature's hex: another signature, or no hex at all.
                    let at = sig_at + (i * 7919) % 130;
                    b[at] ^= 1 + (i as u8 % 7);
                    b
                }
                1 => b[..(i * 31) % b.len()].to_vec(),
                2 => {
                    let mut v = good.clone();
                    v["paymentPayload"]["payload"]["authorization"]["value"] = json!(i);
                    serde_json::to_vec(&v).unwrap()
                }
                3 => {
                    let mut v = good.clone();
                    v["paymentPayload"]["payload"]["signature"] =
                        json!(format!("0x{:0>130x}", i + 1));
                    serde_json::to_vec(&v).unwrap()
                }
                _ => b64.as_bytes()[..(i * 13) % b64.len()].to_vec(),
            }
        })
        .collect();
    let before = rss_bytes();
    let statuses: Vec<u16> =
        futures::stream::iter(mutants.into_iter().enumerate().map(|(i, body)| {
            let route = if i % 2 == 0 { "/settle" } else { "/verify" };
            let h = &h;
            async move { h.post(route, body).await.0 }
        }))
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| (200..500).contains(s)),
        "a 5xx: {:?}",
        statuses
            .iter()
            .filter(|s| **s >= 500)
            .take(5)
            .collect::<Vec<_>>()
    );
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 200 << 20, "resident memory grew {grown} bytes");
    assert!(h.ledger().transactions(CHAIN_ID).await.unwrap().is_empty());
    assert_eq!(p.get_transaction_count(gas).await.unwrap(), 0);
    assert_eq!(p.get_balance(gas).await.unwrap(), gas_before);
    // The good one still settles.
    let (_, ok) = h.settle(&good).await;
    assert_eq!(ok["success"], true, "{ok}");
}
