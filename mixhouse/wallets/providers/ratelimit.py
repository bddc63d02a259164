"""Requests to a public provider API: a shared rate limit, retries, and strict JSON.

A :class:`RateLimiter` is a token bucket shared by every request of one provider (``rate``
requests per second on average, ``burst`` at once), and the retry policy of that provider:

* HTTP 429 Too Many Requests: wait ``Retry-After`` (seconds or an HTTP date, RFC 9110
  section 10.2.3) when the provider sends it, else an exponential backoff with jitter; the
  whole provider pauses for that time, not just the request that was refused. After
  ``max_retries`` retries: :class:`~mixhouse.errors.ChainError` ("rate limited").
* HTTP 500/502/503/504 and transport failures (timeouts, refused connections): the same
  backoff, then ``ChainError``. Only idempotent GETs go through here, so retrying is safe.
* Any other non-2xx status: ``ChainError`` at once.

:func:`get_json` performs one GET under a limiter and parses the body with
``parse_float=Decimal``; :func:`satoshi` accepts an amount only if it is a JSON integer in
``0..21 million BTC``: a ``1.5`` or ``1e3`` in a money field is a :class:`ChainError`, never
a float.
The small parsing helpers every provider shares live here too.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from mixhouse.errors import ChainError
from mixhouse.wallets.records import AddressTx, Leg

RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
TOO_MANY_REQUESTS = 429

# Largest possible amount: 21 million BTC (consensus MAX_MONEY), in satoshi.
MAX_MONEY = 21_000_000 * 100_000_000

K = TypeVar("K")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """Token bucket plus retry policy shared by every request to one provider.

    Args:
        rate: average requests per second, ``> 0``.
        burst: requests that may go out back to back after a quiet period, ``>= 1``.
        max_retries: retries of one request after a 429, a 5xx or a transport failure.
        base_delay: first backoff in seconds; attempt ``n`` waits up to ``base_delay * 2**n``.
        max_delay: cap of one backoff, seconds.
        max_retry_after: a ``Retry-After`` longer than this (seconds) is not waited for: the
            request fails at once with ChainError so the sync tries again later.
        clock: monotonic seconds (``time.monotonic``); injected by tests.
        sleep: ``asyncio.sleep``; injected by tests (with a fake clock it advances the clock).
        jitter: returns a float in ``[0, 1)`` (``random.random``); injected by tests.

    Raises:
        ValueError: a non-positive ``rate``, ``burst < 1`` or negative retry settings.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        max_retries: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        max_retry_after: float = 300.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError("rate must be a positive number of requests per second")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_retries < 0 or base_delay < 0 or max_delay < 0 or max_retry_after < 0:
            raise ValueError("retry settings must not be negative")
        self.rate = rate
        self.burst = burst
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retry_after = max_retry_after
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._tokens = float(burst)
        self._updated = clock()
        self._paused_until = self._updated
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until a request may go out, and take its token.

        Waiters are served in arrival order (they queue on one lock); while the provider is
        paused after a 429 nobody gets a token.
        """
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                self._refill(now)
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self.rate)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now

    def pause(self, seconds: float) -> None:
        """Hold every request of this provider for ``seconds`` from now (after a 429)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (0-based): "equal jitter" exponential
        backoff, between half and all of ``min(max_delay, base_delay * 2**attempt)``."""
        ceiling = min(self.max_delay, self.base_delay * 2.0**attempt)
        return ceiling / 2 + self._jitter() * ceiling / 2

    async def send(self, request: Callable[[], Awaitable[httpx.Response]], what: str) -> httpx.Response:
        """Send ``request`` (an idempotent GET) under the limit, retrying as described above.

        Args:
            request: makes one attempt and returns the response (any status).
            what: names the request in error messages ("blockchain.info rawaddr 1A1z...").

        Returns:
            A 2xx response.

        Raises:
            ChainError: rate limited beyond ``max_retries`` (or told to wait longer than
                ``max_retry_after``), a 5xx or transport failure beyond ``max_retries``, or
                any other non-2xx status.
        """
        attempt = 0
        while True:
            await self.acquire()
            try:
                response = await request()
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise ChainError(f"{what}: {type(exc).__name__} ({exc}) after {attempt + 1} attempts") from exc
                await self._sleep(self.backoff(attempt))
                attempt += 1
                continue
            status = response.status_code
            if 200 <= status < 300:
                return response
            if status == TOO_MANY_REQUESTS:
                if attempt >= self.max_retries:
                    raise ChainError(f"{what}: rate limited (HTTP 429) after {attempt + 1} attempts")
                wait = retry_after_seconds(response.headers)
                if wait is not None and wait > self.max_retry_after:
                    raise ChainError(f"{what}: rate limited (HTTP 429), the provider asks to wait {wait:.0f} s")
                # The provider's own figure is honoured exactly; without one, back off.
                self.pause(self.backoff(attempt) if wait is None else wait)
                attempt += 1
                continue
            if status in RETRYABLE_STATUSES:
                if attempt >= self.max_retries:
                    raise ChainError(f"{what}: HTTP {status} after {attempt + 1} attempts")
                await self._sleep(self.backoff(attempt))
                attempt += 1
                continue
            raise ChainError(f"{what}: HTTP {status}: {_snippet(response)}")


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (``>= 0``), or ``None`` if the
    header is absent or unreadable. Accepts delay-seconds and an HTTP date."""
    value = headers.get("retry-after")
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:200] or "(empty body)"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(content: bytes, what: str) -> Any:
    """Parse a provider's answer strictly: numbers with a fraction or exponent become
    :class:`~decimal.Decimal` (never ``float``), ``NaN``/``Infinity`` are refused.

    Raises:
        ChainError: not JSON.
    """
    try:
        return json.loads(content, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ChainError(f"{what}: the answer is not JSON ({exc})") from exc


async def get_json(
    client: httpx.AsyncClient,
    limiter: RateLimiter,
    url: str,
    what: str,
    params: Mapping[str, str | int] | None = None,
) -> Any:
    """GET ``url`` under ``limiter`` and parse the body with :func:`parse_json`.

    Raises:
        ChainError: see :meth:`RateLimiter.send` and :func:`parse_json`.
    """
    response = await limiter.send(lambda: client.get(url, params=params), what)
    return parse_json(response.content, what)


def satoshi(value: object, what: str) -> int:
    """An amount from a provider that speaks satoshi: a JSON integer in ``0..MAX_MONEY``.

    Raises:
        ChainError: a fraction or exponent (parsed as Decimal), a string, a bool, ``null``,
            negative, or above 21 million BTC.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChainError(f"{what}: expected an integer amount of satoshi, got {value!r}")
    if value < 0 or value > MAX_MONEY:
        raise ChainError(f"{what}: amount {value} is outside 0..21 million BTC")
    return value


def is_count(value: object) -> bool:
    """``value`` is a JSON integer ``>= 0`` (not a bool, not a Decimal)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def count(value: object, what: str) -> int:
    """A non-money integer field (height, index, timestamp): an int ``>= 0``.

    Raises:
        ChainError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ChainError(f"{what}: expected a non-negative integer, got {value!r}")
    return value


def canonical_address(value: object) -> str | None:
    """A provider's address text in the form :func:`~mixhouse.chains.bitcoin.networks.normalize_address`
    gives (segwit lower-case, base58 as is); ``None`` when the output has no address."""
    if not isinstance(value, str) or not value:
        return None
    return value.lower() if value.lower().startswith(("bc1", "tb1", "bcrt1")) else value


def unique_legs(legs: Iterable[Leg]) -> tuple[Leg, ...]:
    """One leg per index, first kept: a reply repeating an input or output does not double it."""
    seen: dict[int, Leg] = {}
    for leg in legs:
        seen.setdefault(leg.index, leg)
    return tuple(seen.values())


def keep_row(rows: dict[K, AddressTx], key: K, row: AddressTx) -> None:
    """Add ``row`` under ``key`` unless a copy is there; a confirmed copy replaces an
    unconfirmed one (a reply may list a transaction twice while it confirms)."""
    current = rows.get(key)
    if current is None or (current.block_height is None and row.block_height is not None):
        rows[key] = row
