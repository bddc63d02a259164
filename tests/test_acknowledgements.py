"""Resuming payouts after a reconciliation mismatch the operator understood
(mixer/acknowledgements.py), on the real Jobcoin ledger: mismatch -> paused, acknowledged ->
payouts flow while the discrepancy stays the acknowledged one, a new mismatch -> paused again."""

from __future__ import annotations

import httpx
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.api.app import create_app
from mixhouse.app.build import build_runtime
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import audit_log, reconciliation_acknowledgements, sends
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.rounds import run_round
from mixhouse.mixer.sends import execute_send, payouts_paused
from mixhouse.money import Asset
from tests.e2e import fast_settings, local_ledger

COIN = 10**8
ADMIN_KEY = "ack-test-admin-key-0123456789abcdef"
HEADERS = {"X-API-Key": ADMIN_KEY}


async def test_an_acknowledged_mismatch_resumes_payouts_until_a_different_one(
    database_url: str, engine: AsyncEngine
) -> None:
    async with local_ledger(engine) as led:
        settings = fast_settings(database_url, jobcoin_api_url=led.api_url, admin_api_key=SecretStr(ADMIN_KEY))
        rt = build_runtime(settings, database_url)
        transport = httpx.ASGITransport(app=create_app(rt))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                await ledger.mint(engine, "sender", 10 * COIN)
                mix = await create_mix(rt, MixRequest("JOBCOIN", ["w-1", "w-2", "w-3"], 0, 0))
                await ledger.transfer(engine, "sender", mix["deposit_address"], 10 * COIN)
                await scan_asset(rt, Asset.JOBCOIN)
                async with engine.connect() as conn:
                    sweep_id = (await conn.execute(select(sends.c.id).where(sends.c.kind == "sweep"))).scalar_one()
                assert await execute_send(rt, sweep_id) == "confirmed"
                assert (await reconcile(rt, Asset.JOBCOIN)).ok
                ack_url = "/api/v1/admin/reconciliations/JOBCOIN/acknowledge"
                nothing = await http.post(ack_url, json={"reason": "just looking"}, headers=HEADERS)
                assert nothing.status_code == 409  # the books agree: nothing to acknowledge

                pool = rt.adapter("JOBCOIN").pool_address
                await ledger.transfer(engine, pool, "auditor-sample", 1 * COIN)  # taken out by hand
                mismatch = await reconcile(rt, Asset.JOBCOIN)
                assert not mismatch.ok
                assert await payouts_paused(rt, "JOBCOIN")
                payout_ids = [s["id"] for s in (await get_mix(rt, mix["id"]))["sends"] if s["kind"] == "payout"]
                assert len(payout_ids) >= 2
                paused_round = await run_round(rt, Asset.JOBCOIN)
                assert paused_round.signed == 0
                assert await execute_send(rt, payout_ids[0]) == "scheduled"

                # Figures that are not the last check's are refused: nobody acknowledges unseen.
                stale = await http.post(
                    ack_url,
                    json={"reason": "sample", "expected": str(mismatch.books), "actual": str(mismatch.actual + 1)},
                    headers=HEADERS,
                )
                assert stale.status_code == 409, stale.text
                blank = await http.post(ack_url, json={"reason": "   "}, headers=HEADERS)
                assert blank.status_code == 422
                assert await payouts_paused(rt, "JOBCOIN")

                body = {
                    "reason": "1 JOBCOIN sent to the auditor's sample address by hand",
                    "operator": "olga",
                    "expected": str(mismatch.books),
                    "actual": str(mismatch.actual),
                }
                acked = await http.post(ack_url, json=body, headers=HEADERS)
                assert acked.status_code == 201, acked.text
                ack = acked.json()
                assert (ack["expected"], ack["actual"], ack["operator"]) == (
                    str(mismatch.books),
                    str(mismatch.actual),
                    "olga",
                )
                assert int(ack["discrepancy_low"]) == int(ack["discrepancy_high"]) == -1 * COIN
                assert not await payouts_paused(rt, "JOBCOIN")
                twice = await http.post(ack_url, json=body, headers=HEADERS)
                assert twice.status_code == 200
                assert twice.json()["id"] == ack["id"]
                report = (await http.get("/api/v1/admin/pool", headers=HEADERS)).json()["pools"][0]
                assert report["payouts_paused"] is False
                assert report["reconciliation"]["ok"] is False
                assert report["reconciliation"]["acknowledgement_id"] == ack["id"]

                # Payouts flow; the books and the chain drop together, the discrepancy stays.
                assert await execute_send(rt, payout_ids[0]) == "confirmed"
                still = await reconcile(rt, Asset.JOBCOIN)
                assert not still.ok
                assert not await payouts_paused(rt, "JOBCOIN")
                assert await execute_send(rt, payout_ids[1]) == "confirmed"

                # More coins go missing: a different mismatch pauses payouts again.
                await ledger.transfer(engine, pool, "thief", COIN // 10)
                again = await reconcile(rt, Asset.JOBCOIN)
                assert not again.ok
                assert await payouts_paused(rt, "JOBCOIN")
                for send_id in payout_ids[2:]:
                    assert await execute_send(rt, send_id) == "scheduled"
                report = (await http.get("/api/v1/admin/pool", headers=HEADERS)).json()["pools"][0]
                assert report["payouts_paused"] is True
                assert report["reconciliation"]["acknowledgement_id"] is None

                # The coins come back and the sample is returned: the books agree, nothing to cover.
                await ledger.transfer(engine, "thief", pool, COIN // 10)
                await ledger.transfer(engine, "auditor-sample", pool, 1 * COIN)
                assert (await reconcile(rt, Asset.JOBCOIN)).ok
                assert not await payouts_paused(rt, "JOBCOIN")
                for send_id in payout_ids[2:]:
                    assert await execute_send(rt, send_id) == "confirmed"

            async with engine.connect() as conn:
                actions = [
                    r.action
                    for r in await conn.execute(
                        select(audit_log.c.action)
                        .where(audit_log.c.entity_type == "reconciliation")
                        .order_by(audit_log.c.id)
                    )
                ]
                acks = (await conn.execute(select(reconciliation_acknowledgements))).all()
                entry = (
                    await conn.execute(select(audit_log).where(audit_log.c.action == "reconciliation.acknowledged"))
                ).one()
            assert actions == [
                "reconciliation.ok",
                "reconciliation.mismatch",
                "reconciliation.acknowledged",
                "reconciliation.mismatch",
                "reconciliation.ok",
            ]
            assert len(acks) == 1
            assert acks[0].reason == body["reason"]
            assert entry.details["operator"] == "olga"
            assert entry.details["reason"] == body["reason"]
            assert entry.actor == "admin"
        finally:
            await rt.aclose()
            await rt.engine.dispose()
