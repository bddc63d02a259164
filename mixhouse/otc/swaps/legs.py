"""The two chains of a swap behind one interface: lock, check the other side's lock with its
confirmations, claim, refund, and watch for the secret (issue 10, part 3).

A leg signs through its chain's :class:`~mixhouse.keys.signer.Signer` by key reference, in a
:class:`~mixhouse.keys.offload.SigningThread` (the EVM adapter's, or the Bitcoin leg's own) and
never on the event loop: an HSM that is slow or hangs would otherwise stall the whole OTC node
(its Grenache peer, its API, every other swap). Past the deadline the step raises
``SignerError`` (a ``ChainError``): the engine retries it on its next pass, the swap's state
unchanged. Build legs with :meth:`BitcoinLeg.open` / :meth:`EvmLeg.open` on a running loop (the
swap key's public key is a token call too). A leg returns transactions as :class:`StoredTx`
(signed bytes and txid), which the engine writes to its database before :meth:`Leg.broadcast`
sends them: a restart sends the same bytes again. Locks are described on the wire and in the
database as a :class:`LockSpec` plus the chain's reference (``ref``: the Bitcoin txid, vout and
script; the EVM swap id).

* :class:`BitcoinLeg`: the P2WSH HTLC of :mod:`mixhouse.chains.bitcoin.htlc`, funded from the
  node's own P2WPKH swap key (coins found with ``scantxoutset``), timeouts as heights.
* :class:`EvmLeg`: ``contracts/HTLC.sol`` through :class:`~mixhouse.chains.evm.htlc.EvmHtlc`,
  ETH or an ERC-20 (approve, then lock), timeouts as unix seconds (``block.timestamp``).

Amounts are base units (satoshi, wei or token units).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from mixhouse.chains.base import PreparedSend, SendState
from mixhouse.chains.bitcoin.coinselect import Coin, dust_threshold
from mixhouse.chains.bitcoin.htlc import (
    HtlcCoin,
    HtlcTerms,
    check_htlc_output,
    extract_secret,
    find_lock,
    htlc_address,
    htlc_script,
    htlc_script_pubkey,
    pubkey_hash,
    sign_claim,
    sign_refund,
)
from mixhouse.chains.bitcoin.networks import address_of_script
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.chains.bitcoin.txbuild import SignedTx, sign_tx
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.chains.evm.htlc import EvmHtlc, SwapTerms
from mixhouse.chains.htlc import HtlcMismatch
from mixhouse.errors import ChainError, InsufficientFunds, InvalidInput
from mixhouse.keys.offload import SIGN_TIMEOUT_SECONDS, SigningThread
from mixhouse.keys.signer import Signer

# vbytes of a P2WPKH input, of the P2WSH HTLC output, of a P2WPKH output and of the rest of
# a segwit transaction (BIP-141 weights, 72-byte signatures rounded up).
_P2WPKH_INPUT_VB = 68
_P2WSH_OUTPUT_VB = 43
_P2WPKH_OUTPUT_VB = 31
_TX_OVERHEAD_VB = 11
# Gas limit of a token lock, signed before its approval is mined (an estimate would revert
# for want of the allowance); the measured lock is ~169k gas.
TOKEN_LOCK_GAS = 260_000


class SwapLegError(ChainError):
    """A leg could not do what it was asked (no coins, a node failure): the step is retried."""


@dataclass(frozen=True, slots=True)
class LockSpec:
    """What one lock commits to, chain-neutral.

    Attributes:
        secret_hash: ``sha256(secret)``, hex.
        claimer: who may claim: Bitcoin, the HASH160 of the claim key (hex); EVM, the recipient address.
        refunder: who is refunded: Bitcoin, the HASH160 of the refund key (hex); EVM, the sender address.
        amount: base units locked (satoshi, wei, token units).
        timeout: Bitcoin, the refund height; EVM, the expiry in unix seconds.
        token: the ERC-20 address, ``None`` for ETH or Bitcoin.
    """

    secret_hash: str
    claimer: str
    refunder: str
    amount: int
    timeout: int
    token: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The spec as JSON (amount as a decimal string: no float on the wire)."""
        return {
            "secret_hash": self.secret_hash,
            "claimer": self.claimer,
            "refunder": self.refunder,
            "amount": str(self.amount),
            "timeout": self.timeout,
            "token": self.token,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> LockSpec:
        """Read :meth:`as_json`.

        Raises:
            InvalidInput: a missing or malformed field.
        """
        try:
            return cls(
                secret_hash=str(value["secret_hash"]),
                claimer=str(value["claimer"]),
                refunder=str(value["refunder"]),
                amount=int(str(value["amount"])),
                timeout=int(value["timeout"]),
                token=None if value.get("token") is None else str(value["token"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"not a lock spec: {exc}") from exc


@dataclass(frozen=True, slots=True)
class StoredTx:
    """A signed transaction kept in the database before it is broadcast.

    Attributes:
        kind: ``"approve"``, ``"lock"``, ``"claim"`` or ``"refund"``.
        txid: its id (Bitcoin display hex; EVM ``0x`` hash).
        raw: the signed bytes, hex.
        fee: Bitcoin: the fee paid, satoshi; EVM: the most it may cost, wei.
        extra: chain details kept with it (EVM: from, to, amount, nonce).
    """

    kind: str
    txid: str
    raw: str
    fee: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The transaction as JSON."""
        return {"kind": self.kind, "txid": self.txid, "raw": self.raw, "fee": str(self.fee), "extra": self.extra}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> StoredTx:
        """Read :meth:`as_json`."""
        return cls(str(value["kind"]), str(value["txid"]), str(value["raw"]), int(value["fee"]), dict(value["extra"]))


@dataclass(frozen=True, slots=True)
class LockStatus:
    """A lock as its chain shows it.

    Attributes:
        confirmations: depth (0 in the mempool); ``None``: not on chain (never, or a reorg removed it).
        ref: the chain's reference of the lock (for claims and refunds).
    """

    confirmations: int | None
    ref: dict[str, Any]


class Leg(abc.ABC):
    """One chain of a swap, with this node's keys on it."""

    chain: str

    @abc.abstractmethod
    def identity(self) -> str:
        """What the other side names us by on this chain (a key hash or an address)."""

    @abc.abstractmethod
    async def timeout_in(self, seconds: int) -> int:
        """The timeout (chain units) that falls ``seconds`` from now on this chain's clock."""

    @abc.abstractmethod
    async def seconds_left(self, deadline: int) -> int:
        """Seconds (nominal, on the chain's clock) before ``deadline``; negative once past."""

    @abc.abstractmethod
    async def refundable(self, deadline: int) -> bool:
        """True once the chain accepts a refund of a lock whose timeout is ``deadline``."""

    @abc.abstractmethod
    async def prepare_lock(self, spec: LockSpec, *, reserved: set[str]) -> tuple[list[StoredTx], dict[str, Any]]:
        """Sign our lock of ``spec``; returns the transactions to broadcast in order and the
        lock's ``ref``. ``reserved``: Bitcoin outpoints ``txid:vout`` other stored locks spend.

        Raises:
            InsufficientFunds: not enough coins.
            ChainError: the node or the signer failed.
        """

    @abc.abstractmethod
    async def lock_status(self, spec: LockSpec, ref: dict[str, Any]) -> LockStatus:
        """Check that the lock ``ref`` holds exactly ``spec`` and return its depth.

        Raises:
            HtlcMismatch: the lock on chain is not ``spec`` (script or contract, hash, amount,
                claimer, refunder, timeout, token).
            ChainError: the node failed.
        """

    @abc.abstractmethod
    async def prepare_claim(self, spec: LockSpec, ref: dict[str, Any], secret: bytes) -> StoredTx:
        """Sign the claim of the lock ``ref`` with ``secret`` (it pays us).

        Raises:
            ChainError: the node or signer failed (or the claim would revert).
        """

    @abc.abstractmethod
    async def prepare_refund(self, spec: LockSpec, ref: dict[str, Any]) -> StoredTx:
        """Sign the refund of our lock ``ref``.

        Raises:
            ChainError: the node or signer failed (or the refund would revert).
        """

    @abc.abstractmethod
    async def find_secret(self, spec: LockSpec, ref: dict[str, Any]) -> bytes | None:
        """The secret if someone claimed the lock ``ref`` (mempool or chain), else ``None``.

        Raises:
            ChainError: the node failed.
        """

    async def lock_spent(self, ref: dict[str, Any]) -> bool:
        """True if the lock ``ref`` is spent (claimed or refunded) on Bitcoin; EVM legs never
        need it (their claims are refused from the expiry on), so the default is ``False``.

        Raises:
            ChainError: the node failed.
        """
        del ref
        return False

    @abc.abstractmethod
    async def broadcast(self, tx: StoredTx) -> None:
        """Send ``tx``; safe to repeat.

        Raises:
            BroadcastRejected, SendOutcomeUnknown, ChainError: as the chain adapters.
        """

    @abc.abstractmethod
    async def tx_confirmations(self, tx: StoredTx) -> int | None:
        """Depth of ``tx``: ``None`` if not found, ``-1`` if it was mined and reverted (EVM)."""

    def close(self) -> None:  # noqa: B027 - a hook with a default: most legs own nothing to stop
        """Stop what the leg owns (its signing thread); the default owns nothing. Idempotent."""


class BitcoinLeg(Leg):
    """The Bitcoin leg: P2WSH HTLCs funded from one P2WPKH key of this node.

    Args:
        rpc: the node's Bitcoin RPC (bcoin or Bitcoin Core, with ``scantxoutset``).
        signer: holds ``key_ref``.
        key_ref: the swap key: funds locks, receives change, claims, refunds.
        network: ``"regtest"``, ``"mainnet"``...
        block_seconds: nominal block interval (heights <-> seconds).
        fee_rate: sat/vB when the node has no estimate.
        max_fee_sat: the most one swap transaction may pay in fee, satoshi.
        sign_timeout: seconds a signing step may take (:class:`SigningThread`), ``> 0``.
        signing: the thread to sign in (:meth:`open` passes the one it made); a new one if
            ``None``. The leg owns it: :meth:`close` stops it.
        public_key: the swap key's compressed public key if already known (:meth:`open`);
            ``None``: asked of ``signer`` here, synchronously (for callers off the loop).

    Raises:
        SignerError: (``public_key`` not given) the signer has no ``key_ref`` or failed.
    """

    chain = "btc"

    def __init__(
        self,
        rpc: BitcoinRpc,
        *,
        signer: Signer,
        key_ref: str,
        network: str,
        block_seconds: int = 600,
        fee_rate: int = 2,
        max_fee_sat: int = 50_000,
        sign_timeout: float = SIGN_TIMEOUT_SECONDS,
        signing: SigningThread | None = None,
        public_key: bytes | None = None,
    ) -> None:
        self.rpc = rpc
        self.signer = signer
        self.key_ref = key_ref
        self.network = network
        self.block_seconds = block_seconds
        self.fallback_fee_rate = fee_rate
        self.max_fee_sat = max_fee_sat
        self._signing = signing if signing is not None else SigningThread("signer-swap-btc", timeout=sign_timeout)
        self.pkh = pubkey_hash(public_key if public_key is not None else signer.public_key(key_ref))
        address = address_of_script(b"\x00\x14" + self.pkh, network)
        if address is None:  # pragma: no cover - a P2WPKH always has an address
            raise InvalidInput("no P2WPKH address for the swap key")
        self.address: str = address

    @classmethod
    async def open(
        cls,
        rpc: BitcoinRpc,
        *,
        signer: Signer,
        key_ref: str,
        sign_timeout: float = SIGN_TIMEOUT_SECONDS,
        **options: Any,
    ) -> BitcoinLeg:
        """The leg, its swap key's public key read in its signing thread (not on the loop).

        Args:
            options: ``network`` and the other arguments of the constructor.

        Raises:
            SignerError: the signer has no ``key_ref``, failed, or did not answer within
                ``sign_timeout`` seconds (the thread is stopped again).
        """
        signing = SigningThread("signer-swap-btc", timeout=sign_timeout)
        try:
            public = await signing.run(signer.public_key, key_ref)
        except BaseException:
            signing.close()
            raise
        return cls(rpc, signer=signer, key_ref=key_ref, signing=signing, public_key=public, **options)

    def close(self) -> None:
        """Stop the signing thread (after the call in progress); later signing steps raise
        ``SignerError``."""
        self._signing.close()

    def identity(self) -> str:
        """The HASH160 of the swap key, hex."""
        return self.pkh.hex()

    async def _fee_rate(self) -> int:
        estimate = await self.rpc.estimatesmartfee(6)
        return max(1, estimate if estimate is not None else self.fallback_fee_rate)

    async def timeout_in(self, seconds: int) -> int:
        """The tip height plus ``seconds`` in blocks (rounded down)."""
        return await self.rpc.getblockcount() + max(1, seconds // self.block_seconds)

    async def seconds_left(self, deadline: int) -> int:
        """``(timeout - tip) * block_seconds``: the refund is valid once the tip reaches it."""
        return (deadline - await self.rpc.getblockcount()) * self.block_seconds

    async def refundable(self, deadline: int) -> bool:
        """The tip is at the lock height (the next block is above ``nLockTime``)."""
        return await self.rpc.getblockcount() >= deadline

    @staticmethod
    def terms(spec: LockSpec) -> HtlcTerms:
        """The Bitcoin HTLC terms of ``spec``."""
        return HtlcTerms(
            bytes.fromhex(spec.secret_hash), bytes.fromhex(spec.claimer), bytes.fromhex(spec.refunder), spec.timeout
        )

    async def prepare_lock(self, spec: LockSpec, *, reserved: set[str]) -> tuple[list[StoredTx], dict[str, Any]]:
        """Pay ``spec.amount`` to the HTLC's P2WSH address from the swap key's confirmed coins
        (largest first, skipping ``reserved``), change back to the swap key."""
        if bytes.fromhex(spec.refunder) != self.pkh:
            raise InvalidInput("our lock must refund to our swap key")
        terms = self.terms(spec)
        script = htlc_script(terms)
        found = await self.rpc.scantxoutset_addresses([self.address])
        coins = sorted(
            (
                Coin(str(u["txid"]), int(u["vout"]), int(Decimal(str(u["amount"])) * 100_000_000), self.address, None)
                for u in found.get("unspents", [])
                if f"{u['txid']}:{u['vout']}" not in reserved
            ),
            key=lambda c: (-c.amount, c.txid, c.vout),
        )
        rate = await self._fee_rate()
        chosen: list[Coin] = []
        total = 0
        fee = 0
        for coin in coins:
            chosen.append(coin)
            total += coin.amount
            vsize = _TX_OVERHEAD_VB + _P2WPKH_INPUT_VB * len(chosen) + _P2WSH_OUTPUT_VB + _P2WPKH_OUTPUT_VB
            fee = rate * vsize
            if total >= spec.amount + fee:
                break
        if total < spec.amount + fee:
            raise InsufficientFunds(f"the swap key holds {total} sat, the lock needs {spec.amount} + {fee} fee")
        if fee > self.max_fee_sat:
            raise SwapLegError(f"the lock's fee {fee} sat is above the cap {self.max_fee_sat} sat")
        outputs = [(htlc_address(terms, self.network), spec.amount)]
        change = total - spec.amount - fee
        if change >= dust_threshold(b"\x00\x14" + self.pkh):
            outputs.append((self.address, change))
        inputs = [(c, self.key_ref) for c in chosen]
        signed = await self._signing.run(
            lambda: sign_tx(inputs=inputs, signer=self.signer, outputs=outputs, network=self.network)
        )
        tx = StoredTx(
            "lock", signed.txid, signed.raw.hex(), signed.fee, {"inputs": [f"{c.txid}:{c.vout}" for c in chosen]}
        )
        return [tx], {"txid": signed.txid, "vout": 0, "script": script.hex()}

    async def lock_status(self, spec: LockSpec, ref: dict[str, Any]) -> LockStatus:
        """``find_lock`` on the announced txid, then ``check_htlc_output`` against ``spec``."""
        script = bytes.fromhex(str(ref["script"]))
        lock = await find_lock(self.rpc, txid=str(ref["txid"]), script=script)
        if lock is None:
            return LockStatus(None, ref)
        check_htlc_output(
            script=script,
            output_script_pubkey=htlc_script_pubkey(lock.coin.script),
            output_amount_sat=lock.coin.amount_sat,
            expected=self.terms(spec),
            expected_amount_sat=spec.amount,
        )
        return LockStatus(lock.confirmations, {"txid": lock.coin.txid, "vout": lock.coin.vout, "script": script.hex()})

    def _coin(self, spec: LockSpec, ref: dict[str, Any]) -> HtlcCoin:
        return HtlcCoin(str(ref["txid"]), int(ref["vout"]), spec.amount, bytes.fromhex(str(ref["script"])))

    async def _sign_spend(
        self, sign: Callable[..., SignedTx], spec: LockSpec, ref: dict[str, Any], **extra: Any
    ) -> SignedTx:
        """``sign`` (:func:`sign_claim`, :func:`sign_refund`) of the lock ``ref`` whole to the
        swap key's address at the estimator's fee rate (capped), in the signing thread."""
        coin, rate = self._coin(spec, ref), await self._fee_rate()
        return await self._signing.run(
            lambda: sign(
                coin=coin,
                signer=self.signer,
                key_ref=self.key_ref,
                to_address=self.address,
                network=self.network,
                fee_rate=rate,
                max_fee_sat=self.max_fee_sat,
                **extra,
            )
        )

    async def prepare_claim(self, spec: LockSpec, ref: dict[str, Any], secret: bytes) -> StoredTx:
        """Sign the claim to the swap key's address (RBF-enabled, fee from the estimator, capped)."""
        signed = await self._sign_spend(sign_claim, spec, ref, secret=secret)
        return StoredTx("claim", signed.txid, signed.raw.hex(), signed.fee)

    async def prepare_refund(self, spec: LockSpec, ref: dict[str, Any]) -> StoredTx:
        """Sign the refund to the swap key's address (valid from the lock height on)."""
        signed = await self._sign_spend(sign_refund, spec, ref)
        return StoredTx("refund", signed.txid, signed.raw.hex(), signed.fee)

    async def find_secret(self, spec: LockSpec, ref: dict[str, Any]) -> bytes | None:
        """Every mempool transaction, then every block since the lock's, through
        :func:`extract_secret` (a node has no RPC for an output's spender)."""
        del spec  # the script in ``ref`` holds the hash
        script = bytes.fromhex(str(ref["script"]))
        for txid in await self.rpc.getrawmempool():
            raw = await self.rpc.getrawtransaction(txid, False)
            if isinstance(raw, str) and (secret := extract_secret(bytes.fromhex(raw), script)) is not None:
                return secret
        lock = await self.rpc.gettransaction_verbose(str(ref["txid"]))
        depth = lock.get("confirmations", 0) if lock else 0
        if not isinstance(depth, int) or depth < 1:
            return None
        tip = await self.rpc.getblockcount()
        for height in range(tip - depth + 1, tip + 1):
            block_hash = await self.rpc.getblockhash(height)
            block = await self.rpc.getblock_verbose(block_hash) if block_hash else None
            for tx in (block or {}).get("tx", []):
                spends = any(v.get("txid") == ref["txid"] and v.get("vout") == ref["vout"] for v in tx.get("vin", []))
                if not spends:
                    continue
                raw = tx.get("hex") or await self.rpc.getrawtransaction(str(tx["txid"]), False)
                if isinstance(raw, str) and (secret := extract_secret(bytes.fromhex(raw), script)) is not None:
                    return secret
        return None

    async def lock_spent(self, ref: dict[str, Any]) -> bool:
        """``gettxout txid vout true`` is empty: the HTLC output is spent (in a block or by a
        mempool transaction)."""
        return not isinstance(await self.rpc.call("gettxout", str(ref["txid"]), int(ref["vout"]), True), dict)

    async def broadcast(self, tx: StoredTx) -> None:
        """``sendrawtransaction``; already in a block or the mempool is success."""
        if await self.tx_confirmations(tx) is not None:
            return
        await self.rpc.sendrawtransaction(tx.raw, tx.txid)

    async def tx_confirmations(self, tx: StoredTx) -> int | None:
        """``getrawtransaction`` depth (0 in the mempool), ``None`` if the node knows none."""
        found = await self.rpc.gettransaction_verbose(tx.txid)
        if found is None:
            return None
        depth = found.get("confirmations", 0)
        return depth if isinstance(depth, int) and not isinstance(depth, bool) and depth > 0 else 0


class EvmLeg(Leg):
    """The Ethereum leg: the trusted HTLC deployment, ETH or ERC-20, signed by ``key_ref``.

    Args:
        htlc: the deployment (its adapter signs, in its signing thread, and reads).
        key_ref: this node's key (BIP-32 path): sends locks, claims and refunds, receives claims.
        address: the key's checksummed address if already known (:meth:`open`); ``None``:
            asked of the adapter here, synchronously.

    Raises:
        SignerError: (``address`` not given) the signer has no such key or failed.
    """

    chain = "evm"

    def __init__(self, htlc: EvmHtlc, *, key_ref: str, address: str | None = None) -> None:
        self.htlc = htlc
        self.adapter: EvmAdapter = htlc.adapter
        self.key_ref = key_ref
        self.address = address if address is not None else self.adapter.key_address(key_ref)

    @classmethod
    async def open(cls, htlc: EvmHtlc, *, key_ref: str) -> EvmLeg:
        """The leg, its key's address read in the adapter's signing thread (not on the loop).

        Raises:
            SignerError: the signer has no such key, failed, or did not answer in time.
        """
        return cls(htlc, key_ref=key_ref, address=await htlc.adapter.key_address_async(key_ref))

    def identity(self) -> str:
        """Our checksummed address."""
        return self.address

    async def _now(self) -> int:
        # The adapter's own head reads (with its node-error mapping); it has no public one.
        block = await self.adapter._block(await self.adapter._head())
        if block is None:
            raise SwapLegError("the node has no head block")
        return int(block["timestamp"])

    async def timeout_in(self, seconds: int) -> int:
        """The latest block's timestamp plus ``seconds``."""
        return await self._now() + seconds

    async def seconds_left(self, deadline: int) -> int:
        """``timeout - latest block timestamp``."""
        return deadline - await self._now()

    async def refundable(self, deadline: int) -> bool:
        """The latest block's timestamp is at the expiry (the next block's will be above)."""
        return await self._now() >= deadline

    @staticmethod
    def terms(spec: LockSpec) -> SwapTerms:
        """The contract terms of ``spec``."""
        return SwapTerms(
            bytes.fromhex(spec.secret_hash), spec.refunder, spec.claimer, spec.token, spec.amount, spec.timeout
        )

    @staticmethod
    def _stored(kind: str, prepared: PreparedSend) -> StoredTx:
        if prepared.raw_tx is None or prepared.txid is None:
            raise SwapLegError("an EVM send came back without its signed bytes")
        return StoredTx(
            kind,
            prepared.txid,
            prepared.raw_tx.hex(),
            prepared.network_fee_max,
            {
                "from": prepared.from_address,
                "to": prepared.to_address,
                "amount": str(prepared.amount),
                "nonce": prepared.nonce,
            },
        )

    @staticmethod
    def _prepared(tx: StoredTx) -> PreparedSend:
        e = tx.extra
        return PreparedSend(
            str(e["from"]), str(e["to"]), int(e["amount"]), tx.fee, bytes.fromhex(tx.raw), tx.txid, e["nonce"]
        )

    async def prepare_lock(self, spec: LockSpec, *, reserved: set[str]) -> tuple[list[StoredTx], dict[str, Any]]:
        """``lockEth``, or ``approve`` then ``lockToken`` with consecutive nonces."""
        del reserved
        terms = self.terms(spec)
        nonce = await self.adapter.next_nonce(self.address)
        txs: list[StoredTx] = []
        if spec.token is not None:
            approve = await self.htlc.prepare_approve(
                key_ref=self.key_ref, token=spec.token, amount=spec.amount, nonce=nonce
            )
            txs.append(self._stored("approve", approve))
            lock = await self.htlc.prepare_lock(key_ref=self.key_ref, terms=terms, nonce=nonce + 1, gas=TOKEN_LOCK_GAS)
        else:
            lock = await self.htlc.prepare_lock(key_ref=self.key_ref, terms=terms, nonce=nonce)
        txs.append(self._stored("lock", lock))
        return txs, {"swap_id": self.htlc.swap_id(terms).hex()}

    async def lock_status(self, spec: LockSpec, ref: dict[str, Any]) -> LockStatus:
        """``verify_lock`` of the agreed terms (the id commits to all of them) and the depth of
        its ``Locked`` event. A swap already claimed counts as locked and deep (our own claim
        may be the one that took it)."""
        terms = self.terms(spec)
        swap_id = self.htlc.swap_id(terms)
        if ref.get("swap_id") not in (None, swap_id.hex()):
            raise HtlcMismatch("swap_id", "the announced swap id is not the one of the agreed terms")
        found = await self.htlc.swap(swap_id)
        if found is None:
            return LockStatus(None, {"swap_id": swap_id.hex()})
        if found.state.name == "LOCKED":
            await self.htlc.verify_lock(terms)
        head = await self.adapter._head()
        events = await self.htlc.events(swap_id, from_block=0)
        locked = [e for e in events if e.kind == "locked"]
        depth = head - locked[0].block_number + 1 if locked else 0
        return LockStatus(depth, {"swap_id": swap_id.hex(), "block": locked[0].block_number if locked else None})

    async def prepare_claim(self, spec: LockSpec, ref: dict[str, Any], secret: bytes) -> StoredTx:
        """``claim(id, secret)`` from our key (it pays the recipient: us)."""
        del ref  # the id follows from the agreed terms
        nonce = await self.adapter.next_nonce(self.address)
        swap_id = self.htlc.swap_id(self.terms(spec))
        prepared = await self.htlc.prepare_claim(key_ref=self.key_ref, swap_id=swap_id, preimage=secret, nonce=nonce)
        return self._stored("claim", prepared)

    async def prepare_refund(self, spec: LockSpec, ref: dict[str, Any]) -> StoredTx:
        """``refund(id)`` from our key (it pays the sender: us)."""
        del ref  # the id follows from the agreed terms
        nonce = await self.adapter.next_nonce(self.address)
        swap_id = self.htlc.swap_id(self.terms(spec))
        return self._stored(
            "refund", await self.htlc.prepare_refund(key_ref=self.key_ref, swap_id=swap_id, nonce=nonce)
        )

    async def find_secret(self, spec: LockSpec, ref: dict[str, Any]) -> bytes | None:
        """The preimage of the ``Claimed`` event of the swap, checked against its hash."""
        swap_id = self.htlc.swap_id(self.terms(spec))
        return await self.htlc.find_secret(
            swap_id, bytes.fromhex(spec.secret_hash), from_block=int(ref.get("block") or 0)
        )

    async def broadcast(self, tx: StoredTx) -> None:
        """The adapter's idempotent ``eth_sendRawTransaction``."""
        await self.adapter.broadcast(self._prepared(tx))

    async def tx_confirmations(self, tx: StoredTx) -> int | None:
        """The adapter's ``check_send``: ``-1`` if mined and reverted."""
        check = await self.adapter.check_send(self._prepared(tx))
        if check.state is SendState.NOT_FOUND:
            return None
        if check.state is SendState.FAILED:
            return -1
        return check.confirmations
