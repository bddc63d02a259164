"""Whether a client may create a mix now: a rate per client and a cap on open mixes.

Every mix is a deposit address that each chain scan watches for its whole life, and creating
one costs nothing (one anonymous client created 3,055 in 150 s, issue 14). Two limits, both
checked in PostgreSQL so that they hold across every API process and survive restarts:

* **Rate per client**: at most ``settings.mix_create_rate_per_client`` creations per
  ``settings.mix_create_rate_window_seconds``, in a burst or spread out, by the generic cell
  rate algorithm (GCRA). Each client has one row holding its *theoretical arrival time*
  ``tat``; a creation at time ``t`` moves it to ``max(tat, t) + window / rate`` and is admitted
  when that is at most ``t + window``. One conditional upsert decides and records it, so two
  processes can never both take the last slot. A refused creation leaves the row unchanged,
  and its ``Retry-After`` is exactly when the next one will be admitted. The database's clock
  is used, never a process's.
* **Cap on open mixes**: at most ``settings.max_open_mixes`` mixes awaiting a deposit and not
  expired, across all clients. It is checked before the mix is created, in a transaction of
  its own, so creations running at the same moment can pass it together: the cap can be
  exceeded by the creations in flight at once (each client's are bounded by its rate).

The cap is global, not per client: a per-client count of open mixes would have to store the
client's address with each mix for as long as the mix lives, linking a network address to a
mix. The rate row names no mix, and is deleted as soon as its ``tat`` has passed (such a row
admits exactly what no row admits), so only clients active within the last window are in it.

Source: the GCRA of ITU-T I.371 / ATM Forum TM 4.0, as Brandur Leach describes it for rate
limiting ("Rate limiting, cells, and GCRA", brandur.org, 2015).
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import func, select, text

from mixhouse.db.tables import mixes
from mixhouse.errors import OpenMixesCapped, RateLimited
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import MixState
from mixhouse.unit import unit

# Seconds a client is told to wait when the open-mix cap is reached: open mixes leave the
# count as they receive deposits or expire, which no one can predict better than this.
OPEN_CAP_RETRY_AFTER_SECONDS = 60
# Rows of clients idle long enough to be forgotten, deleted per admitted creation; a few per
# creation keep the table at the active clients without a separate job.
_PURGE_BATCH = 16

# Admit or refuse in one statement: the insert of a new client always admits (its tat starts
# at now + interval, within the window); an existing row is moved on only when the move stays
# within the window, so a refusal changes nothing. ON CONFLICT re-reads the row under its lock,
# so concurrent creations of one client are counted one after the other.
_ADMIT = text(
    """
    INSERT INTO mix_creation_rates AS r (client, tat)
    VALUES (:client, clock_timestamp() + :interval)
    ON CONFLICT (client) DO UPDATE
        SET tat = greatest(r.tat, clock_timestamp()) + :interval
        WHERE greatest(r.tat, clock_timestamp()) + :interval <= clock_timestamp() + :window
    RETURNING r.tat
    """
)
# Seconds until the refused client's next creation fits in the window.
_WAIT = text(
    """
    SELECT extract(epoch FROM greatest(tat, clock_timestamp()) + :interval - clock_timestamp() - :window)
    FROM mix_creation_rates WHERE client = :client
    """
)
_PURGE = text(
    """
    DELETE FROM mix_creation_rates WHERE client IN (
        SELECT client FROM mix_creation_rates WHERE tat < clock_timestamp()
        ORDER BY tat LIMIT :batch FOR UPDATE SKIP LOCKED
    )
    """
)


async def admit_mix_creation(rt: Runtime, client: str) -> None:
    """Count one mix creation of ``client``, or refuse it; call before creating the mix.

    Args:
        rt: the runtime (its settings give the limits, its engine the shared state).
        client: the client's identity (:func:`mixhouse.api.client_address.client_identity`:
            an IPv4 address or an IPv6 network).

    Raises:
        OpenMixesCapped: ``settings.max_open_mixes`` mixes already await a deposit
            (``retry_after_seconds`` = 60); nothing is counted against the client.
        RateLimited: the client used its creations of the window; ``retry_after_seconds`` is
            when its next one will be admitted.
    """
    settings = rt.settings
    async with unit(rt.engine) as work:
        if settings.max_open_mixes:
            # Count no further than the cap: the cost stays bounded however many are open.
            open_now = select(mixes.c.id).where(
                mixes.c.state == MixState.AWAITING_DEPOSIT, mixes.c.expires_at > func.now()
            )
            count = (
                await work.conn.execute(
                    select(func.count()).select_from(open_now.limit(settings.max_open_mixes).subquery())
                )
            ).scalar_one()
            if count >= settings.max_open_mixes:
                raise OpenMixesCapped(
                    f"the service has {settings.max_open_mixes} open mixes, its limit; try again later",
                    retry_after_seconds=OPEN_CAP_RETRY_AFTER_SECONDS,
                )
        if not settings.mix_create_rate_per_client:
            return
        window = timedelta(seconds=settings.mix_create_rate_window_seconds)
        params = {"client": client, "interval": window / settings.mix_create_rate_per_client, "window": window}
        admitted = (await work.conn.execute(_ADMIT, params)).first()
        if admitted is None:
            wait = (await work.conn.execute(_WAIT, params)).scalar_one()
            raise RateLimited(
                f"at most {settings.mix_create_rate_per_client} mixes per "
                f"{settings.mix_create_rate_window_seconds} s from one client; try again later",
                retry_after_seconds=math.ceil(float(wait)),
            )
        await work.conn.execute(_PURGE, {"batch": _PURGE_BATCH})
