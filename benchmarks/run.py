"""End-to-end mixing throughput and latency on the local Jobcoin ledger.

Measures, with zero payout delay, the release gate off (``MIXHOUSE_PRIVACY_GATE_K=1``) and a
payout round every second (``MIXHOUSE_PAYOUT_ROUND_SECONDS=1``):

* mixes per second and payouts per second: N mixes created, then funded at once (the burst, one
  ledger statement per 1,000), with W worker processes (``python -m mixhouse worker``), timed
  from the moment the first deposit is sent until every payout is confirmed;
* payout latency: for every payout, from its deposit's transfer on the ledger to its own (p50,
  p99), and per mix to its last payout;
* where the burst's time goes: per stage (seen by a scan, accepted, swept and pooled, first
  payout), the median step and when the burst's last deposit left it;
* deposit-to-first-payout latency of single mixes on an idle system, from the deposit's
  transfer and from its acceptance (confirmed and screened, from the audit log).

The workers scan on arrival: the local ledger's long poll wakes the scan job as a transfer
commits (the 1 s scan tick stays the fallback, the only path on the original Jobcoin API), and a
payout round runs as soon as sweeps pool deposits (the 1 s round tick stays the fallback). The
load average is printed: the machine's 2 cores are often shared.

It runs on a fresh database on ``MIXHOUSE_BENCH_DATABASE_URL`` (a maintenance DB URI of a
server we may create databases on) or on an embedded PostgreSQL.

Usage: ``python -m benchmarks.run [--mixes 200] [--workers 2] [--concurrency 8]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Text, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.build import build_runtime
from mixhouse.chains.jobcoin import ledger
from mixhouse.chains.jobcoin.ledger_app import ledger_server
from mixhouse.config import Settings
from mixhouse.db.embedded import start_embedded
from mixhouse.db.engine import make_engine, with_database
from mixhouse.db.migrate import upgrade
from mixhouse.db.tables import audit_log, deposits, ledger_transfers, sends
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.runtime import Runtime
from mixhouse.servers import free_port, running_server

COIN = 10**8


def _server_url() -> str:
    return os.environ.get("MIXHOUSE_BENCH_DATABASE_URL") or with_database(
        start_embedded(Path(tempfile.gettempdir()) / "mixhouse-bench-pg"), "postgres"
    )


def _load_average() -> str:
    """The machine's 1-minute load average (the benchmark shares its 2 cores), as text."""
    return f"{os.getloadavg()[0]:.2f}"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one_at_a_time(rt: Runtime, engine: AsyncEngine, *, n: int) -> tuple[list[float], list[float]]:
    """Latency on an idle system: one mix at a time, zero delay. Returns, per mix, seconds from
    the deposit's acceptance (confirmed and screened) and from its ledger transfer to the first
    payout on the ledger."""
    from_accept: list[float] = []
    from_ledger: list[float] = []
    for i in range(n):
        mix = await create_mix(rt, MixRequest("JOBCOIN", [f"l{i}-x", f"l{i}-y"], 0, 0))
        await ledger.transfer(engine, "bench-sender", mix["deposit_address"], 10 * COIN)
        while True:
            async with engine.connect() as conn:
                paid = (
                    await conn.execute(
                        select(func.min(ledger_transfers.c.created_at)).where(
                            ledger_transfers.c.to_address.in_([f"l{i}-x", f"l{i}-y"])
                        )
                    )
                ).scalar_one()
                if paid is not None:
                    sent = (
                        await conn.execute(
                            select(ledger_transfers.c.created_at).where(
                                ledger_transfers.c.to_address == mix["deposit_address"]
                            )
                        )
                    ).scalar_one()
                    accepted = (
                        await conn.execute(
                            select(audit_log.c.at)
                            .join(deposits, deposits.c.id.cast(Text) == audit_log.c.entity_id)
                            .where(audit_log.c.action == "deposit.accepted", deposits.c.mix_id == mix["id"])
                        )
                    ).scalar_one()
                    break
            await asyncio.sleep(0.01)
        from_accept.append((paid - accepted).total_seconds())
        from_ledger.append((paid - sent).total_seconds())
    return from_accept, from_ledger


