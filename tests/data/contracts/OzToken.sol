// SPDX-License-Identifier: AGPL-3.0-or-later
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title An OpenZeppelin ERC-20 for the HTLC and swap tests only (never deployed outside a devnet).
/// @notice OpenZeppelin Contracts 5.x `ERC20` (npm @openzeppelin/contracts, pinned in package.json),
///         the implementation most tokens on mainnet derive from: it reverts with custom errors
///         (ERC20InsufficientAllowance, ERC20InsufficientBalance) rather than require strings.
///         6 decimals like USDC and USDT, so the tests' amounts mean the same as for TestToken.
///         Anyone may mint: this is a test fixture.
contract OzToken is ERC20 {
    constructor() ERC20("OpenZeppelin Test USD", "OZUSD") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 value) external {
        _mint(to, value);
    }
}
