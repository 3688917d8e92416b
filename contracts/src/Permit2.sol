// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// Permit2's SignatureTransfer structs (same field order and types as Uniswap's, hence the same ABI).
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

/**
 * @title Permit2
 * @notice Test-only stand-in for Uniswap's Permit2, written for x402d's tests on anvil. It has the
 * ABI, errors, event and order of checks of Permit2's SignatureTransfer for the single-token
 * transfers x402 uses (`permitTransferFrom`, `permitWitnessTransferFrom`, the unordered nonce
 * bitmap). AllowanceTransfer and the batch variants are left out: x402 does not call them.
 *
 * It has NO constructor state and no immutables: it is placed at the canonical address
 * 0x000000000022D473030F116dDEE9F6B43aC78BA3 with `anvil_setCode`, so DOMAIN_SEPARATOR() is
 * computed at call time from block.chainid and address(this) (Permit2 caches it, same value).
 */
contract Permit2 {
    /// keccak256("EIP712Domain(string name,uint256 chainId,address verifyingContract)"): no version.
    bytes32 private constant DOMAIN_TYPEHASH = keccak256("EIP712Domain(string name,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("Permit2");

    bytes32 private constant TOKEN_PERMISSIONS_TYPEHASH = keccak256("TokenPermissions(address token,uint256 amount)");
    bytes32 private constant PERMIT_TRANSFER_FROM_TYPEHASH = keccak256(
        "PermitTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline)TokenPermissions(address token,uint256 amount)"
    );
    /// The caller's witness type string completes this stub (e.g. "Witness witness)TokenPermissions(...)Witness(...)").
    string private constant PERMIT_WITNESS_TRANSFER_FROM_TYPEHASH_STUB =
        "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,";

    /// bytes4(keccak256("isValidSignature(bytes32,bytes)"))
    bytes4 private constant ERC1271_MAGIC_VALUE = 0x1626ba7e;
    /// 2^255 - 1: the `s` half of an EIP-2098 compact signature's `vs`.
    bytes32 private constant LOWER_255_BITS = 0x7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff;

    /// owner => word position => 256 nonce bits (bit set = nonce used or invalidated).
    mapping(address => mapping(uint256 => uint256)) public nonceBitmap;

    event UnorderedNonceInvalidation(address indexed owner, uint256 word, uint256 mask);

    error SignatureExpired(uint256 signatureDeadline);
    error InvalidAmount(uint256 maxAmount);
    error InvalidNonce();
    error InvalidSignatureLength();
    error InvalidSignature();
    error InvalidSigner();
    error InvalidContractSignature();

    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, block.chainid, address(this)));
    }

    /// @notice Transfers `transferDetails.requestedAmount` of the permitted token from `owner`, who
    /// signed `permit` for the caller (the spender).
    function permitTransferFrom(
        PermitTransferFrom calldata permit,
        SignatureTransferDetails calldata transferDetails,
        address owner,
        bytes calldata signature
    ) external {
        bytes32 dataHash = keccak256(
            abi.encode(
                PERMIT_TRANSFER_FROM_TYPEHASH, _hashPermitted(permit), msg.sender, permit.nonce, permit.deadline
            )
        );
        _transfer(permit, transferDetails, owner, dataHash, signature);
    }

    /// @notice As permitTransferFrom, with the caller's extra signed data (`witness`, an EIP-712 struct
    /// hash of the type `witnessTypeString` names) bound into the signed message.
    function permitWitnessTransferFrom(
        PermitTransferFrom calldata permit,
        SignatureTransferDetails calldata transferDetails,
        address owner,
        bytes32 witness,
        string calldata witnessTypeString,
        bytes calldata signature
    ) external {
        bytes32 typeHash = keccak256(abi.encodePacked(PERMIT_WITNESS_TRANSFER_FROM_TYPEHASH_STUB, witnessTypeString));
        bytes32 dataHash =
            keccak256(abi.encode(typeHash, _hashPermitted(permit), msg.sender, permit.nonce, permit.deadline, witness));
        _transfer(permit, transferDetails, owner, dataHash, signature);
    }

    /// @notice Marks the nonces of `mask` in word `wordPos` of the caller as used.
    function invalidateUnorderedNonces(uint256 wordPos, uint256 mask) external {
        nonceBitmap[msg.sender][wordPos] |= mask;
        emit UnorderedNonceInvalidation(msg.sender, wordPos, mask);
    }

    // ---------------------------------------------------------------------------------------
    // Internals
    // ---------------------------------------------------------------------------------------

    function _hashPermitted(PermitTransferFrom calldata permit) private pure returns (bytes32) {
        return keccak256(abi.encode(TOKEN_PERMISSIONS_TYPEHASH, permit.permitted.token, permit.permitted.amount));
    }

    /// Permit2's order of checks: deadline, amount, nonce (consumed before the signature is checked;
    /// a failing check reverts it all), signature, transfer.
    function _transfer(
        PermitTransferFrom calldata permit,
        SignatureTransferDetails calldata transferDetails,
        address owner,
        bytes32 dataHash,
        bytes calldata signature
    ) private {
        if (block.timestamp > permit.deadline) revert SignatureExpired(permit.deadline);
        if (transferDetails.requestedAmount > permit.permitted.amount) revert InvalidAmount(permit.permitted.amount);
        _useUnorderedNonce(owner, permit.nonce);
        _verify(keccak256(abi.encodePacked("\x19\x01", DOMAIN_SEPARATOR(), dataHash)), owner, signature);
        _safeTransferFrom(permit.permitted.token, owner, transferDetails.to, transferDetails.requestedAmount);
    }

    /// Nonce `n` is bit `n & 0xff` of word `n >> 8`: any order, each once.
    function _useUnorderedNonce(address owner, uint256 nonce) private {
        uint256 bit = 1 << (nonce & 0xff);
        uint256 flipped = nonceBitmap[owner][nonce >> 8] ^= bit;
        if (flipped & bit == 0) revert InvalidNonce();
    }

    /// Permit2's SignatureVerification: a contract owner answers by ERC-1271 (its revert bubbles up);
    /// an EOA signs 65-byte r||s||v or 64-byte EIP-2098 r||vs. No low-s check: Permit2 has none (a
    /// malleated signature cannot replay, the nonce is spent).
    function _verify(bytes32 digest, address owner, bytes calldata signature) private view {
        if (owner.code.length > 0) {
            (bool ok, bytes memory ret) =
                owner.staticcall(abi.encodeWithSelector(ERC1271_MAGIC_VALUE, digest, signature));
            if (!ok) {
                assembly {
                    revert(add(ret, 0x20), mload(ret))
                }
            }
            if (ret.length < 32 || bytes32(ret) != bytes32(ERC1271_MAGIC_VALUE)) revert InvalidContractSignature();
            return;
        }
        bytes32 r;
        bytes32 s;
        uint8 v;
        if (signature.length == 65) {
            r = bytes32(signature[0:32]);
            s = bytes32(signature[32:64]);
            v = uint8(signature[64]);
        } else if (signature.length == 64) {
            bytes32 vs = bytes32(signature[32:64]);
            r = bytes32(signature[0:32]);
            s = vs & LOWER_255_BITS;
            v = uint8(uint256(vs >> 255)) + 27;
        } else {
            revert InvalidSignatureLength();
        }
        address signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert InvalidSignature();
        if (signer != owner) revert InvalidSigner();
    }

    /// solmate's SafeTransferLib semantics, as Permit2 uses them: success is a call that did not revert
    /// and returned either nothing (USDT-style tokens) or a true. Like Permit2 it does not check that
    /// `token` has code, so a transfer of a codeless "token" succeeds: callers must check the token.
    function _safeTransferFrom(address token, address from, address to, uint256 amount) private {
        (bool ok, bytes memory ret) = token.call(abi.encodeWithSelector(0x23b872dd, from, to, amount));
        require(ok && (ret.length == 0 || (ret.length >= 32 && uint256(bytes32(ret)) == 1)), "TRANSFER_FROM_FAILED");
    }
}
