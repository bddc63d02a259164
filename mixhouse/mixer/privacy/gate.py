"""The release gate's measure: how many deposits could have paid a mix's payouts.

Pure: the recent public deposits in, a count out. The gate asks it before a deposit's payouts
leave (``mixhouse.mixer.rounds``): a chain analyst who sees the payouts' total and their time
cannot tell the mix's deposit from any other deposit this counts. It is the analyzer's
"single" test (a mix's whole payout total explained by one deposit, by amount and time): the
attack that is left once payouts are standard pieces and the fee is not computable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mixhouse.mixer.privacy.rules import FeeRules


@dataclass(frozen=True, slots=True)
class RecentDeposit:
    """A deposit as the public sees it.

    Attributes:
        amount: base units that reached the pool.
        at: when it arrived, seconds (any epoch, the same as the other times).
    """

    amount: int
    at: float


def release_anonymity_set(
    *,
    total: int,
    release_at: float,
    deposits: Iterable[RecentDeposit],
    rules: FeeRules,
    delay_min_seconds: float,
    max_wait_seconds: float,
) -> int:
    """How many deposits could have paid payouts summing to ``total`` if they left at
    ``release_at``: those that arrived inside ``[release_at - max_wait, release_at - delay_min]``
    and whose amount can produce ``total`` under ``rules`` (the mix's own deposit included).

    Args:
        total: the mix's payout total for this deposit, base units.
        release_at: when the payouts would leave, seconds.
        deposits: the public deposits of the asset (any superset of the window is fine).
        rules: the service's documented fee rules.
        delay_min_seconds, max_wait_seconds: the documented timing bounds of a payout after
            its deposit.
    """
    earliest = release_at - max_wait_seconds
    latest = release_at - delay_min_seconds
    return sum(1 for d in deposits if earliest <= d.at <= latest and rules.could_pay(d.amount, total))
