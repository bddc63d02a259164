"""When a Mixhouse command ends, nothing it started is left running (issue 14, item 10).

Each test runs real ``mixhouse`` processes on an embedded PostgreSQL of its own (a temporary
``MIXHOUSE_DATA_DIR``), ends them normally, by SIGTERM or by Ctrl-C (SIGINT), and checks that
the server's postmaster is gone and that no process is left in its user list
(``pg/.handle_pids.json``). Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from mixhouse.db.embedded import embedded_users
from mixhouse.servers import free_port
from mixhouse.termination import EXIT_STATUS_SIGTERM

REPO_ROOT = Path(__file__).resolve().parents[1]
START_WITHIN = 180.0  # seconds: imports, initdb and migrations on a loaded 2-core machine
STOP_WITHIN = 60.0


def _wait(condition: Callable[[], bool], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _postmaster_pid(pgdata: Path) -> int | None:
    """PID of the server of ``pgdata`` if it runs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return pid if _alive(pid) else None


def _processes_of(pgdata: Path) -> list[int]:
    """Every live process whose command line names ``pgdata`` (the postmaster runs ``-D pgdata``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(pgdata) in cmdline and "postgres" in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _assert_nothing_left(data_dir: Path) -> None:
    pgdata = data_dir.resolve() / "pg"
    _wait(lambda: _postmaster_pid(pgdata) is None, within=STOP_WITHIN, what="the embedded PostgreSQL to stop")
    assert _processes_of(pgdata) == []
    assert [pid for pid in embedded_users(data_dir) if _alive(pid)] == []


def _uri_of(pgdata: Path, database: str = "postgres") -> str:
    socket_dir = (pgdata / "postmaster.pid").read_text().splitlines()[4]
    return f"postgresql://postgres@/{database}?host={socket_dir}"


@pytest.fixture
def command_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a ``mixhouse`` command on an embedded database in ``tmp_path``."""
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("MIXHOUSE_"):
            del env[name]
    env.update(
        {
            "MIXHOUSE_DATA_DIR": str(tmp_path / "data"),
            "MIXHOUSE_API_PORT": str(free_port()),
            "MIXHOUSE_LEDGER_PORT": str(free_port()),
            "MIXHOUSE_EVM_ENABLED": "false",
            "MIXHOUSE_BITCOIN_ENABLED": "false",
        }
    )
    yield env
    # Whatever a failed test left: no server of this test outlives it.
    pgdata = (tmp_path / "data" / "pg").resolve()
    for pid in _processes_of(pgdata):
        os.kill(pid, signal.SIGKILL)


