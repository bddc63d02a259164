"""Signing off the event loop (mixhouse.keys.offload): a hung token delays sends, which are
retried, while the loop keeps serving scans and everything else.

The hung token is a SoftHSM2 token whose signer lock a test thread holds: a signature waits
on it exactly as it would wait on a ``C_Sign`` that never returns (the lock is held around
every call into the token). Signing on the loop, that wait would freeze the whole process.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from typing import Any, TypeVar

import pytest

from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.keys.audited import AuditedSigner, recording_key_uses, unwrap
from mixhouse.keys.hd import POOL_PATH, deposit_path
from mixhouse.keys.hsm import Pkcs11Signer
from mixhouse.keys.offload import SigningThread
from mixhouse.keys.signer import SignerError
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.servers import background
from tests.e2e import anvil_settings, wait_for_payouts
from tests.fixtures.anvil import Anvil
from tests.fixtures.softhsm import SoftHsm, hung_token

T = TypeVar("T")
ETHER = 10**18
NOT_A_MNEMONIC = "no software keys in this run"
# The loop must answer a 10 ms tick within this, however long the token hangs.
MAX_TICK_GAP_SECONDS = 0.5


class _Ticker:
    """A coroutine that ticks every 10 ms and records the longest gap between its ticks."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            tick = time.monotonic()
            self.max_gap = max(self.max_gap, tick - last)
            last = tick
            self.ticks += 1


async def _until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_hung_call_times_out_while_the_loop_runs_and_queued_calls_never_start() -> None:
    thread = SigningThread("signer-test", timeout=0.3)
    release = threading.Event()
    started: list[str] = []
    ticker = _Ticker()

    def hang() -> str:
        started.append("hang")
        release.wait(20)  # bounded: a broken offload must fail the test, not hang it
        return "late"

    def queued() -> str:
        started.append("queued")
        return "never"

    try:
        async with background(ticker.run()):
            first = asyncio.create_task(thread.run(hang))
            await _until(lambda: started == ["hang"], 5, "the hung call to start")
            with pytest.raises(SignerError, match="did not answer within"):
                await thread.run(queued)
            with pytest.raises(SignerError, match="did not answer within"):
                await first
            ticks_while_hung = ticker.ticks
        assert ticks_while_hung >= 10
        assert ticker.max_gap < MAX_TICK_GAP_SECONDS
        release.set()
        # Once the hung call returns, work flows again; the call whose deadline passed in the
        # queue was dropped, never run (it would have reached the token late).
        assert await thread.run(lambda: "after") == "after"
        assert started == ["hang"]

        def fails() -> None:
            raise ValueError("a digest to sign is 32 bytes, got 3")

        with pytest.raises(ValueError, match="32 bytes"):
            await thread.run(fails)
    finally:
        release.set()
        thread.close()
    with pytest.raises(SignerError, match="closed"):
        await thread.run(lambda: None)


async def test_key_uses_are_collected_from_the_signing_thread(softhsm: SoftHsm) -> None:
    signer = AuditedSigner(softhsm.signer())
    thread = SigningThread("signer-test")
    try:
        with recording_key_uses() as uses:
            await thread.run(signer.sign_digest, deposit_path(3), bytes(32))
        assert [use.key_ref for use in uses] == [deposit_path(3)]
        assert signer.unrecorded == 0
    finally:
        thread.close()
        unwrap(signer).close()  # type: ignore[attr-defined]


class _CountingThread(SigningThread):
    """A signing thread that counts the calls that gave up at their deadline."""

    def __init__(self, name: str, *, timeout: float) -> None:
        super().__init__(name, timeout=timeout)
        self.timeouts = 0

    async def run(self, fn: Any, *args: Any) -> Any:
        try:
            return await super().run(fn, *args)
        except SignerError as exc:
            if "did not answer" in str(exc):
                self.timeouts += 1
            raise


async def test_a_hung_token_delays_the_sweep_while_scans_and_the_loop_go_on(
    database_url: str, anvil: Anvil, softhsm: SoftHsm
) -> None:
    """The token hangs once the deposit address is issued: the deposit is still seen (the scan
    runs), a coroutine keeps ticking, the sweep's signing times out again and again and is
    retried, nothing is marked failed; the token answers again: the mix completes exactly."""
    settings = anvil_settings(
        database_url, anvil, NOT_A_MNEMONIC, **softhsm.settings(f"offload-{uuid.uuid4().hex[:12]}/")
    )
    rt = build_runtime(settings, database_url)
    adapter = rt.adapter("ETH")
    key_holder = unwrap(adapter._signer)  # type: ignore[attr-defined]
    assert isinstance(key_holder, Pkcs11Signer)
    # A short deadline so the test sees several retries; production's is SIGN_TIMEOUT_SECONDS.
    counting = _CountingThread("signer-ETH", timeout=0.5)
    adapter._signing.close()  # type: ignore[attr-defined]
    adapter._signing = counting  # type: ignore[attr-defined]
    withdrawal = adapter.normalize_address("0x" + f"{random.Random(11).getrandbits(160):040x}")
    ticker = _Ticker()
    hang = contextlib.AsyncExitStack()
    try:
        mix = await create_mix(rt, MixRequest("ETH", [withdrawal], 0, 3))
        assert key_holder.public_key(POOL_PATH)  # the pool key exists before the token hangs
        await hang.enter_async_context(hung_token(key_holder))
        await anvil.fund(mix["deposit_address"], ETHER // 2)
        async with (
            background(_keep_mining(anvil)),
            background(ticker.run()),
            background(run_worker(rt, database_url, concurrency=4)),
        ):
            seen: list[Any] = []

            async def deposit_seen() -> bool:
                view = await get_mix(rt, mix["id"])
                seen[:] = view["deposits"]
                return bool(seen)

            deadline = time.monotonic() + 120
            while counting.timeouts < 3 or not await deposit_seen():
                assert time.monotonic() < deadline, f"{counting.timeouts} timeouts, deposits {seen}"
                await asyncio.sleep(0.1)
            assert ticker.max_gap < MAX_TICK_GAP_SECONDS, f"the loop stalled {ticker.max_gap:.2f} s"
            view = await get_mix(rt, mix["id"])
            assert [s["state"] for s in view["sends"] if s["state"] in ("failed", "signed", "confirmed")] == []
            assert view["deposits"][0]["state"] in ("seen", "sweeping")
            await hang.aclose()  # the token answers again
            view = await wait_for_payouts(rt, mix["id"], within=120)
        assert all(s["state"] == "confirmed" for s in view["sends"])
        assert await anvil.balance(withdrawal) == view["deposits"][0]["payout_total"]
    finally:
        await hang.aclose()
        await rt.aclose()
        await rt.engine.dispose()
        key_holder.close()


async def _keep_mining(anvil: Anvil) -> None:
    while True:
        await anvil.mine(1)
        await asyncio.sleep(0.2)
