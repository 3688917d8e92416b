//! The verify and settle use cases: the one place that decides an answer.

pub mod ops;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, keccak256};

use crate::chain::{Chains, RpcError};
use crate::config::{Config, ConfigError};
use crate::exact::{
    self, ExactPayment, ExactPolicy, Invalid, SettlementCall, SignatureClass, VerifyError,
};
use crate::ledger::{Claim, Ledger, LedgerError, NewPayment, Payment, PaymentState};
use crate::protocol::wire::{SettleResponse, SupportedKind, SupportedResponse, VerifyResponse};
use crate::protocol::{FacilitatorRequest, Reason, X402Version};
use crate::settlement::{Settlement, SettlementConfig};
use crate::telemetry::{Metrics, NetworkMetrics, UNSERVED_NETWORK};

/// A fault of ours or of the chain, not of the client: answered 5xx.
#[derive(Debug, thiserror::Error)]
pub enum FacilitatorError {
    #[error("chain unavailable: {0}")]
    ChainUnavailable(#[from] RpcError),
    #[error("ledger unavailable: {0}")]
    Ledger(#[from] LedgerError),
    #[error("settlement is not configured (no gas wallet)")]
    SettlementUnavailable,
}

impl From<VerifyError> for Result<Invalid, FacilitatorError> {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Invalid(i) => Ok(i),
            VerifyError::Rpc(e) => Err(FacilitatorError::ChainUnavailable(e)),
        }
    }
}

/// Why a facilitator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The facilitator: served chains, scheme policy, the ledger and the settlement engine.
#[derive(Debug)]
pub struct Facilitator {
    chains: Chains,
    policy: ExactPolicy,
    signers: Vec<Address>,
    ledger: Ledger,
    settlement: Option<Settlement>,
    settle_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Per served network, in the order of `chains.networks()`.
    network_metrics: Vec<NetworkMetrics>,
    /// For requests naming a network we do not serve.
    unserved_metrics: NetworkMetrics,
    ops: ops::OpsState,
}

impl Facilitator {
    /// Opens the ledger (running migrations), recovers and starts settlement when a gas wallet is
    /// configured.
    pub async fn start(config: &Config) -> Result<Self, BuildError> {
        Facilitator::start_with(config, Arc::new(Metrics::new())).await
    }

    /// As [`Facilitator::start`], recording into the app's `metrics`.
    pub async fn start_with(config: &Config, metrics: Arc<Metrics>) -> Result<Self, BuildError> {
        let signers = config.gas_wallet_signers()?;
        let chains = Chains::from_config_with(config, Some(&metrics))?;
        let network_metrics = chains
            .networks()
            .iter()
            .map(|n| {
                let name = n.chain_id.caip2();
                metrics.init_network(&name);
                metrics.network(&name)
            })
            .collect();
        let unserved_metrics = metrics.network(UNSERVED_NETWORK);
        let ledger = Ledger::connect(&config.ledger.url.0).await?;
        let s = &config.settlement;
        let engine_config = SettlementConfig {
            confirmations: s.confirmations,
            batch_window: Duration::from_millis(s.batch_window_ms),
            batch_max_items: s.batch_max_items,
            receipt_poll: Duration::from_millis(s.receipt_poll_ms),
            rebroadcast_after: Duration::from_secs(s.rebroadcast_after_seconds),
            log_lookback_blocks: s.log_lookback_blocks,
            ..SettlementConfig::default()
        };
        let settlement = match signers.first() {
            Some(signer) => Some(
                Settlement::start(
                    ledger.clone(),
                    chains.clone(),
                    signer.clone(),
                    engine_config,
                    metrics.clone(),
                )
                .await?,
            ),
            None => None,
        };
        Ok(Facilitator {
            chains,
            policy: ExactPolicy {
                valid_before_buffer_seconds: config.exact.valid_before_buffer_seconds,
                eip6492_factories: config.exact.eip6492_factories.clone(),
            },
            signers: signers.iter().map(|s| s.address()).collect(),
            ledger,
            settlement,
            settle_timeout: Duration::from_secs(s.settle_timeout_seconds),
            metrics,
            network_metrics,
            unserved_metrics,
            ops: ops::OpsState::default(),
        })
    }

