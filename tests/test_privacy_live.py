"""The privacy report of the live pool (``mixhouse.mixer.privacy.live``), its admin endpoint and
its CLI command, on a real PostgreSQL and the local Jobcoin ledger.

The pool is made by the real engine (create_mix, scan_asset, the sweeps, payout rounds with the
gate off); the report's figures are checked against a direct ``analyze`` of a view the test
builds itself, and that view against the public ledger.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from mixhouse.api.app import create_app
from mixhouse.app.build import build_runtime
from mixhouse.chains.jobcoin import ledger
from mixhouse.cli import app as cli_app
from mixhouse.config import Settings
from mixhouse.db.tables import deposits, mixes, sends
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.privacy.analyzer import ATTACKS, analyze
from mixhouse.mixer.privacy.live import MAX_ANALYSED_ADDRESSES, privacy_report
from mixhouse.mixer.privacy.records import PublicDeposit, PublicPayout, PublicView
from mixhouse.mixer.privacy.rules import DenominatedRules
from mixhouse.mixer.privacy.score import score
from mixhouse.mixer.privacy.timing import TimingRules
from mixhouse.mixer.rounds import run_round
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.sends import execute_send
from mixhouse.money import Asset, asset_info
from tests.e2e import fast_settings, local_ledger, run_mixhouse
from tests.test_api import assert_problem

ADMIN_KEY = "test-admin-key-privacy-0123"
COIN = 10**8
# (withdrawal addresses, deposit in base units): round and odd amounts, 1 to 3 addresses.
USERS = [
    (["alice-1", "alice-2"], 10 * COIN),
    (["bob-1"], 25 * COIN),
    (["carol-1", "carol-2", "carol-3"], 7 * COIN + 50_000_000),
    (["dave-1"], 100 * COIN),
]


async def _build_pool(rt: Runtime, engine: AsyncEngine) -> list[dict[str, Any]]:
    """Mix every user of USERS through the real engine until all payouts are confirmed."""
    made = []
    for addresses, amount in USERS:
        mix = await create_mix(rt, MixRequest("JOBCOIN", addresses, 0, 0))
        await ledger.mint(engine, f"sender-{addresses[0]}", amount)
        await ledger.transfer(engine, f"sender-{addresses[0]}", mix["deposit_address"], amount)
        made.append(mix)
    await scan_asset(rt, Asset.JOBCOIN)
    async with engine.connect() as conn:
        sweeps = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalars().all()
    assert len(sweeps) == len(USERS)
    for sweep_id in sweeps:
        assert await execute_send(rt, sweep_id) == "confirmed"
    for _ in range(40):  # one payout per recipient is in flight per round
        await run_round(rt, Asset.JOBCOIN)
        async with engine.connect() as conn:
            left = (
                await conn.execute(select(func.count()).where(sends.c.kind == "payout", sends.c.state != "confirmed"))
            ).scalar_one()
        if left == 0:
            break
    else:
        raise AssertionError("payouts did not all confirm")
    return made


async def _direct_view(rt: Runtime, engine: AsyncEngine) -> tuple[PublicView, dict[str, str], TimingRules]:
    """The view, truth and timing built straight from the tables (no code of live.py)."""
    async with engine.connect() as conn:
        deps = (
            await conn.execute(
                select(deposits, mixes.c.delay_min_seconds, mixes.c.max_wait_seconds).join(
                    mixes, mixes.c.id == deposits.c.mix_id
                )
            )
        ).all()
        pays = (await conn.execute(select(sends).where(sends.c.kind == "payout", sends.c.state == "confirmed"))).all()
    view = PublicView(
        tuple(
            sorted(
                (
                    PublicDeposit(
                        str(d.id), d.deposit_address, d.amount - (d.network_fee_amount or 0), d.created_at.timestamp()
                    )
                    for d in deps
                ),
                key=lambda d: (d.at, int(d.ref)),
            )
        ),
        tuple(
            sorted(
                (PublicPayout(str(p.id), p.to_address, p.amount, p.confirmed_at.timestamp()) for p in pays),
                key=lambda p: (p.at, int(p.ref)),
            )
        ),
        rt.adapter("JOBCOIN").pool_address,
    )
    truth = {p.to_address: str(p.deposit_id) for p in pays}
    timing = TimingRules(
        delay_min_seconds=min(d.delay_min_seconds for d in deps),
        max_wait_seconds=max(d.max_wait_seconds for d in deps),
        max_addresses=min(rt.settings.max_withdrawal_addresses, MAX_ANALYSED_ADDRESSES),
        round_seconds=rt.settings.payout_round_seconds,
        gate_k=rt.settings.privacy_gate_k,
    )
    return view, truth, timing


async def test_live_report_matches_a_direct_analysis(database_url: str, engine: AsyncEngine) -> None:
    async with local_ledger(engine) as led:
        settings = fast_settings(
            database_url, jobcoin_api_url=led.api_url, privacy_gate_k=1, admin_api_key=SecretStr(ADMIN_KEY)
        )
        rt = build_runtime(settings, database_url)
        try:
            made = await _build_pool(rt, engine)
            live = await privacy_report(rt, Asset.JOBCOIN, hours=1)

            # The view is what the public ledger shows: the same deposits and payouts.
            view, truth, timing = await _direct_view(rt, engine)
            assert live.pool.view == view
            assert live.pool.truth == truth
            assert live.pool.timing == timing
            assert live.pool.rules == DenominatedRules(
                rt.settings.fee_min_bps, rt.settings.fee_max_bps, min_payout=asset_info(Asset.JOBCOIN).dust
            )
            async with engine.connect() as conn:
                public = await ledger.all_transfers(conn)
            pool = view.pool_address
            assert Counter((t.to_address, t.amount) for t in public if t.from_address == pool) == Counter(
                (p.to_address, p.amount) for p in view.payouts
            )
            assert sorted(t.amount for t in public if t.to_address in {m["deposit_address"] for m in made}) == sorted(
                d.amount for d in view.deposits
            )
            assert set(truth) == {a for addresses, _ in USERS for a in addresses}
            assert (live.pool.payouts_in_range, live.pool.payouts_capped) == (len(view.payouts), False)

            # The figures are those of analyze + score on that view.
            direct = score(analyze(view, live.pool.rules, timing), truth)
            assert set(live.score.attacks) == set(ATTACKS)
            assert live.score == direct
            assert live.analysis_seconds > 0

            # The gate released every deposit by its anonymity set (k = 1); none is waiting.
            gate = live.gate
            assert (gate.k, gate.released, gate.released_by_k, gate.released_by_max_wait) == (1, 4, 4, 0)
            assert 1 <= gate.set_p10 <= gate.set_p50 <= gate.set_p90 <= len(USERS)
            assert (gate.waiting, gate.oldest_wait_seconds, gate.not_yet_due) == (0, 0.0, 0)

            # A payout cap keeps the newest payouts and says so.
            capped = await privacy_report(rt, Asset.JOBCOIN, hours=1, payout_limit=3)
            assert (len(capped.pool.view.payouts), capped.pool.payouts_capped) == (3, True)
            assert [p.ref for p in capped.pool.view.payouts] == [p.ref for p in view.payouts][-3:]

            transport = httpx.ASGITransport(app=create_app(rt))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                # Item 4: the mix status shows the anonymity set measured at release.
                status = (await client.get(f"/api/v1/mixes/{made[0]['id']}")).json()
                assert status["deposits"][0]["anonymity_set"] >= 1
                assert status["deposits"][0]["released_at"]

                response = await client.get(
                    "/api/v1/admin/privacy", params={"asset": "JOBCOIN", "hours": 1}, headers={"X-API-Key": ADMIN_KEY}
                )
                assert response.status_code == 200, response.text
                body = response.json()
            _assert_same_figures(body, live_json(live))

            # The CLI, in its own process, reads the same pool with the same settings.
            env = {
                **os.environ,
                "MIXHOUSE_DATABASE_URL": database_url,
                "MIXHOUSE_JOBCOIN_API_URL": led.api_url,
                "MIXHOUSE_PAYOUT_ROUND_SECONDS": "1",
                "MIXHOUSE_PRIVACY_GATE_K": "1",
                "COLUMNS": "200",  # Rich wraps the table to the terminal's width
            }
            out = await _cli(env, "privacy", "report", "--asset", "jobcoin", "--hours", "1", "--json")
            _assert_same_figures(json.loads(out), body)
            table = await _cli(env, "privacy", "report", "--hours", "1")
            assert "linked %" in table
            assert "amount+window+structure" in table
            assert "release gate (k=1)" in table
        finally:
            await rt.aclose()
            await rt.engine.dispose()


def live_json(live: Any) -> dict[str, Any]:
    from mixhouse.api.schemas import PrivacyReportOut  # noqa: PLC0415

    dumped: dict[str, Any] = json.loads(PrivacyReportOut.from_live(live).model_dump_json())
    return dumped


def _assert_same_figures(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal reports but for the moment they were made and how long the analysis took."""

    def timeless(report: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in report.items() if k not in ("since", "until", "analysis_seconds")}
        kept["gate"] = {k: v for k, v in report["gate"].items() if k != "oldest_wait_seconds"}
        return kept

    assert timeless(got) == timeless(want)


