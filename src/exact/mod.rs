//! The EVM schemes: `exact` with EIP-3009 (here) or Permit2 (`permit2`), and `upto` (Permit2).
//! The verification checks, in the reference order, and the calldata that settles a verified
//! payment. Holds no state.

pub mod permit2;
pub mod signature;

use alloy::primitives::{Address, Bytes, U256};
use alloy::sol_types::SolCall;
use serde_json::Value;

use crate::chain::bindings::{ERC1271_MAGIC, IEip3009Token, IErc1271, IMulticall3, MULTICALL3};
use crate::chain::rpc::hex_result;
use crate::chain::{CallError, Chains, Network, RpcCall, RpcError, Token};
use crate::protocol::wire::{Eip3009Authorization, ExactEvmPayload};
use crate::protocol::{FacilitatorRequest, PaymentBody, Reason, TransferMethod};
pub use permit2::{Permit2Payment, Phase, Rules};
pub use signature::{SignatureClass, authorization_digest, classify};

/// Operator policy for the exact scheme.
#[derive(Debug, Clone)]
pub struct ExactPolicy {
    /// `validBefore` must be at least this many seconds after now.
    pub valid_before_buffer_seconds: u64,
    /// ERC-6492 factories we accept; empty refuses counterfactual wallets.
    pub eip6492_factories: Vec<Address>,
    /// `validBefore` must be at most this many seconds after now.
    pub max_valid_before_seconds: u64,
    /// `payTo` addresses we settle for; empty: any.
    pub pay_to_allowlist: Vec<Address>,
}

/// A refusal: the reason code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: Reason,
    pub message: String,
}

impl Invalid {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Invalid {
            reason,
            message: message.into(),
        }
    }
}

/// Verification did not reach a verdict (the node is unreachable), or refused the payment.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    #[error("payment invalid: {0:?}")]
    Invalid(Invalid),
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

impl From<Invalid> for VerifyError {
    fn from(i: Invalid) -> Self {
        VerifyError::Invalid(i)
    }
}

/// A payment that passed the checks that need no chain: it names a served token, and its
/// authorization matches the requirements.
#[derive(Debug, Clone, Copy)]
pub struct ExactPayment<'a> {
    pub network: &'a Network,
    pub token: &'a Token,
    pub payload: &'a ExactEvmPayload,
}

impl ExactPayment<'_> {
    pub fn authorization(&self) -> &Eip3009Authorization {
        &self.payload.authorization
    }
}

/// A payment that passed the checks that need no chain, by how its token moves.
#[derive(Debug, Clone, Copy)]
pub enum Checked<'a> {
    Eip3009(ExactPayment<'a>),
    Permit2(Permit2Payment<'a>),
}

impl<'a> Checked<'a> {
    pub fn network(&self) -> &'a Network {
        match self {
            Checked::Eip3009(p) => p.network,
            Checked::Permit2(p) => p.network,
        }
    }

    pub fn token(&self) -> &'a Token {
        match self {
            Checked::Eip3009(p) => p.token,
            Checked::Permit2(p) => p.token,
        }
    }

    pub fn payer(&self) -> Address {
        match self {
            Checked::Eip3009(p) => p.authorization().from,
            Checked::Permit2(p) => p.authorization().from,
        }
    }

    /// The nonce of the ledger key (chain, token, payer, nonce): EIP-3009's `bytes32`, or
    /// Permit2's `uint256` as 32 bytes.
    pub fn nonce_key(&self) -> alloy::primitives::B256 {
        match self {
            Checked::Eip3009(p) => p.authorization().nonce,
            Checked::Permit2(p) => p.nonce_key(),
        }
    }

    pub fn pay_to(&self) -> Address {
        match self {
            Checked::Eip3009(p) => p.authorization().to,
            Checked::Permit2(p) => p.authorization().witness.to,
        }
    }

    /// What settling moves.
    pub fn amount(&self) -> U256 {
        match self {
            Checked::Eip3009(p) => p.authorization().value.0,
            Checked::Permit2(p) => p.charge,
        }
    }

    /// The last moment the signature can settle (EIP-3009 `validBefore`, Permit2 `deadline`).
    pub fn valid_until(&self) -> U256 {
        match self {
            Checked::Eip3009(p) => p.authorization().valid_before,
            Checked::Permit2(p) => p.authorization().deadline,
        }
    }

    /// The contract the settling calldata goes to.
    pub fn call_target(&self) -> Address {
        match self {
            Checked::Eip3009(p) => p.token.address,
            Checked::Permit2(p) => p.proxy(),
        }
    }

    /// Identifies the exact signed payload; for upto, with the amount to charge, so that a
    /// second settle of the same permit for another amount is not taken for a retry.
    pub fn payload_digest(&self) -> alloy::primitives::B256 {
        let mut canonical = match self {
            Checked::Eip3009(p) => serde_json::to_vec(p.payload),
            Checked::Permit2(p) => serde_json::to_vec(p.payload),
        }
        .unwrap_or_default();
        if let Checked::Permit2(p) = self
            && p.scheme == permit2::Scheme::Upto
        {
            canonical.extend_from_slice(format!("|charge={}", p.charge).as_bytes());
        }
        alloy::primitives::keccak256(canonical)
    }

    /// Every check that needs the chain; returns how to settle.
    pub async fn verify_on_chain(
        self,
        policy: &ExactPolicy,
    ) -> Result<SettlementCall, VerifyError> {
        match self {
            Checked::Eip3009(p) => verify_on_chain(p, policy).await,
            Checked::Permit2(p) => permit2::verify_on_chain(p, policy).await,
        }
    }
}

