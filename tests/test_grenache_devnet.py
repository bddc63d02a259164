"""The devnet grapes: started on free loopback ports, linked, stopped without leftovers."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import httpx
import pytest

from mixhouse.otc.devnet import DevnetError, Grapes, start_grapes


def _post(url: str, method: str, data: object) -> object:
    response = httpx.post(f"{url}/{method}", json={"rid": str(uuid.uuid4()), "data": data}, timeout=5.0)
    response.raise_for_status()
    return response.json()


def test_session_grapes_are_linked(grapes: Grapes) -> None:
    assert len(grapes.urls) == 2
    key = f"test:{uuid.uuid4().hex}"
    assert isinstance(_post(grapes.urls[0], "announce", [key, 4242]), int)
    # The fixture already waited for the DHT link, so the other grape finds it at once.
    assert _post(grapes.urls[1], "lookup", key) == ["127.0.0.1:4242"]


def test_start_grapes_stops_its_processes() -> None:
    with start_grapes(ports=None) as running:
        processes = list(running.processes)
        assert all(p.poll() is None for p in processes)
        assert all(url.startswith("http://127.0.0.1:") for url in running.urls)
    assert all(p.poll() is not None for p in processes)
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{running.urls[0]}/lookup", json={"rid": "x", "data": "k"}, timeout=2.0)


def test_start_grapes_fails_cleanly_on_a_taken_port(grapes: Grapes) -> None:
    taken = (grapes.dht_ports[0], int(grapes.urls[0].rsplit(":", 1)[1]))
    with pytest.raises(DevnetError, match="did not start"), start_grapes(ports=[taken], timeout_s=10.0):
        pass


@pytest.mark.parametrize(
    ("argv", "stop", "status"),
    [
        # The Typer app of mixhouse.otc.devnet by itself, stopped by Ctrl-C.
        (["-c", "from mixhouse.otc.devnet import devnet_app; devnet_app(prog_name='devnet')"], signal.SIGINT, 0),
        # `mixhouse devnet grapes`, stopped by SIGTERM (the CLI turns it into a clean exit, 143).
        (["-m", "mixhouse", "devnet"], signal.SIGTERM, 128 + signal.SIGTERM),
    ],
    ids=["devnet_app-ctrl-c", "mixhouse-sigterm"],
)
def test_grapes_command_runs_until_stopped(argv: list[str], stop: signal.Signals, status: int) -> None:
    # In a process of its own: prints the grapes, serves them, stops them when told to.
    proc = subprocess.Popen(
        [sys.executable, *argv, "grapes", "--free-ports"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]  # two grapes, then "linked"
        assert "grapes linked" in lines[2], lines
        urls = [line.split()[2] for line in lines[:2]]
        for url in urls:
            assert isinstance(_post(url, "lookup", "k"), list)
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for url in urls:
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{url}/lookup", json={"rid": "x", "data": "k"}, timeout=2.0)
