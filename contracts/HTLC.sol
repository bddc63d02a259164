// SPDX-License-Identifier: AGPL-3.0-or-later
pragma solidity 0.8.28;

/// @title Hash time-locked contract for ETH and ERC-20 tokens (Mixhouse OTC atomic swaps).
/// @notice A sender locks ETH or tokens for a recipient under sha256(secret) until an expiry
///         (unix seconds, compared with block.timestamp). Before the expiry, anyone holding the
///         32-byte secret may claim: the coins go to the recipient and the secret is published
///         in the Claimed event, where the other leg of the swap reads it. From the expiry on,
///         anyone may refund: the coins go back to the sender.
/// @dev Written for Mixhouse after reading the audited designs of Liquality's swap, Atomex
///      AtomicSwap and Boltz EtherSwap/ERC20Swap (none copied). Choices and why:
///      - sha256, not keccak256: the Bitcoin leg's script checks OP_SHA256 of the same secret.
///      - The preimage must be exactly 32 bytes (a dynamic `bytes` argument, checked): a longer
///        secret that one chain accepts and the other refuses would let a cheater claim here
///        and leave the Bitcoin claim impossible (decred/atomicswap's secret-size check).
///      - One swap id = keccak256 of all its parameters, the chain and this contract: a
///        participant recomputes it from the agreed terms, and a lock that exists under that id
///        has exactly those terms.
///      - Claim only before the expiry, refund only from it on: the two never race.
///      - Checks-effects-interactions everywhere: the state is final before any coin moves, so
///        a reentrant recipient, sender or token finds the swap already closed.
///      - Tokens move by a call that accepts an empty return (USDT's transfer/transferFrom
///        return nothing) or `true`, refuses `false`, and refuses an address without code. A
///        lock checks that the contract's balance grew by the amount, so a fee-on-transfer
///        token cannot create a swap backed by less than it promises.
contract HTLC {
    enum State {
        Empty,
        Locked,
        Claimed,
        Refunded
    }

    struct Swap {
        bytes32 hashLock; // sha256(secret)
        address sender; // refunded after the expiry
        uint64 expiry; // unix seconds; claim while block.timestamp < expiry
        State state;
        address recipient; // paid by a claim
        address token; // address(0) for ETH
        uint256 amount; // wei or token base units
    }

    mapping(bytes32 => Swap) public swaps;

    event Locked(
        bytes32 indexed id,
        bytes32 indexed hashLock,
        address indexed sender,
        address recipient,
        address token,
        uint256 amount,
        uint64 expiry
    );
    event Claimed(bytes32 indexed id, bytes32 preimage);
    event Refunded(bytes32 indexed id);

    error InvalidTerms(string reason);
    error SwapExists(bytes32 id);
    error NotLocked(bytes32 id, State state);
    error WrongPreimage(bytes32 id);
    error Expired(bytes32 id, uint64 expiry);
    error NotExpired(bytes32 id, uint64 expiry);
    error TransferFailed(address token);
    error WrongAmountReceived(uint256 expected, uint256 received);

    /// @notice The id of a swap with these terms (what lockEth/lockToken store it under).
    function swapId(
        bytes32 hashLock,
        address sender,
        address recipient,
        address token,
        uint256 amount,
        uint64 expiry
    ) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), hashLock, sender, recipient, token, amount, expiry));
    }

    /// @notice Lock msg.value wei for `recipient` under `hashLock` until `expiry`.
    function lockEth(bytes32 hashLock, address recipient, uint64 expiry) external payable returns (bytes32 id) {
        id = _open(hashLock, recipient, address(0), msg.value, expiry);
    }

    /// @notice Lock `amount` of `token` (pulled with transferFrom: approve this contract first).
    function lockToken(
        bytes32 hashLock,
        address recipient,
        address token,
        uint256 amount,
        uint64 expiry
    ) external returns (bytes32 id) {
        if (token == address(0)) revert InvalidTerms("token is the zero address");
        id = _open(hashLock, recipient, token, amount, expiry);
        uint256 before = _balanceOf(token);
        _callToken(token, abi.encodeWithSelector(0x23b872dd, msg.sender, address(this), amount)); // transferFrom
        uint256 received = _balanceOf(token) - before;
        if (received != amount) revert WrongAmountReceived(amount, received);
    }

    /// @notice Pay the swap to its recipient; callable by anyone who knows the 32-byte secret.
    function claim(bytes32 id, bytes calldata preimage) external {
        Swap storage swap = swaps[id];
        if (swap.state != State.Locked) revert NotLocked(id, swap.state);
        if (block.timestamp >= swap.expiry) revert Expired(id, swap.expiry);
        if (preimage.length != 32 || sha256(preimage) != swap.hashLock) revert WrongPreimage(id);
        swap.state = State.Claimed;
        emit Claimed(id, bytes32(preimage));
        _pay(swap.token, swap.recipient, swap.amount);
    }

    /// @notice Pay the swap back to its sender; callable by anyone from the expiry on.
    function refund(bytes32 id) external {
        Swap storage swap = swaps[id];
        if (swap.state != State.Locked) revert NotLocked(id, swap.state);
        if (block.timestamp < swap.expiry) revert NotExpired(id, swap.expiry);
        swap.state = State.Refunded;
        emit Refunded(id);
        _pay(swap.token, swap.sender, swap.amount);
    }

    function _open(
        bytes32 hashLock,
        address recipient,
        address token,
        uint256 amount,
        uint64 expiry
    ) private returns (bytes32 id) {
        if (amount == 0) revert InvalidTerms("amount is zero");
        if (recipient == address(0)) revert InvalidTerms("recipient is the zero address");
        if (expiry <= block.timestamp) revert InvalidTerms("expiry is not in the future");
        id = swapId(hashLock, msg.sender, recipient, token, amount, expiry);
        if (swaps[id].state != State.Empty) revert SwapExists(id);
        swaps[id] = Swap(hashLock, msg.sender, expiry, State.Locked, recipient, token, amount);
        emit Locked(id, hashLock, msg.sender, recipient, token, amount, expiry);
    }

    function _pay(address token, address to, uint256 amount) private {
        if (token == address(0)) {
            (bool ok, ) = to.call{value: amount}("");
            if (!ok) revert TransferFailed(address(0));
        } else {
            _callToken(token, abi.encodeWithSelector(0xa9059cbb, to, amount)); // transfer
        }
    }

    /// @dev A token call that succeeded and returned nothing (USDT) or an ABI `true`.
    function _callToken(address token, bytes memory data) private {
        if (token.code.length == 0) revert TransferFailed(token);
        (bool ok, bytes memory answer) = token.call(data);
        if (!ok || (answer.length != 0 && (answer.length < 32 || !abi.decode(answer, (bool))))) {
            revert TransferFailed(token);
        }
    }

    function _balanceOf(address token) private view returns (uint256) {
        (bool ok, bytes memory answer) = token.staticcall(abi.encodeWithSelector(0x70a08231, address(this)));
        if (!ok || answer.length < 32) revert TransferFailed(token);
        return abi.decode(answer, (uint256));
    }
}
