//! Several x402d processes on one ledger and one chain: each gas wallet's lane has exactly one
//! writer (its lease holder), any node answers `/settle`, a dead or paused node's lanes pass to
//! another, and every payment moves money exactly once.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::Provider;
use common::*;
use futures::StreamExt;
use serde_json::Value;
use x402d::ledger::{
    Claim, Lease, Ledger, LedgerError, Method, NewPayment, NewTransaction, QueueClaim, TxStatus,
};

async fn two_wallets(backend: Backend) -> Option<Harness> {
    Harness::start_with(HarnessOptions {
        backend,
        in_process: false,
        gas_wallets: 2,
        ..Default::default()
    })
    .await
}

const LEASE: &str = "lane_lease_seconds = 3\nsettle_timeout_seconds = 20";

async fn node(h: &Harness, name: &str) -> Service {
    Service::start_node(h, LEASE, "", &format!("node_id = \"{name}\"")).await
}

/// Lane health strings of a node's `/ready`, by wallet; the node must be ready (a node whose
/// lanes are all held elsewhere still settles).
async fn lanes(s: &Service) -> HashMap<String, String> {
    let ready: Value = reqwest::get(format!("{}/ready", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    let mut out = HashMap::new();
    for chain in ready["checks"]["settlement"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for lane in chain["lanes"].as_array().into_iter().flatten() {
            out.insert(
                lane["wallet"].as_str().unwrap_or_default().to_lowercase(),
                lane["health"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    out
}

/// Waits until `s` holds every lane (no lane is "sent by node …").
async fn wait_holding_all(s: &Service, within: Duration) {
    let started = Instant::now();
    loop {
        let l = lanes(s).await;
        if !l.is_empty() && l.values().all(|h| !h.starts_with("sent by")) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "lanes never came to {}: {l:?}",
            s.url
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn nonce_of(h: &Harness, who: Address) -> u64 {
    h.chain.provider().get_transaction_count(who).await.unwrap()
}

async fn post_settle(url: &str, body: &Value) -> Result<Value, reqwest::Error> {
    reqwest::Client::new()
        .post(format!("{url}/settle"))
        .json(body)
        .timeout(Duration::from_secs(40))
        .send()
        .await?
        .json()
        .await
}

/// Every mined transaction of the ledger, none reverted, and each wallet's nonces contiguous
/// from 0 up to what the chain says it sent.
async fn assert_clean_ledger(h: &Harness, ledger: &Ledger) {
    let txs = ledger.transactions(CHAIN_ID).await.unwrap();
    assert!(
        txs.iter().all(|t| t.status != TxStatus::Reverted),
        "a transaction reverted"
    );
    for k in &h.gas_keys {
        let mut mined: Vec<u64> = txs
            .iter()
            .filter(|t| t.wallet == k.address() && t.status == TxStatus::Mined)
            .map(|t| t.nonce)
            .collect();
        mined.sort_unstable();
        let expected: Vec<u64> = (0..mined.len() as u64).collect();
        assert_eq!(mined, expected, "wallet {} nonces", k.address());
        let sent = nonce_of(h, k.address()).await;
        assert_eq!(
            sent,
            mined.len() as u64,
            "the chain saw a transaction the ledger did not"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_settle_every_payment_once_and_duplicates_get_one_hash() {
    let Some(h) = two_wallets(Backend::Postgres).await else {
        return;
    };
    let a = node(&h, "a").await;
    let b = node(&h, "b").await;
    let payers = h.funded_payers(1000, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    // Each payment once to a random node, a fifth of them a second time to the other; 128 at a
    // time (under each node's /settle concurrency limit).
    let mut sends: Vec<(usize, &str)> = Vec::new();
    for i in 0..bodies.len() {
        let first = if rand_bit(i) { &a.url } else { &b.url };
        sends.push((i, first));
        if i % 5 == 0 {
            sends.push((i, if first == &a.url { &b.url } else { &a.url }));
        }
    }
    let bodies = &bodies;
    let answers: Vec<(usize, Value)> = futures::stream::iter(
        sends
            .iter()
            .map(|(i, url)| async move { (*i, post_settle(url, &bodies[*i]).await.unwrap()) }),
    )
    .buffer_unordered(128)
    .collect()
    .await;
    let mut hashes: HashMap<usize, String> = HashMap::new();
    for (i, answer) in answers {
        assert_eq!(answer["success"], true, "{answer}");
        let hash = answer["transaction"].as_str().unwrap().to_owned();
        if let Some(seen) = hashes.insert(i, hash.clone()) {
            assert_eq!(seen, hash, "a duplicate got another transaction");
        }
    }
    assert_eq!(hashes.len(), 1000);
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(1000 * ONE_CENT));
    for p in payers.iter().step_by(37) {
        assert_eq!(h.authorizations_used(p.address()).await, 1);
        assert_eq!(h.usdc_balance(p.address()).await, U256::ZERO);
    }
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    assert_clean_ledger(&h, &ledger).await;
    // Each wallet is written by exactly one node.
    let (la, lb) = (lanes(&a).await, lanes(&b).await);
    for k in &h.gas_keys {
        let w = k.address().to_string().to_lowercase();
        let held = [&la, &lb]
            .iter()
            .filter(|l| l.get(&w).is_some_and(|h| !h.starts_with("sent by")))
            .count();
        assert_eq!(held, 1, "wallet {w}: a {:?} b {:?}", la.get(&w), lb.get(&w));
    }
}

/// Lanes `s` holds now (neither sent by another node nor being handed over).
async fn held_lanes(s: &Service) -> usize {
    lanes(s)
        .await
        .values()
        .filter(|h| !h.starts_with("sent by") && !h.starts_with("handing over"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_spread_over_the_live_nodes_and_return_when_one_dies() {
    let Some(h) = two_wallets(Backend::Postgres).await else {
        return;
    };
    // Batches of 5, so that the load needs many transactions (one node's batcher could take
    // a whole wave of payments into one).
    let small = format!("{LEASE}\nbatch_max_items = 5");
    let a = Service::start_node(&h, &small, "", "node_id = \"a\"").await;
    wait_holding_all(&a, Duration::from_secs(10)).await;
    // b comes up: a hands one lane over, and each node sends for one wallet.
    let b = Service::start_node(&h, &small, "", "node_id = \"b\"").await;
    let started = Instant::now();
    loop {
        let (ha, hb) = (held_lanes(&a).await, held_lanes(&b).await);
        if (ha, hb) == (1, 1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "lanes never spread: a {:?} b {:?}",
            lanes(&a).await,
            lanes(&b).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let payers = h.funded_payers(100, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    let answers = futures::future::join_all(
        bodies
            .iter()
            .enumerate()
            .map(|(i, body)| post_settle(if i % 2 == 0 { &a.url } else { &b.url }, body)),
    )
    .await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer["success"], true, "{answer}");
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(100 * ONE_CENT));
    for k in &h.gas_keys {
        assert!(
            nonce_of(&h, k.address()).await > 0,
            "wallet {} sent nothing: the lanes were not shared",
            k.address()
        );
    }
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    assert_clean_ledger(&h, &ledger).await;
    // b dies: once its lease and its presence run out, a holds both lanes again and settles.
    b.kill_9();
    wait_holding_all(&a, Duration::from_secs(20)).await;
    let more = h.funded_payers(4, ONE_CENT).await;
    for body in h.v2_bodies(&more, &req) {
        assert_eq!(post_settle(&a.url, &body).await.unwrap()["success"], true);
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(104 * ONE_CENT));
    assert_clean_ledger(&h, &ledger).await;
}

/// Deterministic scatter without a dependency.
fn rand_bit(i: usize) -> bool {
    (i.wrapping_mul(2_654_435_761) >> 7) & 1 == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_lanes_pass_to_the_other_and_nothing_is_paid_twice() {
    let Some(h) = two_wallets(Backend::Postgres).await else {
        return;
    };
    let a = node(&h, "a").await;
    wait_holding_all(&a, Duration::from_secs(10)).await;
    let b = node(&h, "b").await;
    let payers = h.funded_payers(60, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    // Load on a (by now it has handed one lane to b); it dies in the middle of it.
    let a_url = a.url.clone();
    let load = tokio::spawn({
        let bodies = bodies.clone();
        async move { futures::future::join_all(bodies.iter().map(|b| post_settle(&a_url, b))).await }
    });
    // Killed once it has settled something (and, at this load, not everything).
    let started = Instant::now();
    while h.usdc_balance(h.pay_to).await.is_zero() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill_9();
    let _ = load.await;
    // The survivor takes the lanes over once the dead node's leases expire, and answers every
    // payment, whether the dead node settled it, queued it, or never saw it.
    wait_holding_all(&b, Duration::from_secs(15)).await;
    let answers =
        futures::future::join_all(bodies.iter().map(|body| post_settle(&b.url, body))).await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer["success"], true, "{answer}");
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(60 * ONE_CENT));
    for p in &payers {
        assert_eq!(h.authorizations_used(p.address()).await, 1);
    }
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    assert_clean_ledger(&h, &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_sends_nothing_when_it_resumes() {
    let Some(h) = two_wallets(Backend::Postgres).await else {
        return;
    };
    let a = node(&h, "a").await;
    wait_holding_all(&a, Duration::from_secs(10)).await;
    let b = node(&h, "b").await;
    let pid = a.child.id().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, pid.as_str()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    wait_holding_all(&b, Duration::from_secs(15)).await;
    let payers = h.funded_payers(20, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    for body in &bodies[..10] {
        assert_eq!(post_settle(&b.url, body).await.unwrap()["success"], true);
    }
    let nonces: Vec<u64> = {
        let mut v = Vec::new();
        for k in &h.gas_keys {
            v.push(nonce_of(&h, k.address()).await);
        }
        v
    };
    // Resumed, the old holder finds its fence gone: it signs and sends nothing, and the rest of
    // the payments, sent to it, are settled by the new holder.
    // (Each of its lanes is seen let go; b may then hand one back to it, under a new fence.)
    signal("-CONT");
    let started = Instant::now();
    let mut let_go = std::collections::HashSet::new();
    loop {
        let l = lanes(&a).await;
        let_go.extend(
            l.iter()
                .filter(|(_, h)| h.starts_with("sent by"))
                .map(|(w, _)| w.clone()),
        );
        if let_go.len() == l.len() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{l:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (k, before) in h.gas_keys.iter().zip(&nonces) {
        assert_eq!(nonce_of(&h, k.address()).await, *before);
    }
    for body in &bodies[10..] {
        assert_eq!(post_settle(&a.url, body).await.unwrap()["success"], true);
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(20 * ONE_CENT));
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    assert_clean_ledger(&h, &ledger).await;
    drop(b);
}

/// A made-up first transaction of `wallet`, to try writing under a fence.
fn first_tx(wallet: Address) -> NewTransaction {
    NewTransaction {
        chain_id: CHAIN_ID,
        wallet,
        nonce: 0,
        raw_tx: Bytes::from_static(b"\x02"),
        tx_hash: B256::random(),
        gas_limit: 21_000,
        max_fee_per_gas: 1,
        max_priority_fee_per_gas: 1,
    }
}

/// The fence at the ledger: a writer whose lease was taken over records nothing.
async fn a_stale_fence_writes_nothing(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else {
        return;
    };
    let ledger = Ledger::connect(&url).await.unwrap();
    let wallet = Address::random();
    let short = Duration::from_millis(50);
    let Lease::Held(first) = ledger
        .take_lease(CHAIN_ID, wallet, "a", None, short, true)
        .await
        .unwrap()
    else {
        panic!("a free lease is taken");
    };
    // Held and unexpired: another node cannot take it.
    assert!(matches!(
        ledger.take_lease(CHAIN_ID, wallet, "b", None, short, true).await.unwrap(),
        Lease::Elsewhere { ref holder, .. } if holder == "a"
    ));
    tokio::time::sleep(short * 2).await;
    let Lease::Held(second) = ledger
        .take_lease(CHAIN_ID, wallet, "b", None, Duration::from_secs(30), true)
        .await
        .unwrap()
    else {
        panic!("an expired lease is taken over");
    };
    assert!(second.token > first.token);
    // The old holder can neither renew nor write.
    assert!(matches!(
        ledger
            .take_lease(CHAIN_ID, wallet, "a", Some(first.token), short, true)
            .await
            .unwrap(),
        Lease::Elsewhere { .. }
    ));
    let t = first_tx(wallet);
    assert!(matches!(
        ledger.record_batch(&[], &t, &first).await,
        Err(LedgerError::Fenced { .. })
    ));
    assert!(ledger.transactions(CHAIN_ID).await.unwrap().is_empty());
    ledger.record_batch(&[], &t, &second).await.unwrap();
    assert_eq!(ledger.transactions(CHAIN_ID).await.unwrap().len(), 1);
    // A node restarted under its name (no fence in hand) takes its lane back at once, with a
    // new fence; the old fence is dead.
    let Lease::Held(third) = ledger
        .take_lease(CHAIN_ID, wallet, "b", None, Duration::from_secs(30), true)
        .await
        .unwrap()
    else {
        panic!("a restart takes its own lease back");
    };
    assert!(third.token > second.token);
    let t2 = NewTransaction {
        tx_hash: B256::random(),
        ..t
    };
    assert!(matches!(
        ledger.record_batch(&[], &t2, &second).await,
        Err(LedgerError::Fenced { .. })
    ));
}

/// The fair share at the ledger: alone a node keeps every lane; a second live node makes the
/// first hand its last lane over, which it cannot then take back while it has its share.
async fn lanes_are_shared_out_among_live_nodes(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else {
        return;
    };
    let ledger = Ledger::connect(&url).await.unwrap();
    let mut wallets: Vec<Address> = (0..3).map(|_| Address::random()).collect();
    wallets.sort();
    let ttl = Duration::from_secs(30);
    ledger.heartbeat(CHAIN_ID, "a").await.unwrap();
    let mut fences = Vec::new();
    for w in &wallets {
        let Lease::Held(f) = ledger
            .take_lease(CHAIN_ID, *w, "a", None, ttl, true)
            .await
            .unwrap()
        else {
            panic!("a free lease is taken");
        };
        fences.push(f);
    }
    let alone = ledger.lane_share(CHAIN_ID, "a", 3, ttl).await.unwrap();
    assert_eq!((alone.held.clone(), alone.fair), (wallets.clone(), 3));
    assert!(wallets.iter().all(|w| !alone.should_hand_over(*w)));
    // b comes alive: a's share is ceil(3 / 2) = 2 and its last lane is the one to give.
    ledger.heartbeat(CHAIN_ID, "b").await.unwrap();
    let a = ledger.lane_share(CHAIN_ID, "a", 3, ttl).await.unwrap();
    assert_eq!(a.fair, 2);
    let giving: Vec<bool> = wallets.iter().map(|w| a.should_hand_over(*w)).collect();
    assert_eq!(giving, [false, false, true]);
    let b = ledger.lane_share(CHAIN_ID, "b", 3, ttl).await.unwrap();
    assert!(b.held.is_empty() && b.may_take(wallets[2]));
    assert!(ledger.release_lease(&fences[2]).await.unwrap());
    // Released, a holds its share: it neither renews nor retakes the lane.
    let a = ledger.lane_share(CHAIN_ID, "a", 3, ttl).await.unwrap();
    assert_eq!(a.held, wallets[..2]);
    assert!(!a.may_take(wallets[2]));
    assert!(matches!(
        ledger
            .take_lease(CHAIN_ID, wallets[2], "a", Some(fences[2].token), ttl, false)
            .await
            .unwrap(),
        Lease::Elsewhere { .. }
    ));
    let Lease::Held(taken) = ledger
        .take_lease(CHAIN_ID, wallets[2], "b", None, ttl, true)
        .await
        .unwrap()
    else {
        panic!("b takes the released lane");
    };
    assert!(taken.token > fences[2].token);
    // The fence a gave up writes nothing.
    let t = first_tx(wallets[2]);
    assert!(matches!(
        ledger.record_batch(&[], &t, &fences[2]).await,
        Err(LedgerError::Fenced { .. })
    ));
    // A node not seen within the lease counts out: a alone again, its share is every lane.
    let short = Duration::from_millis(200);
    tokio::time::sleep(short * 2).await;
    ledger.heartbeat(CHAIN_ID, "a").await.unwrap();
    let a = ledger.lane_share(CHAIN_ID, "a", 3, short).await.unwrap();
    assert_eq!(a.fair, 3);
    assert!(a.may_take(wallets[2]));
}

/// A queued payment of its own key, for the queue tests.
fn queued_payment(i: u8) -> NewPayment {
    NewPayment {
        chain_id: CHAIN_ID,
        asset: Address::repeat_byte(0xa5),
        payer: Address::repeat_byte(i),
        nonce: B256::repeat_byte(i),
        pay_to: Address::repeat_byte(0xbb),
        amount: U256::from(10_000u64),
        valid_before: 4_000_000_000,
        payload_digest: B256::repeat_byte(i),
        x402_version: 2,
        network: "eip155:84532".into(),
        request_json: "{}".into(),
        deploy: None,
        transfer_calldata: Bytes::from_static(b"\x01"),
        api_key: None,
        method: Method::Eip3009,
        call_target: Address::repeat_byte(0xa5),
        sender: None,
    }
}

/// Two nodes reading one PostgreSQL queue take disjoint payments (each batch is signed by one
/// node only, instead of both signing it and one losing at the ledger); a claim of a dead node
/// lapses and its payments pass on. Measured before: a two-node bench logged dozens of "batch
/// items were no longer queued" refusals a run, every batch signed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_take_the_same_queued_payments() {
    let Some((url, _dir)) = fresh_database(Backend::Postgres).await else {
        return;
    };
    let a = Ledger::connect(&url).await.unwrap();
    let b = Ledger::connect(&url).await.unwrap();
    for i in 1..=10 {
        assert!(matches!(
            a.claim(&queued_payment(i)).await.unwrap(),
            Claim::New(_)
        ));
    }
    let none = std::collections::HashSet::new();
    let short = Duration::from_millis(300);
    let claim = |node| QueueClaim { node, ttl: short };
    let ids = |ps: &[x402d::ledger::Payment]| ps.iter().map(|p| p.id).collect::<Vec<_>>();
    let first = a.queued_due(CHAIN_ID, 6, &none, &claim("a")).await.unwrap();
    assert_eq!(first.len(), 6);
    assert!(first.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    let second = b.queued_due(CHAIN_ID, 6, &none, &claim("b")).await.unwrap();
    assert_eq!(second.len(), 4, "b gets only what a has not claimed");
    assert!(ids(&second).iter().all(|id| !ids(&first).contains(id)));
    // A node sees its own claims again (a batch that was not sent goes round again there).
    let again = a
        .queued_due(CHAIN_ID, 10, &none, &claim("a"))
        .await
        .unwrap();
    assert_eq!(ids(&again), ids(&first));
    // Released (a batch a could not send), they pass on at once; only the claimer releases.
    b.release_claims(&ids(&first[..2]), "b").await.unwrap();
    let (x, y) = (claim("x"), claim("y"));
    assert!(
        b.queued_due(CHAIN_ID, 10, &none, &x)
            .await
            .unwrap()
            .is_empty()
    );
    a.release_claims(&ids(&first[..2]), "a").await.unwrap();
    let passed = b.queued_due(CHAIN_ID, 10, &none, &y).await.unwrap();
    assert_eq!(ids(&passed), ids(&first[..2]));
    // a and b die: once their claims lapse, two others reading at once split the payments
    // between them, none taken twice.
    tokio::time::sleep(short * 2).await;
    let (c, d) = (claim("c"), claim("d"));
    let (x, y) = tokio::join!(
        a.queued_due(CHAIN_ID, 10, &none, &c),
        b.queued_due(CHAIN_ID, 10, &none, &d)
    );
    let (x, y) = (ids(&x.unwrap()), ids(&y.unwrap()));
    assert_eq!(x.len() + y.len(), 10, "{x:?} {y:?}");
    assert!(x.iter().all(|id| !y.contains(id)));
    tokio::time::sleep(short * 2).await;
    let taken = b
        .queued_due(CHAIN_ID, 10, &none, &claim("b"))
        .await
        .unwrap();
    assert_eq!(taken.len(), 10);
}

mod lanes_are_shared_out_among_live_nodes {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::lanes_are_shared_out_among_live_nodes(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::lanes_are_shared_out_among_live_nodes(Backend::Postgres).await
    }
}

mod a_stale_fence_writes_nothing {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::a_stale_fence_writes_nothing(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_stale_fence_writes_nothing(Backend::Postgres).await
    }
}

/// A Redis of the test's own, to stop and start.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is needed (the CI script installs it)");
        OwnRedis { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn ready(s: &Service) -> Value {
    reqwest::get(format!("{}/ready", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_load_loses_and_doubles_nothing() {
    let Some(h) = two_wallets(Backend::Postgres).await else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = OwnRedis::start(port);
    let server = format!(
        "redis_url = \"redis://127.0.0.1:{}\"\nrate_limit_per_minute = 100000",
        redis.port
    );
    let a = Service::start_node(&h, LEASE, "", &format!("node_id = \"a\"\n{server}")).await;
    let b = Service::start_node(&h, LEASE, "", &format!("node_id = \"b\"\n{server}")).await;
    let started = Instant::now();
    while ready(&a).await["degraded"] != serde_json::json!([]) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Redis never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let payers = h.funded_payers(200, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    let urls = [a.url.clone(), b.url.clone()];
    let jobs: Vec<(String, Value)> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| (urls[i % 2].clone(), body.clone()))
        .collect();
    let load = tokio::spawn(async move {
        let mut answers = Vec::new();
        let mut pending = futures::stream::FuturesUnordered::new();
        for (url, body) in jobs {
            if pending.len() >= 32
                && let Some(a) = pending.next().await
            {
                answers.push(a);
            }
            pending.push(async move { post_settle(&url, &body).await });
        }
        while let Some(a) = pending.next().await {
            answers.push(a);
        }
        answers
    });
    while h.usdc_balance(h.pay_to).await < U256::from(20 * ONE_CENT) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.stop();
    for answer in load.await.unwrap() {
        assert_eq!(answer.unwrap()["success"], true);
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(200 * ONE_CENT));
    for p in payers.iter().step_by(11) {
        assert_eq!(h.authorizations_used(p.address()).await, 1);
    }
    // Still ready, but degraded; Redis back, the fast path again.
    let r = ready(&a).await;
    assert_eq!(r["ready"], true, "{r}");
    assert_eq!(r["degraded"], serde_json::json!(["redis"]), "{r}");
    let _back = OwnRedis::start(port);
    let started = Instant::now();
    while ready(&b).await["degraded"] != serde_json::json!([]) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Redis never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    assert_clean_ledger(&h, &ledger).await;
}
