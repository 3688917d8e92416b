//! Our Permit2 and the x402 Permit2 proxies on a real anvil, called directly (no facilitator): a
//! payer signs with alloy exactly as an x402 client would, a funded account submits, and the
//! balances, the nonce bitmap and the revert reasons say what happened.

mod common;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::Provider;
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Revert, SolCall, SolError, SolEvent, SolStruct};
use common::{CHAIN_ID, now};
use x402d::chain::bindings::{
    EXACT_PERMIT2_PROXY, EXACT_WITNESS_TYPE_STRING, IExactPermit2Proxy, IPermit2,
    IUptoPermit2Proxy, PERMIT2, PermitTransferFrom, TokenPermissions, UPTO_PERMIT2_PROXY,
    UPTO_WITNESS_TYPE_STRING, exact_eip712, permit2_domain, upto_eip712,
};
use x402d::dev::chain::DevChain;

alloy::sol! {
    /// What the tests read of the proxies besides `settle`.
    interface IProxy {
        function PERMIT2() external view returns (address);
        function WITNESS_TYPEHASH() external view returns (bytes32);
        function WITNESS_TYPE_STRING() external view returns (string);
        event Settled();
        error InvalidOwner();
        error InvalidDestination();
        error PaymentTooEarly();
        error UnauthorizedFacilitator();
        error AmountExceedsPermitted();
    }

    /// Permit2's nonce invalidation event (not in the bindings: x402 does not use it).
    interface IPermit2Events {
        event UnorderedNonceInvalidation(address indexed owner, uint256 word, uint256 mask);
    }

    /// contracts/src/SmartWallet.sol: its owner makes it call out.
    interface ISmartWallet {
        function execute(address target, uint256 value, bytes data) external returns (bytes);
    }
}

/// Permit2's `permitTransferFrom` (no witness; x402 does not use it, so not in the bindings).
mod plain {
    alloy::sol! {
        struct TokenPermissions {
            address token;
            uint256 amount;
        }
        struct PermitTransferFrom {
            TokenPermissions permitted;
            uint256 nonce;
            uint256 deadline;
        }
        struct SignatureTransferDetails {
            address to;
            uint256 requestedAmount;
        }
        interface IPermit2Plain {
            function permitTransferFrom(PermitTransferFrom permit, SignatureTransferDetails transferDetails, address owner, bytes signature) external;
        }
    }

    /// The message it checks: the spender is whoever calls.
    pub mod eip712 {
        alloy::sol! {
            struct TokenPermissions {
                address token;
                uint256 amount;
            }
            struct PermitTransferFrom {
                TokenPermissions permitted;
                address spender;
                uint256 nonce;
                uint256 deadline;
            }
        }
    }
}

const ETH: u128 = 1_000_000_000_000_000_000;

/// A dev chain, and a funded account that submits (the facilitator's role).
async fn chain() -> (DevChain, PrivateKeySigner) {
    let chain = DevChain::start(CHAIN_ID, None)
        .await
        .expect("anvil must start (run anvil/install.sh)");
    let submitter = PrivateKeySigner::random();
    chain
        .fund_eth(submitter.address(), U256::from(ETH))
        .await
        .unwrap();
    (chain, submitter)
}

/// A payer holding `amount` of `token`, with Permit2 approved for it.
async fn payer(chain: &DevChain, token: Address, amount: u64) -> PrivateKeySigner {
    let p = PrivateKeySigner::random();
    chain
        .fund_token(token, p.address(), U256::from(amount))
        .await
        .unwrap();
    chain.approve_permit2(&p, token).await.unwrap();
    p
}

fn permit(token: Address, amount: u64, nonce: U256, deadline: u64) -> PermitTransferFrom {
    PermitTransferFrom {
        permitted: TokenPermissions {
            token,
            amount: U256::from(amount),
        },
        nonce,
        deadline: U256::from(deadline),
    }
}

