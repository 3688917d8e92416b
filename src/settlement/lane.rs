//! A lane: one chain, one gas wallet. The batcher turns queued payments into signed, recorded, then
//! broadcast transactions; the watcher follows receipts and reconciles what they did not settle.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::time::Instant;

use super::tx::{self, ItemCalls};
use super::{SettlementConfig, Waiters};
use crate::chain::bindings::IEip3009Token;
use crate::chain::rpc::hex_result;
use crate::chain::{Chains, Network, RpcCall, RpcError, Token};
use crate::exact;
use crate::ledger::{
    Ledger, LedgerError, MinedTx, NewTransaction, Payment, PaymentState, TxStatus,
};
use crate::protocol::wire::Eip3009Authorization;
use crate::protocol::{PaymentBody, Reason, parse_facilitator_request};
use crate::telemetry::{LaneMetrics, Metrics};

/// Why a step of the lane could not finish; it is retried later, nothing is lost.
#[derive(Debug, thiserror::Error)]
enum LaneError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("signing: {0}")]
    Sign(String),
}

/// A transaction of ours not yet seen mined.
#[derive(Debug, Clone)]
struct InFlight {
    tx_id: i64,
    batch_id: i64,
    nonce: u64,
    hash: B256,
    raw: Bytes,
    last_broadcast: Instant,
}

/// How often a payment may go back to the queue before it is failed.
const MAX_REQUEUES: usize = 3;

pub(super) struct Lane {
    ledger: Ledger,
    chains: Chains,
    index: usize,
    signer: PrivateKeySigner,
    wallet: Address,
    config: SettlementConfig,
    waiters: Arc<Waiters>,
    in_flight: Mutex<Vec<InFlight>>,
    in_flight_changed: Notify,
    /// The next nonce to sign with; `None` means "resynchronise from chain and ledger".
    next_nonce: Mutex<Option<u64>>,
    /// The most gas one plain item has used in our receipts.
    learned_item_gas: Mutex<Option<u64>>,
    metrics: LaneMetrics,
}

fn hex_lower(b: &[u8]) -> String {
    format!("0x{}", alloy::hex::encode(b))
}

fn parse_hex(s: &str) -> Result<Bytes, LedgerError> {
    alloy::hex::decode(s.trim_start_matches("0x"))
        .map(Into::into)
        .map_err(|e| LedgerError::Corrupt(format!("hex {s}: {e}")))
}

fn parse_addr(s: &str) -> Result<Address, LedgerError> {
    s.parse()
        .map_err(|e| LedgerError::Corrupt(format!("address {s}: {e}")))
}

impl Lane {
    pub(super) fn new(
        ledger: Ledger,
        chains: Chains,
        index: usize,
        signer: PrivateKeySigner,
        config: SettlementConfig,
        waiters: Arc<Waiters>,
        metrics: Arc<Metrics>,
    ) -> Lane {
        let wallet = signer.address();
        let network = chains.networks()[index].chain_id.caip2();
        Lane {
            metrics: metrics.lane(&network, &wallet.to_checksum(None)),
            ledger,
            chains,
            index,
            signer,
            wallet,
            config,
            waiters,
            in_flight: Mutex::new(Vec::new()),
            in_flight_changed: Notify::new(),
            next_nonce: Mutex::new(None),
            learned_item_gas: Mutex::new(None),
        }
    }

    fn network(&self) -> &Network {
        &self.chains.networks()[self.index]
    }

    fn count_ledger_error(&self, e: &LaneError) {
        if let LaneError::Ledger(_) = e {
            self.metrics.ledger_errors.inc();
        }
    }

    pub(super) fn chain_id(&self) -> u64 {
        self.network().chain_id.0
    }

