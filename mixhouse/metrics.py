"""Prometheus metrics of ``mixhouse serve`` at ``GET /metrics`` (the text exposition format,
drawn by the official ``prometheus_client``).

Two kinds:

* **Read from PostgreSQL at scrape time** (:func:`collect_state`), so every API process shows
  the same figures whichever one Prometheus scrapes, and a restart loses nothing: mixes,
  deposits and payouts by state, the pools' books and last reconciliation, paused assets,
  procrastinate's job queue and workers, the chain scans' last progress and how many blocks
  each is behind its chain's tip (as of its last scan), wallet sync. Amounts
  are base units (satoshi, wei, jobcoin base unit), exposed as floats as the format demands
  (exact below 2**53 base units; these gauges are for graphs and alerts, never for accounting).
* **Counted in the process** (:class:`RequestMetrics`): API request latency by route template
  (``/api/v1/mixes/{mix_id}``, never the id itself), measured to the start of the response.

Ages (``*_age_seconds``) are measured on the database's clock and floored at 0: some rows are
stamped by the writing process's clock (worker heartbeats, scan cursors), which may run a few
milliseconds ahead of the server's.

The alert rules over these names ship in ``deploy/prometheus/alerts.yml``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mixhouse.api import RuntimeDep
from mixhouse.api.routes_admin import pool as pool_report
from mixhouse.keys.health import signer_metrics
from mixhouse.mixer.runtime import Runtime

# Buckets of the payout latency (due -> confirmed), seconds: payout rounds are seconds apart,
# an Ethereum confirmation depth is minutes, Bitcoin's an hour.
PAYOUT_LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
# The payout latency histogram covers payouts confirmed in this window (a gauge histogram).
PAYOUT_LATENCY_WINDOW_SECONDS = 24 * 3600
REQUEST_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Per-process API request latency: ``mixhouse_http_request_duration_seconds`` by method,
    route template and status, from the request to the start of its response (so a stream of
    server-sent events counts the time to its first byte, not its life)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.duration = Histogram(
            "mixhouse_http_request_duration_seconds",
            "API request latency to the start of the response, seconds, by route template.",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )


class RequestMetricsMiddleware:
    """ASGI middleware that observes every HTTP request into a :class:`RequestMetrics` (it
    never reads the body: the request guard's limits still apply first)."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request to its response start, labelled by the route template."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Set by the router once matched: the template, never the path with its ids.
                template = getattr(scope.get("route"), "path", None) or "unmatched"
                self.metrics.duration.labels(scope.get("method", "?"), template, str(message["status"])).observe(
                    time.perf_counter() - started
                )
            await send(message)

        await self.app(scope, receive, timed_send)


@dataclass(frozen=True, slots=True, eq=False)  # registered by identity
class _Snapshot:
    metrics: list[Metric]

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def _gauge(name: str, doc: str, labels: Sequence[str], rows: Iterable[tuple[Sequence[str], float]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


async def _rows(conn: AsyncConnection, sql: str, **params: Any) -> list[Any]:
    return list((await conn.execute(text(sql), params)).all())


async def collect_state(rt: Runtime) -> list[Metric]:
    """Every database-backed metric, read now (a handful of aggregate queries).

    Raises:
        sqlalchemy.exc.DBAPIError: the database is unreachable (the route answers 503).
    """
    s = rt.settings
    out: list[Metric] = []
    async with rt.engine.connect() as conn:
        rows = await _rows(conn, "SELECT asset, state, count(*) FROM mixes GROUP BY asset, state")
        out.append(_gauge("mixhouse_mixes", "Mixes by asset and state.", ["asset", "state"], _flat(rows)))
        rows = await _rows(conn, "SELECT asset, state, count(*) FROM deposits GROUP BY asset, state")
        out.append(_gauge("mixhouse_deposits", "Deposits by asset and state.", ["asset", "state"], _flat(rows)))
        frozen = CounterMetricFamily(
            "mixhouse_deposits_frozen",
            "Deposits frozen by sanctions screening, ever (frozen is final).",
            labels=["asset"],
        )
        for asset in sorted(a.value for a in rt.adapters):
            count = sum(int(r[2]) for r in rows if r[0] == asset and r[1] == "frozen")
            frozen.add_metric([asset], count)
        out.append(frozen)
        rows = await _rows(conn, "SELECT asset, state, count(*) FROM sends WHERE kind = 'payout' GROUP BY asset, state")
        out.append(
            _gauge(
                "mixhouse_payouts",
                "Payouts by asset and state (scheduled, signed, broadcast = sent, confirmed).",
                ["asset", "state"],
                _flat(rows),
            )
        )
        rows = await _rows(
            conn,
            "SELECT asset, count(*) FROM sends WHERE kind = 'payout' AND state <> 'confirmed' "
            "AND last_error IS NOT NULL GROUP BY asset",
        )
        failing = {str(r[0]): float(r[1]) for r in rows}
        out.append(
            _gauge(
                "mixhouse_payouts_failing",
                "Unconfirmed payouts whose last attempt failed (they are retried).",
                ["asset"],
                (([a.value], failing.get(a.value, 0.0)) for a in sorted(rt.adapters)),
            )
        )
        out.append(await _payout_latency(conn))
        out.extend(await _jobs(conn, s.worker_stalled_after_seconds))
        out.extend(await _scans(conn))
        # Consumers a reorg deeper than MIXHOUSE_REORG_MAX_DEPTH stopped (mixhouse.watch).
        stops = await _rows(conn, "SELECT chain, consumer FROM watch_stops ORDER BY chain, consumer")
        out.append(
            _gauge(
                "mixhouse_watch_stopped",
                "1 for each watcher (chain, consumer) stopped by a reorg deeper than the policy allows.",
                ["chain", "consumer"],
                (([str(r[0]), str(r[1])], 1.0) for r in stops),
            )
        )
        rows = await _rows(
            conn,
            "SELECT chain, status, count(*), greatest(extract(epoch FROM now() - min(last_synced_at)), 0) "
            "FROM wallet_addresses GROUP BY chain, status",
        )
        out.append(
            _gauge(
                "mixhouse_wallet_addresses",
                "Imported wallet addresses by chain and sync status.",
                ["chain", "status"],
                (([str(r[0]), str(r[1])], float(r[2])) for r in rows),
            )
        )
        lag: dict[str, float] = {}
        for r in rows:
            if r[3] is not None:
                lag[str(r[0])] = max(lag.get(str(r[0]), 0.0), float(r[3]))
        out.append(
            _gauge(
                "mixhouse_wallet_sync_age_seconds",
                "Seconds since the least recently synced address of a chain was synced.",
                ["chain"],
                (([c], v) for c, v in sorted(lag.items())),
            )
        )
        # The token pools' gas tanks (mixer/gas.py), as their last reconciliation read them.
        rows = await _rows(conn, "SELECT asset, balance_wei, send_cost_wei FROM gas_tanks ORDER BY asset")
        out.append(
            _gauge(
                "mixhouse_gas_tank_wei",
                "ETH (wei) of a token pool's address, which pays the token's gas, at its last reconciliation.",
                ["asset"],
                (([str(r[0])], float(r[1])) for r in rows),
            )
        )
        out.append(
            _gauge(
                "mixhouse_gas_send_cost_wei",
                "Mean wei of a token's recent gas top-ups (value plus fee): about one send's gas from the tank.",
                ["asset"],
                (([str(r[0])], float(r[2])) for r in rows if r[2] is not None),
            )
        )
    out.extend(await _pools(rt))
    # The key holders: a token that is slow, locked or gone (sends wait for it meanwhile).
    out.extend(await signer_metrics({a.value: s for a, s in rt.signers.items()}))
    return out


def _flat(rows: Iterable[Any]) -> Iterable[tuple[Sequence[str], float]]:
    return (([str(r[0]), str(r[1])], float(r[2])) for r in rows)


async def _payout_latency(conn: AsyncConnection) -> Metric:
    buckets = ", ".join(
        f"count(*) FILTER (WHERE extract(epoch FROM confirmed_at - due_at) <= {b})" for b in PAYOUT_LATENCY_BUCKETS
    )
    row = (
        await conn.execute(
            text(
                f"SELECT {buckets}, count(*), coalesce(sum(greatest(extract(epoch FROM confirmed_at - due_at), 0)), 0) "  # noqa: S608 - buckets are constants
                "FROM sends WHERE kind = 'payout' AND state = 'confirmed' "
                "AND confirmed_at > now() - make_interval(secs => :window)"
            ),
            {"window": PAYOUT_LATENCY_WINDOW_SECONDS},
        )
    ).one()
    counts = [int(v) for v in row[: len(PAYOUT_LATENCY_BUCKETS)]]
    family = GaugeHistogramMetricFamily(
        "mixhouse_payout_latency_seconds",
        "Payouts confirmed in the last 24 h by seconds from their due time to their confirmation.",
        labels=[],
    )
    family.add_metric(
        [],
        [(str(b), float(c)) for b, c in zip(PAYOUT_LATENCY_BUCKETS, counts, strict=True)] + [("+Inf", float(row[-2]))],
        gsum_value=float(row[-1]),
    )
    return family


async def _scans(conn: AsyncConnection) -> list[Metric]:
    """The chain scans: seconds since each advanced, and the heights its last scan stored with
    its cursor (blocks on a chain; transfer ids on Jobcoin, whose "height" is its highest
    transfer id). Heights are absent where the adapter cannot tell (a Jobcoin ledger without
    the history cursor, or a cursor stored before migration 0014)."""
    rows = await _rows(
        conn,
        "SELECT asset, greatest(extract(epoch FROM now() - updated_at), 0), tip_height, scanned_height "
        "FROM chain_cursors ORDER BY asset",
    )
    known = [r for r in rows if r[2] is not None and r[3] is not None]
    return [
        _gauge(
            "mixhouse_scan_age_seconds",
            "Seconds since the chain scan of an asset last advanced its cursor.",
            ["asset"],
            (([str(r[0])], float(r[1])) for r in rows),
        ),
        _gauge(
            "mixhouse_scan_lag_blocks",
            "How far the last scan of an asset was behind the chain's tip: blocks (Jobcoin: transfers).",
            ["asset"],
            # The scan never reads past the tip it saw; floored at 0 all the same.
            (([str(r[0])], float(max(int(r[2]) - int(r[3]), 0))) for r in known),
        ),
        _gauge(
            "mixhouse_chain_tip_height",
            "The chain's height as the last scan of an asset saw it (Jobcoin: its highest transfer id).",
            ["asset"],
            (([str(r[0])], float(r[2])) for r in known),
        ),
        _gauge(
            "mixhouse_scan_height",
            "The height the last scan of an asset read through (Jobcoin: a transfer id).",
            ["asset"],
            (([str(r[0])], float(r[3])) for r in known),
        ),
    ]


async def _jobs(conn: AsyncConnection, stalled_after: float) -> list[Metric]:
    rows = await _rows(conn, "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY status")
    jobs = _gauge(
        "mixhouse_jobs", "procrastinate jobs by status.", ["status"], (([str(r[0])], float(r[1])) for r in rows)
    )
    # A job waiting since it became due: scheduled_at, or its deferral when it has none.
    oldest = (
        await conn.execute(
            text(
                "SELECT coalesce(extract(epoch FROM now() - min(coalesce(j.scheduled_at, e.at))), 0) "
                "FROM procrastinate_jobs j LEFT JOIN LATERAL (SELECT min(at) AS at FROM procrastinate_events "
                "WHERE job_id = j.id AND type = 'deferred') e ON true "
                "WHERE j.status = 'todo' AND coalesce(j.scheduled_at, e.at) <= now()"
            )
        )
    ).scalar_one()
    age = _gauge(
        "mixhouse_job_queue_oldest_age_seconds",
        "Seconds the oldest due job has waited for a worker (0 when none waits).",
        [],
        [([], max(float(oldest), 0.0))],
    )
    heartbeat = (
        await conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE last_heartbeat > now() - make_interval(secs => :stalled)), "
                "greatest(extract(epoch FROM now() - max(last_heartbeat)), 0) FROM procrastinate_workers"
            ),
            {"stalled": stalled_after},
        )
    ).one()
    alive = _gauge(
        "mixhouse_workers_alive",
        "Workers whose heartbeat is younger than worker_stalled_after_seconds.",
        [],
        [([], float(heartbeat[0]))],
    )
    metrics = [jobs, age, alive]
    if heartbeat[1] is not None:
        metrics.append(
            _gauge(
                "mixhouse_worker_heartbeat_age_seconds",
                "Seconds since the freshest worker heartbeat.",
                [],
                [([], float(heartbeat[1]))],
            )
        )
    return metrics