async def _cli(env: dict[str, str], *args: str) -> str:
    code, out, err = await run_mixhouse(env, *args)
    assert code == 0, err
    return out


# -- the admin endpoint and the CLI's refusals ------------------------------------------------


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=database_url, jobcoin_enabled=True, admin_api_key=SecretStr(ADMIN_KEY))
    rt = build_runtime(settings, database_url, pool_size=2)
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http
    await rt.aclose()
    await rt.engine.dispose()


async def test_admin_privacy_requires_the_key(client: httpx.AsyncClient) -> None:
    path = "/api/v1/admin/privacy"
    assert_problem(await client.get(path), 401)
    for wrong in ("", "wrong", ADMIN_KEY + "x", "dev-admin-key-change-me"):
        assert_problem(await client.get(path, headers={"X-API-Key": wrong}), 401)
    assert_problem(await client.get(path, params={"hours": 0}), 401)  # no input is read without the key


async def test_admin_privacy_refuses_bad_input(client: httpx.AsyncClient) -> None:
    key = {"X-API-Key": ADMIN_KEY}
    for asset in ("NOPE", "jobcoin", "ETH", "BTC", "X" * 17):
        body = assert_problem(await client.get("/api/v1/admin/privacy", params={"asset": asset}, headers=key), 422)
        assert body["type"] in ("urn:mixhouse:problem:invalid-input", "urn:mixhouse:problem:validation")
    for hours in ("0", "721", "-1", "1.5", "day", str(2**70)):
        body = assert_problem(await client.get("/api/v1/admin/privacy", params={"hours": hours}, headers=key), 422)
        assert body["type"] == "urn:mixhouse:problem:validation"


async def test_admin_privacy_of_an_empty_pool(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/admin/privacy", params={"hours": 720}, headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["asset"], body["hours"], body["payouts_analysed"], body["payout_limit"]) == ("JOBCOIN", 720, 0, 5000)
    assert body["payouts_capped"] is False
    assert [a["name"] for a in body["attacks"]] == list(ATTACKS)
    assert all(a["linked_pct"] == 0.0 and a["addresses"] == 0 for a in body["attacks"])
    assert body["gate"]["released"] == 0
    assert body["gate"]["waiting"] == 0
    assert body["rules"]["max_addresses"] == 10
    assert body["rules"]["round_seconds"] == 10


def test_cli_refuses_hours_out_of_range() -> None:
    result = CliRunner().invoke(cli_app, ["privacy", "report", "--hours", "0"])
    assert result.exit_code == 2
    assert "hours must be 1..720" in result.output
