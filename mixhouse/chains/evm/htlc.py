"""The Ethereum leg of an atomic swap: Mixhouse's HTLC contract (issue 10, part 2).

The contract is ``contracts/HTLC.sol`` (solc 0.8.28, evmVersion cancun), compiled by
``make contracts`` into ``htlc_artifact.json`` next to this module. It holds ETH or any ERC-20
(USDT's transfer functions that return nothing included) under ``sha256(secret)``:

* ``lockEth(hashLock, recipient, expiry)`` / ``lockToken(hashLock, recipient, token, amount,
  expiry)`` (the token pulled by ``transferFrom``: approve the contract first) store a swap
  under ``id = keccak256(abi.encode(chainid, contract, hashLock, sender, recipient, token,
  amount, expiry))`` (:meth:`SwapTerms.swap_id` computes the same locally);
* ``claim(id, preimage)``: anyone, while ``block.timestamp < expiry``, with the 32-byte
  preimage; pays the recipient and emits ``Claimed(id, preimage)``;
* ``refund(id)``: anyone, from ``block.timestamp >= expiry`` on; pays the sender back.

This module encodes those calls (web3.py's ABI codec) and has them signed by the
:class:`~mixhouse.chains.evm.adapter.EvmAdapter` (its :class:`~mixhouse.keys.signer.Signer`, by
key reference: no private key here) in the adapter's signing thread, never on the event loop
(:mod:`mixhouse.keys.offload`: a slow or hung token raises ``SignerError``, a ``ChainError``,
after the adapter's deadline, and the caller retries), as
:class:`~mixhouse.chains.base.PreparedSend` values that are stored, then broadcast and followed
with the adapter's ``broadcast`` and ``check_send`` like any send. It reads a swap's state for
the side that locks second (:meth:`EvmHtlc.verify_lock`) and finds the secret in a ``Claimed``
event (:meth:`EvmHtlc.find_secret`). Amounts are base units (wei, token units); expiries unix
seconds.

The contract address is configuration (a deployment the operator trusts), never something
the counterparty sends: a look-alike contract at another address would pass any state check.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract

from mixhouse.chains.base import PreparedSend
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.chains.htlc import SECRET_BYTES, HtlcMismatch, check_hash
from mixhouse.errors import ChainError, InvalidInput

ARTIFACT_PATH = Path(__file__).with_name("htlc_artifact.json")
ZERO_ADDRESS = "0x" + "00" * 20
# Gas limit = the node's estimate times this, in percent: the state a transaction meets when
# mined can differ a little from the one it was estimated on (a token's first transfer to
# an address, a warm or cold slot).
GAS_MARGIN_PERCENT = 125

LOCKED_TOPIC = "0x" + keccak(text="Locked(bytes32,bytes32,address,address,address,uint256,uint64)").hex()
CLAIMED_TOPIC = "0x" + keccak(text="Claimed(bytes32,bytes32)").hex()
REFUNDED_TOPIC = "0x" + keccak(text="Refunded(bytes32)").hex()
_SWAP_FIELDS = ["bytes32", "address", "uint64", "uint8", "address", "address", "uint256"]
_APPROVE_SELECTOR = keccak(text="approve(address,uint256)")[:4]
_BALANCE_OF_SELECTOR = keccak(text="balanceOf(address)")[:4]


@cache
def htlc_artifact() -> dict[str, Any]:
    """The committed compiler output: ``{"abi": [...], "bytecode": "0x..."}`` of ``HTLC``."""
    artifact = json.loads(ARTIFACT_PATH.read_text())
    return cast(dict[str, Any], artifact["contracts"]["HTLC"])


@cache
def _contract() -> type[Contract]:
    # A provider-less contract class: only its ABI codec is used, never a network call.
    return Web3().eth.contract(abi=htlc_artifact()["abi"])


class SwapState(enum.IntEnum):
    """The contract's ``State`` enum, as stored."""

    EMPTY = 0
    LOCKED = 1
    CLAIMED = 2
    REFUNDED = 3