async def _pools(rt: Runtime) -> list[Metric]:
    report = await pool_report(rt)
    books = GaugeMetricFamily("mixhouse_pool_books_base_units", "The pool's balance in the books.", labels=["asset"])
    chain = GaugeMetricFamily(
        "mixhouse_pool_chain_balance_base_units",
        "The pool's on-chain balance at the last reconciliation.",
        labels=["asset"],
    )
    expected = GaugeMetricFamily(
        "mixhouse_pool_expected_base_units", "The books at the last reconciliation.", labels=["asset"]
    )
    fees = GaugeMetricFamily("mixhouse_fees_earned_base_units", "Fees of pooled deposits.", labels=["asset"])
    scheduled = GaugeMetricFamily("mixhouse_payouts_scheduled_base_units", "Payouts not signed yet.", labels=["asset"])
    in_flight = GaugeMetricFamily(
        "mixhouse_payouts_in_flight_base_units", "Payouts signed or broadcast, not confirmed.", labels=["asset"]
    )
    ok = GaugeMetricFamily(
        "mixhouse_reconciliation_ok",
        "1 when the last reconciliation matched (absent before the first).",
        labels=["asset"],
    )
    mismatch = GaugeMetricFamily(
        "mixhouse_reconciliation_mismatch_base_units",
        "Chain minus books at the last reconciliation (0 when it matched).",
        labels=["asset"],
    )
    age = GaugeMetricFamily(
        "mixhouse_reconciliation_age_seconds", "Seconds since the last reconciliation.", labels=["asset"]
    )
    paused = GaugeMetricFamily(
        "mixhouse_payouts_paused", "1 while payouts are paused by a reconciliation mismatch.", labels=["asset"]
    )
    now = time.time()
    for p in report.pools:
        books.add_metric([p.asset], float(int(p.books)))
        fees.add_metric([p.asset], float(int(p.fees_earned)))
        scheduled.add_metric([p.asset], float(int(p.scheduled_payouts)))
        in_flight.add_metric([p.asset], float(int(p.in_flight_payouts)))
        paused.add_metric([p.asset], 1.0 if p.payouts_paused else 0.0)
        recon = p.reconciliation
        if recon is not None:
            chain.add_metric([p.asset], float(int(recon.actual)))
            expected.add_metric([p.asset], float(int(recon.expected)))
            ok.add_metric([p.asset], 1.0 if recon.ok else 0.0)
            mismatch.add_metric([p.asset], 0.0 if recon.ok else float(int(recon.actual) - int(recon.expected)))
            age.add_metric([p.asset], max(now - recon.checked_at.timestamp(), 0.0))
    return [books, chain, expected, fees, scheduled, in_flight, ok, mismatch, age, paused]


