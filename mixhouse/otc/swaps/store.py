"""Database access of the swap engine: the ``otc_swaps`` rows and their outbox (migration 0019).

Every write takes the caller's connection inside its transaction: the engine writes a state,
its data and its audit entry in one transaction (:mod:`.engine`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.otc.swaps.states import TERMINAL


async def insert_swap(
    conn: AsyncConnection,
    *,
    swap_id: str,
    trade_id: str,
    role: str,
    peer: str,
    state: str,
    secret_hash: str,
    secret: str | None,
    terms: dict[str, Any],
) -> bool:
    """Insert a swap; ``False`` (nothing written) if ``swap_id`` exists already."""
    result = await conn.execute(
        text(
            "INSERT INTO otc_swaps (id, trade_id, role, peer, state, secret_hash, secret, terms)"
            " VALUES (:id, :trade_id, :role, :peer, :state, :secret_hash, :secret, CAST(:terms AS JSONB))"
            " ON CONFLICT (id) DO NOTHING"
        ),
        {
            "id": swap_id,
            "trade_id": trade_id,
            "role": role,
            "peer": peer,
            "state": state,
            "secret_hash": secret_hash,
            "secret": secret,
            "terms": json.dumps(terms),
        },
    )
    return bool(result.rowcount)


_GET = text("SELECT * FROM otc_swaps WHERE id = :id")
_GET_LOCKED = text("SELECT * FROM otc_swaps WHERE id = :id FOR UPDATE")


async def get_swap(conn: AsyncConnection, swap_id: str, *, lock: bool = False) -> Row[Any] | None:
    """The swap row (``FOR UPDATE`` if ``lock``), or ``None``."""
    sql = _GET_LOCKED if lock else _GET
    return (await conn.execute(sql, {"id": swap_id})).first()


async def open_swaps(conn: AsyncConnection) -> list[Row[Any]]:
    """Swaps not in a terminal state, oldest first."""
    rows = await conn.execute(
        text("SELECT * FROM otc_swaps WHERE NOT (state = ANY(:terminal)) ORDER BY created_at, id"),
        {"terminal": sorted(TERMINAL)},
    )
    return list(rows)


async def all_swaps(conn: AsyncConnection, *, trade_id: str | None = None) -> list[Row[Any]]:
    """Every swap (of ``trade_id`` if given), oldest first."""
    if trade_id is None:
        return list(await conn.execute(text("SELECT * FROM otc_swaps ORDER BY created_at, id")))
    return list(
        await conn.execute(text("SELECT * FROM otc_swaps WHERE trade_id = :t ORDER BY created_at, id"), {"t": trade_id})
    )


async def update_swap(
    conn: AsyncConnection,
    swap_id: str,
    *,
    state: str,
    data: dict[str, Any],
    secret: str | None = None,
    terms: dict[str, Any] | None = None,
    secret_hash: str | None = None,
) -> None:
    """Write the swap's state and data (and its secret, terms or hash when given)."""
    await conn.execute(
        text(
            "UPDATE otc_swaps SET state = :state, data = CAST(:data AS JSONB), updated_at = now(),"
            " secret = COALESCE(:secret, secret), terms = COALESCE(CAST(:terms AS JSONB), terms),"
            " secret_hash = COALESCE(:secret_hash, secret_hash) WHERE id = :id"
        ),
        {
            "id": swap_id,
            "state": state,
            "data": json.dumps(data),
            "secret": secret,
            "terms": None if terms is None else json.dumps(terms),
            "secret_hash": secret_hash,
        },
    )


async def reserved_outpoints(conn: AsyncConnection) -> set[str]:
    """Bitcoin outpoints ``txid:vout`` spent by the stored locks of this node's swaps (so two
    swaps never sign locks spending one coin)."""
    rows = await conn.execute(
        text("SELECT data -> 'lock_txs' AS txs FROM otc_swaps WHERE data ? 'lock_txs'"),
    )
    found: set[str] = set()
    for row in rows:
        for tx in row.txs or []:
            found.update(tx.get("extra", {}).get("inputs", []))
    return found


async def enqueue(conn: AsyncConnection, *, swap_id: str, kind: str, payload: dict[str, Any]) -> None:
    """Owe the peer a message; one per ``(swap, kind)`` (a repeat is ignored)."""
    await conn.execute(
        text(
            "INSERT INTO otc_swap_outbox (swap_id, kind, payload) VALUES (:s, :k, CAST(:p AS JSONB))"
            " ON CONFLICT (swap_id, kind) DO NOTHING"
        ),
        {"s": swap_id, "k": kind, "p": json.dumps(payload)},
    )


async def undelivered(conn: AsyncConnection, *, swap_ids: Sequence[str] | None = None) -> list[Row[Any]]:
    """Messages not acknowledged yet, oldest first."""
    rows = await conn.execute(
        text(
            "SELECT o.*, s.peer FROM otc_swap_outbox o JOIN otc_swaps s ON s.id = o.swap_id"
            " WHERE NOT o.delivered ORDER BY o.id"
        )
    )
    return [r for r in rows if swap_ids is None or r.swap_id in swap_ids]


async def mark_delivered(conn: AsyncConnection, message_id: int) -> None:
    """The peer acknowledged the message."""
    await conn.execute(text("UPDATE otc_swap_outbox SET delivered = true WHERE id = :id"), {"id": message_id})


async def count_attempt(conn: AsyncConnection, message_id: int) -> None:
    """One more failed delivery."""
    await conn.execute(text("UPDATE otc_swap_outbox SET attempts = attempts + 1 WHERE id = :id"), {"id": message_id})