def _mixhouse(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mixhouse", *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=STOP_WITHIN)
    return proc.returncode, out


def _answers(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    return check


def _data_dir(env: dict[str, str]) -> Path:
    return Path(env["MIXHOUSE_DATA_DIR"])


@pytest.mark.timeout(400)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_stopped_by_a_signal_stops_its_embedded_postgres(
    command_env: dict[str, str], stop_signal: signal.Signals
) -> None:
    proc = _mixhouse(command_env, "serve")
    try:
        _wait(_answers(f"http://127.0.0.1:{command_env['MIXHOUSE_API_PORT']}/health"), within=START_WITHIN, what="API")
        assert _postmaster_pid(_data_dir(command_env).resolve() / "pg") is not None
        assert proc.pid in embedded_users(_data_dir(command_env))
        proc.send_signal(stop_signal)
        code, out = _finish(proc)
    finally:
        proc.kill()
    # Not killed by the signal uvicorn re-raises (-15): unwound, with status 143 for SIGTERM
    # (uvicorn.run ends a Ctrl-C quietly, status 0).
    assert code == (EXIT_STATUS_SIGTERM if stop_signal == signal.SIGTERM else 0), out
    _assert_nothing_left(_data_dir(command_env))


@pytest.mark.timeout(400)
def test_ledger_serve_stopped_by_sigterm_stops_its_embedded_postgres(command_env: dict[str, str]) -> None:
    proc = _mixhouse(command_env, "ledger", "serve")
    try:
        url = f"http://127.0.0.1:{command_env['MIXHOUSE_LEDGER_PORT']}/api/transactions"
        _wait(_answers(url), within=START_WITHIN, what="the ledger")
        proc.send_signal(signal.SIGTERM)
        code, out = _finish(proc)
    finally:
        proc.kill()
    assert code == EXIT_STATUS_SIGTERM, out
    _assert_nothing_left(_data_dir(command_env))


@pytest.mark.timeout(400)
def test_worker_stopped_by_sigterm_unregisters_and_stops_its_embedded_postgres(command_env: dict[str, str]) -> None:
    proc = _mixhouse(command_env, "worker", "--concurrency", "2")
    pgdata = _data_dir(command_env).resolve() / "pg"

    def registered() -> bool:
        if _postmaster_pid(pgdata) is None:
            return False
        try:
            with psycopg.connect(_uri_of(pgdata), connect_timeout=2) as conn:
                row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
        except psycopg.Error:
            return False
        return row is not None and row[0] > 0

    try:
        _wait(registered, within=START_WITHIN, what="the worker to register")
        proc.send_signal(signal.SIGTERM)
        code, out = _finish(proc)
    finally:
        proc.kill()
    assert code == EXIT_STATUS_SIGTERM, out
    _assert_nothing_left(_data_dir(command_env))


@pytest.mark.timeout(400)
def test_the_demo_leaves_nothing_running(command_env: dict[str, str]) -> None:
    proc = _mixhouse(command_env, "demo")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    _assert_nothing_left(_data_dir(command_env))


@pytest.mark.timeout(400)
def test_the_demo_interrupted_by_ctrl_c_leaves_nothing_running(command_env: dict[str, str]) -> None:
    proc = _mixhouse(command_env, "demo")
    pgdata = _data_dir(command_env).resolve() / "pg"

    def mixing() -> bool:
        # The demo's mix exists once its servers and worker run.
        try:
            with psycopg.connect(_uri_of(pgdata), connect_timeout=2) as conn:
                row = conn.execute("SELECT count(*) FROM mixes").fetchone()
        except (psycopg.Error, OSError, IndexError):
            return False
        return row is not None and row[0] > 0

    try:
        _wait(mixing, within=START_WITHIN, what="the demo's mix")
        proc.send_signal(signal.SIGINT)
        _finish(proc)
    finally:
        proc.kill()
    _assert_nothing_left(_data_dir(command_env))


@pytest.mark.timeout(400)
def test_a_short_command_leaves_a_shared_server_to_its_other_user(command_env: dict[str, str]) -> None:
    """The server lives as long as its last user: a CLI command run beside ``serve`` leaves it
    running for ``serve``, and it stops when ``serve`` stops."""
    pgdata = _data_dir(command_env).resolve() / "pg"
    proc = _mixhouse(command_env, "serve")
    try:
        _wait(_answers(f"http://127.0.0.1:{command_env['MIXHOUSE_API_PORT']}/health"), within=START_WITHIN, what="API")
        postmaster = _postmaster_pid(pgdata)
        verify = subprocess.run(
            [sys.executable, "-m", "mixhouse", "audit", "verify"],
            env=command_env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=START_WITHIN,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert _postmaster_pid(pgdata) == postmaster  # still serving `serve`
        assert embedded_users(_data_dir(command_env)) == [proc.pid]
        proc.send_signal(signal.SIGTERM)
        code, out = _finish(proc)
    finally:
        proc.kill()
    assert code == EXIT_STATUS_SIGTERM, out
    _assert_nothing_left(_data_dir(command_env))


@pytest.mark.timeout(400)
def test_a_user_killed_by_sigkill_does_not_keep_the_server_forever(command_env: dict[str, str]) -> None:
    """A SIGKILLed process cannot clean up; the next command drops it from the user list and,
    being the last live user, stops the server when it ends."""
    pgdata = _data_dir(command_env).resolve() / "pg"
    proc = _mixhouse(command_env, "serve")
    try:
        _wait(_answers(f"http://127.0.0.1:{command_env['MIXHOUSE_API_PORT']}/health"), within=START_WITHIN, what="API")
    finally:
        proc.kill()
        proc.communicate(timeout=STOP_WITHIN)
    assert _postmaster_pid(pgdata) is not None  # nothing could stop it at SIGKILL
    assert proc.pid in embedded_users(_data_dir(command_env))
    verify = subprocess.run(
        [sys.executable, "-m", "mixhouse", "audit", "verify"],
        env=command_env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=START_WITHIN,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    _assert_nothing_left(_data_dir(command_env))
    assert embedded_users(_data_dir(command_env)) == []


@pytest.mark.timeout(400)
def test_a_test_session_stops_the_embedded_test_server(tmp_path: Path) -> None:
    """``make test`` without ``MIXHOUSE_TEST_DATABASE_URL`` starts an embedded server for the
    session (``<tmp>/mixhouse-test-pg``); the session's end stops it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXHOUSE_")}
    env["TMPDIR"] = str(tmp_path)
    env.pop("XDG_RUNTIME_DIR", None)  # conftest gives the session its own under TMPDIR
    data_dir = tmp_path / "mixhouse-test-pg"
    try:
        _run_inner_session(env)
    finally:
        for pid in _processes_of((data_dir / "pg").resolve()):
            os.kill(pid, signal.SIGKILL)


def _run_inner_session(env: dict[str, str]) -> None:
    data_dir = Path(env["TMPDIR"]) / "mixhouse-test-pg"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_migrations.py::test_migrated_schema_matches_tables",
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (data_dir / "pg" / "PG_VERSION").exists(), "the session did not use an embedded server"
    _assert_nothing_left(data_dir)
