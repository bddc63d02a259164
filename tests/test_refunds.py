"""Operator refunds of held deposits (mixer/refunds.py) on the real Jobcoin ledger, anvil and bcoin:
exactly once under concurrent requests and across a crash between sign and broadcast, frozen
deposits and addresses of ours refused with nothing changed, the ledger balanced after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_account import Account
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.api.app import create_app
from mixhouse.api.problems import PROBLEM_MEDIA_TYPE
from mixhouse.app.build import build_runtime
from mixhouse.chains.base import PreparedSend, UtxoChainAdapter
from mixhouse.chains.jobcoin import ledger
from mixhouse.db.tables import audit_log, deposits, sends, utxos
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.screening import store_list
from mixhouse.mixer.sends import execute_send
from mixhouse.money import Asset
from tests.e2e import fast_settings, local_ledger, scan_caught_up
from tests.fixtures.anvil import Anvil
from tests.fixtures.bcoin import Bcoin
from tests.test_e2e_bitcoin import bitcoin_settings
from tests.web import wait_until

COIN = 10**8
ADMIN_KEY = "refund-test-admin-key-0123456789"
HEADERS = {"X-API-Key": ADMIN_KEY}
HELD_AMOUNT = COIN // 2  # below the default mix minimum: held


@dataclass
class Stack:
    rt: Runtime
    http: httpx.AsyncClient
    engine: AsyncEngine


@pytest.fixture
async def stack(database_url: str, engine: AsyncEngine) -> AsyncIterator[Stack]:
    async with local_ledger(engine) as led:
        rt = build_runtime(
            fast_settings(database_url, jobcoin_api_url=led.api_url, admin_api_key=SecretStr(ADMIN_KEY)),
            database_url,
        )
        transport = httpx.ASGITransport(app=create_app(rt))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield Stack(rt, http, engine)
        finally:
            await rt.aclose()
            await rt.engine.dispose()


async def held_deposit(s: Stack, sender: str = "sender", amount: int = HELD_AMOUNT) -> tuple[dict[str, Any], int]:
    """A mix with one deposit below its minimum (held), and that deposit's id."""
    await ledger.mint(s.engine, sender, amount)
    mix = await create_mix(s.rt, MixRequest("JOBCOIN", ["w-1"], 0, 0))
    await ledger.transfer(s.engine, sender, mix["deposit_address"], amount)
    await scan_asset(s.rt, Asset.JOBCOIN)
    dep = (await get_mix(s.rt, mix["id"]))["deposits"][0]
    assert dep["state"] == "held", dep
    return mix, int(dep["id"])


async def refund(s: Stack, deposit_id: int, address: str, **extra: Any) -> httpx.Response:
    return await s.http.post(
        f"/api/v1/admin/deposits/{deposit_id}/refund", json={"address": address, **extra}, headers=HEADERS
    )


async def audit_actions(engine: AsyncEngine, action: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in await conn.execute(select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.id))
        ]


async def balance(engine: AsyncEngine, address: str) -> int:
    async with engine.connect() as conn:
        return int((await ledger.address_info(conn, address))[0])


