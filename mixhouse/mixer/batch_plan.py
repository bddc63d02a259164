"""Planning a UTXO payout batch: which released payouts share one transaction, and who pays
what share of its fee. Pure (no I/O, no clock); :mod:`mixhouse.mixer.utxo_batches` runs it.

Amounts are integers in the asset's base unit (satoshi on Bitcoin); sizes are vbytes (BIP-141).

Rules:

* **One output per address per batch.** Two pieces to one address in one transaction would
  show that they belong together (and leave the books to tell two equal outputs apart); the
  later piece waits for the next batch. This is the in-flight rule of the per-send path
  (one send per (pool, recipient)), applied inside a transaction.
* **Dust stays out.** A payout below the asset's dust limit cannot be an output; it is left to
  the per-send path, which reports it.
* **At most ``max_outputs`` payouts**, taken in due order (earliest first, then by id), so the
  oldest payouts never starve.
* **The fee is split by output size**: each payout pays ``fee * its output vbytes / all
  payout vbytes`` (the inputs, the overhead and the change output are shared in the same
  proportion), rounded down, the remaining satoshi going one each to the largest remainders
  (ties to the earlier payout). The shares sum to the fee exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mixhouse.errors import InvalidAmount


@dataclass(frozen=True, slots=True)
class BatchCandidate:
    """A released, due payout that a batch may take.

    Attributes:
        send_id: the ``sends`` row.
        mix_id: its mix (none of the batch's mixes' own deposits may be an input).
        to_address: the recipient.
        amount: base units (satoshi), exactly the output's value.
        fee_reserved: base units of network fee reserved for it from the user.
    """

    send_id: int
    mix_id: str
    to_address: str
    amount: int
    fee_reserved: int


@dataclass(frozen=True, slots=True)
class BatchChoice:
    """What :func:`choose_batch` decided.

    Attributes:
        taken: the payouts of the batch, in due order.
        waiting: payouts left for a later batch (an address already in this batch, or the
            batch full).
        unbatchable: payouts the batch path never takes (below dust): the per-send path's.
    """

    taken: tuple[BatchCandidate, ...]
    waiting: tuple[BatchCandidate, ...]
    unbatchable: tuple[BatchCandidate, ...]

    @property
    def mix_ids(self) -> frozenset[str]:
        """The mixes paid by the batch."""
        return frozenset(c.mix_id for c in self.taken)


def choose_batch(candidates: Sequence[BatchCandidate], *, max_outputs: int, dust: int) -> BatchChoice:
    """Choose the payouts of one batch from ``candidates`` (given in due order).

    Args:
        candidates: released, due, scheduled payouts, earliest due first.
        max_outputs: the most payouts in one transaction (change not counted), ``>= 1``.
        dust: the smallest output in base units.

    Returns:
        The :class:`BatchChoice`; ``taken`` has distinct ``to_address`` values, at most
        ``max_outputs`` of them, every amount ``>= dust``; every candidate is in exactly one
        of ``taken``, ``waiting``, ``unbatchable``.

    Raises:
        InvalidAmount: ``max_outputs < 1``.
    """
    if max_outputs < 1:
        raise InvalidAmount("a batch needs room for at least one output")
    taken: list[BatchCandidate] = []
    waiting: list[BatchCandidate] = []
    unbatchable: list[BatchCandidate] = []
    addresses: set[str] = set()
    for candidate in candidates:
        if candidate.amount < dust:
            unbatchable.append(candidate)
        elif candidate.to_address in addresses or len(taken) >= max_outputs:
            waiting.append(candidate)
        else:
            addresses.add(candidate.to_address)
            taken.append(candidate)
    return BatchChoice(tuple(taken), tuple(waiting), tuple(unbatchable))


def split_fee(fee: int, weights: Sequence[int]) -> list[int]:
    """Split ``fee`` base units over payouts in proportion to ``weights`` (their output vbytes).

    Largest-remainder rounding: each share is ``floor(fee * w / sum(weights))``, then the
    satoshi left over go one each to the largest remainders, ties to the earlier payout.

    Returns:
        One share per weight, each ``>= 0``, ``sum == fee`` exactly; equal weights get shares
        that differ by at most 1.

    Raises:
        InvalidAmount: ``fee < 0``, no weights, or a weight ``< 1``.
    """
    if fee < 0:
        raise InvalidAmount(f"a fee cannot be negative, got {fee}")
    if not weights or min(weights) < 1:
        raise InvalidAmount("every payout of a batch needs a positive weight")
    total = sum(weights)
    shares = [fee * w // total for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(fee * weights[i] % total), i))
    for i in remainders[: fee - sum(shares)]:
        shares[i] += 1
    return shares


def batch_fee_cap(reserved: Sequence[int], *, multiple: int, floor: int) -> int:
    """The most a batch may pay to miners: ``multiple`` times the fees reserved from its users,
    and at least ``floor`` (base units). The pool pays any excess over the reserves.

    Raises:
        InvalidAmount: ``multiple < 1`` or ``floor < 0``.
    """
    if multiple < 1 or floor < 0:
        raise InvalidAmount("the fee cap needs multiple >= 1 and floor >= 0")
    return max(sum(reserved) * multiple, floor)
