"""Privacy benchmark: Mixhouse's own chain-analysis attack against what the real engine pays out.

Two parts:

* ``engine`` (default): simulated populations (issue 13's realistic one, a quiet period, a
  burst, all-equal deposits) are mixed by the real engine — API service layer, two
  ``mixhouse worker`` processes, payout rounds, the release gate — on the local Jobcoin ledger.
  The attacker then reads only the ledger's public ``GET /api/transactions`` and the documented
  rules (pool address, fee range, delay window, maximum wait, round length) and runs every attack
  of ``mixhouse.mixer.privacy``; the figures are scored against the ground truth (which deposit
  paid which withdrawal address). Time is compressed by ``--speed`` (default 5: 300 s of
  arrivals take 60 s, a 1-60 s window becomes 1-12 s, 10 s rounds 2 s); every time the attacker
  sees is compressed alike, so the attacks see the same structure. Each mix's maximum wait is
  its delay_max plus ``--extra-wait`` (default 10 minutes at the issue's scale, against 6 hours
  in production): shorter, the deposits at the end of the 5 minutes of arrivals have no later
  deposit to hide among, an artefact of a population that stops.
* ``gate-cost``: what the release gate's ``k`` costs in waiting at 10, 100 and 1,000 deposits
  an hour (a pure simulation over the real planner and the gate's own measure: hours of traffic
  cannot be run for real here).

Usage::

    python -m benchmarks.privacy [--scenarios realistic,quiet,burst,all-equal] [--k 5] [--speed 5]
    python -m benchmarks.privacy gate-cost [--k 2,5,10,20]

The engine part runs on ``MIXHOUSE_BENCH_DATABASE_URL`` (a server we may create databases on)
or an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import select

from mixhouse.app.build import build_runtime
from mixhouse.chains.jobcoin import ledger
from mixhouse.chains.jobcoin.ledger_app import ledger_server
from mixhouse.config import Settings
from mixhouse.db.embedded import start_embedded
from mixhouse.db.engine import make_engine, with_database
from mixhouse.db.migrate import upgrade
from mixhouse.db.tables import deposits, sends
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.planner import plan_payouts
from mixhouse.mixer.privacy.analyzer import AddressFinding, analyze
from mixhouse.mixer.privacy.population import Population, SimUser, all_equal, burst, deposit_amount, quiet, realistic
from mixhouse.mixer.privacy.records import PublicDeposit, PublicTransfer, PublicView, view_from_transfers
from mixhouse.mixer.privacy.rules import DenominatedRules
from mixhouse.mixer.privacy.score import percentile, release_set, score
from mixhouse.mixer.privacy.timing import TimingRules
from mixhouse.money import Asset, asset_info, parse_amount
from mixhouse.servers import free_port, running_server

DUST = asset_info(Asset.JOBCOIN).dust
SCENARIOS = {"realistic": realistic, "quiet": quiet, "burst": burst, "all-equal": all_equal}
# The attacker's documented cap on withdrawal addresses per mix: the population uses 1-5, and an
# exact group search up to 10 is infeasible at this density (see mixhouse.mixer.privacy.amounts).
ATTACK_MAX_ADDRESSES = 5


def _bench_server() -> str:
    url = os.environ.get("MIXHOUSE_BENCH_DATABASE_URL")
    if url:
        return url
    return with_database(start_embedded(Path(tempfile.gettempdir()) / "mixhouse-bench-pg"), "postgres")


def _scaled(users: Sequence[SimUser], speed: float) -> list[SimUser]:
    """The population with arrivals and delay windows divided by ``speed`` (at least 1 s min)."""
    return [
        SimUser(
            u.source,
            u.deposit_address,
            u.withdrawal_addresses,
            u.amount,
            u.arrives_at / speed,
            max(1, round(u.delay_min_seconds / speed)) if u.delay_min_seconds else 0,
            max(1, round(u.delay_max_seconds / speed)),
        )
        for u in users
    ]


async def _public_ledger(api_url: str) -> list[PublicTransfer]:
    """What anyone can read: the ledger's whole public history, as third-party clients read it."""
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.get(f"{api_url}/transactions")
        response.raise_for_status()
        rows = response.json()
    out = []
    for i, row in enumerate(rows):
        if not row.get("fromAddress"):
            continue  # a mint: coins created for the simulated users
        at = datetime.fromisoformat(row["timestamp"]).timestamp()
        amount = parse_amount(str(row["amount"]), 8)
        out.append(PublicTransfer(row["fromAddress"], row["toAddress"], amount, at, ref=f"#{i}"))
    return out