    /// The app's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The series of the network a request names (a bounded label set whatever the client sent).
    fn metrics_for(&self, request: &FacilitatorRequest) -> &NetworkMetrics {
        self.chains
            .resolve(request.version, &request.requirements.network)
            .and_then(|n| {
                let i = self
                    .chains
                    .networks()
                    .iter()
                    .position(|m| m.chain_id == n.chain_id)?;
                self.network_metrics.get(i)
            })
            .unwrap_or(&self.unserved_metrics)
    }

    fn count_ledger_error(&self, e: &FacilitatorError) {
        if let FacilitatorError::Ledger(_) = e {
            self.metrics.ledger_errors.inc();
        }
    }

    pub fn chains(&self) -> &Chains {
        &self.chains
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Verifies a payment. An invalid payment is an `Ok` answer with `isValid: false`.
    pub async fn verify(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<VerifyResponse, FacilitatorError> {
        let started = Instant::now();
        let payer = exact::payer_of(request);
        let invalid = match self.check(request).await {
            Ok(()) => None,
            Err(e) => match Result::<Invalid, FacilitatorError>::from(e) {
                Ok(i) => Some(i),
                Err(e) => {
                    self.metrics_for(request)
                        .verified(error_outcome(&e), started.elapsed());
                    return Err(e);
                }
            },
        };
        let outcome = invalid.as_ref().map_or("valid", |i| i.reason.code());
        self.metrics_for(request)
            .verified(outcome, started.elapsed());
        Ok(verify_response(request.version, payer, invalid))
    }

    async fn check(&self, request: &FacilitatorRequest) -> Result<(), VerifyError> {
        let payment = exact::check_static(&self.chains, request, &self.policy, unix_now())?;
        // Ours, before any RPC: an authorization we already hold is used, whatever the chain says.
        match self
            .ledger
            .holds(
                payment.network.chain_id.0,
                &key_asset(&payment),
                &key_payer(&payment),
                &key_nonce(&payment),
            )
            .await
        {
            Ok(Some(state)) => {
                return Err(Invalid::new(
                    Reason::NonceAlreadyUsed,
                    format!(
                        "this authorization is already {} by this facilitator",
                        describe(state)
                    ),
                )
                .into());
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics.ledger_errors.inc();
                tracing::warn!(error = %e, "ledger read failed during verify; relying on the chain")
            }
        }
        exact::verify_on_chain(payment, &self.policy)
            .await
            .map(|_| ())
    }

    /// Settles a payment: claims its key, queues it for the next batch, and waits for the outcome.
    /// The same payload again joins the first one's outcome; nothing is broadcast twice.
    pub async fn settle(
        &self,
        request: &FacilitatorRequest,
        raw_request: &[u8],
    ) -> Result<SettleResponse, FacilitatorError> {
        let started = Instant::now();
        let (answer, outcome) = match self.settle_inner(request, raw_request).await {
            Ok((answer, outcome)) => (Ok(answer), outcome),
            Err(e) => {
                self.count_ledger_error(&e);
                let outcome = error_outcome(&e);
                (Err(e), outcome)
            }
        };
        self.metrics_for(request)
            .settled(outcome, started.elapsed());
        answer
    }

    async fn settle_inner(
        &self,
        request: &FacilitatorRequest,
        raw_request: &[u8],
    ) -> Result<(SettleResponse, &'static str), FacilitatorError> {
        let payer = exact::payer_of(request);
        let payment = match exact::check_static(&self.chains, request, &self.policy, unix_now()) {
            Ok(p) => p,
            Err(i) => {
                let code = i.reason.code();
                let answer =
                    settle_failure(request.version, payer, &request.requirements.network, i, "");
                return Ok((answer, code));
            }
        };
        let network = payment.network.wire_name(request.version);
        let settlement = self
            .settlement
            .as_ref()
            .ok_or(FacilitatorError::SettlementUnavailable)?;
        let digest = payload_digest(&payment);
        let chain_id = payment.network.chain_id.0;
        if let Some(existing) = self
            .ledger
            .find(
                chain_id,
                &key_asset(&payment),
                &key_payer(&payment),
                &key_nonce(&payment),
            )
            .await?
        {
            return self
                .join(settlement, request, &payment, existing, &digest)
                .await;
        }
        let call = match self.settlement_call(payment).await {
            Ok(c) => c,
            Err(e) => {
                let invalid = Result::<Invalid, FacilitatorError>::from(e)?;
                let code = invalid.reason.code();
                let answer = settle_failure(request.version, payer, &network, invalid, "");
                return Ok((answer, code));
            }
        };
        let new = NewPayment {
            chain_id,
            asset: key_asset(&payment),
            payer: key_payer(&payment),
            nonce: key_nonce(&payment),
            pay_to: hex(payment.authorization().to.as_slice()),
            amount: payment.authorization().value.to_string(),
            valid_before: u64::try_from(payment.authorization().valid_before).unwrap_or(u64::MAX),
            payload_digest: digest.clone(),
            x402_version: request.version.number(),
            network: network.clone(),
            request_json: String::from_utf8_lossy(raw_request).into_owned(),
            deploy_target: call.deploy.as_ref().map(|(a, _)| hex(a.as_slice())),
            deploy_calldata: call.deploy.as_ref().map(|(_, d)| hex(d)),
            transfer_calldata: hex(&call.transfer),
        };
        match self.ledger.claim(&new).await? {
            Claim::New(id) => {
                settlement.wake(chain_id);
                let outcome = settlement.wait(id, self.deadline(request)).await?;
                Ok((
                    settle_answer(request.version, &network, &outcome),
                    outcome_of(&outcome),
                ))
            }
            Claim::Existing(existing) => {
                self.join(settlement, request, &payment, *existing, &digest)
                    .await
            }
        }
    }

    /// A second arrival of an authorization we hold: the same payload shares the first one's
    /// outcome; a different payload for the same key is a used nonce.
    async fn join(
        &self,
        settlement: &Settlement,
        request: &FacilitatorRequest,
        payment: &ExactPayment<'_>,
        existing: Payment,
        digest: &str,
    ) -> Result<(SettleResponse, &'static str), FacilitatorError> {
        let network = payment.network.wire_name(request.version);
        if existing.payload_digest != digest {
            let invalid = Invalid::new(
                Reason::NonceAlreadyUsed,
                "another payload with this authorization nonce was already submitted",
            );
            let answer = settle_failure(
                request.version,
                Some(payment.authorization().from),
                &network,
                invalid,
                "",
            );
            return Ok((answer, Reason::NonceAlreadyUsed.code()));
        }
        self.metrics_for(request).duplicates_joined.inc();
        let outcome = settlement.wait(existing.id, self.deadline(request)).await?;
        Ok((
            settle_answer(request.version, &network, &outcome),
            outcome_of(&outcome),
        ))
    }

    /// How to settle: for a plain key that recovers locally, no RPC is needed now (the batcher
    /// simulates every item before sending); anything else is verified in full first.
    async fn settlement_call(
        &self,
        payment: ExactPayment<'_>,
    ) -> Result<SettlementCall, VerifyError> {
        let auth = payment.authorization();
        if let Ok(SignatureClass::Ecdsa(sig)) = exact::classify(&payment.payload.signature) {
            let digest = exact::authorization_digest(payment.token.domain_separator, auth);
            if exact::signature::recover(&sig, digest) == Some(auth.from) {
                return Ok(SettlementCall {
                    deploy: None,
                    transfer: exact::transfer_vrs(auth, &sig),
                });
            }
        }
        exact::verify_on_chain(payment, &self.policy).await
    }

    /// `/settle` waits at most the configured time, and less than the requirement's timeout.
    fn deadline(&self, request: &FacilitatorRequest) -> Duration {
        let cap = Duration::from_secs(
            request
                .requirements
                .max_timeout_seconds
                .saturating_sub(1)
                .max(1),
        );
        self.settle_timeout.min(cap)
    }

    /// `GET /supported`: a v2 kind per served network, and a v1 kind where the network has a v1 name.
    pub fn supported(&self) -> SupportedResponse {
        let mut kinds = Vec::new();
        for network in self.chains.networks() {
            for version in [X402Version::V1, X402Version::V2] {
                if version == X402Version::V1 && network.v1_name.is_none() {
                    continue;
                }
                kinds.push(SupportedKind {
                    x402_version: version,
                    scheme: "exact".to_owned(),
                    network: network.wire_name(version),
                    extra: None,
                });
            }
        }
        let signers = self.signers.iter().map(|a| a.to_checksum(None)).collect();
        SupportedResponse {
            kinds,
            extensions: Vec::new(),
            signers: BTreeMap::from([("eip155:*".to_owned(), signers)]),
        }
    }
}

/// The outcome label of a 5xx answer.
fn error_outcome(e: &FacilitatorError) -> &'static str {
    match e {
        FacilitatorError::ChainUnavailable(_) => "chain_unavailable",
        FacilitatorError::Ledger(_) => "ledger_unavailable",
        FacilitatorError::SettlementUnavailable => "settlement_unavailable",
    }
}

fn describe(state: PaymentState) -> &'static str {
    match state {
        PaymentState::Confirmed | PaymentState::Included => "settled",
        _ => "being settled",
    }
}