@dataclass(frozen=True, slots=True)
class SwapTerms:
    """What one HTLC swap locks.

    Attributes:
        hash_lock: ``sha256(secret)``, 32 bytes.
        sender: the locking address (refunded after the expiry), checksummed.
        recipient: the address a claim pays, checksummed.
        token: the ERC-20 contract, or ``None`` for ETH.
        amount: wei, or token base units; ``> 0``.
        expiry: unix seconds; claims while ``block.timestamp < expiry``, refunds after.
    """

    hash_lock: bytes
    sender: str
    recipient: str
    token: str | None
    amount: int
    expiry: int

    def __post_init__(self) -> None:
        check_hash(self.hash_lock, "hash_lock")
        if isinstance(self.amount, bool) or not 0 < self.amount < 2**256:
            raise InvalidInput(f"amount {self.amount!r} is not a positive uint256")
        if isinstance(self.expiry, bool) or not 0 < self.expiry < 2**64:
            raise InvalidInput(f"expiry {self.expiry!r} is not a uint64 of unix seconds")

    def swap_id(self, *, chain_id: int, contract: str) -> bytes:
        """The contract's id of this swap: ``keccak256(abi.encode(chainid, contract,
        hashLock, sender, recipient, token or 0, amount, expiry))``, 32 bytes."""
        return bytes(
            keccak(
                abi_encode(
                    ["uint256", "address", "bytes32", "address", "address", "address", "uint256", "uint64"],
                    [
                        chain_id,
                        to_checksum_address(contract),
                        self.hash_lock,
                        to_checksum_address(self.sender),
                        to_checksum_address(self.recipient),
                        to_checksum_address(self.token or ZERO_ADDRESS),
                        self.amount,
                        self.expiry,
                    ],
                )
            )
        )


@dataclass(frozen=True, slots=True)
class OnchainSwap:
    """A swap as the contract stores it.

    Attributes:
        swap_id: its id, 32 bytes.
        terms: the stored terms.
        state: :class:`SwapState` (never ``EMPTY``: an unknown id reads as ``None``).
    """

    swap_id: bytes
    terms: SwapTerms
    state: SwapState


@dataclass(frozen=True, slots=True)
class SwapEvent:
    """One event of the contract about a swap.

    Attributes:
        kind: ``"locked"``, ``"claimed"`` or ``"refunded"``.
        block_number: the block that holds it.
        txid: the transaction that emitted it, ``0x`` hex.
        preimage: the secret (``claimed`` only), 32 bytes; else ``None``.
    """

    kind: str
    block_number: int
    txid: str
    preimage: bytes | None


