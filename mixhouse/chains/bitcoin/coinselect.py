"""Coin selection for P2WPKH wallets: a pure function with a caller-supplied random source.

No database, no network, no clock. The wallet's unspent outputs (all P2WPKH, BIP-84) come in
as :class:`Coin` values; :func:`select_coins` returns the inputs, the fee and the change of
one payment, all in **satoshi**, with the fee computed from an estimated virtual size in
**vbytes** (BIP-141: ``vsize = ceil(weight / 4)``) times a fee rate in **sat/vB**.

Size model (upper bounds, so the real fee rate is never below the asked one):

* overhead: version 4 + locktime 4 + input count 1 + output count 1 = 10 bytes, plus the
  segwit marker and flag (2 weight units = 0.5 vB): 10.5, rounded up to
  :data:`TX_OVERHEAD_VBYTES` = 11;
* a P2WPKH input: outpoint 36 + empty scriptSig 1 + sequence 4 = 41 bytes (164 WU), plus the
  witness (item count 1, 72-byte DER signature with its sighash byte + 1 length byte,
  33-byte compressed key + 1 length byte = 108 WU): 272 WU = :data:`P2WPKH_INPUT_VBYTES` = 68;
* a P2WPKH output: value 8 + script length 1 + script 22 = :data:`P2WPKH_OUTPUT_VBYTES` = 31.
  Other output types are larger (:func:`output_vbytes`); pass their total as
  ``outputs_vbytes``.

Dust follows Bitcoin Core's ``GetDustThreshold`` (``src/policy/policy.cpp``) at the default
``-dustrelayfee`` of 3 sat/vB: :func:`dust_threshold` gives 294 sat for P2WPKH, 330 for P2WSH
and P2TR, 540 for P2SH and 546 for P2PKH. :func:`select_coins` takes one ``dust`` limit for
its change output (default 546, the largest, which is safe for any type).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mixhouse.errors import InsufficientFunds, InvalidAmount

TX_OVERHEAD_VBYTES = 11
P2WPKH_INPUT_VBYTES = 68
P2WPKH_OUTPUT_VBYTES = 31
DEFAULT_DUST = 546
# Bitcoin Core's DUST_RELAY_TX_FEE, sat/kvB expressed per vbyte.
DUST_RELAY_FEE_RATE = 3


class FeeTooHigh(InvalidAmount):
    """The network fee of the cheapest acceptable selection is above the caller's ``max_fee``
    (typically: fee rates spiked; retry later rather than overpay)."""


@dataclass(frozen=True, slots=True)
class Coin:
    """An unspent P2WPKH output of the wallet.

    Attributes:
        txid: the funding transaction id, 64 hex characters (display byte order, as RPCs show it).
        vout: the output index in that transaction.
        amount: the value in satoshi, ``> 0``.
        address: the P2WPKH address holding it (for finding its key).
        owner: the id of the mix whose deposit this coin is, or ``None`` for pool and change
            coins. A mix's payouts must never spend that mix's own deposit.
    """

    txid: str
    vout: int
    amount: int
    address: str
    owner: str | None


@dataclass(frozen=True, slots=True)
class Selection:
    """The result of :func:`select_coins`.

    Attributes:
        inputs: the coins to spend, in the order to spend them.
        fee: the network fee in satoshi; ``sum(inputs) == targets + fee + change`` exactly.
        change: satoshi for a change output, ``0`` (no change output) or ``>= dust``.
        vsize: the estimated virtual size in vbytes the fee was computed from (with the change
            output if there is one). ``fee >= vsize * fee_rate``; it is larger only when a
            sub-dust remainder was given to the miners instead of a change output.
    """

    inputs: tuple[Coin, ...]
    fee: int
    change: int
    vsize: int

    @property
    def total_in(self) -> int:
        """Sum of the input amounts, satoshi."""
        return sum(c.amount for c in self.inputs)


def output_vbytes(script_pubkey: bytes) -> int:
    """The vbytes one output with ``script_pubkey`` adds: value 8 + length 1 + the script
    (31 for P2WPKH, 34 for P2PKH, 32 for P2SH, 43 for P2WSH and P2TR)."""
    if len(script_pubkey) >= 0xFD:
        raise ValueError("scripts of 253 bytes or more are not standard outputs")
    return 8 + 1 + len(script_pubkey)


def dust_threshold(script_pubkey: bytes, dust_relay_fee_rate: int = DUST_RELAY_FEE_RATE) -> int:
    """Bitcoin Core's dust threshold of an output, in satoshi: the cost at
    ``dust_relay_fee_rate`` sat/vB of creating the output and of later spending it.

    Spending costs 32 + 4 + 1 + 107 / 4 + 4 = 67 vB for a witness program (``OP_n <2..40
    bytes>``) and 32 + 4 + 1 + 107 + 4 = 148 vB otherwise (``GetDustThreshold``, integer
    division as in Core). An output of exactly the threshold is not dust; ``value <
    threshold`` is. ``OP_RETURN`` outputs are never dust (threshold 0).
    """
    if script_pubkey[:1] == b"\x6a":
        return 0
    size = output_vbytes(script_pubkey)
    is_witness_program = (
        4 <= len(script_pubkey) <= 42
        and (script_pubkey[0] == 0x00 or 0x51 <= script_pubkey[0] <= 0x60)
        and script_pubkey[1] + 2 == len(script_pubkey)
    )
    size += 32 + 4 + 1 + 107 // 4 + 4 if is_witness_program else 32 + 4 + 1 + 107 + 4
    return size * dust_relay_fee_rate


def estimate_vsize(n_inputs: int, outputs_vbytes: int) -> int:
    """Virtual size in vbytes of a transaction with ``n_inputs`` P2WPKH inputs and outputs
    totalling ``outputs_vbytes`` (see the module docstring for the model)."""
    return TX_OVERHEAD_VBYTES + P2WPKH_INPUT_VBYTES * n_inputs + outputs_vbytes


def _settle(inputs: Sequence[Coin], *, targets: int, fee_rate: int, outputs_vbytes: int, dust: int) -> Selection | None:
    """Fee and change for spending exactly ``inputs``; ``None`` if they do not cover."""
    total = sum(c.amount for c in inputs)
    vsize = estimate_vsize(len(inputs), outputs_vbytes)
    excess = total - targets - vsize * fee_rate
    if excess < 0:
        return None
    vsize_with_change = vsize + P2WPKH_OUTPUT_VBYTES
    change = total - targets - vsize_with_change * fee_rate
    if change >= dust and change > 0:
        return Selection(tuple(inputs), vsize_with_change * fee_rate, change, vsize_with_change)
    # A change output would be dust (or would not pay for itself): the remainder goes to
    # the miners, which is cheaper than creating and later spending a tiny output.
    return Selection(tuple(inputs), total - targets, 0, vsize)


def select_coins(
    *,
    coins: Sequence[Coin],
    targets: int,
    fee_rate: int,
    exclude_owner: str | None,
    n_outputs: int,
    max_fee: int,
    rng: random.Random,
    dust: int = DEFAULT_DUST,
    outputs_vbytes: int | None = None,
) -> Selection:
    """Choose the inputs of a payment of ``targets`` satoshi to ``n_outputs`` outputs.

    Args:
        coins: the spendable coins (duplicates by outpoint are ignored).
        targets: satoshi to pay, the sum of the payment outputs (not counting change), ``> 0``.
        fee_rate: sat/vB, ``>= 1``.
        exclude_owner: a mix id whose coins must not be spent (its own deposit); ``None``
            excludes nothing. Coins with ``owner=None`` are always eligible.
        n_outputs: number of payment outputs (not counting change), ``>= 1``.
        max_fee: the largest acceptable fee in satoshi.
        rng: the random source for tie-breaking (``SystemRandom`` in production).
        dust: the smallest change output worth creating, satoshi (default 546, Bitcoin
            Core's dust limit for P2PKH and so an upper bound for every type).
        outputs_vbytes: total vbytes of the payment outputs when they are not all P2WPKH
            (sum of :func:`output_vbytes`); default ``31 * n_outputs``.

    Returns:
        A :class:`Selection` with ``sum(inputs) == targets + fee + change``, ``change == 0``
        or ``change >= dust``, ``fee >= estimated vsize * fee_rate`` and ``fee <= max_fee``.

    Strategy:
        1. Coins owned by ``exclude_owner`` are dropped, and so are coins worth no more than
           the fee of spending them (``amount <= 68 * fee_rate``).
        2. If one coin covers ``targets`` plus the fee, one coin is spent - never several,
           so unrelated deposits are not linked by a common input. Among the coins that
           cover, the smallest is taken (least change, big coins kept for big payments);
           equal amounts are ordered by ``rng``.
        3. Otherwise the fewest coins: the ``k`` largest coins (largest first) give the
           smallest ``k`` that covers, because every input costs the same. The last of the
           ``k`` slots is then filled with the smallest remaining coin that still covers,
           which trims the change without adding an input.

    Raises:
        InvalidAmount: ``targets``, ``fee_rate``, ``n_outputs``, ``dust`` or ``max_fee`` out
            of range.
        InsufficientFunds: the eligible coins cannot cover ``targets`` plus the fee, even
            all together.
        FeeTooHigh: a selection exists but its fee is above ``max_fee``.
    """
    if targets <= 0:
        raise InvalidAmount(f"the payment must be positive, got {targets} sat")
    if fee_rate < 1:
        raise InvalidAmount(f"the fee rate must be at least 1 sat/vB, got {fee_rate}")
    if n_outputs < 1:
        raise InvalidAmount("a payment needs at least one output")
    if dust < 0 or max_fee < 0:
        raise InvalidAmount("dust and max_fee must not be negative")
    out_vb = P2WPKH_OUTPUT_VBYTES * n_outputs if outputs_vbytes is None else outputs_vbytes
    if out_vb < n_outputs:
        raise InvalidAmount("outputs_vbytes is smaller than the number of outputs")

    input_cost = P2WPKH_INPUT_VBYTES * fee_rate
    seen: set[tuple[str, int]] = set()
    eligible: list[Coin] = []
    for coin in coins:
        outpoint = (coin.txid, coin.vout)
        if outpoint in seen:
            continue
        seen.add(outpoint)
        if exclude_owner is not None and coin.owner == exclude_owner:
            continue
        if coin.amount <= input_cost:
            continue
        eligible.append(coin)
    # Shuffle first, then stable sorts: equal amounts end up in random order.
    rng.shuffle(eligible)

    def settle(inputs: Sequence[Coin]) -> Selection | None:
        return _settle(inputs, targets=targets, fee_rate=fee_rate, outputs_vbytes=out_vb, dust=dust)

    too_expensive: Selection | None = None

    # 2. One coin, the smallest that covers.
    for coin in sorted(eligible, key=lambda c: c.amount):
        single = settle([coin])
        if single is None:
            continue
        if single.fee <= max_fee:
            return single
        too_expensive = too_expensive or single

    # 3. Fewest coins: the k largest.
    by_size = sorted(eligible, key=lambda c: c.amount, reverse=True)
    k = 0
    for n in range(2, len(by_size) + 1):
        if settle(by_size[:n]) is not None:
            k = n
            break
    if k == 0:
        if too_expensive is not None:
            raise FeeTooHigh(f"the fee {too_expensive.fee} sat is above the limit of {max_fee} sat")
        available = sum(c.amount for c in eligible)
        raise InsufficientFunds(
            f"{available} sat in {len(eligible)} spendable coins cannot pay {targets} sat "
            f"plus the fee at {fee_rate} sat/vB"
        )
    head = by_size[: k - 1]
    # The smallest tail coin that still covers; by_size[k - 1] always does.
    for tail in reversed(by_size[k - 1 :]):
        chosen = settle([*head, tail])
        if chosen is not None and chosen.fee <= max_fee:
            return chosen
        if chosen is not None:
            too_expensive = too_expensive or chosen
    assert too_expensive is not None
    raise FeeTooHigh(f"the fee {too_expensive.fee} sat is above the limit of {max_fee} sat")
