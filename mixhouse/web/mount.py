"""Adding the pages and the metrics to the API's app: :func:`mount_web`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from mixhouse.metrics import RequestMetrics, RequestMetricsMiddleware
from mixhouse.metrics import router as metrics_router
from mixhouse.web.admin_pages import router as admin_router
from mixhouse.web.mix_pages import router as mix_router
from mixhouse.web.templating import STATIC_DIR


def mount_web(app: FastAPI) -> None:
    """Serve the mix pages, the admin dashboard, ``/metrics`` and ``/static`` (the package's CSS and JavaScript)
    from ``app``, and time its requests for ``/metrics``."""
    app.include_router(mix_router)
    app.include_router(admin_router)
    app.include_router(metrics_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, follow_symlink=False), name="static")
    request_metrics = RequestMetrics()
    app.state.request_metrics = request_metrics
    app.add_middleware(RequestMetricsMiddleware, metrics=request_metrics)
