"""The payout planner: a pure function from a deposit to its payouts.

No database, no network, no clock: it takes the amounts, the withdrawal addresses, the delay
window and a random generator, and returns the payouts. Production passes
:class:`random.SystemRandom` (the split and the timing are what hide the link between deposit
and payouts); tests pass a seeded :class:`random.Random` to reproduce a plan.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mixhouse.errors import InvalidAmount


@dataclass(frozen=True, slots=True)
class PlannedPayout:
    """One payout of a plan.

    Attributes:
        to_address: a withdrawal address of the mix.
        amount: base units the address receives.
        delay_seconds: seconds after the deposit is pooled at which it is sent.
    """

    to_address: str
    amount: int
    delay_seconds: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A deposit's plan.

    Attributes:
        fee: the service fee in base units (kept in the pool).
        network_fee: base units of network fees charged to the user (all payouts' reserves).
        payouts: the payouts; their amounts sum to ``deposit - fee - network_fee`` exactly.
    """

    fee: int
    network_fee: int
    payouts: tuple[PlannedPayout, ...]

    @property
    def payout_total(self) -> int:
        """Sum of the payout amounts, base units."""
        return sum(p.amount for p in self.payouts)


def payout_count(n_addresses: int, rng: random.Random) -> int:
    """How many payouts: every address gets one, and up to as many again at random, so an
    address may receive several payouts and the count does not reveal the address count."""
    return n_addresses + rng.randint(0, n_addresses)


def split_amount(total: int, parts: int, minimum: int, rng: random.Random) -> list[int]:
    """Split ``total`` base units into ``parts`` random integers, each ``>= minimum``, that sum
    to ``total`` exactly.

    Raises:
        InvalidAmount: ``total < parts * minimum`` or ``parts < 1``.
    """
    if parts < 1:
        raise InvalidAmount("a split needs at least one part")
    if total < parts * minimum:
        raise InvalidAmount(f"{total} base units cannot be split into {parts} parts of at least {minimum}")
    spare = total - parts * minimum
    # Integer weights in [1000, 3000]: no share is vanishingly small (a tell of its own) and
    # the largest is at most three times the smallest. All integer arithmetic; the rounding
    # remainder goes to a random part, so the sum is exact.
    weights = [rng.randint(1_000, 3_000) for _ in range(parts)]
    scale = sum(weights)
    shares = [spare * w // scale for w in weights]
    shares[rng.randrange(parts)] += spare - sum(shares)
    return [minimum + s for s in shares]


def plan_payouts(
    *,
    deposit: int,
    fee_bps: int,
    withdrawal_addresses: Sequence[str],
    network_fee_per_payout: int,
    min_payout: int,
    delay_min_seconds: int,
    delay_max_seconds: int,
    rng: random.Random,
) -> Plan:
    """Plan the payouts of one pooled deposit.

    Args:
        deposit: base units that reached the pool for this deposit (after the sweep's own
            network fee).
        fee_bps: the mix's quoted fee in basis points of ``deposit``, rounded down.
        withdrawal_addresses: 1 or more distinct addresses; each gets at least one payout.
        network_fee_per_payout: base units reserved per payout for its network fee.
        min_payout: smallest payout in base units (the chain's dust limit).
        delay_min_seconds, delay_max_seconds: the window the payout times are drawn from.
        rng: the random source (``SystemRandom`` in production).

    Returns:
        A :class:`Plan` whose payouts sum to ``deposit - fee - network_fee`` exactly, with
        each address paid at least once and each delay inside the window.

    Raises:
        InvalidAmount: the deposit cannot cover the fee, the network fees and a minimum payout
            to every address even with one payout per address.
    """
    n = len(withdrawal_addresses)
    if n < 1:
        raise InvalidAmount("at least one withdrawal address is needed")
    if not 0 <= delay_min_seconds <= delay_max_seconds:
        raise InvalidAmount("the delay window is empty")
    fee = deposit * fee_bps // 10_000
    # A payout is at least one base unit even when no dust limit is given.
    minimum = max(min_payout, 1)
    count = payout_count(n, rng)
    # Fewer payouts if the network fees of the extra ones would not leave enough to pay out.
    while count > n and deposit - fee - count * network_fee_per_payout < count * minimum:
        count -= 1
    network_fee = count * network_fee_per_payout
    payable = deposit - fee - network_fee
    amounts = split_amount(payable, count, minimum, rng)
    # Every address once, then the extra payouts to random addresses; then shuffle so the
    # order of amounts says nothing about which address came first.
    targets = list(withdrawal_addresses) + [rng.choice(withdrawal_addresses) for _ in range(count - n)]
    rng.shuffle(targets)
    payouts = tuple(
        PlannedPayout(address, amount, rng.randint(delay_min_seconds, delay_max_seconds))
        for address, amount in zip(targets, amounts, strict=True)
    )
    return Plan(fee=fee, network_fee=network_fee, payouts=payouts)


def draw_fee_bps(fee_min_bps: int, fee_max_bps: int, rng: random.Random) -> int:
    """The fee quoted to a new mix, uniform in ``[fee_min_bps, fee_max_bps]``: a fee that
    differs per mix keeps the fee from being a fingerprint that links deposits to payouts."""
    return rng.randint(fee_min_bps, fee_max_bps)
