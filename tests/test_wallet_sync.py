"""The sync engine on a real node: import, full sync, incremental re-sync, balances, reorg."""

from __future__ import annotations

from eth_account import Account
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.tables import address_balances, address_txs, wallet_addresses
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.wallets import service
from mixhouse.wallets.sources.bitcoin_node import BitcoinNodeSource
from mixhouse.wallets.sync import sync_all
from tests.fixtures.bcoin import Bcoin


async def _imported(engine: AsyncEngine, address: str) -> None:
    user = await service.create_user(engine, "alice")
    wallet = await service.create_wallet(engine, user.id, "main")
    await service.import_addresses(engine, wallet["id"], "BTC", [address], bitcoin_network="regtest")


async def test_sync_is_complete_incremental_and_follows_reorgs(engine: AsyncEngine, bcoin: Bcoin) -> None:
    Account.enable_unaudited_hdwallet_features()
    address = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest").address(0, 0)
    await _imported(engine, address)
    for i in range(25):
        await bcoin.fund(address, 20_000 + i)
        if i % 5 == 4:
            await bcoin.mine(1)
    rpc = bcoin.client()
    try:
        source = BitcoinNodeSource(rpc, network="regtest", blocks_per_page=50)
        [first] = await sync_all(engine, lambda chain: source if chain == "BTC" else None)
        assert (first.status, first.stored) == ("synced", 25)
        assert first.pages > 1  # the history came in several checkpointed pages
        async with engine.connect() as conn:
            rows = (await conn.execute(select(func.count()).select_from(address_txs))).scalar_one()
            balance = (
                await conn.execute(select(address_balances.c.confirmed).where(address_balances.c.asset == "BTC"))
            ).scalar_one()
            status = (await conn.execute(select(wallet_addresses.c.status))).scalar_one()
        unspent = (await rpc.scantxoutset_addresses([address]))["unspents"]
        assert rows == 25
        assert status == "synced"
        assert balance == sum(round(u["amount"] * 10**8) for u in unspent) == sum(20_000 + i for i in range(25))
        # A second sync fetches nothing new: one page, nothing stored.
        [second] = await sync_all(engine, lambda chain: source)
        assert (second.pages, second.stored) == (1, 0)
        # A reorg: the last block is orphaned; its payments are unconfirmed until mined again.
        tip_hash = await bcoin.rpc("getbestblockhash")
        await bcoin.rpc("invalidateblock", tip_hash)
        await bcoin.mine(2)
        [third] = await sync_all(engine, lambda chain: source)
        assert third.status == "synced"
        async with engine.connect() as conn:
            hashes = {r.block_hash for r in (await conn.execute(select(address_txs.c.block_hash))).all()}
            unconfirmed = (
                await conn.execute(
                    select(func.count()).select_from(address_txs).where(address_txs.c.block_height.is_(None))
                )
            ).scalar_one()
        assert tip_hash not in hashes  # nothing still points at the orphaned block
        assert unconfirmed == 0  # re-mined in the new chain, confirmed again
    finally:
        await rpc.aclose()