async def run_scenario(
    population: Population,
    *,
    k: int,
    speed: float,
    workers: int,
    seed: int,
    keep_db: bool = False,
    show_linked: bool = False,
    extra_wait_seconds: float = 600.0,
) -> None:
    """Mix ``population`` with the real engine, attack the public ledger, print the figures.

    ``extra_wait_seconds`` (issue time scale, compressed by ``speed`` like the rest) is the gate's
    ``privacy_max_extra_wait_seconds``: each mix's maximum wait is its delay_max plus it."""
    users = _scaled(population.users, speed)
    server = _bench_server()
    name = f"mh_privacy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    upgrade(url)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    round_seconds = max(1, round(10 / speed))
    extra_wait = max(1, round(extra_wait_seconds / speed))
    # The same settings as the workers': mixes are created with this maximum wait.
    settings = Settings(
        database_url=url,
        jobcoin_api_url=api_url,
        evm_enabled=False,
        payout_round_seconds=round_seconds,
        privacy_gate_k=k,
        privacy_max_extra_wait_seconds=extra_wait,
    )
    rt = build_runtime(settings, url)
    rt.rng = random.Random(seed)  # reproducible; production uses SystemRandom
    engine = make_engine(url, pool_size=10)
    procs: list[asyncio.subprocess.Process] = []
    env = dict(os.environ)
    env.update(
        {
            "MIXHOUSE_DATABASE_URL": url,
            "MIXHOUSE_JOBCOIN_API_URL": api_url,
            "MIXHOUSE_EVM_ENABLED": "false",
            "MIXHOUSE_SCAN_INTERVAL_SECONDS": "1",
            "MIXHOUSE_JOB_POLLING_INTERVAL_SECONDS": "0.2",
            "MIXHOUSE_PAYOUT_ROUND_SECONDS": str(round_seconds),
            "MIXHOUSE_PRIVACY_GATE_K": str(k),
            "MIXHOUSE_PRIVACY_MAX_EXTRA_WAIT_SECONDS": str(extra_wait),
        }
    )
    started = time.perf_counter()
    try:
        async with running_server(ledger_server(engine, "127.0.0.1", port, log_level="warning")):
            procs = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "mixhouse",
                    "worker",
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                for _ in range(workers)
            ]
            deposit_of: dict[str, str] = {}
            for u in users:
                await ledger.mint(engine, u.source, u.amount)
                mix = await create_mix(
                    rt, MixRequest("JOBCOIN", list(u.withdrawal_addresses), u.delay_min_seconds, u.delay_max_seconds)
                )
                deposit_of[u.source] = mix["deposit_address"]
            t0 = time.perf_counter()
            for u in users:
                await asyncio.sleep(max(0.0, u.arrives_at - (time.perf_counter() - t0)))
                await ledger.transfer(engine, u.source, deposit_of[u.source], u.amount)
            deadline = time.perf_counter() + 600
            while time.perf_counter() < deadline:
                async with engine.connect() as conn:
                    states = (await conn.execute(select(deposits.c.state))).scalars().all()
                    open_sends = (
                        (await conn.execute(select(sends.c.id).where(sends.c.state != "confirmed"))).scalars().all()
                    )
                if len(states) == len(users) and all(s == "pooled" for s in states) and not open_sends:
                    break
                await asyncio.sleep(0.5)
            else:
                print(f"  {population.name}: not every payout confirmed within 600 s; analysing what left")
            transfers = await _public_ledger(api_url)
            async with engine.connect() as conn:
                gate = (
                    await conn.execute(select(deposits.c.anonymity_set, deposits.c.pooled_at, deposits.c.released_at))
                ).all()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await proc.wait()
        await rt.aclose()
        await rt.engine.dispose()
        await engine.dispose()
        if keep_db:
            print(f"  kept database {name}")
        else:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    mixed_in = time.perf_counter() - started
    # Ground truth: each withdrawal address -> the ref of its user's deposit transfer.
    deposit_ref = {t.from_address: t.ref or "" for t in transfers if t.from_address in deposit_of}
    truth = {w: deposit_ref[u.source] for u in users for w in u.withdrawal_addresses if u.source in deposit_ref}
    view = view_from_transfers(transfers, rt.adapter("JOBCOIN").pool_address)
    rules = DenominatedRules(settings.fee_min_bps, settings.fee_max_bps, min_payout=DUST)
    max_wait = max(u.delay_max_seconds for u in users) + extra_wait
    timing = TimingRules(
        delay_min_seconds=min(u.delay_min_seconds for u in users),
        # The documented maximum wait counts from the deposit; a few seconds of slack for the
        # scan and the sweep make the attacker's window a superset of the engine's promise.
        max_wait_seconds=max_wait + 5,
        max_addresses=ATTACK_MAX_ADDRESSES,
        round_seconds=round_seconds,
        gate_k=k,
    )
    # Does the engine keep its documented promise? (An attacker would notice if it did not.)
    deposit_at = {d.ref: d.at for d in view.deposits}
    lateness = [p.at - deposit_at[truth[p.to_address]] - max_wait for p in view.payouts if p.to_address in truth]
    late = sum(1 for x in lateness if x > 0)
    t1 = time.perf_counter()
    report = analyze(view, rules, timing)
    analysed_in = time.perf_counter() - t1
    result = score(report, truth)
    waits = sorted((r.released_at - r.pooled_at).total_seconds() * speed for r in gate if r.released_at is not None)
    sets = [int(r.anonymity_set) for r in gate if r.anonymity_set is not None]
    print(
        f"\n== {population.name}: {len(users)} users, {len(truth)} withdrawal addresses, {len(view.payouts)} payouts "
        f"(engine run {mixed_in:.0f} s, analysis {analysed_in:.1f} s) =="
    )
    print(
        f"  gate k={k}: released {len(waits)} deposits; wait p50 {_pct(waits, 0.5):.0f} s, "
        f"p90 {_pct(waits, 0.9):.0f} s (issue time scale); anonymity set at release p10/p50/p90 "
        f"{_ipct(sets, 0.1)}/{_ipct(sets, 0.5)}/{_ipct(sets, 0.9)}; "
        f"{sum(1 for s in sets if s < k)} released by the maximum wait; "
        f"{late} payouts later than the documented maximum wait (latest by {max(lateness, default=0):.1f} s)"
    )
    print(f"  {'attack':<26} {'linked %':>9} {'precision %':>12} {'set p10/p50/p90':>17}")
    for attack_name, s in result.attacks.items():
        print(
            f"  {attack_name:<26} {s.linked_pct:>9.1f} {s.precision_pct:>12.1f} "
            f"{f'{s.set_p10}/{s.set_p50}/{s.set_p90}':>17}"
        )
    best = result.attacks[result.best]
    print(f"  best attack: {result.best}: {best.linked_pct:.1f}% linked at {best.precision_pct:.1f}% precision")
    if show_linked:
        _print_linked(report.attacks[result.best].findings, truth, users, view)


