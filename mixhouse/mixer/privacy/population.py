"""Simulated populations and a pure model of the service's public transfers.

Used by the analyzer's tests and ``benchmarks/privacy.py``: a seeded population of users
(arrival times, deposit amounts, withdrawal addresses, delay windows) and :func:`simulate`,
which produces the public ledger the service would write for it and the ground truth
(withdrawal address -> deposit ref). No I/O, no clock: the same seed gives the same ledger.

Amounts are integer base units (1 jobcoin = 10^8); times are float seconds from 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mixhouse.mixer.planner import plan_payouts
from mixhouse.mixer.privacy.records import PublicTransfer

COIN = 100_000_000
POOL_ADDRESS = "pool"
# Round amounts people pick; a rounded deposit is a multiple of one of these (whole coins).
ROUND_STEPS_COINS = (1, 5, 10, 20, 25, 50, 100)


@dataclass(frozen=True, slots=True)
class SimUser:
    """One simulated user (one mix).

    Attributes:
        source: the address the user deposits from.
        deposit_address: the mix's deposit address.
        withdrawal_addresses: 1 or more addresses.
        amount: base units deposited.
        arrives_at: time of the deposit, seconds.
        delay_min_seconds, delay_max_seconds: the mix's delay window.
    """

    source: str
    deposit_address: str
    withdrawal_addresses: tuple[str, ...]
    amount: int
    arrives_at: float
    delay_min_seconds: int
    delay_max_seconds: int


@dataclass(frozen=True, slots=True)
class Population:
    """A scenario: users and the span they arrive over.

    Attributes:
        name: the scenario's name.
        users: in order of arrival.
        span_seconds: arrivals are uniform in ``[0, span_seconds]``.
    """

    name: str
    users: tuple[SimUser, ...]
    span_seconds: float


@dataclass(frozen=True, slots=True)
class Piece:
    """One planned payout as :func:`simulate` needs it.

    Attributes:
        to_address: the withdrawal address.
        amount: base units.
        delay_seconds: seconds after the deposit.
    """

    to_address: str
    amount: int
    delay_seconds: float


class Planner(Protocol):
    """A planner adapted to :func:`simulate`: the pieces of one deposit."""

    def __call__(
        self, pooled: int, addresses: Sequence[str], delay_min: int, delay_max: int, rng: random.Random
    ) -> Sequence[Piece]:
        """Plan ``pooled`` base units to ``addresses`` with delays in ``[delay_min, delay_max]``."""
        ...


def denominated_planner(fee_min_bps: int = 100, fee_max_bps: int = 300, min_payout: int = 1) -> Planner:
    """The current planner (:func:`mixhouse.mixer.planner.plan_payouts`) on Jobcoin (no network fee)."""

    def plan(
        pooled: int, addresses: Sequence[str], delay_min: int, delay_max: int, rng: random.Random
    ) -> Sequence[Piece]:
        result = plan_payouts(
            pooled=pooled,
            fee_min_bps=fee_min_bps,
            fee_max_bps=fee_max_bps,
            withdrawal_addresses=addresses,
            network_fee_per_payout=0,
            min_payout=min_payout,
            delay_min_seconds=delay_min,
            delay_max_seconds=delay_max,
            rng=rng,
        )
        return [Piece(p.to_address, p.amount, p.delay_seconds) for p in result.payouts]

    return plan


def deposit_amount(
    rng: random.Random,
    *,
    median: int = 25 * COIN,
    sigma: float = 1.0,
    low: int = 150_000_000,
    high: int = 500 * COIN,
    round_share: float = 0.4,
) -> int:
    """A deposit, base units: log-normal around ``median`` clamped to ``[low, high]``; with
    probability ``round_share`` rounded to a multiple of a round step (whole coins, or 5, 10,
    20, 25, 50, 100 coins, whichever steps fit), otherwise to the base unit."""
    raw = median * math.exp(rng.gauss(0.0, sigma))
    amount = min(max(round(raw), low), high)
    if rng.random() < round_share:
        steps = [s * COIN for s in ROUND_STEPS_COINS if s * COIN <= amount]
        if steps:
            step = rng.choice(steps)
            amount = max(step, round(amount / step) * step)
    return amount


def population(
    name: str,
    *,
    seed: int,
    users: int = 200,
    span_seconds: float = 300.0,
    addresses: tuple[int, int] = (1, 5),
    delay: tuple[int, int] = (1, 60),
    equal_amount: int | None = None,
) -> Population:
    """A seeded population.

    Args:
        name: the scenario's name.
        seed: the ``random.Random`` seed.
        users: how many users (one mix each).
        span_seconds: arrivals are uniform over ``[0, span_seconds]``.
        addresses: withdrawal addresses per user, uniform in this inclusive range.
        delay: every mix's delay window, seconds (inclusive).
        equal_amount: if set, every user deposits exactly this many base units.
    """
    rng = random.Random(seed)  # noqa: S311 - a seeded, reproducible simulation, not a secret
    arrivals = sorted(rng.uniform(0.0, span_seconds) for _ in range(users))
    made: list[SimUser] = []
    for i, at in enumerate(arrivals):
        n = rng.randint(*addresses)
        amount = equal_amount if equal_amount is not None else deposit_amount(rng)
        made.append(
            SimUser(
                source=f"user-{i}",
                deposit_address=f"mix-{i}",
                withdrawal_addresses=tuple(f"w-{i}-{k}" for k in range(n)),
                amount=amount,
                arrives_at=at,
                delay_min_seconds=delay[0],
                delay_max_seconds=delay[1],
            )
        )
    return Population(name=name, users=tuple(made), span_seconds=span_seconds)


def realistic(seed: int = 13, *, delay: tuple[int, int] = (1, 60)) -> Population:
    """Issue 13's population: 200 users over 300 s, 1-5 addresses, log-normal deposits."""
    return population("realistic", seed=seed, delay=delay)