/// How a verified payment is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementCall {
    /// ERC-6492: the factory call that must run first (in the same transaction).
    pub deploy: Option<(Address, Bytes)>,
    /// The settling calldata: `transferWithAuthorization` for the token, or the proxy's `settle`.
    pub transfer: Bytes,
}

/// The payer of a request, when the payload names one.
pub fn payer_of(request: &FacilitatorRequest) -> Option<Address> {
    match &request.body {
        PaymentBody::Eip3009(p) => Some(p.authorization.from),
        PaymentBody::UnknownScheme { payer } => *payer,
        PaymentBody::Permit2(p) => Some(p.permit2_authorization.from),
    }
}

/// Steps 1–5 of the verification for either transfer method: scheme, network, asset, then the
/// method's own checks (EIP-712 domain, payTo, amount, the operator's limits, time). `signers`
/// are the gas wallets an upto witness may bind; `phase` says whether the requirements' amount is
/// a price (verify) or a charge (settle).
pub fn check<'a>(
    chains: &'a Chains,
    request: &'a FacilitatorRequest,
    rules: &Rules<'_>,
) -> Result<Checked<'a>, Invalid> {
    let req = &request.requirements;
    let known = req.scheme == "exact" || req.scheme == "upto";
    if !known || request.payload_scheme != req.scheme {
        return Err(Invalid::new(
            Reason::InvalidScheme,
            format!(
                "scheme {:?} (payload {:?}) is not supported; only \"exact\" and \"upto\"",
                req.scheme, request.payload_scheme
            ),
        ));
    }
    if request.payload_network != req.network {
        return Err(Invalid::new(
            Reason::NetworkMismatch,
            format!(
                "payload is for {:?} but requirements are for {:?}",
                request.payload_network, req.network
            ),
        ));
    }
    let network = chains
        .resolve(request.version, &req.network)
        .ok_or_else(|| {
            Invalid::new(
                Reason::UnsupportedNetwork,
                format!("network {:?} is not served here", req.network),
            )
        })?;
    let token = network.token(req.asset).ok_or_else(|| {
        Invalid::new(
            Reason::UnsupportedAsset,
            format!("asset {} is not served on {}", req.asset, network.chain_id),
        )
    })?;
    match &request.body {
        PaymentBody::Permit2(p) => {
            permit2::check_static((network, token), request, p, rules).map(Checked::Permit2)
        }
        PaymentBody::Eip3009(_) if req.scheme == "upto" => Err(Invalid::new(
            Reason::UnsupportedPayloadType,
            "upto payments are Permit2 signatures (permit2Authorization)",
        )),
        PaymentBody::Eip3009(p) => {
            check_static(network, token, request, p, rules.policy, rules.now).map(Checked::Eip3009)
        }
        PaymentBody::UnknownScheme { .. } => Err(Invalid::new(
            Reason::InvalidScheme,
            "payload scheme is not exact",
        )),
    }
}

