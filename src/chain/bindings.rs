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
