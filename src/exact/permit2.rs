//! Permit2 payments: `exact` with `assetTransferMethod: "permit2"` (any ERC-20 the payer approved
//! to Permit2, moved whole through the x402 exact proxy) and `upto` (the same signature over a
//! maximum; the amount charged is chosen at settle time and moved through the upto proxy, which only
//! the facilitator named in the witness may call). The checks in order, one batched round trip of
//! reads and a simulation, the diagnosis of a failure, and the settling calldata.

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::sol_types::{SolCall, SolError, SolStruct};
use serde_json::Value;

use super::signature::{self, SignatureClass};
use super::{ExactPolicy, Invalid, SettlementCall, VerifyError};
use crate::chain::bindings::{
    ERC1271_MAGIC, IErc20, IErc1271, IExactPermit2Proxy, IMulticall3, IPermit2, IUptoPermit2Proxy,
    MULTICALL3, PermitTransferFrom, TokenPermissions, exact_eip712, permit2_domain, upto_eip712,
};
use crate::chain::rpc::hex_result;
use crate::chain::{CallError, Network, RpcCall, RpcError, Token};
use crate::protocol::wire::{Permit2Authorization, Permit2Payload};
use crate::protocol::{FacilitatorRequest, Reason, TransferMethod};

/// Which proxy, and so which witness, a Permit2 payment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// The whole permitted amount, to `witness.to`.
    Exact,
    /// Up to the permitted amount, chosen at settle time, sent by `witness.facilitator`.
    Upto,
}

/// Whether the requirements' amount is the price asked (verify) or the amount to charge (settle):
/// for upto they differ, and so do the refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Verify,
    Settle,
}

/// What a payment is judged by besides itself: the operator's policy, the gas wallets an upto
/// witness may bind, the phase, and the time.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub policy: &'a ExactPolicy,
    pub signers: &'a [Address],
    pub phase: Phase,
    pub now: u64,
}

/// A Permit2 payment that passed the checks that need no chain.
#[derive(Debug, Clone, Copy)]
pub struct Permit2Payment<'a> {
    pub network: &'a Network,
    pub token: &'a Token,
    pub payload: &'a Permit2Payload,
    pub scheme: Scheme,
    /// What settling moves: exact, the permitted amount; upto, the requirements' amount.
    pub charge: U256,
}

impl Permit2Payment<'_> {
    pub fn authorization(&self) -> &Permit2Authorization {
        &self.payload.permit2_authorization
    }

    /// The ledger key's nonce: Permit2's `uint256` nonce as 32 bytes.
    pub fn nonce_key(&self) -> B256 {
        B256::from(self.authorization().nonce)
    }

    /// The proxy the payment is signed for and settled through.
    pub fn proxy(&self) -> Address {
        match self.scheme {
            Scheme::Exact => self.network.permit2.exact_proxy,
            Scheme::Upto => self.network.permit2.upto_proxy,
        }
    }

    /// The gas wallet that must send the settlement (upto), if one must.
    pub fn sender(&self) -> Option<Address> {
        match self.scheme {
            Scheme::Exact => None,
            Scheme::Upto => self.authorization().witness.facilitator,
        }
    }

    /// The EIP-712 hash the payer signed (Permit2's domain, the scheme's witness).
    pub fn digest(&self) -> B256 {
        digest(
            self.network.chain_id.0,
            self.network.permit2.permit2,
            self.authorization(),
            self.scheme,
        )
    }

    /// The proxy's `settle` calldata, carrying `signature` (the payload's, or an ERC-6492 inner one).
    pub fn settle_calldata(&self, signature: &Bytes) -> Bytes {
        let a = self.authorization();
        let permit = PermitTransferFrom {
            permitted: TokenPermissions {
                token: a.permitted.token,
                amount: a.permitted.amount.0,
            },
            nonce: a.nonce,
            deadline: a.deadline,
        };
        match self.scheme {
            Scheme::Exact => IExactPermit2Proxy::settleCall {
                permit,
                owner: a.from,
                witness: IExactPermit2Proxy::Witness {
                    to: a.witness.to,
                    validAfter: a.witness.valid_after,
                },
                signature: signature.clone(),
            }
            .abi_encode()
            .into(),
            Scheme::Upto => IUptoPermit2Proxy::settleCall {
                permit,
                amount: self.charge,
                owner: a.from,
                witness: IUptoPermit2Proxy::Witness {
                    to: a.witness.to,
                    facilitator: a.witness.facilitator.unwrap_or_default(),
                    validAfter: a.witness.valid_after,
                },
                signature: signature.clone(),
            }
            .abi_encode()
            .into(),
        }
    }

    /// `eth_call` of a settle calldata as the settlement will make it.
    fn simulation(&self, target: Address, data: Bytes) -> RpcCall {
        match self.sender() {
            Some(from) => RpcCall::call_from(from, target, data),
            None => RpcCall::call(target, data),
        }
    }
}

