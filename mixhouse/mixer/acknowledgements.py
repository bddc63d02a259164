"""An operator acknowledges a reconciliation mismatch, and payouts resume while it stays the same.

A mismatch (:mod:`mixhouse.mixer.reconcile`) pauses payouts of its asset. When the operator
has understood it (coins taken out of the pool by hand, a top-up, a fee the books could not
see), :func:`acknowledge` records a written acknowledgement of the *current* mismatch: the
asset, the books and chain figures of that check and the range ``[low, high]`` the chain's
balance could legitimately have been in, who and why. It is audited
(``reconciliation.acknowledged``) and points the ``reconciliations`` row at itself
(``acknowledgement_id``), which lets payouts go again at once.

What stays "the same" is the *discrepancy* (chain minus books), not the raw figures: payouts
that flow lower the books and the chain's balance by the same amount. An acknowledgement
accepts every discrepancy in ``[actual - high, actual - low]`` of its check (one value on UTXO
chains, where ``low == high``; a range on account chains, where sends in flight make the
chain's balance legitimately uncertain). A later check is covered (:func:`covers`) when some
discrepancy in that range would put its balance inside its own range; then the row keeps the
acknowledgement and payouts keep flowing. A check whose discrepancy differs (more coins gone,
or some came back) is a new mismatch: the row loses the acknowledgement and payouts pause
again until the operator acknowledges that one too. A check that agrees clears it as well, so
an acknowledgement never carries over to a later, separate mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.audit import AuditEntry
from mixhouse.db.tables import reconciliation_acknowledgements, reconciliations
from mixhouse.errors import IllegalTransition, InvalidInput, NotFound
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import now
from mixhouse.unit import unit

MAX_REASON_CHARS = 2000


class NothingToAcknowledge(IllegalTransition):
    """The last reconciliation agrees, predates acknowledgements, or changed since the operator
    read it. HTTP 409."""


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """One stored acknowledgement; amounts in base units.

    Attributes:
        id: ``reconciliation_acknowledgements.id``.
        asset: the asset whose mismatch it covers.
        expected, actual: the books and the chain's balance of the acknowledged check.
        low, high: the range the chain's balance could legitimately have been in then.
        discrepancy_low, discrepancy_high: the chain-minus-books discrepancies it accepts
            (``actual - high`` .. ``actual - low``).
        operator: who acknowledged it.
        reason: their written reason.
        created_at: when.
        created: ``True`` when this call stored it, ``False`` when the current mismatch was
            already acknowledged (the existing one is returned).
    """

    id: int
    asset: str
    expected: int
    actual: int
    low: int
    high: int
    discrepancy_low: int
    discrepancy_high: int
    operator: str
    reason: str
    created_at: datetime
    created: bool = True

    @classmethod
    def from_row(cls, row: Any, *, created: bool = True) -> Acknowledgement:
        """Build from a ``reconciliation_acknowledgements`` row."""
        return cls(
            id=int(row.id),
            asset=str(row.asset),
            expected=int(row.expected),
            actual=int(row.actual),
            low=int(row.low),
            high=int(row.high),
            discrepancy_low=int(row.discrepancy_low),
            discrepancy_high=int(row.discrepancy_high),
            operator=str(row.operator),
            reason=str(row.reason),
            created_at=row.created_at,
            created=created,
        )


def covers(ack: Acknowledgement, *, actual: int, low: int, high: int) -> bool:
    """True when a check with balance ``actual`` and range ``[low, high]`` (base units) is
    explained by ``ack``: some discrepancy ``d`` it accepts puts ``actual - d`` in range."""
    return max(actual - high, ack.discrepancy_low) <= min(actual - low, ack.discrepancy_high)


async def acknowledgement(conn: AsyncConnection, ack_id: int) -> Acknowledgement:
    """Acknowledgement ``ack_id`` read on ``conn``.

    Raises:
        NotFound: no acknowledgement has this id.
    """
    row = (
        await conn.execute(
            select(reconciliation_acknowledgements).where(reconciliation_acknowledgements.c.id == ack_id)
        )
    ).first()
    if row is None:
        raise NotFound("no acknowledgement with this id")
    return Acknowledgement.from_row(row, created=False)


async def acknowledge(
    rt: Runtime,
    *,
    asset: str,
    operator: str,
    reason: str,
    expected: int | None = None,
    actual: int | None = None,
) -> Acknowledgement:
    """Acknowledge the current reconciliation mismatch of ``asset``; payouts resume at once.

    One transaction: the acknowledgement, the ``reconciliations`` row pointing at it, and the
    ``reconciliation.acknowledged`` audit entry. The row is locked, so a check recorded
    concurrently lands before or after, never half-way.

    Args:
        rt: the runtime.
        asset: an enabled asset.
        operator: who acknowledges (login name or ``"api key"``).
        reason: why the mismatch is understood (1..2000 characters after trimming).
        expected, actual: the figures (base units) the operator saw; when given they must
            still be the last check's, so that nobody acknowledges a mismatch they have not
            seen.

    Returns:
        The acknowledgement, new, or the existing one if this mismatch was already acknowledged.

    Raises:
        InvalidInput: the asset is not enabled, or the reason is empty or too long.
        NotFound: the asset has not been reconciled yet.
        NothingToAcknowledge: the last check agrees, predates migration 0013, or its figures
            are not ``expected``/``actual``.
    """
    rt.adapter(asset)
    text = reason.strip()
    if not text or len(text) > MAX_REASON_CHARS:
        raise InvalidInput(f"give a reason of 1 to {MAX_REASON_CHARS} characters")
    async with unit(rt.engine) as work:
        recon = (
            await work.conn.execute(select(reconciliations).where(reconciliations.c.asset == asset).with_for_update())
        ).first()
        if recon is None:
            raise NotFound(f"{asset} has not been reconciled yet")
        if recon.ok:
            raise NothingToAcknowledge(f"the last reconciliation of {asset} agrees: nothing to acknowledge")
        if recon.low is None or recon.high is None:
            raise NothingToAcknowledge("the last check predates acknowledgements; wait for the next one")
        if (expected is not None and expected != int(recon.expected)) or (
            actual is not None and actual != int(recon.actual)
        ):
            raise NothingToAcknowledge(
                f"the mismatch changed since it was read: books {recon.expected}, chain {recon.actual} now; look again"
            )
        if recon.acknowledgement_id is not None:
            return await acknowledgement(work.conn, recon.acknowledgement_id)
        row = (
            await work.conn.execute(
                reconciliation_acknowledgements.insert()
                .values(
                    asset=asset,
                    expected=recon.expected,
                    actual=recon.actual,
                    low=recon.low,
                    high=recon.high,
                    discrepancy_low=int(recon.actual) - int(recon.high),
                    discrepancy_high=int(recon.actual) - int(recon.low),
                    operator=operator,
                    reason=text,
                    created_at=now(),
                )
                .returning(*reconciliation_acknowledgements.c)
            )
        ).one()
        await work.conn.execute(
            reconciliations.update().where(reconciliations.c.asset == asset).values(acknowledgement_id=row.id)
        )
        ack = Acknowledgement.from_row(row)
        work.audit(
            AuditEntry(
                "reconciliation.acknowledged",
                "reconciliation",
                asset,
                actor="admin",
                asset=asset,
                details={
                    "acknowledgement_id": ack.id,
                    "operator": operator,
                    "reason": text,
                    "expected": str(ack.expected),
                    "actual": str(ack.actual),
                    "low": str(ack.low),
                    "high": str(ack.high),
                    "discrepancy": [str(ack.discrepancy_low), str(ack.discrepancy_high)],
                    "detail": recon.detail,
                },
            )
        )
    return ack


async def still_covered(conn: AsyncConnection, ack_id: int | None, *, actual: int, low: int, high: int) -> int | None:
    """The acknowledgement id a new mismatching check keeps: ``ack_id`` if it still covers the
    check (:func:`covers`), else ``None`` (a new mismatch: payouts pause again)."""
    if ack_id is None:
        return None
    ack = await acknowledgement(conn, ack_id)
    return ack_id if covers(ack, actual=actual, low=low, high=high) else None
