// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/**
 * @title X402BatchSettler
 * @notice Settles many EIP-3009 authorizations of one token in one transaction from tightly packed
 * calldata: x402d's alternative to Multicall3 `aggregate3`, whose ABI spends ~480 bytes of calldata
 * per payment (offsets, lengths, padding) where this spends 159. On an OP Stack chain every byte
 * is also paid for as L1 data.
 *
 * Calldata (no selector; everything reaches the fallback):
 *   flags 1 byte (bit 0: strict, revert with the first failing item's revert data) | token 20 |
 *   per item 159 bytes: from 20 | to 20 | value 12 (uint96) | validAfter 5 (uint40) |
 *   validBefore 5 (uint40) | nonce 32 | v 1 | r 32 | s 32
 * Each item becomes the token's `transferWithAuthorization(from, to, value, validAfter,
 * validBefore, nonce, v, r, s)`. Not strict, a failing item does not stop the others (like
 * `allowFailure = true`); the answer is a bitmap, one bit per item (bit i of word i / 256), set
 * when the item's call succeeded. Which payments moved is the token's own `AuthorizationUsed` and
 * `Transfer` logs: the signatures bind payer, payee and amount, so whoever sends a batch cannot
 * redirect money, and the contract holds nothing and has no owner and no storage.
 */
contract X402BatchSettler {
    /// Calldata that is not a flags byte, a token with code, and whole items.
    error Malformed();

    fallback() external {
        assembly {
            let size := calldatasize()
            if or(lt(size, 21), mod(sub(size, 21), 159)) {
                mstore(0, 0x07b6ad3f) // Malformed()
                revert(0x1c, 4)
            }
            let token := shr(96, calldataload(1))
            if iszero(extcodesize(token)) {
                mstore(0, 0x07b6ad3f)
                revert(0x1c, 4)
            }
            let strict := and(shr(248, calldataload(0)), 1)
            let n := div(sub(size, 21), 159)
            // The call's arguments at 0x80 (4 + 9 × 32 bytes), the bitmap after them (fresh memory
            // is zero).
            let buf := 0x80
            let results := 0x200
            mstore(buf, shl(224, 0xe3ee160e)) // transferWithAuthorization(...,uint8,bytes32,bytes32)
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                let o := add(21, mul(i, 159))
                mstore(add(buf, 4), shr(96, calldataload(o)))
                mstore(add(buf, 36), shr(96, calldataload(add(o, 20))))
                mstore(add(buf, 68), shr(160, calldataload(add(o, 40))))
                mstore(add(buf, 100), shr(216, calldataload(add(o, 52))))
                mstore(add(buf, 132), shr(216, calldataload(add(o, 57))))
                mstore(add(buf, 164), calldataload(add(o, 62)))
                mstore(add(buf, 196), shr(248, calldataload(add(o, 94))))
                mstore(add(buf, 228), calldataload(add(o, 95)))
                mstore(add(buf, 260), calldataload(add(o, 127)))
                switch call(gas(), token, 0, buf, 292, 0, 0)
                case 0 {
                    if strict {
                        returndatacopy(0, 0, returndatasize())
                        revert(0, returndatasize())
                    }
                }
                default {
                    let w := add(results, shl(5, shr(8, i)))
                    mstore(w, or(mload(w), shl(and(i, 255), 1)))
                }
            }
            return(results, shl(5, shr(8, add(n, 255))))
        }
    }
}
