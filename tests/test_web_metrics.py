"""``/metrics`` scraped after a real run (ledger, API, worker, PostgreSQL): every metric the
issue lists, with the values the database and the ledger hold; and the alert rules."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.worker import run_worker
from mixhouse.chains.jobcoin import ledger
from mixhouse.config import DEV_ADMIN_KEY
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.screening import store_list
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.web import wait_until, web_stack

COIN = 10**8
ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"
AUTH = {"Authorization": f"Bearer {DEV_ADMIN_KEY}"}

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def _parse(body: str) -> Samples:
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[s.name][frozenset(s.labels.items())] = s.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][frozenset(labels.items())]


async def test_metrics_after_a_run(database_url: str, engine: AsyncEngine) -> None:
    async with (
        web_stack(database_url, engine) as stack,
        background(run_worker(stack.rt, database_url, concurrency=4)),
        httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http,
    ):
        async with engine.begin() as conn:
            await store_list(conn, ["listed-sender"], "operator")
        await ledger.mint(engine, "sender", 30 * COIN)
        await ledger.mint(engine, "listed-sender", 5 * COIN)
        good = (
            await http.post(
                "/api/v1/mixes",
                json={
                    "asset": "JOBCOIN",
                    "withdrawal_addresses": ["m-a", "m-b"],
                    "delay_min_seconds": 0,
                    "delay_max_seconds": 1,
                },
            )
        ).json()
        bad = (await http.post("/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["m-c"]})).json()
        await http.post("/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["m-d"]})  # no deposit
        await ledger.transfer(engine, "sender", good["deposit_address"], 30 * COIN)
        await ledger.transfer(engine, "listed-sender", bad["deposit_address"], 5 * COIN)

        async def finished() -> bool:
            status = (await http.get(f"/api/v1/mixes/{good['id']}")).json()
            frozen = (await http.get(f"/api/v1/mixes/{bad['id']}")).json()
            return status["state"] == "completed" and [d["state"] for d in frozen["deposits"]] == ["frozen"]

        await wait_until(finished, within=90, what="the mix completes and the listed deposit is frozen")
        assert (await reconcile(stack.rt, Asset.JOBCOIN)).ok

        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        scraped = await http.get("/metrics", headers=AUTH)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        body = scraped.text
        samples = _parse(body)

    async with engine.connect() as conn:
        pool_balance, _ = await ledger.address_info(conn, "mixhouse-pool")
    assert good["id"] not in body  # a mix id never appears in the metrics
    assert bad["id"] not in body

    assert _value(samples, "mixhouse_mixes", asset="JOBCOIN", state="completed") == 1
    # The mix whose only deposit is frozen still awaits a (clean) deposit, as does the empty one.
    assert _value(samples, "mixhouse_mixes", asset="JOBCOIN", state="awaiting_deposit") == 2
    assert _value(samples, "mixhouse_deposits", asset="JOBCOIN", state="pooled") == 1
    assert _value(samples, "mixhouse_deposits", asset="JOBCOIN", state="frozen") == 1
    assert _value(samples, "mixhouse_deposits_frozen_total", asset="JOBCOIN") == 1
    confirmed = _value(samples, "mixhouse_payouts", asset="JOBCOIN", state="confirmed")
    assert confirmed >= 2
    assert frozenset({("asset", "JOBCOIN"), ("state", "scheduled")}) not in samples["mixhouse_payouts"]
    assert _value(samples, "mixhouse_payouts_failing", asset="JOBCOIN") == 0
    assert _value(samples, "mixhouse_payout_latency_seconds_gcount") == confirmed
    assert _value(samples, "mixhouse_payout_latency_seconds_bucket", le="+Inf") == confirmed
    # The books, the chain and the fee: all the pool holds is the fee of the pooled deposit.
    assert _value(samples, "mixhouse_pool_books_base_units", asset="JOBCOIN") == pool_balance > 0
    assert _value(samples, "mixhouse_pool_chain_balance_base_units", asset="JOBCOIN") == pool_balance
    assert _value(samples, "mixhouse_fees_earned_base_units", asset="JOBCOIN") == pool_balance
    assert _value(samples, "mixhouse_reconciliation_ok", asset="JOBCOIN") == 1
    assert _value(samples, "mixhouse_reconciliation_mismatch_base_units", asset="JOBCOIN") == 0
    assert 0 <= _value(samples, "mixhouse_reconciliation_age_seconds", asset="JOBCOIN") < 60
    assert _value(samples, "mixhouse_payouts_paused", asset="JOBCOIN") == 0
    assert _value(samples, "mixhouse_payouts_in_flight_base_units", asset="JOBCOIN") == 0
    assert _value(samples, "mixhouse_workers_alive") >= 1
    assert 0 <= _value(samples, "mixhouse_worker_heartbeat_age_seconds") < 30
    # Finished jobs are deleted by the worker: the queue's depth is what waits or runs.
    assert "# TYPE mixhouse_jobs gauge" in body
    assert sum(v for k, v in samples["mixhouse_jobs"].items() if dict(k)["status"] == "todo") >= 0
    assert _value(samples, "mixhouse_job_queue_oldest_age_seconds") >= 0
    assert 0 <= _value(samples, "mixhouse_scan_age_seconds", asset="JOBCOIN") < 60
    # The worker's scans read the ledger to its end every tick: none behind the tip.
    assert _value(samples, "mixhouse_scan_lag_blocks", asset="JOBCOIN") == 0
    assert _value(samples, "mixhouse_chain_tip_height", asset="JOBCOIN") >= 2  # the deposits at least
    assert "mixhouse_wallet_addresses" in body  # no wallet here: the family, without samples
    assert "mixhouse_wallet_sync_age_seconds" in body
    # Request latency by route template, never by path: the status route was read in the loop.
    routes = {dict(k)["route"] for k in samples["mixhouse_http_request_duration_seconds_count"]}
    assert {"/api/v1/mixes", "/api/v1/mixes/{mix_id}"} <= routes
    assert _value(samples, "mixhouse_metrics_scrape_seconds") > 0


def test_alert_rules_parse_and_use_only_exported_metrics() -> None:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "MixhouseReconciliationMismatch",
        "MixhousePayoutsPaused",
        "MixhouseScanLag",
        "MixhouseWorkerDown",
        "MixhouseJobQueueBacklog",
        "MixhouseFrozenDepositArrived",
    } <= names
    package = Path(__file__).resolve().parent.parent / "mixhouse"
    # The signers' gauges are drawn by mixhouse.keys.health, which /metrics calls.
    metrics_source = "".join((package / name).read_text(encoding="utf-8") for name in ("metrics.py", "keys/health.py"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["summary"]
            for word in rule["expr"].replace("(", " ").replace(")", " ").replace("[", " ").split():
                if word.startswith("mixhouse_"):
                    base = word.split("{")[0].removesuffix("_total").removesuffix("_bucket")
                    assert f'"{base}"' in metrics_source, f"{rule['alert']} uses {base}, which /metrics lacks"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed")
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
