//! ABI of the contracts we call. Declared here (not generated from artifacts) so the selectors are
//! visible and checked by tests against the facts we rely on.

alloy::sol! {
    /// FiatToken V2_2's EIP-3009 surface, plus the reads used for diagnosis.
    interface IEip3009Token {
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function name() external view returns (string);
        function version() external view returns (string);
        function balanceOf(address account) external view returns (uint256);
        function transfer(address to, uint256 value) external returns (bool);
        function paused() external view returns (bool);
        function isBlacklisted(address account) external view returns (bool);
        function DOMAIN_SEPARATOR() external view returns (bytes32);

        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
        event Transfer(address indexed from, address indexed to, uint256 value);
    }

    /// ERC-1271.
    interface IErc1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4 magicValue);
    }

    /// Multicall3 (at the same address on every chain we serve).
    interface IMulticall3 {
        struct Call3 {
            address target;
            bool allowFailure;
            bytes callData;
        }
        struct Result {
            bool success;
            bytes returnData;
        }
        function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData);
    }
}

alloy::sol! {
    /// Permit2's `SignatureTransfer` structs (Uniswap's canonical ABI), shared by the proxies.
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

    /// The part of Permit2 x402 uses: witness transfers and the unordered nonce bitmap.
    interface IPermit2 {
        function permitWitnessTransferFrom(PermitTransferFrom permit, SignatureTransferDetails transferDetails, address owner, bytes32 witness, string witnessTypeString, bytes signature) external;
        function nonceBitmap(address owner, uint256 wordPos) external view returns (uint256);
        function invalidateUnorderedNonces(uint256 wordPos, uint256 mask) external;
        function DOMAIN_SEPARATOR() external view returns (bytes32);

        error InvalidNonce();
        error SignatureExpired(uint256 signatureDeadline);
        error InvalidAmount(uint256 maxAmount);
        error InvalidSigner();
        error InvalidSignature();
        error InvalidSignatureLength();
        error InvalidContractSignature();
    }

    /// The x402 exact Permit2 proxy: moves the whole permitted amount to `witness.to`.
    interface IExactPermit2Proxy {
        struct Witness {
            address to;
            uint256 validAfter;
        }
        function settle(PermitTransferFrom permit, address owner, Witness witness, bytes signature) external;
    }

    /// The x402 upto Permit2 proxy: moves `amount` (at most the permitted amount) to `witness.to`,
    /// callable only by `witness.facilitator`.
    interface IUptoPermit2Proxy {
        struct Witness {
            address to;
            address facilitator;
            uint256 validAfter;
        }
        function settle(PermitTransferFrom permit, uint256 amount, address owner, Witness witness, bytes signature) external;
    }

    /// A plain ERC-20: what the Permit2 path reads of any token.
    interface IErc20 {
        function balanceOf(address account) external view returns (uint256);
        function allowance(address owner, address spender) external view returns (uint256);
        function approve(address spender, uint256 amount) external returns (bool);
        function decimals() external view returns (uint8);
    }
}

/// Permit2's canonical address (the same on every chain; x402-facts §10).
pub const PERMIT2: alloy::primitives::Address =
    alloy::primitives::address!("000000000022D473030F116dDEE9F6B43aC78BA3");

/// The x402 exact Permit2 proxy's address in the x402 SDKs (`x402ExactPermit2ProxyAddress` of
/// `@x402/evm` and the Go SDK's `X402ExactPermit2ProxyAddress`, deployed by CREATE2 on Base and
/// Base Sepolia). Configurable per network, because the SDKs have moved it before.
pub const EXACT_PERMIT2_PROXY: alloy::primitives::Address =
    alloy::primitives::address!("402085c248EeA27D92E8b30b2C58ed07f9E20001");

/// The x402 upto Permit2 proxy's address in the same SDK constants (`X402UptoPermit2ProxyAddress`).
pub const UPTO_PERMIT2_PROXY: alloy::primitives::Address =
    alloy::primitives::address!("4020A4f3b7b90ccA423B9fabCc0CE57C6C240002");

