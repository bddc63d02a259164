"""Reconciliation: does the pool hold on chain what the books say it holds?

For each asset the books give ``credits - debits``: confirmed sweeps into the pool minus
confirmed payouts and the network fees the pool paid for them. Sends in flight make the
chain's balance legitimately differ, so the check is a range:

* ``low  = books - (amount + reserved fee of every pool send in flight)``
* ``high = books + (amount of every sweep into the pool in flight)``

where "in flight" is ``signed`` or ``broadcast`` when the books were read, plus anything signed
by a transaction the books' snapshot does not see (it may have landed before the balance was
read). "Does not see" is commit order (``sends.signed_xid`` against the snapshot), not a clock:
a send's ``signed_at`` is taken before its transaction commits, so a send signed just before the
books were read and committed just after would be neither in the books nor "signed after" them
(issue 14, item 5). Every send that lands was committed as signed before its broadcast, hence
before the balance was read, hence before the late query, which reads a fresh snapshot.

On UTXO chains the books are the ``available`` coins; a coin that a payout reserved and spent
between the books' read and the chain's answer is dropped from the check, not called missing.
A Bitcoin pool move (key rotation, mixer/pool_rotation.py) is a books line of its own: its inputs
leave the books as ``spent`` when it is signed and its one output (their total less the move's
fee, ``pool_moves.network_fee_max``, ``network_fee_paid`` once confirmed) joins them as an
``available`` coin of the new generation when it confirms, so the fee is the books' only loss.

A balance outside the range
is a mismatch: it is logged, recorded in ``reconciliations`` (shown by the admin API) and
pauses new payouts of that asset until a later check finds the books and the chain agree, or
the operator acknowledges the mismatch (:mod:`mixhouse.mixer.acknowledgements`): payouts then
flow while later checks show the same discrepancy, and a different one pauses them again.

Refunds of held deposits (:mod:`mixhouse.mixer.refunds`) are neither: they leave from a
deposit address that never entered the pool's books.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Text, and_, case, cast, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.types import UserDefinedType

from mixhouse.audit import AuditEntry
from mixhouse.chains.base import UtxoChainAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.db.tables import pool_moves, reconciliations, sends, utxos
from mixhouse.mixer.acknowledgements import still_covered
from mixhouse.mixer.gas import record_gas_tank
from mixhouse.mixer.pool_rotation import generations
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import SendState, now
from mixhouse.money import Asset
from mixhouse.unit import unit

log = structlog.get_logger(__name__)

_IN_FLIGHT = [SendState.SIGNED, SendState.BROADCAST]


class _PgSnapshot(UserDefinedType[str]):
    """PostgreSQL's ``pg_snapshot`` (a transaction snapshot), carried as its text form."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:  # noqa: ARG002 - SQLAlchemy's signature
        return "PG_SNAPSHOT"


PG_SNAPSHOT = _PgSnapshot()


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """One check's outcome; amounts in base units.

    Attributes:
        asset: the asset checked.
        pool_address: the pool's address.
        books: ``credits - debits`` of confirmed sends.
        low, high: the range the on-chain balance may legitimately be in.
        actual: the on-chain balance of the pool.
    """

    asset: str
    pool_address: str
    books: int
    low: int
    high: int
    actual: int

    @property
    def ok(self) -> bool:
        """True when the chain's balance is inside the books' range."""
        return self.low <= self.actual <= self.high

    def detail(self) -> str:
        """A one-line explanation."""
        if self.ok:
            return f"balance {self.actual} within [{self.low}, {self.high}]"
        side = "deficit" if self.actual < self.low else "surplus"
        gap = self.low - self.actual if self.actual < self.low else self.actual - self.high
        return f"{side} of {gap} base units: balance {self.actual} outside [{self.low}, {self.high}]"