/// The EIP-3009 checks: transfer method, EIP-712 domain, payTo, exact amount, limits, time.
fn check_static<'a>(
    network: &'a Network,
    token: &'a Token,
    request: &'a FacilitatorRequest,
    payload: &'a ExactEvmPayload,
    policy: &ExactPolicy,
    now: u64,
) -> Result<ExactPayment<'a>, Invalid> {
    let req = &request.requirements;
    check_method(req, token, TransferMethod::Eip3009)?;
    let (Some(name), Some(version)) = (&req.extra.name, &req.extra.version) else {
        return Err(Invalid::new(
            Reason::MissingEip712Domain,
            "requirements.extra must carry the token's EIP-712 name and version",
        ));
    };
    if *name != token.name {
        return Err(Invalid::new(
            Reason::TokenNameMismatch,
            format!("EIP-712 name {name:?}; the token's is {:?}", token.name),
        ));
    }
    if *version != token.version {
        return Err(Invalid::new(
            Reason::TokenVersionMismatch,
            format!(
                "EIP-712 version {version:?}; the token's is {:?}",
                token.version
            ),
        ));
    }
    let auth = &payload.authorization;
    if auth.to != req.pay_to {
        return Err(Invalid::new(
            Reason::RecipientMismatch,
            format!("authorization pays {} but payTo is {}", auth.to, req.pay_to),
        ));
    }
    if auth.value != req.amount {
        return Err(Invalid::new(
            Reason::AuthorizationValueMismatch,
            format!(
                "authorization value {} must equal the required amount {}",
                auth.value, req.amount
            ),
        ));
    }
    check_limits(token, req.pay_to, req.amount.0, policy)?;
    check_window(
        Window {
            after: ("validAfter", auth.valid_after, Reason::ValidAfterInFuture),
            before: ("validBefore", auth.valid_before, Reason::ValidBeforeTooSoon),
        },
        policy,
        now,
    )?;
    Ok(ExactPayment {
        network,
        token,
        payload,
    })
}

/// The payload's transfer method agrees with `extra.assetTransferMethod` (when given) and is one
/// the token is served by.
fn check_method(
    req: &crate::protocol::Requirements,
    token: &Token,
    method: TransferMethod,
) -> Result<(), Invalid> {
    if let Some(asked) = &req.extra.asset_transfer_method
        && asked != method.as_str()
    {
        return Err(Invalid::new(
            Reason::UnsupportedPayloadType,
            format!(
                "assetTransferMethod {asked:?} does not match a {} payload",
                method.as_str()
            ),
        ));
    }
    if !token.accepts(method) {
        let served: Vec<&str> = token.transfer_methods.iter().map(|m| m.as_str()).collect();
        return Err(Invalid::new(
            Reason::UnsupportedPayloadType,
            format!(
                "{} is not served by {} here (served by: {})",
                token.symbol,
                method.as_str(),
                served.join(", ")
            ),
        ));
    }
    Ok(())
}