fn sign(signer: &PrivateKeySigner, msg: &impl SolStruct) -> Bytes {
    let digest = msg.eip712_signing_hash(&permit2_domain(CHAIN_ID, PERMIT2));
    signer.sign_hash_sync(&digest).unwrap().as_bytes().into()
}

/// What a payer signs for the exact proxy (the spender) to settle `p` to `w`.
fn exact_message(
    p: &PermitTransferFrom,
    w: &IExactPermit2Proxy::Witness,
) -> exact_eip712::PermitWitnessTransferFrom {
    exact_eip712::PermitWitnessTransferFrom {
        permitted: exact_eip712::TokenPermissions {
            token: p.permitted.token,
            amount: p.permitted.amount,
        },
        spender: EXACT_PERMIT2_PROXY,
        nonce: p.nonce,
        deadline: p.deadline,
        witness: exact_eip712::Witness {
            to: w.to,
            validAfter: w.validAfter,
        },
    }
}

fn sign_exact(
    signer: &PrivateKeySigner,
    p: &PermitTransferFrom,
    w: &IExactPermit2Proxy::Witness,
) -> Bytes {
    sign(signer, &exact_message(p, w))
}

/// The payer's signature for the upto proxy (spender) over `p` and `w`.
fn sign_upto(
    signer: &PrivateKeySigner,
    p: &PermitTransferFrom,
    w: &IUptoPermit2Proxy::Witness,
) -> Bytes {
    sign(
        signer,
        &upto_eip712::PermitWitnessTransferFrom {
            permitted: upto_eip712::TokenPermissions {
                token: p.permitted.token,
                amount: p.permitted.amount,
            },
            spender: UPTO_PERMIT2_PROXY,
            nonce: p.nonce,
            deadline: p.deadline,
            witness: upto_eip712::Witness {
                to: w.to,
                facilitator: w.facilitator,
                validAfter: w.validAfter,
            },
        },
    )
}

fn exact_settle(
    p: &PermitTransferFrom,
    owner: Address,
    w: &IExactPermit2Proxy::Witness,
    signature: Bytes,
) -> Vec<u8> {
    IExactPermit2Proxy::settleCall {
        permit: p.clone(),
        owner,
        witness: w.clone(),
        signature,
    }
    .abi_encode()
}

fn upto_settle(
    p: &PermitTransferFrom,
    amount: u64,
    owner: Address,
    w: &IUptoPermit2Proxy::Witness,
    signature: Bytes,
) -> Vec<u8> {
    IUptoPermit2Proxy::settleCall {
        permit: p.clone(),
        amount: U256::from(amount),
        owner,
        witness: w.clone(),
        signature,
    }
    .abi_encode()
}

/// Sends `data` to `to` from `from`: the mined receipt when a simulation succeeds, else the revert
/// data (nothing is sent then).
async fn submit(
    chain: &DevChain,
    from: &PrivateKeySigner,
    to: Address,
    data: Vec<u8>,
) -> Result<TransactionReceipt, Bytes> {
    let tx = TransactionRequest::default()
        .with_from(from.address())
        .with_to(to)
        .with_input(data);
    if let Err(e) = chain.provider().call(tx.clone()).await {
        return Err(e
            .as_error_resp()
            .and_then(|p| p.as_revert_data())
            .unwrap_or_else(|| panic!("not a revert: {e}")));
    }
    let receipt = chain.send_from(from, tx).await.unwrap();
    assert!(receipt.status(), "simulated fine, reverted when mined");
    Ok(receipt)
}

async fn upto(
    chain: &DevChain,
    from: &PrivateKeySigner,
    data: Vec<u8>,
) -> Result<TransactionReceipt, Bytes> {
    submit(chain, from, UPTO_PERMIT2_PROXY, data).await
}

