"""``mixhouse serve``: the HTTP API in one uvicorn process or in ``settings.api_workers``.

One Python process serves about one core's worth of requests (the event loop, FastAPI and
the JSON work are single-threaded), so on a machine with several cores the API runs several
uvicorn workers sharing one listening socket (uvicorn's own supervisor: it restarts a worker
that dies and stops them all on SIGINT/SIGTERM). Each worker is a fresh interpreter that
builds its own :class:`~mixhouse.mixer.runtime.Runtime` from the environment through
:func:`worker_app`; the parent has already applied the migrations and, for the embedded
PostgreSQL, started the server and put its URI in ``MIXHOUSE_DATABASE_URL``, so the workers
connect to the same database and never start one of their own.

The API's engine has no pool pre-ping (see :func:`mixhouse.db.engine.make_engine`): reads
retry on a fresh connection instead, and a write that meets a dead connection answers 503.

What uvicorn serves is :class:`~mixhouse.api.fast_status.FastReads` in front of the FastAPI
app: it answers the polled reads (a mix's status, ``/health``) without the framework stack,
from a status cache kept exact by one ``LISTEN`` connection per process
(:mod:`mixhouse.api.status_feed`). uvicorn runs with httptools and uvloop (dependencies of
the package) and, unless configured, without its access log (see :func:`serve_api`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from mixhouse.api.app import create_app
from mixhouse.api.fast_status import FastReads
from mixhouse.api.status_feed import MixChangeFeed
from mixhouse.app.build import build_runtime
from mixhouse.config import Settings
from mixhouse.keys.buffer import run_key_buffer
from mixhouse.logs import configure_logging, uvicorn_log_config
from mixhouse.mixer.runtime import Runtime
from mixhouse.servers import background

# uvicorn imports the factory by name in each worker process.
WORKER_FACTORY = "mixhouse.api.serving:worker_app"


# Connections of one API process. A request holds one for a single statement (a status read,
# /health) or one short transaction, so 20 keep two cores busy; with no overflow a burst
# waits for a free connection rather than starting PostgreSQL backends per request.
API_POOL_SIZE = 20


def api_runtime(settings: Settings, database_url: str) -> Runtime:
    """The runtime of one API process: ``API_POOL_SIZE`` connections, no overflow, no pre-ping
    (see the module docstring and :func:`mixhouse.db.engine.make_engine`)."""
    return build_runtime(settings, database_url, pool_size=API_POOL_SIZE, max_overflow=0, pre_ping=False)


def api_app(settings: Settings, database_url: str) -> FastReads:
    """The ASGI app of one API process: :class:`~mixhouse.api.fast_status.FastReads` over
    :func:`~mixhouse.api.app.create_app` on an :func:`api_runtime`, with a change feed on
    ``database_url`` (a libpq URI) unless ``settings.api_status_cache`` is off.

    The app's lifespan starts the feed and, at shutdown, stops it and closes the runtime
    (adapters, engine).
    """
    rt = api_runtime(settings, database_url)
    app = create_app(rt)
    feed = MixChangeFeed(database_url) if settings.api_status_cache else None
    fast = FastReads(app, rt, database_url, feed)
    inner = app.router.lifespan_context

    # A token makes keys slowly: keep deposit keys pre-generated (mixhouse.keys.buffer).
    fill = settings.signer == "pkcs11" and settings.key_buffer_size > 0 and bool(rt.signers)
    sources = {asset.value: rt.adapter(asset).deposit_address for asset in rt.signers}

    @asynccontextmanager
    async def running(app_: FastAPI) -> AsyncIterator[None]:
        async with inner(app_), AsyncExitStack() as stack:
            if fill:
                filler = run_key_buffer(
                    rt.engine,
                    sources,
                    target=settings.key_buffer_size,
                    interval_seconds=settings.key_buffer_interval_seconds,
                )
                await stack.enter_async_context(background(filler))
            await fast.start()
            # Everything imported and built so far lives as long as the process: out of the
            # collector's sight, a full collection no longer walks it (tens of ms, the tail
            # latency of whichever requests were waiting).
            gc.freeze()
            try:
                yield
            finally:
                await fast.stop()
                await rt.aclose()
                await rt.engine.dispose()

    app.router.lifespan_context = running
    return fast


def worker_app() -> FastReads:
    """The app of one uvicorn worker (:func:`api_app`), built from the environment (``MIXHOUSE_*``).

    Raises:
        RuntimeError: ``MIXHOUSE_DATABASE_URL`` is unset (the parent process sets it).
    """
    settings = Settings()
    if not settings.database_url:
        raise RuntimeError("an API worker needs MIXHOUSE_DATABASE_URL (set by mixhouse serve)")
    configure_logging(settings)
    return api_app(settings, settings.database_url)


def serve_api(settings: Settings, database_url: str) -> None:
    """Serve the API on ``settings.api_host:api_port`` until SIGINT/SIGTERM.

    ``settings.api_workers`` 1 serves in this process; more start that many worker processes
    (see the module docstring). ``database_url`` is the libpq URI the migrations were applied
    to. uvicorn's access log is off unless ``settings.api_access_log``: it doubled the CPU of
    a cached status read (0.13 to 0.31 ms), and the request latency histogram at ``/metrics``
    counts requests by route. uvicorn's logs go through the redacting config of
    :mod:`mixhouse.logs`, which keeps mix ids (paths ``/api/v1/mixes/{id}``) out of them.
    """
    host, port, log_config = settings.api_host, settings.api_port, uvicorn_log_config()
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": log_config,
        "access_log": settings.api_access_log,
        "http": "httptools",
        "loop": "uvloop",
    }
    if settings.api_workers == 1:
        uvicorn.run(api_app(settings, database_url), **options)
        return
    # The workers read their settings from the environment: give them the database this
    # process resolved (an embedded server's socket URI when none was configured).
    os.environ["MIXHOUSE_DATABASE_URL"] = database_url
    uvicorn.run(WORKER_FACTORY, factory=True, workers=settings.api_workers, **options)