/// A signature's time window: each end's name on the wire, its value, and the reason it is
/// refused with (EIP-3009 and Permit2 name them differently).
struct Window {
    after: (&'static str, U256, Reason),
    before: (&'static str, U256, Reason),
}

/// The end must be at least the block-time buffer away and within the facilitator's horizon (it
/// holds the key until then); the start must have passed.
fn check_window(w: Window, policy: &ExactPolicy, now: u64) -> Result<(), Invalid> {
    let (before_name, before, too_soon) = w.before;
    let earliest = U256::from(now.saturating_add(policy.valid_before_buffer_seconds));
    if before < earliest {
        return Err(Invalid::new(
            too_soon,
            format!(
                "{before_name} {before} is before now + {} s",
                policy.valid_before_buffer_seconds
            ),
        ));
    }
    let latest = U256::from(now.saturating_add(policy.max_valid_before_seconds));
    if before > latest {
        return Err(Invalid::new(
            Reason::ValidBeforeTooFar,
            format!(
                "{before_name} {before} is more than {} s from now: this facilitator holds \
                 authorizations for at most that long",
                policy.max_valid_before_seconds
            ),
        ));
    }
    let (after_name, after, not_yet) = w.after;
    if after > U256::from(now) {
        return Err(Invalid::new(
            not_yet,
            format!("{after_name} {after} is in the future"),
        ));
    }
    Ok(())
}

/// The operator's limits: the payTo allowlist, the token's minimum and maximum payment.
fn check_limits(
    token: &Token,
    pay_to: Address,
    amount: U256,
    policy: &ExactPolicy,
) -> Result<(), Invalid> {
    if !policy.pay_to_allowlist.is_empty() && !policy.pay_to_allowlist.contains(&pay_to) {
        return Err(Invalid::new(
            Reason::PayToNotAllowed,
            format!("this facilitator does not settle for payTo {pay_to}"),
        ));
    }
    if amount < token.min_amount {
        return Err(Invalid::new(
            Reason::AmountBelowMinimum,
            format!(
                "amount {amount} is below this facilitator's minimum of {} for {}",
                token.min_amount, token.symbol
            ),
        ));
    }
    if let Some(max) = token.max_amount
        && amount > max
    {
        return Err(Invalid::new(
            Reason::AmountAboveMaximum,
            format!(
                "amount {amount} is above this facilitator's maximum of {max} for {}",
                token.symbol
            ),
        ));
    }
    Ok(())
}

/// Steps 6–7: the signature by class and one simulation, in one batched round trip for the common
/// case (an EOA, or a smart wallet whose code is deployed). Returns how to settle the payment.
pub async fn verify_on_chain(
    payment: ExactPayment<'_>,
    policy: &ExactPolicy,
) -> Result<SettlementCall, VerifyError> {
    let auth = payment.authorization();
    let digest = authorization_digest(payment.token.domain_separator, auth);
    let class = classify(&payment.payload.signature)
        .map_err(|e| Invalid::new(Reason::InvalidSignature, e.to_string()))?;
    match class {
        SignatureClass::Ecdsa(sig) => {
            let recovered = signature::recover(&sig, digest);
            let bytes: Bytes = sig.as_bytes().to_vec().into();
            if recovered == Some(auth.from) {
                let call = transfer_vrs(auth, &sig);
                // The token applies the rule we would (ECDSA for a plain key, ERC-1271 only once the
                // payer has code), so a passing simulation is the whole answer: the common case is
                // one `eth_call`. The payer's code is read only to explain a failure.
                let outcome = simulate(payment, &call).await?;
                if outcome.is_err() && payer_has_code(payment).await? {
                    // A deployed wallet (or EIP-7702 account) signs through ERC-1271 only: the token
                    // will not fall back to ECDSA, so neither do we.
                    require_erc1271(payment, digest, &bytes).await?;
                }
                finish(
                    payment,
                    outcome,
                    SettlementCall {
                        deploy: None,
                        transfer: call,
                    },
                )
                .await
            } else {
                verify_contract_signature(payment, digest, bytes, Reason::InvalidSignature).await
            }
        }
        SignatureClass::Contract(bytes) => {
            verify_contract_signature(payment, digest, bytes, Reason::UndeployedSmartWallet).await
        }
        SignatureClass::Counterfactual {
            factory,
            factory_calldata,
            inner,
        } => {
            if !policy.eip6492_factories.contains(&factory) {
                return Err(Invalid::new(
                    Reason::Eip6492FactoryNotAllowed,
                    format!("ERC-6492 factory {factory} is not on this facilitator's allowlist"),
                )
                .into());
            }
            verify_counterfactual(payment, digest, factory, factory_calldata, inner).await
        }
    }
}

/// A signature only a deployed contract can accept.
async fn verify_contract_signature(
    payment: ExactPayment<'_>,
    digest: alloy::primitives::B256,
    signature: Bytes,
    if_no_code: Reason,
) -> Result<SettlementCall, VerifyError> {
    let auth = payment.authorization();
    let call = transfer_bytes(auth, &signature);
    let erc1271 = RpcCall::call(
        auth.from,
        IErc1271::isValidSignatureCall {
            hash: digest,
            signature: signature.clone(),
        }
        .abi_encode(),
    );
    let outcome = probe(payment, &call, Some(erc1271)).await?;
    if !outcome.payer_has_code {
        let message = if if_no_code == Reason::InvalidSignature {
            "signature does not recover to the payer".to_owned()
        } else {
            format!(
                "payer {} has no code to check a {}-byte signature",
                auth.from,
                signature.len()
            )
        };
        return Err(Invalid::new(if_no_code, message).into());
    }
    check_erc1271_answer(outcome.erc1271.as_ref())?;
    finish(
        payment,
        outcome.simulation,
        SettlementCall {
            deploy: None,
            transfer: call,
        },
    )
    .await
}

async fn verify_counterfactual(
    payment: ExactPayment<'_>,
    digest: alloy::primitives::B256,
    factory: Address,
    factory_calldata: Bytes,
    inner: Bytes,
) -> Result<SettlementCall, VerifyError> {
    let auth = payment.authorization();
    let transfer = transfer_bytes(auth, &inner);
    let aggregate = IMulticall3::aggregate3Call {
        calls: vec![
            IMulticall3::Call3 {
                target: factory,
                allowFailure: true,
                callData: factory_calldata.clone(),
            },
            IMulticall3::Call3 {
                target: payment.token.address,
                allowFailure: true,
                callData: transfer.clone(),
            },
        ],
    }
    .abi_encode();
    let mut calls = vec![
        RpcCall::get_code(auth.from),
        RpcCall::call(MULTICALL3, aggregate),
    ];
    let token_check = !payment.token.known_deployed();
    if token_check {
        calls.push(RpcCall::get_code(payment.token.address));
    }
    let results = payment.network.rpc.batch(&calls).await?;
    if token_check {
        check_token_code(payment.token, &results[2])?;
    }
    if !code_of(&results[0])?.is_empty() {
        // Already deployed: the wrapper is just an ERC-1271 signature now.
        return verify_contract_signature(payment, digest, inner, Reason::InvalidSignature).await;
    }
    let answer = match &results[1] {
        Ok(v) => hex_result(v)?,
        Err(e) => return Err(Invalid::new(Reason::SmartWalletDeploymentFailed, e.reason()).into()),
    };
    let items = IMulticall3::aggregate3Call::abi_decode_returns(&answer)
        .map_err(|e| RpcError::Malformed(format!("aggregate3 answer: {e}")))?;
    let (Some(deploy), Some(transfer_result)) = (items.first(), items.get(1)) else {
        return Err(
            RpcError::Malformed("aggregate3 answered fewer results than calls".into()).into(),
        );
    };
    if !deploy.success {
        return Err(Invalid::new(
            Reason::SmartWalletDeploymentFailed,
            "the ERC-6492 factory call reverted",
        )
        .into());
    }
    let simulation = if transfer_result.success {
        Ok(())
    } else {
        Err(
            alloy::sol_types::decode_revert_reason(&transfer_result.returnData)
                .unwrap_or_else(|| "reverted".into()),
        )
    };
    finish(
        payment,
        simulation,
        SettlementCall {
            deploy: Some((factory, factory_calldata)),
            transfer,
        },
    )
    .await
}

/// What one batched probe learned.
struct Probe {
    payer_has_code: bool,
    erc1271: Option<Result<Value, CallError>>,
    /// `Err(revert reason)` when the simulated transfer reverted.
    simulation: Result<(), String>,
}

/// One round trip: the payer's code, the simulated transfer, optionally an ERC-1271 check, and the
/// token's code until it has been seen once.
async fn probe(
    payment: ExactPayment<'_>,
    transfer: &Bytes,
    erc1271: Option<RpcCall>,
) -> Result<Probe, VerifyError> {
    let mut calls = vec![
        RpcCall::get_code(payment.authorization().from),
        RpcCall::call(payment.token.address, transfer.clone()),
    ];
    let with_1271 = erc1271.is_some();
    calls.extend(erc1271);
    let mut results = batch_checking_token(payment, calls).await?;
    let erc1271 = if with_1271 { results.pop() } else { None };
    let simulation = match &results[1] {
        Ok(_) => Ok(()),
        Err(e) => Err(e.reason()),
    };
    Ok(Probe {
        payer_has_code: !code_of(&results[0])?.is_empty(),
        erc1271,
        simulation,
    })
}

/// Sends `calls` in one batch, adding the token's code check until the token has been seen once.
async fn batch_checking_token(
    payment: ExactPayment<'_>,
    mut calls: Vec<RpcCall>,
) -> Result<Vec<Result<Value, CallError>>, VerifyError> {
    let token_check = !payment.token.known_deployed();
    if token_check {
        calls.push(RpcCall::get_code(payment.token.address));
    }
    let mut results = payment.network.rpc.batch(&calls).await?;
    if token_check {
        let token_code = results
            .pop()
            .ok_or_else(|| RpcError::Malformed("short batch".into()))?;
        check_token_code(payment.token, &token_code)?;
    }
    Ok(results)
}

/// One simulation of the transfer (with the token's code check the first time we use a token).
async fn simulate(
    payment: ExactPayment<'_>,
    transfer: &Bytes,
) -> Result<Result<(), String>, VerifyError> {
    if payment.token.known_deployed() {
        // The common case: coalesced with concurrent verifications into one `eth_call`.
        return Ok(payment
            .network
            .simulator
            .call(payment.token.address, transfer.clone())
            .await?);
    }
    let results = batch_checking_token(
        payment,
        vec![RpcCall::call(payment.token.address, transfer.clone())],
    )
    .await?;
    match results.first() {
        Some(Ok(_)) => Ok(Ok(())),
        Some(Err(e)) => Ok(Err(e.reason())),
        None => Err(RpcError::Malformed("empty batch answer".into()).into()),
    }
}

async fn payer_has_code(payment: ExactPayment<'_>) -> Result<bool, VerifyError> {
    let code = payment
        .network
        .rpc
        .request(RpcCall::get_code(payment.authorization().from))
        .await?;
    Ok(!code_of(&code)?.is_empty())
}

fn code_of(result: &Result<Value, CallError>) -> Result<Bytes, RpcError> {
    match result {
        Ok(v) => hex_result(v),
        Err(e) => Err(RpcError::Malformed(format!(
            "eth_getCode failed: {}",
            e.message
        ))),
    }
}

fn check_token_code(token: &Token, result: &Result<Value, CallError>) -> Result<(), VerifyError> {
    if code_of(result)?.is_empty() {
        return Err(Invalid::new(
            Reason::AssetNotDeployed,
            format!("no contract at asset {}", token.address),
        )
        .into());
    }
    token.mark_deployed();
    Ok(())
}

async fn require_erc1271(
    payment: ExactPayment<'_>,
    digest: alloy::primitives::B256,
    signature: &Bytes,
) -> Result<(), VerifyError> {
    let call = IErc1271::isValidSignatureCall {
        hash: digest,
        signature: signature.clone(),
    }
    .abi_encode();
    let answer = payment
        .network
        .rpc
        .request(RpcCall::call(payment.authorization().from, call))
        .await?;
    check_erc1271_answer(Some(&answer))
}

fn check_erc1271_answer(answer: Option<&Result<Value, CallError>>) -> Result<(), VerifyError> {
    let ok = match answer {
        Some(Ok(v)) => {
            let bytes = hex_result(v)?;
            bytes.len() >= 4 && bytes[..4] == ERC1271_MAGIC
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            Reason::InvalidSignature,
            "the payer's ERC-1271 isValidSignature refused the signature",
        )
        .into())
    }
}

/// A passed simulation settles; a failed one is diagnosed with one batched read.
async fn finish(
    payment: ExactPayment<'_>,
    simulation: Result<(), String>,
    call: SettlementCall,
) -> Result<SettlementCall, VerifyError> {
    match simulation {
        Ok(()) => Ok(call),
        Err(revert) => Err(diagnose(
            payment.network,
            payment.token,
            payment.authorization(),
            &revert,
        )
        .await?
        .into()),
    }
}

/// Turns a failed simulation into a precise reason: one batched read of `authorizationState`,
/// `name`, `version` and `balanceOf`, read together with the revert string.
pub async fn diagnose(
    network: &Network,
    token_info: &Token,
    auth: &Eip3009Authorization,
    revert: &str,
) -> Result<Invalid, RpcError> {
    let token = token_info.address;
    let calls = [
        RpcCall::call(
            token,
            IEip3009Token::authorizationStateCall {
                authorizer: auth.from,
                nonce: auth.nonce,
            }
            .abi_encode(),
        ),
        RpcCall::call(token, IEip3009Token::nameCall {}.abi_encode()),
        RpcCall::call(token, IEip3009Token::versionCall {}.abi_encode()),
        RpcCall::call(
            token,
            IEip3009Token::balanceOfCall { account: auth.from }.abi_encode(),
        ),
    ];
    let results = network.rpc.batch(&calls).await?;
    let decode = |i: usize| {
        results
            .get(i)
            .and_then(|r| r.as_ref().ok())
            .and_then(|v| hex_result(v).ok())
    };
    let used =
        decode(0).and_then(|b| IEip3009Token::authorizationStateCall::abi_decode_returns(&b).ok());
    let name = decode(1).and_then(|b| IEip3009Token::nameCall::abi_decode_returns(&b).ok());
    let version = decode(2).and_then(|b| IEip3009Token::versionCall::abi_decode_returns(&b).ok());
    let balance = decode(3).and_then(|b| IEip3009Token::balanceOfCall::abi_decode_returns(&b).ok());
    Ok(classify_failure(
        token_info,
        auth,
        revert,
        used,
        name.as_deref(),
        version.as_deref(),
        balance,
    ))
}

/// The verdict of a diagnosis; pure, so the mapping is unit-tested.
fn classify_failure(
    token: &Token,
    auth: &Eip3009Authorization,
    revert: &str,
    used: Option<bool>,
    name: Option<&str>,
    version: Option<&str>,
    balance: Option<U256>,
) -> Invalid {
    let Some(used) = used else {
        return Invalid::new(
            Reason::Eip3009NotSupported,
            format!(
                "token {} has no authorizationState: {revert}",
                token.address
            ),
        );
    };
    if used {
        return Invalid::new(
            Reason::NonceAlreadyUsed,
            "authorization nonce is already used or canceled on chain",
        );
    }
    if revert.contains("Pausable: paused") {
        return Invalid::new(
            Reason::SimulationFailed,
            format!("token is paused ({revert})"),
        );
    }
    if revert.contains("Blacklistable") {
        return Invalid::new(
            Reason::SimulationFailed,
            format!("payer or payee is blacklisted ({revert})"),
        );
    }
    if balance.is_some_and(|b| b < auth.value.0) {
        return Invalid::new(
            Reason::InsufficientBalance,
            format!(
                "payer balance {} is below {}",
                balance.unwrap_or_default(),
                auth.value
            ),
        );
    }
    if name.is_some_and(|n| n != token.name) {
        return Invalid::new(
            Reason::TokenNameMismatch,
            format!("token name() is {name:?}, configured {:?}", token.name),
        );
    }
    if version.is_some_and(|v| v != token.version) {
        return Invalid::new(
            Reason::TokenVersionMismatch,
            format!(
                "token version() is {version:?}, configured {:?}",
                token.version
            ),
        );
    }
    if revert.contains("invalid signature") {
        return Invalid::new(Reason::InvalidSignature, revert.to_owned());
    }
    if revert.contains("authorization is expired") {
        return Invalid::new(Reason::ValidBeforeTooSoon, revert.to_owned());
    }
    if revert.contains("authorization is not yet valid") {
        return Invalid::new(Reason::ValidAfterInFuture, revert.to_owned());
    }
    Invalid::new(
        Reason::SimulationFailed,
        format!("simulation of transferWithAuthorization reverted: {revert}"),
    )
}

/// `transferWithAuthorization(…, v, r, s)`: cheaper to submit for a plain key.
pub fn transfer_vrs(auth: &Eip3009Authorization, sig: &alloy::signers::Signature) -> Bytes {
    IEip3009Token::transferWithAuthorization_0Call {
        from: auth.from,
        to: auth.to,
        value: auth.value.0,
        validAfter: auth.valid_after,
        validBefore: auth.valid_before,
        nonce: auth.nonce,
        v: if sig.v() { 28 } else { 27 },
        r: sig.r().into(),
        s: sig.s().into(),
    }
    .abi_encode()
    .into()
}

/// `transferWithAuthorization(…, bytes signature)`: for smart wallets.
pub fn transfer_bytes(auth: &Eip3009Authorization, signature: &Bytes) -> Bytes {
    IEip3009Token::transferWithAuthorization_1Call {
        from: auth.from,
        to: auth.to,
        value: auth.value.0,
        validAfter: auth.valid_after,
        validBefore: auth.valid_before,
        nonce: auth.nonce,
        signature: signature.clone(),
    }
    .abi_encode()
    .into()
}