#[track_caller]
fn assert_reverts<E: SolError>(outcome: Result<TransactionReceipt, Bytes>, expected: E) {
    match outcome {
        Ok(r) => panic!(
            "expected {} but it was mined: {}",
            E::SIGNATURE,
            r.transaction_hash
        ),
        Err(data) => assert_eq!(
            data,
            Bytes::from(expected.abi_encode()),
            "expected {}",
            E::SIGNATURE
        ),
    }
}

async fn balance(chain: &DevChain, token: Address, who: Address) -> U256 {
    chain.balance_of(token, who).await.unwrap()
}

async fn nonce_word(chain: &DevChain, owner: Address, nonce: U256) -> U256 {
    let call = IPermit2::nonceBitmapCall {
        owner,
        wordPos: nonce >> 8,
    };
    let out = chain
        .provider()
        .call(
            TransactionRequest::default()
                .with_to(PERMIT2)
                .with_input(call.abi_encode()),
        )
        .await
        .unwrap();
    IPermit2::nonceBitmapCall::abi_decode_returns(&out).unwrap()
}

/// The bit of `nonce` in its bitmap word.
fn nonce_bit(nonce: U256) -> U256 {
    U256::from(1) << (nonce & U256::from(0xff)).to::<usize>()
}

async fn view<C: SolCall>(chain: &DevChain, to: Address, call: C) -> C::Return {
    let out = chain
        .provider()
        .call(
            TransactionRequest::default()
                .with_to(to)
                .with_input(call.abi_encode()),
        )
        .await
        .unwrap();
    C::abi_decode_returns(&out).unwrap()
}

fn emitted<E: SolEvent>(receipt: &TransactionReceipt, from: Address) -> bool {
    receipt
        .inner
        .logs()
        .iter()
        .any(|l| l.address() == from && l.topic0() == Some(&E::SIGNATURE_HASH))
}

#[tokio::test]
async fn domain_separator_and_proxy_constants_match_the_bindings() {
    let (chain, _) = chain().await;
    let on_chain = view(&chain, PERMIT2, IPermit2::DOMAIN_SEPARATORCall {}).await;
    assert_eq!(on_chain, permit2_domain(CHAIN_ID, PERMIT2).separator());

    let exact_witness = exact_eip712::Witness {
        to: Address::ZERO,
        validAfter: U256::ZERO,
    };
    let upto_witness = upto_eip712::Witness {
        to: Address::ZERO,
        facilitator: Address::ZERO,
        validAfter: U256::ZERO,
    };
    for (proxy, type_string, typehash) in [
        (
            EXACT_PERMIT2_PROXY,
            EXACT_WITNESS_TYPE_STRING,
            exact_witness.eip712_type_hash(),
        ),
        (
            UPTO_PERMIT2_PROXY,
            UPTO_WITNESS_TYPE_STRING,
            upto_witness.eip712_type_hash(),
        ),
    ] {
        assert_eq!(view(&chain, proxy, IProxy::PERMIT2Call {}).await, PERMIT2);
        assert_eq!(
            view(&chain, proxy, IProxy::WITNESS_TYPE_STRINGCall {}).await,
            type_string
        );
        assert_eq!(
            view(&chain, proxy, IProxy::WITNESS_TYPEHASHCall {}).await,
            typehash
        );
    }
}

