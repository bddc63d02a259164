"""HTTP API load test: mix status reads, ``/health`` and mix creation, over loopback.

What it does, bounded in time and request count:

1. a fresh database on ``MIXHOUSE_BENCH_DATABASE_URL`` (a maintenance DB URI of a server we may
   create databases on) or on an embedded PostgreSQL, migrated;
2. a real ``python -m mixhouse serve`` process on a free loopback port (Jobcoin only; the
   environment's ``MIXHOUSE_API_WORKERS`` applies, ``--api-workers`` overrides it);
3. ``--mixes`` mixes created through ``POST /api/v1/mixes`` by one sequential client (timed),
   half of them then given a pooled deposit, its sweep and three confirmed payouts, so that
   a status read returns rows from all three tables;
4. for each connection count (16 and 64): ``GET /api/v1/mixes/{id}`` over those ids in turn,
   ``GET /api/v1/health`` and ``POST /api/v1/mixes``, each ``--duration`` seconds after a one
   second warm-up, ``--runs`` times; the median run (by req/s) is printed with its p50 and
   p99 latency and the count of failed requests (socket errors, timeouts, wrong status).

The load comes from ``wrk`` (Debian package ``wrk``; ``make bench-tools`` installs it), one
thread, which on this 2-core machine takes a fraction of a core. Without wrk a multi-process
Python generator is used instead (asyncio, raw HTTP/1.1 keep-alive), and the output says so:
it needs more CPU per request than wrk, which the server then does not get, so its figures
are lower bounds.

Usage: ``python -m benchmarks.api [--mixes 400] [--duration 5] [--runs 3] [--connections 16,64]
[--api-workers N] [--generator auto|wrk|python] [--no-status-cache]``

The status reads come from the API's status cache (:mod:`mixhouse.api.fast_status`) after
the first pass over the ids, as a polling client's do between two changes of its mix;
``--no-status-cache`` measures the database path every read takes on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

from benchmarks.run import _percentile, _server_url
from mixhouse.db.engine import with_database
from mixhouse.db.migrate import upgrade
from mixhouse.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 90.0
WARMUP_SECONDS = 1.0
COIN = 10**8
HEALTH_PATH = "/api/v1/health"
MIXES_PATH = "/api/v1/mixes"
CREATE_BODY = json.dumps({"asset": "JOBCOIN", "withdrawal_addresses": ["bench-a", "bench-b", "bench-c"]})


@dataclass(frozen=True, slots=True)
class Scenario:
    """What to load: a label, the method, the paths taken in turn, the JSON body (or ``None``)."""

    label: str
    method: str
    paths: list[str]
    body: str | None = None


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One load run: requests completed, wall time (s), latencies (ms) and failures."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failures: int
    server_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU time per request, in ms."""
        return self.server_cpu_s * 1000 / self.requests if self.requests else 0.0


# -- wrk ------------------------------------------------------------------------------------

_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "failures": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def _wrk_script(scenario: Scenario) -> str:
    lines = ["local paths = {" + ",".join(json.dumps(p) for p in scenario.paths) + "}", "local i = 0"]
    if scenario.body is not None:
        lines += [f"wrk.method = {json.dumps(scenario.method)}", f"wrk.body = {json.dumps(scenario.body)}"]
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    lines += [
        "request = function()",
        "  i = i + 1",
        f"  return wrk.format({json.dumps(scenario.method)}, paths[(i % #paths) + 1])",
        "end",
    ]
    # wrk counts a non-2xx/3xx answer as a status error; the POST's 201 is a success.
    return "\n".join(lines) + _WRK_DONE


def _run_wrk(wrk: str, base: str, scenario: Scenario, *, connections: int, seconds: float) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_wrk_script(scenario))
    try:
        proc = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "5s",
                "-s",
                script.name,
                base,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
        )
    finally:
        Path(script.name).unlink()
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON "))
    data = json.loads(line.removeprefix("WRKJSON "))
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        failures=data["failures"],
    )


# -- the Python fallback --------------------------------------------------------------------


async def _py_connection(
    host: str, port: int, request: bytes, paths: Sequence[str], *, start: int, ok: int, until: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    reader, writer = await asyncio.open_connection(host, port)
    i = start
    try:
        while time.monotonic() < until:
            i += 1
            t0 = time.perf_counter()
            writer.write(request.replace(b"{path}", paths[i % len(paths)].encode()))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - t0) * 1000)
            if int(head.split(b" ", 2)[1]) != ok:
                failures += 1
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        failures += 1
    finally:
        writer.close()
    return latencies, failures


def _py_process(args: tuple[str, int, bytes, list[str], int, int, int, float]) -> tuple[list[float], int]:
    host, port, request, paths, connections, offset, ok, seconds = args

    async def _all() -> tuple[list[float], int]:
        until = time.monotonic() + seconds
        done = await asyncio.gather(
            *(
                _py_connection(host, port, request, paths, start=offset + c * 7919, ok=ok, until=until)
                for c in range(connections)
            )
        )
        return [x for lat, _ in done for x in lat], sum(f for _, f in done)

    return asyncio.run(_all())


