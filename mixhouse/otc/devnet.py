"""Two local Grape DHT nodes for the OTC network: ``mixhouse devnet grapes``, the demo and tests.

The Bitfinex challenge runs two grapes that bootstrap from each other::

    grape --dp 20001 --aph 30001 --bn 127.0.0.1:20002
    grape --dp 20002 --aph 40001 --bn 127.0.0.1:20001

:func:`start_grapes` starts exactly those (or the same pair on free ports), bound to 127.0.0.1
(``-b``; without it a grape listens on every interface), from npm ``grenache-grape@0.9.12``
installed by the repository's ``package.json``. 0.9.12's defaults expire announced peers after
``dht_peer_maxAge`` = 120 s and cap Grape API bodies at 8192 bytes; 1.0.0's CLI overrides both
with ``undefined`` (see ../shared/TOOLCHAIN.md, "Grenache"). The context manager returns once
each grape answers its HTTP API *and* a key announced on one is visible by lookup on the other,
so the DHT between them is up; on exit both processes are stopped (SIGTERM, then SIGKILL).

Source: https://github.com/bitcoinfinex/grenache-grape (README, ``bin/grape``, ``lib/Grape.js``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from mixhouse.errors import MixhouseError
from mixhouse.termination import exit_cleanly_on_sigterm

#: (DHT UDP port, HTTP API TCP port) of each grape, as the challenge prescribes.
CHALLENGE_PORTS: tuple[tuple[int, int], ...] = ((20001, 30001), (20002, 40001))
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


class DevnetError(MixhouseError):
    """The local grapes could not be found, started or reached."""


@dataclass(frozen=True)
class Grapes:
    """Running grapes.

    Attributes:
        urls: HTTP API base URL of each grape, ``http://127.0.0.1:<aph>``, in start order.
        dht_ports: the UDP DHT port of each grape, same order.
        processes: the ``node`` processes (empty when the grapes were not started by us).
    """

    urls: list[str]
    dht_ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)


def find_grape_script() -> tuple[Path, Path]:
    """``(node executable, grenache-grape's bin/grape.js script)``.

    ``node`` is ``$MIXHOUSE_NODE`` or the one on PATH; the script is looked up in
    ``$MIXHOUSE_NODE_MODULES`` or the first ``node_modules`` walking up from this file or the
    working directory.

    Raises:
        DevnetError: Node.js or grenache-grape is not installed (``make install``).
    """
    node = os.environ.get("MIXHOUSE_NODE") or shutil.which("node")
    if not node or not Path(node).is_file():
        raise DevnetError("Node.js ('node') is not on PATH; install Node.js 20 or set MIXHOUSE_NODE")
    override = os.environ.get("MIXHOUSE_NODE_MODULES")
    candidates: list[Path] = [Path(override)] if override else []
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        candidates.extend(directory / "node_modules" for directory in (start, *start.parents))
    for candidate in candidates:
        script = candidate / "grenache-grape" / "bin" / "grape.js"
        if script.is_file():
            return Path(node), script
    raise DevnetError("npm grenache-grape is not installed: run `make install` (or `npm install`) in the repository")


def _free_port(kind: socket.SocketKind, host: str) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _free_port_pairs(count: int, host: str) -> list[tuple[int, int]]:
    """``count`` (UDP, TCP) pairs that were free a moment ago, all distinct."""
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    while len(pairs) < count:
        dht, api = _free_port(socket.SOCK_DGRAM, host), _free_port(socket.SOCK_STREAM, host)
        if dht in used or api in used or dht == api:
            continue
        used.update((dht, api))
        pairs.append((dht, api))
    return pairs


def _grape_call(client: httpx.Client, url: str, method: str, data: Any) -> Any:
    response = client.post(f"{url}/{method}", json={"rid": str(uuid.uuid4()), "data": data})
    response.raise_for_status()
    return response.json()


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _probe_once(client: httpx.Client, urls: Sequence[str], host: str, probe: str) -> str | None:
    """Announce ``probe`` through each grape (the port is only a marker: nobody calls it),
    then require every grape to list every marker: the DHT links all ways. None when so, else
    why not."""
    for index, url in enumerate(urls):
        reply = _grape_call(client, url, "announce", [probe, 1 + index])
        if not isinstance(reply, int):
            return f"{url} announce answered {reply!r}"
    wanted = {f"{host}:{1 + index}" for index in range(len(urls))}
    for url in urls:
        found = _grape_call(client, url, "lookup", probe)
        if not isinstance(found, list) or not wanted <= set(found):
            return f"{url} lookup answered {found!r}"
    return None


def _owns_listener(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the TCP socket listening on ``port`` (Linux ``/proc``).

    Without it a grape that failed to bind a port someone else's grape holds would look ready:
    the other grape answers on that URL. True where there is no ``/proc``; False while the
    process's entries cannot be read (it is starting or exiting: asked again at the next poll).
    """
    if not Path("/proc/self/fd").is_dir():
        return True
    try:
        inodes: set[str] = set()
        for table in ("tcp", "tcp6"):
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 the socket inode.
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(fields[9])
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except (OSError, IndexError, ValueError):
        return False
    links: set[str] = set()
    for fd in fds:
        # A starting process opens and closes descriptors as we read them: one that is gone
        # is not the listener (counting the whole check as "cannot tell" let a grape that never
        # bound its port pass for ready).
        with suppress(OSError):
            links.add(str(fd.readlink()))
    return any(f"socket:[{inode}]" in links for inode in inodes)


def _wait_connected(grapes: Grapes, host: str, deadline: float) -> str | None:
    """Poll until every grape answers and sees what the others announce; None when ready,
    else the last reason it was not."""
    probe = f"mixhouse:devnet:probe:{uuid.uuid4().hex}"
    last = "no answer yet"
    delay = 0.02
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            dead = [p.args for p in grapes.processes if p.poll() is not None]
            if dead:
                return f"a grape exited: {dead}"
            try:
                reason = _probe_once(client, grapes.urls, host, probe)
            except (httpx.HTTPError, ValueError) as exc:
                reason = str(exc) or type(exc).__name__
            if reason is None:
                foreign = [
                    url for url, p in zip(grapes.urls, grapes.processes, strict=True)
                    if not _owns_listener(p.pid, int(url.rsplit(":", 1)[1]))
                ]  # fmt: skip
                # A grape that exited meanwhile owns nothing (its /proc entries cannot tell).
                if not foreign and all(p.poll() is None for p in grapes.processes):
                    return None
                reason = f"another process answers on {foreign}"
            last = reason
            time.sleep(delay)  # a poll interval under a deadline, not a wait for an outcome
            delay = min(delay * 2, 0.25)
    return last


@contextmanager
def start_grapes(
    *,
    ports: Sequence[tuple[int, int]] | None = CHALLENGE_PORTS,
    host: str = "127.0.0.1",
    timeout_s: float = START_TIMEOUT_S,
    peer_max_age_ms: int | None = None,
    log_dir: Path | None = None,
) -> Iterator[Grapes]:
    """Start grapes that bootstrap from each other, yield them once they are linked, stop them.

    Args:
        ports: one ``(dht_udp_port, api_tcp_port)`` per grape; ``None`` picks free ports for
            two grapes (tests, so parallel sessions never collide; retried on a lost race).
        host: the address every grape binds (``-b``) and announces from.
        timeout_s: give up starting after this many seconds.
        peer_max_age_ms: ``--dpa`` (how long an announce lives); grape's default 120 000.
        log_dir: where each grape's stdout/stderr go (``grape-<dht port>.log``); default a
            temporary file per grape, shown in the error when one fails to start.

    Raises:
        DevnetError: Node.js or grenache-grape is missing, or the grapes did not link in time.
    """
    node, script = find_grape_script()
    attempts = 3 if ports is None else 1
    last_error = "no attempt"
    for _attempt in range(attempts):
        pairs = list(ports) if ports is not None else _free_port_pairs(2, host)
        processes: list[subprocess.Popen[bytes]] = []
        logs = []
        try:
            for index, (dht_port, api_port) in enumerate(pairs):
                others = ",".join(f"{host}:{dht}" for i, (dht, _api) in enumerate(pairs) if i != index)
                argv = [str(node), str(script), "--dp", str(dht_port), "--aph", str(api_port)]
                argv += ["--bn", others, "-b", host]
                if peer_max_age_ms is not None:
                    argv += ["--dpa", str(peer_max_age_ms)]
                if log_dir is not None:
                    log: Any = (log_dir / f"grape-{dht_port}.log").open("wb")
                else:
                    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
                logs.append(log)
                # A session of its own: a Ctrl-C in the terminal reaches us, and we stop them.
                # argv holds our own paths and integers only.
                process = subprocess.Popen(  # noqa: S603
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
                processes.append(process)
            grapes = Grapes(
                urls=[f"http://{host}:{api}" for _dht, api in pairs],
                dht_ports=[dht for dht, _api in pairs],
                processes=processes,
            )
            reason = _wait_connected(grapes, host, time.monotonic() + timeout_s)
            if reason is None:
                yield grapes
                return
            last_error = reason
            for log in logs:
                with suppress(OSError, ValueError):
                    log.seek(0)
                    last_error += "\n" + log.read().decode(errors="replace")[-2000:]
        finally:
            _stop(processes)
            for log in logs:
                log.close()
    raise DevnetError(f"grapes did not start: {last_error}")


devnet_app = typer.Typer(help="Local development networks.", no_args_is_help=True)


@devnet_app.callback()
def _devnet() -> None:
    """Local development networks (a group even with one command: ``devnet grapes``)."""


@devnet_app.command("grapes")
def grapes_command(
    free_ports: Annotated[
        bool, typer.Option("--free-ports", help="Pick free ports instead of the challenge's.")
    ] = False,
    peer_max_age_ms: Annotated[
        int | None, typer.Option("--dpa", help="How long an announce lives in the DHT, ms (grape: 120000).")
    ] = None,
) -> None:
    """Run the challenge's two Grape DHT nodes on 127.0.0.1 (20001/30001 and 20002/40001) until Ctrl-C."""
    exit_cleanly_on_sigterm()  # SIGTERM unwinds too (exit 143), stopping the grapes on the way
    try:
        with start_grapes(ports=None if free_ports else CHALLENGE_PORTS, peer_max_age_ms=peer_max_age_ms) as grapes:
            for url, dht in zip(grapes.urls, grapes.dht_ports, strict=True):
                typer.echo(f"grape: API {url}  DHT udp 127.0.0.1:{dht}")
            typer.echo("grapes linked; Ctrl-C stops them")
            try:
                while all(p.poll() is None for p in grapes.processes):
                    # Waiting for Ctrl-C or a grape's death; nothing else to do meanwhile.
                    time.sleep(0.5)
                typer.echo("a grape exited", err=True)
                raise typer.Exit(code=1)
            except KeyboardInterrupt:
                typer.echo("stopping grapes")
    except DevnetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