async def reconcile(rt: Runtime, asset: Asset) -> Reconciliation:
    """Check the pool of ``asset`` and record the outcome (one transaction with its audit entry).

    Raises:
        ChainError: the node or API failed; nothing is recorded.
    """
    adapter = rt.adapter(asset)
    if isinstance(adapter, UtxoChainAdapter):
        return await _record(rt, await _check_utxo_pool(rt, adapter))
    pool = adapter.pool_address
    # Every pool key generation (mixer/pool_rotation.py) holds part of the pool: the books and the
    # balance count them all; a move between two of them costs only its fee.
    async with rt.engine.connect() as conn:
        pools = sorted({pool, *(g.address for g in await generations(conn, asset.value))})
        moves_before = await pool_move_fees(conn, asset)
    into_pool = and_(sends.c.kind == "sweep", sends.c.to_address.in_(pools))
    out_of_pool = and_(sends.c.kind == "payout", sends.c.from_address.in_(pools))
    confirmed = sends.c.state == SendState.CONFIRMED
    in_flight = sends.c.state.in_(_IN_FLIGHT)
    out_cost = sends.c.amount + sends.c.network_fee_reserved
    async with rt.engine.connect() as conn:
        books_row = (
            await conn.execute(
                select(
                    # The snapshot this very statement reads (READ COMMITTED: one per statement).
                    cast(func.pg_current_snapshot(), Text).label("snapshot"),
                    func.coalesce(func.sum(case((and_(into_pool, confirmed), sends.c.amount), else_=0)), 0).label(
                        "credits"
                    ),
                    func.coalesce(
                        func.sum(
                            case(
                                (
                                    and_(out_of_pool, confirmed),
                                    sends.c.amount + func.coalesce(sends.c.network_fee_paid, 0),
                                ),
                                else_=0,
                            )
                        ),
                        0,
                    ).label("debits"),
                    func.coalesce(func.sum(case((and_(out_of_pool, in_flight), out_cost), else_=0)), 0).label(
                        "out_flight"
                    ),
                    func.coalesce(func.sum(case((and_(into_pool, in_flight), sends.c.amount), else_=0)), 0).label(
                        "in_flight"
                    ),
                ).where(sends.c.asset == asset.value)
            )
        ).one()
    actual = sum([await adapter.balance(address) for address in pools])
    async with rt.engine.connect() as conn:
        moves_after = await pool_move_fees(conn, asset)
    snapshot = cast(books_row.snapshot, PG_SNAPSHOT)
    async with rt.engine.connect() as conn:
        late = (
            await conn.execute(
                select(
                    func.coalesce(func.sum(case((out_of_pool, out_cost), else_=0)), 0).label("out"),
                    func.coalesce(func.sum(case((into_pool, sends.c.amount), else_=0)), 0).label("in_"),
                ).where(
                    sends.c.asset == asset.value,
                    # Implied by the next line; lets the index on signed_xid narrow the scan.
                    sends.c.signed_xid >= func.pg_snapshot_xmin(snapshot),
                    ~func.pg_visible_in_snapshot(sends.c.signed_xid, snapshot),
                )
            )
        ).one()
    books = int(books_row.credits) - int(books_row.debits) - moves_before[0]
    # A move in flight, or signed since the first look, may have paid its fee already.
    moves_in_flight = moves_before[1] + max(0, moves_after[2] - moves_before[2])
    result = Reconciliation(
        asset=asset.value,
        pool_address=pool,
        books=books,
        low=books - int(books_row.out_flight) - int(late.out) - moves_in_flight,
        high=books + int(books_row.in_flight) + int(late.in_),
        actual=actual,
    )
    if isinstance(adapter, Erc20Adapter):
        # The tank's ETH pays this token's gas: watched with the books, alerted before it runs dry.
        await record_gas_tank(rt, adapter)
    return await _record(rt, result)


async def pool_move_fees(conn: Any, asset: Asset) -> tuple[int, int, int]:
    """Pool moves of ``asset``'s own units (mixer/pool_rotation.py; not a token's gas moves):
    ``(paid, in_flight, all_max)``, the fees paid by the confirmed ones, the most the in-flight
    ones can cost, and the most all of them can cost, in the asset's base units."""
    row = (
        await conn.execute(
            select(
                func.coalesce(
                    func.sum(case((pool_moves.c.state == "confirmed", pool_moves.c.network_fee_paid), else_=0)), 0
                ).label("paid"),
                func.coalesce(
                    func.sum(case((pool_moves.c.state != "confirmed", pool_moves.c.network_fee_max), else_=0)), 0
                ).label("in_flight"),
                func.coalesce(func.sum(pool_moves.c.network_fee_max), 0).label("all_max"),
                # A token's gas move carries wei, not the token: never in the token's books.
            ).where(pool_moves.c.asset == asset.value, pool_moves.c.kind == "pool")
        )
    ).one()
    return int(row.paid), int(row.in_flight), int(row.all_max)


