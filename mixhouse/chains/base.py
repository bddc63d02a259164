"""The chain adapter interface and its typed records.

An adapter hides one chain kind (an account ledger, an EVM chain, later Bitcoin) behind a
small async interface. The mixer only ever calls these methods. Every amount is an ``int``
in the asset's base unit. Every method documents what it raises; network trouble surfaces as
:class:`~mixhouse.errors.ChainError` (or its subclasses), never as a raw httpx/web3 error.

A send goes through three calls, so that it can be stored before it leaves:

1. :meth:`ChainAdapter.prepare_send` signs (or, on a ledger without signatures, fully
   describes) the send. The caller stores the returned :class:`PreparedSend` in the same DB
   transaction that moves the send to ``signed``.
2. :meth:`ChainAdapter.broadcast` sends those stored bytes. Calling it again with the same
   :class:`PreparedSend` is safe on chains with an idempotent send (EVM: same raw tx, same
   txid); on Jobcoin the caller first asks :meth:`ChainAdapter.check_send`.
3. :meth:`ChainAdapter.check_send` says whether the send is on chain and how deep.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from mixhouse.money import Asset


@dataclass(frozen=True, slots=True)
class Transfer:
    """An incoming transfer to one of our watched addresses, as seen on chain.

    Attributes:
        to_address: the watched address that received it (normalised form).
        from_addresses: the sending addresses (empty for minted coins), normalised.
        amount: base units received, ``> 0``.
        ref: unique per asset and stable across scans (EVM: the txid; Jobcoin:
            ``"<address>#<n>"``, the n-th incoming transfer of that address in ledger order).
        block_number: height of the block that holds it, ``None`` if unconfirmed.
        confirmations: ``0`` if unconfirmed, else ``head - block_number + 1``.
    """

    to_address: str
    from_addresses: tuple[str, ...]
    amount: int
    ref: str
    block_number: int | None
    confirmations: int


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a deposit scan (:meth:`mixhouse.watch.scans.DepositScanner.scan`) found and where
    the next scan starts.

    Attributes:
        transfers: every transfer to a watched address seen since ``cursor`` (may repeat
            earlier ones; the caller deduplicates by ``ref``).
        cursor: opaque text to pass to the next scan (the engine's position of the last block
            taken in).
        tip: the chain's height as this scan saw it (EVM: ``eth_blockNumber``; Bitcoin:
            ``getblockcount``; Jobcoin: the ledger's highest transfer id), ``None`` where the
            adapter cannot tell.
        scanned: the height this scan has read through, comparable with ``tip`` (one below
            where the next scan starts; ``-1`` when not even height 0 is read), ``None``
            where the adapter cannot tell. ``tip - scanned`` is how far the scan is behind:
            blocks on a chain, transfers on Jobcoin.
    """

    transfers: tuple[Transfer, ...]
    cursor: str | None
    tip: int | None = None
    scanned: int | None = None


@dataclass(frozen=True, slots=True)
class FeeQuote:
    """The network fee of one simple send, as the user is charged it.

    Attributes:
        per_send: base units reserved for one send (EVM: ``gas_limit * max_fee_per_gas``).
        detail: human-readable breakdown for the README and the API ("21000 gas x 2 gwei").
    """

    per_send: int
    detail: str


@dataclass(frozen=True, slots=True)
class PreparedSend:
    """A send ready to broadcast, stored before it leaves.

    Attributes:
        from_address: the paying address.
        to_address: the receiving address.
        amount: base units the receiver gets.
        network_fee_max: the most this send can cost the sender on top of ``amount``
            (EVM: ``gas_limit * max_fee_per_gas``; Jobcoin: 0).
        raw_tx: the signed transaction bytes (EVM), ``None`` where the chain has none.
        txid: the transaction hash known before broadcast (EVM), else ``None``.
        nonce: the account nonce used (EVM), else ``None``.
    """

    from_address: str
    to_address: str
    amount: int
    network_fee_max: int
    raw_tx: bytes | None
    txid: str | None
    nonce: int | None