def _print_stages(
    start: float,
    on_ledger: dict[int, float],
    audit_rows: Sequence[Any],
    first_payout: dict[int, float],
    payout_times: list[float],
) -> None:
    """Where the burst's time goes: per stage, the median time a deposit spent in it and when
    the burst's last deposit left it (seconds from the first deposit sent)."""
    at: dict[str, dict[int, float]] = {}
    for row in audit_rows:
        at.setdefault(row.action, {})[int(row.entity_id)] = row.at.timestamp()
    stages = [
        ("on ledger", on_ledger),
        ("seen by a scan", at.get("deposit.seen", {})),
        ("accepted (screened)", at.get("deposit.accepted", {})),
        ("swept and pooled", at.get("deposit.pooled", {})),
        ("first payout on ledger", first_payout),
    ]
    previous: dict[int, float] | None = None
    for name, times in stages:
        mine = {d: t for d, t in times.items() if d in on_ledger}
        if not mine:
            continue
        line = f"  {name:<24} last at {max(mine.values()) - start:6.2f} s"
        if previous is not None:
            steps = [t - previous[d] for d, t in mine.items() if d in previous]
            line += f", step p50 {statistics.median(steps):.2f} s, max {max(steps):.2f} s"
        print(line)
        previous = mine
    if payout_times:
        print(f"  {'last payout on ledger':<24} last at {max(payout_times) - start:6.2f} s")


