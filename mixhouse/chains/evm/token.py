"""An ERC-20 token on an EVM chain as a :class:`~mixhouse.chains.base.ChainAdapter` (EIP-20).

:class:`Erc20Adapter` composes an :class:`~mixhouse.chains.evm.adapter.EvmAdapter` (JSON-RPC,
signing through :mod:`mixhouse.keys.signer`, broadcast and receipts) and adds what a token
changes:

* **Deposits** are ``Transfer(address,address,uint256)`` logs of the token contract whose
  ``to`` topic is a watched address, not value transfers; the scanning engine finds them
  (:mod:`mixhouse.watch.tokens`). A log is only emitted
  by a successful call, and its ``value`` is what the receiver got: with a fee-on-transfer
  token (USDT's ``basisPointsRate``) the deposit counts what arrived, never what was sent.
  ``ref`` is ``"<txid>/<n>"``, ``n`` the log's position in its transaction's receipt: unlike
  the block-wide ``logIndex`` it stays the same when a reorg re-mines the transaction in
  another block, so a re-included deposit is the same deposit.
* **Keys**: each token has its own BIP-44 account ``a = crc32(symbol) mod 2**31`` (see
  :func:`token_account`): deposit key ``i`` is ``m/44'/60'/a'/0/i``, the token pool (which also
  holds the ETH that pays the token's gas, the "gas tank") is ``m/44'/60'/a'/1/0``. Separate
  keys keep a token mix's deposit address distinct from an ETH mix's of the same index (a gas
  top-up must never look like an ETH deposit) and give the token pool its own nonce counter.
* **Gas**: the deposit address holds no ETH. Its sweep is signed first (gas limit
  ``eth_estimateGas`` of the transfer, price ``P``); then the pool sends it exactly
  ``gas_limit * P`` wei (:meth:`Erc20Adapter.gas_needed`, :meth:`Erc20Adapter.prepare_gas_topup`), so the
  sweep can pay and the deposit address is left with exactly ``(gas_limit - gas_used) * P``
  wei: the estimate is above the use when the sweep empties the balance (EIP-3529's storage
  refund is granted after execution), a few percent of the top-up. Payouts leave from the
  pool, which pays their gas.
  The user is charged, per send (sweep and each payout), the configured ``network_fee`` in
  token base units (:meth:`Erc20Adapter.quote_network_fee`); the ETH really spent is reported
  by :meth:`Erc20Adapter.gas_paid` for the ETH books.
* **Misbehaving tokens**: ``transfer`` may return nothing (USDT): the call's success is
  judged by the receipt's status and the ``Transfer`` log, never by decoding a ``bool``. A
  sender on the token's blacklist (USDT ``isBlackListed``) is refused before signing with
  :class:`TokenBlacklisted`, and so is any send while the token's fee switch is on
  (:class:`TokenFeeActive`): a payout would deliver less than the mix's status says.

Amounts are ``int`` in the token's base unit; gas amounts are ``int`` wei.
"""

from __future__ import annotations

import zlib

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3.types import TxReceipt

from mixhouse.chains.base import (
    ChainAdapter,
    FeeQuote,
    PreparedSend,
    SendCheck,
    SendState,
    Transfer,
)
from mixhouse.chains.evm.adapter import GAS_LIMIT, CallReverted, EvmAdapter
from mixhouse.errors import BroadcastRejected, ChainError
from mixhouse.money import Asset

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
_TRANSFER = keccak(text="transfer(address,uint256)")[:4]
_BALANCE_OF = keccak(text="balanceOf(address)")[:4]
_IS_BLACKLISTED = keccak(text="isBlackListed(address)")[:4]
_BASIS_POINTS_RATE = keccak(text="basisPointsRate()")[:4]
_MAXIMUM_FEE = keccak(text="maximumFee()")[:4]
# Gas limit margin over eth_estimateGas: none. The estimate of a plain token transfer is what it
# uses, and a limit above it is ETH the gas top-up strands in the deposit address.
GAS_MARGIN = 0


class TokenBlacklisted(BroadcastRejected):
    """The token contract refuses transfers from this address (USDT's ``isBlackListed``): the
    send can never succeed, so the mixer holds it for the operator instead of retrying."""


class TokenFeeActive(ChainError):
    """The token's fee switch is on (USDT ``basisPointsRate > 0``): a transfer would deliver
    less than its amount, so no send is signed until the operator decides."""


