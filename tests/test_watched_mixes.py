"""The scan's read of the watched mixes (mixer.deposits.watched_mixes), on a real PostgreSQL:
every mix of the asset whose watch has not ended, by deposit address, and no other."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.tables import mixes
from mixhouse.mixer.deposits import watched_mixes
from mixhouse.mixer.states import now
from mixhouse.money import Asset


def _mix(mix_id: str, asset: str, address: str, watch_days: int) -> dict[str, object]:
    moment = now()
    return {
        "id": mix_id,
        "asset": asset,
        "state": "awaiting_deposit",
        "deposit_address": address,
        "withdrawal_addresses": ["w"],
        "fee_min_bps": 100,
        "fee_max_bps": 300,
        "min_deposit": 1,
        "max_deposit": 10,
        "delay_min_seconds": 0,
        "delay_max_seconds": 0,
        "max_wait_seconds": 0,
        "expires_at": moment,
        "watch_until": moment + timedelta(days=watch_days),
    }


async def test_watched_mixes_are_the_assets_mixes_still_watched(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            mixes.insert(),
            [
                _mix("m1", "JOBCOIN", "a1", 1),
                _mix("m2", "JOBCOIN", "a2", 3),
                _mix("m3", "JOBCOIN", "a3", -1),  # its watch ended
                _mix("m4", "ETH", "0xa4", 1),  # another asset
            ],
        )
    async with engine.connect() as conn:
        assert await watched_mixes(conn, Asset.JOBCOIN) == {"a1": "m1", "a2": "m2"}
        assert await watched_mixes(conn, Asset.ETH) == {"0xa4": "m4"}
        assert await watched_mixes(conn, Asset.BTC) == {}