def assert_problem(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_MEDIA_TYPE
    assert fragment in response.json()["detail"], response.json()


async def test_concurrent_refund_requests_make_exactly_one_refund(stack: Stack) -> None:
    mix, deposit_id = await held_deposit(stack)
    assert (await reconcile(stack.rt, Asset.JOBCOIN)).ok

    answers = await asyncio.gather(*(refund(stack, deposit_id, "alice-back", operator=f"op-{i}") for i in range(12)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 11 + [202], [a.text for a in answers]
    bodies = [a.json() for a in answers]
    assert len({b["refund"]["send_id"] for b in bodies}) == 1
    created = next(b for b in bodies if b["created"])
    assert created["deposit_state"] == "refunding"
    assert created["refund"]["amount"] == str(HELD_AMOUNT)  # Jobcoin has no network fee
    assert created["refund"]["to_address"] == "alice-back"
    # Another address for a refund in flight is refused: a refund is never redirected.
    assert_problem(await refund(stack, deposit_id, "mallory"), 409, "another address")

    async with stack.engine.connect() as conn:
        refunds = (await conn.execute(select(sends).where(sends.c.kind == "refund"))).all()
    assert len(refunds) == 1
    requested = await audit_actions(stack.engine, "deposit.refund_requested")
    assert len(requested) == 1
    assert requested[0]["actor"] == "admin"
    assert requested[0]["details"]["address"] == "alice-back"
    assert requested[0]["details"]["operator"].startswith("op-")

    assert await execute_send(stack.rt, refunds[0].id) == "confirmed"
    assert await execute_send(stack.rt, refunds[0].id) == "confirmed"  # a repeat job does nothing
    assert await balance(stack.engine, "alice-back") == HELD_AMOUNT
    assert await balance(stack.engine, mix["deposit_address"]) == 0
    async with stack.engine.connect() as conn:
        transfers = [t for t in await ledger.all_transfers(conn) if t.to_address == "alice-back"]
        assert await audit.verify(conn) >= 0
    assert len(transfers) == 1
    refunded = await audit_actions(stack.engine, "deposit.refunded")
    assert [r["entity_id"] for r in refunded] == [str(deposit_id)]
    assert refunded[0]["details"]["send_id"] == refunds[0].id
    assert "txid" in refunded[0]["details"]

    # The same request after the fact answers the finished refund; the user's status shows it.
    again = await refund(stack, deposit_id, "alice-back")
    assert again.status_code == 200
    assert again.json()["deposit_state"] == "refunded"
    assert again.json()["refund"]["state"] == "confirmed"
    status = (await stack.http.get(f"/api/v1/mixes/{mix['id']}")).json()
    dep = status["deposits"][0]
    assert dep["state"] == "refunded"
    assert dep["refund"]["state"] == "confirmed"
    assert dep["refund"]["to_address"] == "alice-back"
    assert dep["refund"]["amount"] == str(HELD_AMOUNT)
    assert status["payouts"] == []
    page = (await stack.http.get(f"/mix/{mix['id']}")).text
    assert "Refunded" in page
    assert "alice-back" in page
    # The pool never saw the held deposit: its books and the chain still agree.
    assert (await reconcile(stack.rt, Asset.JOBCOIN)).ok


async def test_refunds_of_frozen_deposits_and_to_addresses_of_ours_are_refused(stack: Stack) -> None:
    mix, held_id = await held_deposit(stack)
    other = await create_mix(stack.rt, MixRequest("JOBCOIN", ["w-2"], 0, 0))
    async with stack.engine.begin() as conn:
        await store_list(conn, ["listed-sender"], "operator")
    await ledger.mint(stack.engine, "listed-sender", 5 * COIN)
    frozen_mix = await create_mix(stack.rt, MixRequest("JOBCOIN", ["w-3"], 0, 0))
    await ledger.transfer(stack.engine, "listed-sender", frozen_mix["deposit_address"], 5 * COIN)
    await scan_asset(stack.rt, Asset.JOBCOIN)
    frozen = (await get_mix(stack.rt, frozen_mix["id"]))["deposits"][0]
    assert frozen["state"] == "frozen"

    assert_problem(await refund(stack, frozen["id"], "anywhere"), 409, "frozen")
    pool = stack.rt.adapter("JOBCOIN").pool_address
    assert_problem(await refund(stack, held_id, pool), 422, "pool address")
    assert_problem(await refund(stack, held_id, other["deposit_address"]), 422, "deposit address")
    assert_problem(await refund(stack, held_id, mix["deposit_address"]), 422, "deposit address")
    assert_problem(await refund(stack, held_id, " padded "), 422, "")
    assert_problem(await refund(stack, 987654, "anywhere"), 404, "no deposit")
    refused = await stack.http.post(f"/api/v1/admin/deposits/{held_id}/refund", json={"address": "x"})
    assert refused.status_code == 401  # the admin key is required

    async with stack.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(sends))).scalar_one() == 0
        states = dict((await conn.execute(select(deposits.c.id, deposits.c.state))).all())
    assert states == {held_id: "held", frozen["id"]: "frozen"}
    assert await audit_actions(stack.engine, "deposit.refund_requested") == []
    assert await balance(stack.engine, mix["deposit_address"]) == HELD_AMOUNT
    assert await balance(stack.engine, frozen_mix["deposit_address"]) == 5 * COIN


class _Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so nobody catches it)."""


@pytest.mark.parametrize("dies", ["before the broadcast", "after the broadcast"])
async def test_a_refund_survives_a_crash_around_its_broadcast(stack: Stack, dies: str) -> None:
    mix, deposit_id = await held_deposit(stack)
    answer = await refund(stack, deposit_id, "alice-back")
    assert answer.status_code == 202
    send_id = answer.json()["refund"]["send_id"]
    adapter = stack.rt.adapter("JOBCOIN")
    real_broadcast = adapter.broadcast

    async def dying_broadcast(prepared: PreparedSend) -> None:
        if dies == "after the broadcast":
            await real_broadcast(prepared)  # the coins move, then the process dies
        raise _Crash

    adapter.broadcast = dying_broadcast  # type: ignore[method-assign]
    try:
        with pytest.raises(_Crash):
            await execute_send(stack.rt, send_id)
    finally:
        adapter.broadcast = real_broadcast  # type: ignore[method-assign]
    async with stack.engine.connect() as conn:
        row = (await conn.execute(select(sends).where(sends.c.id == send_id))).one()
    assert (row.state, row.attempts) == ("signed", 1)  # stored before the broadcast

    async def finished() -> bool:
        return await execute_send(stack.rt, send_id) == "confirmed"

    # The restarted job waits out the settle time, looks for its transfer, sends only if absent.
    await wait_until(finished, within=20, what="the refund confirmed after the crash")
    async with stack.engine.connect() as conn:
        transfers = [t for t in await ledger.all_transfers(conn) if t.to_address == "alice-back"]
        dep_state = (await conn.execute(select(deposits.c.state).where(deposits.c.id == deposit_id))).scalar_one()
    assert len(transfers) == 1
    assert transfers[0].amount == HELD_AMOUNT
    assert await balance(stack.engine, mix["deposit_address"]) == 0
    assert dep_state == "refunded"
    assert len(await audit_actions(stack.engine, "deposit.refunded")) == 1


async def test_eth_refund_pays_the_deposit_minus_gas(database_url: str, engine: AsyncEngine, anvil: Anvil) -> None:
    Account.enable_unaudited_hdwallet_features()
    settings = fast_settings(
        database_url,
        jobcoin_enabled=False,
        evm_enabled=True,
        evm_rpc_url=anvil.rpc_url,
        evm_chain_id=anvil.chain_id,
        # A mnemonic of its own: the session's anvil is shared, and another test's deposit
        # addresses (the fixed test mnemonic's) must not receive this test's coins.
        evm_mnemonic=Account.create_with_mnemonic()[1],
        evm_confirmations=1,
        admin_api_key=SecretStr(ADMIN_KEY),
    )
    rt = build_runtime(settings, database_url)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://t") as http:
            mix = await create_mix(rt, MixRequest("ETH", ["0x52908400098527886E0F7030069857D2E4169EE7"], 0, 0))
            deposited = 10**15  # far below the ETH minimum: held
            await anvil.fund(mix["deposit_address"], deposited)
            await anvil.mine(2)
            await scan_caught_up(rt, Asset.ETH)
            dep = (await get_mix(rt, mix["id"]))["deposits"][0]
            assert dep["state"] == "held", dep
            target = "0x000000000000000000000000000000000000dEaD"
            bad = await http.post(
                f"/api/v1/admin/deposits/{dep['id']}/refund", json={"address": "0x1234"}, headers=HEADERS
            )
            assert bad.status_code == 422
            answer = await http.post(
                f"/api/v1/admin/deposits/{dep['id']}/refund", json={"address": target.lower()}, headers=HEADERS
            )
            assert answer.status_code == 202, answer.text
            body = answer.json()["refund"]
            assert body["to_address"] == target  # EIP-55, normalised by the adapter
            fee = int(body["network_fee_reserved"])
            assert fee > 0
            assert int(body["amount"]) == deposited - fee
            before = await anvil.balance(target)

            async def confirmed() -> bool:
                state = await execute_send(rt, body["send_id"])
                if state != "confirmed":
                    await anvil.mine(1)
                return state == "confirmed"

            await wait_until(confirmed, within=30, what="the ETH refund confirmed")
            assert await anvil.balance(target) - before == deposited - fee
            view = await get_mix(rt, mix["id"])
            assert view["deposits"][0]["state"] == "refunded"
            refund_row = next(s for s in view["sends"] if s["kind"] == "refund")
            assert refund_row["txid"]
            assert refund_row["network_fee_paid"] is not None
            assert refund_row["network_fee_paid"] <= fee
            refunded = await audit_actions(engine, "deposit.refunded")
            assert refunded[0]["details"]["txid"] == refund_row["txid"]
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def test_btc_refund_spends_the_held_output_alone(database_url: str, engine: AsyncEngine, bcoin: Bcoin) -> None:
    rt = build_runtime(bitcoin_settings(database_url, bcoin, admin_api_key=SecretStr(ADMIN_KEY)), database_url)
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://t") as http:
            mix = await create_mix(rt, MixRequest("BTC", [user.address(0, 0)], 0, 0))
            held = 50_000  # below bitcoin_min_deposit (100,000): held
            await bcoin.fund(mix["deposit_address"], held)
            await bcoin.fund(rt.adapter("BTC").pool_address, 1_000_000)  # pool liquidity beside it
            await bcoin.mine(3)
            await scan_asset(rt, Asset.BTC)
            dep = (await get_mix(rt, mix["id"]))["deposits"][0]
            assert dep["state"] == "held", dep
            assert (await reconcile(rt, Asset.BTC)).ok
            target = user.address(0, 7)
            url = f"/api/v1/admin/deposits/{dep['id']}/refund"
            answers = await asyncio.gather(
                *(http.post(url, json={"address": target}, headers=HEADERS) for _ in range(4))
            )
            assert sorted(a.status_code for a in answers) == [200, 200, 200, 202]
            body = next(a.json() for a in answers if a.status_code == 202)["refund"]
            fee = int(body["network_fee_reserved"])
            assert 0 < fee < 10_000
            assert int(body["amount"]) == held - fee
            async with engine.connect() as conn:
                coin = (await conn.execute(select(utxos).where(utxos.c.deposit_id == dep["id"]))).one()
            assert (coin.state, coin.reserved_by_send) == ("reserved", body["send_id"])  # never available

            async def confirmed() -> bool:
                state = await execute_send(rt, body["send_id"])
                if state != "confirmed":
                    await bcoin.mine(1)
                return state == "confirmed"

            await wait_until(confirmed, within=60, what="the BTC refund confirmed")
            view = await get_mix(rt, mix["id"])
            refund_row = next(s for s in view["sends"] if s["kind"] == "refund")
            assert view["deposits"][0]["state"] == "refunded"
            # One input (the held output), one output to the target, no change.
            tx = await bcoin.rpc("getrawtransaction", refund_row["txid"], True)
            assert [(i["txid"], i["vout"]) for i in tx["vin"]] == [(coin.txid, coin.vout)]
            assert len(tx["vout"]) == 1
            adapter = rt.adapter("BTC")
            assert isinstance(adapter, UtxoChainAdapter)
            assert await adapter.unspent_amount(refund_row["txid"], 0) == held - fee
            assert refund_row["network_fee_paid"] == fee
            async with engine.connect() as conn:
                state = (await conn.execute(select(utxos.c.state).where(utxos.c.deposit_id == dep["id"]))).scalar_one()
            assert state == "spent"
            # The pool never held it: the books and the chain still agree.
            assert (await reconcile(rt, Asset.BTC)).ok
    finally:
        await rt.aclose()
        await rt.engine.dispose()
