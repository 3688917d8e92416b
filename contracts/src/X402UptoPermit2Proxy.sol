// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Permit2, PermitTransferFrom, SignatureTransferDetails} from "./Permit2.sol";

// The address is the x402 SDKs' upto proxy constant (`X402UptoPermit2ProxyAddress`; npm package
// @x402/evm and the Go SDK): a CREATE2 deployment verified on Base and Base Sepolia per the SDK
// notes. x402d keeps it configurable per network: the SDKs have moved it before.
/**
 * @title X402UptoPermit2Proxy
 * @notice Test-only stand-in for the x402 upto Permit2 proxy (same `settle` ABI, errors and event),
 * written for x402d's tests on anvil. The payer signs a maximum (`permit.permitted.amount`); the
 * facilitator named in the witness charges any `amount` up to it, to the recipient named in the
 * witness. Only that facilitator may settle: anyone else holding the signature could otherwise
 * charge the maximum, or burn the nonce with a charge of 0.
 *
 * No constructor, no storage: it is placed at 0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002 with
 * `anvil_setCode`, and Permit2's canonical address is a constant.
 */
contract X402UptoPermit2Proxy {
    struct Witness {
        address to;
        address facilitator;
        uint256 validAfter;
    }

    address public constant PERMIT2 = 0x000000000022D473030F116dDEE9F6B43aC78BA3;

    bytes32 public constant WITNESS_TYPEHASH = keccak256("Witness(address to,address facilitator,uint256 validAfter)");

    /// Completes Permit2's "PermitWitnessTransferFrom(...," stub (TokenPermissions sorts before Witness).
    string public constant WITNESS_TYPE_STRING =
        "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,address facilitator,uint256 validAfter)";

    event Settled();

    error InvalidOwner();
    error InvalidDestination();
    error PaymentTooEarly();
    error UnauthorizedFacilitator();
    error AmountExceedsPermitted();

    /// @notice Moves `amount` (at most the permitted maximum; 0 is a valid charge and still spends the
    /// nonce) from `owner` to `witness.to`. Callable only by `witness.facilitator`.
    function settle(
        PermitTransferFrom calldata permit,
        uint256 amount,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        if (msg.sender != witness.facilitator) revert UnauthorizedFacilitator();
        if (amount > permit.permitted.amount) revert AmountExceedsPermitted();
        if (owner == address(0)) revert InvalidOwner();
        if (witness.to == address(0)) revert InvalidDestination();
        if (block.timestamp < witness.validAfter) revert PaymentTooEarly();
        Permit2(PERMIT2).permitWitnessTransferFrom(
            permit,
            SignatureTransferDetails({to: witness.to, requestedAmount: amount}),
            owner,
            keccak256(abi.encode(WITNESS_TYPEHASH, witness.to, witness.facilitator, witness.validAfter)),
            WITNESS_TYPE_STRING,
            signature
        );
        emit Settled();
    }
}
