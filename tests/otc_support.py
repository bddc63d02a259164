"""Helpers of the OTC node tests: fresh databases per node, nodes in this process or as
processes, and waiting on a condition with a deadline (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from mixhouse.db.engine import with_database
from mixhouse.otc.node import NodeSettings
from mixhouse.otc.runtime import NodeConfig, RunningNode, running_node

# Short timers so that expiry and anti-entropy happen within a test; still far above a
# loaded machine's scheduling delays.
FAST = NodeSettings(
    ttl_ms=6_000,
    refresh_every_s=1.0,
    anti_entropy_every_s=1.0,
    outbox_every_s=0.2,
    sweep_every_s=1.0,
    request_timeout_s=10.0,
)

BTC = 10**8
PRICE = 60_000 * 10**6  # 60,000 USDT per BTC, in micro-USDT


async def wait_until(check: Callable[[], Awaitable[Any]], *, timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@contextmanager
def fresh_databases(pg_server_url: str, template_db: str, count: int) -> Iterator[list[str]]:
    """``count`` fresh migrated databases (one per node), dropped after."""
    names = [f"mh_otc_{uuid.uuid4().hex[:12]}" for _ in range(count)]
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield [with_database(pg_server_url, n) for n in names]
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def start_nodes(
    stack: AsyncExitStack,
    grape_urls: list[str],
    database_urls: list[str],
    tmp_path: Path,
    *,
    settings: NodeSettings = FAST,
    api: bool = False,
) -> list[RunningNode]:
    """Start one in-process node per database, alternating grapes (with an HTTP API on a free
    port if ``api``); stopped by ``stack``."""
    nodes = []
    for i, url in enumerate(database_urls):
        grape = grape_urls[i % len(grape_urls)]
        config = NodeConfig(
            grape_url=grape,
            other_grape_urls=[u for u in grape_urls if u != grape],
            data_dir=tmp_path / f"node{i}",
            database_url=url,
            settings=settings,
            api_port=0 if api else None,
        )
        nodes.append(await stack.enter_async_context(running_node(config)))
    return nodes


class NodeProcess:
    """``mixhouse otc node`` as a child process (its own key dir and database)."""

    def __init__(self, *, grape_urls: list[str], database_url: str, data_dir: Path, api_port: int) -> None:
        self.grape_urls = grape_urls
        self.database_url = database_url
        self.data_dir = data_dir
        self.api_port = api_port
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "node.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MIXHOUSE_OTC_TTL_MS": str(FAST.ttl_ms),
            "MIXHOUSE_OTC_REFRESH_EVERY_S": str(FAST.refresh_every_s),
            "MIXHOUSE_OTC_ANTI_ENTROPY_EVERY_S": str(FAST.anti_entropy_every_s),
            "MIXHOUSE_OTC_OUTBOX_EVERY_S": str(FAST.outbox_every_s),
        }
        args = [sys.executable, "-m", "mixhouse", "otc", "node", "--grape", self.grape_urls[0]]
        for other in self.grape_urls[1:]:
            args += ["--other-grape", other]
        args += [
            "--api-port",
            str(self.api_port),
            "--database-url",
            self.database_url,
            "--data-dir",
            str(self.data_dir),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    async def ready(self, timeout_s: float = 90.0) -> None:
        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                async with httpx.AsyncClient(trust_env=False) as client:
                    return (await client.get(self.api_url + "/health", timeout=2)).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(up, timeout_s=timeout_s, what=f"node on {self.api_url}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