fn hex(b: &[u8]) -> String {
    format!("0x{}", alloy::hex::encode(b))
}

fn key_asset(p: &ExactPayment<'_>) -> String {
    hex(p.token.address.as_slice())
}

fn key_payer(p: &ExactPayment<'_>) -> String {
    hex(p.authorization().from.as_slice())
}

fn key_nonce(p: &ExactPayment<'_>) -> String {
    hex(p.authorization().nonce.as_slice())
}

/// Identifies the exact signed payload (authorization and signature).
fn payload_digest(p: &ExactPayment<'_>) -> String {
    let canonical = serde_json::to_vec(p.payload).unwrap_or_default();
    hex(keccak256(canonical).as_slice())
}

fn verify_response(
    version: X402Version,
    payer: Option<Address>,
    invalid: Option<Invalid>,
) -> VerifyResponse {
    let payer = payer.map(|p| p.to_checksum(None));
    match invalid {
        None => VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer,
        },
        Some(i) => VerifyResponse {
            is_valid: false,
            invalid_reason: Some(i.reason.wire_name(version).to_owned()),
            invalid_message: Some(i.message),
            payer,
        },
    }
}

fn settle_failure(
    version: X402Version,
    payer: Option<Address>,
    network: &str,
    i: Invalid,
    transaction: &str,
) -> SettleResponse {
    SettleResponse {
        success: false,
        error_reason: Some(i.reason.wire_name(version).to_owned()),
        error_message: Some(i.message),
        payer: payer.map(|p| p.to_checksum(None)),
        transaction: transaction.to_owned(),
        network: network.to_owned(),
    }
}

