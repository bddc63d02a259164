"""The payout planner: a pure function from a pooled deposit to its payouts.

No database, no network, no clock: it takes the amounts, the withdrawal addresses, the delay
window and a random generator, and returns the payouts. Production passes
:class:`random.SystemRandom`; tests pass a seeded :class:`random.Random` to reproduce a plan.

What it does to hide the link between a deposit and its payouts (issue 13, measured by
``mixhouse.mixer.privacy``):

* **The fee is not computable.** It is drawn in base units, uniformly inside the quoted range
  ``[ceil(P x fee_min_bps / 10^4), floor(P x fee_max_bps / 10^4)]`` of the pooled amount ``P``,
  not as an integer number of basis points (which gave every deposit only 201 possible nets).
* **The payout total is coarse.** It is rounded down to a multiple of the deposit's quantum
  ``q`` (:func:`payout_quantum`: the largest power of ten of at most half the fee range); the
  remainder below ``q`` is part of the fee, which therefore always stays inside the range.
  Many deposits of similar size share each possible total.
* **Every payout is a standard piece.** Amounts come from the 1-2-5 series
  (1, 2, 5, 10, 20, 50... times ``q``), like banknotes, so a single payout says nothing about
  which deposit it belongs to; pieces are split at random beyond the greedy decomposition.
* **No shape rules to filter on.** Pieces go to the withdrawal addresses at random (each
  address at least one), with no bound on the ratio of shares and no fixed payout count, except
  that no address of a multi-address mix receives a whole total of its deposit (it would pass
  for a single-address mix of it).

Sources: the 1-2-5 series is IEC 60063's preferred-number "E3"-like banknote series; the
design follows the "equal outputs" idea of CoinJoin denominations (Wasabi, JoinMarket).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mixhouse.errors import InvalidAmount

# Mantissas of the 1-2-5 series; a piece is m x 10^e x q for m in SERIES_MANTISSAS.
SERIES_MANTISSAS = (1, 2, 5)
# How each series value splits into smaller series values (x10^e): 10 -> 5+5, 5 -> 2+2+1, 2 -> 1+1.
_SPLITS: dict[int, tuple[int, ...]] = {1: (5, 5), 2: (1, 1), 5: (2, 2, 1)}
# Chance that a piece above the quantum is split once more after the greedy decomposition:
# more pieces of common sizes, fewer canonical (and so recognisable) decompositions.
SPLIT_PROBABILITY = 0.35
# Random splits stop at this many pieces per withdrawal address (a network-fee bound on chains
# with fees). The greedy decomposition itself may need more: up to 3 pieces per decade of the
# total above the quantum (9 = 5 + 2 + 2), which no split adds to.
MAX_PIECES_PER_ADDRESS = 8


@dataclass(frozen=True, slots=True)
class PlannedPayout:
    """One payout (one piece) of a plan.

    Attributes:
        to_address: a withdrawal address of the mix.
        amount: base units the address receives; a value of the 1-2-5 series times the quantum.
        delay_seconds: seconds after the deposit is pooled at which it falls due.
    """

    to_address: str
    amount: int
    delay_seconds: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A deposit's plan.

    Attributes:
        fee: the service fee in base units (kept in the pool), inside the quoted range.
        network_fee: base units of network fees charged to the user (all payouts' reserves).
        quantum: the deposit's quantum ``q``; every payout is a series value times ``q``.
        payouts: the pieces; their amounts sum to ``pooled - fee - network_fee`` exactly.
    """

    fee: int
    network_fee: int
    quantum: int
    payouts: tuple[PlannedPayout, ...]

    @property
    def payout_total(self) -> int:
        """Sum of the payout amounts, base units."""
        return sum(p.amount for p in self.payouts)


