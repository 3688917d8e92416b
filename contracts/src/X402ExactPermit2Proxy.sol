// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Permit2, PermitTransferFrom, SignatureTransferDetails} from "./Permit2.sol";

// The address is `x402ExactPermit2ProxyAddress` of the npm package @x402/evm (the Go SDK's
// `X402ExactPermit2ProxyAddress`): a CREATE2 deployment verified on Base and Base Sepolia per the
// SDK notes. x402d keeps it configurable per network: the SDKs have moved it before.
/**
 * @title X402ExactPermit2Proxy
 * @notice Test-only stand-in for the x402 exact Permit2 proxy (same `settle` ABI, errors and event),
 * written for x402d's tests on anvil. The payer signs a Permit2 witness transfer with this contract
 * as spender; the witness binds the recipient, so whoever submits cannot redirect the money, and the
 * whole permitted amount moves (like EIP-3009's transferWithAuthorization).
 *
 * No constructor, no storage: it is placed at 0x402085c248EeA27D92E8b30b2C58ed07f9E20001 with
 * `anvil_setCode`, and Permit2's canonical address is a constant. No reentrancy guard: it holds
 * nothing, and a re-entered settle would need another signature with another nonce.
 */
contract X402ExactPermit2Proxy {
    struct Witness {
        address to;
        uint256 validAfter;
    }

    address public constant PERMIT2 = 0x000000000022D473030F116dDEE9F6B43aC78BA3;

    bytes32 public constant WITNESS_TYPEHASH = keccak256("Witness(address to,uint256 validAfter)");

    /// Completes Permit2's "PermitWitnessTransferFrom(...," stub; referenced types sort by name, so
    /// TokenPermissions comes before Witness.
    string public constant WITNESS_TYPE_STRING =
        "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,uint256 validAfter)";

    event Settled();

    error InvalidOwner();
    error InvalidDestination();
    error PaymentTooEarly();

    /// @notice Moves `permit.permitted.amount` from `owner` to `witness.to`. Permit2 checks the
    /// deadline, the nonce and the signature (with this contract as spender).
    function settle(
        PermitTransferFrom calldata permit,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        if (owner == address(0)) revert InvalidOwner();
        if (witness.to == address(0)) revert InvalidDestination();
        if (block.timestamp < witness.validAfter) revert PaymentTooEarly();
        Permit2(PERMIT2).permitWitnessTransferFrom(
            permit,
            SignatureTransferDetails({to: witness.to, requestedAmount: permit.permitted.amount}),
            owner,
            keccak256(abi.encode(WITNESS_TYPEHASH, witness.to, witness.validAfter)),
            WITNESS_TYPE_STRING,
            signature
        );
        emit Settled();
    }
}