class EvmHtlc:
    """Calls and reads of one deployed HTLC contract, through an :class:`EvmAdapter`.

    Args:
        adapter: signs (its signer holds the keys, by BIP-32 path), sends and reads.
        contract_address: the trusted deployment of ``contracts/HTLC.sol``.

    Raises:
        InvalidAddress: ``contract_address`` is malformed.
    """

    def __init__(self, adapter: EvmAdapter, contract_address: str) -> None:
        self.adapter = adapter
        self.address = adapter.normalize_address(contract_address)

    def swap_id(self, terms: SwapTerms) -> bytes:
        """The id ``terms`` are (or would be) stored under in this contract."""
        return terms.swap_id(chain_id=self.adapter.chain_id, contract=self.address)

    # -- transactions ----------------------------------------------------------------------

    async def _prepare(
        self,
        *,
        key_ref: str,
        to: str | None,
        data: bytes,
        value: int,
        nonce: int,
        gas: int | None,
        max_fee_per_gas: int | None,
    ) -> PreparedSend:
        if gas is None:
            sender = await self.adapter.key_address_async(key_ref)
            estimate = await self.adapter.estimate_gas(from_address=sender, to=to, data=data, value=value)
            gas = estimate * GAS_MARGIN_PERCENT // 100
        price = max_fee_per_gas if max_fee_per_gas is not None else await self.adapter.gas_price()
        # In the adapter's signing thread: the loop (the node's peer and API) keeps serving.
        return await self.adapter.prepare_contract_call_async(
            key_ref=key_ref, to=to, data=data, value=value, gas=gas, max_fee_per_gas=price, nonce=nonce
        )

    async def prepare_lock(
        self,
        *,
        key_ref: str,
        terms: SwapTerms,
        nonce: int,
        gas: int | None = None,
        max_fee_per_gas: int | None = None,
    ) -> PreparedSend:
        """Sign the lock of ``terms`` (``lockEth`` with ``value = amount``, or ``lockToken``
        after an approval of at least ``amount``, see :meth:`prepare_approve`).

        Args:
            key_ref: the key of ``terms.sender``.
            nonce: the sender's next nonce.
            gas: the gas limit; ``None``: the node's estimate plus 25 % (the estimate fails
                if the lock would revert, so nothing is signed).
            max_fee_per_gas: wei per gas; ``None``: :meth:`EvmAdapter.gas_price`.

        Raises:
            InvalidInput: ``key_ref`` is not the key of ``terms.sender``.
            CallReverted: the estimate says the lock would revert (expiry past, no allowance...).
            ChainError: the node failed, the gas price is above the cap, or signing failed
                (``SignerError``: the token failed or did not answer within the adapter's
                ``sign_timeout``; nothing was signed that the caller knows of, retry later).
        """
        if await self.adapter.key_address_async(key_ref) != to_checksum_address(terms.sender):
            raise InvalidInput(f"the key {key_ref!r} is not the swap's sender {terms.sender}")
        recipient = self.adapter.normalize_address(terms.recipient)
        if terms.token is None:
            data = _encode("lockEth", [terms.hash_lock, recipient, terms.expiry])
            value = terms.amount
        else:
            token = self.adapter.normalize_address(terms.token)
            data = _encode("lockToken", [terms.hash_lock, recipient, token, terms.amount, terms.expiry])
            value = 0
        return await self._prepare(
            key_ref=key_ref,
            to=self.address,
            data=data,
            value=value,
            nonce=nonce,
            gas=gas,
            max_fee_per_gas=max_fee_per_gas,
        )

    async def prepare_approve(
        self,
        *,
        key_ref: str,
        token: str,
        amount: int,
        nonce: int,
        gas: int | None = None,
        max_fee_per_gas: int | None = None,
    ) -> PreparedSend:
        """Sign ``token.approve(this contract, amount)`` (EIP-20), the step before a token lock.

        USDT refuses to change a non-zero allowance to another non-zero one: approve 0 first
        if an old allowance is left. ``approve``'s return value is not read (USDT's is empty).

        Raises:
            InvalidAddress: ``token`` is malformed.
            CallReverted, ChainError: as :meth:`prepare_lock`.
        """
        data = _APPROVE_SELECTOR + abi_encode(["address", "uint256"], [self.address, amount])
        return await self._prepare(
            key_ref=key_ref,
            to=self.adapter.normalize_address(token),
            data=data,
            value=0,
            nonce=nonce,
            gas=gas,
            max_fee_per_gas=max_fee_per_gas,
        )

    async def prepare_claim(
        self,
        *,
        key_ref: str,
        swap_id: bytes,
        preimage: bytes,
        nonce: int,
        gas: int | None = None,
        max_fee_per_gas: int | None = None,
    ) -> PreparedSend:
        """Sign ``claim(swap_id, preimage)``; any key may send it, the recipient is paid.

        The preimage is not checked here (the tests send wrong ones on purpose); with
        ``gas=None`` the node's estimate refuses a claim that would revert.

        Raises:
            CallReverted, ChainError: as :meth:`prepare_lock`.
        """
        data = _encode("claim", [check_hash(swap_id, "swap_id"), bytes(preimage)])
        return await self._prepare(
            key_ref=key_ref, to=self.address, data=data, value=0, nonce=nonce, gas=gas, max_fee_per_gas=max_fee_per_gas
        )

    async def prepare_refund(
        self,
        *,
        key_ref: str,
        swap_id: bytes,
        nonce: int,
        gas: int | None = None,
        max_fee_per_gas: int | None = None,
    ) -> PreparedSend:
        """Sign ``refund(swap_id)``; any key may send it, the sender is paid back.

        Raises:
            CallReverted, ChainError: as :meth:`prepare_lock` (before the expiry the
                estimate reverts with ``NotExpired``).
        """
        data = _encode("refund", [check_hash(swap_id, "swap_id")])
        return await self._prepare(
            key_ref=key_ref, to=self.address, data=data, value=0, nonce=nonce, gas=gas, max_fee_per_gas=max_fee_per_gas
        )

    # -- reads -----------------------------------------------------------------------------

    async def swap(self, swap_id: bytes) -> OnchainSwap | None:
        """The swap stored under ``swap_id`` at the latest block, ``None`` if there is none.

        Raises:
            ChainError: the node failed or the answer is not the contract's.
        """
        answer = await self.adapter.call(to=self.address, data=_encode("swaps", [check_hash(swap_id, "swap_id")]))
        try:
            hash_lock, sender, expiry, state, recipient, token, amount = abi_decode(_SWAP_FIELDS, answer)
            swap_state = SwapState(state)
        except (DecodingError, ValueError) as exc:  # ValueError: a state outside the enum
            raise ChainError(f"the HTLC at {self.address} answered swaps() with {answer.hex()!r}") from exc
        if swap_state is SwapState.EMPTY:
            return None
        terms = SwapTerms(
            hash_lock=bytes(hash_lock),
            sender=to_checksum_address(sender),
            recipient=to_checksum_address(recipient),
            token=None if int(token, 16) == 0 else to_checksum_address(token),
            amount=int(amount),
            expiry=int(expiry),
        )
        return OnchainSwap(bytes(swap_id), terms, swap_state)

    async def verify_lock(self, expected: SwapTerms) -> OnchainSwap:
        """Check that the agreed swap is locked in this contract, before locking second.

        The id is computed from ``expected``; a swap stored under it was locked with exactly
        those terms (the id commits to all of them, the chain and the contract), and each
        stored field is compared as well. Confirmations are the caller's to count (the
        ``locked`` event of :meth:`events` gives the block).

        Returns:
            The :class:`OnchainSwap` (state ``LOCKED``).

        Raises:
            HtlcMismatch: no swap with these terms (``"swap_id"``: a different hash,
                recipient, amount, token, sender or expiry, or never locked), a stored field
                that differs (its name), or the swap is already claimed or refunded
                (``"state"``).
            ChainError: the node failed.
        """
        swap_id = self.swap_id(expected)
        found = await self.swap(swap_id)
        if found is None:
            raise HtlcMismatch("swap_id", f"no swap {swap_id.hex()} with the agreed terms in {self.address}")
        wanted = SwapTerms(
            hash_lock=expected.hash_lock,
            sender=to_checksum_address(expected.sender),
            recipient=to_checksum_address(expected.recipient),
            token=None if expected.token is None else to_checksum_address(expected.token),
            amount=expected.amount,
            expiry=expected.expiry,
        )
        for name in ("hash_lock", "sender", "recipient", "token", "amount", "expiry"):
            if getattr(found.terms, name) != getattr(wanted, name):
                raise HtlcMismatch(name, f"swap {swap_id.hex()} has another {name}")
        if found.state is not SwapState.LOCKED:
            raise HtlcMismatch("state", f"swap {swap_id.hex()} is {found.state.name.lower()}, not locked")
        return found

    async def events(self, swap_id: bytes, *, from_block: int, to_block: int | None = None) -> list[SwapEvent]:
        """The contract's events about ``swap_id`` in blocks ``from_block..to_block`` (the
        head if ``None``), in chain order.

        Raises:
            ChainError: the node failed or a log is not the contract's.
        """
        topic_id = HexBytes(check_hash(swap_id, "swap_id")).to_0x_hex()
        logs = await self.adapter.logs(
            address=self.address,
            topics=[[LOCKED_TOPIC, CLAIMED_TOPIC, REFUNDED_TOPIC], topic_id],
            from_block=from_block,
            to_block=to_block,
        )
        found: list[SwapEvent] = []
        for log in logs:
            if log.get("removed"):
                continue
            topic0 = HexBytes(log["topics"][0]).to_0x_hex()
            data = bytes(log["data"])
            block_number = int(log["blockNumber"])
            txid = HexBytes(log["transactionHash"]).to_0x_hex()
            if topic0 == CLAIMED_TOPIC:
                if len(data) != SECRET_BYTES:
                    raise ChainError(f"a Claimed event of {self.address} carries {len(data)} bytes")
                found.append(SwapEvent("claimed", block_number, txid, data))
            elif topic0 == LOCKED_TOPIC:
                found.append(SwapEvent("locked", block_number, txid, None))
            elif topic0 == REFUNDED_TOPIC:
                found.append(SwapEvent("refunded", block_number, txid, None))
        return found

    async def find_secret(
        self, swap_id: bytes, hash_lock: bytes, *, from_block: int, to_block: int | None = None
    ) -> bytes | None:
        """The secret published by the claim of ``swap_id``, if it was claimed in the blocks
        searched, checked against ``hash_lock`` (``sha256(secret) == hash_lock``).

        Raises:
            HtlcMismatch: (``"preimage"``) a Claimed event whose preimage does not hash to
                ``hash_lock``: not our contract, or not our swap.
            ChainError: as :meth:`events`.
        """
        for event in await self.events(swap_id, from_block=from_block, to_block=to_block):
            if event.kind == "claimed" and event.preimage is not None:
                if hashlib.sha256(event.preimage).digest() != check_hash(hash_lock, "hash_lock"):
                    raise HtlcMismatch("preimage", f"swap {swap_id.hex()} was claimed with another secret")
                return event.preimage
        return None

    async def token_balance(self, token: str, owner: str) -> int:
        """``token.balanceOf(owner)`` at the latest block, base units.

        Raises:
            ChainError: the node failed or the answer is not a uint256.
        """
        data = _BALANCE_OF_SELECTOR + abi_encode(["address"], [to_checksum_address(owner)])
        answer = await self.adapter.call(to=self.adapter.normalize_address(token), data=data)
        if len(answer) != 32:
            raise ChainError(f"balanceOf of {token} answered {len(answer)} bytes")
        return int.from_bytes(answer, "big")


def _encode(function: str, args: list[Any]) -> bytes:
    """The calldata of ``function(*args)`` of the HTLC's ABI."""
    return bytes(HexBytes(_contract().encode_abi(function, args=args)))