def token_account(symbol: str) -> int:
    """The BIP-44 account (hardened index) of a token's keys: ``crc32(symbol) mod 2**31``,
    bumped to 2 or more so it never meets the ETH deposit (0) or pool (1) accounts."""
    account = zlib.crc32(symbol.encode("ascii")) % 2**31
    return account if account >= 2 else account + 2


def _topic_address(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


def _address_of_topic(topic: bytes) -> str:
    return str(to_checksum_address("0x" + bytes(topic)[-20:].hex()))


class Erc20Adapter(ChainAdapter):
    """One ERC-20 token (EIP-20) on the EVM chain of ``evm``.

    Args:
        evm: the chain's ETH adapter (node, signer, confirmations, gas price cap); shared, not
            owned: :meth:`aclose` leaves it open.
        asset: the token's asset code (``Asset("USDT")``).
        contract: the token contract address.
        network_fee: token base units charged to the user per send (the sweep and each
            payout) for the gas the pool pays in ETH, ``>= 0``.

    Attributes:
        asset, confirmations_required (the chain's), pool_key and pool_address (the token
        pool's active key generation ``m/44'/60'/a'/1/g``, :meth:`use_pool_key`),
        has_idempotent_send and uses_nonces (``True``: EVM transactions).

    Raises:
        ValueError: ``network_fee < 0``.
        InvalidAddress: ``contract`` is malformed.
    """

    def __init__(self, evm: EvmAdapter, *, asset: Asset, contract: str, network_fee: int) -> None:
        if network_fee < 0:
            raise ValueError("network_fee must be >= 0")
        self.evm = evm
        self.asset = asset
        self.contract = evm.normalize_address(contract)
        self.network_fee = network_fee
        self.confirmations_required = evm.confirmations_required
        self.has_idempotent_send = True
        self.uses_nonces = True
        self.sweep_fee_in_pool = True
        self.account = token_account(str(asset))
        self.pool_key = self.generation_key_ref(0)
        self.pool_address = evm.key_address(self.pool_key)
        # Every pool key this process was pointed at, by address: a stored send from an
        # earlier generation's address is still signed by its own key (mixer/pool_rotation.py).
        self._pool_keys: dict[str, str] = {self.pool_address: self.pool_key}

    def generation_key_ref(self, generation: int) -> str:
        """The BIP-32 path of pool key generation ``generation`` of this token:
        ``m/44'/60'/{account}'/1/{generation}`` (generation 0 is the token's first pool key;
        ``account`` is :func:`token_account` of the symbol). Rotated by ``mixhouse keys rotate``.

        Raises:
            ValueError: ``generation`` outside ``[0, 2**31)`` (BIP-32 non-hardened index).
        """
        if not 0 <= generation < 2**31:
            raise ValueError("a generation is in [0, 2**31)")
        return f"m/44'/60'/{self.account}'/1/{generation}"

    def use_pool_key(self, key_ref: str) -> str:
        """Make the key at ``key_ref`` this token's pool key: new sweeps, payouts and gas
        top-ups use its address (:attr:`pool_address`); a send from an earlier pool key's
        address is still signed by that key (the signer refuses it once retired). Returns the
        checksummed address.

        Raises:
            SignerError: the signer has no such key.
        """
        address = self.evm.key_address(key_ref)
        self._pool_keys[address] = key_ref
        self.pool_key, self.pool_address = key_ref, address
        return address

    # -- addresses -------------------------------------------------------------------------

    def normalize_address(self, text: str) -> str:
        """As :meth:`EvmAdapter.normalize_address`; the token contract itself is refused too
        (tokens sent to their own contract are lost on most tokens).

        Raises:
            InvalidAddress: malformed, bad EIP-55 checksum, zero address, or the contract.
        """
        from mixhouse.errors import InvalidAddress  # noqa: PLC0415 - keeps the import list short

        address = self.evm.normalize_address(text)
        if address == self.contract:
            raise InvalidAddress("the token contract cannot receive a payout")
        return address

    def deposit_path(self, index: int) -> str:
        """BIP-32 path of deposit key ``index``: ``m/44'/60'/a'/0/{index}``.

        Raises:
            ValueError: ``index`` outside ``[0, 2**31)``.
        """
        if not 0 <= index < 2**31:
            raise ValueError("a deposit key index is in [0, 2**31)")
        return f"m/44'/60'/{self.account}'/0/{index}"

    def deposit_address(self, index: int) -> str:
        """Checksummed address of deposit key ``index`` (:meth:`deposit_path`).

        Raises:
            ValueError: ``index`` outside ``[0, 2**31)``.
        """
        return self.evm.key_address(self.deposit_path(index))

    # -- reading the chain -----------------------------------------------------------------

    async def transfer_confirmations(self, transfer: Transfer) -> int | None:
        """Confirmations of a deposit the scanning engine found, by its ``ref``'s txid and log.

        Returns:
            ``head - block + 1`` while the receipt (status 1) still holds, at the same position,
            a ``Transfer`` of this token to the same address and value; ``None`` if the
            transaction is gone (a reorg), reverted, or no longer carries that log.

        Raises:
            ValueError: ``ref`` is not ``"<txid>/<n>"``.
            ChainError: the node failed.
        """
        txid, _, position = transfer.ref.partition("/")
        if not position.isdigit():
            raise ValueError(f"a token deposit ref is <txid>/<n>, got {transfer.ref!r}")
        receipt = await self.evm.receipt(txid)
        if receipt is None or int(receipt["status"]) != 1:
            return None
        logs = receipt["logs"]
        n = int(position)
        if n >= len(logs):
            return None
        log = logs[n]
        topics = [HexBytes(t) for t in log["topics"]]
        if (
            str(to_checksum_address(log["address"])) != self.contract
            or len(topics) != 3
            or topics[0] != HexBytes(TRANSFER_TOPIC)
            or _address_of_topic(topics[2]) != transfer.to_address
            or int.from_bytes(bytes(log["data"])[:32], "big") != transfer.amount
        ):
            return None
        head = int(await self.evm._head())
        return head - int(receipt["blockNumber"]) + 1

    async def balance(self, address: str) -> int:
        """``balanceOf(address)`` at the latest block, token base units.

        Raises:
            InvalidAddress: ``address`` is malformed.
            ChainError: the node failed or the call reverted.
        """
        owner = self.evm.normalize_address(address)
        answer = await self.evm.call(to=self.contract, data=_BALANCE_OF + abi_encode(["address"], [owner]))
        return int(abi_decode(["uint256"], answer)[0])

    async def gas_balance(self, address: str) -> int:
        """ETH balance of ``address`` in wei (the pool's gas tank, a deposit address's top-up).

        Raises:
            ChainError: the node failed.
        """
        return await self.evm.balance(address)

    async def is_blacklisted(self, address: str) -> bool:
        """Whether the token refuses transfers from ``address``: USDT's ``isBlackListed``;
        ``False`` for a token without a blacklist (the call reverts or returns nothing).

        Raises:
            ChainError: the node failed.
        """
        data = _IS_BLACKLISTED + abi_encode(["address"], [self.evm.normalize_address(address)])
        try:
            answer = await self.evm.call(to=self.contract, data=data)
        except CallReverted:
            return False
        return len(answer) >= 32 and int.from_bytes(answer[:32], "big") != 0

    async def transfer_fee_bps(self) -> int:
        """The token's fee on transfers in basis points (USDT ``basisPointsRate``, 0 if
        ``maximumFee`` is 0), ``0`` for a token without a fee switch.

        Raises:
            ChainError: the node failed.
        """
        try:
            rate = await self.evm.call(to=self.contract, data=_BASIS_POINTS_RATE)
            cap = await self.evm.call(to=self.contract, data=_MAXIMUM_FEE)
        except CallReverted:
            return 0
        if len(rate) < 32 or len(cap) < 32:
            return 0
        bps, maximum = int.from_bytes(rate[:32], "big"), int.from_bytes(cap[:32], "big")
        return bps if maximum > 0 else 0

    # -- fees ------------------------------------------------------------------------------

    async def quote_network_fee(self) -> FeeQuote:
        """What the user is charged per send, in token base units: the configured
        ``network_fee`` (the pool pays the real gas in ETH; see the module docstring).

        Raises:
            ChainError: the gas price is above the chain's cap (no send could be signed).
        """
        price = await self.evm.gas_price()
        return FeeQuote(
            per_send=self.network_fee,
            detail=f"{self.network_fee} {self.asset} base units per send (the pool pays the gas: {price} wei/gas)",
        )

    async def next_nonce(self, address: str) -> int:
        """As :meth:`EvmAdapter.next_nonce`.

        Raises:
            ChainError: the node failed.
        """
        return await self.evm.next_nonce(address)

    # -- sending ---------------------------------------------------------------------------

    def _key_of(self, sender: str, from_key_index: int | None) -> str:
        if from_key_index is not None:
            return self.deposit_path(from_key_index)
        return self.pool_key_of(sender) or self.pool_key

    def transfer_data(self, to_address: str, amount: int) -> bytes:
        """Calldata of ``transfer(to_address, amount)`` (EIP-20)."""
        return _TRANSFER + abi_encode(["address", "uint256"], [self.evm.normalize_address(to_address), amount])

    async def prepare_send(
        self,
        *,
        from_address: str,
        from_key_index: int | None,
        to_address: str,
        amount: int,
        fee: FeeQuote,
        nonce: int | None,
    ) -> PreparedSend:
        """Sign ``transfer(to_address, amount)`` on the token from ``from_address``.

        The gas limit is ``eth_estimateGas`` of that call, the price ``P`` the chain's now
        (:meth:`EvmAdapter.gas_price`): the sender's ETH pays ``gas * P`` wei. ``fee`` (the
        token units charged to the user) does not limit it: it is not paid in ETH.

        Returns:
            ``PreparedSend`` with ``amount`` token base units, ``network_fee_max = 0`` (no token
            is spent on fees) and the raw tx, txid and nonce.

        Raises:
            ValueError: ``nonce`` is ``None`` or negative, or ``amount <= 0``.
            TokenBlacklisted: the token refuses transfers from ``from_address``.
            TokenFeeActive: the token's fee switch is on.
            BroadcastRejected: the transfer would revert now (e.g. the sender lacks the tokens).
            ChainError: the node or the signer failed, or the gas price is above the cap.
        """
        del fee  # charged in token units by the mixer; the gas is the sender's ETH
        if nonce is None or nonce < 0:
            raise ValueError("an EVM send needs a nonce >= 0")
        if amount <= 0:
            raise ValueError("amount must be positive")
        sender = self.evm.normalize_address(from_address)
        await self._check_sendable(sender)
        data = self.transfer_data(to_address, amount)
        gas = await self.transfer_gas(sender, data)
        price = await self.evm.gas_price()
        prepared = await self.evm.prepare_contract_call_async(
            key_ref=self._key_of(sender, from_key_index),
            to=self.contract,
            data=data,
            value=0,
            gas=gas,
            max_fee_per_gas=price,
            nonce=nonce,
        )
        if prepared.from_address != sender:
            raise ChainError(f"the key of this send does not own {sender}")
        return PreparedSend(
            from_address=sender,
            to_address=self.evm.normalize_address(to_address),
            amount=amount,
            network_fee_max=0,
            raw_tx=prepared.raw_tx,
            txid=prepared.txid,
            nonce=nonce,
        )

    async def _check_sendable(self, sender: str) -> None:
        if await self.is_blacklisted(sender):
            raise TokenBlacklisted(f"the {self.asset} contract has blacklisted {sender}: its transfers revert")
        bps = await self.transfer_fee_bps()
        if bps > 0:
            raise TokenFeeActive(f"the {self.asset} fee switch is on ({bps} bps): sends wait for the operator")

    async def transfer_gas(self, sender: str, data: bytes) -> int:
        """Gas limit of a token call ``data`` from ``sender``: ``eth_estimateGas`` (+ margin).

        Raises:
            BroadcastRejected: the call would revert (not enough tokens, a paused token...).
            ChainError: the node failed.
        """
        try:
            return GAS_MARGIN + await self.evm.estimate_gas(from_address=sender, to=self.contract, data=data)
        except CallReverted as exc:
            raise BroadcastRejected(f"a {self.asset} transfer from {sender} would revert: {exc}") from exc

    def gas_needed(self, prepared: PreparedSend) -> int:
        """Wei ``prepared`` can cost its sender at most: ``gas * maxFeePerGas`` of its signed
        transaction. Every send here is signed with ``maxFeePerGas == maxPriorityFeePerGas``, so
        it pays exactly ``gas_used * maxFeePerGas``: the top-up a sweep needs is this, signed
        first so the price cannot move between the top-up and the sweep.

        Raises:
            ValueError: ``prepared`` has no raw transaction.
        """
        if prepared.raw_tx is None:
            raise ValueError("a prepared EVM send has its raw transaction")
        fields = TypedTransaction.from_bytes(HexBytes(prepared.raw_tx)).as_dict()
        return int(fields["gas"]) * int(fields["maxFeePerGas"])

    def pool_key_of(self, address: str) -> str | None:
        """The key reference of ``address`` if it is a pool key generation this adapter was
        pointed at (:meth:`use_pool_key`), else ``None``."""
        return self._pool_keys.get(address)

    async def prepare_gas_topup(
        self, *, to_address: str, wei: int, nonce: int, from_address: str | None = None
    ) -> PreparedSend:
        """Sign the pool's ETH send of ``wei`` to a deposit address (the gas of its sweep).

        ``from_address``: the pool key generation whose tank pays (:meth:`pool_key_of` must
        know it); by default the active one (:attr:`pool_address`).

        Returns:
            ``PreparedSend`` with ``amount = wei`` and ``network_fee_max = 21000 * P`` wei.

        Raises:
            ValueError: ``wei <= 0``, a negative nonce, or ``from_address`` is no known pool key.
            ChainError: the node or the signer failed, or the price is above the cap.
        """
        if wei <= 0:
            raise ValueError("a gas top-up is positive")
        sender = self.pool_address if from_address is None else from_address
        key_ref = self.pool_key_of(sender)
        if key_ref is None:
            raise ValueError(f"{sender} is not a pool key of {self.asset}")
        price = await self.evm.gas_price()
        return await self.evm.prepare_send(
            from_address=sender,
            from_key_index=None,
            to_address=to_address,
            amount=wei,
            fee=FeeQuote(per_send=GAS_LIMIT * price, detail="gas top-up"),
            nonce=nonce,
            from_key_ref=key_ref,
        )

    async def broadcast(self, prepared: PreparedSend) -> None:
        """As :meth:`EvmAdapter.broadcast` (same raw tx, same txid: safe to repeat).

        Raises:
            BroadcastRejected, SendOutcomeUnknown, ChainError: as :meth:`EvmAdapter.broadcast`.
        """
        await self.evm.broadcast(prepared)

    async def check_send(self, prepared: PreparedSend, *, earlier_sends: int = 0) -> SendCheck:
        """As :meth:`EvmAdapter.check_send`, with ``network_fee_paid = 0`` token units (the gas
        is ETH: :meth:`gas_paid`). A mined transfer whose receipt lacks the ``Transfer`` log of
        ``amount`` to the receiver (a token that returned success without moving the tokens,
        or moved less) is ``FAILED``.

        Raises:
            ValueError: ``prepared`` has no ``txid``.
            ChainError: the node failed.
        """
        check = await self.evm.check_send(prepared, earlier_sends=earlier_sends)
        if check.state not in (SendState.PENDING, SendState.CONFIRMED) or check.confirmations == 0:
            return SendCheck(check.state, check.confirmations, None if check.network_fee_paid is None else 0)
        assert prepared.txid is not None  # evm.check_send raised otherwise
        receipt = await self.evm.receipt(prepared.txid)
        if receipt is None:
            return SendCheck(SendState.NOT_FOUND, 0, None)
        if not self._moved(receipt, prepared):
            return SendCheck(SendState.FAILED, check.confirmations, 0)
        return SendCheck(check.state, check.confirmations, 0)

    def _moved(self, receipt: TxReceipt, prepared: PreparedSend) -> bool:
        """Whether ``receipt`` holds this token's ``Transfer(from, to, amount)``."""
        for log in receipt["logs"]:
            topics = [HexBytes(t) for t in log["topics"]]
            if (
                str(to_checksum_address(log["address"])) == self.contract
                and len(topics) == 3
                and topics[0] == HexBytes(TRANSFER_TOPIC)
                and _address_of_topic(topics[1]) == prepared.from_address
                and _address_of_topic(topics[2]) == prepared.to_address
                and int.from_bytes(bytes(log["data"])[:32], "big") == prepared.amount
            ):
                return True
        return False

    async def gas_paid(self, txid: str) -> int | None:
        """Wei the sender paid for ``txid`` (``gasUsed * effectiveGasPrice``), ``None`` while
        it is not mined: the ETH books' line for a token send.

        Raises:
            ChainError: the node failed.
        """
        receipt = await self.evm.receipt(txid)
        if receipt is None:
            return None
        return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])

    async def aclose(self) -> None:
        """Nothing of its own to close: the shared :class:`EvmAdapter` is closed by its owner."""
        return
