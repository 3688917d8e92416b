// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {SmartWallet} from "./SmartWallet.sol";

/**
 * @title WalletFactory
 * @notice CREATE2 factory for SmartWallet. createAccount is idempotent.
 * The CREATE2 salt is keccak256(abi.encode(owner, salt)), so the address depends on both.
 */
contract WalletFactory {
    event AccountCreated(address indexed account, address indexed owner);

    function createAccount(address owner, bytes32 salt) external returns (address account) {
        account = getAddress(owner, salt);
        if (account.code.length > 0) {
            return account;
        }
        SmartWallet wallet = new SmartWallet{salt: _salt(owner, salt)}(owner);
        require(address(wallet) == account, "WalletFactory: address mismatch");
        emit AccountCreated(account, owner);
    }

    function getAddress(address owner, bytes32 salt) public view returns (address) {
        bytes32 initCodeHash = keccak256(abi.encodePacked(type(SmartWallet).creationCode, abi.encode(owner)));
        return address(
            uint160(uint256(keccak256(abi.encodePacked(bytes1(0xff), address(this), _salt(owner, salt), initCodeHash))))
        );
    }

    function _salt(address owner, bytes32 salt) private pure returns (bytes32) {
        return keccak256(abi.encode(owner, salt));
    }
}
