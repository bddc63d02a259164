"""Signer health for ``GET /metrics``: is each key holder there, logged in, and how long a test
signature takes (a PKCS#11 token that is slow, locked or gone shows here before sends pile up).

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
