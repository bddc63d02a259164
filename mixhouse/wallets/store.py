"""Data access of wallet sync: address history rows, balances, and the transactions listing.

Every function takes an ``AsyncConnection`` and never commits: the caller owns the
transaction (``async with engine.begin() as conn``).

Storage shapes:

* ``address_txs``: one row per ``(chain, address, txid, asset)``, shared by every wallet that
  imported the address. ``net`` is signed (base units of ``asset``), ``fee`` in the chain's
  base unit or NULL. ``inputs``/``outputs`` are JSON lists of legs
  ``{"index": int, "address": str | null, "amount": "<base units>", "asset": str}``.
* ``address_balances``: per ``(chain, address, asset)``, ``confirmed`` is the sum of ``net``
  over confirmed rows and ``unconfirmed`` the sum over unconfirmed ones (a delta to add to
  ``confirmed``, possibly negative).

Listing order: the *sort time* of a row is ``coalesce(block_time, first_seen_at)`` (an
unconfirmed transaction sorts at the moment it was first stored); ties are broken by ``id``.
Pages are cut with keyset conditions on ``(sort time, id)``, so rows inserted between two page
fetches never shift or repeat the rows of the original listing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import and_, delete, func, literal, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.db.tables import Amount, address_balances, address_txs, wallet_addresses
from mixhouse.errors import InvalidInput
from mixhouse.wallets.records import AddressTx, Direction, Leg

Sort = Literal["newest", "oldest"]

# Rows looked up per statement when upserting (keeps the IN list and parameters bounded).
_CHUNK = 1000

_TxKey = tuple[str, str, str, str]  # (chain, address, txid, asset)


# -- legs ------------------------------------------------------------------------------------


def leg_to_json(leg: Leg) -> dict[str, Any]:
    """``{"index", "address", "amount" (decimal string), "asset"}`` of ``leg``."""
    return {"index": leg.index, "address": leg.address, "amount": str(leg.amount), "asset": leg.asset}


def leg_from_json(data: Mapping[str, Any]) -> Leg:
    """The :class:`Leg` stored as ``data`` (see :func:`leg_to_json`)."""
    address = data.get("address")
    return Leg(
        index=int(data["index"]),
        address=None if address is None else str(address),
        amount=int(data["amount"]),
        asset=str(data["asset"]),
    )


def merge_legs(known: Sequence[Leg], new: Sequence[Leg]) -> tuple[Leg, ...]:
    """The union of two copies of a transaction's inputs (or outputs).

    Legs are identified by ``(index, address)``; a leg in both copies takes ``new``'s amount
    and asset. Nothing in ``known`` is ever dropped, so merging a partial copy (a source that
    only gives the legs touching the address) keeps every leg learned before.

    Returns:
        The merged legs ordered by ``index`` then ``address``.
    """
    by_key: dict[tuple[int, str | None], Leg] = {(leg.index, leg.address): leg for leg in known}
    for leg in new:
        by_key[(leg.index, leg.address)] = leg
    return tuple(sorted(by_key.values(), key=lambda leg: (leg.index, leg.address or "")))


def merge_txs(old: AddressTx, new: AddressTx) -> AddressTx:
    """Two copies of the same ``(chain, address, txid, asset)`` row merged into one.

    Legs are merged with :func:`merge_legs`; ``net`` is ``new``'s; ``fee`` is ``new``'s unless
    unknown there. Block fields are ``new``'s when ``new`` is confirmed (the transaction
    confirmed, or moved to another block after a reorg); an unconfirmed copy never
    un-confirms a stored row (that is :func:`mark_unconfirmed_above`'s job).
    """
    confirmed = new if new.block_height is not None else old
    return AddressTx(
        chain=new.chain,
        address=new.address,
        txid=new.txid,
        inputs=merge_legs(old.inputs, new.inputs),
        outputs=merge_legs(old.outputs, new.outputs),
        net=new.net,
        asset=new.asset,
        fee=new.fee if new.fee is not None else old.fee,
        block_height=confirmed.block_height,
        block_hash=confirmed.block_hash,
        block_time=confirmed.block_time,
        extra={**old.extra, **new.extra},
    )


def _tx_from_row(row: Mapping[str, Any]) -> AddressTx:
    return AddressTx(
        chain=row["chain"],
        address=row["address"],
        txid=row["txid"],
        inputs=tuple(leg_from_json(leg) for leg in row["inputs"]),
        outputs=tuple(leg_from_json(leg) for leg in row["outputs"]),
        net=int(row["net"]),
        asset=row["asset"],
        fee=None if row["fee"] is None else int(row["fee"]),
        block_height=row["block_height"],
        block_hash=row["block_hash"],
        block_time=row["block_time"],
    )


def _values(tx: AddressTx) -> dict[str, Any]:
    """The ``address_txs`` column values of ``tx`` (without ``id`` and ``first_seen_at``)."""
    return {
        "chain": tx.chain,
        "address": tx.address,
        "txid": tx.txid,
        "asset": tx.asset,
        "direction": tx.direction.value,
        "net": tx.net,
        "fee": tx.fee,
        "block_height": tx.block_height,
        "block_hash": tx.block_hash,
        "block_time": tx.block_time,
        "inputs": [leg_to_json(leg) for leg in tx.inputs],
        "outputs": [leg_to_json(leg) for leg in tx.outputs],
    }


def _key(tx: AddressTx) -> _TxKey:
    return (tx.chain, tx.address, tx.txid, tx.asset)


def _chunks(items: Sequence[_TxKey], size: int) -> Iterator[Sequence[_TxKey]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Keys travel as four parallel arrays joined with ``unnest``: PostgreSQL then probes the
# unique index ``uq_address_txs`` once per key. (A row-value ``IN`` list of four columns was
# planned as a scan of the ``(chain, ...)`` prefix plus a filter, which slowed every batch as
# the table grew: 880 tx/s on the mainnet-blocks benchmark.)
_LOCK_STORED = text(
    """
    SELECT t.* FROM address_txs AS t
    JOIN unnest(CAST(:chain AS text[]), CAST(:address AS text[]), CAST(:txid AS text[]), CAST(:asset AS text[]))
        AS k(chain, address, txid, asset)
        ON t.chain = k.chain AND t.address = k.address AND t.txid = k.txid AND t.asset = k.asset
    ORDER BY t.id
    FOR UPDATE OF t
    """
)

# New rows travel as one JSON document expanded by ``jsonb_to_recordset``: a single parameter
# whatever the batch size, serialised by the C ``json`` encoder. (Parallel ``jsonb[]`` arrays
# were slower: psycopg escapes every quote of every leg in Python.) Amounts are JSON strings of
# decimal digits, so wei and token amounts above 64 bits stay exact.
_INSERT_NEW = text(
    """
    INSERT INTO address_txs
        (chain, address, txid, asset, direction, net, fee, block_height, block_hash, block_time, inputs, outputs)
    SELECT chain, address, txid, asset, direction, net, fee, block_height, block_hash, block_time, inputs, outputs
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        chain text, address text, txid text, asset text, direction text, net numeric, fee numeric,
        block_height bigint, block_hash text, block_time timestamptz, inputs jsonb, outputs jsonb
    )
    ON CONFLICT ON CONSTRAINT uq_address_txs DO NOTHING
    RETURNING chain, address, txid, asset
    """
)


def _key_arrays(keys: Sequence[_TxKey]) -> dict[str, list[str]]:
    return {
        "chain": [k[0] for k in keys],
        "address": [k[1] for k in keys],
        "txid": [k[2] for k in keys],
        "asset": [k[3] for k in keys],
    }


def _rows_document(txs: Sequence[AddressTx]) -> str:
    """The JSON array of ``txs``' column values read by :data:`_INSERT_NEW`."""
    rows = []
    for tx in txs:
        values = _values(tx)
        values["net"] = str(tx.net)
        values["fee"] = None if tx.fee is None else str(tx.fee)
        values["block_time"] = None if tx.block_time is None else _aware(tx.block_time).isoformat()
        rows.append(values)
    return json.dumps(rows, separators=(",", ":"))