async def _check_utxo_pool(rt: Runtime, adapter: UtxoChainAdapter) -> Reconciliation:
    """UTXO chains: every coin the books call ``available`` must be unspent on chain with its
    recorded amount. Reserved coins belong to sends in flight and are left out; a coin spent
    behind our back shows as a deficit."""
    async with rt.engine.connect() as conn:
        coins = (
            await conn.execute(
                select(utxos.c.txid, utxos.c.vout, utxos.c.amount).where(
                    utxos.c.asset == adapter.asset.value, utxos.c.state == "available"
                )
            )
        ).all()
    on_chain = {(c.txid, c.vout): await adapter.unspent_amount(c.txid, c.vout) for c in coins}
    differs = [(c.txid, c.vout) for c in coins if on_chain[(c.txid, c.vout)] != int(c.amount)]
    if differs:
        # A payout reserves its coins (and commits) before it broadcasts: a coin spent on chain
        # by our own payout since the books were read is no longer `available` now.
        async with rt.engine.connect() as conn:
            still_available = {
                (r.txid, r.vout)
                for r in await conn.execute(
                    select(utxos.c.txid, utxos.c.vout).where(
                        utxos.c.asset == adapter.asset.value,
                        utxos.c.state == "available",
                        tuple_(utxos.c.txid, utxos.c.vout).in_(differs),
                    )
                )
            }
        coins = [c for c in coins if (c.txid, c.vout) not in set(differs) - still_available]
    books = sum(int(c.amount) for c in coins)
    actual = sum(on_chain[(c.txid, c.vout)] or 0 for c in coins)
    return Reconciliation(
        asset=adapter.asset.value, pool_address=adapter.pool_address, books=books, low=books, high=books, actual=actual
    )


async def _record(rt: Runtime, result: Reconciliation) -> Reconciliation:
    """Store ``result`` (one transaction, audited when the verdict changes) and log a mismatch."""
    asset = Asset(result.asset)
    pool = result.pool_address
    books = result.books
    actual = result.actual
    acknowledged: int | None = None
    async with unit(rt.engine) as work:
        # Locked: an operator's acknowledgement (mixer/acknowledgements.py) of the previous
        # check lands wholly before this one or after it.
        previous = (
            await work.conn.execute(
                select(reconciliations.c.ok, reconciliations.c.acknowledgement_id)
                .where(reconciliations.c.asset == asset.value)
                .with_for_update()
            )
        ).first()
        if not result.ok and previous is not None:
            # A mismatch the operator acknowledged keeps its acknowledgement (and payouts
            # flowing) while the discrepancy stays the one acknowledged; a different one pauses.
            acknowledged = await still_covered(
                work.conn, previous.acknowledgement_id, actual=actual, low=result.low, high=result.high
            )
        values = {
            "checked_at": now(),
            "pool_address": pool,
            "expected": books,
            "actual": actual,
            "ok": result.ok,
            "detail": result.detail(),
            "low": result.low,
            "high": result.high,
            "acknowledgement_id": acknowledged,
        }
        await work.conn.execute(
            insert(reconciliations)
            .values(asset=asset.value, **values)
            .on_conflict_do_update(index_elements=[reconciliations.c.asset], set_=values)
        )
        was_acknowledged = previous is not None and previous.acknowledgement_id is not None
        if previous is None or previous.ok is not result.ok or (was_acknowledged and acknowledged is None):
            # Only changes of verdict are audited; a steady state is not news. A mismatch that
            # outgrew its acknowledgement is a new mismatch.
            action = "reconciliation.ok" if result.ok else "reconciliation.mismatch"
            work.audit(
                AuditEntry(
                    action,
                    "reconciliation",
                    asset.value,
                    asset=asset.value,
                    details={"detail": result.detail()},
                )
            )
    if not result.ok and acknowledged is None:
        log.error("pool reconciliation mismatch: payouts paused", asset=asset.value, detail=result.detail())
    elif not result.ok:
        log.warning(
            "pool reconciliation mismatch, acknowledged by the operator: payouts continue",
            asset=asset.value,
            detail=result.detail(),
        )
    return result
