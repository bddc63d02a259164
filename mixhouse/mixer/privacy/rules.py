"""The service's documented rules, as an attacker knows them: which payout totals a deposit
can produce, and what a single payout can look like.

Two rule sets: :class:`DenominatedRules`, what ``mixhouse.mixer.planner`` does now, and
:class:`LegacyBpsRules`, the planner before issue 13 (an integer bps fee, exact splits), kept
so the analyzer can be shown to break it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mixhouse.mixer.planner import fee_bounds, is_series_value, payout_quantum


class FeeRules(Protocol):
    """What the public can compute about a deposit's payout total."""

    def could_pay(self, deposit: int, total: int) -> bool:
        """Whether a deposit of ``deposit`` base units can produce payouts summing to ``total``."""
        ...

    def total_bounds(self, deposit: int) -> tuple[int, int]:
        """The smallest and largest payout total of a deposit, base units, inclusive."""
        ...

    def plausible_piece(self, amount: int) -> bool:
        """Whether one payout of ``amount`` base units can come from this service at all."""
        ...


@dataclass(frozen=True, slots=True)
class DenominatedRules:
    """The current planner: fee drawn in base units inside the quoted range, total rounded down
    to the deposit's quantum, pieces from the 1-2-5 series (see ``mixhouse.mixer.planner``).

    Attributes:
        fee_min_bps, fee_max_bps: the operator's published fee range.
        min_payout: the chain's dust limit (raises small deposits' quantum), base units.
        network_fee: network fee deducted from every deposit's total, base units (0 on Jobcoin).
    """

    fee_min_bps: int
    fee_max_bps: int
    min_payout: int = 1
    network_fee: int = 0

    def total_bounds(self, deposit: int) -> tuple[int, int]:
        """See :class:`FeeRules`."""
        low, high = fee_bounds(deposit, self.fee_min_bps, self.fee_max_bps)
        return deposit - self.network_fee - high, deposit - self.network_fee - low

    def could_pay(self, deposit: int, total: int) -> bool:
        """See :class:`FeeRules`: inside the bounds and a multiple of the deposit's quantum."""
        bottom, top = self.total_bounds(deposit)
        if not bottom <= total <= top:
            return False
        return total % payout_quantum(deposit, self.fee_min_bps, self.fee_max_bps, minimum=self.min_payout) == 0

    def plausible_piece(self, amount: int) -> bool:
        """See :class:`FeeRules`: a 1-2-5 series value (of any power of ten)."""
        return is_series_value(amount, 1)


@dataclass(frozen=True, slots=True)
class LegacyBpsRules:
    """The planner before issue 13: ``fee = floor(D x bps / 10^4)`` for an integer ``bps`` in
    the range, payouts summing exactly to ``D - fee``.

    Attributes:
        fee_min_bps, fee_max_bps: the published fee range.
    """

    fee_min_bps: int
    fee_max_bps: int

    def total_bounds(self, deposit: int) -> tuple[int, int]:
        """See :class:`FeeRules`."""
        return deposit - deposit * self.fee_max_bps // 10_000, deposit - deposit * self.fee_min_bps // 10_000

    def could_pay(self, deposit: int, total: int) -> bool:
        """See :class:`FeeRules`: ``deposit - total`` is one of the (at most 201) possible fees."""
        fee = deposit - total
        if fee < 0:
            return False
        # fee = floor(D * bps / 10^4)  <=>  bps in [ceil(fee * 10^4 / D), ceil((fee + 1) * 10^4 / D) - 1]
        if deposit == 0:
            return fee == 0
        lowest = -((-fee * 10_000) // deposit)
        highest = -((-(fee + 1) * 10_000) // deposit) - 1
        return max(lowest, self.fee_min_bps) <= min(highest, self.fee_max_bps)

    def plausible_piece(self, amount: int) -> bool:
        """See :class:`FeeRules`: any positive amount."""
        return amount > 0
