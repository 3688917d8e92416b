//! Our batch settler (contracts/src/X402BatchSettler.sol) on a real anvil: called directly with
//! packed calldata (good and bad items, replays, malformed input), used by the facilitator when a
//! network names it (and Multicall3 when its address has no code), and deployed by
//! `x402d deploy-settler` at its CREATE2 address.

#[macro_use]
mod common;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes, Signature, U256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use common::*;
use futures::future::join_all;
use x402d::chain::bindings::MULTICALL3;
use x402d::chain::settler;
use x402d::ledger::TxStatus;

/// The settler's calldata for these signed payments, the third made invalid by changing its
/// value after signing.
fn packed(h: &Harness, payloads: &[x402d::protocol::wire::ExactEvmPayload], strict: bool) -> Bytes {
    let calls: Vec<Bytes> = payloads
        .iter()
        .map(|p| {
            let sig = Signature::try_from(p.signature.as_ref()).unwrap();
            x402d::exact::transfer_vrs(&p.authorization, &sig)
        })
        .collect();
    let auths = settler::authorizations(calls.iter().map(|c| c.as_ref())).unwrap();
    settler::calldata(h.chain.usdc, &auths, strict).unwrap()
}

async fn call(h: &Harness, to: Address, input: Bytes) -> Result<Bytes, String> {
    let tx = TransactionRequest::default().with_to(to).with_input(input);
    h.chain.provider().call(tx).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settler_moves_each_good_item_skips_a_bad_one_and_refuses_malformed_calldata() {
    let h = Harness::start().await;
    let at = h.chain.batch_settler;
    assert_eq!(at, settler::address().unwrap());
    let payers = h.funded_payers(3, 1_000_000).await;
    let req = h.requirement(ONE_CENT);
    let mut payloads: Vec<_> = payers.iter().map(|p| h.sign(p, &req)).collect();
    // Signed for one cent, submitted for two: the token finds the signature invalid.
    payloads[1].authorization.value = x402d::protocol::AtomicAmount::from_u64(2 * ONE_CENT);

    // Simulated, not strict: the answer's bitmap says which items would succeed.
    let answer = call(&h, at, packed(&h, &payloads, false)).await.unwrap();
    assert_eq!(answer.len(), 32);
    assert_eq!(settler::succeeded(&answer, 3), vec![true, false, true]);
    // Strict: the first failure's revert reason, as the token gave it.
    let strict = call(&h, at, packed(&h, &payloads, true)).await.unwrap_err();
    assert!(strict.contains("invalid signature"), "{strict}");

    let before = h.usdc_balance(h.pay_to).await;
    // A gas limit of our own: an estimate of a batch allowed to fail finds the least gas at which
    // the transaction succeeds, with its inner calls out of gas.
    let tx = TransactionRequest::default()
        .with_to(at)
        .with_input(packed(&h, &payloads, false))
        .with_gas_limit(600_000);
    let receipt = h
        .chain
        .provider()
        .send_transaction(tx.clone())
        .await
        .unwrap();
    let receipt = receipt.get_receipt().await.unwrap();
    assert!(receipt.status());
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(2 * ONE_CENT)
    );
    let used = join_all(payers.iter().map(|p| h.authorizations_used(p.address()))).await;
    assert_eq!(used, vec![1, 0, 1]);
    assert_eq!(
        h.usdc_balance(payers[0].address()).await,
        U256::from(1_000_000 - ONE_CENT)
    );
    assert_eq!(
        h.usdc_balance(payers[1].address()).await,
        U256::from(1_000_000u64)
    );

    // The same calldata again: the transaction succeeds and moves nothing (each nonce is used).
    let again = h.chain.provider().send_transaction(tx).await.unwrap();
    assert!(again.get_receipt().await.unwrap().status());
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(2 * ONE_CENT)
    );
    let used = join_all(payers.iter().map(|p| h.authorizations_used(p.address()))).await;
    assert_eq!(used, vec![1, 0, 1]);

    // Calldata that is not whole items, or a token without code: `Malformed()`, nothing called.
    let malformed = "0x07b6ad3f";
    let mut cut = packed(&h, &payloads[2..], false).to_vec();
    cut.pop();
    let err = call(&h, at, cut.into()).await.unwrap_err();
    assert!(err.contains(malformed), "{err}");
    let mut ghost = packed(&h, &payloads[2..], false).to_vec();
    ghost[1..21].copy_from_slice(Address::repeat_byte(0x61).as_slice());
    let err = call(&h, at, ghost.into()).await.unwrap_err();
    assert!(err.contains(malformed), "{err}");
    let err = call(&h, at, Bytes::new()).await.unwrap_err();
    assert!(err.contains(malformed), "{err}");
}

