"""Native ETH on an EVM chain, over Ethereum JSON-RPC with web3.py (async).

What this adapter moves: plain value transfers (21 000 gas, empty data) between externally
owned accounts whose keys a :class:`~mixhouse.keys.signer.Signer` holds, named by their BIP-44
paths (deposit keys ``m/44'/60'/0'/0/i``, the pool key ``m/44'/60'/1'/0/0``): derived from one
seed by the software signer, generated inside a PKCS#11 token by the HSM signer. The adapter
computes the EIP-1559 signing hash itself and asks the signer for ``(r, s)``; it never holds a
private key.

Contract calls (the HTLC leg of issue 10, :mod:`mixhouse.chains.evm.htlc`) go through the same
signing path: :meth:`EvmAdapter.prepare_contract_call` signs a call with data and a gas limit,
:meth:`~EvmAdapter.estimate_gas`, :meth:`~EvmAdapter.call` and :meth:`~EvmAdapter.logs` read,
and a revert is :class:`CallReverted`. The caller encodes the calldata; the adapter knows no
contract.

Fees (EIP-1559). Every send is signed with ``maxFeePerGas == maxPriorityFeePerGas == P``
where ``P = 2 * base_fee(latest) + suggested_priority_fee``. The price a type-2 transaction
pays per gas is ``min(maxFeePerGas, base_fee + maxPriorityFeePerGas) = min(P, base_fee + P)``,
which is ``P`` in every block it can be included in (it can only be included while
``base_fee <= P``). So a send costs exactly ``21000 * P`` wei, known before it is signed: a
sweep can empty a deposit address to the last wei and the user is charged an exact amount.
The price is that the block producer receives the whole ``P - base_fee`` as a tip, about twice
what a wallet would pay; the doubled base fee keeps the transaction includable while the base
fee rises (at most 12.5 % per block, EIP-1559), for about six full blocks.

Deposits are found by the scanning engine (:mod:`mixhouse.watch.deposits`), which reads whole
blocks: only top-level transactions are found, not ETH moved by a contract's internal call.
:meth:`EvmAdapter.transfer_confirmations` follows a deposit it found (receipt ``status == 1``).

Errors: every failure of the node or of the connection leaves as
:class:`~mixhouse.errors.ChainError` or one of its subclasses, never as a raw web3 or aiohttp
exception.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, cast

import aiohttp
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_typing import HexStr
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import (
    BlockNotFound,
    ContractLogicError,
    MethodUnavailable,
    RequestTimedOut,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.types import BlockData, LogReceipt, RPCEndpoint, TxData, TxReceipt

from mixhouse.chains.base import (
    ChainAdapter,
    FeeQuote,
    PreparedSend,
    SendCheck,
    SendState,
    Transfer,
)
from mixhouse.errors import BroadcastRejected, ChainError, InvalidAddress, SendOutcomeUnknown
from mixhouse.keys.hd import POOL_PATH, deposit_path, evm_address
from mixhouse.keys.offload import SIGN_TIMEOUT_SECONDS, SigningThread
from mixhouse.keys.signer import Signer, SignerError, recovery_id
from mixhouse.money import Asset

# Gas of a plain ETH transfer to an externally owned account (Yellow Paper G_transaction).
GAS_LIMIT = 21_000
# Used when the node lacks eth_maxPriorityFeePerGas (it is not in the execution-API spec).
FALLBACK_PRIORITY_FEE = 10**9  # 1 gwei

_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_ZERO_ADDRESS = "0x" + "0" * 40

# Node answers meaning "I already have exactly this transaction" (geth/reth "already known",
# anvil "transaction already imported", besu "known transaction", erigon "already have").
_ALREADY_KNOWN = ("already known", "known transaction", "already imported", "already have")
# Answers meaning "this nonce is taken": fine if the one that took it is our own txid.
_NONCE_TAKEN = ("nonce too low", "replacement transaction underpriced", "already used")
# JSON-RPC codes that say the node did not process the request at all.
_NOT_PROCESSED_CODES = (-32005,)  # "limit exceeded" (rate limiting), EIP-1474
# JSON-RPC codes after which a sent transaction may or may not be in the node's pool.
_AMBIGUOUS_CODES = (-32603,)  # "internal error", JSON-RPC 2.0


def _rpc_error(exc: Web3RPCError) -> tuple[int | None, str]:
    """The ``(code, message)`` of a JSON-RPC error response, as far as it has them."""
    response = exc.rpc_response
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        return (code if isinstance(code, int) else None, str(message) if message else str(exc))
    return None, str(exc)


class CallReverted(ChainError):
    """A contract call or gas estimate reverted: the transaction would fail as it stands.

    Attributes:
        data: the revert data (``0x`` hex: an ``Error(string)`` or a custom error), or ``""``.
    """

    def __init__(self, message: str, data: str) -> None:
        super().__init__(message)
        self.data = data


@contextlib.contextmanager
def _reverts(what: str) -> Iterator[None]:
    """Turn web3's revert exceptions into :class:`CallReverted`."""
    try:
        yield
    except ContractLogicError as exc:
        data = exc.data if isinstance(exc.data, str) else ""
        raise CallReverted(f"{what} reverted: {exc.message or exc}", data) from exc