    pub(super) async fn run(self: Arc<Self>, wake: mpsc::UnboundedReceiver<()>) {
        while let Err(e) = self.recover().await {
            self.count_ledger_error(&e);
            tracing::warn!(chain = self.chain_id(), error = %e, "settlement recovery failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let watcher = self.clone();
        tokio::spawn(async move { watcher.watch().await });
        self.batch_loop(wake).await;
    }

    /// Resumes from the ledger: every transaction not known mined goes back in flight and is
    /// rebroadcast from its stored raw bytes; queued payments are picked up by the batcher.
    async fn recover(&self) -> Result<(), LaneError> {
        let open = self.ledger.open_transactions(self.chain_id()).await?;
        let mut in_flight = self.in_flight.lock().await;
        in_flight.clear();
        for t in open {
            let raw = parse_hex(&t.raw_tx)?;
            let hash: B256 = t
                .tx_hash
                .parse()
                .map_err(|_| LedgerError::Corrupt(format!("hash {}", t.tx_hash)))?;
            let f = InFlight {
                tx_id: t.id,
                batch_id: t.batch_id,
                nonce: t.nonce,
                hash,
                raw,
                last_broadcast: Instant::now(),
            };
            self.send_raw(&f).await?;
            in_flight.push(f);
        }
        self.metrics.in_flight.set(in_flight.len() as i64);
        if !in_flight.is_empty() {
            tracing::info!(
                chain = self.chain_id(),
                transactions = in_flight.len(),
                "resumed in-flight settlement transactions"
            );
        }
        *self.next_nonce.lock().await = None;
        Ok(())
    }

    async fn batch_loop(&self, mut wake: mpsc::UnboundedReceiver<()>) {
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    m = wake.recv() => if m.is_none() { return },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let deadline = Instant::now() + self.config.batch_window;
                let mut seen = 1;
                while seen < self.config.batch_max_items {
                    tokio::select! {
                        m = wake.recv() => match m { Some(()) => seen += 1, None => break },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
            }
            first = false;
            loop {
                self.wait_for_room().await;
                match self
                    .ledger
                    .queued(self.chain_id(), self.config.batch_max_items)
                    .await
                {
                    Ok(items) if items.is_empty() => break,
                    Ok(items) => {
                        let full = items.len() == self.config.batch_max_items;
                        if let Err(e) = self.send_batch(items).await {
                            self.count_ledger_error(&e);
                            tracing::warn!(chain = self.chain_id(), error = %e, "batch not sent; will retry");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            break;
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        self.metrics.ledger_errors.inc();
                        tracing::warn!(chain = self.chain_id(), error = %e, "cannot read queue");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }

    async fn wait_for_room(&self) {
        loop {
            let notified = self.in_flight_changed.notified();
            if self.in_flight.lock().await.len() < self.config.max_in_flight {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    fn item_calls(&self, p: &Payment) -> Result<ItemCalls, LedgerError> {
        let deploy = match (&p.deploy_target, &p.deploy_calldata) {
            (Some(t), Some(d)) => Some((parse_addr(t)?, parse_hex(d)?)),
            _ => None,
        };
        Ok(ItemCalls {
            token: parse_addr(&p.asset)?,
            deploy,
            transfer: parse_hex(&p.transfer_calldata)?,
        })
    }

    /// Simulates every item, drops the failures with their reason (so a bad payload costs no gas),
    /// and sends the rest as one transaction.
    async fn send_batch(&self, items: Vec<Payment>) -> Result<(), LaneError> {
        let mut parsed = Vec::with_capacity(items.len());
        for p in items {
            match self.item_calls(&p) {
                Ok(c) => parsed.push((p, c)),
                Err(e) => {
                    self.fail(p.id, Reason::TransactionFailed, &e.to_string())
                        .await?;
                }
            }
        }
        let sims: Vec<RpcCall> = parsed.iter().map(|(_, c)| tx::simulation(c)).collect();
        let results = self.network().rpc.batch(&sims).await?;
        let mut good = Vec::with_capacity(parsed.len());
        for ((p, c), r) in parsed.into_iter().zip(results) {
            match r {
                Ok(_) => good.push((p, c)),
                Err(e) => self.settle_unsendable(&p, &e.reason()).await?,
            }
        }
        if good.is_empty() {
            return Ok(());
        }
        let calls: Vec<ItemCalls> = good.iter().map(|(_, c)| c.clone()).collect();
        let batch = tx::batch_call(&calls);
        let rpc = &self.network().rpc;
        let gas_limit = self.gas_limit(&calls, &batch).await?;
        let fee_answers = rpc.batch(&tx::fee_calls()).await?;
        let (Some(Ok(block)), Some(Ok(tip))) = (fee_answers.first(), fee_answers.get(1)) else {
            return Err(RpcError::Malformed("fee queries failed".into()).into());
        };
        let fees = tx::fees_from(block, tip)?;

        let mut nonce_slot = self.next_nonce.lock().await;
        let nonce = match *nonce_slot {
            Some(n) => n,
            None => self.resync_nonce().await?,
        };
        let signed = tx::sign(
            &self.signer,
            self.chain_id(),
            nonce,
            gas_limit,
            fees,
            batch.to,
            batch.input,
        )
        .map_err(|e| LaneError::Sign(e.to_string()))?;
        let ids: Vec<i64> = good.iter().map(|(p, _)| p.id).collect();
        let record = NewTransaction {
            chain_id: self.chain_id(),
            wallet: hex_lower(self.wallet.as_slice()),
            nonce,
            raw_tx: hex_lower(&signed.raw),
            tx_hash: hex_lower(signed.hash.as_slice()),
            gas_limit,
            max_fee_per_gas: fees.max_fee_per_gas.to_string(),
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas.to_string(),
        };
        // Written before the broadcast: a crash from here on is recovered by rebroadcasting it.
        let (batch_id, tx_id) = self.ledger.record_batch(&ids, &record).await?;
        *nonce_slot = Some(nonce + 1);
        drop(nonce_slot);
        self.metrics.batch_size.observe(ids.len() as f64);
        tracing::debug!(chain = self.chain_id(), items = ids.len(), nonce, hash = %signed.hash, gas_limit, "batch signed");
        let f = InFlight {
            tx_id,
            batch_id,
            nonce,
            hash: signed.hash,
            raw: signed.raw,
            last_broadcast: Instant::now(),
        };
        match self.send_raw(&f).await {
            Ok(()) => {}
            Err(LaneError::Rpc(RpcError::Unreachable(e))) => {
                tracing::warn!(error = %e, "broadcast failed; the watcher will retry it");
            }
            Err(e) => {
                tracing::warn!(error = %e, hash = %f.hash, "broadcast refused; batch dropped and re-queued");
                self.drop_transaction(&f).await?;
                return Ok(());
            }
        }
        {
            let mut in_flight = self.in_flight.lock().await;
            in_flight.push(f);
            self.metrics.in_flight.set(in_flight.len() as i64);
        }
        self.in_flight_changed.notify_waiters();
        Ok(())
    }

    /// Gas for a batch. Estimating a large batch costs the node as much as a hundred simulations, so
    /// once a receipt has taught us the gas of a plain item, plain batches use that (the largest seen,
    /// plus an allowance for a new payee); the first batch and any batch with deployments are
    /// estimated in their strict form.
    async fn gas_limit(
        &self,
        calls: &[ItemCalls],
        batch: &tx::BatchCall,
    ) -> Result<u64, LaneError> {
        let plain = calls.iter().all(|c| c.deploy.is_none());
        if let (true, Some(per_item)) = (plain, *self.learned_item_gas.lock().await) {
            return Ok(tx::learned_gas(calls.len(), per_item));
        }
        let estimate = tx::estimate_gas(
            &self.network().rpc,
            self.wallet,
            batch.to,
            &batch.strict_input,
        )
        .await?;
        Ok(estimate
            .map(tx::with_margin)
            .unwrap_or_else(|| tx::modelled_gas(calls)))
    }

    /// The next nonce: the chain's pending count, or one past the last we signed and did not drop.
    async fn resync_nonce(&self) -> Result<u64, LaneError> {
        let call = RpcCall {
            method: "eth_getTransactionCount",
            params: json!([self.wallet, "pending"]),
        };
        let on_chain = match self.network().rpc.request(call).await? {
            Ok(v) => tx::quantity(&v)? as u64,
            Err(e) => return Err(RpcError::Malformed(e.message).into()),
        };
        let ours = self
            .ledger
            .last_nonce(self.chain_id(), &hex_lower(self.wallet.as_slice()))
            .await?
            .map(|n| n + 1)
            .unwrap_or(0);
        Ok(on_chain.max(ours))
    }

    /// Broadcasts stored raw bytes. "Already known" counts as success; a refusal is an error.
    async fn send_raw(&self, f: &InFlight) -> Result<(), LaneError> {
        let call = RpcCall {
            method: "eth_sendRawTransaction",
            params: json!([f.raw]),
        };
        match self.network().rpc.request(call).await? {
            Ok(_) => {}
            Err(e)
                if e.message.contains("already known")
                    || e.message.contains("already imported") => {}
            Err(e) if e.message.to_ascii_lowercase().contains("nonce too low") => {
                // Either it was mined already (its receipt will show) or another transaction took
                // the nonce (the watcher will find no receipt and drop it).
                tracing::debug!(hash = %f.hash, "nonce already used when broadcasting");
            }
            Err(e) => {
                return Err(RpcError::Malformed(format!(
                    "eth_sendRawTransaction refused: {}",
                    e.message
                ))
                .into());
            }
        }
        self.ledger
            .set_tx_status(f.tx_id, TxStatus::Broadcast)
            .await?;
        Ok(())
    }

    /// Follows receipts of in-flight transactions, rebroadcasts the late ones, confirms.
    async fn watch(self: Arc<Self>) {
        loop {
            let snapshot = self.in_flight.lock().await.clone();
            if snapshot.is_empty() {
                if self.config.confirmations > 1 {
                    let _ = self.confirm().await;
                }
                let notified = self.in_flight_changed.notified();
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                continue;
            }
            if let Err(e) = self.poll_receipts(&snapshot).await {
                self.count_ledger_error(&e);
                tracing::warn!(chain = self.chain_id(), error = %e, "receipt poll failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            tokio::time::sleep(self.config.receipt_poll).await;
        }
    }

    async fn confirm(&self) -> Result<(), LaneError> {
        let head = match self
            .network()
            .rpc
            .request(RpcCall {
                method: "eth_blockNumber",
                params: json!([]),
            })
            .await?
        {
            Ok(v) => tx::quantity(&v)? as u64,
            Err(e) => return Err(RpcError::Malformed(e.message).into()),
        };
        let depth = self.config.confirmations.saturating_sub(1);
        for id in self
            .ledger
            .confirm_up_to(self.chain_id(), head.saturating_sub(depth))
            .await?
        {
            self.waiters.notify(id);
        }
        Ok(())
    }

    async fn poll_receipts(&self, snapshot: &[InFlight]) -> Result<(), LaneError> {
        let calls: Vec<RpcCall> = snapshot
            .iter()
            .map(|f| RpcCall {
                method: "eth_getTransactionReceipt",
                params: json!([f.hash]),
            })
            .collect();
        let results = self.network().rpc.batch(&calls).await?;
        for (f, r) in snapshot.iter().zip(results) {
            match r {
                Ok(receipt) if !receipt.is_null() => {
                    self.on_receipt(f, &receipt).await?;
                    self.forget(f.tx_id).await;
                }
                _ if f.last_broadcast.elapsed() >= self.config.rebroadcast_after => {
                    self.on_late(f).await?
                }
                _ => {}
            }
        }
        if self.config.confirmations > 1 {
            self.confirm().await?;
        }
        Ok(())
    }

    async fn forget(&self, tx_id: i64) {
        {
            let mut in_flight = self.in_flight.lock().await;
            in_flight.retain(|f| f.tx_id != tx_id);
            self.metrics.in_flight.set(in_flight.len() as i64);
        }
        self.in_flight_changed.notify_waiters();
    }

    /// No receipt for a while: rebroadcast, unless the wallet's nonce moved past it (then another
    /// transaction took the nonce and this one can never be mined).
    async fn on_late(&self, f: &InFlight) -> Result<(), LaneError> {
        let call = RpcCall {
            method: "eth_getTransactionCount",
            params: json!([self.wallet, "latest"]),
        };
        let mined_nonce = match self.network().rpc.request(call).await? {
            Ok(v) => tx::quantity(&v)? as u64,
            Err(e) => return Err(RpcError::Malformed(e.message).into()),
        };
        if mined_nonce > f.nonce {
            // Its receipt may just have appeared; look once more before calling it dropped.
            let receipt = self
                .network()
                .rpc
                .request(RpcCall {
                    method: "eth_getTransactionReceipt",
                    params: json!([f.hash]),
                })
                .await?;
            if let Ok(r) = receipt
                && !r.is_null()
            {
                self.on_receipt(f, &r).await?;
                self.forget(f.tx_id).await;
                return Ok(());
            }
            tracing::warn!(hash = %f.hash, nonce = f.nonce, "transaction replaced or dropped; reconciling its payments");
            self.forget(f.tx_id).await;
            return self.drop_transaction(f).await;
        }
        tracing::info!(hash = %f.hash, "no receipt yet; rebroadcasting");
        if let Err(e) = self.send_raw(f).await {
            tracing::warn!(hash = %f.hash, error = %e, "rebroadcast failed");
        }
        let mut in_flight = self.in_flight.lock().await;
        if let Some(entry) = in_flight.iter_mut().find(|x| x.tx_id == f.tx_id) {
            entry.last_broadcast = Instant::now();
        }
        Ok(())
    }

    /// A transaction that will never be mined: its payments are reconciled one by one.
    async fn drop_transaction(&self, f: &InFlight) -> Result<(), LaneError> {
        self.ledger
            .set_tx_status(f.tx_id, TxStatus::Dropped)
            .await?;
        *self.next_nonce.lock().await = None;
        for p in self.ledger.batch_payments(f.batch_id).await? {
            if p.state == PaymentState::InBatch {
                self.reconcile(&p).await?;
            }
        }
        Ok(())
    }

    /// Matches a receipt's `AuthorizationUsed` logs to the batch's payments.
    async fn on_receipt(&self, f: &InFlight, receipt: &Value) -> Result<(), LaneError> {
        let field = |k: &str| {
            receipt
                .get(k)
                .ok_or_else(|| RpcError::Malformed(format!("receipt without {k}")))
        };
        let succeeded = field("status")?.as_str() == Some("0x1");
        let mined = MinedTx {
            succeeded,
            block_number: tx::quantity(field("blockNumber")?)? as u64,
            gas_used: tx::quantity(field("gasUsed")?)? as u64,
            effective_gas_price: receipt
                .get("effectiveGasPrice")
                .map(tx::quantity)
                .transpose()?
                .unwrap_or(0)
                .to_string(),
        };
        let used: HashSet<(Address, Address, B256)> =
            authorization_used_logs(receipt).into_iter().collect();
        let payments = self.ledger.batch_payments(f.batch_id).await?;
        let mut settled = Vec::new();
        let mut unsettled = Vec::new();
        for p in payments {
            let key = (
                parse_addr(&p.asset)?,
                parse_addr(&p.payer)?,
                p.nonce
                    .parse::<B256>()
                    .map_err(|_| LedgerError::Corrupt(p.nonce.clone()))?,
            );
            if used.contains(&key) {
                settled.push(p.id);
            } else if p.state == PaymentState::InBatch {
                unsettled.push(p);
            }
        }
        let plain = payments_have_no_deploys(&self.ledger, f.batch_id).await?;
        if succeeded && plain && !settled.is_empty() && unsettled.is_empty() {
            let per_item = mined.gas_used.saturating_sub(tx::TX_BASE_GAS) / settled.len() as u64;
            let mut learned = self.learned_item_gas.lock().await;
            *learned = Some(learned.map_or(per_item, |g| g.max(per_item)));
        }
        let confirmed = self.config.confirmations <= 1;
        self.ledger
            .record_mined(f.tx_id, f.batch_id, &mined, &settled, confirmed)
            .await?;
        self.metrics.batch_gas_used.observe(mined.gas_used as f64);
        if !settled.is_empty() {
            self.metrics
                .payment_gas_used
                .observe(mined.gas_used as f64 / settled.len() as f64);
        }
        if let Ok(price) = mined.effective_gas_price.parse::<f64>() {
            self.metrics.effective_gas_price.set(price);
        }
        tracing::debug!(hash = %f.hash, settled = settled.len(), unsettled = unsettled.len(), gas_used = mined.gas_used, "batch mined");
        for id in &settled {
            self.waiters.notify(*id);
        }
        for p in unsettled {
            self.reconcile(&p).await?;
        }
        Ok(())
    }

    /// A payment its transaction did not settle: if it would still succeed alone it goes back to the
    /// queue (a bounded number of times); otherwise it is diagnosed.
    async fn reconcile(&self, p: &Payment) -> Result<(), LaneError> {
        let calls = self.item_calls(p)?;
        match self.network().rpc.request(tx::simulation(&calls)).await? {
            Ok(_) => {
                let requeues = self
                    .ledger
                    .history(p.id)
                    .await?
                    .iter()
                    .filter(|(s, _)| s == "queued")
                    .count();
                if requeues > MAX_REQUEUES {
                    self.fail(
                        p.id,
                        Reason::TransactionFailed,
                        "settlement transaction did not settle it after several attempts",
                    )
                    .await
                } else {
                    self.ledger
                        .requeue(&[p.id], "its transaction did not settle it")
                        .await?;
                    Ok(())
                }
            }
            Err(e) => self.settle_unsendable(p, &e.reason()).await,
        }
    }

    /// A payment whose transfer fails now: settled by someone else, or failed with a precise reason.
    async fn settle_unsendable(&self, p: &Payment, revert: &str) -> Result<(), LaneError> {
        let Some((token, auth)) = self.stored_authorization(p)? else {
            return self
                .fail(p.id, Reason::UnsupportedAsset, "asset is no longer served")
                .await;
        };
        let invalid = exact::diagnose(self.network(), token, &auth, revert).await?;
        if invalid.reason == Reason::NonceAlreadyUsed
            && let Some((hash, block)) = self.find_settlement_elsewhere(token, &auth).await?
        {
            tracing::info!(payment = p.id, tx = %hash, "authorization was settled by another transaction");
            self.ledger
                .settled_elsewhere(p.id, &hex_lower(hash.as_slice()), block)
                .await?;
            self.waiters.notify(p.id);
            return Ok(());
        }
        self.fail(p.id, invalid.reason, &invalid.message).await
    }

    async fn fail(&self, id: i64, reason: Reason, message: &str) -> Result<(), LaneError> {
        self.ledger.fail(id, reason.code(), message).await?;
        self.waiters.notify(id);
        Ok(())
    }

    fn stored_authorization(
        &self,
        p: &Payment,
    ) -> Result<Option<(&Token, Eip3009Authorization)>, LaneError> {
        let request = parse_facilitator_request(p.request_json.as_bytes()).map_err(|e| {
            LedgerError::Corrupt(format!("stored request of payment {}: {e}", p.id))
        })?;
        let PaymentBody::Eip3009(payload) = request.body else {
            return Err(LedgerError::Corrupt(format!("payment {} is not EIP-3009", p.id)).into());
        };
        Ok(self
            .network()
            .token(parse_addr(&p.asset)?)
            .map(|t| (t, payload.authorization)))
    }

    /// The transaction, ours or anyone's, that used this authorization to pay its payee.
    async fn find_settlement_elsewhere(
        &self,
        token: &Token,
        auth: &Eip3009Authorization,
    ) -> Result<Option<(B256, u64)>, LaneError> {
        let rpc = &self.network().rpc;
        let head = match rpc
            .request(RpcCall {
                method: "eth_blockNumber",
                params: json!([]),
            })
            .await?
        {
            Ok(v) => tx::quantity(&v)? as u64,
            Err(e) => return Err(RpcError::Malformed(e.message).into()),
        };
        let from_block = head.saturating_sub(self.config.log_lookback_blocks);
        let filter = json!([{
            "address": token.address,
            "fromBlock": format!("0x{from_block:x}"),
            "toBlock": "latest",
            "topics": [IEip3009Token::AuthorizationUsed::SIGNATURE_HASH, B256::left_padding_from(auth.from.as_slice()), auth.nonce],
        }]);
        let logs = match rpc
            .request(RpcCall {
                method: "eth_getLogs",
                params: filter,
            })
            .await?
        {
            Ok(Value::Array(logs)) => logs,
            Ok(other) => {
                return Err(RpcError::Malformed(format!("eth_getLogs answered {other}")).into());
            }
            Err(e) => return Err(RpcError::Malformed(e.message).into()),
        };
        for log in logs {
            let Some(hash) = log
                .get("transactionHash")
                .and_then(Value::as_str)
                .and_then(|h| h.parse::<B256>().ok())
            else {
                continue;
            };
            let receipt = match rpc
                .request(RpcCall {
                    method: "eth_getTransactionReceipt",
                    params: json!([hash]),
                })
                .await?
            {
                Ok(r) if !r.is_null() => r,
                _ => continue,
            };
            if transfers(&receipt, token.address).any(|(from, to, value)| {
                from == auth.from && to == auth.to && value == auth.value.0
            }) {
                let block = receipt
                    .get("blockNumber")
                    .map(tx::quantity)
                    .transpose()?
                    .unwrap_or(0) as u64;
                return Ok(Some((hash, block)));
            }
        }
        Ok(None)
    }
}

async fn payments_have_no_deploys(ledger: &Ledger, batch_id: i64) -> Result<bool, LedgerError> {
    Ok(ledger
        .batch_payments(batch_id)
        .await?
        .iter()
        .all(|p| p.deploy_target.is_none()))
}

/// (token, authorizer, nonce) of every `AuthorizationUsed` log in a receipt.
fn authorization_used_logs(receipt: &Value) -> Vec<(Address, Address, B256)> {
    logs(receipt)
        .filter_map(|(address, topics, _)| {
            (topics.len() == 3 && topics[0] == IEip3009Token::AuthorizationUsed::SIGNATURE_HASH)
                .then(|| (address, Address::from_word(topics[1]), topics[2]))
        })
        .collect()
}

/// (from, to, value) of every `Transfer` of `token` in a receipt.
fn transfers(
    receipt: &Value,
    token: Address,
) -> impl Iterator<Item = (Address, Address, U256)> + '_ {
    logs(receipt).filter_map(move |(address, topics, data)| {
        (address == token
            && topics.len() == 3
            && topics[0] == IEip3009Token::Transfer::SIGNATURE_HASH
            && data.len() == 32)
            .then(|| {
                (
                    Address::from_word(topics[1]),
                    Address::from_word(topics[2]),
                    U256::from_be_slice(&data),
                )
            })
    })
}

fn logs(receipt: &Value) -> impl Iterator<Item = (Address, Vec<B256>, Bytes)> + '_ {
    receipt
        .get("logs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|log| {
            let address: Address = log.get("address")?.as_str()?.parse().ok()?;
            let topics = log
                .get("topics")?
                .as_array()?
                .iter()
                .map(|t| t.as_str()?.parse().ok())
                .collect::<Option<Vec<B256>>>()?;
            let data = hex_result(log.get("data")?).ok()?;
            Some((address, topics, data))
        })
}
