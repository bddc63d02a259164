"""Structure filters: what the documented shape of a plan lets an attacker rule out.

The attacker reads the documentation, so it knows which planner is in use and applies only
that planner's shape rules:

* :class:`~mixhouse.mixer.privacy.rules.LegacyBpsRules` (the planner before issue 13): a mix of
  ``n`` addresses makes ``n..2n`` payouts, every address gets one, and every payout is
  ``minimum + share`` with integer weights in 1000..3000, so the largest payout of a mix is at
  most about three times its smallest.
* :class:`~mixhouse.mixer.privacy.rules.DenominatedRules` (the current planner): every payout is
  a 1-2-5 series value times the deposit's quantum.

Any other :class:`~mixhouse.mixer.privacy.rules.FeeRules` gets only ``plausible_piece``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixhouse.mixer.planner import payout_quantum
from mixhouse.mixer.privacy.records import AddressRecord
from mixhouse.mixer.privacy.rules import DenominatedRules, FeeRules, LegacyBpsRules
from mixhouse.mixer.privacy.timing import TimingRules

# The legacy split's weights are integers in [1000, 3000]: shares within a factor 3.
LEGACY_SHARE_WEIGHTS = (1_000, 3_000)
# A legacy mix of n addresses makes at most 2n payouts.
LEGACY_PAYOUTS_PER_ADDRESS = 2
# Base units per coin and the ledger's number of decimals (Jobcoin, like Bitcoin: 10^8).
DECIMALS = 8


@dataclass(frozen=True, slots=True)
class GroupShape:
    """The shape rules a group of addresses (one mix's) must satisfy.

    Attributes:
        share_weights: the legacy split's integer weight range ``(low, high)``: every payout
            is ``minimum + floor(spare x w / sum of weights)`` (one of them also takes the
            rounding remainder), so pieces are within ``high / low`` of each other and, for
            ``c`` payouts of a net ``N``, inside :meth:`piece_range`. ``None``: no such rule.
        max_pieces_per_address: if set, a group of ``k`` addresses has at most this times ``k``
            payouts (and at least ``k``: every address is paid).
    """

    share_weights: tuple[int, int] | None = None
    max_pieces_per_address: int | None = None

    @property
    def ratio(self) -> int | None:
        """The largest piece over the smallest, rounded up; ``None`` without share weights."""
        if self.share_weights is None:
            return None
        low, high = self.share_weights
        return -(-high // low)

    @staticmethod
    def ratio_slack(count: int) -> int:
        """Base units of rounding allowed above ``ratio x smallest`` for ``count`` payouts:
        the smallest share is a floor (one unit short at most) and one share takes the
        remainder (fewer than ``count`` units)."""
        return count + 2

    def piece_range(self, bottom: int, top: int, count: int) -> tuple[int, int]:
        """The smallest and largest possible piece, base units, of a legacy plan of ``count``
        payouts whose net lies in ``[bottom, top]``.

        A piece is ``m + floor((N - c m) w / W)`` (plus a remainder below ``c`` for one of
        them) with ``W`` the sum of ``c`` weights, so it lies between
        ``N low / (low + (c-1) high) - 1`` and ``N high / (high + (c-1) low) + c - 1`` for any
        minimum ``m >= 0``. Without share weights: ``(1, top)``.
        """
        if self.share_weights is None:
            return 1, top
        low, high = self.share_weights
        smallest = bottom * low // (low + (count - 1) * high) - 1
        largest = -(-top * high // (high + (count - 1) * low)) + count - 1
        return max(1, smallest), largest

    def admits(self, size: int, count: int, smallest: int, largest: int) -> bool:
        """Whether a whole group (``size`` addresses, ``count`` payouts, pieces between
        ``smallest`` and ``largest`` base units) has the documented shape."""
        if self.max_pieces_per_address is not None and count > self.max_pieces_per_address * size:
            return False
        ratio = self.ratio
        return ratio is None or largest <= ratio * smallest + self.ratio_slack(count)


def group_shape(rules: FeeRules) -> GroupShape | None:
    """The shape rules of the planner ``rules`` describe; ``None`` when it documents none."""
    if isinstance(rules, LegacyBpsRules):
        return GroupShape(share_weights=LEGACY_SHARE_WEIGHTS, max_pieces_per_address=LEGACY_PAYOUTS_PER_ADDRESS)
    if isinstance(rules, DenominatedRules):
        # No count bound: the planner documents MAX_PIECES_PER_ADDRESS pieces per address, but
        # its greedy decomposition alone can exceed it (899,406 base units to one address: 9
        # pieces), so a filter on it would drop true groups.
        return GroupShape()
    return None


def plausible_address(record: AddressRecord, rules: FeeRules, timing: TimingRules) -> bool:
    """Whether an address's payouts can come from the service at all, whatever the deposit.

    Every piece must be ``plausible_piece``; the address alone must fit the group shape of
    some mix of at most ``timing.max_addresses`` addresses (its pieces within the legacy share
    ratio; no more payouts than the largest mix could make).
    """
    if not all(rules.plausible_piece(p) for p in record.pieces):
        return False
    shape = group_shape(rules)
    if shape is None:
        return True
    k = timing.max_addresses
    # A k-address mix makes at most m x k payouts and every other address takes one.
    if shape.max_pieces_per_address is not None and record.count > shape.max_pieces_per_address * k - (k - 1):
        return False
    ratio = shape.ratio
    if ratio is not None:
        worst_count = (shape.max_pieces_per_address or record.count) * k
        return record.max_piece <= ratio * record.min_piece + shape.ratio_slack(worst_count)
    return True


def admits(deposit_amount: int, record: AddressRecord, rules: FeeRules) -> bool:
    """Whether the address's pieces can be payouts of this particular deposit.

    Denominated plans pay only multiples of the deposit's quantum (``payout_quantum``), so a
    piece finer than that quantum belongs to a smaller deposit. The legacy planner has no
    per-deposit piece rule beyond the group shape.
    """
    if isinstance(rules, DenominatedRules):
        q = payout_quantum(deposit_amount, rules.fee_min_bps, rules.fee_max_bps, minimum=rules.min_payout)
        return all(p % q == 0 for p in record.pieces)
    return True


def significant_decimals(amount: int) -> int:
    """How many of the ``DECIMALS`` decimals of ``amount`` base units are significant
    (``0`` for whole coins, ``8`` for an amount like 12.34567891)."""
    if amount == 0:
        return 0
    places = DECIMALS
    while places and amount % 10 == 0:
        amount //= 10
        places -= 1
    return places


def machine_made(amount: int) -> bool:
    """Whether an amount shows all eight decimals: an amount people rarely send by hand, so a
    tell that a payout was computed (the legacy split's payouts nearly all are)."""
    return significant_decimals(amount) == DECIMALS
