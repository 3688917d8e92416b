//! Refunds that are paid: the amount of a settled payment whose work was not delivered goes
//! back to the payer from the refund wallet (`dial.refund_private_key`), exactly once.
//!
//! Exactly once rests on the stored transaction: a refund's transaction is signed and stored
//! before it is broadcast (`owed → signed`), and from then on only that transaction is sent
//! again, after a crash or a dropped pool, until it is mined (`confirmed`). A new one is signed
//! only when the stored one can never land: reverted, or its nonce taken by another transaction
//! for longer than [`DISPLACED_GRACE_MS`] with no receipt of ours.

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use serde_json::{Value, json};

use super::Dial;
use super::store::{Refund, RefundStatus};
use crate::chain::bindings::IEip3009Token;
use crate::chain::tx::{Fees, quantity, sign, with_margin};
use crate::chain::{Network, RpcCall};
use crate::protocol::X402Version;

/// A node may count a mined transaction in the nonce before it serves the receipt: a refund is
/// called displaced only after this long without one.
const DISPLACED_GRACE_MS: i64 = 20_000;
/// Gas for a token transfer when the node will not estimate it.
const FALLBACK_GAS: u64 = 100_000;

/// What the payer and operator see of a refund.
pub fn refund_json(r: &Refund) -> Value {
    json!({"status": r.status.as_str(), "amount": r.amount, "network": r.network,
           "transaction": r.tx_hash.as_ref().filter(|_| r.status != RefundStatus::Owed),
           "reason": r.reason, "lastError": r.last_error})
}

#[derive(Debug, thiserror::Error)]
enum RefundError {
    #[error("network {0} is not served")]
    Network(String),
    #[error("unreadable refund row: {0}")]
    Row(String),
    #[error("chain: {0}")]
    Rpc(#[from] crate::chain::RpcError),
    #[error("the node refused: {0}")]
    Refused(String),
    #[error("store: {0}")]
    Store(#[from] super::store::StoreError),
    #[error("signing: {0}")]
    Sign(#[from] alloy::signers::Error),
}

impl Dial {
    /// What the operator page shows of Dial: the latest refunds and how many are in each
    /// status (owed ones stay listed until paid).
    pub async fn operator_status(&self) -> Value {
        let refunds = match self.store.refunds(50).await {
            Ok(r) => r,
            Err(e) => return json!({"error": e.to_string()}),
        };
        let counts = self.store.refund_counts().await.unwrap_or_default();
        json!({
            "refundWallet": self.refund_wallet.as_ref().map(|w| w.address().to_checksum(None)),
            "refundCounts": counts.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "refunds": refunds.iter().map(|r| {
                let mut v = refund_json(r);
                v["id"] = json!(r.id);
                v["receiptId"] = json!(r.receipt_id);
                v["payer"] = json!(r.payer);
                v["createdAt"] = json!(r.created_at);
                v
            }).collect::<Vec<_>>(),
        })
    }

    fn refund_network(&self, name: &str) -> Option<&Network> {
        self.chains
            .resolve(X402Version::V2, name)
            .or_else(|| self.chains.resolve(X402Version::V1, name))
    }

    /// Moves every open refund one step; without a refund wallet they stay owed and listed.
    pub(crate) async fn pay_refunds(&self, now: i64) {
        let Some(wallet) = self.refund_wallet.as_ref() else {
            return;
        };
        let open = match self.store.open_refunds(50).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "refunds unreadable");
                return;
            }
        };
        // Signed ones first: their nonces come before any new one.
        let (signed, owed): (Vec<_>, Vec<_>) = open
            .into_iter()
            .partition(|r| r.status == RefundStatus::Signed);
        for r in signed.iter().chain(&owed) {
            let step = match r.status {
                RefundStatus::Signed => self.follow_refund(wallet, r, now).await,
                _ => self.sign_refund(wallet, r).await,
            };
            if let Err(e) = step {
                tracing::warn!(refund = r.id, receipt = r.receipt_id, error = %e, "refund not paid yet");
                let _ = self
                    .store
                    .refund_note(r.id, Some(&e.to_string()), r.displaced_since)
                    .await;
            }
        }
    }