class SendState(enum.Enum):
    """Where a send stands on chain."""

    NOT_FOUND = "not_found"  # not in the mempool nor in a block (never arrived, or dropped)
    PENDING = "pending"  # in the mempool, or mined with fewer confirmations than required
    CONFIRMED = "confirmed"  # mined with at least the required confirmations
    FAILED = "failed"  # mined but reverted (EVM status 0): the amount did not move


@dataclass(frozen=True, slots=True)
class SendCheck:
    """The answer of :meth:`ChainAdapter.check_send`.

    Attributes:
        state: see :class:`SendState`.
        confirmations: ``0`` unless mined.
        network_fee_paid: base units the sender actually paid in fees, once mined
            (EVM: ``gas_used * effective_gas_price``); ``None`` before that.
    """

    state: SendState
    confirmations: int
    network_fee_paid: int | None


class ChainAdapter(abc.ABC):
    """One chain, seen by the mixer. Reading the chain for deposits is not here: the scanning
    engine (:mod:`mixhouse.watch`) does it for every watcher.

    Attributes:
        asset: the asset this adapter moves.
        confirmations_required: depth at which a deposit or a send counts as final.
        pool_address: the address payouts leave from.
        has_idempotent_send: ``True`` where broadcasting the same :class:`PreparedSend` twice
            cannot move coins twice (signed transactions with a nonce). ``False`` on Jobcoin:
            the caller must check the ledger history before sending again.
        final_on_broadcast: ``True`` where an accepted broadcast is already final (a ledger
            that answers OK only after committing the transfer): the caller records the send
            as confirmed at once instead of asking :meth:`check_send`.
        uses_nonces: ``True`` where sends carry an account nonce (EVM) that the caller allocates
            from its database counter.
        sweep_fee_in_pool: ``True`` where a send's network fee is not paid in this asset (an
            ERC-20 token: the gas is ETH). A sweep then moves the whole deposit and the fee
            charged to the user for it stays in the pool, which pays the gas.
    """

    asset: Asset
    confirmations_required: int
    pool_address: str
    has_idempotent_send: bool
    final_on_broadcast: bool = False
    uses_nonces: bool = False
    sweep_fee_in_pool: bool = False

    @abc.abstractmethod
    def normalize_address(self, text: str) -> str:
        """Validate an address for this chain and return its canonical form.

        EVM: must be 0x + 40 hex; mixed case must pass the EIP-55 checksum; returns the
        checksummed form. Jobcoin: a non-empty name of printable characters, at most 128.

        Raises:
            InvalidAddress: malformed, bad checksum, or of another network.
        """

    @abc.abstractmethod
    def deposit_address(self, index: int) -> str:
        """The deposit address with HD index ``index`` (EVM: BIP-44 m/44'/60'/0'/0/index).

        Deterministic: the same index always gives the same address.
        """

    @abc.abstractmethod
    async def transfer_confirmations(self, transfer: Transfer) -> int | None:
        """Current confirmations of a transfer seen earlier; ``None`` if it is no longer on the
        chain nor in the mempool (a reorg removed it).

        Raises:
            ChainError: the node or API failed.
        """

    @abc.abstractmethod
    async def balance(self, address: str) -> int:
        """Confirmed balance of ``address`` in base units.

        Raises:
            ChainError: the node or API failed.
        """

    @abc.abstractmethod
    async def quote_network_fee(self) -> FeeQuote:
        """The fee one simple send costs now, as reserved from the user's amount.

        Raises:
            ChainError: the node failed, or the fee is above the configured cap.
        """

    @abc.abstractmethod
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
        """Sign (or describe) a send of ``amount`` base units; nothing leaves yet.

        Args:
            from_address: the paying address (a deposit address or the pool).
            from_key_index: HD index of the deposit key, ``None`` for the pool key.
            to_address: the receiver, already normalised.
            amount: base units the receiver gets, ``> 0``.
            fee: the quote this send was planned with; the send never pays more than
                ``fee.per_send``.
            nonce: the account nonce to sign with (allocated by the caller in the DB) where
                the chain uses nonces, else ``None``.

        Raises:
            ChainError: signing failed.
        """

    @abc.abstractmethod
    async def next_nonce(self, address: str) -> int | None:
        """The chain's next nonce for ``address`` (pending transaction count), or ``None`` on
        chains without nonces. Used only to seed the DB nonce counter.

        Raises:
            ChainError: the node failed.
        """

    @abc.abstractmethod
    async def broadcast(self, prepared: PreparedSend) -> None:
        """Send a prepared send to the chain.

        Raises:
            BroadcastRejected: the chain definitely refused it (insufficient funds, invalid).
                On EVM, "already known" and "nonce too low" for our own txid are not errors.
            SendOutcomeUnknown: timeout or dropped connection: it may have landed.
            ChainError: any other failure that certainly sent nothing.
        """

    @abc.abstractmethod
    async def check_send(self, prepared: PreparedSend, *, earlier_sends: int) -> SendCheck:
        """Is this send on chain?

        Args:
            prepared: the stored send.
            earlier_sends: how many sends with the same from/to pair the caller already knows
                landed (Jobcoin uses it to count transfers in the ledger history: the
                ``earlier_sends``-th matching transfer, 0-based, is this one). Ignored on EVM,
                which looks the txid up.

        Raises:
            ChainError: the node or API failed.
        """

    async def aclose(self) -> None:
        """Release network resources (HTTP clients). Default: nothing to release."""
        return


