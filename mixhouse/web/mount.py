"""Adding the pages to the API's app: :func:`mount_web`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from mixhouse.web.mix_pages import router as mix_router
from mixhouse.web.templating import STATIC_DIR


def mount_web(app: FastAPI) -> None:
    """Serve the mix pages and ``/static`` (the package's CSS and JavaScript) from ``app``."""
    app.include_router(mix_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, follow_symlink=False), name="static")
