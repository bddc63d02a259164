"""Wallet sync's worker task, registered on the worker's procrastinate app by
:func:`register_wallet_tasks` (:mod:`mixhouse.app.worker` composes every feature's tasks)."""

from __future__ import annotations

import procrastinate
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.config import Settings
from mixhouse.jobs import QUEUE, every_seconds
from mixhouse.wallets.sources.configured import sources_from_settings
from mixhouse.wallets.sync import sync_all
from mixhouse.watch.registry import ChainWatches


def register_wallet_tasks(
    app: procrastinate.App, engine: AsyncEngine, settings: Settings, *, watches: ChainWatches | None = None
) -> None:
    """Register the periodic ``sync_wallets`` task on ``app``: every
    ``wallet_sync_interval_seconds``, every imported address and xpub is synced from its source.
    ``watches``: the process's scanning engines (shared with the mixer's deposit scans, so a
    block is fetched from the node once), ``None``: engines of its own.
    """
    sources = sources_from_settings(settings, engine, watches=watches)
    sync_every = settings.wallet_sync_interval_seconds

    @app.periodic(cron=every_seconds(sync_every), periodic_id="sync_wallets")
    @app.task(name="sync_wallets", queue=QUEUE, queueing_lock="sync_wallets")
    async def sync_wallets_task(timestamp: int) -> None:  # noqa: ARG001 - procrastinate passes the tick
        await sync_all(engine, sources.get, bitcoin_network=settings.bitcoin_network)