@contextlib.contextmanager
def _node_errors(what: str) -> Iterator[None]:
    """Turn failures of a read-only request into :class:`ChainError` naming ``what``.

    Reads are safe to repeat, so there is no "outcome unknown" here: every failure is a
    ChainError and the caller's job retries later.
    """
    try:
        yield
    except Web3RPCError as exc:
        code, message = _rpc_error(exc)
        raise ChainError(f"{what}: the node answered error {code}: {message}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ChainError(f"{what}: cannot reach the node ({type(exc).__name__}: {exc})") from exc
    except (Web3Exception, json.JSONDecodeError) as exc:
        raise ChainError(f"{what}: unusable answer from the node ({exc})") from exc


def _hex_txid(value: object) -> str:
    """A 32-byte hash as ``0x`` + 64 lowercase hex."""
    return HexBytes(cast(Any, value)).to_0x_hex()


class EvmAdapter(ChainAdapter):
    """Native ETH over Ethereum JSON-RPC (any EIP-1559 chain: mainnet, a testnet, anvil).

    Args:
        rpc_url: HTTP(S) JSON-RPC endpoint of the node.
        chain_id: EIP-155 chain id every transaction is signed for (1 mainnet, 31337 anvil).
        signer: holds the deposit keys and the pool key, by BIP-44 path
            (:mod:`mixhouse.keys.signer`).
        confirmations: blocks (including the one holding it) after which a transfer or a
            send is final, ``>= 1``.
        max_fee_per_gas_cap: wei per gas above which no send is quoted or signed.
        request_timeout: seconds per JSON-RPC request (connect + answer).
        sign_timeout: seconds a signing step (a key's public key, a signature) may take in
            the adapter's signing thread before the send gives up with ``SignerError`` and
            is retried (:mod:`mixhouse.keys.offload`: a hung token never blocks the loop).

    Attributes:
        asset: ``Asset.ETH``; amounts are wei.
        pool_address: checksummed address of the pool key ``m/44'/60'/1'/0/0``.
        has_idempotent_send: ``True``: a signed transaction has one txid and one nonce.

    Raises:
        ValueError: ``confirmations < 1``, ``chain_id < 1`` or a non-positive cap or timeout.
    """

    def __init__(
        self,
        rpc_url: str,
        *,
        chain_id: int,
        signer: Signer,
        confirmations: int,
        max_fee_per_gas_cap: int,
        request_timeout: float = 10.0,
        sign_timeout: float = SIGN_TIMEOUT_SECONDS,
    ) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be at least 1")
        if chain_id < 1:
            raise ValueError("chain_id must be positive")
        if max_fee_per_gas_cap <= 0:
            raise ValueError("max_fee_per_gas_cap must be positive")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self.asset = Asset.ETH
        self.confirmations_required = confirmations
        self.has_idempotent_send = True
        self.uses_nonces = True
        self.chain_id = chain_id
        self.max_fee_per_gas_cap = max_fee_per_gas_cap
        self.rpc_url = rpc_url
        self._signer = signer
        # The async paths sign here, never on the event loop (a token may be slow or hang).
        self._signing = SigningThread(f"signer-{self.asset}", timeout=sign_timeout)
        # Key path -> checksummed address: asked for on every scan, a public key costs a
        # token round trip on an HSM.
        self._addresses: dict[str, str] = {}
        self.pool_address = self._address(POOL_PATH)
        # Pool address -> key path of every pool key generation in use (mixer/pool_rotation.py): a
        # payout stored from an older generation's address is signed by that generation's key.
        self._pool_keys: dict[str, str] = {self.pool_address: POOL_PATH}
        # No retries inside web3: a retried eth_sendRawTransaction would blur the difference
        # between "refused" and "outcome unknown", and the job layer already retries reads.
        self._provider = AsyncHTTPProvider(
            rpc_url,
            request_kwargs={"timeout": aiohttp.ClientTimeout(total=request_timeout)},
            exception_retry_configuration=None,
        )
        # No default middleware: no ENS lookups, no hidden eth_chainId calls, and no
        # extraData check that would reject blocks of proof-of-authority chains.
        self._w3 = AsyncWeb3(self._provider, middleware=[])

    # -- addresses -------------------------------------------------------------------------

    def normalize_address(self, text: str) -> str:
        """Validate an Ethereum address and return its EIP-55 checksummed form.

        Accepts ``0x`` + 40 hex digits, surrounding whitespace ignored. All-lowercase or
        all-uppercase hex carries no checksum and is accepted; mixed case must match EIP-55
        exactly, since a typo in it is then detectable.

        Raises:
            InvalidAddress: not ``0x`` + 40 hex, bad EIP-55 checksum, or the zero address
                (sending there burns the coins).
        """
        if not isinstance(text, str):
            raise InvalidAddress("an Ethereum address must be text")
        candidate = text.strip()
        if not _ADDRESS_RE.fullmatch(candidate):
            raise InvalidAddress("an Ethereum address is 0x followed by 40 hexadecimal digits")
        body = candidate[2:]
        checksummed = str(to_checksum_address(candidate))
        if body not in {body.lower(), body.upper()} and checksummed != candidate:
            raise InvalidAddress("the Ethereum address has a bad EIP-55 checksum (mistyped?)")
        if candidate.lower() == _ZERO_ADDRESS:
            raise InvalidAddress("the zero address cannot receive a payout")
        return checksummed

    def deposit_address(self, index: int) -> str:
        """Checksummed address of the deposit key ``m/44'/60'/0'/0/{index}`` (BIP-44).

        Raises:
            ValueError: ``index`` outside ``[0, 2**31)``.
        """
        return self._address(deposit_path(index))

    def use_pool_key(self, key_ref: str) -> str:
        """Make the key at ``key_ref`` the pool key: new sweeps and payouts use its address
        (:attr:`pool_address`); sends already stored from an earlier pool key's address are
        still signed by that key (the signer refuses it once retired). Returns the address.

        Raises:
            SignerError: the signer has no such key.
        """
        address = self._address(key_ref)
        self._pool_keys[address] = key_ref
        self.pool_address = address
        return address

    def _address(self, path: str) -> str:
        address = self._addresses.get(path)
        if address is None:
            address = evm_address(self._signer.public_key(path))
            self._addresses[path] = address
        return address

    # -- reading the chain -----------------------------------------------------------------

    async def verify_chain_id(self) -> None:
        """Check that the node serves ``chain_id`` (``eth_chainId``); call once at startup.

        Raises:
            ChainError: the node is unreachable or serves another chain.
        """
        with _node_errors("eth_chainId"):
            served = int(await self._w3.eth.chain_id)
        if served != self.chain_id:
            raise ChainError(f"the node at the RPC URL serves chain {served}, expected {self.chain_id}")

    async def _head(self) -> int:
        with _node_errors("eth_blockNumber"):
            return int(await self._w3.eth.block_number)

    async def _block(self, number: int) -> BlockData | None:
        """Block ``number`` with full transactions, ``None`` if the node has no such block."""
        with _node_errors(f"eth_getBlockByNumber({number})"):
            try:
                return await self._w3.eth.get_block(number, full_transactions=True)
            except BlockNotFound:
                return None

    async def _receipt(self, txid: str) -> TxReceipt | None:
        """Receipt of ``txid`` (``eth_getTransactionReceipt``), ``None`` if not mined."""
        with _node_errors(f"eth_getTransactionReceipt({txid})"):
            try:
                return await self._w3.eth.get_transaction_receipt(HexStr(txid))
            except TransactionNotFound:
                return None

    async def _transaction(self, txid: str) -> TxData | None:
        """Transaction ``txid`` (``eth_getTransactionByHash``), ``None`` if the node has none."""
        with _node_errors(f"eth_getTransactionByHash({txid})"):
            try:
                return await self._w3.eth.get_transaction(HexStr(txid))
            except TransactionNotFound:
                return None

    async def _depth(self, txid: str) -> tuple[TxReceipt | None, int | None]:
        """``(receipt, confirmations)`` of ``txid``.

        Confirmations are ``head - receipt.blockNumber + 1`` if mined, ``0`` if only in the
        mempool, ``None`` if the node knows nothing of it (never arrived, dropped, reorged out
        and not re-queued).
        """
        receipt = await self._receipt(txid)
        if receipt is None:
            return None, (0 if await self._transaction(txid) is not None else None)
        # Head is read after the receipt so it is never below the receipt's block.
        head = await self._head()
        return receipt, max(1, head - int(receipt["blockNumber"]) + 1)

    async def block_hash(self, number: int) -> HexBytes | None:
        """Hash of main-chain block ``number``, ``None`` if the node has no such block.

        Raises:
            ChainError: the node failed.
        """
        with _node_errors(f"eth_getBlockByNumber({number})"):
            try:
                block = await self._w3.eth.get_block(number, full_transactions=False)
            except BlockNotFound:
                return None
        return HexBytes(block["hash"])

    async def transfer_confirmations(self, transfer: Transfer) -> int | None:
        """Confirmations of a transfer the scanning engine found, looked up by its txid (``ref``).

        Returns:
            ``head - block + 1`` if mined in the current chain with status 1; ``0`` if back
            in the mempool only; ``None`` if the node knows no such transaction (a reorg
            removed it) or its receipt now says it reverted (status 0).

        Raises:
            ChainError: the node failed.
        """
        receipt, depth = await self._depth(transfer.ref)
        if receipt is not None and int(receipt["status"]) != 1:
            return None
        return depth

    async def balance(self, address: str) -> int:
        """Balance of ``address`` in wei at the latest block (``eth_getBalance``, "latest").

        Raises:
            InvalidAddress: ``address`` is malformed.
            ChainError: the node failed.
        """
        checksummed = self.normalize_address(address)
        with _node_errors(f"eth_getBalance({checksummed})"):
            return int(await self._w3.eth.get_balance(to_checksum_address(checksummed), "latest"))

    async def _priority_fee(self) -> int:
        """The node's suggested tip in wei per gas (``eth_maxPriorityFeePerGas``), or 1 gwei
        when the node answers that method with a JSON-RPC error (it is not in the spec)."""
        with _node_errors("eth_maxPriorityFeePerGas"):
            try:
                answer = await self._w3.manager.coro_request(RPCEndpoint("eth_maxPriorityFeePerGas"), [])
            except RequestTimedOut:
                raise
            except Web3RPCError:
                return FALLBACK_PRIORITY_FEE
        try:
            return int(answer, 16) if isinstance(answer, str) else int(answer)
        except (TypeError, ValueError) as exc:
            raise ChainError(f"eth_maxPriorityFeePerGas answered {answer!r}") from exc

    async def quote_network_fee(self) -> FeeQuote:
        """The exact cost of one send now (EIP-1559, see the module docstring).

        ``P = 2 * baseFeePerGas(latest block) + eth_maxPriorityFeePerGas`` (1 gwei if the
        node lacks the method); every send pays exactly ``P`` per gas.

        Returns:
            ``FeeQuote(per_send=21000 * P, detail="21000 gas x {P} wei")``, in wei.

        Raises:
            ChainError: the node failed, the chain has no EIP-1559 base fee, or ``P`` is above
                ``max_fee_per_gas_cap``.
        """
        price = await self.gas_price()
        return FeeQuote(per_send=GAS_LIMIT * price, detail=f"{GAS_LIMIT} gas x {price} wei")

    async def gas_price(self) -> int:
        """The price per gas every send is signed with now, wei: ``P = 2 * baseFeePerGas(latest)
        + eth_maxPriorityFeePerGas`` (see the module docstring).

        Raises:
            ChainError: the node failed, the chain has no EIP-1559 base fee, or ``P`` is above
                ``max_fee_per_gas_cap``.
        """
        with _node_errors("eth_getBlockByNumber(latest)"):
            latest = await self._w3.eth.get_block("latest")
        base_fee = latest.get("baseFeePerGas")
        if base_fee is None:
            raise ChainError("the chain has no EIP-1559 base fee (pre-London block)")
        tip = await self._priority_fee()
        price = 2 * int(base_fee) + tip
        if price > self.max_fee_per_gas_cap:
            raise ChainError(f"gas price {price} wei is above the configured cap of {self.max_fee_per_gas_cap} wei")
        return price

    async def next_nonce(self, address: str) -> int:
        """Next nonce of ``address``: ``eth_getTransactionCount(address, "pending")``.

        Raises:
            InvalidAddress: ``address`` is malformed.
            ChainError: the node failed.
        """
        checksummed = self.normalize_address(address)
        with _node_errors(f"eth_getTransactionCount({checksummed})"):
            return int(await self._w3.eth.get_transaction_count(to_checksum_address(checksummed), "pending"))

    # -- sending ---------------------------------------------------------------------------

    async def prepare_send(
        self,
        *,
        from_address: str,
        from_key_index: int | None,
        to_address: str,
        amount: int,
        fee: FeeQuote,
        nonce: int | None,
        from_key_ref: str | None = None,
    ) -> PreparedSend:
        """Sign an EIP-1559 (type 2) transfer of ``amount`` wei; nothing is sent.

        The transaction is ``{chainId, nonce, to, value=amount, gas=21000,
        maxFeePerGas=P, maxPriorityFeePerGas=P, data=""}`` with ``P = fee.per_send // 21000``,
        so it costs the sender exactly ``21000 * P <= fee.per_send`` wei on top of ``amount``.
        It is signed with the deposit key ``m/44'/60'/0'/0/{from_key_index}`` or, when
        ``from_key_index`` is ``None``, the pool key ``m/44'/60'/1'/0/0``; ``from_key_ref``, when
        given, names the key instead (a pool key generation's ``m/44'/60'/1'/0/g``,
        :mod:`mixhouse.mixer.pool_rotation`).

        Returns:
            ``PreparedSend`` with ``raw_tx`` (the signed RLP bytes), ``txid`` (keccak of them,
            lowercase ``0x`` hex), ``nonce`` and ``network_fee_max = 21000 * P`` wei.

        Raises:
            ValueError: ``nonce`` is ``None`` or negative, ``amount <= 0``, or the fee is less
                than 21000 wei.
            InvalidAddress: ``from_address`` or ``to_address`` is malformed.
            ChainError: the key at that path does not own ``from_address``, ``P`` is above
                the cap, or signing failed.
        """
        if nonce is None or nonce < 0:
            raise ValueError("an EVM send needs a nonce >= 0")
        if amount <= 0:
            raise ValueError("amount must be positive")
        price = fee.per_send // GAS_LIMIT
        if price <= 0:
            raise ValueError(f"fee {fee.per_send} wei does not pay for {GAS_LIMIT} gas")
        if price > self.max_fee_per_gas_cap:
            raise ChainError(f"gas price {price} wei is above the cap of {self.max_fee_per_gas_cap} wei")
        sender = self.normalize_address(from_address)
        receiver = self.normalize_address(to_address)
        if from_key_ref is not None:
            path = from_key_ref
        else:
            path = self._pool_keys.get(sender, POOL_PATH) if from_key_index is None else deposit_path(from_key_index)
        transaction: dict[str, Any] = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": nonce,
            "to": receiver,
            "value": amount,
            "gas": GAS_LIMIT,
            "maxFeePerGas": price,
            "maxPriorityFeePerGas": price,
            "data": b"",
            "accessList": [],
        }
        # In the signing thread: the key's public key (a token round trip for a new key) and
        # the signature; a hung token is a SignerError here after sign_timeout, not a stall.
        raw_tx = await self._signing.run(self._sign_as, path, sender, transaction)
        return PreparedSend(
            from_address=sender,
            to_address=receiver,
            amount=amount,
            network_fee_max=GAS_LIMIT * price,
            raw_tx=raw_tx,
            txid=_hex_txid(keccak(raw_tx)),
            nonce=nonce,
        )

    def _sign_as(self, path: str, sender: str, transaction: dict[str, Any]) -> bytes:
        """:meth:`_sign` once the key at ``path`` is checked to own ``sender``.

        Raises:
            ChainError: it does not, or signing failed.
        """
        if self._address(path) != sender:
            raise ChainError(f"the key at {path} does not own {sender}")
        return self._sign(path, transaction)

    def _sign(self, path: str, transaction: dict[str, Any]) -> bytes:
        """The signed RLP bytes of an EIP-1559 ``transaction`` by the key at ``path``."""
        try:
            # EIP-1559: the signing hash is keccak256(0x02 || rlp([chainId, nonce, ...,
            # accessList])); the signature goes in as (y_parity, r, s).
            digest = bytes(TypedTransaction.from_dict(transaction).hash())
            r, s = self._signer.sign_digest(path, digest)
            y_parity = recovery_id(self._signer.public_key(path), digest, r, s)
            signed = TypedTransaction.from_dict({**transaction, "v": y_parity, "r": r, "s": s})
            return bytes(signed.encode())
        except SignerError:
            raise
        except (TypeError, ValueError) as exc:
            raise ChainError(f"signing the transaction failed: {exc}") from exc

    # -- contracts -------------------------------------------------------------------------

    def key_address(self, key_ref: str) -> str:
        """Checksummed address of the signer's key at ``key_ref`` (any BIP-32 path).

        Raises:
            SignerError: the signer has no such key.
        """
        return self._address(key_ref)

    def prepare_contract_call(
        self,
        *,
        key_ref: str,
        to: str | None,
        data: bytes,
        value: int,
        gas: int,
        max_fee_per_gas: int,
        nonce: int,
    ) -> PreparedSend:
        """Sign an EIP-1559 transaction calling a contract (or creating one); nothing is sent.

        ``{chainId, nonce, to, value, gas, maxFeePerGas = maxPriorityFeePerGas =
        max_fee_per_gas, data}`` signed by the key at ``key_ref`` (see :meth:`prepare_send`
        for why both fee fields are equal). Broadcast and follow it with :meth:`broadcast`
        and :meth:`check_send`, like a transfer.

        Args:
            to: the contract address, ``None`` to deploy ``data`` as init code.
            value: wei sent along, ``>= 0``.
            gas: the gas limit, ``>= 21000``.
            max_fee_per_gas: wei per gas (:meth:`gas_price`), at most the cap.

        Returns:
            ``PreparedSend`` with ``to_address`` the contract (``""`` for a deployment),
            ``amount = value`` and ``network_fee_max = gas * max_fee_per_gas``.

        Raises:
            ValueError: a negative nonce or value, or a gas limit below 21000.
            InvalidAddress: ``to`` is malformed.
            ChainError: the price is not positive or above the cap, or signing failed.
        """
        if nonce < 0 or value < 0:
            raise ValueError("nonce and value must be >= 0")
        if gas < GAS_LIMIT:
            raise ValueError(f"a gas limit is at least {GAS_LIMIT}")
        if not 0 < max_fee_per_gas <= self.max_fee_per_gas_cap:
            raise ChainError(f"gas price {max_fee_per_gas} wei is not in (0, {self.max_fee_per_gas_cap}]")
        receiver = self.normalize_address(to) if to is not None else None
        transaction: dict[str, Any] = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": nonce,
            "value": value,
            "gas": gas,
            "maxFeePerGas": max_fee_per_gas,
            "maxPriorityFeePerGas": max_fee_per_gas,
            "data": bytes(data),
            "accessList": [],
        }
        if receiver is not None:
            transaction["to"] = receiver
        raw_tx = self._sign(key_ref, transaction)
        return PreparedSend(
            from_address=self._address(key_ref),
            to_address=receiver or "",
            amount=value,
            network_fee_max=gas * max_fee_per_gas,
            raw_tx=raw_tx,
            txid=_hex_txid(keccak(raw_tx)),
            nonce=nonce,
        )

    async def prepare_contract_call_async(
        self,
        *,
        key_ref: str,
        to: str | None,
        data: bytes,
        value: int,
        gas: int,
        max_fee_per_gas: int,
        nonce: int,
    ) -> PreparedSend:
        """:meth:`prepare_contract_call` in the adapter's signing thread, for coroutines: the
        event loop keeps running while the signer works (:mod:`mixhouse.keys.offload`).

        Raises:
            SignerError: the signer did not answer within ``sign_timeout`` seconds, or failed.
            ValueError, InvalidAddress, ChainError: as :meth:`prepare_contract_call`.
        """
        return await self._signing.run(
            lambda: self.prepare_contract_call(
                key_ref=key_ref,
                to=to,
                data=data,
                value=value,
                gas=gas,
                max_fee_per_gas=max_fee_per_gas,
                nonce=nonce,
            )
        )

    async def key_address_async(self, key_ref: str) -> str:
        """:meth:`key_address` in the signing thread (a new key is a token round trip).

        Raises:
            SignerError: the signer has no such key, failed, or did not answer in time.
        """
        return await self._signing.run(self._address, key_ref)

    async def call(self, *, to: str, data: bytes, from_address: str | None = None) -> bytes:
        """``eth_call`` of ``data`` on ``to`` at the latest block; the return data.

        Raises:
            CallReverted: the call reverts (its revert data in ``data``).
            ChainError: the node failed.
        """
        request: dict[str, Any] = {"to": to_checksum_address(to), "data": HexBytes(data).to_0x_hex()}
        if from_address is not None:
            request["from"] = to_checksum_address(from_address)
        with _node_errors("eth_call"), _reverts("eth_call"):
            return bytes(await self._w3.eth.call(cast(Any, request), "latest"))

    async def estimate_gas(self, *, from_address: str, to: str | None, data: bytes, value: int = 0) -> int:
        """``eth_estimateGas`` of a transaction from ``from_address`` (the gas it would use now).

        Raises:
            CallReverted: it would revert.
            ChainError: the node failed.
        """
        request: dict[str, Any] = {
            "from": to_checksum_address(from_address),
            "data": HexBytes(data).to_0x_hex(),
            "value": value,
        }
        if to is not None:
            request["to"] = to_checksum_address(to)
        with _node_errors("eth_estimateGas"), _reverts("eth_estimateGas"):
            return int(await self._w3.eth.estimate_gas(cast(Any, request)))

    async def logs(
        self,
        *,
        address: str,
        topics: Sequence[str | Sequence[str] | None],
        from_block: int,
        to_block: int | None = None,
    ) -> list[LogReceipt]:
        """``eth_getLogs`` of ``address`` from ``from_block`` to ``to_block`` (the head if
        ``None``); ``topics`` are ``0x`` hex strings, a list of them for "any of", ``None`` for any
        (hex strings, not bytes: some nodes silently match nothing for byte topics).

        Raises:
            ChainError: the node failed.
        """
        params: dict[str, Any] = {
            "address": to_checksum_address(address),
            "topics": [list(t) if isinstance(t, Sequence) and not isinstance(t, str) else t for t in topics],
            "fromBlock": from_block,
            "toBlock": "latest" if to_block is None else to_block,
        }
        with _node_errors("eth_getLogs"):
            return list(await self._w3.eth.get_logs(cast(Any, params)))

    async def receipt(self, txid: str) -> TxReceipt | None:
        """The receipt of ``txid``, ``None`` while it is not mined.

        Raises:
            ChainError: the node failed.
        """
        return await self._receipt(txid)

    async def broadcast(self, prepared: PreparedSend) -> None:
        """Send ``prepared.raw_tx`` with ``eth_sendRawTransaction``; safe to repeat.

        A repeat is recognised and is not an error: the node says it already has the
        transaction ("already known", "known transaction", "transaction already imported"),
        or says the nonce is taken ("nonce too low", "replacement transaction underpriced")
        and ``eth_getTransactionByHash(txid)`` finds our own transaction.

        Raises:
            ValueError: ``prepared`` has no ``raw_tx`` or ``txid``.
            BroadcastRejected: the node refused it (insufficient funds, nonce taken by another
                transaction, fee too low, invalid signature or chain id...).
            SendOutcomeUnknown: timeout, connection dropped mid-request, HTTP 5xx, or an
                answer we cannot read: it may be in the node's pool.
            ChainError: the node could not be reached or refused the request unprocessed
                (connection refused, HTTP 4xx, rate limited): nothing was sent.
        """
        raw, txid = prepared.raw_tx, prepared.txid
        if raw is None or txid is None:
            raise ValueError("an EVM send needs raw_tx and txid (use prepare_send)")
        try:
            sent = await self._w3.eth.send_raw_transaction(raw)
        except RequestTimedOut as exc:
            raise SendOutcomeUnknown(f"the node timed out on {txid}") from exc
        except Web3RPCError as exc:
            await self._judge_refusal(exc, txid)
            return
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Raised before the request was written: the node never saw the transaction.
            raise ChainError(f"cannot connect to the node to send {txid}: {exc}") from exc
        except aiohttp.ClientResponseError as exc:
            if exc.status >= 500:
                raise SendOutcomeUnknown(f"HTTP {exc.status} from the node for {txid}") from exc
            raise ChainError(f"HTTP {exc.status} from the node for {txid}: not sent") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendOutcomeUnknown(
                f"connection lost while sending {txid} ({type(exc).__name__}): it may have landed"
            ) from exc
        except (Web3Exception, json.JSONDecodeError) as exc:
            raise SendOutcomeUnknown(f"unreadable answer to sending {txid}: {exc}") from exc
        if _hex_txid(sent) != txid:
            raise SendOutcomeUnknown(f"the node accepted {txid} but answered hash {_hex_txid(sent)}")

    async def _judge_refusal(self, exc: Web3RPCError, txid: str) -> None:
        """Return if a JSON-RPC error to eth_sendRawTransaction means our transaction is
        already there; else raise the error class the refusal deserves."""
        code, message = _rpc_error(exc)
        lowered = message.lower()
        if any(marker in lowered for marker in _ALREADY_KNOWN):
            return
        if any(marker in lowered for marker in _NONCE_TAKEN):
            if await self._transaction(txid) is not None:
                return
            raise BroadcastRejected(f"{txid}: {message} (its nonce is used by another transaction)") from exc
        if isinstance(exc, MethodUnavailable) or code in _NOT_PROCESSED_CODES:
            raise ChainError(f"the node did not process {txid}: {message}") from exc
        if code in _AMBIGUOUS_CODES:
            raise SendOutcomeUnknown(f"the node failed internally on {txid}: {message}") from exc
        raise BroadcastRejected(f"the node refused {txid}: {message}") from exc

    async def check_send(self, prepared: PreparedSend, *, earlier_sends: int = 0) -> SendCheck:
        """Where ``prepared`` stands, by its txid (``earlier_sends`` is ignored on EVM).

        Returns:
            ``NOT_FOUND`` if neither mined nor in the node's pool; ``PENDING`` with 0
            confirmations if in the pool; ``PENDING`` or ``CONFIRMED`` (at
            ``confirmations_required``) once mined with status 1; ``FAILED`` if mined with
            status 0. Once mined, ``network_fee_paid = gasUsed * effectiveGasPrice`` wei.

        Raises:
            ValueError: ``prepared`` has no ``txid``.
            ChainError: the node failed.
        """
        del earlier_sends  # a txid identifies the send on EVM
        if prepared.txid is None:
            raise ValueError("an EVM send needs a txid (use prepare_send)")
        receipt, depth = await self._depth(prepared.txid)
        if receipt is None or depth is None:
            if depth is None:
                return SendCheck(SendState.NOT_FOUND, 0, None)
            return SendCheck(SendState.PENDING, 0, None)
        fee_paid = int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
        if int(receipt["status"]) != 1:
            return SendCheck(SendState.FAILED, depth, fee_paid)
        state = SendState.CONFIRMED if depth >= self.confirmations_required else SendState.PENDING
        return SendCheck(state, depth, fee_paid)

    async def aclose(self) -> None:
        """Close the HTTP sessions of the provider (aiohttp) and stop the signing thread; the
        adapter is unusable after."""
        self._signing.close()
        await self._provider.disconnect()
