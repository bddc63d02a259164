// SPDX-License-Identifier: AGPL-3.0-or-later
pragma solidity 0.8.28;

/// @title Tokens and a hostile recipient for the HTLC tests only (never deployed outside a devnet).
/// @notice TestToken is a plain ERC-20 (EIP-20: transfer/transferFrom return true).
///         NoReturnToken behaves like USDT's TetherToken on mainnet: transfer and transferFrom
///         return nothing, which a caller that expects a bool fails to decode.
///         FeeToken keeps a fee on transferFrom. Anyone may mint: these are test fixtures.
///         ReentrantRecipient tries to claim and
///         refund the swap that is paying it, from inside the payment.
abstract contract TokenBase {
    string public name;
    string public symbol;
    uint8 public constant decimals = 6;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    constructor(string memory name_, string memory symbol_) {
        name = name_;
        symbol = symbol_;
    }

    function mint(address to, uint256 value) external {
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    function approve(address spender, uint256 value) external returns (bool) {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function _spend(address from, uint256 value) internal {
        uint256 allowed = allowance[from][msg.sender];
        require(allowed >= value, "allowance");
        if (allowed != type(uint256).max) allowance[from][msg.sender] = allowed - value;
    }

    function _move(address from, address to, uint256 value) internal {
        require(balanceOf[from] >= value, "balance");
        balanceOf[from] -= value;
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }
}

contract TestToken is TokenBase {
    constructor() TokenBase("Test USD", "TUSD") {}

    function transfer(address to, uint256 value) external returns (bool) {
        _move(msg.sender, to, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        _spend(from, value);
        _move(from, to, value);
        return true;
    }
}

contract NoReturnToken is TokenBase {
    constructor() TokenBase("Tether-like USD", "USDT") {}

    // USDT's signatures: no return value (TetherToken.sol, pragma ^0.4.17).
    function transfer(address to, uint256 value) external {
        _move(msg.sender, to, value);
    }

    function transferFrom(address from, address to, uint256 value) external {
        _spend(from, value);
        _move(from, to, value);
    }
}

/// A fee-on-transfer token: the receiver of a transferFrom gets one unit less than sent.
contract FeeToken is TokenBase {
    constructor() TokenBase("Fee USD", "FUSD") {}

    function transfer(address to, uint256 value) external returns (bool) {
        _move(msg.sender, to, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        _spend(from, value);
        _move(from, to, value - 1);
        _move(from, address(0xdead), 1);
        return true;
    }
}

interface IHTLC {
    function claim(bytes32 id, bytes calldata preimage) external;

    function refund(bytes32 id) external;
}

contract ReentrantRecipient {
    IHTLC public htlc;
    bytes32 public id;
    bytes public preimage;
    uint256 public attempts;
    uint256 public reentered;

    function arm(address htlc_, bytes32 id_, bytes calldata preimage_) external {
        htlc = IHTLC(htlc_);
        id = id_;
        preimage = preimage_;
    }

    receive() external payable {
        if (attempts > 0) return;
        attempts += 1;
        // Each succeeds only if the HTLC pays before it closes the swap.
        try htlc.claim(id, preimage) {
            reentered += 1;
        } catch {}
        try htlc.refund(id) {
            reentered += 1;
        } catch {}
    }
}