/// The EIP-712 hash of a Permit2 authorization for `scheme`'s witness, under Permit2's domain on
/// `chain_id` (what a payer signs and a verifier recovers).
pub fn digest(chain_id: u64, permit2: Address, a: &Permit2Authorization, scheme: Scheme) -> B256 {
    let domain = permit2_domain(chain_id, permit2);
    match scheme {
        Scheme::Exact => exact_eip712::PermitWitnessTransferFrom {
            permitted: exact_eip712::TokenPermissions {
                token: a.permitted.token,
                amount: a.permitted.amount.0,
            },
            spender: a.spender,
            nonce: a.nonce,
            deadline: a.deadline,
            witness: exact_eip712::Witness {
                to: a.witness.to,
                validAfter: a.witness.valid_after,
            },
        }
        .eip712_signing_hash(&domain),
        Scheme::Upto => upto_eip712::PermitWitnessTransferFrom {
            permitted: upto_eip712::TokenPermissions {
                token: a.permitted.token,
                amount: a.permitted.amount.0,
            },
            spender: a.spender,
            nonce: a.nonce,
            deadline: a.deadline,
            witness: upto_eip712::Witness {
                to: a.witness.to,
                facilitator: a.witness.facilitator.unwrap_or_default(),
                validAfter: a.witness.valid_after,
            },
        }
        .eip712_signing_hash(&domain),
    }
}

