"""Commits per second of audited units of work with N concurrent writers.

Each writer loops for ``--seconds``: one :func:`mixhouse.unit.unit` that updates its own row
(a stand-in for a state transition) and appends ``--entries`` audit entries, then commits. The
figure is committed units per second over all writers. If ``mixhouse.audit`` has a ``seal``
function, a sealer runs every ``--seal-every`` seconds meanwhile (as the worker's periodic task
does) and the chain is sealed and verified at the end, so the figure includes sealing.

It runs on a fresh database on ``MIXHOUSE_BENCH_DATABASE_URL`` (a maintenance DB URI of a
server we may create databases on) or on an embedded PostgreSQL.

Usage: ``python -m benchmarks.audit_commits [--writers 1 8 32] [--seconds 5] [--entries 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.audit import AuditEntry
from mixhouse.db.embedded import start_embedded
from mixhouse.db.engine import make_engine, with_database
from mixhouse.db.migrate import upgrade
from mixhouse.unit import unit


def _server_url() -> str:
    return os.environ.get("MIXHOUSE_BENCH_DATABASE_URL") or with_database(
        start_embedded(Path(tempfile.gettempdir()) / "mixhouse-bench-pg"), "postgres"
    )


async def _writer(engine: AsyncEngine, w: int, entries: int, until: float) -> int:
    commits = 0
    while time.monotonic() < until:
        async with unit(engine) as work:
            await work.conn.execute(
                text("UPDATE chain_cursors SET cursor = :c WHERE asset = :a"), {"c": str(commits), "a": f"w{w}"}
            )
            for k in range(entries):
                work.audit(
                    AuditEntry(
                        action="bench.step",
                        entity_type="mix",
                        entity_id=f"w{w}-{commits}",
                        asset="JOBCOIN",
                        amount=10**8 + k,
                        details={"writer": w, "k": k},
                    )
                )
        commits += 1
    return commits


async def _sealer(seal: Callable[..., Awaitable[int]], engine: AsyncEngine, every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await seal(engine, wait=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def _run(url: str, writers: int, seconds: float, entries: int, seal_every: float) -> dict[str, Any]:
    engine = make_engine(url, pool_size=writers + 2)
    seal = getattr(audit, "seal", None)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM chain_cursors"))
            for w in range(writers):
                await conn.execute(text("INSERT INTO chain_cursors (asset, cursor) VALUES (:a, '0')"), {"a": f"w{w}"})
        stop = asyncio.Event()
        sealer = None if seal is None else asyncio.create_task(_sealer(seal, engine, seal_every, stop))
        start = time.monotonic()
        counts = await asyncio.gather(*(_writer(engine, w, entries, start + seconds) for w in range(writers)))
        elapsed = time.monotonic() - start
        stop.set()
        backlog, catch_up = 0, 0.0
        if seal is not None and sealer is not None:
            await sealer
            # What the periodic sealer had not caught up with when the writers stopped.
            started = time.monotonic()
            backlog = await seal(engine)
            catch_up = time.monotonic() - started
        async with engine.connect() as conn:
            verified = await audit.verify(conn)
        return {
            "writers": writers,
            "commits": sum(counts),
            "per_second": sum(counts) / elapsed,
            "verified": verified,
            "backlog": backlog,
            "catch_up": catch_up,
        }
    finally:
        await engine.dispose()


def main() -> None:
    """Run the measurement for each writer count and print one line per run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--entries", type=int, default=1, help="audit entries per unit")
    parser.add_argument("--seal-every", type=float, default=1.0)
    args = parser.parse_args()
    server = _server_url()
    for writers in args.writers:
        name = f"mh_bench_audit_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = with_database(server, name)
            upgrade(url)
            result = asyncio.run(_run(url, writers, args.seconds, args.entries, args.seal_every))
            print(
                f"writers={result['writers']:3d} entries/unit={args.entries} commits={result['commits']:6d}"
                f" commits/s={result['per_second']:8.1f} verified={result['verified']}"
                f" unsealed_at_end={result['backlog']} final_seal={result['catch_up']:.3f}s"
            )
        finally:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