/// The exact proxy moves the whole permitted amount once, of a plain ERC-20 and of the USDC (which
/// also takes Permit2), and spends the nonce's bit; the same signature again is InvalidNonce.
#[tokio::test]
async fn exact_pays_the_permitted_amount_once() {
    let (chain, facilitator) = chain().await;
    for token in [chain.plain_token, chain.usdc] {
        let payer = payer(&chain, token, 1_000_000).await;
        let pay_to = Address::random();
        // Word 0x123456, bit 0x78: both halves of the nonce matter.
        let nonce = U256::from(0x1234_5678u64);
        let p = permit(token, 250_000, nonce, now() + 600);
        let w = IExactPermit2Proxy::Witness {
            to: pay_to,
            validAfter: U256::ZERO,
        };
        let sig = sign_exact(&payer, &p, &w);
        let data = exact_settle(&p, payer.address(), &w, sig);

        assert_eq!(nonce_word(&chain, payer.address(), nonce).await, U256::ZERO);
        let receipt = submit(&chain, &facilitator, EXACT_PERMIT2_PROXY, data.clone())
            .await
            .unwrap();
        assert!(emitted::<IProxy::Settled>(&receipt, EXACT_PERMIT2_PROXY));
        assert_eq!(
            balance(&chain, token, pay_to).await,
            U256::from(250_000),
            "{token}"
        );
        assert_eq!(
            balance(&chain, token, payer.address()).await,
            U256::from(750_000)
        );
        assert_eq!(
            nonce_word(&chain, payer.address(), nonce).await,
            nonce_bit(nonce),
            "exactly the nonce's bit is set"
        );

        assert_reverts(
            submit(&chain, &facilitator, EXACT_PERMIT2_PROXY, data).await,
            IPermit2::InvalidNonce {},
        );
        assert_eq!(balance(&chain, token, pay_to).await, U256::from(250_000));
    }
}

/// Everything the payer signed is bound: another recipient or amount, an expired deadline, an
/// early payment, another signer, a malformed signature or a missing approval move nothing.
#[tokio::test]
async fn exact_refuses_what_the_payer_did_not_sign() {
    let (chain, facilitator) = chain().await;
    let token = chain.plain_token;
    let payer = payer(&chain, token, 1_000_000).await;
    let pay_to = Address::random();
    let thief = Address::random();
    let w = IExactPermit2Proxy::Witness {
        to: pay_to,
        validAfter: U256::ZERO,
    };
    let settle = |data| submit(&chain, &facilitator, EXACT_PERMIT2_PROXY, data);

    // The recipient changed after signing.
    let p = permit(token, 100_000, U256::from(1), now() + 600);
    let sig = sign_exact(&payer, &p, &w);
    let redirected = IExactPermit2Proxy::Witness {
        to: thief,
        ..w.clone()
    };
    assert_reverts(
        settle(exact_settle(&p, payer.address(), &redirected, sig.clone())).await,
        IPermit2::InvalidSigner {},
    );
    // The amount changed after signing.
    let more = permit(token, 100_001, U256::from(1), now() + 600);
    assert_reverts(
        settle(exact_settle(&more, payer.address(), &w, sig.clone())).await,
        IPermit2::InvalidSigner {},
    );
    // Someone else's payment claimed as the payer's.
    let other = PrivateKeySigner::random();
    assert_reverts(
        settle(exact_settle(
            &p,
            payer.address(),
            &w,
            sign_exact(&other, &p, &w),
        ))
        .await,
        IPermit2::InvalidSigner {},
    );
    // A signature of the wrong length.
    assert_reverts(
        settle(exact_settle(&p, payer.address(), &w, sig.slice(..63))).await,
        IPermit2::InvalidSignatureLength {},
    );
    // Zero owner and zero recipient are refused by the proxy itself.
    assert_reverts(
        settle(exact_settle(&p, Address::ZERO, &w, sig.clone())).await,
        IProxy::InvalidOwner {},
    );
    let nowhere = IExactPermit2Proxy::Witness {
        to: Address::ZERO,
        ..w.clone()
    };
    assert_reverts(
        settle(exact_settle(&p, payer.address(), &nowhere, sig.clone())).await,
        IProxy::InvalidDestination {},
    );

    // An expired deadline.
    let deadline = now() - 10;
    let expired = permit(token, 100_000, U256::from(2), deadline);
    assert_reverts(
        settle(exact_settle(
            &expired,
            payer.address(),
            &w,
            sign_exact(&payer, &expired, &w),
        ))
        .await,
        IPermit2::SignatureExpired {
            signatureDeadline: U256::from(deadline),
        },
    );
    // Not valid yet.
    let later = IExactPermit2Proxy::Witness {
        to: pay_to,
        validAfter: U256::from(now() + 3600),
    };
    let p3 = permit(token, 100_000, U256::from(3), now() + 7200);
    assert_reverts(
        settle(exact_settle(
            &p3,
            payer.address(),
            &later,
            sign_exact(&payer, &p3, &later),
        ))
        .await,
        IProxy::PaymentTooEarly {},
    );
    // A payer that never approved Permit2: the token refuses, Permit2 reverts.
    let unapproved = PrivateKeySigner::random();
    chain
        .fund_token(token, unapproved.address(), U256::from(1_000_000))
        .await
        .unwrap();
    let p4 = permit(token, 100_000, U256::from(4), now() + 600);
    assert_reverts(
        settle(exact_settle(
            &p4,
            unapproved.address(),
            &w,
            sign_exact(&unapproved, &p4, &w),
        ))
        .await,
        Revert {
            reason: "TRANSFER_FROM_FAILED".into(),
        },
    );

    // None of it moved money or spent a nonce.
    assert_eq!(balance(&chain, token, pay_to).await, U256::ZERO);
    assert_eq!(balance(&chain, token, thief).await, U256::ZERO);
    assert_eq!(
        balance(&chain, token, payer.address()).await,
        U256::from(1_000_000)
    );
    assert_eq!(
        nonce_word(&chain, payer.address(), U256::from(1)).await,
        U256::ZERO
    );

    // The original, untouched, still pays — also as an EIP-2098 compact signature.
    let digest = exact_message(&p, &w).eip712_signing_hash(&permit2_domain(CHAIN_ID, PERMIT2));
    let compact: Bytes = payer.sign_hash_sync(&digest).unwrap().as_erc2098().into();
    settle(exact_settle(&p, payer.address(), &w, compact))
        .await
        .unwrap();
    assert_eq!(balance(&chain, token, pay_to).await, U256::from(100_000));
}

