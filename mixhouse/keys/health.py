"""Signer health for ``GET /metrics`` and ``GET /api/v1/health`` (:class:`SignerHealthCache`): is
each key holder there, logged in, and how long a test signature takes (a PKCS#11 token that is
slow, locked or gone shows here before sends pile up).

A token that fails makes sends wait (:class:`~mixhouse.keys.signer.SignerError` is a
:class:`~mixhouse.errors.ChainError`: the send is retried, never marked failed); these gauges say
why they wait. The check runs in a thread with a deadline, so a token that hangs makes the
scrape report ``mixhouse_signer_up 0`` (error "no answer within ...") instead of hanging it.

Gauges, labelled by ``asset`` and ``signer`` (kind; one PKCS#11 token serving ETH and BTC is
checked once and shown for both):

* ``mixhouse_signer_up``: 1 if a test signature was made and verified;
* ``mixhouse_signer_token_present``, ``mixhouse_signer_logged_in``: 1 or 0;
* ``mixhouse_signer_test_signature_seconds``: how long it took (absent when none was made).

The API process that answers the scrape checks the token through its own session (it uses the
token too: deposit keys are made there), so the figure is the token's, whichever process asks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from prometheus_client.core import GaugeMetricFamily, Metric

from mixhouse.keys.signer import Signer, SignerHealth

HEALTH_TIMEOUT_SECONDS = 5.0


async def check_signer(signer: Signer, *, deadline_seconds: float = HEALTH_TIMEOUT_SECONDS) -> SignerHealth:
    """``signer.health()`` in a thread, given ``deadline_seconds``; a signer without a health
    check is reported ``ok``. Never raises."""
    check = getattr(signer, "health", None)
    if check is None:
        return SignerHealth(signer.kind, True, True, True, None, None)
    try:
        result: SignerHealth = await asyncio.wait_for(
            asyncio.to_thread(check, deadline_seconds), deadline_seconds + 1.0
        )
    except TimeoutError:
        return SignerHealth(signer.kind, False, True, False, None, f"no answer within {deadline_seconds:g} s")
    return result


async def signer_metrics(
    signers: Mapping[str, Signer], *, deadline_seconds: float = HEALTH_TIMEOUT_SECONDS
) -> list[Metric]:
    """The ``mixhouse_signer_*`` gauges of ``signers`` (asset -> signer), each distinct signer
    checked once, concurrently."""
    distinct: dict[int, Signer] = {id(s): s for s in signers.values()}
    results = await asyncio.gather(*(check_signer(s, deadline_seconds=deadline_seconds) for s in distinct.values()))
    health = dict(zip(distinct, results, strict=True))
    labels = ["asset", "signer"]
    up = GaugeMetricFamily("mixhouse_signer_up", "1 if the signer made and verified a test signature.", labels=labels)
    present = GaugeMetricFamily(
        "mixhouse_signer_token_present", "1 if the key holder (PKCS#11 token) was found.", labels=labels
    )
    logged_in = GaugeMetricFamily("mixhouse_signer_logged_in", "1 if a session is logged in.", labels=labels)
    seconds = GaugeMetricFamily(
        "mixhouse_signer_test_signature_seconds", "Time of the health check's test signature, seconds.", labels=labels
    )
    for asset, signer in sorted(signers.items()):
        result = health[id(signer)]
        values = [str(asset), signer.kind]
        up.add_metric(values, float(result.ok))
        present.add_metric(values, float(result.present))
        logged_in.add_metric(values, float(result.logged_in))
        if result.sign_seconds is not None:
            seconds.add_metric(values, result.sign_seconds)
    return [up, present, logged_in, seconds]


class SignerHealthCache:
    """The health of each signer, checked at most once per ``max_age`` seconds, for a route
    that is polled (``GET /api/v1/health``: load balancers ask every few seconds, and each
    check is a test signature in the token).

    Args:
        signers: asset -> signer (one shared token is checked once and shown per asset).
        max_age: seconds an answer is reused, ``>= 0`` (0: every call checks).
        deadline_seconds: the deadline of each check (:func:`check_signer`): a hung token
            answers "busy" / "no answer" after it, never hangs the route.

    Concurrent callers share one check in progress. Never raises.
    """

    def __init__(
        self,
        signers: Mapping[str, Signer],
        *,
        max_age: float = 5.0,
        deadline_seconds: float = 2.0,
    ) -> None:
        if max_age < 0 or deadline_seconds <= 0:
            raise ValueError("max_age must be >= 0 and deadline_seconds > 0")
        self.signers = dict(signers)
        self.max_age = max_age
        self.deadline_seconds = deadline_seconds
        self._answer: dict[str, SignerHealth] | None = None
        self._checked_at = 0.0
        self._running: asyncio.Task[dict[str, SignerHealth]] | None = None

    async def _check(self) -> dict[str, SignerHealth]:
        distinct: dict[int, Signer] = {id(s): s for s in self.signers.values()}
        results = await asyncio.gather(
            *(check_signer(s, deadline_seconds=self.deadline_seconds) for s in distinct.values())
        )
        health = dict(zip(distinct, results, strict=True))
        answer = {asset: health[id(signer)] for asset, signer in sorted(self.signers.items())}
        self._answer, self._checked_at = answer, time.monotonic()
        return answer

    async def current(self) -> dict[str, SignerHealth]:
        """asset -> :class:`SignerHealth`, at most ``max_age`` seconds old (``{}`` without
        signers)."""
        if not self.signers:
            return {}
        if self._answer is not None and time.monotonic() - self._checked_at <= self.max_age:
            return self._answer
        running = self._running
        # A task of another (closed) event loop cannot be awaited here: start afresh.
        if running is None or running.done() or running.get_loop() is not asyncio.get_running_loop():
            running = self._running = asyncio.get_running_loop().create_task(self._check())
        # shield: a caller that gives up (its request cancelled) does not cancel the others' check.
        return await asyncio.shield(running)
