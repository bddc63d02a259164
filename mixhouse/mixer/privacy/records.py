"""The public record an attacker reads, and the view of it the analyzer works on.

Everything here is derived from the public ledger alone (a Jobcoin-like list of transfers):
no mix ids, no plans. Amounts are integer base units (1 jobcoin = 10^8); times are float
seconds on any common clock (the ledger's timestamps).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PublicTransfer:
    """One transfer of the public ledger.

    Attributes:
        from_address, to_address: sender and recipient.
        amount: base units, ``> 0``.
        at: time of the transfer, float seconds.
        ref: the ledger's identifier of the transfer if it has one (a txid); ``None`` lets
            :func:`view_from_transfers` name it by its position in the list.
    """

    from_address: str
    to_address: str
    amount: int
    at: float
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class PublicDeposit:
    """A transfer into a deposit address (an address that later sweeps into the pool).

    Attributes:
        ref: the deposit transfer's reference.
        address: the deposit address.
        amount: base units deposited.
        at: the deposit transfer's time, float seconds.
    """

    ref: str
    address: str
    amount: int
    at: float


@dataclass(frozen=True, slots=True)
class PublicPayout:
    """A transfer out of the pool to an address that is not a deposit address.

    Attributes:
        ref: the transfer's reference.
        to_address: the recipient (a withdrawal address, as far as the public can tell).
        amount: base units.
        at: time, float seconds.
    """

    ref: str
    to_address: str
    amount: int
    at: float


@dataclass(frozen=True, slots=True)
class PublicView:
    """What the analyst knows: the deposits, the payouts and the pool address.

    Attributes:
        deposits: in ledger order.
        payouts: in ledger order.
        pool_address: the service's (published) pool address.
    """

    deposits: tuple[PublicDeposit, ...]
    payouts: tuple[PublicPayout, ...]
    pool_address: str

    @property
    def withdrawal_addresses(self) -> tuple[str, ...]:
        """Every address paid by the pool, in order of its first payout."""
        return tuple(dict.fromkeys(p.to_address for p in self.payouts))


@dataclass(frozen=True, slots=True)
class AddressRecord:
    """What the public record says about one withdrawal address.

    Attributes:
        address: the address.
        pieces: the amounts of its payouts, base units, in ledger order.
        total: their sum, base units.
        first_at, last_at: times of its first and last payout, float seconds.
    """

    address: str
    pieces: tuple[int, ...]
    total: int
    first_at: float
    last_at: float

    @property
    def count(self) -> int:
        """Number of payouts the address received."""
        return len(self.pieces)

    @property
    def min_piece(self) -> int:
        """Smallest payout, base units."""
        return min(self.pieces)

    @property
    def max_piece(self) -> int:
        """Largest payout, base units."""
        return max(self.pieces)


def transfer_ref(transfer: PublicTransfer, index: int) -> str:
    """The reference of a transfer: its own ``ref``, else its position in the ledger list."""
    return transfer.ref if transfer.ref is not None else f"#{index}"


def view_from_transfers(transfers: Iterable[PublicTransfer], pool_address: str) -> PublicView:
    """Classify the public transfers.

    Deposit addresses are the addresses that send to the pool (the sweeps: Mixhouse moves
    every deposit to the pool within seconds). Deposits are the transfers into those
    addresses; payouts are the transfers from the pool to any other address. Everything else
    (the sweeps themselves, unrelated traffic) is ignored.

    Args:
        transfers: the ledger, in any order; references default to the position in it.
        pool_address: the published pool address.

    Returns:
        The :class:`PublicView`, deposits and payouts ordered by time (stable).

    Raises:
        ValueError: a transfer with a non-positive amount (the ledger never records one).
    """
    listed = list(transfers)
    for transfer in listed:
        if transfer.amount <= 0:
            raise ValueError(f"transfer of {transfer.amount} base units: amounts are positive")
    deposit_addresses = {t.from_address for t in listed if t.to_address == pool_address}
    deposit_addresses.discard(pool_address)
    deposits = [
        PublicDeposit(transfer_ref(t, i), t.to_address, t.amount, t.at)
        for i, t in enumerate(listed)
        if t.to_address in deposit_addresses and t.from_address != pool_address
    ]
    payouts = [
        PublicPayout(transfer_ref(t, i), t.to_address, t.amount, t.at)
        for i, t in enumerate(listed)
        if t.from_address == pool_address and t.to_address not in deposit_addresses and t.to_address != pool_address
    ]
    deposits.sort(key=lambda d: d.at)
    payouts.sort(key=lambda p: p.at)
    return PublicView(tuple(deposits), tuple(payouts), pool_address)


def address_records(view: PublicView) -> Mapping[str, AddressRecord]:
    """Summarise the payouts per withdrawal address.

    Returns:
        address -> :class:`AddressRecord`, in order of first payout.
    """
    pieces: dict[str, list[PublicPayout]] = {}
    for payout in view.payouts:
        pieces.setdefault(payout.to_address, []).append(payout)
    return {
        address: AddressRecord(
            address=address,
            pieces=tuple(p.amount for p in paid),
            total=sum(p.amount for p in paid),
            first_at=min(p.at for p in paid),
            last_at=max(p.at for p in paid),
        )
        for address, paid in pieces.items()
    }