def quiet(seed: int = 13) -> Population:
    """A quiet period: 20 users over 300 s."""
    return population("quiet", seed=seed, users=20)


def burst(seed: int = 13) -> Population:
    """A burst: 200 users within 10 s."""
    return population("burst", seed=seed, span_seconds=10.0)


def all_equal(seed: int = 13) -> Population:
    """Everyone deposits exactly 25 jobcoins (200 users over 300 s)."""
    return population("all-equal", seed=seed, equal_amount=25 * COIN)


def snap_up(at: float, round_seconds: float | None) -> float:
    """``at`` moved up to the next multiple of ``round_seconds`` (unchanged when ``None``)."""
    if round_seconds is None:
        return at
    return math.ceil(at / round_seconds) * round_seconds


def simulate(
    scenario: Population,
    planner: Planner,
    *,
    seed: int = 0,
    pool_address: str = POOL_ADDRESS,
    sweep_lag_seconds: float = 1.0,
    round_seconds: float | None = None,
) -> tuple[tuple[PublicTransfer, ...], dict[str, str]]:
    """The public transfers the service would make for ``scenario``, and the ground truth.

    Each user sends the deposit to the mix's deposit address at arrival; the deposit address
    sweeps it to the pool ``sweep_lag_seconds`` later; the pool pays each planned piece at
    the deposit's time plus the piece's delay, moved up to the next round boundary when
    ``round_seconds`` is set (payouts released in shared rounds).

    Args:
        scenario: the users.
        planner: plans each deposit (e.g. :func:`denominated_planner`).
        seed: seeds the planner's ``random.Random``.
        pool_address: the pool's address.
        sweep_lag_seconds: seconds between a deposit and its sweep.
        round_seconds: the payout round, or ``None`` to pay when due.

    Returns:
        ``(transfers, truth)``: the transfers sorted by time, each with ``ref`` ``"tx<i>"``
        (its position), and withdrawal address -> the ref of its deposit transfer.
    """
    rng = random.Random(seed)  # noqa: S311 - a seeded, reproducible simulation, not a secret
    events: list[tuple[float, int, PublicTransfer, str | None]] = []
    for user in scenario.users:
        events.append(
            (user.arrives_at, 0, PublicTransfer(user.source, user.deposit_address, user.amount, user.arrives_at), None)
        )
        swept = user.arrives_at + sweep_lag_seconds
        events.append((swept, 1, PublicTransfer(user.deposit_address, pool_address, user.amount, swept), None))
        pieces = planner(user.amount, user.withdrawal_addresses, user.delay_min_seconds, user.delay_max_seconds, rng)
        for piece in pieces:
            at = snap_up(user.arrives_at + piece.delay_seconds, round_seconds)
            events.append((at, 2, PublicTransfer(pool_address, piece.to_address, piece.amount, at), user.source))
    events.sort(key=lambda e: (e[0], e[1]))
    transfers: list[PublicTransfer] = []
    deposit_ref: dict[str, str] = {}
    truth: dict[str, str] = {}
    for i, (_, kind, transfer, source) in enumerate(events):
        ref = f"tx{i}"
        transfers.append(
            PublicTransfer(transfer.from_address, transfer.to_address, transfer.amount, transfer.at, ref=ref)
        )
        if kind == 0:
            deposit_ref[transfer.from_address] = ref
        elif kind == 2 and source is not None:
            truth[transfer.to_address] = deposit_ref[source]
    return tuple(transfers), truth
