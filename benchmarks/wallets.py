"""Wallet sync storage: history ingest rate and transactions-listing latency.

Two measurements, each on a fresh database (``MIXHOUSE_BENCH_DATABASE_URL``, a maintenance DB
URI of a server we may create databases on, or an embedded PostgreSQL):

* ingest: the real mainnet blocks of ``tests/data/bitcoin`` (heights 1..255, 277647, 574200,
  702861) are parsed and every transaction becomes one :class:`AddressTx` per address its
  outputs pay (with all the transaction's outputs as legs). Raw blocks carry no prevouts, so
  inputs are left out: outputs only, ``net`` = what the address received, fee unknown. The
  rows are stored with :func:`store.upsert_address_txs` in batches of 1000 (one database
  transaction each) and the rate is printed as rows and distinct transactions per second.
* listing: one wallet of 10 addresses with 100,000 synthetic rows (inserted through
  :func:`store.upsert_address_txs` in batches of 5000), then :func:`store.list_txs` timed 50
  times each for: the first page, a page in the middle (cursor at row 50,000), direction
  ``out``, a one-month time range in the middle, and direction + time range. p50/p95 in ms.

Usage: ``python -m benchmarks.wallets [--rows 100000] [--calls 50]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import func, select

from benchmarks.bitcoin_parse import load_blocks
from benchmarks.run import _percentile, _server_url
from mixhouse.chains.bitcoin.parse import decode_script_pubkey, parse_block
from mixhouse.db.engine import make_engine, with_database
from mixhouse.db.migrate import upgrade
from mixhouse.db.tables import address_txs, wallet_addresses
from mixhouse.wallets import store
from mixhouse.wallets.records import AddressTx, Leg
from mixhouse.wallets.service import create_user, create_wallet, import_addresses

INGEST_BATCH = 1000
BULK_BATCH = 5000


def _fresh_database(server: str) -> str:
    name = f"mh_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    upgrade(url)
    return url


def _drop_database(server: str, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def mainnet_rows() -> tuple[list[AddressTx], int, int]:
    """``(rows, blocks, transactions with an addressed output)`` from the test blocks."""
    rows: list[AddressTx] = []
    n_blocks = n_txs = 0
    for position, (label, raw) in enumerate(load_blocks([])):
        block = parse_block(raw)
        n_blocks += 1
        height = block.height if label[0] != "h" else int(label[1:])
        if height is None:
            height = position
        when = datetime.fromtimestamp(block.header.time, UTC)
        for tx in block.txs:
            legs = tuple(
                Leg(i, decode_script_pubkey(out.script_pubkey)[1], out.value, "BTC") for i, out in enumerate(tx.outputs)
            )
            received: dict[str, int] = {}
            for leg in legs:
                if leg.address is not None:
                    received[leg.address] = received.get(leg.address, 0) + leg.amount
            if received:
                n_txs += 1
            rows.extend(
                AddressTx("BTC", address, tx.txid, (), legs, amount, "BTC", None, height, block.hash, when)
                for address, amount in received.items()
            )
    return rows, n_blocks, n_txs


async def bench_ingest(server: str) -> None:
    t0 = time.perf_counter()
    rows, n_blocks, n_txs = mainnet_rows()
    prepared = time.perf_counter() - t0
    url = _fresh_database(server)
    engine = make_engine(url, pool_size=2)
    try:
        written = 0
        t0 = time.perf_counter()
        for start in range(0, len(rows), INGEST_BATCH):
            async with engine.begin() as conn:
                written += await store.upsert_address_txs(conn, rows[start : start + INGEST_BATCH])
        elapsed = time.perf_counter() - t0
        # Re-ingesting the same rows (a sync that re-reads known history): lookup + no-op merge.
        t0 = time.perf_counter()
        rewritten = 0
        for start in range(0, len(rows), INGEST_BATCH):
            async with engine.begin() as conn:
                rewritten += await store.upsert_address_txs(conn, rows[start : start + INGEST_BATCH])
        again = time.perf_counter() - t0
    finally:
        await engine.dispose()
        _drop_database(server, url)
    legs = sum(len(r.outputs) for r in rows)
    stored_legs = sum(len(r.outputs) for r in {r.txid: r for r in rows}.values())
    print(f"ingest: {n_blocks} mainnet blocks, {n_txs} transactions with an addressed output, {len(rows)} rows")
    print(
        f"  (outputs only: raw blocks carry no prevouts; {legs} output legs over the rows, {stored_legs} stored "
        f"once per transaction; parse+build {prepared:.2f} s)"
    )
    print(
        f"  first ingest, batches of {INGEST_BATCH}: {elapsed:.2f} s, {written} rows written -> "
        f"{len(rows) / elapsed:,.0f} rows/s, {n_txs / elapsed:,.0f} transactions/s"
    )
    print(
        f"  re-ingest of the same rows: {again:.2f} s, {rewritten} rows changed -> "
        f"{len(rows) / again:,.0f} rows/s, {n_txs / again:,.0f} transactions/s"
    )


def synthetic_rows(addresses: list[str], total: int, rng: random.Random) -> list[AddressTx]:
    """``total`` confirmed rows spread over ``addresses``, one block every 10 minutes from 2020."""
    epoch = datetime(2020, 1, 1, tzinfo=UTC)
    rows: list[AddressTx] = []
    for n in range(total):
        address = addresses[n % len(addresses)]
        height = 600_000 + n // 3
        amount = rng.randint(1_000, 10**8)
        other = Leg(0, f"bcrt1qexternal{n:012d}", amount, "BTC")
        mine = Leg(0, address, amount, "BTC")
        outgoing = rng.random() < 0.3
        inputs, outputs = ((mine,), (other,)) if outgoing else ((other,), (mine,))
        rows.append(
            AddressTx(
                "BTC",
                address,
                f"{n:064x}",
                inputs,
                outputs,
                -amount - 200 if outgoing else amount,
                "BTC",
                200,
                height,
                f"{height:064x}",
                epoch + timedelta(minutes=10 * (n // 3)),
            )
        )
    return rows


async def _time_calls(n: int, call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    await call()  # warm-up
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    return _percentile(samples, 0.5), _percentile(samples, 0.95)


async def bench_listing(server: str, n_rows: int, n_calls: int) -> None:
    url = _fresh_database(server)
    engine = make_engine(url, pool_size=2)
    try:
        user = await create_user(engine, "bench")
        wallet_id = int((await create_wallet(engine, user.id, "big"))["id"])
        from mixhouse.keys.bip84 import Bip84Keyring  # noqa: PLC0415
        from mixhouse.wallets.fixtures import FIXTURE_MNEMONIC  # noqa: PLC0415

        keyring = Bip84Keyring(FIXTURE_MNEMONIC, "regtest")
        addresses = [keyring.address(0, i) for i in range(10)]
        await import_addresses(engine, wallet_id, "BTC", addresses, bitcoin_network="regtest")
        rows = synthetic_rows(addresses, n_rows, random.Random(1))
        t0 = time.perf_counter()
        for start in range(0, len(rows), BULK_BATCH):
            async with engine.begin() as conn:
                await store.upsert_address_txs(conn, rows[start : start + BULK_BATCH])
        loaded = time.perf_counter() - t0
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE address_txs")
            await conn.exec_driver_sql("ANALYZE wallet_addresses")
            for address in addresses:
                await store.recompute_balance(conn, "BTC", address)
        times = [r.block_time for r in rows if r.block_time is not None]
        middle = times[len(times) // 2]
        since, until = middle, middle + timedelta(days=30)
        sort_time = func.coalesce(address_txs.c.block_time, address_txs.c.first_seen_at)
        async with engine.connect() as conn:
            mid = (
                await conn.execute(
                    select(sort_time.label("moment"), address_txs.c.id)
                    .join(
                        wallet_addresses,
                        (wallet_addresses.c.chain == address_txs.c.chain)
                        & (wallet_addresses.c.address == address_txs.c.address),
                    )
                    .where(wallet_addresses.c.wallet_id == wallet_id)
                    .order_by(sort_time.desc(), address_txs.c.id.desc())
                    .offset(n_rows // 2)
                    .limit(1)
                )
            ).one()
            cursor = store.encode_cursor("newest", mid.moment, int(mid.id))
            cases: list[tuple[str, dict[str, Any]]] = [
                ("first page", {}),
                (f"middle page (cursor at row {n_rows // 2:,})", {"cursor": cursor}),
                ("direction=out", {"direction": "out"}),
                ("30-day time range", {"since": since, "until": until}),
                ("direction=in + 30-day range", {"direction": "in", "since": since, "until": until}),
                ("oldest first", {"sort": "oldest"}),
            ]
            print(f"listing: one wallet, {len(addresses)} addresses, {n_rows:,} rows (loaded in {loaded:.1f} s)")
            for label, kwargs in cases:
                page, _ = await store.list_txs(conn, wallet_id, limit=50, **kwargs)
                assert len(page) == 50, label

                async def call(kw: dict[str, Any] = kwargs) -> None:
                    await store.list_txs(conn, wallet_id, limit=50, **kw)

                p50, p95 = await _time_calls(n_calls, call)
                print(f"  {label:<40} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms   ({n_calls} calls, limit 50)")
    finally:
        await engine.dispose()
        _drop_database(server, url)


async def main(n_rows: int, n_calls: int) -> None:
    server = _server_url()
    await bench_ingest(server)
    await bench_listing(server, n_rows, n_calls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.calls))