def _run_python(base: str, scenario: Scenario, *, connections: int, seconds: float) -> LoadResult:
    method, paths, body = scenario.method, scenario.paths, scenario.body
    host, port = base.removeprefix("http://").split(":")
    head = f"{method} {{path}} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n"
    request = (head + "\r\n" + (body or "")).encode()
    ok = 201 if method == "POST" else 200
    procs = min(2, connections)
    shares = [connections // procs + (1 if p < connections % procs else 0) for p in range(procs)]
    jobs = [(host, int(port), request, list(paths), n, p * 100_003, ok, seconds) for p, n in enumerate(shares)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_py_process, jobs)
    elapsed = time.perf_counter() - t0
    latencies = sorted(x for lat, _ in parts for x in lat)
    return LoadResult(
        requests=len(latencies),
        seconds=min(elapsed, seconds),
        p50_ms=statistics.median(latencies) if latencies else 0.0,
        p99_ms=_percentile(latencies, 0.99) if latencies else 0.0,
        failures=sum(f for _, f in parts),
    )


def _load(
    wrk: str | None, base: str, scenario: Scenario, *, connections: int, seconds: float, server: int
) -> LoadResult:
    cpu = _cpu_seconds(server)
    if wrk is not None:
        result = _run_wrk(wrk, base, scenario, connections=connections, seconds=seconds)
    else:
        result = _run_python(base, scenario, connections=connections, seconds=seconds)
    return dataclasses.replace(result, server_cpu_s=_cpu_seconds(server) - cpu)


def _cpu_seconds(root: int) -> float:
    """CPU time (user + system, s) used so far by process ``root`` and its descendants (Linux
    ``/proc``; 0 elsewhere). Per request, it is what the server costs whatever else runs."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    total, frontier = 0.0, {root}
    while frontier:
        total += sum(stats[pid][1] for pid in frontier if pid in stats)
        frontier = {pid for pid, (ppid, _) in stats.items() if ppid in frontier}
    return total


# -- the server and its data ----------------------------------------------------------------


def _start_server(
    url: str, port: int, api_workers: int | None, log: Path, *, status_cache: bool = True
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXHOUSE_") or k == "MIXHOUSE_API_WORKERS"}
    env.update(
        MIXHOUSE_DATABASE_URL=url,
        MIXHOUSE_API_HOST="127.0.0.1",
        MIXHOUSE_API_PORT=str(port),
        MIXHOUSE_JOBCOIN_ENABLED="true",
        MIXHOUSE_EVM_ENABLED="false",
        MIXHOUSE_BITCOIN_ENABLED="false",
        # One client creates thousands of mixes here: the per-client rate limit and the cap on
        # open mixes would answer 429 and measure the limiter, not the creation path.
        MIXHOUSE_MIX_CREATE_RATE_PER_CLIENT="0",
        MIXHOUSE_MAX_OPEN_MIXES="0",
        MIXHOUSE_API_STATUS_CACHE="true" if status_cache else "false",
        PYTHONPATH=str(ROOT),
    )
    if api_workers is not None:
        env["MIXHOUSE_API_WORKERS"] = str(api_workers)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mixhouse", "serve"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mixhouse serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{HEALTH_PATH}", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"mixhouse serve did not answer within {STARTUP_SECONDS} s")


def _stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _create_mixes(base: str, count: int) -> tuple[list[str], float]:
    """``count`` mixes created one after the other; their ids and the rate (mixes/s)."""
    ids = []
    with httpx.Client(base_url=base, timeout=10) as client:
        t0 = time.perf_counter()
        for i in range(count):
            answer = client.post(
                MIXES_PATH, json={"asset": "JOBCOIN", "withdrawal_addresses": [f"seed{i}-x", f"seed{i}-y"]}
            )
            answer.raise_for_status()
            ids.append(answer.json()["id"])
        rate = count / (time.perf_counter() - t0)
    return ids, rate


def _add_history(url: str, mix_ids: Sequence[str]) -> None:
    """A pooled deposit, its confirmed sweep and three confirmed payouts for each mix."""
    at = datetime.now(UTC)
    with psycopg.connect(url) as conn:
        for n, mix_id in enumerate(mix_ids):
            address = conn.execute("SELECT deposit_address FROM mixes WHERE id = %s", (mix_id,)).fetchone()
            assert address is not None
            deposit_id = conn.execute(
                "INSERT INTO deposits (mix_id, asset, chain_ref, deposit_address, from_addresses, amount, state,"
                " confirmations, fee_amount, network_fee_amount, payout_total, pooled_at, quantum, released_at,"
                " anonymity_set, created_at, updated_at)"
                " VALUES (%s, 'JOBCOIN', %s, %s, '[\"bench-sender\"]', %s, 'pooled', 1, %s, 0, %s, %s, %s, %s, 7,"
                " %s, %s) RETURNING id",
                (mix_id, f"bench:{n}", address[0], 10 * COIN, 20_000_000, 980_000_000, at, 10**7, at, at, at),
            ).fetchone()
            assert deposit_id is not None
            rows = [("sweep", address[0], "mixhouse-pool", 10 * COIN)] + [
                ("payout", "mixhouse-pool", f"seed-out-{n}-{k}", amount)
                for k, amount in enumerate((500_000_000, 200_000_000, 280_000_000))
            ]
            for kind, source, target, amount in rows:
                conn.execute(
                    "INSERT INTO sends (kind, asset, mix_id, deposit_id, from_address, to_address, amount, due_at,"
                    " state, confirmed_at, created_at, updated_at)"
                    " VALUES (%s, 'JOBCOIN', %s, %s, %s, %s, %s, %s, 'confirmed', %s, %s, %s)",
                    (kind, mix_id, deposit_id[0], source, target, amount, at, at, at, at),
                )
        conn.execute("ANALYZE")


# -- the benchmark --------------------------------------------------------------------------


def bench(
    *,
    n_mixes: int,
    seconds: float,
    runs: int,
    connections: Sequence[int],
    api_workers: int | None,
    generator: str,
    status_cache: bool = True,
) -> None:
    """Run the benchmark and print the figures (``status_cache`` off: every status read goes
    to the database, the cost of a cache miss)."""
    wrk = shutil.which("wrk")
    if generator == "wrk" and wrk is None:
        raise SystemExit("wrk is not installed: run `make bench-tools` (Debian package wrk) or pass --generator python")
    use_wrk = wrk is not None and generator != "python"
    server = _server_url()
    name = f"mh_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"{name}-serve.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        upgrade(url)
        process = _start_server(url, port, api_workers, log, status_cache=status_cache)
        ids, create_rate = _create_mixes(base, n_mixes)
        _add_history(url, ids[: n_mixes // 2])
        workers = api_workers if api_workers is not None else os.environ.get("MIXHOUSE_API_WORKERS", "default")
        if use_wrk:
            print(f"load generator: wrk ({wrk}), 1 thread, keep-alive; closed loop")
        else:
            why = "wrk not found (make bench-tools installs it)" if wrk is None else "--generator python"
            print(f"load generator: Python, 2 processes, asyncio keep-alive ({why}); it competes with the server")
            print("  for the 2 cores, so these figures are lower bounds")
        print(
            f"server: python -m mixhouse serve, MIXHOUSE_API_WORKERS={workers}, {os.cpu_count()} cores, "
            f"status cache {'on' if status_cache else 'off'}; "
            f"{n_mixes} mixes, half with 1 deposit + 1 sweep + 3 payouts; creation rate limit off; "
            f"median of {runs} runs of {seconds:g} s; load average before: {os.getloadavg()[0]:.1f}"
        )
        print(f"mix creation, one sequential client: {create_rate:.0f} mixes/s")
        mix_paths = [f"{MIXES_PATH}/{i}" for i in ids]
        scenarios = [
            Scenario("GET  /api/v1/mixes/{id}", "GET", mix_paths),
            Scenario("GET  /api/v1/health", "GET", [HEALTH_PATH]),
            Scenario("POST /api/v1/mixes", "POST", [MIXES_PATH], CREATE_BODY),
        ]
        for conns in connections:
            for scenario in scenarios:
                _load(
                    wrk if use_wrk else None,
                    base,
                    scenario,
                    connections=conns,
                    seconds=WARMUP_SECONDS,
                    server=process.pid,
                )
                results = sorted(
                    (
                        _load(
                            wrk if use_wrk else None,
                            base,
                            scenario,
                            connections=conns,
                            seconds=seconds,
                            server=process.pid,
                        )
                        for _ in range(runs)
                    ),
                    key=lambda r: r.rate,
                )
                mid = results[len(results) // 2]
                spread = ", ".join(f"{r.rate:.0f}" for r in results)
                print(
                    f"{scenario.label:26} c={conns:<3} {mid.rate:7.0f} req/s  p50 {mid.p50_ms:6.1f} ms  "
                    f"p99 {mid.p99_ms:6.1f} ms  failed {mid.failures}  server CPU {mid.cpu_ms_per_request:.2f} ms/req"
                    f"  (runs: {spread} req/s)"
                )
    finally:
        if process is not None:
            _stop_server(process)
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    log.unlink(missing_ok=True)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixes", type=int, default=400)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--api-workers", type=int, default=None)
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--no-status-cache", action="store_true", help="serve every status read from the database (cache misses)"
    )
    args = parser.parse_args()
    bench(
        n_mixes=args.mixes,
        seconds=args.duration,
        runs=args.runs,
        connections=[int(c) for c in args.connections.split(",")],
        api_workers=args.api_workers,
        generator=args.generator,
        status_cache=not args.no_status_cache,
    )


if __name__ == "__main__":
    main()