/// The Permit2 checks that need no chain, in order: scheme and transfer method, token, spender
/// (the scheme's proxy), recipient, amount, the facilitator an upto witness binds (one of
/// `signers`), the operator's limits, and time.
pub fn check_static<'a>(
    (network, token): (&'a Network, &'a Token),
    request: &'a FacilitatorRequest,
    payload: &'a Permit2Payload,
    rules: &Rules<'_>,
) -> Result<Permit2Payment<'a>, Invalid> {
    let Rules {
        policy,
        signers,
        phase,
        now,
    } = *rules;
    let req = &request.requirements;
    let scheme = if req.scheme == "upto" {
        Scheme::Upto
    } else {
        Scheme::Exact
    };
    super::check_method(req, token, TransferMethod::Permit2)?;
    let a = &payload.permit2_authorization;
    if a.permitted.token != req.asset {
        return Err(Invalid::new(
            Reason::Permit2TokenMismatch,
            format!(
                "the permit is for token {} but the asset is {}",
                a.permitted.token, req.asset
            ),
        ));
    }
    let payment = Permit2Payment {
        network,
        token,
        payload,
        scheme,
        charge: match scheme {
            Scheme::Exact => a.permitted.amount.0,
            Scheme::Upto => req.amount.0,
        },
    };
    if a.spender != payment.proxy() {
        return Err(Invalid::new(
            Reason::Permit2InvalidSpender,
            format!(
                "the permit's spender is {}; {} payments on {} are signed for the proxy {}",
                a.spender,
                req.scheme,
                network.chain_id,
                payment.proxy()
            ),
        ));
    }
    if a.witness.to != req.pay_to {
        return Err(Invalid::new(
            Reason::Permit2RecipientMismatch,
            format!(
                "the witness pays {} but payTo is {}",
                a.witness.to, req.pay_to
            ),
        ));
    }
    let permitted = a.permitted.amount.0;
    match (scheme, phase) {
        (Scheme::Exact, _) if permitted != req.amount.0 => {
            return Err(Invalid::new(
                Reason::Permit2AmountMismatch,
                format!(
                    "the permitted amount {permitted} must equal the required amount {}",
                    req.amount
                ),
            ));
        }
        (Scheme::Upto, Phase::Verify) if permitted < req.amount.0 => {
            return Err(Invalid::new(
                Reason::Permit2AmountMismatch,
                format!(
                    "the permitted maximum {permitted} is below the {} asked",
                    req.amount
                ),
            ));
        }
        (Scheme::Upto, Phase::Settle) if req.amount.0 > permitted => {
            return Err(Invalid::new(
                Reason::UptoSettlementExceedsAmount,
                format!(
                    "cannot charge {}: the payer authorised at most {permitted}",
                    req.amount
                ),
            ));
        }
        _ => {}
    }
    if scheme == Scheme::Upto {
        match a.witness.facilitator {
            Some(f) if signers.contains(&f) => {}
            other => {
                return Err(Invalid::new(
                    Reason::UptoFacilitatorMismatch,
                    format!(
                        "the witness binds facilitator {}; this facilitator settles upto from {}",
                        other.map_or_else(|| "none".to_owned(), |f| f.to_string()),
                        signers
                            .first()
                            .map_or_else(|| "no wallet".to_owned(), |s| s.to_string())
                    ),
                ));
            }
        }
    }
    super::check_limits(token, req.pay_to, permitted, policy)?;
    super::check_window(
        super::Window {
            after: (
                "witness.validAfter",
                a.witness.valid_after,
                Reason::Permit2NotYetValid,
            ),
            before: ("deadline", a.deadline, Reason::Permit2DeadlineExpired),
        },
        policy,
        now,
    )?;
    Ok(payment)
}