async def bench(n_mixes: int, n_workers: int, concurrency: int, latency_mixes: int = 10) -> None:
    """Run the benchmark and print the figures."""
    server = _server_url()
    name = f"mh_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    upgrade(url)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    settings = Settings(database_url=url, jobcoin_api_url=api_url, evm_enabled=False)
    rt = build_runtime(settings, url)
    engine = make_engine(url, pool_size=20)
    workers: list[asyncio.subprocess.Process] = []
    try:
        async with running_server(ledger_server(engine, "127.0.0.1", port, log_level="warning")):
            await ledger.mint(engine, "bench-sender", (n_mixes + latency_mixes) * 10 * COIN)
            t0 = time.perf_counter()
            mixes = [
                await create_mix(rt, MixRequest("JOBCOIN", [f"b{i}-x", f"b{i}-y", f"b{i}-z"], 0, 0))
                for i in range(n_mixes)
            ]
            create_rate = n_mixes / (time.perf_counter() - t0)
            env = dict(os.environ)
            env.update(
                {
                    "MIXHOUSE_DATABASE_URL": url,
                    "MIXHOUSE_JOBCOIN_API_URL": api_url,
                    "MIXHOUSE_EVM_ENABLED": "false",
                    "MIXHOUSE_SCAN_INTERVAL_SECONDS": "1",
                    "MIXHOUSE_JOB_POLLING_INTERVAL_SECONDS": "0.2",
                    # The release gate off and a round every second: this measures the engine's
                    # throughput, not the privacy wait (benchmarks/privacy.py measures that).
                    "MIXHOUSE_PRIVACY_GATE_K": "1",
                    "MIXHOUSE_PAYOUT_ROUND_SECONDS": "1",
                }
            )
            workers = [
                await asyncio.create_subprocess_exec(
                    *[sys.executable, "-m", "mixhouse", "worker", "--concurrency", str(concurrency)],
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                for _ in range(n_workers)
            ]
            await asyncio.sleep(3)  # workers start (imports, migrations check)
            single = await _one_at_a_time(rt, engine, n=latency_mixes)
            load_before = _load_average()
            start = time.perf_counter()
            start_wall = time.time()
            # The burst lands at once (one ledger statement per 1,000), as many users paying
            # together would: sent one request at a time, the sending alone took 5 s for 200
            # on a busy machine and capped what the benchmark could measure.
            burst = [("bench-sender", m["deposit_address"], 10 * COIN) for m in mixes]
            for i in range(0, len(burst), 1000):
                assert all(await ledger.transfer_many(engine, burst[i : i + 1000]))
            deposit_rate = n_mixes / (time.perf_counter() - start)
            while True:
                async with engine.connect() as conn:
                    pending = (
                        await conn.execute(select(func.count()).select_from(sends).where(sends.c.state != "confirmed"))
                    ).scalar_one()
                    pooled = (
                        await conn.execute(
                            select(func.count()).select_from(deposits).where(deposits.c.state == "pooled")
                        )
                    ).scalar_one()
                if pooled == n_mixes + latency_mixes and pending == 0:
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
            load_after = _load_average()
            async with engine.connect() as conn:
                payouts = (
                    await conn.execute(select(func.count()).select_from(sends).where(sends.c.kind == "payout"))
                ).scalar_one()
                transfers = (await conn.execute(select(ledger_transfers))).all()
                accepted = (
                    await conn.execute(
                        select(audit_log.c.entity_id, audit_log.c.at).where(audit_log.c.action == "deposit.accepted")
                    )
                ).all()
                dep_rows = (await conn.execute(select(deposits.c.id, deposits.c.deposit_address))).all()
                stage_rows = (
                    await conn.execute(
                        select(audit_log.c.entity_id, audit_log.c.action, audit_log.c.at).where(
                            audit_log.c.action.in_(["deposit.seen", "deposit.accepted", "deposit.pooled"])
                        )
                    )
                ).all()
        by_deposit_address = {d.deposit_address: d.id for d in dep_rows}
        accepted_at = {int(a.entity_id): a.at for a in accepted}
        deposit_time: dict[str, float] = {}
        first_payout: dict[str, float] = {}
        bench_deposits = {m["deposit_address"] for m in mixes}
        owner = {f"b{i}-{s}": m["deposit_address"] for i, m in enumerate(mixes) for s in "xyz"}
        for t in transfers:
            ts = t.created_at.timestamp()
            if t.from_address == "bench-sender" and t.to_address in bench_deposits:
                deposit_time[t.to_address] = ts
            elif t.to_address in owner:
                key = owner[t.to_address]
                first_payout[key] = min(first_payout.get(key, ts), ts)
        # Every payout's latency: from its deposit's transfer on the ledger to its own.
        payout_latency = [
            t.created_at.timestamp() - deposit_time[owner[t.to_address]]
            for t in transfers
            if t.to_address in owner and owner[t.to_address] in deposit_time
        ]
        last_payout: dict[str, float] = {}
        for t in transfers:
            if t.to_address in owner:
                key = owner[t.to_address]
                last_payout[key] = max(last_payout.get(key, 0.0), t.created_at.timestamp())
        mix_done = [last_payout[a] - deposit_time[a] for a in deposit_time if a in last_payout]
        from_ledger = [first_payout[a] - deposit_time[a] for a in deposit_time]
        from_accept = [first_payout[a] - accepted_at[by_deposit_address[a]].timestamp() for a in deposit_time]
        _print_stages(
            start_wall,
            {by_deposit_address[a]: t for a, t in deposit_time.items()},
            stage_rows,
            {by_deposit_address[a]: t for a, t in first_payout.items()},
            [t.created_at.timestamp() for t in transfers if t.to_address in owner],
        )
        print(
            f"one mix at a time ({latency_mixes} mixes, idle system): confirmed deposit -> first payout on ledger "
            f"p50 {statistics.median(single[0]):.3f} s, max {max(single[0]):.3f} s; "
            f"deposit on ledger -> first payout p50 {statistics.median(single[1]):.2f} s "
            f"(the scan on arrival: no tick to wait for on the local ledger)"
        )
        print(
            f"mixes: {n_mixes}, payouts: {payouts}, workers: {n_workers} x concurrency {concurrency}, "
            f"load average before/after the burst: {load_before} / {load_after}"
        )
        print(f"mix creation (service layer, one client): {create_rate:.0f} mixes/s")
        print(f"deposits sent: {deposit_rate:.0f}/s")
        print(
            f"end to end (first deposit sent -> every payout confirmed): {elapsed:.2f} s -> "
            f"{n_mixes / elapsed:.1f} mixes/s, {payouts / elapsed:.1f} payouts/s"
        )
        print(
            "payout latency (its deposit on ledger -> the payout on ledger, every payout): "
            f"p50 {statistics.median(payout_latency):.2f} s, p99 {_percentile(payout_latency, 0.99):.2f} s, "
            f"max {max(payout_latency):.2f} s; a mix's last payout: p50 {statistics.median(mix_done):.2f} s, "
            f"p99 {_percentile(mix_done, 0.99):.2f} s"
        )
        print(
            "deposit on ledger -> first payout: "
            f"p50 {statistics.median(from_ledger):.2f} s, p95 {_percentile(from_ledger, 0.95):.2f} s, "
            f"min {min(from_ledger):.2f} s"
        )
        print(
            "deposit accepted -> first payout on ledger: "
            f"p50 {statistics.median(from_accept):.3f} s, p95 {_percentile(from_accept, 0.95):.3f} s, "
            f"min {min(from_accept):.3f} s"
        )
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            await proc.wait()
        await rt.aclose()
        await rt.engine.dispose()
        await engine.dispose()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(bench(args.mixes, args.workers, args.concurrency))


if __name__ == "__main__":
    main()
