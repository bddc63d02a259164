"""A local Bitcoin regtest node for development, the demo and tests.

:class:`RegtestNode` runs ``regtest_node.js`` (next to this file) with Node.js: bcoin 1.0.2
made to behave like Bitcoin Core's regtest (Core address prefixes ``bcrt1...``, segwit and
CSV active from height 0, Core-style RPC answers; the script's header lists every fix).
bcoin comes from the npm packages declared in the repository's ``package.json``
(``npm install``, or ``make install``); :func:`find_node_modules` locates them.

The node keeps its chain in memory unless a data directory is given, listens on 127.0.0.1
only, and requires HTTP Basic auth with a random API key generated per start
(:attr:`RegtestNode.rpc_password`; the user name is ignored).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

LAUNCHER = Path(__file__).resolve().with_name("regtest_node.js")
READY_PREFIX = "mixhouse-regtest ready"
RPC_USER = "mixhouse"
START_TIMEOUT_SECONDS = 30.0


def find_node_binary() -> Path:
    """Path of the ``node`` (Node.js) executable: ``$MIXHOUSE_NODE`` or ``node`` on PATH.

    Raises:
        FileNotFoundError: neither exists.
    """
    override = os.environ.get("MIXHOUSE_NODE")
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"MIXHOUSE_NODE={override} is not a file")
        return path
    found = shutil.which("node")
    if found is None:
        raise FileNotFoundError("Node.js ('node') is not on PATH; install Node.js 20 or set MIXHOUSE_NODE")
    return Path(found)


def find_node_modules() -> Path:
    """The ``node_modules`` directory holding bcoin: ``$MIXHOUSE_NODE_MODULES``, else the
    first ``node_modules/bcoin`` found walking up from this file or from the working directory.

    Raises:
        FileNotFoundError: bcoin is not installed (run ``npm install`` in the repository).
    """
    override = os.environ.get("MIXHOUSE_NODE_MODULES")
    candidates: list[Path] = [Path(override)] if override else []
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        candidates.extend(directory / "node_modules" for directory in (start, *start.parents))
    for candidate in candidates:
        if (candidate / "bcoin" / "package.json").is_file():
            return candidate
    raise FileNotFoundError("bcoin is not installed: run `npm install` in the mixhouse repository")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RegtestNode:
    """A running bcoin regtest node (a child process), Core-compatible over JSON-RPC.

    Use :meth:`start` (or ``with RegtestNode.start() as node``), :meth:`stop` at the end.

    Attributes:
        port: the RPC port on 127.0.0.1.
        rpc_url: ``http://127.0.0.1:PORT/``.
        rpc_user: HTTP Basic user name (ignored by the node; for clients that require one).
        rpc_password: the API key (HTTP Basic password).
        process: the Node.js process.
    """

    def __init__(self, process: subprocess.Popen[str], port: int, api_key: str) -> None:
        self.process = process
        self.port = port
        self.rpc_url = f"http://127.0.0.1:{port}/"
        self.rpc_user = RPC_USER
        self.rpc_password = api_key
        self._output: deque[str] = deque(maxlen=200)
        self._drainer: threading.Thread | None = None

    @classmethod
    def start(
        cls,
        port: int | None = None,
        *,
        data_dir: Path | None = None,
        api_key: str | None = None,
        timeout: float = START_TIMEOUT_SECONDS,
    ) -> RegtestNode:
        """Start the launcher and wait for its ready line.

        Args:
            port: RPC port on 127.0.0.1; ``None`` picks a free one (retried on a new port
                up to 3 times if it was taken meanwhile).
            data_dir: keep the chain there (created if missing); ``None``: in memory.
            api_key: the RPC password; ``None`` generates a random one.
            timeout: seconds to wait for the node to listen.

        Raises:
            FileNotFoundError: Node.js or bcoin is missing.
            RuntimeError: the node exited or did not get ready in time (its output is in
                the message).
        """
        node_bin = find_node_binary()
        node_modules = find_node_modules()
        key = api_key or secrets.token_hex(16)
        attempts = 1 if port is not None else 3
        last_error = "no attempt"
        for _attempt in range(attempts):
            chosen = port if port is not None else free_port()
            command = [str(node_bin), str(LAUNCHER), "--port", str(chosen), "--api-key", key]
            if data_dir is not None:
                data_dir.mkdir(parents=True, exist_ok=True)
                command += ["--data-dir", str(data_dir)]
            env = dict(os.environ)
            env["NODE_PATH"] = str(node_modules)
            process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            node = cls(process, chosen, key)
            if node._wait_ready(timeout):
                return node
            last_error = "\n".join(node._output) or f"exit status {process.returncode}"
            node.stop()
        raise RuntimeError(f"the bcoin regtest node did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        """Read output lines until the ready line (then drain in a thread); ``False`` if the
        process ended or ``timeout`` passed first."""
        stream = self.process.stdout
        assert stream is not None
        ready = threading.Event()

        def drain(out: IO[str]) -> None:
            for line in out:
                self._output.append(line.rstrip("\n"))
                if line.startswith(READY_PREFIX):
                    ready.set()

        self._drainer = threading.Thread(target=drain, args=(stream,), daemon=True)
        self._drainer.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready.wait(0.05):
                return True
            if self.process.poll() is not None:
                self._drainer.join(timeout=1.0)
                return ready.is_set()
        return False

    @property
    def output(self) -> list[str]:
        """The node's last output lines (stdout and stderr), for diagnostics."""
        return list(self._output)

    def rpc_sync(self, method: str, *params: Any, timeout: float = 30.0) -> Any:
        """One blocking JSON-RPC call; returns ``result``.

        Raises:
            RuntimeError: the node answered an error.
            httpx.HTTPError: the node is unreachable.
        """
        response = httpx.post(
            self.rpc_url,
            json={"jsonrpc": "1.0", "id": 1, "method": method, "params": list(params)},
            auth=(self.rpc_user, self.rpc_password),
            timeout=timeout,
        )
        body = response.json()
        if body.get("error") is not None:
            raise RuntimeError(f"{method} failed: {body['error']}")
        return body["result"]

    def mine(self, blocks: int, address: str) -> list[str]:
        """Mine ``blocks`` blocks whose coinbase pays ``address`` (``generatetoaddress``);
        returns their hashes. Coinbase outputs are spendable after 100 more blocks."""
        hashes: list[str] = self.rpc_sync("generatetoaddress", blocks, address)
        return hashes

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the node (SIGTERM, SIGKILL after ``timeout`` seconds); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=1.0)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> RegtestNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_devnet(port: int, *, data_dir: Path | None = None) -> None:
    """Run a regtest node in the foreground until Ctrl-C (``mixhouse devnet bitcoin``).

    Prints the RPC URL and credentials. Mine with the RPC ``generatetoaddress N ADDRESS``.

    Raises:
        FileNotFoundError: Node.js or bcoin is missing.
        RuntimeError: the node did not start.
    """
    node = RegtestNode.start(port, data_dir=data_dir)
    # SIGTERM (service managers, `kill`) stops the node too, like Ctrl-C.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    print(f"Bitcoin regtest (bcoin) on {node.rpc_url}")
    print(f"RPC user {node.rpc_user!r} (any), password {node.rpc_password}")
    print("Ctrl-C stops it.")
    try:
        node.process.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        node.stop()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