/// Concurrent payments on a network naming the settler: batches go through it, every payment
/// moves once, and no transaction reverts.
async fn the_facilitator_batches_through_the_settler(backend: Backend) {
    let Some(h) = Harness::start_with(HarnessOptions {
        backend,
        settlement: "batch_window_ms = 300\nbatch_max_items = 20".into(),
        network: "batch_settler = \"{batch_settler}\"".into(),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let payers = h.funded_payers(12, 1_000_000).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    let before = h.usdc_balance(h.pay_to).await;
    let answers = join_all(bodies.iter().map(|b| h.settle(b))).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["success"], true, "{answer}");
    }
    // A repeat is answered with its transaction and moves nothing.
    let (_, repeat) = h.settle(&bodies[5]).await;
    assert_eq!(repeat["transaction"], answers[5].1["transaction"]);

    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(12 * ONE_CENT)
    );
    for p in &payers {
        assert_eq!(h.authorizations_used(p.address()).await, 1);
        assert_eq!(
            h.usdc_balance(p.address()).await,
            U256::from(1_000_000 - ONE_CENT)
        );
    }
    let txs = h.ledger().transactions(CHAIN_ID).await.unwrap();
    let mut via_settler = 0;
    for t in &txs {
        assert_eq!(t.status, TxStatus::Mined, "{}", t.tx_hash);
        let receipt = h
            .chain
            .provider()
            .get_transaction_receipt(t.tx_hash)
            .await
            .unwrap()
            .unwrap();
        assert!(receipt.status(), "{} reverted", t.tx_hash);
        let to = x402d::settlement::tx::decode(&t.raw_tx).unwrap().to;
        assert_ne!(
            to, MULTICALL3,
            "a batch of one token's EIP-3009 payments took Multicall3"
        );
        via_settler += usize::from(to == h.chain.batch_settler);
    }
    assert!(
        via_settler >= 1,
        "no batch went through the settler: {txs:?}"
    );
}
on_both_backends!(the_facilitator_batches_through_the_settler);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settler_address_without_code_leaves_every_batch_to_multicall3() {
    let nowhere = Address::repeat_byte(0x5e);
    let h = Harness::start_with(HarnessOptions {
        settlement: "batch_window_ms = 300\nbatch_max_items = 20".into(),
        network: format!("batch_settler = \"{nowhere}\""),
        ..Default::default()
    })
    .await
    .unwrap();
    let payers = h.funded_payers(8, 1_000_000).await;
    let req = h.requirement(ONE_CENT);
    let answers = join_all(h.v2_bodies(&payers, &req).iter().map(|b| h.settle(b))).await;
    for (_, answer) in &answers {
        assert_eq!(answer["success"], true, "{answer}");
    }
    for p in &payers {
        assert_eq!(h.authorizations_used(p.address()).await, 1);
    }
    let txs = h.ledger().transactions(CHAIN_ID).await.unwrap();
    let targets: Vec<Address> = txs
        .iter()
        .map(|t| x402d::settlement::tx::decode(&t.raw_tx).unwrap().to)
        .collect();
    assert!(
        targets
            .iter()
            .all(|t| *t == MULTICALL3 || *t == h.chain.usdc),
        "{targets:?}"
    );
    assert!(targets.contains(&MULTICALL3), "{targets:?}");
}

/// `x402d deploy-settler` on a bare anvil: the contract lands at its CREATE2 address with this
/// build's code, a second run sends nothing, and a chain without the CREATE2 deployer is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_settler_puts_the_contract_at_its_create2_address_once() {
    let bin = x402d::dev::chain::anvil_binary().unwrap();
    let deploy = |anvil: &alloy::node_bindings::AnvilInstance| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("x402d.toml");
        let key = alloy::hex::encode(anvil.first_key().to_bytes());
        std::fs::write(
            &config,
            format!(
                "[server]\npublic = true\n[[networks]]\nchain_id = 84532\nrpc_urls = [\"{}\"]\n\
                 [gas_wallets]\nprivate_keys = [\"0x{key}\"]\n[ledger]\nurl = \"sqlite://{}/l.db\"\n",
                anvil.endpoint(),
                dir.path().display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
            .args(["deploy-settler", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let anvil = alloy::node_bindings::Anvil::at(&bin)
        .chain_id(84532)
        .try_spawn()
        .unwrap();
    let at = settler::address().unwrap();
    let provider = alloy::providers::ProviderBuilder::new().connect_http(anvil.endpoint_url());
    assert!(provider.get_code_at(at).await.unwrap().is_empty());

    let (ok, stdout, stderr) = deploy(&anvil);
    assert!(ok, "{stderr}");
    let first: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let address =
        |v: &serde_json::Value| v["address"].as_str().unwrap().parse::<Address>().unwrap();
    assert_eq!(address(&first), at);
    assert!(first["transaction"].is_string(), "{first}");
    assert_eq!(
        provider.get_code_at(at).await.unwrap(),
        settler::runtime_code(settler::ARTIFACT).unwrap()
    );
    let nonce = provider
        .get_transaction_count(anvil.addresses()[0])
        .await
        .unwrap();
    let (ok, stdout, stderr) = deploy(&anvil);
    assert!(ok, "{stderr}");
    let second: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(address(&second), at);
    assert!(second["transaction"].is_null(), "{second}");
    assert_eq!(
        provider
            .get_transaction_count(anvil.addresses()[0])
            .await
            .unwrap(),
        nonce,
        "the second run sent a transaction"
    );

    let bare = alloy::node_bindings::Anvil::at(&bin)
        .chain_id(84532)
        .arg("--disable-default-create2-deployer")
        .try_spawn()
        .unwrap();
    let (ok, _, stderr) = deploy(&bare);
    assert!(!ok);
    assert!(stderr.contains("no CREATE2 deployer"), "{stderr}");
}