/// upto: the facilitator named in the witness charges 0, part or all of the maximum, each charge
/// spending its nonce; more than the maximum, or anyone else calling, moves nothing.
#[tokio::test]
async fn upto_charges_zero_part_or_the_maximum_and_never_more() {
    let (chain, facilitator) = chain().await;
    let token = chain.plain_token;
    let payer = payer(&chain, token, 3_000_000).await;
    let pay_to = Address::random();
    let max = 1_000_000;
    let w = IUptoPermit2Proxy::Witness {
        to: pay_to,
        facilitator: facilitator.address(),
        validAfter: U256::ZERO,
    };
    let signed = |nonce: u64| {
        let p = permit(token, max, U256::from(nonce), now() + 600);
        let sig = sign_upto(&payer, &p, &w);
        (p, sig)
    };

    // 0: nothing moves, the nonce is spent, the authorisation cannot be charged again.
    let (p0, s0) = signed(10);
    let receipt = upto(
        &chain,
        &facilitator,
        upto_settle(&p0, 0, payer.address(), &w, s0.clone()),
    )
    .await
    .unwrap();
    assert!(emitted::<IProxy::Settled>(&receipt, UPTO_PERMIT2_PROXY));
    assert_eq!(balance(&chain, token, pay_to).await, U256::ZERO);
    assert_eq!(
        nonce_word(&chain, payer.address(), p0.nonce).await,
        nonce_bit(p0.nonce)
    );
    assert_reverts(
        upto(
            &chain,
            &facilitator,
            upto_settle(&p0, max, payer.address(), &w, s0),
        )
        .await,
        IPermit2::InvalidNonce {},
    );

    // Part of the maximum.
    let (p1, s1) = signed(11);
    upto(
        &chain,
        &facilitator,
        upto_settle(&p1, 400_000, payer.address(), &w, s1),
    )
    .await
    .unwrap();
    assert_eq!(balance(&chain, token, pay_to).await, U256::from(400_000));

    // All of it.
    let (p2, s2) = signed(12);
    upto(
        &chain,
        &facilitator,
        upto_settle(&p2, max, payer.address(), &w, s2),
    )
    .await
    .unwrap();
    assert_eq!(balance(&chain, token, pay_to).await, U256::from(1_400_000));
    assert_eq!(
        balance(&chain, token, payer.address()).await,
        U256::from(1_600_000)
    );

    // One unit more than the maximum.
    let (p3, s3) = signed(13);
    assert_reverts(
        upto(
            &chain,
            &facilitator,
            upto_settle(&p3, max + 1, payer.address(), &w, s3.clone()),
        )
        .await,
        IProxy::AmountExceedsPermitted {},
    );
    // Another caller, with the signature as signed, or naming itself in the witness.
    let intruder = PrivateKeySigner::random();
    chain
        .fund_eth(intruder.address(), U256::from(ETH))
        .await
        .unwrap();
    assert_reverts(
        upto(
            &chain,
            &intruder,
            upto_settle(&p3, max, payer.address(), &w, s3.clone()),
        )
        .await,
        IProxy::UnauthorizedFacilitator {},
    );
    let hijacked = IUptoPermit2Proxy::Witness {
        facilitator: intruder.address(),
        ..w.clone()
    };
    assert_reverts(
        upto(
            &chain,
            &intruder,
            upto_settle(&p3, max, payer.address(), &hijacked, s3.clone()),
        )
        .await,
        IPermit2::InvalidSigner {},
    );
    assert_eq!(balance(&chain, token, pay_to).await, U256::from(1_400_000));
    assert_eq!(
        nonce_word(&chain, payer.address(), p3.nonce).await,
        nonce_bit(p0.nonce) | nonce_bit(p1.nonce) | nonce_bit(p2.nonce),
        "the refused charge left its nonce unspent"
    );
    // And it still pays, once, when the facilitator charges within the maximum.
    upto(
        &chain,
        &facilitator,
        upto_settle(&p3, 1, payer.address(), &w, s3),
    )
    .await
    .unwrap();
    assert_eq!(balance(&chain, token, pay_to).await, U256::from(1_400_001));
}

