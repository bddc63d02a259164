"""The crash bodies of issue 14 (item 1) against real processes.

``mixhouse serve`` and ``mixhouse ledger serve`` run as subprocesses on this test's database;
each gets the body that made the API segfault (100,000 nested arrays), a body that declares
100 MiB, and must still answer its health route afterwards. A bare interpreter that imports
what the worker imports must turn the same nesting into a ``RecursionError``, not SIGSEGV.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mixhouse.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPTH = 100_000
CRASH_MIX = b'{"asset":"JOBCOIN","withdrawal_addresses":' + b"[" * DEPTH + b"]" * DEPTH + b"}"
CRASH_SEND = b'{"fromAddress":"Alice","toAddress":"Bob","amount":' + b"[" * DEPTH + b"]" * DEPTH + b"}"
JSON = {"content-type": "application/json"}
STARTUP_SECONDS = 90  # a loaded machine needs a while to import everything and migrate


def _env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXHOUSE_")}
    env.update(
        MIXHOUSE_DATABASE_URL=database_url,
        MIXHOUSE_ENVIRONMENT="development",
        MIXHOUSE_JOBCOIN_ENABLED="true",
        MIXHOUSE_EVM_ENABLED="false",
        MIXHOUSE_BITCOIN_ENABLED="false",
        # This checkout's code, whatever the installed package points at.
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _start(args: list[str], env: dict[str, str], health_url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mixhouse", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.communicate()[0].decode(errors="replace")
            pytest.fail(f"{args} exited with {process.returncode} before listening:\n{output[-3000:]}")
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"{args} did not answer {health_url} within {STARTUP_SECONDS} s")


def _stop(process: subprocess.Popen[bytes]) -> str:
    """Stop the server (Ctrl-C) and return everything it printed."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        output = process.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()[0]
    return output.decode(errors="replace")


def _declared_100_mib(port: int, path: str) -> bytes:
    """Send only the head of a request declaring a 100 MiB body; return the first answer bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 << 20}\r\n\r\n"
        )
        sock.sendall(head.encode())
        return sock.recv(4096)


@pytest.fixture
def api(database_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str, int]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The access log is off by default; on here, to check that it redacts mix ids.
    env = _env(database_url, MIXHOUSE_API_PORT=str(port), MIXHOUSE_API_ACCESS_LOG="true")
    process = _start(["serve"], env, f"{base}/api/v1/health")
    try:
        yield process, base, port
    finally:
        if process.poll() is None:
            _stop(process)


@pytest.fixture
def ledger_server(database_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str, int]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(
        ["ledger", "serve"], _env(database_url, MIXHOUSE_LEDGER_PORT=str(port)), f"{base}/api/transactions"
    )
    try:
        yield process, base, port
    finally:
        if process.poll() is None:
            _stop(process)


def test_api_process_survives_the_crash_bodies(api: tuple[subprocess.Popen[bytes], str, int]) -> None:
    process, base, port = api
    response = httpx.post(f"{base}/api/v1/mixes", content=CRASH_MIX, headers=JSON, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "urn:mixhouse:problem:json-too-deep"
    assert process.poll() is None, "the API process died"

    started = time.monotonic()
    answer = _declared_100_mib(port, "/api/v1/mixes")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Refused on the header, not after reading (or waiting for) 100 MiB.
    assert time.monotonic() - started < 5

    assert httpx.get(f"{base}/api/v1/health", timeout=10).status_code == 200
    assert process.poll() is None

    # The access log must not reveal mix ids (the only handle on a mix).
    created = httpx.post(
        f"{base}/api/v1/mixes", json={"asset": "JOBCOIN", "withdrawal_addresses": ["alice-1"]}, timeout=30
    )
    assert created.status_code == 201, created.text
    mix_id = created.json()["id"]
    assert httpx.get(f"{base}/api/v1/mixes/{mix_id}", timeout=30).status_code == 200
    output = _stop(process)
    assert "/api/v1/mixes/{mix_id}" in output, output[-2000:]
    assert mix_id not in output


def test_ledger_process_survives_the_crash_bodies(ledger_server: tuple[subprocess.Popen[bytes], str, int]) -> None:
    process, base, port = ledger_server
    for path in ("/api/transactions", "/send"):
        response = httpx.post(f"{base}{path}", content=CRASH_SEND, headers=JSON, timeout=30)
        assert response.status_code == 400, response.text
        assert list(response.json()) == ["error"]
        assert process.poll() is None, "the ledger process died"
    answer = _declared_100_mib(port, "/api/transactions")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    response = httpx.get(f"{base}/api/transactions", timeout=10)
    assert (response.status_code, response.json()) == (200, [])


_WORKER_IMPORTS = """
import json, sys
import mixhouse.app.build, mixhouse.app.worker, mixhouse.wallets.fixtures, mixhouse.api.app
import eth_account, web3
assert sys.getrecursionlimit() <= 1000, sys.getrecursionlimit()
try:
    json.loads("[" * 100000 + "]" * 100000)
except RecursionError:
    print("RecursionError")
"""


def test_worker_imports_leave_a_sane_recursion_limit() -> None:
    """What the worker and the API import (eth-account brings py_ecc, which raises the limit to
    100,000) must leave the limit at CPython's default, so deep input raises instead of
    overflowing the C stack."""
    done = subprocess.run(
        [sys.executable, "-c", _WORKER_IMPORTS],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr.decode(errors="replace")[-2000:])
    assert done.stdout.decode().strip() == "RecursionError"
