"""A mix's status as its owner reads it, in one statement: :func:`read_mix_status`.

``GET /api/v1/mixes/{id}`` is the route every user polls, so its read is one round trip: the
mix row with its deposits and payouts aggregated into two JSON arrays by PostgreSQL, run in
autocommit (no ``BEGIN``/``ROLLBACK``). Three separate reads inside a transaction, after the
pool's pre-ping, took six round trips (issue 14, item 8).

Only the columns the status shows are aggregated (never a payout's raw transaction). JSON
turns them into JSON values, which are read back exactly: amounts are ``NUMERIC(78,0)``, so
JSON integers that Python parses as ``int`` (never a float); timestamps are ISO 8601 strings
in the session's time zone, parsed back into aware datetimes equal to the typed columns.

The API's lean path (:mod:`mixhouse.api.fast_status`) runs the same statement on a plain
psycopg connection (:func:`fetch_mix_status`: about a quarter of the CPU of SQLAlchemy's
execution layer) and caches the rendered body until migration 0015's triggers say that the
mix, one of its deposits or one of its sends changed: a status that comes to read another
table needs a trigger there too.
"""

from __future__ import annotations

from datetime import datetime
from itertools import chain
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Column, ColumnElement, bindparam, func, literal_column, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import aggregate_order_by

from mixhouse.db.engine import read_first
from mixhouse.db.tables import Amount, deposits, mixes, sends
from mixhouse.errors import NotFound
from mixhouse.mixer.runtime import Runtime

# What mixhouse.api.schemas.DepositOut and PayoutOut read, and which of it are timestamps.
_DEPOSIT_COLUMNS = (
    "id",
    "asset",
    "state",
    "amount",
    "from_addresses",
    "confirmations",
    "reason",
    "fee_amount",
    "network_fee_amount",
    "payout_total",
    "anonymity_set",
    "released_at",
    "created_at",
)
_PAYOUT_COLUMNS = ("id", "kind", "asset", "to_address", "amount", "state", "due_at", "txid", "confirmed_at")
# The operator's refunds of held deposits (mixer/refunds.py), shown on their deposit.
_REFUND_COLUMNS = (
    "id",
    "deposit_id",
    "asset",
    "to_address",
    "amount",
    "network_fee_reserved",
    "state",
    "txid",
    "confirmed_at",
)
_TIMESTAMPS = frozenset({"released_at", "created_at", "due_at", "confirmed_at"})


def _json_rows(columns: list[Column[Any]], order_by: Column[Any], where: ColumnElement[bool]) -> Any:
    """A scalar subquery: the rows matching ``where`` as a JSON array of objects, ``[]`` if none."""
    # Keys inline (our own column names): a bound key has no type PostgreSQL can infer.
    row = func.jsonb_build_object(*chain.from_iterable((literal_column(f"'{c.name}'"), c) for c in columns))
    aggregated = func.jsonb_agg(aggregate_order_by(row, order_by))
    return select(func.coalesce(aggregated, literal_column("'[]'::jsonb"))).where(where).scalar_subquery()


# Built once, with the id as a bound parameter: SQLAlchemy's cache key of this statement (a
# walk of its whole tree, subqueries included) took longer than the query when a fresh
# ``.where(mixes.c.id == mix_id)`` was built per request.
_STATUS = select(
    mixes,
    _json_rows([deposits.c[n] for n in _DEPOSIT_COLUMNS], deposits.c.id, deposits.c.mix_id == mixes.c.id).label(
        "status_deposits"
    ),
    _json_rows(
        [sends.c[n] for n in _PAYOUT_COLUMNS], sends.c.id, (sends.c.mix_id == mixes.c.id) & (sends.c.kind == "payout")
    ).label("status_payouts"),
    _json_rows(
        [sends.c[n] for n in _REFUND_COLUMNS], sends.c.id, (sends.c.mix_id == mixes.c.id) & (sends.c.kind == "refund")
    ).label("status_refunds"),
).where(mixes.c.id == bindparam("mix_id"))


# The statement as psycopg runs it (pyformat parameters; the kinds as bound by SQLAlchemy).
_STATUS_COMPILED = _STATUS.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[no-untyped-call]
STATUS_SQL: str = str(_STATUS_COMPILED)
_STATUS_PARAMS: dict[str, Any] = {k: v for k, v in _STATUS_COMPILED.params.items() if k != "mix_id"}
# Columns of mixes SQLAlchemy turns from Decimal into int (psycopg leaves them Decimal).
_MIX_AMOUNTS = tuple(c.name for c in mixes.columns if isinstance(c.type, Amount))


def _typed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its timestamp strings parsed (amounts are already ``int``)."""
    for name in _TIMESTAMPS:
        value = record.get(name)
        if value is not None:
            record[name] = datetime.fromisoformat(value)
    return record


async def read_mix_status(rt: Runtime, mix_id: str) -> dict[str, Any]:
    """The mix, its deposits and its payouts, read in one statement (see the module docstring).

    Returns:
        ``{"mix": {every mixes column}, "deposits": [...], "sends": [...]}``, the shape of
        :func:`mixhouse.mixer.mixes.get_mix` restricted to what the status shows: deposits
        with the columns of ``_DEPOSIT_COLUMNS`` plus ``refund`` (the deposit's refund send
        with the columns of ``_REFUND_COLUMNS``, or ``None``), sends of kind ``payout`` only with those of
        ``_PAYOUT_COLUMNS``, each list ordered by id. Amounts are ``int`` base units,
        timestamps aware datetimes.

    Raises:
        NotFound: no mix has this id.
        sqlalchemy.exc.DBAPIError: the database failed or stayed unreachable (see
            :func:`mixhouse.db.engine.read_first`).
    """
    row = await read_first(rt.engine, _STATUS, {"mix_id": mix_id})
    if row is None:
        raise NotFound("no mix with this id")
    return _status(dict(row._mapping))


async def fetch_mix_status(conn: psycopg.AsyncConnection[Any], mix_id: str) -> dict[str, Any]:
    """:func:`read_mix_status` on a psycopg connection in autocommit, as a prepared statement.

    Returns:
        The same dict as :func:`read_mix_status`, equal value for value.

    Raises:
        NotFound: no mix has this id.
        psycopg.Error: the database failed or the connection is dead (no retry here).
    """
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(STATUS_SQL, {**_STATUS_PARAMS, "mix_id": mix_id}, prepare=True)
    row = await cursor.fetchone()
    if row is None:
        raise NotFound("no mix with this id")
    for name in _MIX_AMOUNTS:
        if row[name] is not None:
            row[name] = int(row[name])
    return _status(row)


def _status(mix: dict[str, Any]) -> dict[str, Any]:
    """The shape :func:`read_mix_status` returns, from the statement's row as a dict."""
    deps = [_typed(d) for d in mix.pop("status_deposits")]
    payouts = mix.pop("status_payouts")
    refunds = {r["deposit_id"]: _typed(r) for r in mix.pop("status_refunds")}
    for dep in deps:
        dep["refund"] = refunds.get(dep["id"])
    return {"mix": mix, "deposits": deps, "sends": [_typed(p) for p in payouts]}