/// An ERC-1271 smart wallet pays through Permit2: the wallet holds the tokens and the approval,
/// its owner signs; a stranger's signature is InvalidContractSignature.
#[tokio::test]
async fn erc1271_wallet_pays_through_permit2() {
    let (chain, facilitator) = chain().await;
    let token = chain.plain_token;
    let owner = PrivateKeySigner::random();
    let wallet = chain
        .create_wallet(chain.wallet_factory, owner.address(), B256::repeat_byte(7))
        .await
        .unwrap();
    chain
        .fund_token(token, wallet, U256::from(500_000))
        .await
        .unwrap();
    // The wallet approves Permit2 itself, through its owner.
    chain
        .fund_eth(owner.address(), U256::from(ETH))
        .await
        .unwrap();
    let approve = x402d::chain::bindings::IErc20::approveCall {
        spender: PERMIT2,
        amount: U256::MAX,
    };
    let execute = ISmartWallet::executeCall {
        target: token,
        value: U256::ZERO,
        data: approve.abi_encode().into(),
    };
    submit(&chain, &owner, wallet, execute.abi_encode())
        .await
        .unwrap();
    assert_eq!(
        chain.allowance(token, wallet, PERMIT2).await.unwrap(),
        U256::MAX
    );

    let pay_to = Address::random();
    let p = permit(token, 200_000, U256::from(99), now() + 600);
    let w = IExactPermit2Proxy::Witness {
        to: pay_to,
        validAfter: U256::ZERO,
    };
    let stranger = PrivateKeySigner::random();
    assert_reverts(
        submit(
            &chain,
            &facilitator,
            EXACT_PERMIT2_PROXY,
            exact_settle(&p, wallet, &w, sign_exact(&stranger, &p, &w)),
        )
        .await,
        IPermit2::InvalidContractSignature {},
    );
    submit(
        &chain,
        &facilitator,
        EXACT_PERMIT2_PROXY,
        exact_settle(&p, wallet, &w, sign_exact(&owner, &p, &w)),
    )
    .await
    .unwrap();
    assert_eq!(balance(&chain, token, pay_to).await, U256::from(200_000));
    assert_eq!(balance(&chain, token, wallet).await, U256::from(300_000));
}

