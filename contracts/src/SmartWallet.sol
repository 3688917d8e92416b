// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/**
 * @title SmartWallet
 * @notice Minimal ERC-1271 smart-contract wallet for x402d's tests.
 * A signature is valid iff it is a 65-byte r||s||v ECDSA signature (v 27/28, low s) of the RAW
 * hash (no "\x19Ethereum Signed Message" prefix) made by the owner. isValidSignature never reverts.
 */
contract SmartWallet {
    /// bytes4(keccak256("isValidSignature(bytes32,bytes)"))
    bytes4 internal constant MAGIC_VALUE = 0x1626ba7e;
    bytes4 internal constant INVALID_VALUE = 0xffffffff;
    uint256 internal constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    address public immutable owner;

    event Executed(address indexed target, uint256 value, bytes data);

    constructor(address owner_) {
        owner = owner_;
    }

    receive() external payable {}

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) return INVALID_VALUE;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > HALF_ORDER) return INVALID_VALUE;
        if (v != 27 && v != 28) return INVALID_VALUE;
        address signer = ecrecover(hash, v, r, s);
        if (signer == address(0) || signer != owner) return INVALID_VALUE;
        return MAGIC_VALUE;
    }

    /// @notice Call `target` with `value` wei and `data`; only the owner. Bubbles up reverts.
    function execute(address target, uint256 value, bytes calldata data) external returns (bytes memory result) {
        require(msg.sender == owner, "SmartWallet: caller is not the owner");
        bool ok;
        (ok, result) = target.call{value: value}(data);
        if (!ok) {
            assembly {
                revert(add(result, 0x20), mload(result))
            }
        }
        emit Executed(target, value, data);
    }
}