@dataclass(frozen=True, slots=True)
class PoolCoin:
    """An unspent output the pool owns (UTXO chains).

    Attributes:
        txid, vout: the outpoint.
        amount: satoshi (base units).
        address: the address it pays.
        key_chain, key_index: its key, ``m/84'/c'/0'/<key_chain>/<key_index>`` on Bitcoin.
        owner: the mix whose deposit it is; ``None`` for change and operator funding.
    """

    txid: str
    vout: int
    amount: int
    address: str
    key_chain: int
    key_index: int
    owner: str | None


@dataclass(frozen=True, slots=True)
class UtxoSpend:
    """A signed transaction spending pool coins, as :meth:`UtxoChainAdapter.prepare_utxo_send`
    returns it.

    Attributes:
        prepared: the signed send (raw tx, txid) to store before broadcast.
        inputs: the pool coins it spends.
        change_vout: the output index of the change, ``None`` when there is no change.
        change_amount: satoshi returned to the pool (0 without change).
        fee: satoshi paid to miners.
        vsize: the signed transaction's virtual size in vbytes (0 if the adapter does not say).
        payment_vbytes: per payment, in the order given, the vbytes its output adds (what a
            batch's fee is split by; empty if the adapter does not say).
        change_chain: the stored ``key_chain`` of the change key (Bitcoin: ``2g + 1`` for pool
            key generation ``g``, :func:`mixhouse.keys.bip84.pool_key_chain`; 1 before any
            rotation): what the change coin's ``utxos`` row records.
        change_address: the change output's address (``None``: the adapter's
            :meth:`UtxoChainAdapter.change_address` of the change index).
    """

    prepared: PreparedSend
    inputs: tuple[PoolCoin, ...]
    change_vout: int | None
    change_amount: int
    fee: int
    vsize: int = 0
    payment_vbytes: tuple[int, ...] = ()
    change_chain: int = 1
    change_address: str | None = None