async def _lock_stored(conn: AsyncConnection, keys: Sequence[_TxKey]) -> list[dict[str, Any]]:
    """The stored rows of ``keys``, locked ``FOR UPDATE`` in ``id`` order (so two concurrent
    upserts of overlapping batches wait for each other instead of deadlocking)."""
    if not keys:
        return []
    return [dict(r._mapping) for r in (await conn.execute(_LOCK_STORED, _key_arrays(keys))).all()]


async def _merge_into_stored(
    conn: AsyncConnection, batch: Mapping[_TxKey, AddressTx], rows: Sequence[Mapping[str, Any]]
) -> int:
    """Merge ``batch[key]`` into each locked stored row; the number of rows that changed."""
    changed = 0
    for stored in rows:
        key = (stored["chain"], stored["address"], stored["txid"], stored["asset"])
        merged = merge_txs(_tx_from_row(stored), batch[key])
        values = _values(merged)
        if all(stored[name] == value for name, value in values.items()):
            continue
        await conn.execute(update(address_txs).where(address_txs.c.id == stored["id"]).values(**values))
        changed += 1
    return changed


async def upsert_address_txs(conn: AsyncConnection, txs: Sequence[AddressTx]) -> int:
    """Store history rows: insert new ones, merge into the ones already stored.

    Copies of the same ``(chain, address, txid, asset)`` (within ``txs`` or against the
    database) are merged with :func:`merge_txs`: legs are unioned by ``(index, address)`` so a
    partial copy never drops a known leg, and block fields follow the copy that says the
    transaction is confirmed (confirmation, or a move to another block after a reorg).
    ``direction`` is recomputed from the merged legs. Existing rows are locked (``FOR
    UPDATE``) while they are merged; rows inserted concurrently by another transaction are
    merged rather than duplicated. ``AddressTx.extra`` is not stored.

    Per chunk of keys: one statement inserts every row not stored yet (``ON CONFLICT DO
    NOTHING``), one finds and locks the stored copies of the others, which are then merged.

    Returns:
        The number of rows written: inserted plus existing rows that actually changed.
    """
    batch: dict[_TxKey, AddressTx] = {}
    for tx in txs:
        previous = batch.get(_key(tx))
        batch[_key(tx)] = tx if previous is None else merge_txs(previous, tx)
    written = 0
    for keys in _chunks(list(batch), _CHUNK):
        # Insert first: a sync mostly brings rows never seen, and ON CONFLICT DO NOTHING
        # settles races with concurrent syncs of the same address in the database.
        result = await conn.execute(_INSERT_NEW, {"rows": _rows_document([batch[k] for k in keys])})
        inserted = {(r.chain, r.address, r.txid, r.asset) for r in result.all()}
        written += len(inserted)
        known = [k for k in keys if k not in inserted]
        written += await _merge_into_stored(conn, batch, await _lock_stored(conn, known))
    return written


