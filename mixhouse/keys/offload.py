"""Signer calls off the event loop, each with a deadline (issue 12: a slow or hung token).

A :class:`~mixhouse.keys.signer.Signer` is synchronous: a PKCS#11 call blocks its thread until
the token answers, and a token that hangs never answers (PKCS#11 has no cancel). Called on the
event loop, one such call would stall the whole process: every scan, every API request, every
other asset. So the adapters hand each signing step (a transaction's signatures, a new key's
public key) to a :class:`SigningThread` and await it with a deadline:

* the call runs in the adapter's own daemon thread, in the caller's :mod:`contextvars` context
  (so :func:`mixhouse.keys.audited.recording_key_uses` still collects its key uses);
* past the deadline the awaiting task gets :class:`~mixhouse.keys.signer.SignerError` - a
  :class:`~mixhouse.errors.ChainError`, so the send is retried later, never marked failed -
  while the loop kept serving everything else all along;
* calls queued behind a hung one are dropped when their own deadline passes (they never reach
  the token); the hung call itself finishes, or not, in its thread, and its result is dropped.

One thread per adapter, not a pool: a PKCS#11 session serialises its calls anyway
(:class:`~mixhouse.keys.hsm.Pkcs11Signer` holds a lock), and more threads would only pile up
behind a hung call. The thread is a daemon so a hung token cannot keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from mixhouse.keys.signer import SignerError

T = TypeVar("T")

# Seconds a signing step may take, queue wait included: generous for a network HSM
# (SoftHSM2 signs in ~0.6 ms, a network HSM in tens of ms), short enough that a hung token
# shows up as retried sends within a minute.
SIGN_TIMEOUT_SECONDS = 30.0

_Item = tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...], "concurrent.futures.Future[Any]"]


class SigningThread:
    """A daemon thread that runs synchronous signer work for coroutines, each with a deadline.

    Args:
        name: the thread's name (``"signer-ETH"``): shows in thread dumps, never a secret.
        timeout: seconds :meth:`run` waits for a call, queue wait included, ``> 0``.

    Raises:
        ValueError: ``timeout <= 0``.

    The thread starts on the first :meth:`run`; :meth:`close` stops it after the call in
    progress (if that call hangs, the daemon thread is abandoned with it).
    """

    __slots__ = ("_closed", "_lock", "_name", "_queue", "_thread", "timeout")

    def __init__(self, name: str, *, timeout: float = SIGN_TIMEOUT_SECONDS) -> None:
        if timeout <= 0:
            raise ValueError("a signing timeout is positive")
        self._name = name
        self.timeout = timeout
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<SigningThread {self._name} timeout {self.timeout:g} s>"

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._closed:
                raise SignerError("the signing thread is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            context, fn, args, future = item
            # False: the caller's deadline passed while this waited; it never runs.
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # handed to the awaiting task, which re-raises it
                future.set_exception(exc)
            else:
                future.set_result(result)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the signing thread, in the calling task's context.

        Returns:
            What ``fn`` returned.

        Raises:
            SignerError: no answer within :attr:`timeout` seconds (the call may still be
                running in the thread; its result is dropped), or the thread is closed.
            Exception: whatever ``fn`` raised (a ``SignerError`` of the token, a ``ValueError``).
        """
        self._ensure_thread()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((contextvars.copy_context(), fn, args, future))
        try:
            # wait_for cancels the wrapped future at the deadline, which cancels the queued
            # call if it has not started (set_running_or_notify_cancel then says so).
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            raise SignerError(f"the signer did not answer within {self.timeout:g} s") from None

    def close(self) -> None:
        """Stop the thread once the call in progress (if any) returns; later :meth:`run` calls
        raise :class:`SignerError`. Idempotent, never blocks."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._thread is not None
        if started:
            self._queue.put(None)