class UtxoChainAdapter(ChainAdapter):
    """A chain whose coins are unspent transaction outputs (Bitcoin).

    Deposits are not swept: a deposit's output joins the pool as a coin, and every payout is a
    transaction that spends pool coins chosen by coin selection. The pool holds many
    addresses, so :attr:`pool_address` is only the address operator top-ups are sent to.
    """

    def pool_key_chains(self) -> dict[str, int]:
        """Every address whose incoming coins are pool coins (operator top-ups), with the stored
        ``key_chain`` of its key: :attr:`pool_address` on chain 1 unless the adapter knows pool
        key generations (Bitcoin key rotation: one address per generation not yet retired)."""
        return {self.pool_address: 1}

    @abc.abstractmethod
    def change_address(self, index: int) -> str:
        """The pool address with index ``index`` on the internal (change) chain."""

    @abc.abstractmethod
    async def prepare_utxo_send(
        self,
        *,
        coins: Sequence[PoolCoin],
        exclude_owner: str | None,
        payments: Sequence[tuple[str, int]],
        change_index: int,
        fee_rate: int,
        max_fee: int,
        rng_seed: int,
        change_chain: int | None = None,
    ) -> UtxoSpend:
        """Choose coins, build and sign a transaction paying ``payments`` (address, satoshi),
        with change to :meth:`change_address` ``(change_index)``.

        Args:
            coins: candidate pool coins (the caller has locked them).
            exclude_owner: never spend coins of this mix (the paying mix's own deposit).
            payments: the outputs, satoshi each, above the dust limit.
            change_index: index of the change key.
            fee_rate: sat/vB.
            max_fee: the most this transaction may pay in fees, satoshi.
            rng_seed: seed of the randomized parts of coin selection.
            change_chain: the stored ``key_chain`` of the change key (the pool key generation
                the caller read for this send); ``None``: the adapter's active one.

        Raises:
            InsufficientFunds: the eligible coins cannot cover payments and fee.
            ChainError: the fee would exceed ``max_fee``, or signing failed.
        """

    @abc.abstractmethod
    async def fee_rate(self) -> int:
        """Current fee rate in sat/vB (estimate, or the fallback), capped.

        Raises:
            ChainError: the node failed.
        """

    @abc.abstractmethod
    async def unspent_amount(self, txid: str, vout: int) -> int | None:
        """Satoshi of the outpoint if it is unspent in the confirmed UTXO set, else ``None``.

        Raises:
            ChainError: the node failed.
        """

    @abc.abstractmethod
    def single_spend_fee(self, to_address: str, fee_rate: int) -> int:
        """Satoshi of miner fee for a transaction spending one of our coins whole to
        ``to_address`` (one input, one output, no change) at ``fee_rate`` sat/vB.

        Raises:
            InvalidAddress: ``to_address`` is not an address of this network.
        """

    @abc.abstractmethod
    async def prepare_single_spend(self, *, coin: PoolCoin, to_address: str, amount: int) -> PreparedSend:
        """Sign a transaction spending ``coin`` whole: one output of ``amount`` satoshi to
        ``to_address``, the rest to miners; no change. The same arguments sign the same
        transaction (the refund of a held deposit, :mod:`mixhouse.mixer.refunds`).

        Raises:
            InvalidAmount: ``amount`` is dust or more than the coin.
            InvalidAddress: ``to_address`` is not an address of this network.
        """

    @abc.abstractmethod
    async def is_spent_elsewhere(self, prepared: PreparedSend, inputs: Sequence[PoolCoin]) -> bool:
        """True when at least one input is spent (or being spent) by a transaction other than
        ``prepared`` and ``prepared`` itself is not on chain: the send can never confirm and
        must be planned again.

        Raises:
            ChainError: the node failed.
        """


def outpoint_of(ref: str) -> tuple[str, int]:
    """``("txid", vout)`` of a UTXO transfer ref ``"txid:vout"``.

    Raises:
        ValueError: ``ref`` is not of that form.
    """
    txid, _, vout = ref.rpartition(":")
    if len(txid) != 64 or not vout.isdigit():
        raise ValueError(f"not an outpoint ref: {ref!r}")
    return txid, int(vout)
