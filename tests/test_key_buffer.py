"""Pre-generated deposit keys (mixhouse.keys.buffer): indexes from the same counter as
next_key_index, keys made outside any transaction, taken under FOR UPDATE SKIP LOCKED (two
transactions never take one key; a rollback puts it back), one filler per asset at a time, and
mix creation issuing a buffered key made in a SoftHSM2 token."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.api.app import create_app
from mixhouse.api.serving import api_app
from mixhouse.app.build import build_runtime
from mixhouse.config import Settings
from mixhouse.db.engine import make_engine
from mixhouse.db.tables import audit_log, key_buffer, key_counters, mixes
from mixhouse.keys.audited import unwrap
from mixhouse.keys.buffer import buffered, run_key_buffer, take_key, top_up
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.hsm import Pkcs11Signer
from mixhouse.mixer.mixes import MixRequest, create_mix, next_key_index
from mixhouse.money import Asset
from mixhouse.unit import unit
from tests.fixtures.softhsm import SoftHsm, hung_token

MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"


def _addresses() -> tuple[HdKeyring, list[int]]:
    return HdKeyring(MNEMONIC), []


async def test_top_up_allocates_from_the_counter_and_take_hands_out_the_lowest(engine: AsyncEngine) -> None:
    keyring, made = _addresses()

    def address_of(index: int) -> str:
        made.append(index)
        return keyring.deposit_address(index)

    async with unit(engine) as work:
        assert await take_key(work.conn, "ETH") is None
        assert await next_key_index(work, "ETH") == 0  # an index issued before the buffer
    assert await top_up(engine, "ETH", address_of, target=7, block=3) == 7
    assert made == list(range(1, 8))
    assert await top_up(engine, "ETH", address_of, target=7) == 0  # full: nothing made
    async with engine.connect() as conn:
        assert await buffered(conn, "ETH") == 7
        assert await buffered(conn, "BTC") == 0
    async with unit(engine) as work:
        assert await take_key(work.conn, "ETH") == (1, keyring.deposit_address(1))
        assert await take_key(work.conn, "ETH") == (2, keyring.deposit_address(2))
        # The counter never hands out a buffered index again.
        assert await next_key_index(work, "ETH") == 8


async def test_two_transactions_never_take_one_key_and_a_rollback_puts_it_back(engine: AsyncEngine) -> None:
    keyring = HdKeyring(MNEMONIC)
    await top_up(engine, "ETH", keyring.deposit_address, target=2)
    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        await second.begin()
        a = await take_key(first, "ETH")
        b = await take_key(second, "ETH")  # skips the row the first holds
        assert a is not None
        assert b is not None
        assert a != b
        assert await take_key(second, "ETH") is None  # the only other row is locked
        await first.rollback()
        await second.commit()
    async with unit(engine) as work:
        assert await take_key(work.conn, "ETH") == a  # back after the rollback
        assert await take_key(work.conn, "ETH") is None


async def test_one_filler_at_a_time_per_asset(engine: AsyncEngine) -> None:
    keyring = HdKeyring(MNEMONIC)
    inside, release = threading.Event(), threading.Event()

    def slow(index: int) -> str:
        inside.set()
        release.wait(60)  # a token making a key
        return keyring.deposit_address(index)

    first = asyncio.create_task(top_up(engine, "ETH", slow, target=3))
    try:
        assert await asyncio.to_thread(inside.wait, 60)
        # Another process's filler finds the lock taken and does nothing this round.
        assert await top_up(engine, "ETH", keyring.deposit_address, target=3) == 0
        # Another asset is not held up.
        assert await top_up(engine, "BTC", keyring.deposit_address, target=1) == 1
    finally:
        release.set()
    assert await first == 3
    async with engine.connect() as conn:
        rows = (await conn.execute(select(key_buffer.c.key_index).where(key_buffer.c.asset == "ETH"))).scalars()
        assert sorted(rows) == [0, 1, 2]
        counter = (await conn.execute(select(key_counters.c.next_index).where(key_counters.c.asset == "ETH"))).scalar()
        assert counter == 3


async def test_the_background_loop_fills_and_survives_a_failing_token(engine: AsyncEngine) -> None:
    keyring = HdKeyring(MNEMONIC)
    calls = {"n": 0}

    def flaky(index: int) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            from mixhouse.keys.signer import SignerError  # noqa: PLC0415

            raise SignerError("cannot open PKCS#11 token 't': DeviceRemoved")
        return keyring.deposit_address(index)

    task = asyncio.create_task(run_key_buffer(engine, {"ETH": flaky}, target=5, interval_seconds=0.05, block=2))
    try:
        async with asyncio.timeout(120):
            while True:
                async with engine.connect() as conn:
                    if await buffered(conn, "ETH") >= 5:
                        break
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with engine.connect() as conn:
        indexes = sorted((await conn.execute(select(key_buffer.c.key_index))).scalars())
    # The block that met the failure left its indexes unused: a gap, never a reuse.
    assert len(indexes) == len(set(indexes)) == 5
    assert all(keyring.deposit_address(i) for i in indexes)


async def test_a_mix_gets_a_key_made_ahead_in_the_token(database_url: str, softhsm: SoftHsm) -> None:
    settings = Settings(
        database_url=database_url,
        jobcoin_enabled=False,
        evm_enabled=True,
        **softhsm.settings("test-buffer/"),
    )
    rt = build_runtime(settings, database_url)
    adapter = rt.adapter("ETH")
    token = unwrap(rt.signers[next(iter(rt.signers))])
    try:
        assert await top_up(rt.engine, "ETH", adapter.deposit_address, target=3) == 3
        withdrawal = adapter.normalize_address("0x" + "ab" * 20)
        mixes = [await create_mix(rt, MixRequest("ETH", [withdrawal], 0, 3)) for _ in range(4)]
        async with rt.engine.connect() as conn:
            assert await buffered(conn, "ETH") == 0
        # Three from the buffer (indexes 0-2, in order), the fourth made at issue (index 3).
        for index, mix in enumerate(mixes):
            assert mix["deposit_address"] == adapter.deposit_address(index)
        assert len({m["deposit_address"] for m in mixes}) == 4
    finally:
        await rt.aclose()
        await rt.engine.dispose()
        token.close()  # type: ignore[attr-defined]


async def test_an_api_process_keeps_the_buffer_filled(database_url: str, softhsm: SoftHsm) -> None:
    settings = Settings(
        database_url=database_url,
        jobcoin_enabled=False,
        evm_enabled=True,
        bitcoin_enabled=True,
        **softhsm.settings("test-api-buffer/"),
        key_buffer_size=3,
        key_buffer_interval_seconds=0.05,
        api_status_cache=False,
    )
    fast = api_app(settings, database_url)
    app = fast.app
    async with app.router.lifespan_context(app):
        async with asyncio.timeout(120):
            while True:
                async with fast.rt.engine.connect() as conn:
                    if await buffered(conn, "ETH") >= 3 and await buffered(conn, "BTC") >= 3:
                        break
                await asyncio.sleep(0.05)
    check = make_engine(database_url, pool_size=1)
    try:
        async with check.connect() as conn:
            rows = (await conn.execute(select(key_buffer.c.asset, key_buffer.c.key_index, key_buffer.c.address))).all()
    finally:
        await check.dispose()
    assert sorted((r.asset, r.key_index) for r in rows) == [("BTC", i) for i in range(3)] + [
        ("ETH", i) for i in range(3)
    ]
    btc = fast.rt.adapter("BTC")
    assert {r.address for r in rows if r.asset == "BTC"} == {btc.deposit_address(i) for i in range(3)}
    unwrap(fast.rt.signers[next(iter(fast.rt.signers))]).close()  # type: ignore[attr-defined]


async def test_an_empty_buffer_and_a_hung_token_answer_503_and_create_nothing(
    database_url: str, softhsm: SoftHsm
) -> None:
    """The buffer is empty and the token hangs (a thread holds its session lock, as a C_GenerateKeyPair
    that never returns would): POST /mixes answers 503 keys-busy with Retry-After once the
    issue deadline passes, with no mix, no audit entry and no index used; the token answers
    again: the next POST gets the key of that very index."""
    settings = Settings(
        database_url=database_url,
        jobcoin_enabled=False,
        evm_enabled=True,
        **softhsm.settings(f"test-busy-{uuid.uuid4().hex[:8]}/"),
        key_issue_timeout_seconds=0.5,
        key_buffer_interval_seconds=2.0,
    )
    rt = build_runtime(settings, database_url)
    adapter = rt.adapter("ETH")
    token = unwrap(rt.signers[Asset.ETH])
    assert isinstance(token, Pkcs11Signer)
    body = {"asset": "ETH", "withdrawal_addresses": ["0x" + "ab" * 20]}
    transport = httpx.ASGITransport(app=create_app(rt))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async with hung_token(token):
                started = time.monotonic()
                refused = await client.post("/api/v1/mixes", json=body)
                waited = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            assert refused.json()["type"] == "urn:mixhouse:problem:keys-busy"
            assert refused.headers["retry-after"] == str(math.ceil(2.0 + 0.5))
            assert waited < 30, f"the refusal took {waited:.1f} s"  # the deadline, not the token
            async with rt.engine.connect() as conn:
                assert (await conn.execute(select(func.count()).select_from(mixes))).scalar_one() == 0
                assert (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one() == 0
                counter = (
                    await conn.execute(select(key_counters.c.next_index).where(key_counters.c.asset == "ETH"))
                ).scalar()
                assert counter in (None, 0)  # the counter's increment rolled back with the mix
            created = await client.post("/api/v1/mixes", json=body)
            assert created.status_code == 201, created.text
            assert created.json()["deposit_address"] == adapter.deposit_address(0)
    finally:
        await rt.aclose()
        await rt.engine.dispose()
        token.close()
