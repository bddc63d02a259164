"""The HTTP API of the mixer (FastAPI): :func:`mixhouse.api.app.create_app`.

Every route takes the process's :class:`~mixhouse.mixer.runtime.Runtime` through
:data:`RuntimeDep`; every error is an RFC 9457 problem built in :mod:`mixhouse.api.problems`.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from mixhouse.mixer.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The runtime :func:`mixhouse.api.app.create_app` stored in ``app.state.runtime``.

    ``async`` although it awaits nothing: FastAPI runs a plain ``def`` dependency in a worker
    thread, a thread hop on every request.
    """
    return cast(Runtime, request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

__all__ = ["RuntimeDep", "get_runtime"]