/// The outcome label of a payment's latest state, as [`settle_answer`] reports it.
fn outcome_of(p: &Payment) -> &'static str {
    match p.state {
        PaymentState::Confirmed => "success",
        PaymentState::Failed => p
            .fail_reason
            .as_deref()
            .and_then(Reason::from_code)
            .unwrap_or(Reason::TransactionFailed)
            .code(),
        _ => Reason::SettlementPending.code(),
    }
}

/// The answer for a payment's latest state: confirmed, failed, or still pending at the deadline.
fn settle_answer(version: X402Version, network: &str, p: &Payment) -> SettleResponse {
    let payer = p.payer.parse::<Address>().ok();
    let transaction = p.tx_hash.clone().unwrap_or_default();
    match p.state {
        PaymentState::Confirmed => SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: payer.map(|a| a.to_checksum(None)),
            transaction,
            network: network.to_owned(),
        },
        PaymentState::Failed => {
            let reason = p
                .fail_reason
                .as_deref()
                .and_then(Reason::from_code)
                .unwrap_or(Reason::TransactionFailed);
            let message = p.fail_message.clone().unwrap_or_default();
            settle_failure(
                version,
                payer,
                network,
                Invalid::new(reason, message),
                &transaction,
            )
        }
        _ => settle_failure(
            version,
            payer,
            network,
            Invalid::new(
                Reason::SettlementPending,
                "broadcast; the receipt has not arrived yet: retry with the same payload",
            ),
            &transaction,
        ),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
