"""The records every history source produces and the sync engine stores.

A source (a node adapter, blockchain.info, Esplora) turns a chain's transactions into
:class:`AddressTx` rows: one per (address, txid), with the address's inputs and outputs in the
transaction and its net effect. Amounts are ``int`` base units (satoshi, wei, token base unit).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class Direction(enum.StrEnum):
    """The transaction's effect on the address: received, sent, or both to itself."""

    IN = "in"
    OUT = "out"
    SELF = "self"


@dataclass(frozen=True, slots=True)
class Leg:
    """One input or output of a transaction.

    Attributes:
        index: vin/vout index (Bitcoin), 0 for the value transfer and the log index for an
            ERC-20 Transfer (Ethereum).
        address: the address, ``None`` when the script has none.
        amount: base units.
        asset: ``"BTC"``, ``"ETH"``, or the ERC-20 contract address (EIP-55).
    """

    index: int
    address: str | None
    amount: int
    asset: str


@dataclass(frozen=True, slots=True)
class AddressTx:
    """A transaction as seen from one address.

    Attributes:
        chain: ``"BTC"`` or ``"ETH"``.
        address: the address this row is about.
        txid: transaction id (display hex; ``0x``-prefixed lower-case hex on Ethereum).
        inputs, outputs: the transaction's legs (all of them where the source gives them; a
            source that omits legs not touching the address gives the ones it has — the store
            merges partial copies and never drops a leg it already knows).
        net: signed effect on the address in base units of ``asset`` (received - sent - fee
            paid by the address).
        asset: the asset of ``net``.
        fee: network fee of the transaction in the chain's base unit, ``None`` if unknown.
        block_height: ``None`` while unconfirmed.
        block_hash: ``None`` while unconfirmed.
        block_time: ``None`` while unconfirmed.
    """

    chain: str
    address: str
    txid: str
    inputs: tuple[Leg, ...]
    outputs: tuple[Leg, ...]
    net: int
    asset: str
    fee: int | None
    block_height: int | None
    block_hash: str | None
    block_time: datetime | None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def direction(self) -> Direction:
        """The direction of this row (see :func:`direction_of`)."""
        return direction_of(
            self.address, self.asset, net=self.net, fee=self.fee, inputs=self.inputs, outputs=self.outputs
        )


def direction_of(
    address: str, asset: str, *, net: int, fee: int | None, inputs: Sequence[Leg], outputs: Sequence[Leg]
) -> Direction:
    """The effect of a transaction on ``address`` in ``asset``.

    ``in`` when the address only received ``asset``, ``out`` when it spent some, ``self`` when
    it both spent and received back more than it paid in fees (a transfer to itself). Only the
    legs of ``asset`` count: the ETH legs of a transaction do not make its ERC-20 row ``out``.
    """
    spent = any(leg.address == address and leg.asset == asset for leg in inputs)
    received = any(leg.address == address and leg.asset == asset for leg in outputs)
    if spent and received and net >= -(fee or 0):
        return Direction.SELF
    return Direction.OUT if spent else Direction.IN


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """What one fetch returned.

    Attributes:
        txs: transactions touching the requested addresses, newest or oldest first as the
            source gives them (the store orders them).
        checkpoint: opaque text to resume from next time (``None``: start over); persisted
            per address after the page is stored, so a restart resumes mid-way.
        done: ``True`` when the source has nothing more after this page.
        rewound_to: set when the source found that blocks it had reported were replaced (a
            reorg): every stored transaction above this height goes back to unconfirmed
            before ``txs`` are stored (they re-confirm if they are in the new blocks).
    """

    txs: tuple[AddressTx, ...]
    checkpoint: str | None
    done: bool
    rewound_to: int | None = None


class HistorySource(Protocol):
    """Something that can list an address's history incrementally."""

    chain: str

    async def fetch(self, addresses: Sequence[str], checkpoint: str | None) -> HistoryPage:
        """The next page of history of ``addresses`` after ``checkpoint``.

        Raises:
            ChainError: the node or provider failed (after the source's own retries).
            InvalidAddress: an address is not valid for the source's chain.
        """
        ...
