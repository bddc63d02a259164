"""The scanning engine (mixhouse.watch) on anvil: one engine, one reorg policy, for a deposit and a
wallet's history.

A mixer deposit (the engine's deposit watcher) and a wallet address (wallet sync through the
Ethereum node source) are followed by the same :class:`ChainWatch` with its block window in
PostgreSQL. A reorg within ``max_depth`` rewinds both to the exact fork height (the window, not
a fixed step back): the wallet's orphaned row goes back to unconfirmed and the new branch's row
confirms, the deposit pass reports the rewind and no longer finds the orphaned deposit. A reorg
deeper than ``max_depth`` stops both consumers with an audited alert row instead of guessing.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.tables import address_txs, audit_log, wallet_addresses, watch_blocks, watch_stops
from mixhouse.wallets import service
from mixhouse.wallets.sources.ethereum_node import EthereumNodeSource
from mixhouse.wallets.sync import sync_addresses
from mixhouse.watch.deposits import EvmDeposits
from mixhouse.watch.engine import ChainWatch, ReorgTooDeep, WatcherStopped
from mixhouse.watch.evm import EvmBlocks
from mixhouse.watch.store import resume_consumer
from tests.fixtures.anvil import Anvil
from tests.scanning import CountingBlocks, position_at

MAX_DEPTH = 6
ETHER = 10**18


async def _wallet_rows(engine: AsyncEngine, address: str) -> dict[int, int | None]:
    """``{net: block_height}`` of the address's ETH rows."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(address_txs.c.net, address_txs.c.block_height).where(address_txs.c.address == address)
        )
        return {int(r.net): r.block_height for r in rows}


async def test_one_engine_follows_a_reorg_for_a_deposit_and_a_wallet(engine: AsyncEngine, anvil: Anvil) -> None:
    deposit_address = Account.create().address
    wallet_address = Account.create().address
    user = await service.create_user(engine, "watcher")
    wallet = await service.create_wallet(engine, user.id, "main")
    await service.import_addresses(engine, wallet["id"], "ETH", [wallet_address], bitcoin_network="regtest")

    reader = CountingBlocks(anvil.rpc_url)
    watch = ChainWatch(reader, max_depth=MAX_DEPTH, engine=engine)
    source = EthereumNodeSource(anvil.rpc_url, watch=watch)
    try:
        await anvil.mine(1)
        fork = await anvil.block_number()
        start = await position_at(anvil, fork - 1)
        snapshot = await anvil.snapshot()
        deposit_txid = await anvil.fund(deposit_address, 1 * ETHER)  # fork + 1
        await anvil.fund(wallet_address, 2 * ETHER)  # fork + 2
        await anvil.mine(2)
        tip = await anvil.block_number()

        # One pass hands each block, read once, to every watcher on it.
        deposits, again = EvmDeposits(reader, [deposit_address]), EvmDeposits(reader, [deposit_address.lower()])
        first = await watch.advance("deposits:ETH", start, [deposits, again], max_blocks=100)
        assert (first.done, first.rewound_to, first.last_height) == (True, None, tip)
        assert sorted(reader.reads) == list(range(fork, tip + 1))
        [seen] = deposits.transfers(first.tip)
        assert (seen.ref, seen.amount, seen.block_number) == (deposit_txid, ETHER, fork + 1)
        assert seen.confirmations == tip - fork
        assert again.transfers(first.tip) == deposits.transfers(first.tip)

        [synced] = await sync_addresses(engine, source, [wallet_address], start)
        assert synced.status == "synced"
        assert await _wallet_rows(engine, wallet_address) == {2 * ETHER: fork + 2}
        async with engine.connect() as conn:
            window = dict((await conn.execute(select(watch_blocks.c.height, watch_blocks.c.hash))).all())
        assert set(range(fork, tip + 1)) <= set(window)

        # A reorg 4 blocks deep (within the policy): the new branch pays the wallet 3 ETH instead,
        # and the deposit is gone.
        await anvil.revert(snapshot)
        await anvil.fund(wallet_address, 3 * ETHER)  # fork + 1 of the new branch
        await anvil.mine(4)
        new_tip = await anvil.block_number()

        deposits = EvmDeposits(reader, [deposit_address])
        rewound = await watch.advance("deposits:ETH", first.position, [deposits], max_blocks=100)
        assert rewound.rewound_to == fork  # the exact fork point, found in the window
        assert (rewound.done, rewound.last_height, deposits.transfers(rewound.tip)) == (True, new_tip, ())

        async with engine.connect() as conn:
            checkpoint = await conn.scalar(
                select(wallet_addresses.c.checkpoint).where(wallet_addresses.c.address == wallet_address)
            )
        [resynced] = await sync_addresses(engine, source, [wallet_address], checkpoint)
        assert resynced.status == "synced"
        # The orphaned payment is unconfirmed again; the new branch's one confirmed at fork + 1.
        assert await _wallet_rows(engine, wallet_address) == {2 * ETHER: None, 3 * ETHER: fork + 1}

        # A reorg deeper than the policy: both consumers stop, audited, rather than guess.
        deep_snapshot = await anvil.snapshot()
        await anvil.fund(deposit_address, 5 * ETHER)
        await anvil.mine(MAX_DEPTH + 1)
        before_deep = await watch.advance("deposits:ETH", rewound.position, [], max_blocks=100)
        async with engine.connect() as conn:
            checkpoint = await conn.scalar(
                select(wallet_addresses.c.checkpoint).where(wallet_addresses.c.address == wallet_address)
            )
        [ahead] = await sync_addresses(engine, source, [wallet_address], checkpoint)
        assert ahead.status == "synced"
        await anvil.revert(deep_snapshot)
        await anvil.fund(wallet_address, 7 * ETHER)
        await anvil.mine(MAX_DEPTH + 2)

        with pytest.raises(ReorgTooDeep, match=f"deeper than {MAX_DEPTH} blocks"):
            await watch.advance("deposits:ETH", before_deep.position, [], max_blocks=100)
        async with engine.connect() as conn:
            checkpoint = await conn.scalar(
                select(wallet_addresses.c.checkpoint).where(wallet_addresses.c.address == wallet_address)
            )
        [stopped] = await sync_addresses(engine, source, [wallet_address], checkpoint)
        assert stopped.status == "error"
        assert stopped.error is not None
        assert f"deeper than {MAX_DEPTH} blocks" in stopped.error
        async with engine.connect() as conn:
            stops = sorted((await conn.execute(select(watch_stops.c.chain, watch_stops.c.consumer))).all())
            audited = (
                await conn.execute(
                    select(audit_log.c.entity_id).where(audit_log.c.action == "watch.stopped").order_by(audit_log.c.id)
                )
            ).all()
        assert stops == [("ETH", "deposits:ETH"), ("ETH", "wallets")]
        assert sorted(r.entity_id for r in audited) == ["ETH/deposits:ETH", "ETH/wallets"]

        # The stop is in the database: another process's engine refuses too, from any position,
        # until the operator resumes the consumer.
        other = ChainWatch(EvmBlocks(anvil.rpc_url), max_depth=MAX_DEPTH, engine=engine)
        with pytest.raises(WatcherStopped):
            await other.advance("deposits:ETH", None, [], max_blocks=1)
        assert await resume_consumer(engine, "ETH", "deposits:ETH")
        assert not await resume_consumer(engine, "ETH", "deposits:ETH")
        resumed = await other.advance("deposits:ETH", await position_at(anvil, new_tip), [], max_blocks=1)
        assert resumed.rewound_to is None
    finally:
        await source.aclose()
        await reader.aclose()
