"""How a Mixhouse command ends when it is told to: SIGTERM runs the same clean-up as Ctrl-C.

Python's default action for SIGTERM kills the process on the spot: no ``finally`` block, no
context manager exit and no ``atexit`` hook runs, so whatever the command started (the embedded
PostgreSQL, a regtest node, the worker's registration) is left behind. uvicorn catches SIGTERM
itself, shuts down, and then re-raises it with the handler it found, the default one: same end.

* :func:`exit_cleanly_on_sigterm` replaces the default with a handler that raises
  :class:`Terminated` (a ``SystemExit`` with status 143 = 128 + SIGTERM), so the interpreter
  unwinds and exits normally. Every command installs it first.
* :func:`run_async` is ``asyncio.run`` for the long-running commands: SIGTERM cancels the main
  task as Ctrl-C does (asyncio's own SIGINT handling), so clean-up runs inside the event loop
  in order (servers stopped, the worker's running jobs finished), then :class:`Terminated` is
  raised.

Service managers see exit status 143 for a clean stop by SIGTERM (the shipped systemd units
list it in ``SuccessExitStatus``); Ctrl-C ends as Click ends any ``KeyboardInterrupt``
(``Aborted!``, status 1).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

EXIT_STATUS_SIGTERM = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """The process was asked to stop by SIGTERM; exits with status 143 once unwound."""

    def __init__(self) -> None:
        super().__init__(EXIT_STATUS_SIGTERM)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001 - signal API
    raise Terminated


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (a no-op elsewhere: only the
    main thread may set signal handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` like ``asyncio.run``; SIGTERM cancels it as Ctrl-C does.

    Returns:
        What ``main`` returned, if it ended by itself.

    Raises:
        Terminated: SIGTERM arrived (after ``main`` has finished its clean-up).
        KeyboardInterrupt: Ctrl-C (SIGINT) arrived, likewise.
    """
    received: list[int] = []

    async def _guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def _on_sigterm() -> None:
            # Cancel once: a second cancel would interrupt the clean-up the first one started.
            if not received:
                received.append(signal.SIGTERM)
                task.cancel()

        loop.add_signal_handler(signal.SIGTERM, _on_sigterm)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            exit_cleanly_on_sigterm()  # remove_signal_handler put the default action back

    try:
        result = asyncio.run(_guarded())
    except asyncio.CancelledError:
        if received:
            raise Terminated from None
        raise
    if received:
        raise Terminated  # main caught the cancellation and returned: it still was told to stop
    return result