router = APIRouter(include_in_schema=False)


def _authorized(rt: Runtime, request: Request) -> bool:
    expected = rt.settings.admin_api_key.get_secret_value().encode()
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = request.headers.get("x-api-key") or (token if scheme.lower() == "bearer" else "")
    return bool(expected) and secrets.compare_digest(given.encode(), expected)


@router.get("/metrics")
async def metrics(rt: RuntimeDep, request: Request) -> Response:
    """The metrics in Prometheus' text format (0.0.4).

    Behind the operator's key (books and balances are private): ``Authorization: Bearer
    <MIXHOUSE_ADMIN_API_KEY>`` (Prometheus' ``authorization`` scrape setting) or ``X-API-Key``.

    Errors: 401 without the key; 503 while the database is unreachable.
    """
    if not _authorized(rt, request):
        raise HTTPException(
            status_code=401, detail="the operator's key is required", headers={"WWW-Authenticate": "Bearer"}
        )
    started = time.perf_counter()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await collect_state(rt)))
    body = generate_latest(registry)
    requests: RequestMetrics | None = getattr(request.app.state, "request_metrics", None)
    if requests is not None:
        body += generate_latest(requests.registry)
    took = GaugeMetricFamily("mixhouse_metrics_scrape_seconds", "Time to read the database metrics, seconds.")
    took.add_metric([], time.perf_counter() - started)
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Snapshot([took]))
    body += generate_latest(extra)
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