/// A payer can cancel unused nonces up front; a payment signed with one then cannot settle.
#[tokio::test]
async fn invalidated_nonce_cannot_pay() {
    let (chain, facilitator) = chain().await;
    let token = chain.plain_token;
    let payer = payer(&chain, token, 1_000_000).await;
    let nonce = U256::from(0x0203u64); // word 2, bit 3
    let invalidate = IPermit2::invalidateUnorderedNoncesCall {
        wordPos: U256::from(2),
        mask: U256::from(0b1000),
    };
    let receipt = submit(&chain, &payer, PERMIT2, invalidate.abi_encode())
        .await
        .unwrap();
    assert!(emitted::<IPermit2Events::UnorderedNonceInvalidation>(
        &receipt, PERMIT2
    ));
    assert_eq!(
        nonce_word(&chain, payer.address(), nonce).await,
        nonce_bit(nonce)
    );
    let pay_to = Address::random();
    let p = permit(token, 1_000, nonce, now() + 600);
    let w = IExactPermit2Proxy::Witness {
        to: pay_to,
        validAfter: U256::ZERO,
    };
    assert_reverts(
        submit(
            &chain,
            &facilitator,
            EXACT_PERMIT2_PROXY,
            exact_settle(&p, payer.address(), &w, sign_exact(&payer, &p, &w)),
        )
        .await,
        IPermit2::InvalidNonce {},
    );
    assert_eq!(balance(&chain, token, pay_to).await, U256::ZERO);
}

/// Permit2's plain `permitTransferFrom` (no witness): the spender is whoever calls, and it may take
/// less than permitted but not more.
#[tokio::test]
async fn plain_permit_transfer_from_pays_the_signed_spender() {
    let (chain, spender) = chain().await;
    let token = chain.plain_token;
    let payer = payer(&chain, token, 1_000_000).await;
    let pay_to = Address::random();
    let p = plain::PermitTransferFrom {
        permitted: plain::TokenPermissions {
            token,
            amount: U256::from(300_000),
        },
        nonce: U256::from(5),
        deadline: U256::from(now() + 600),
    };
    let sig = sign(
        &payer,
        &plain::eip712::PermitTransferFrom {
            permitted: plain::eip712::TokenPermissions {
                token,
                amount: p.permitted.amount,
            },
            spender: spender.address(),
            nonce: p.nonce,
            deadline: p.deadline,
        },
    );
    let call = |requested: u64| {
        plain::IPermit2Plain::permitTransferFromCall {
            permit: p.clone(),
            transferDetails: plain::SignatureTransferDetails {
                to: pay_to,
                requestedAmount: U256::from(requested),
            },
            owner: payer.address(),
            signature: sig.clone(),
        }
        .abi_encode()
    };
    assert_reverts(
        submit(&chain, &spender, PERMIT2, call(300_001)).await,
        IPermit2::InvalidAmount {
            maxAmount: U256::from(300_000),
        },
    );
    // Someone else submitting the same signature is not the signed spender.
    let other = PrivateKeySigner::random();
    chain
        .fund_eth(other.address(), U256::from(ETH))
        .await
        .unwrap();
    assert_reverts(
        submit(&chain, &other, PERMIT2, call(300_000)).await,
        IPermit2::InvalidSigner {},
    );
    submit(&chain, &spender, PERMIT2, call(120_000))
        .await
        .unwrap();
    assert_eq!(balance(&chain, token, pay_to).await, U256::from(120_000));
    assert_eq!(
        balance(&chain, token, payer.address()).await,
        U256::from(880_000)
    );
}
