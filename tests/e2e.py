"""Helpers shared by the end-to-end tests: a local ledger, a runtime, waiting for mixes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.jobcoin.ledger_app import ledger_server
from mixhouse.config import Settings
from mixhouse.db.tables import chain_cursors, sends
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import get_mix
from mixhouse.mixer.runtime import Runtime
from mixhouse.money import Asset
from mixhouse.servers import free_port, running_server
from tests.fixtures.anvil import Anvil


@dataclass
class Ledger:
    """A running local Jobcoin ledger."""

    api_url: str
    port: int


@asynccontextmanager
async def local_ledger(engine: AsyncEngine, *, post_delay: float = 0.0) -> AsyncIterator[Ledger]:
    """Serve the Jobcoin ledger on a free port for the duration of the block.

    ``post_delay`` seconds are spent before each POST is handled: a slow ledger keeps sends in
    flight long enough for a crash test's kills to land while they are.
    """
    port = free_port()
    server = ledger_server(engine, "127.0.0.1", port, log_level="warning")
    if post_delay:
        server.config.app = _SlowPosts(server.config.app, post_delay)
    async with running_server(server):
        yield Ledger(f"http://127.0.0.1:{port}/api", port)


class _SlowPosts:
    """ASGI wrapper that waits before handling each POST."""

    def __init__(self, app: Any, delay: float) -> None:
        self.app = app
        self.delay = delay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST":
            await asyncio.sleep(self.delay)
        await self.app(scope, receive, send)


def fast_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests: short delays and fast polling."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "scan_interval_seconds": 1,
        "reconcile_interval_seconds": 2,
        "job_polling_interval_seconds": 0.1,
        "jobcoin_send_settle_seconds": 1.0,
        "worker_heartbeat_seconds": 0.5,
        "worker_stalled_after_seconds": 3.0,
        "evm_enabled": False,
        "payout_round_seconds": 1,
        "privacy_gate_k": 1,  # the gate off: one mix at a time would wait for its maximum
    }
    values.update(overrides)
    return Settings(**values)


def anvil_settings(database_url: str, anvil: Anvil, mnemonic: str, **overrides: Any) -> Settings:
    """``fast_settings`` for ETH alone on the test's anvil node: keys from ``mnemonic``, payouts
    final after 3 confirmations."""
    values: dict[str, Any] = {
        "jobcoin_enabled": False,
        "evm_enabled": True,
        "evm_rpc_url": anvil.rpc_url,
        "evm_chain_id": anvil.chain_id,
        "evm_mnemonic": mnemonic,
        "evm_confirmations": 3,
    }
    values.update(overrides)
    return fast_settings(database_url, **values)


async def scan_caught_up(rt: Runtime, asset: Asset, *, passes: int = 20) -> None:
    """Scan ``asset`` until a scan has reached the tip it saw (``chain_cursors``).

    A first EVM scan starts at the blocks mined since the oldest watched mix was created less
    the clock margin (mixer/deposits.py), and one scan reads at most
    ``EVM_MAX_BLOCKS_PER_SCAN`` blocks: on the session's anvil, which the other tests mine by the
    thousand, that window can take more than one scan, as it would on a busy chain."""
    for _ in range(passes):
        await scan_asset(rt, asset)
        async with rt.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(chain_cursors.c.tip_height, chain_cursors.c.scanned_height).where(
                        chain_cursors.c.asset == asset.value
                    )
                )
            ).first()
        if row is None or row.tip_height is None or row.scanned_height is None or row.scanned_height >= row.tip_height:
            return
    raise AssertionError(f"the {asset} scans did not reach the tip in {passes} passes")


async def wait_for_payouts(rt: Runtime, mix_id: str, *, within: float) -> dict[str, Any]:
    """Wait until the mix has payouts and every one is confirmed; returns the mix view."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view = await get_mix(rt, mix_id)
        payouts = [s for s in view["sends"] if s["kind"] == "payout"]
        if payouts and all(s["state"] == "confirmed" for s in view["sends"]):
            return view
        await asyncio.sleep(0.2)
    raise AssertionError(f"mix {mix_id} did not finish in {within} s: {await get_mix(rt, mix_id)}")