/// The signature by class, then one batched round trip: the payer's code, Permit2's and the
/// proxy's code, the nonce bitmap word, the allowance to Permit2, the balance, and the simulated
/// settlement. Returns how to settle the payment.
pub async fn verify_on_chain(
    payment: Permit2Payment<'_>,
    policy: &ExactPolicy,
) -> Result<SettlementCall, VerifyError> {
    let a = payment.authorization();
    let digest = payment.digest();
    let class = signature::classify(&payment.payload.signature)
        .map_err(|e| Invalid::new(Reason::Permit2InvalidSignature, e.to_string()))?;
    let (deploy, inner, recovered) = match class {
        SignatureClass::Ecdsa(sig) => {
            let recovered = signature::recover(&sig, digest) == Some(a.from);
            (None, payment.payload.signature.clone(), recovered)
        }
        SignatureClass::Contract(bytes) => (None, bytes, false),
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
            (Some((factory, factory_calldata)), inner, false)
        }
    };
    let settle = payment.settle_calldata(&inner);
    let target = payment.proxy();
    let simulation = match &deploy {
        None => payment.simulation(target, settle.clone()),
        Some((factory, data)) => RpcCall::call(
            MULTICALL3,
            IMulticall3::aggregate3Call {
                calls: vec![
                    IMulticall3::Call3 {
                        target: *factory,
                        allowFailure: true,
                        callData: data.clone(),
                    },
                    IMulticall3::Call3 {
                        target,
                        allowFailure: false,
                        callData: settle.clone(),
                    },
                ],
            }
            .abi_encode(),
        ),
    };
    let permit2 = payment.network.permit2.permit2;
    let [nonce_word, allowance, balance] = reads(payment, permit2);
    let mut calls = vec![
        RpcCall::get_code(a.from),
        nonce_word,
        allowance,
        balance,
        simulation,
        RpcCall::get_code(permit2),
        RpcCall::get_code(target),
    ];
    let erc1271 = deploy.is_none() && !recovered;
    if erc1271 {
        calls.push(RpcCall::call(
            a.from,
            IErc1271::isValidSignatureCall {
                hash: digest,
                signature: inner.clone(),
            }
            .abi_encode(),
        ));
    }
    let token_check = !payment.token.known_deployed();
    if token_check {
        calls.push(RpcCall::get_code(payment.token.address));
    }
    let results = payment.network.rpc.batch(&calls).await?;
    let code = |i: usize| -> Result<Bytes, RpcError> {
        match results.get(i) {
            Some(Ok(v)) => hex_result(v),
            _ => Err(RpcError::Malformed("eth_getCode failed".into())),
        }
    };
    if token_check {
        if code(results.len() - 1)?.is_empty() {
            return Err(Invalid::new(
                Reason::AssetNotDeployed,
                format!("no contract at asset {}", payment.token.address),
            )
            .into());
        }
        payment.token.mark_deployed();
    }
    for (i, what) in [(5, "Permit2"), (6, "the x402 Permit2 proxy")] {
        if code(i)?.is_empty() {
            return Err(Invalid::new(
                Reason::SimulationFailed,
                format!(
                    "{what} has no code at {} on {}: Permit2 payments cannot settle here",
                    if i == 5 { permit2 } else { target },
                    payment.network.chain_id
                ),
            )
            .into());
        }
    }
    let payer_has_code = !code(0)?.is_empty();
    if erc1271 {
        let accepted = matches!(results.get(7), Some(Ok(v)) if hex_result(v).is_ok_and(|b| b.len() >= 4 && b[..4] == ERC1271_MAGIC));
        if !payer_has_code || !accepted {
            let message = if payer_has_code {
                "the payer's ERC-1271 isValidSignature refused the Permit2 signature".to_owned()
            } else {
                "the Permit2 signature does not recover to the payer".to_owned()
            };
            return Err(Invalid::new(Reason::Permit2InvalidSignature, message).into());
        }
    }
    let facts = Facts::read(payment, &results[1..4]);
    let simulated = match &results[4] {
        Ok(v) => match &deploy {
            None => Ok(()),
            Some(_) => multicall_outcome(v)?,
        },
        Err(e) => Err(e.reason()),
    };
    match simulated {
        Ok(()) => Ok(SettlementCall {
            deploy,
            transfer: settle,
        }),
        Err(revert) => Err(facts.verdict(payment, &revert).into()),
    }
}

/// The second call of a deploy-then-settle aggregate: `Err(revert)` when it failed.
fn multicall_outcome(v: &Value) -> Result<Result<(), String>, RpcError> {
    let bytes = hex_result(v)?;
    let items = IMulticall3::aggregate3Call::abi_decode_returns(&bytes)
        .map_err(|e| RpcError::Malformed(format!("aggregate3 answer: {e}")))?;
    Ok(match items.get(1) {
        Some(r) if r.success => Ok(()),
        Some(r) => Err(alloy::sol_types::decode_revert_reason(&r.returnData)
            .unwrap_or_else(|| "reverted".into())),
        None => Err("the ERC-6492 factory call reverted".into()),
    })
}

/// The reads that explain a refusal: the nonce bitmap word, the allowance to Permit2, the balance.
fn reads(payment: Permit2Payment<'_>, permit2: Address) -> [RpcCall; 3] {
    let a = payment.authorization();
    [
        RpcCall::call(
            permit2,
            IPermit2::nonceBitmapCall {
                owner: a.from,
                wordPos: a.nonce >> 8,
            }
            .abi_encode(),
        ),
        RpcCall::call(
            payment.token.address,
            IErc20::allowanceCall {
                owner: a.from,
                spender: permit2,
            }
            .abi_encode(),
        ),
        RpcCall::call(
            payment.token.address,
            IErc20::balanceOfCall { account: a.from }.abi_encode(),
        ),
    ]
}