    /// Signs and stores an owed refund's transfer, then broadcasts it.
    async fn sign_refund(&self, wallet: &PrivateKeySigner, r: &Refund) -> Result<(), RefundError> {
        let network = self
            .refund_network(&r.network)
            .ok_or_else(|| RefundError::Network(r.network.clone()))?;
        let payer: Address = r
            .payer
            .parse()
            .map_err(|_| RefundError::Row(r.payer.clone()))?;
        let asset: Address = r
            .asset
            .parse()
            .map_err(|_| RefundError::Row(r.asset.clone()))?;
        let amount: U256 = r
            .amount
            .parse()
            .map_err(|_| RefundError::Row(r.amount.clone()))?;
        let input = IEip3009Token::transferCall {
            to: payer,
            value: amount,
        }
        .abi_encode();
        let from = wallet.address();
        let calls = [
            RpcCall {
                method: "eth_getTransactionCount",
                params: json!([from, "pending"]),
            },
            RpcCall {
                method: "eth_estimateGas",
                params: json!([{"from": from, "to": asset, "data": alloy::hex::encode_prefixed(&input)}]),
            },
            RpcCall {
                method: "eth_getBlockByNumber",
                params: json!(["latest", false]),
            },
            RpcCall {
                method: "eth_maxPriorityFeePerGas",
                params: json!([]),
            },
        ];
        let answers = network.rpc.batch(&calls).await?;
        let answer = |i: usize| answers.get(i).cloned().unwrap_or(Ok(Value::Null));
        let nonce = answer(0).map_err(|e| RefundError::Refused(e.message))?;
        let nonce = u64::try_from(quantity(&nonce)?).unwrap_or(u64::MAX);
        // A transfer the node expects to revert (the wallet lacks the amount) costs gas for
        // nothing: it is not sent, and the refund stays owed with the reason.
        let gas = match answer(1) {
            Ok(v) => with_margin(u64::try_from(quantity(&v)?).unwrap_or(FALLBACK_GAS)),
            Err(e) if e.is_revert() => {
                return Err(RefundError::Refused(format!(
                    "the refund wallet cannot pay it: {}",
                    e.reason()
                )));
            }
            Err(_) => FALLBACK_GAS,
        };
        let base_fee = answer(2)
            .ok()
            .and_then(|b| b.get("baseFeePerGas").cloned())
            .map(|b| quantity(&b))
            .transpose()?
            .unwrap_or(1_000_000_000);
        let tip = answer(3)
            .ok()
            .map(|t| quantity(&t))
            .transpose()?
            .unwrap_or(1_000_000);
        let fees = Fees {
            max_fee_per_gas: base_fee.saturating_mul(2).saturating_add(tip),
            max_priority_fee_per_gas: tip,
        };
        let tx = sign(
            wallet,
            network.chain_id.0,
            nonce,
            gas,
            fees,
            asset,
            input.into(),
        )?;
        let raw = alloy::hex::encode_prefixed(&tx.raw);
        if !self
            .store
            .refund_signed(r.id, &raw, &tx.hash.to_string(), nonce)
            .await?
        {
            return Ok(());
        }
        tracing::info!(refund = r.id, receipt = r.receipt_id, tx = %tx.hash, nonce, "refund signed");
        self.broadcast_refund(network, &raw).await
    }

    async fn broadcast_refund(&self, network: &Network, raw: &str) -> Result<(), RefundError> {
        let call = RpcCall {
            method: "eth_sendRawTransaction",
            params: json!([raw]),
        };
        match network.rpc.request(call).await? {
            Ok(_) => Ok(()),
            // Sent before (a restart, another node), or its nonce is used (mined, or taken:
            // the next pass reads the receipt and decides): the stored transaction is what counts.
            Err(e)
                if [
                    "already known",
                    "already imported",
                    "known transaction",
                    "nonce too low",
                ]
                .iter()
                .any(|m| e.message.to_ascii_lowercase().contains(m)) =>
            {
                Ok(())
            }
            Err(e) => Err(RefundError::Refused(e.message)),
        }
    }

    /// A signed refund: confirmed once mined; sent again while it may still land; owed again
    /// when it never can.
    async fn follow_refund(
        &self,
        wallet: &PrivateKeySigner,
        r: &Refund,
        now: i64,
    ) -> Result<(), RefundError> {
        let network = self
            .refund_network(&r.network)
            .ok_or_else(|| RefundError::Network(r.network.clone()))?;
        let (Some(hash), Some(raw), Some(nonce)) = (&r.tx_hash, &r.raw_tx, r.tx_nonce) else {
            return Err(RefundError::Row(
                "a signed refund without its transaction".into(),
            ));
        };
        let hash_b256: B256 = hash.parse().map_err(|_| RefundError::Row(hash.clone()))?;
        let calls = [
            RpcCall {
                method: "eth_getTransactionReceipt",
                params: json!([hash_b256]),
            },
            RpcCall {
                method: "eth_getTransactionCount",
                params: json!([wallet.address(), "latest"]),
            },
        ];
        let answers = network.rpc.batch(&calls).await?;
        let receipt = answers.first().cloned().unwrap_or(Ok(Value::Null));
        if let Ok(receipt) = receipt.as_ref()
            && let Some(status) = receipt.get("status")
        {
            if quantity(status)? == 1 {
                if self
                    .store
                    .refund_outcome(r.id, hash, RefundStatus::Confirmed, None)
                    .await?
                {
                    self.counters.refunds_paid.inc();
                    tracing::info!(refund = r.id, receipt = r.receipt_id, tx = %hash, "refund paid");
                }
            } else {
                self.store
                    .refund_outcome(
                        r.id,
                        hash,
                        RefundStatus::Owed,
                        Some("the refund transfer reverted"),
                    )
                    .await?;
            }
            return Ok(());
        }
        let mined = answers
            .get(1)
            .cloned()
            .unwrap_or(Ok(Value::Null))
            .map_err(|e| RefundError::Refused(e.message))?;
        let mined = quantity(&mined)?;
        if mined > u128::try_from(nonce).unwrap_or(0) {
            // The nonce is used and ours has no receipt: another transaction took it, or the
            // node has not served our receipt yet. Only a lasting absence frees the refund.
            let since = r.displaced_since.unwrap_or(now);
            if now - since >= DISPLACED_GRACE_MS {
                self.store
                    .refund_outcome(
                        r.id,
                        hash,
                        RefundStatus::Owed,
                        Some("its nonce was used by another transaction; signed again"),
                    )
                    .await?;
            } else if r.displaced_since.is_none() {
                self.store.refund_note(r.id, None, Some(since)).await?;
            }
            return Ok(());
        }
        // Not mined, still possible: send the very same transaction again (a dropped pool,
        // a restart); a node that has it says so.
        self.broadcast_refund(network, raw).await
    }
}