async def unfinished_sends(engine: AsyncEngine) -> int:
    """How many sends are not confirmed."""
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(select(func.count()).select_from(sends).where(sends.c.state != "confirmed"))
            ).scalar_one()
        )


# The crash tests' worker: fast ticks and heartbeats, and the release gate off (a handful of
# mixes would otherwise wait for their maximum; payouts fall due all through the kills).
FAST_WORKER: dict[str, str] = {
    "MIXHOUSE_SCAN_INTERVAL_SECONDS": "1",
    "MIXHOUSE_JOB_POLLING_INTERVAL_SECONDS": "0.1",
    "MIXHOUSE_WORKER_HEARTBEAT_SECONDS": "0.5",
    "MIXHOUSE_WORKER_STALLED_AFTER_SECONDS": "2",
    "MIXHOUSE_RECONCILE_INTERVAL_SECONDS": "2",
    "MIXHOUSE_PAYOUT_ROUND_SECONDS": "1",
    "MIXHOUSE_PRIVACY_GATE_K": "1",
}


def evm_worker_env(database_url: str, rpc_url: str, chain_id: int, mnemonic: str, **extra: str) -> dict[str, str]:
    """The environment of a ``mixhouse worker`` subprocess on an EVM node for the crash tests:
    fast ticks and heartbeats, 3 confirmations, the release gate off (payouts fall due all
    through the kills); ``extra`` adds or overrides ``MIXHOUSE_*`` variables."""
    env = dict(os.environ)
    env.update(
        {
            "MIXHOUSE_DATABASE_URL": database_url,
            "MIXHOUSE_JOBCOIN_ENABLED": "false",
            "MIXHOUSE_EVM_ENABLED": "true",
            "MIXHOUSE_EVM_RPC_URL": rpc_url,
            "MIXHOUSE_EVM_CHAIN_ID": str(chain_id),
            "MIXHOUSE_EVM_MNEMONIC": mnemonic,
            "MIXHOUSE_EVM_CONFIRMATIONS": "3",
            **FAST_WORKER,
            **extra,
        }
    )
    return env


def bitcoin_worker_env(database_url: str, bcoin: Any, mnemonic: str, **extra: str) -> dict[str, str]:
    """The environment of a ``mixhouse worker`` subprocess on the bcoin regtest node (``bcoin``:
    the :class:`tests.fixtures.bcoin.Bcoin` fixture) for the crash tests: as
    :func:`evm_worker_env`, with 2 confirmations; ``extra`` adds or overrides variables."""
    env = dict(os.environ)
    env.update(
        {
            "MIXHOUSE_DATABASE_URL": database_url,
            "MIXHOUSE_JOBCOIN_ENABLED": "false",
            "MIXHOUSE_EVM_ENABLED": "false",
            "MIXHOUSE_BITCOIN_ENABLED": "true",
            "MIXHOUSE_BITCOIN_RPC_URL": bcoin.node.rpc_url,
            "MIXHOUSE_BITCOIN_RPC_USER": bcoin.node.rpc_user,
            "MIXHOUSE_BITCOIN_RPC_PASSWORD": bcoin.node.rpc_password,
            "MIXHOUSE_BITCOIN_NETWORK": "regtest",
            "MIXHOUSE_BITCOIN_MNEMONIC": mnemonic,
            "MIXHOUSE_BITCOIN_CONFIRMATIONS": "2",
            **FAST_WORKER,
            **extra,
        }
    )
    return env


async def run_mixhouse(env: dict[str, str], *args: str, within: float = 120.0) -> tuple[int, str, str]:
    """``python -m mixhouse ARGS`` in a process of its own with ``env``: its exit code, stdout
    and stderr (the CLI tests run the real command, not the Typer app in process).

    Raises:
        TimeoutError: it did not finish within ``within`` seconds.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mixhouse",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), within)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``mixhouse worker`` in a process of its own (4 job slots), output discarded: the crash
    tests SIGKILL it and start it again."""
    return subprocess.Popen(
        [sys.executable, "-m", "mixhouse", "worker", "--concurrency", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