async def mark_unconfirmed_above(conn: AsyncConnection, chain: str, height: int) -> list[str]:
    """After a reorg: every ``chain`` row in a block above ``height`` goes back to unconfirmed.

    ``block_height``, ``block_hash`` and ``block_time`` become NULL (the rows re-confirm when
    the source reports them in the new blocks). Balances are not touched: call
    :func:`recompute_balance` for the returned addresses.

    Returns:
        The distinct addresses that had a row un-confirmed, sorted.
    """
    result = await conn.execute(
        update(address_txs)
        .where(address_txs.c.chain == chain, address_txs.c.block_height > height)
        .values(block_height=None, block_hash=None, block_time=None)
        .returning(address_txs.c.address)
    )
    return sorted({str(r.address) for r in result.all()})


async def recompute_balance(conn: AsyncConnection, chain: str, address: str) -> dict[str, tuple[int, int]]:
    """Recompute the ``address_balances`` rows of one address from its stored history.

    Per asset: ``confirmed`` = sum of ``net`` over rows with a block, ``unconfirmed`` = sum
    over rows without one (base units; both may be negative if history is incomplete).
    Balance rows of assets with no history left are deleted.

    Returns:
        ``{asset: (confirmed, unconfirmed)}``.
    """
    confirmed = address_txs.c.block_height.is_not(None)
    stmt = (
        select(
            address_txs.c.asset,
            func.coalesce(func.sum(address_txs.c.net).filter(confirmed), 0).label("confirmed"),
            func.coalesce(func.sum(address_txs.c.net).filter(~confirmed), 0).label("unconfirmed"),
        )
        .where(address_txs.c.chain == chain, address_txs.c.address == address)
        .group_by(address_txs.c.asset)
    )
    balances = {str(r.asset): (int(r.confirmed), int(r.unconfirmed)) for r in (await conn.execute(stmt)).all()}
    gone = delete(address_balances).where(address_balances.c.chain == chain, address_balances.c.address == address)
    if balances:
        gone = gone.where(address_balances.c.asset.not_in(list(balances)))
        insert = pg_insert(address_balances).values(
            [
                {"chain": chain, "address": address, "asset": asset, "confirmed": conf, "unconfirmed": unconf}
                for asset, (conf, unconf) in balances.items()
            ]
        )
        await conn.execute(
            insert.on_conflict_do_update(
                index_elements=[address_balances.c.chain, address_balances.c.address, address_balances.c.asset],
                set_={
                    "confirmed": insert.excluded.confirmed,
                    "unconfirmed": insert.excluded.unconfirmed,
                    "updated_at": func.now(),
                },
            )
        )
    await conn.execute(gone)
    return balances


# -- listing ---------------------------------------------------------------------------------


