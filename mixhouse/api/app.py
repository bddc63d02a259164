"""The FastAPI application: :func:`create_app`.

Routes (all JSON; every error is ``application/problem+json``, see
:mod:`mixhouse.api.problems`):

* ``POST /api/v1/mixes`` and ``GET /api/v1/mixes/{id}`` (:mod:`mixhouse.api.routes_mixes`);
* ``GET /api/v1/assets``, the assets a mix can be created in (:mod:`mixhouse.api.routes_assets`);
* ``GET /api/v1/admin/{mixes,deposits,pool,privacy,audit}`` behind ``X-API-Key``
  (:mod:`mixhouse.api.routes_admin`);
* ``/api/v1/wallets...`` behind a user API key (:mod:`mixhouse.api.routes_wallets`);
* ``GET /api/v1/health``; OpenAPI at ``/openapi.json``, interactive docs at ``/docs``.

Before routing, :class:`~mixhouse.http_guard.RequestGuardMiddleware` refuses a NUL in the path
or query (400), a body over ``settings.http_max_body_bytes`` (413) and a body nested deeper
than ``settings.http_max_json_depth`` (400), as problems.
"""

from __future__ import annotations

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from sqlalchemy import text

from mixhouse import __version__
from mixhouse.api import RuntimeDep
from mixhouse.api.health import health_answer, install_signer_health
from mixhouse.api.problems import guard_refusal, install_problem_handlers
from mixhouse.api.routes_admin import router as admin_router
from mixhouse.api.routes_assets import router as assets_router
from mixhouse.api.routes_mixes import router as mixes_router
from mixhouse.api.routes_wallets import router as wallets_router
from mixhouse.api.schemas import HealthOut
from mixhouse.db.engine import read_first
from mixhouse.http_guard import RequestGuardMiddleware
from mixhouse.mixer.runtime import Runtime
from mixhouse.recursion import pin_recursion_limit
from mixhouse.web.mount import mount_web

log = structlog.get_logger(__name__)

health_router = APIRouter(prefix="/api/v1", tags=["health"])


@health_router.get("/health", responses={503: {"model": HealthOut, "description": "Database unreachable."}})
async def health(rt: RuntimeDep, request: Request, response: Response) -> HealthOut:
    """``{"status": "ok", "database": true, "signers": [...]}`` when ``SELECT 1`` answers and
    every signer signs; ``"degraded"`` (still 200) when a signer does not; 503 with
    ``"unavailable"`` when the database does not answer (:mod:`mixhouse.api.health`)."""
    database = True
    try:
        await read_first(rt.engine, text("SELECT 1"))
    except Exception:
        log.exception("health check: database unreachable")
        database = False
    response.status_code, body = await health_answer(request.app, database=database)
    return body


def create_app(rt: Runtime) -> FastAPI:
    """The HTTP API over ``rt`` (kept in ``app.state.runtime``).

    The caller owns ``rt``: the app neither closes its adapters nor disposes of its engine.
    """
    # Again here, in case something imported after mixhouse raised it (see mixhouse.recursion).
    pin_recursion_limit()
    app = FastAPI(
        title="Mixhouse",
        version=__version__,
        description=(
            "Self-hosted mixing. Amounts are decimal strings: `amount` in base units, "
            "`amount_coins` in whole coins. Errors are RFC 9457 problems (application/problem+json)."
        ),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.runtime = rt
    install_signer_health(app, rt)
    install_problem_handlers(app)
    # Added last, so it is the outermost middleware: nothing reads the body before it.
    app.add_middleware(
        RequestGuardMiddleware,
        respond=guard_refusal,
        max_body_bytes=rt.settings.http_max_body_bytes,
        max_json_depth=rt.settings.http_max_json_depth,
    )
    app.include_router(mixes_router)
    app.include_router(assets_router)
    app.include_router(admin_router)
    app.include_router(wallets_router)
    app.include_router(health_router)
    mount_web(app)  # the pages: /, /mix/{id}, /static
    return app