/// What the chain says of a Permit2 payment, read in one batch.
struct Facts {
    nonce_used: Option<bool>,
    allowance: Option<U256>,
    balance: Option<U256>,
}

impl Facts {
    fn read(payment: Permit2Payment<'_>, results: &[Result<Value, CallError>]) -> Facts {
        let word = |i: usize| {
            results
                .get(i)
                .and_then(|r| r.as_ref().ok())
                .and_then(|v| hex_result(v).ok())
                .and_then(|b| U256::try_from_be_slice(&b))
        };
        let bit =
            U256::from(1u8) << (payment.authorization().nonce & U256::from(0xffu8)).to::<usize>();
        Facts {
            nonce_used: word(0).map(|w| w & bit != U256::ZERO),
            allowance: word(1),
            balance: word(2),
        }
    }

    /// The reason a settlement would fail, most specific first.
    fn verdict(&self, payment: Permit2Payment<'_>, revert: &str) -> Invalid {
        let a = payment.authorization();
        let need = payment.charge;
        if self.nonce_used == Some(true) {
            return Invalid::new(
                Reason::Permit2NonceUsed,
                format!(
                    "Permit2 nonce {} of {} is already used or invalidated",
                    a.nonce, a.from
                ),
            );
        }
        if self.allowance.is_some_and(|x| x < need) {
            return Invalid::new(
                Reason::Permit2AllowanceRequired,
                format!(
                    "{} allows Permit2 {} of {}; {need} is needed: approve Permit2 ({}) once",
                    a.from,
                    self.allowance.unwrap_or_default(),
                    payment.token.symbol,
                    payment.network.permit2.permit2
                ),
            );
        }
        if self.balance.is_some_and(|b| b < need) {
            return Invalid::new(
                Reason::InsufficientBalance,
                format!(
                    "payer balance {} is below {need}",
                    self.balance.unwrap_or_default()
                ),
            );
        }
        if names_error(
            revert,
            IPermit2::SignatureExpired::SELECTOR,
            "SignatureExpired",
        ) {
            return Invalid::new(Reason::Permit2DeadlineExpired, revert.to_owned());
        }
        if names_error(revert, IPermit2::InvalidNonce::SELECTOR, "InvalidNonce") {
            return Invalid::new(Reason::Permit2NonceUsed, revert.to_owned());
        }
        let signature_errors = [
            (IPermit2::InvalidSigner::SELECTOR, "InvalidSigner"),
            (IPermit2::InvalidSignature::SELECTOR, "InvalidSignature"),
            (
                IPermit2::InvalidContractSignature::SELECTOR,
                "InvalidContractSignature",
            ),
            (
                IPermit2::InvalidSignatureLength::SELECTOR,
                "InvalidSignatureLength",
            ),
        ];
        if signature_errors
            .iter()
            .any(|(selector, name)| names_error(revert, *selector, name))
        {
            return Invalid::new(Reason::Permit2InvalidSignature, revert.to_owned());
        }
        Invalid::new(
            Reason::SimulationFailed,
            format!("simulation of the Permit2 proxy's settle reverted: {revert}"),
        )
    }
}

/// Whether a revert text names a custom error (nodes print either its name or its selector).
fn names_error(revert: &str, selector: [u8; 4], name: &str) -> bool {
    revert.contains(name) || revert.contains(&alloy::hex::encode(selector))
}

/// Turns a failed simulation at batch time into a precise reason (one batched read).
pub async fn diagnose(payment: Permit2Payment<'_>, revert: &str) -> Result<Invalid, RpcError> {
    let results = payment
        .network
        .rpc
        .batch(&reads(payment, payment.network.permit2.permit2))
        .await?;
    Ok(Facts::read(payment, &results).verdict(payment, revert))
}