def encode_cursor(sort: Sort, sort_time: datetime, row_id: int) -> str:
    """The opaque cursor after the row ``(sort_time, row_id)``: base64url of JSON
    ``{"s": sort, "t": ISO-8601 time, "i": id}``, without padding."""
    raw = json.dumps({"s": sort, "t": sort_time.isoformat(), "i": row_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, sort: Sort) -> tuple[datetime, int]:
    """``(sort_time, id)`` of a cursor made by :func:`encode_cursor` for the same ``sort``.

    Raises:
        InvalidInput: the cursor is malformed, or was made for the other sort order.
    """
    malformed = "the cursor is malformed; pass next_cursor from the previous page unchanged"
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise InvalidInput(malformed) from exc
    if not isinstance(data, dict) or set(data) != {"s", "t", "i"}:
        raise InvalidInput(malformed)
    sort_name, moment_text, row_id = data["s"], data["t"], data["i"]
    if not isinstance(moment_text, str) or not isinstance(row_id, int) or isinstance(row_id, bool):
        raise InvalidInput(malformed)
    try:
        moment = datetime.fromisoformat(moment_text)
    except ValueError as exc:
        raise InvalidInput(malformed) from exc
    if moment.tzinfo is None or not 0 < row_id < 2**63:
        raise InvalidInput(malformed)
    if sort_name != sort:
        raise InvalidInput(f"the cursor was made for sort={sort_name!r}, not sort={sort!r}")
    return moment, row_id


def _aware(moment: datetime) -> datetime:
    """``moment`` with a time zone (naive times are taken as UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def list_txs(
    conn: AsyncConnection,
    wallet_id: int,
    *,
    cursor: str | None = None,
    limit: int = 50,
    since: datetime | None = None,
    until: datetime | None = None,
    direction: Direction | str | None = None,
    min_amount: int | None = None,
    max_amount: int | None = None,
    sort: Sort = "newest",
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the transactions of a wallet's addresses.

    Args:
        wallet_id: the wallet; its ``wallet_addresses`` select the ``address_txs`` rows.
        cursor: ``next_cursor`` of the previous page (same ``sort``), ``None`` for the first.
        limit: page size (the caller bounds it).
        since, until: sort time in ``[since, until)`` (naive times are UTC).
        direction: ``in``, ``out`` or ``self``.
        min_amount, max_amount: bounds (inclusive) on ``abs(net)``, base units.
        sort: ``newest`` (sort time descending, then id descending) or ``oldest``.

    Returns:
        ``(rows, next_cursor)``: rows are ``address_txs`` columns (legs still JSON, amounts
        int) plus ``sort_time`` and ``confirmations`` (0 unconfirmed; ``synced_height -
        block_height + 1`` when the address's sync height is known, else ``None``);
        ``next_cursor`` is ``None`` on the last page.

    Raises:
        InvalidInput: a malformed cursor, or one made for the other sort order.
    """
    sort_time = func.coalesce(address_txs.c.block_time, address_txs.c.first_seen_at)
    stmt = (
        select(address_txs, sort_time.label("sort_time"), wallet_addresses.c.synced_height)
        .join(
            wallet_addresses,
            and_(wallet_addresses.c.chain == address_txs.c.chain, wallet_addresses.c.address == address_txs.c.address),
        )
        .where(wallet_addresses.c.wallet_id == wallet_id)
    )
    if since is not None:
        stmt = stmt.where(sort_time >= _aware(since))
    if until is not None:
        stmt = stmt.where(sort_time < _aware(until))
    if direction is not None:
        stmt = stmt.where(address_txs.c.direction == Direction(direction).value)
    size = func.abs(address_txs.c.net, type_=Amount)
    if min_amount is not None:
        stmt = stmt.where(size >= literal(min_amount, Amount))
    if max_amount is not None:
        stmt = stmt.where(size <= literal(max_amount, Amount))
    position = tuple_(sort_time, address_txs.c.id)
    if cursor is not None:
        moment, row_id = decode_cursor(cursor, sort)
        after = tuple_(moment, row_id)
        stmt = stmt.where(position < after if sort == "newest" else position > after)
    if sort == "newest":
        stmt = stmt.order_by(sort_time.desc(), address_txs.c.id.desc())
    else:
        stmt = stmt.order_by(sort_time.asc(), address_txs.c.id.asc())
    rows = [dict(r._mapping) for r in (await conn.execute(stmt.limit(limit + 1))).all()]
    page = rows[:limit]
    for row in page:
        height, synced = row["block_height"], row.pop("synced_height")
        if height is None:
            row["confirmations"] = 0
        elif synced is not None and synced >= height:
            row["confirmations"] = synced - height + 1
        else:
            row["confirmations"] = None
    next_cursor = None
    if len(rows) > limit and page:
        next_cursor = encode_cursor(sort, page[-1]["sort_time"], int(page[-1]["id"]))
    return page, next_cursor
