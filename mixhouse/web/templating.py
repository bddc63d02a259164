"""The Jinja2 templates of the pages and the headers every page carries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"

templates = Jinja2Templates(directory=WEB_DIR / "templates")


def _utc(moment: datetime, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    return moment.astimezone(UTC).strftime(fmt)


templates.env.filters["utc"] = _utc

# Everything comes from this origin (no CDN, no inline script); a page is never framed; the
# Referer never leaves the page, since a mix page's URL holds the mix id, its only handle.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def render(request: Request, name: str, context: dict[str, Any], *, status_code: int = 200) -> HTMLResponse:
    """Render template ``name`` with ``context`` as a page with :data:`PAGE_HEADERS`."""
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(PAGE_HEADERS)
    return response


def render_fragment(name: str, context: dict[str, Any]) -> str:
    """Render template ``name`` to a string (a part of a page sent by a live update)."""
    return templates.get_template(name).render(context)
