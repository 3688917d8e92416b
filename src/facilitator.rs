//! The verify and settle use cases: the one place that decides an answer.

pub mod access;
pub mod ops;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};

use crate::chain::{Chains, RpcError};
use crate::config::{Config, ConfigError};
use crate::exact::{
    self, Checked, ExactPolicy, Invalid, Phase, SettlementCall, SignatureClass, VerifyError,
};
use crate::ledger::{
    ApiKeyRecord, BoundIdentifier, Claim, Deploy, Ledger, LedgerError, Method, NewPayment, Payment,
    PaymentState, Sighting,
};
use crate::protocol::discovery::{Declaration, DiscoveryItem, DiscoveryPage, Pagination};
use crate::protocol::wire::{SettleResponse, SupportedKind, SupportedResponse, VerifyResponse};
use crate::protocol::{FacilitatorRequest, PaymentIdentifier, Reason, X402Version};
use crate::settlement::fees::FeePolicy;
use crate::settlement::{ChainPolicy, ChainView, Settlement, SettlementConfig};
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
    /// Every gas wallet of the chain lacks ETH. The payment is queued and settles once one is
    /// funded; the same payload sent again then answers its outcome.
    #[error(
        "every gas wallet on {network} is out of ETH: the payment is queued and settles once a wallet is funded; retry with the same payload"
    )]
    GasWalletsDry { network: String },
    /// The caller's API key is missing, wrong, or does not allow this payment.
    #[error(transparent)]
    Access(#[from] access::AccessError),
    /// The client's payment-identifier was first used with another payload (answered 409).
    #[error(
        "payment-identifier {id:?} was already used with a different payload for this payTo and network"
    )]
    PaymentIdentifierConflict { id: String },
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
    #[error(
        "no API key exists and server.public is not set: create a key with `x402d keys create`, \
         or set server.public = true to serve anyone"
    )]
    NotPublicWithoutKeys,
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
    access: access::Access,
    /// Held by a key's settlement from its budget check to its claim, so two at once cannot both
    /// fit under the same remaining budget (one node; cluster mode needs the database to decide).
    budget_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Hourly pruning of old rows (`ledger.retention_days`).
    _retention: Option<crate::ledger::RetentionTask>,
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
        if !config.server.public && !ledger.has_active_api_key().await? {
            return Err(BuildError::NotPublicWithoutKeys);
        }
        let s = &config.settlement;
        let engine_config = SettlementConfig {
            confirmations: s.confirmations,
            batch_window: Duration::from_millis(s.batch_window_ms),
            batch_max_items: s.batch_max_items,
            batch_max_gas: s.batch_max_gas,
            receipt_poll: Duration::from_millis(s.receipt_poll_ms),
            rebroadcast_after: Duration::from_secs(s.rebroadcast_after_seconds),
            replace_after: Duration::from_secs(s.replace_after_seconds),
            log_lookback_blocks: s.log_lookback_blocks,
            finality_blocks: s.finality_blocks,
            max_in_flight: s.max_in_flight_per_wallet,
            valid_before_buffer_seconds: config.exact.valid_before_buffer_seconds,
            node: config.server.node_name(),
            lane_lease: Duration::from_secs(s.lane_lease_seconds),
            spread_lanes: s.spread_lanes,
        };
        let policies = config
            .networks
            .iter()
            .map(|n| ChainPolicy {
                fees: FeePolicy {
                    base_fee_multiplier: n.fees.base_fee_multiplier,
                    tip_percentile: n.fees.tip_percentile,
                    min_tip: u128::from(n.fees.min_tip_wei),
                    max_fee_per_gas: n.fees.max_fee_per_gas_wei.map(u128::from),
                },
                daily_budget_wei: n.daily_gas_budget_wei.map(alloy::primitives::U256::from),
            })
            .collect();
        let settlement = if signers.is_empty() {
            None
        } else {
            Some(
                Settlement::start(
                    ledger.clone(),
                    chains.clone(),
                    signers.clone(),
                    engine_config,
                    policies,
                    metrics.clone(),
                )
                .await?,
            )
        };
        let retention = config
            .ledger
            .retention_days
            .map(|days| ledger.keep_for(Duration::from_secs(u64::from(days) * 86_400)));
        Ok(Facilitator {
            chains,
            policy: ExactPolicy {
                valid_before_buffer_seconds: config.exact.valid_before_buffer_seconds,
                eip6492_factories: config.exact.eip6492_factories.clone(),
                max_valid_before_seconds: config.exact.max_valid_before_seconds,
                pay_to_allowlist: config.exact.pay_to_allowlist.clone(),
            },
            signers: signers.iter().map(|s| s.address()).collect(),
            ledger,
            settlement,
            settle_timeout: Duration::from_secs(s.settle_timeout_seconds),
            metrics,
            network_metrics,
            unserved_metrics,
            ops: ops::OpsState::default(),
            access: access::Access::new(
                config.server.public,
                crate::limits::Limits::new(
                    config.server.redis_url.as_deref(),
                    &config.server.redis_namespace,
                ),
            ),
            budget_locks: std::sync::Mutex::new(HashMap::new()),
            _retention: retention,
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

    /// The settlement engine's lanes per chain and why a queue waits, if one does.
    pub fn settlement_views(&self) -> Vec<ChainView> {
        self.settlement
            .as_ref()
            .map(Settlement::views)
            .unwrap_or_default()
    }

    /// Verifies a payment. An invalid payment is an `Ok` answer with `isValid: false`. With a
    /// payment-identifier, the same id and payload answer the recorded valid answer (a settled
    /// payment stays "valid" for the client retrying its verify); another payload is a conflict.
    /// Only valid answers are kept: a payer who tops up after a refusal is judged afresh.
    pub async fn verify(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<VerifyResponse, FacilitatorError> {
        let Some(pid) = &request.payment_identifier else {
            return self.verify_now(request).await;
        };
        let scope = identifier_scope(request);
        let bound = self
            .bind_identifier(&scope, pid)
            .await
            .inspect_err(|e| self.count_ledger_error(e))?;
        if let Some(kept) = kept_answer(&bound) {
            return Ok(kept);
        }
        let answer = self.verify_now(request).await?;
        if !answer.is_valid {
            return Ok(answer);
        }
        let Ok(json) = serde_json::to_string(&answer) else {
            return Ok(answer);
        };
        let bound = self
            .ledger
            .keep_verify_answer(&scope, &pid.id, pid.payload_digest, &json)
            .await
            .map_err(FacilitatorError::from)
            .inspect_err(|e| self.count_ledger_error(e))?;
        Ok(kept_answer(&bound).unwrap_or(answer))
    }

    /// Binds the request's payment-identifier to its payload, or reports the conflict.
    async fn bind_identifier(
        &self,
        scope: &str,
        pid: &PaymentIdentifier,
    ) -> Result<BoundIdentifier, FacilitatorError> {
        let bound = self
            .ledger
            .bind_identifier(scope, &pid.id, pid.payload_digest)
            .await?;
        if bound.payload_digest != pid.payload_digest {
            return Err(FacilitatorError::PaymentIdentifierConflict { id: pid.id.clone() });
        }
        Ok(bound)
    }

    async fn verify_now(
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
        let payment = exact::check(&self.chains, request, &self.rules(Phase::Verify))?;
        // Ours, before any RPC: an authorization we already hold is used, whatever the chain says.
        match self
            .ledger
            .holds(
                payment.network().chain_id.0,
                payment.token().address,
                payment.payer(),
                payment.nonce_key(),
            )
            .await
        {
            Ok(Some(state)) => {
                return Err(Invalid::new(
                    used_reason(&payment),
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
        payment.verify_on_chain(&self.policy).await.map(|_| ())
    }

    /// Who is calling: the API key in an `Authorization` header value (checked against its rate
    /// and the request's `payTo`), or no key for an anonymous caller of a public node.
    pub async fn authorize(
        &self,
        authorization: Option<&[u8]>,
        request: &FacilitatorRequest,
    ) -> Result<access::Caller, FacilitatorError> {
        let key = self
            .access
            .caller(&self.ledger, authorization)
            .await
            .inspect_err(|e| {
                if let access::AccessError::Ledger(_) = e {
                    self.metrics.ledger_errors.inc();
                }
            })?;
        let mut rate = None;
        if let Some(k) = &key {
            rate = self.access.check_rate(k).await?;
            access::check_pay_to(k, request.requirements.pay_to)?;
        }
        Ok(access::Caller { key, rate })
    }

    /// Settles a payment for this process's own merchant (no API key).
    pub async fn settle(
        &self,
        request: &FacilitatorRequest,
        raw_request: &[u8],
    ) -> Result<SettleResponse, FacilitatorError> {
        self.settle_as(request, raw_request, None).await
    }

    /// Settles a payment: claims its key, queues it for the next batch, and waits for the outcome.
    /// The same payload again joins the first one's outcome; nothing is broadcast twice. A new
    /// payment by an API key must fit in the key's daily budget.
    pub async fn settle_as(
        &self,
        request: &FacilitatorRequest,
        raw_request: &[u8],
        key: Option<&ApiKeyRecord>,
    ) -> Result<SettleResponse, FacilitatorError> {
        let started = Instant::now();
        if let Some(pid) = &request.payment_identifier {
            // The same id and payload go on to the recorded outcome (settling is idempotent per
            // authorization); another payload under the id is refused before anything happens.
            self.bind_identifier(&identifier_scope(request), pid)
                .await
                .inspect_err(|e| self.count_ledger_error(e))?;
        }
        let (answer, outcome) = match self.settle_inner(request, raw_request, key).await {
            Ok((answer, outcome)) => (Ok(answer), outcome),
            Err(e) => {
                self.count_ledger_error(&e);
                let outcome = error_outcome(&e);
                (Err(e), outcome)
            }
        };
        self.metrics_for(request)
            .settled(outcome, started.elapsed());
        if let (Ok(a), Some(Ok(d))) = (&answer, &request.discovery)
            && a.success
        {
            self.catalogue(d).await;
        }
        answer
    }

    /// Catalogues what a settled payment declared. Only settled ones: an entry costs its declarer
    /// a real payment, so the catalogue cannot be flooded for free. A failure is logged, never
    /// the payer's problem.
    async fn catalogue(&self, d: &Declaration) {
        let sighting = Sighting {
            key: &d.key,
            kind: &d.kind,
            resource: &d.resource,
            accepts: &d.accepts,
            metadata: &d.metadata,
        };
        let expired = crate::clock::now_ms() - CATALOGUE_TTL_MS;
        if let Err(e) = self.ledger.catalogue(sighting, expired).await {
            self.metrics.ledger_errors.inc();
            tracing::warn!(error = %e, resource = %d.resource, "could not catalogue a bazaar declaration");
        }
    }

    /// `GET /discovery/resources`: `local` (this process's own merchant's routes) first, then what
    /// settled payments declared in the last week, newest first.
    pub async fn discovery_page(
        &self,
        kind: Option<&str>,
        limit: usize,
        offset: usize,
        local: &[DiscoveryItem],
    ) -> Result<DiscoveryPage, FacilitatorError> {
        let local: Vec<&DiscoveryItem> = local
            .iter()
            .filter(|i| kind.is_none_or(|k| i.kind == k))
            .collect();
        let from_local: Vec<DiscoveryItem> = local
            .iter()
            .skip(offset)
            .take(limit)
            .map(|i| (*i).clone())
            .collect();
        let stored_offset = offset.saturating_sub(local.len());
        let stored_limit = limit - from_local.len();
        let since = crate::clock::now_ms() - CATALOGUE_TTL_MS;
        let (entries, stored_total) = self
            .ledger
            .catalogue_page(kind, since, stored_limit.max(1), stored_offset)
            .await?;
        let mut items = from_local;
        items.extend(
            entries
                .into_iter()
                .take(stored_limit)
                .map(|e| DiscoveryItem {
                    resource: e.resource,
                    kind: e.kind,
                    x402_version: X402Version::V2,
                    accepts: e.accepts,
                    last_updated: crate::clock::rfc3339(e.last_seen_ms / 1000),
                    metadata: e.metadata,
                }),
        );
        Ok(DiscoveryPage {
            x402_version: X402Version::V2,
            items,
            pagination: Pagination {
                limit,
                offset,
                total: local.len() + stored_total,
            },
        })
    }

    async fn settle_inner(
        &self,
        request: &FacilitatorRequest,
        raw_request: &[u8],
        key: Option<&ApiKeyRecord>,
    ) -> Result<(SettleResponse, &'static str), FacilitatorError> {
        let payer = exact::payer_of(request);
        let checked = exact::check(&self.chains, request, &self.rules(Phase::Settle));
        let payment = match checked {
            Ok(p) => p,
            Err(i) => {
                let code = i.reason.code();
                let answer =
                    settle_failure(request.version, payer, &request.requirements.network, i, "");
                return Ok((answer, code));
            }
        };
        let network = payment.network().wire_name(request.version);
        let settlement = self
            .settlement
            .as_ref()
            .ok_or(FacilitatorError::SettlementUnavailable)?;
        let digest = payment.payload_digest();
        let chain_id = payment.network().chain_id.0;
        let (asset, from, nonce) = (
            payment.token().address,
            payment.payer(),
            payment.nonce_key(),
        );
        let existing = self.ledger.find(chain_id, asset, from, nonce).await?;
        if let Some(existing) = &existing
            && existing.state.holds_key()
        {
            return self
                .join(settlement, request, &payment, existing.clone(), digest)
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
        let (method, sender) = match &payment {
            Checked::Eip3009(_) => (Method::Eip3009, None),
            Checked::Permit2(p) => match p.scheme {
                exact::permit2::Scheme::Exact => (Method::Permit2, None),
                exact::permit2::Scheme::Upto => (Method::Upto, p.sender()),
            },
        };
        let new = NewPayment {
            chain_id,
            asset,
            payer: from,
            nonce,
            pay_to: payment.pay_to(),
            amount: payment.amount(),
            valid_before: u64::try_from(payment.valid_until()).unwrap_or(u64::MAX),
            payload_digest: digest,
            x402_version: request.version.number(),
            network: network.clone(),
            request_json: String::from_utf8_lossy(raw_request).into_owned(),
            deploy: call
                .deploy
                .map(|(factory, calldata)| Deploy { factory, calldata }),
            transfer_calldata: call.transfer,
            api_key: key.map(|k| k.id.clone()),
            method,
            call_target: payment.call_target(),
            sender,
        };
        let budget_lock = match key {
            Some(k) if k.daily_amount.is_some() => Some(self.budget_lock(&k.id)),
            _ => None,
        };
        let _held = match &budget_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        if let Some(k) = key {
            access::check_budget(&self.ledger, k, new.amount).await?;
        }
        // A refused payment does not hold its key: this submission takes it over, afresh.
        let id = match existing {
            Some(refused) => {
                if !self.ledger.reclaim(refused.id, &new).await? {
                    let current = self.ledger.payment(refused.id).await?.ok_or_else(|| {
                        LedgerError::Corrupt(format!("payment {} vanished", refused.id))
                    })?;
                    return self
                        .join(settlement, request, &payment, current, digest)
                        .await;
                }
                refused.id
            }
            None => match self.ledger.claim(&new).await? {
                Claim::New(id) => id,
                Claim::Existing(existing) => {
                    return self
                        .join(settlement, request, &payment, *existing, digest)
                        .await;
                }
            },
        };
        // Claimed: the budget counts it now, so the next payment of the key may be judged.
        drop(_held);
        settlement.wake(chain_id);
        self.wait_for(settlement, request, &network, id).await
    }

    fn budget_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.budget_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// Waits for a payment's outcome; with every gas wallet of its chain dry, answers at once (503).
    async fn wait_for(
        &self,
        settlement: &Settlement,
        request: &FacilitatorRequest,
        network: &str,
        id: i64,
    ) -> Result<(SettleResponse, &'static str), FacilitatorError> {
        let chain_id = self
            .chains
            .resolve(request.version, &request.requirements.network)
            .map(|n| n.chain_id.0)
            .unwrap_or_default();
        let timeout = if settlement.can_pay(chain_id) {
            self.deadline(request)
        } else {
            Duration::ZERO
        };
        let outcome = settlement.wait(id, timeout).await?;
        if !outcome.state.is_terminal() && !settlement.can_pay(chain_id) {
            return Err(FacilitatorError::GasWalletsDry {
                network: network.to_owned(),
            });
        }
        Ok((
            settle_answer(request.version, network, &outcome),
            outcome_of(&outcome),
        ))
    }

    /// A second arrival of an authorization we hold: the same payload shares the first one's
    /// outcome; a different payload for the same key is a used nonce.
    async fn join(
        &self,
        settlement: &Settlement,
        request: &FacilitatorRequest,
        payment: &Checked<'_>,
        existing: Payment,
        digest: B256,
    ) -> Result<(SettleResponse, &'static str), FacilitatorError> {
        let network = payment.network().wire_name(request.version);
        if existing.payload_digest != digest {
            let reason = used_reason(payment);
            let invalid = Invalid::new(
                reason,
                "another payload (or, for upto, another amount) with this nonce was already submitted",
            );
            let answer = settle_failure(
                request.version,
                Some(payment.payer()),
                &network,
                invalid,
                "",
            );
            return Ok((answer, reason.code()));
        }
        self.metrics_for(request).duplicates_joined.inc();
        self.wait_for(settlement, request, &network, existing.id)
            .await
    }

    /// The rules a payment is judged by now.
    fn rules(&self, phase: Phase) -> exact::Rules<'_> {
        exact::Rules {
            policy: &self.policy,
            signers: &self.signers,
            phase,
            now: unix_now(),
        }
    }

    /// How to settle: for a plain key that recovers locally, no RPC is needed now (the batcher
    /// simulates every item before sending); anything else is verified in full first.
    async fn settlement_call(&self, payment: Checked<'_>) -> Result<SettlementCall, VerifyError> {
        let fast = match &payment {
            Checked::Eip3009(p) => {
                let auth = p.authorization();
                match exact::classify(&p.payload.signature) {
                    Ok(SignatureClass::Ecdsa(sig))
                        if exact::signature::recover(
                            &sig,
                            exact::authorization_digest(p.token.domain_separator, auth),
                        ) == Some(auth.from) =>
                    {
                        Some(exact::transfer_vrs(auth, &sig))
                    }
                    _ => None,
                }
            }
            Checked::Permit2(p) => match exact::classify(&p.payload.signature) {
                Ok(SignatureClass::Ecdsa(sig))
                    if exact::signature::recover(&sig, p.digest())
                        == Some(p.authorization().from) =>
                {
                    Some(p.settle_calldata(&p.payload.signature))
                }
                _ => None,
            },
        };
        match fast {
            Some(transfer) => Ok(SettlementCall {
                deploy: None,
                transfer,
            }),
            None => payment.verify_on_chain(&self.policy).await,
        }
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
            // upto needs Permit2 and a wallet the witness can bind: the first gas wallet settles
            // every upto payment (the proxy checks `msg.sender`).
            let permit2 = network
                .tokens
                .iter()
                .any(|t| t.accepts(crate::protocol::TransferMethod::Permit2));
            if let (true, Some(wallet)) = (permit2, self.signers.first()) {
                kinds.push(SupportedKind {
                    x402_version: X402Version::V2,
                    scheme: "upto".to_owned(),
                    network: network.wire_name(X402Version::V2),
                    extra: Some(serde_json::json!({
                        "facilitatorAddress": wallet.to_checksum(None),
                    })),
                });
            }
        }
        let signers = self.signers.iter().map(|a| a.to_checksum(None)).collect();
        SupportedResponse {
            kinds,
            extensions: vec!["payment-identifier".to_owned()],
            signers: BTreeMap::from([("eip155:*".to_owned(), signers)]),
        }
    }
}

/// How long a catalogued resource stays listed without being seen in a settled payment again.
const CATALOGUE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// One merchant's namespace of payment identifiers: the network and payTo the request names.
fn identifier_scope(request: &FacilitatorRequest) -> String {
    format!(
        "{}|{}",
        request.requirements.network, request.requirements.pay_to
    )
}

/// The kept `/verify` answer of a binding, if one was kept.
fn kept_answer(bound: &BoundIdentifier) -> Option<VerifyResponse> {
    bound
        .verify_answer
        .as_deref()
        .and_then(|a| serde_json::from_str(a).ok())
}

/// The outcome label of a 5xx answer.
fn error_outcome(e: &FacilitatorError) -> &'static str {
    match e {
        FacilitatorError::ChainUnavailable(_) => "chain_unavailable",
        FacilitatorError::Ledger(_) => "ledger_unavailable",
        FacilitatorError::SettlementUnavailable => "settlement_unavailable",
        FacilitatorError::GasWalletsDry { .. } => "gas_wallets_dry",
        FacilitatorError::PaymentIdentifierConflict { .. } => "payment_identifier_conflict",
        FacilitatorError::Access(_) => "access_denied",
    }
}

fn describe(state: PaymentState) -> &'static str {
    match state {
        PaymentState::Confirmed | PaymentState::Final | PaymentState::Included => "settled",
        PaymentState::Failed | PaymentState::Lost => "spent",
        _ => "being settled",
    }
}

/// The reason for a nonce this facilitator (or the chain) already holds.
fn used_reason(payment: &Checked<'_>) -> Reason {
    match payment {
        Checked::Eip3009(_) => Reason::NonceAlreadyUsed,
        Checked::Permit2(_) => Reason::Permit2NonceUsed,
    }
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
        amount: None,
    }
}

/// The outcome label of a payment's latest state, as [`settle_answer`] reports it.
fn outcome_of(p: &Payment) -> &'static str {
    match p.state {
        PaymentState::Confirmed | PaymentState::Final => "success",
        PaymentState::Failed | PaymentState::Refused | PaymentState::Lost => p
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
    let payer = Some(p.payer);
    let transaction = p.tx_hash.map(|h| h.to_string()).unwrap_or_default();
    match p.state {
        PaymentState::Confirmed | PaymentState::Final => SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: payer.map(|a| a.to_checksum(None)),
            transaction,
            network: network.to_owned(),
            amount: Some(p.amount.to_string()),
        },
        PaymentState::Failed | PaymentState::Refused | PaymentState::Lost => {
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

pub use crate::clock::unix_now;
