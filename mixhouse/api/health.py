"""``GET /api/v1/health``: the database and the signers, one answer for the FastAPI route
(:mod:`mixhouse.api.app`) and the lean path (:mod:`mixhouse.api.fast_status`).

* ``200 {"status": "ok", ...}``: ``SELECT 1`` answered and every signer made and verified a
  test signature;
* ``200 {"status": "degraded", ...}``: the database answered but a signer did not (a PKCS#11
  token gone, locked, or hung: see ``signers``). 200, not 503, on purpose: this process still
  serves every read, and a load balancer that took it out of rotation would not bring the
  token back; sends wait for the token and are retried (``SignerError`` is a ``ChainError``).
  Alert on ``status`` or on the ``mixhouse_signer_up`` gauge;
* ``503 {"status": "unavailable", ...}``: the database did not answer.

The signers' health comes from :class:`mixhouse.keys.health.SignerHealthCache` (a test
signature at most every :data:`SIGNER_MAX_AGE_SECONDS`, each with a deadline of
:data:`SIGNER_DEADLINE_SECONDS`, so a hung token answers "not ok" instead of hanging the
route). The body never holds a secret: kind and booleans per asset, no PIN, label or reason.
"""

from __future__ import annotations

from fastapi import FastAPI

from mixhouse.api.schemas import HealthOut, SignerHealthOut
from mixhouse.keys.health import SignerHealthCache
from mixhouse.mixer.runtime import Runtime

# Polled by load balancers every few seconds; a test signature each time would be wasted.
SIGNER_MAX_AGE_SECONDS = 5.0
# A healthy token signs in milliseconds (SoftHSM2 0.6 ms); past this it counts as down.
SIGNER_DEADLINE_SECONDS = 2.0


def install_signer_health(app: FastAPI, rt: Runtime) -> SignerHealthCache:
    """Keep a :class:`SignerHealthCache` of ``rt.signers`` in ``app.state.signer_health`` (the
    route and the lean path share it) and return it."""
    cache = SignerHealthCache(
        {str(asset): signer for asset, signer in rt.signers.items()},
        max_age=SIGNER_MAX_AGE_SECONDS,
        deadline_seconds=SIGNER_DEADLINE_SECONDS,
    )
    app.state.signer_health = cache
    return cache


async def health_answer(app: FastAPI, *, database: bool) -> tuple[int, HealthOut]:
    """The HTTP status and body of the health route, ``database`` telling whether ``SELECT 1``
    answered (see the module docstring for the three answers). Never raises."""
    cache: SignerHealthCache | None = getattr(app.state, "signer_health", None)
    found = {} if cache is None else await cache.current()
    signers = [
        SignerHealthOut(asset=asset, kind=h.kind, ok=h.ok, present=h.present, logged_in=h.logged_in)
        for asset, h in found.items()
    ]
    if not database:
        return 503, HealthOut(status="unavailable", database=False, signers=signers)
    status = "ok" if all(s.ok for s in signers) else "degraded"
    return 200, HealthOut(status=status, database=True, signers=signers)
