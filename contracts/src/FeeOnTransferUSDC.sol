// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import "./TestUSDC.sol";

/**
 * @title FeeOnTransferUSDC
 * @notice Test-only: TestUSDC that keeps 1 % of every transfer at FEE_SINK, so the payee receives
 * less than the payer signed for while `AuthorizationUsed` is logged as usual. It exists to prove
 * the facilitator checks the receipt's `Transfer(from, payTo, value)` before reporting success.
 */
contract FeeOnTransferUSDC is TestUSDC {
    address public constant FEE_SINK = address(0xFEE);

    function _transfer(address from, address to, uint256 value) internal override {
        uint256 fee = value / 100;
        super._transfer(from, to, value - fee);
        if (fee > 0) {
            super._transfer(from, FEE_SINK, fee);
        }
    }
}