def _print_linked(
    findings: Mapping[str, AddressFinding],
    truth: Mapping[str, str],
    users: Sequence[SimUser],
    view: PublicView,
) -> None:
    """The addresses the best attack linked rightly: their deposit, its mix's size and payouts."""
    user_of = {w: u for u in users for w in u.withdrawal_addresses}
    at_of = {d.ref: d.at for d in view.deposits}
    for address, ref in sorted(truth.items()):
        finding = findings.get(address)
        if finding is None or finding.claimed != ref:
            continue
        u = user_of[address]
        paid = sorted(p.at - at_of[ref] for p in view.payouts if p.to_address == address)
        total = sum(p.amount for p in view.payouts if p.to_address == address)
        print(
            f"    linked: deposit {u.amount / 10**8:.8f} at {u.arrives_at:.0f} s, {len(u.withdrawal_addresses)} "
            f"address(es); this one got {total / 10**8:.8f} in {len(paid)} piece(s) "
            f"{paid[0]:.0f}-{paid[-1]:.0f} s after the deposit"
        )


def _pct(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _ipct(values: Sequence[int], q: float) -> int:
    return percentile(sorted(values), q) if values else 0


def gate_cost(ks: Sequence[int], *, seed: int = 5, hours: float = 48.0) -> None:
    """Print what the gate's ``k`` costs in waiting at 10, 100 and 1,000 deposits an hour.

    Deposits arrive as a Poisson process with issue 13's amounts; each is planned by the real
    planner (one withdrawal address: the gate's measure is the mix's whole total either way).
    A deposit's payouts leave at the first moment its :func:`release_set` reaches ``k``, or at
    its fallback moment, drawn over its window (the default maximum wait: delay_max 6 h + 6 h;
    see ``mixer/gate.py``), with the default delay window 60 s - 6 h.
    """
    settings = Settings()
    rules = DenominatedRules(settings.fee_min_bps, settings.fee_max_bps, min_payout=DUST)
    delay_min = settings.default_delay_min_seconds
    max_wait = settings.default_delay_max_seconds + settings.privacy_max_extra_wait_seconds
    timing = TimingRules(delay_min_seconds=delay_min, max_wait_seconds=max_wait)
    print(
        f"\n== gate cost: waiting until k deposits could have paid a mix "
        f"(delay min {delay_min} s, maximum wait {max_wait / 3600:.0f} h) =="
    )
    print(f"  {'deposits/h':>10} {'k':>4} {'wait p50':>10} {'wait p90':>10} {'fallback':>13}")
    for rate in (10, 100, 1000):
        rng = random.Random(seed)
        arrivals: list[PublicDeposit] = []
        t = 0.0
        while t < hours * 3600:
            t += rng.expovariate(rate / 3600)
            arrivals.append(PublicDeposit(f"d{len(arrivals)}", "", deposit_amount(rng), t))
        by_amount = sorted(arrivals, key=lambda d: d.amount)
        amounts = [d.amount for d in by_amount]
        # Measure deposits of the middle of the span (full windows on both sides).
        sample = [d for d in arrivals if max_wait <= d.at <= hours * 3600 - 2 * max_wait]
        sample = rng.sample(sample, min(300, len(sample)))
        for k in ks:
            waits: list[float] = []
            capped = 0
            for d in sample:
                plan = plan_payouts(
                    pooled=d.amount,
                    fee_min_bps=settings.fee_min_bps,
                    fee_max_bps=settings.fee_max_bps,
                    withdrawal_addresses=["w"],
                    network_fee_per_payout=0,
                    min_payout=DUST,
                    delay_min_seconds=delay_min,
                    delay_max_seconds=delay_min,
                    rng=rng,
                )
                total = plan.payout_total
                # Only deposits of about the same size can pay this total: a 4% band is ample.
                lo = bisect.bisect_left(amounts, total)
                hi = bisect.bisect_right(amounts, total * 105 // 100)
                band = sorted(x.at for x in by_amount[lo:hi])
                release = None
                # The gate's secret fallback moment, drawn over the window.
                fallback = rng.uniform(delay_min, max_wait)
                # The count changes only when a band deposit enters or leaves the window.
                moments = sorted({d.at + delay_min} | {a + delay_min for a in band if a + delay_min > d.at})
                for moment in moments:
                    if moment - d.at > fallback:
                        break
                    size = release_set(
                        total,
                        first_payout_at=moment,
                        last_payout_at=moment,
                        recent_deposits=[x for x in by_amount[lo:hi] if moment - max_wait <= x.at <= moment],
                        rules=rules,
                        timing=timing,
                    )
                    if size >= k:
                        release = moment
                        break
                if release is None:
                    capped += 1
                    release = d.at + fallback
                waits.append(release - d.at)
            waits.sort()
            print(
                f"  {rate:>10} {k:>4} {_fmt(_pct(waits, 0.5)):>10} {_fmt(_pct(waits, 0.9)):>10} "
                f"{100 * capped / len(waits):>12.0f}%"
            )


def _fmt(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", default="engine", choices=["engine", "gate-cost"])
    parser.add_argument("--scenarios", default="realistic,quiet,burst,all-equal")
    parser.add_argument("--k", default=None, help="gate k (engine: one value; gate-cost: a comma list)")
    parser.add_argument("--speed", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--keep-db", action="store_true", help="keep the database for inspection")
    parser.add_argument("--show-linked", action="store_true", help="list the addresses the best attack linked")
    parser.add_argument(
        "--extra-wait",
        type=float,
        default=600.0,
        help="the gate's maximum extra wait, seconds at the issue's time scale (default 600)",
    )
    args = parser.parse_args()
    if args.part == "gate-cost":
        gate_cost([int(x) for x in (args.k or "2,5,10,20").split(",")])
        return
    k = int(args.k) if args.k else Settings().privacy_gate_k
    for scenario in args.scenarios.split(","):
        population = SCENARIOS[scenario](args.seed)
        asyncio.run(
            run_scenario(
                population,
                k=k,
                speed=args.speed,
                workers=args.workers,
                seed=args.seed,
                keep_db=args.keep_db,
                show_linked=args.show_linked,
                extra_wait_seconds=args.extra_wait,
            )
        )


if __name__ == "__main__":
    main()