def fee_bounds(pooled: int, fee_min_bps: int, fee_max_bps: int) -> tuple[int, int]:
    """The quoted fee range of a pooled amount, base units, both ends inclusive:
    ``(ceil(P x min / 10^4), floor(P x max / 10^4))``.

    Raises:
        InvalidAmount: negative amount or an empty bps range.
    """
    if pooled < 0:
        raise InvalidAmount("a pooled amount cannot be negative")
    if not 0 <= fee_min_bps <= fee_max_bps:
        raise InvalidAmount("the fee range is empty")
    low = -((-pooled * fee_min_bps) // 10_000)
    high = pooled * fee_max_bps // 10_000
    return low, max(low, high)


def payout_quantum(pooled: int, fee_min_bps: int, fee_max_bps: int, *, minimum: int = 1) -> int:
    """The deposit's quantum ``q``, base units: the largest power of ten ``<=`` half the fee
    range (at least ``minimum``'s power of ten, at least 1).

    A power of ten (not any 1-2-5 value) so that totals of deposits of nearby sizes fall on
    one shared grid: a total that is a multiple of ``q`` is a multiple of every smaller ``q``.
    """
    low, high = fee_bounds(pooled, fee_min_bps, fee_max_bps)
    half = (high - low) // 2
    q = 1
    while q * 10 <= half:
        q *= 10
    floor_q = 1
    while floor_q < minimum:
        floor_q *= 10
    return max(q, floor_q)


def series_values(limit: int, quantum: int) -> list[int]:
    """The 1-2-5 series values ``m x 10^e x quantum`` that are ``<= limit``, descending."""
    values: list[int] = []
    scale = quantum
    while scale <= limit:
        values.extend(m * scale for m in SERIES_MANTISSAS if m * scale <= limit)
        scale *= 10
    return sorted(values, reverse=True)


def is_series_value(amount: int, quantum: int) -> bool:
    """Whether ``amount`` is ``m x 10^e x quantum`` for ``m`` in 1, 2, 5 and ``e >= 0``."""
    if amount <= 0 or amount % quantum:
        return False
    units = amount // quantum
    while units % 10 == 0:
        units //= 10
    return units in SERIES_MANTISSAS


def denominate(total: int, quantum: int, *, min_pieces: int, max_pieces: int, rng: random.Random) -> list[int]:
    """Split ``total`` (a multiple of ``quantum``) into 1-2-5 series pieces of at least
    ``quantum`` each, at least ``min_pieces`` of them where the total allows.

    Greedy first (largest pieces), then random splits (``SPLIT_PROBABILITY`` per piece, and
    as many as needed to reach ``min_pieces``); splits never take the count past ``max_pieces``,
    though the greedy pieces alone may exceed it (at most 3 per decade of ``total / quantum``).

    Returns:
        The pieces, shuffled; they sum to ``total`` exactly.

    Raises:
        InvalidAmount: ``total`` is not a positive multiple of ``quantum``.
    """
    if total <= 0 or quantum <= 0 or total % quantum:
        raise InvalidAmount(f"{total} base units is not a positive multiple of the quantum {quantum}")
    pieces: list[int] = []
    rest = total
    for value in series_values(total, quantum):
        while rest >= value:
            pieces.append(value)
            rest -= value
    assert rest == 0  # the series includes the quantum itself, so greedy always finishes

    def split(i: int) -> bool:
        value = pieces[i]
        if value <= quantum or len(pieces) >= max_pieces:
            return False
        scale = value // quantum
        exponent = 1
        while scale % 10 == 0:
            scale //= 10
            exponent *= 10
        parts = _SPLITS[scale]
        # 1 x 10^e splits into 5 x 10^(e-1) pieces; the others keep their decade.
        unit = quantum * (exponent // 10 if scale == 1 else exponent)
        if len(pieces) - 1 + len(parts) > max_pieces:
            return False
        pieces[i : i + 1] = [p * unit for p in parts]
        return True

    for i in reversed(range(len(pieces))):
        if rng.random() < SPLIT_PROBABILITY:
            split(i)
    while len(pieces) < min_pieces:
        largest = max(range(len(pieces)), key=lambda j: pieces[j])
        if not split(largest):
            break
    rng.shuffle(pieces)
    return pieces


def plan_payouts(
    *,
    pooled: int,
    fee_min_bps: int,
    fee_max_bps: int,
    withdrawal_addresses: Sequence[str],
    network_fee_per_payout: int,
    min_payout: int,
    delay_min_seconds: int,
    delay_max_seconds: int,
    rng: random.Random,
    total: int | None = None,
) -> Plan:
    """Plan the payouts of one pooled deposit.

    Args:
        pooled: base units that reached the pool for this deposit (after a sweep's network fee).
        fee_min_bps, fee_max_bps: the mix's quoted fee range, basis points of ``pooled``.
        withdrawal_addresses: 1 or more distinct addresses; each gets at least one piece.
        network_fee_per_payout: base units reserved per piece for its network fee.
        min_payout: smallest payout in base units (the chain's dust limit); the quantum is
            raised to at least this.
        delay_min_seconds, delay_max_seconds: the window the due times are drawn from.
        rng: the random source (``SystemRandom`` in production).
        total: the payout total to plan for instead of a drawn fee (the release gate's pick
            among :func:`candidate_totals`); a multiple of the quantum whose fee falls inside
            the range once the pieces' network fees are charged.

    Returns:
        A :class:`Plan`: pieces from the 1-2-5 series times the quantum, summing to
        ``pooled - fee - network_fee`` exactly; ``fee`` inside :func:`fee_bounds`; each address
        paid at least once; each delay inside the window.

    Raises:
        InvalidAmount: the deposit cannot cover the fee, the network fees and one piece per
            address; or ``total`` is not a total this deposit can have.
    """
    n = len(withdrawal_addresses)
    if n < 1:
        raise InvalidAmount("at least one withdrawal address is needed")
    if not 0 <= delay_min_seconds <= delay_max_seconds:
        raise InvalidAmount("the delay window is empty")
    low, high = fee_bounds(pooled, fee_min_bps, fee_max_bps)
    q = payout_quantum(pooled, fee_min_bps, fee_max_bps, minimum=min_payout)
    # Drawn below high - q so that the remainder (< q) added to it keeps the fee <= high.
    drawn = rng.randint(low, max(low, high - q + 1))
    forced = total
    if forced is not None and (forced <= 0 or forced % q):
        raise InvalidAmount(f"{forced} base units is not a positive multiple of the quantum {q}")
    max_pieces = MAX_PIECES_PER_ADDRESS * n
    count = n
    for _ in range(max_pieces):
        # The network fee depends on how many pieces there are, and the pieces on what is left
        # after it: ask for at least ``count`` pieces until the count is what was charged (it
        # only grows, bounded by ``max_pieces``).
        network_fee = count * network_fee_per_payout
        if forced is None:
            payable = pooled - drawn - network_fee
            total = payable - payable % q
        else:
            total = forced
        if total < n * q:
            raise InvalidAmount(
                f"{pooled} base units cannot cover the fee, network fees and one payout to each of {n} addresses"
            )
        pieces = denominate(total, q, min_pieces=count, max_pieces=max_pieces, rng=rng)
        if len(pieces) < count:
            raise InvalidAmount(f"{total} base units cannot be split into {count} payouts of at least {q}")
        if n > 1 and max(pieces) >= pooled - len(pieces) * network_fee_per_payout - high and count < max_pieces:
            # One piece as large as a whole total of this deposit would make its address look
            # like a single-address mix of it (see _assign): split it.
            count = len(pieces) + 1
            continue
        if len(pieces) == count or network_fee_per_payout == 0:
            break
        count = len(pieces)
    else:  # pragma: no cover - the count only grows and is bounded by max_pieces
        raise InvalidAmount("could not settle the number of payouts")
    network_fee = len(pieces) * network_fee_per_payout
    fee = pooled - network_fee - total
    if forced is not None and not low <= fee <= high:
        raise InvalidAmount(f"a payout total of {total} base units puts the fee outside the quoted range")
    targets = _assign(pieces, withdrawal_addresses, below=pooled - network_fee - high, rng=rng)
    payouts = tuple(
        PlannedPayout(address, amount, rng.randint(delay_min_seconds, delay_max_seconds))
        for address, amount in zip(targets, pieces, strict=True)
    )
    return Plan(fee=fee, network_fee=network_fee, quantum=q, payouts=payouts)


# Random assignments tried before the balanced fallback of _assign.
_ASSIGN_ATTEMPTS = 32


def _assign(pieces: Sequence[int], addresses: Sequence[str], *, below: int, rng: random.Random) -> list[str]:
    """The withdrawal address of each piece: every address once, the other pieces at random
    (no share ratio to test), and, when there are several addresses, no address receiving
    ``below`` base units or more in all.

    ``below`` is the smallest total the deposit could pay out on its own. An address of a
    multi-address mix that received that much would pass for a whole single-address mix of
    this deposit, and the "single" attack would link it (measured: 3 of the 12 addresses it
    linked in the realistic population of issue 13). Random draws are tried first; if none
    fits, pieces go largest first to the address with the least so far, which fits whenever
    no piece is itself ``below`` or more (plan_payouts splits such a piece).
    """
    n = len(addresses)
    for _ in range(_ASSIGN_ATTEMPTS):
        targets = list(addresses)
        rng.shuffle(targets)
        targets += [rng.choice(addresses) for _ in range(len(pieces) - n)]
        if n == 1:
            return targets
        sums: dict[str, int] = {}
        for address, amount in zip(targets, pieces, strict=True):
            sums[address] = sums.get(address, 0) + amount
        if max(sums.values()) < below:
            return targets
    order = sorted(range(len(pieces)), key=lambda i: -pieces[i])
    shuffled = list(addresses)
    rng.shuffle(shuffled)
    totals = dict.fromkeys(shuffled, 0)
    out = [""] * len(pieces)
    for rank, i in enumerate(order):
        # The first n pieces go one to each address, so every address is paid at least once.
        address = shuffled[rank] if rank < n else min(shuffled, key=lambda a: totals[a])
        out[i] = address
        totals[address] += pieces[i]
    return out


def candidate_totals(
    pooled: int, fee_min_bps: int, fee_max_bps: int, *, network_fee: int = 0, min_payout: int = 1
) -> list[int]:
    """Every payout total a pooled amount can have, base units, ascending: the multiples of its
    quantum inside :func:`quoted_total_range` (with ``network_fee`` charged). The release gate
    picks one of them (see ``mixer/rounds.py``); at most ``2 x fee range / quantum`` of them,
    so at most 20."""
    bottom, top = quoted_total_range(pooled, fee_min_bps, fee_max_bps, network_fee=network_fee, min_payout=min_payout)
    q = payout_quantum(pooled, fee_min_bps, fee_max_bps, minimum=min_payout)
    first = -(-bottom // q) * q
    return list(range(max(first, q), top + 1, q))


def quoted_total_range(
    pooled: int, fee_min_bps: int, fee_max_bps: int, *, network_fee: int = 0, min_payout: int = 1
) -> tuple[int, int]:
    """What the withdrawal addresses receive in all for a pooled amount, base units, both ends
    inclusive: the range quoted before the deposit (the exact figure is on the mix's status
    once the deposit is pooled)."""
    low, high = fee_bounds(pooled, fee_min_bps, fee_max_bps)
    q = payout_quantum(pooled, fee_min_bps, fee_max_bps, minimum=min_payout)
    top = pooled - network_fee - low
    bottom = pooled - network_fee - high
    return max(0, bottom), max(0, top - top % q)