/// The witness type strings the proxies pass to Permit2 (`Witness` sorts after `TokenPermissions`).
pub const EXACT_WITNESS_TYPE_STRING: &str = "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,uint256 validAfter)";
pub const UPTO_WITNESS_TYPE_STRING: &str = "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,address facilitator,uint256 validAfter)";

/// The EIP-712 types a payer signs for the exact Permit2 proxy (type names are part of the hash,
/// hence a module per witness shape).
pub mod exact_eip712 {
    alloy::sol! {
        #[derive(Debug)]
        struct TokenPermissions {
            address token;
            uint256 amount;
        }
        #[derive(Debug)]
        struct Witness {
            address to;
            uint256 validAfter;
        }
        #[derive(Debug)]
        struct PermitWitnessTransferFrom {
            TokenPermissions permitted;
            address spender;
            uint256 nonce;
            uint256 deadline;
            Witness witness;
        }
    }
}

/// The EIP-712 types a payer signs for the upto Permit2 proxy.
pub mod upto_eip712 {
    alloy::sol! {
        #[derive(Debug)]
        struct TokenPermissions {
            address token;
            uint256 amount;
        }
        #[derive(Debug)]
        struct Witness {
            address to;
            address facilitator;
            uint256 validAfter;
        }
        #[derive(Debug)]
        struct PermitWitnessTransferFrom {
            TokenPermissions permitted;
            address spender;
            uint256 nonce;
            uint256 deadline;
            Witness witness;
        }
    }
}

/// Permit2's EIP-712 domain on a chain (name only, no version: Permit2's own choice).
pub fn permit2_domain(
    chain_id: u64,
    permit2: alloy::primitives::Address,
) -> alloy::sol_types::Eip712Domain {
    alloy::sol_types::eip712_domain! {
        name: "Permit2",
        chain_id: chain_id,
        verifying_contract: permit2,
    }
}

/// Multicall3's canonical address.
pub const MULTICALL3: alloy::primitives::Address =
    alloy::primitives::address!("cA11bde05977b3631167028862bE2a173976CA11");

/// ERC-1271 success value.
pub const ERC1271_MAGIC: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::{SolCall, SolEvent};

    #[test]
    fn permit2_witness_types_match_the_proxies() {
        use alloy::sol_types::SolStruct;
        let exact = exact_eip712::PermitWitnessTransferFrom::eip712_encode_type();
        assert!(exact.ends_with(EXACT_WITNESS_TYPE_STRING.trim_start_matches("Witness witness)")));
        assert_eq!(
            exact,
            format!(
                "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,{EXACT_WITNESS_TYPE_STRING}"
            )
        );
        let upto = upto_eip712::PermitWitnessTransferFrom::eip712_encode_type();
        assert_eq!(
            upto,
            format!(
                "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,{UPTO_WITNESS_TYPE_STRING}"
            )
        );
    }

    #[test]
    fn selectors_match_fiat_token() {
        assert_eq!(
            IEip3009Token::transferWithAuthorization_0Call::SELECTOR,
            [0xe3, 0xee, 0x16, 0x0e]
        );
        assert_eq!(
            IEip3009Token::transferWithAuthorization_1Call::SELECTOR,
            [0xcf, 0x09, 0x29, 0x95]
        );
        assert_eq!(
            IEip3009Token::authorizationStateCall::SELECTOR,
            [0xe9, 0x4a, 0x01, 0x02]
        );
        assert_eq!(
            IMulticall3::aggregate3Call::SELECTOR,
            [0x82, 0xad, 0x56, 0xcb]
        );
        assert_eq!(
            IEip3009Token::AuthorizationUsed::SIGNATURE_HASH,
            alloy::primitives::b256!(
                "98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5"
            )
        );
    }
}
