//! Signature classes of an EIP-3009 authorization, and the EIP-712 digest they sign.

use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::signers::Signature;
use alloy::sol_types::{SolStruct, SolValue};

use crate::protocol::wire::Eip3009Authorization;

alloy::sol! {
    /// The EIP-3009 typed-data struct.
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// ERC-6492's magic suffix.
pub const ERC6492_MAGIC: [u8; 32] = [
    0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92,
    0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92, 0x64, 0x92,
];

/// secp256k1n / 2: the largest `s` the token accepts.
const HALF_ORDER: U256 = U256::from_be_bytes(alloy::primitives::hex!(
    "7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0"
));

/// The EIP-712 digest the payer signed, from the token's domain separator.
pub fn authorization_digest(domain_separator: B256, auth: &Eip3009Authorization) -> B256 {
    let message = TransferWithAuthorization {
        from: auth.from,
        to: auth.to,
        value: auth.value.0,
        validAfter: auth.valid_after,
        validBefore: auth.valid_before,
        nonce: auth.nonce,
    };
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(domain_separator.as_slice());
    buf[34..66].copy_from_slice(message.eip712_hash_struct().as_slice());
    keccak256(buf)
}

/// How a signature must be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureClass {
    /// 65 bytes that parse as a strict ECDSA signature (low s, v normalised to 27/28). It may still
    /// belong to a contract wallet: whether the payer has code decides.
    Ecdsa(Signature),
    /// Any other signature: only ERC-1271 can accept it.
    Contract(Bytes),
    /// ERC-6492 wrapper: a wallet not yet deployed, with the factory call that deploys it.
    Counterfactual {
        factory: Address,
        factory_calldata: Bytes,
        inner: Bytes,
    },
}

/// Why a signature is refused before any RPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature s value is not in the lower half order")]
    HighS,
    #[error("signature v value must be 27 or 28")]
    BadV,
    #[error("ERC-6492 wrapper does not decode as (address, bytes, bytes)")]
    BadErc6492Wrapper,
}

/// Classifies a signature by its shape.
pub fn classify(signature: &Bytes) -> Result<SignatureClass, SignatureError> {
    if signature.len() >= 32 && signature[signature.len() - 32..] == ERC6492_MAGIC {
        let body = &signature[..signature.len() - 32];
        let (factory, factory_calldata, inner) = <(Address, Bytes, Bytes)>::abi_decode_params(body)
            .map_err(|_| SignatureError::BadErc6492Wrapper)?;
        return Ok(SignatureClass::Counterfactual {
            factory,
            factory_calldata,
            inner,
        });
    }
    if signature.len() == 65 {
        return parse_ecdsa(signature).map(SignatureClass::Ecdsa);
    }
    Ok(SignatureClass::Contract(signature.clone()))
}

/// Parses r‖s‖v with the token's strict rules; v of 0/1 is normalised to 27/28.
fn parse_ecdsa(bytes: &[u8]) -> Result<Signature, SignatureError> {
    let r = U256::from_be_slice(&bytes[..32]);
    let s = U256::from_be_slice(&bytes[32..64]);
    if s > HALF_ORDER {
        return Err(SignatureError::HighS);
    }
    let parity = match bytes[64] {
        0 | 27 => false,
        1 | 28 => true,
        _ => return Err(SignatureError::BadV),
    };
    Ok(Signature::new(r, s, parity))
}

/// The address an ECDSA signature recovers to over `digest`, if any.
///
/// Uses libsecp256k1 rather than the pure-Rust k256 that alloy signs with: recovery is the one
/// CPU-heavy step of a verification, and libsecp256k1 does it about 4x faster.
pub fn recover(signature: &Signature, digest: B256) -> Option<Address> {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&signature.r().to_be_bytes::<32>());
    compact[32..].copy_from_slice(&signature.s().to_be_bytes::<32>());
    let id = RecoveryId::try_from(i32::from(signature.v())).ok()?;
    let recoverable = RecoverableSignature::from_compact(&compact, id).ok()?;
    let key = recoverable
        .recover(secp256k1::Message::from_digest(digest.0))
        .ok()?;
    Some(Address::from_raw_public_key(
        &key.serialize_uncompressed()[1..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;

    #[test]
    fn ecdsa_round_trip_and_strictness() {
        let signer = PrivateKeySigner::random();
        let digest = B256::repeat_byte(7);
        let sig = signer.sign_hash_sync(&digest).unwrap();
        let bytes: Bytes = sig.as_bytes().to_vec().into();
        let SignatureClass::Ecdsa(parsed) = classify(&bytes).unwrap() else {
            panic!("not ecdsa")
        };
        assert_eq!(recover(&parsed, digest), Some(signer.address()));

        let mut v01 = bytes.to_vec();
        v01[64] -= 27;
        let SignatureClass::Ecdsa(parsed) = classify(&v01.into()).unwrap() else {
            panic!()
        };
        assert_eq!(recover(&parsed, digest), Some(signer.address()));

        let mut bad_v = bytes.to_vec();
        bad_v[64] = 29;
        assert_eq!(classify(&bad_v.into()), Err(SignatureError::BadV));

        // The same signature with s' = n - s is valid ECDSA but malleable: refused.
        let n = U256::from_be_bytes(alloy::primitives::hex!(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141"
        ));
        let mut high = bytes.to_vec();
        let s = U256::from_be_slice(&high[32..64]);
        high[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
        assert_eq!(classify(&high.into()), Err(SignatureError::HighS));
    }

    #[test]
    fn erc6492_wrapper_is_recognised() {
        let factory = Address::repeat_byte(0xfa);
        let mut wrapped = (
            factory,
            Bytes::from(vec![1, 2, 3]),
            Bytes::from(vec![9; 65]),
        )
            .abi_encode_params();
        wrapped.extend_from_slice(&ERC6492_MAGIC);
        match classify(&wrapped.into()).unwrap() {
            SignatureClass::Counterfactual {
                factory: f,
                factory_calldata,
                inner,
            } => {
                assert_eq!(f, factory);
                assert_eq!(factory_calldata.as_ref(), &[1, 2, 3]);
                assert_eq!(inner.len(), 65);
            }
            other => panic!("{other:?}"),
        }
    }
}
