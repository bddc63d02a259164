"""One scanning engine per node and process (issue 8 part 1), on anvil: the mixer's deposit scans
of ETH and of a token and a wallet-sync pass over the same blocks fetch each block from the node
once (the engine's block cache serves the others); a cached block that a reorg orphaned is never
handed on as main chain (one ``hash_at`` at the top of a cached run proves it, or the run is
read again from the node); the cache keeps the highest heights, at most its size. On a bcoin
regtest node, the Bitcoin deposit scan and wallet sync share one engine the same way."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.app.worker import create_job_app
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.chains.evm import EvmAdapter
from mixhouse.config import Settings
from mixhouse.db.tables import address_txs
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.screening import Screener
from mixhouse.wallets import service
from mixhouse.wallets import tasks as wallet_tasks
from mixhouse.wallets.records import HistorySource
from mixhouse.wallets.sources import configured
from mixhouse.wallets.sources.bitcoin_node import BitcoinNodeSource
from mixhouse.wallets.sources.ethereum_node import EthereumNodeSource
from mixhouse.wallets.sync import sync_addresses
from mixhouse.watch import registry
from mixhouse.watch.bitcoin import BitcoinBlocks
from mixhouse.watch.deposits import EvmDeposits
from mixhouse.watch.engine import Block, BlockCache, ChainWatch
from mixhouse.watch.registry import ChainWatches
from mixhouse.watch.scans import DepositScanner
from tests.fixtures.anvil import USDT, Anvil, deploy_token
from tests.fixtures.bcoin import Bcoin
from tests.scanning import CountingBlocks, position_at

MAX_DEPTH = 6
ETHER = 10**18


class Hashes:
    """A watcher recording ``{height: hash}`` of the blocks it is handed."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}

    async def on_block(self, block: Block) -> None:
        self.seen[block.height] = block.hash


async def _node_hashes(anvil: Anvil, start: int, end: int) -> dict[int, str]:
    """``{height: hash}`` of anvil's main chain ``start..end``."""
    found = {}
    for height in range(start, end + 1):
        block = await anvil.rpc("eth_getBlockByNumber", [hex(height), False])
        found[height] = str(block["hash"])
    return found


async def test_deposit_scans_and_wallet_sync_fetch_each_block_once(
    engine: AsyncEngine, anvil: Anvil, evm_adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The registry's readers count the full block reads they send to the node.
    monkeypatch.setattr(registry, "EvmBlocks", CountingBlocks)
    usdt = await deploy_token(anvil, evm_adapter, "usdt")
    usdt_deposit, eth_deposit = usdt.token.deposit_address(0), Account.create().address
    wallet_address = Account.create().address
    user = await service.create_user(engine, "sharer")
    wallet = await service.create_wallet(engine, user.id, "main")
    await service.import_addresses(engine, wallet["id"], "ETH", [wallet_address], bitcoin_network="regtest")

    watches = ChainWatches(max_depth=MAX_DEPTH, engine=engine)
    scanner = DepositScanner(watches=watches)
    source = EthereumNodeSource(anvil.rpc_url, watch=watches.evm(anvil.rpc_url))
    try:
        await anvil.mine(1)
        first = await anvil.block_number()
        start = await position_at(anvil, first - 1)
        usdt_txid = await usdt.pay(usdt_deposit, 250 * USDT)  # first + 1
        eth_txid = await anvil.fund(eth_deposit, ETHER)  # first + 2
        await anvil.fund(wallet_address, 2 * ETHER)  # first + 3
        await anvil.mine(2)
        tip = await anvil.block_number()

        eth = await scanner.scan(evm_adapter, [eth_deposit], start)
        token = await scanner.scan(usdt.token, [usdt_deposit], "@" + start)
        [synced] = await sync_addresses(engine, source, [wallet_address], start)

        watch = watches.evm(anvil.rpc_url)
        assert scanner.watch_of(usdt.token) is scanner.watch_of(evm_adapter) is watch
        reader = watch.reader
        assert isinstance(reader, CountingBlocks)
        # Three consumers over the same blocks; the node was asked for each of them once.
        assert sorted(reader.reads) == list(range(first, tip + 1))
        assert (watch.blocks_from_node, watch.blocks_from_cache) == (tip - first + 1, 2 * (tip - first + 1))
        assert [t.ref for t in eth.transfers] == [eth_txid]
        assert [t.ref for t in token.transfers] == [f"{usdt_txid}/0"]
        head = await position_at(anvil, tip)
        assert (eth.scanned, token.scanned, eth.cursor, token.cursor) == (tip, tip, head, "@" + head)
        assert synced.status == "synced"
        async with engine.connect() as conn:
            rows = (await conn.execute(select(address_txs.c.net, address_txs.c.block_height))).all()
        assert [(int(r.net), r.block_height) for r in rows] == [(2 * ETHER, first + 3)]
    finally:
        await source.aclose()
        await scanner.aclose()
        await watches.aclose()


async def test_a_cached_block_orphaned_by_a_reorg_is_never_served(anvil: Anvil) -> None:
    deposit, other = Account.create().address, Account.create().address
    reader = CountingBlocks(anvil.rpc_url)
    watch = ChainWatch(reader, max_depth=MAX_DEPTH)
    try:
        await anvil.mine(1)
        fork = await anvil.block_number()
        start = await position_at(anvil, fork)
        snapshot = await anvil.snapshot()
        orphaned_txid = await anvil.fund(deposit, ETHER)  # fork + 1
        await anvil.mine(2)
        tip = await anvil.block_number()
        deposits = EvmDeposits(reader, [deposit])
        read = await watch.advance("deposits:a", start, [deposits], max_blocks=100)
        assert [t.ref for t in deposits.transfers(read.tip)] == [orphaned_txid]

        # No reorg: a second consumer over the same blocks is served from the cache.
        reader.reads.clear()
        hashes = Hashes()
        again = await watch.advance("deposits:b", start, [hashes], max_blocks=100)
        assert (again.done, again.last_height, reader.reads) == (True, tip, [])
        assert hashes.seen == await _node_hashes(anvil, fork + 1, tip)

        # A reorg to a branch as long as the cached one (same heights, other blocks): the cached
        # run still links to the position, but the node's hash at its top differs.
        await anvil.revert(snapshot)
        new_txid = await anvil.fund(other, 2 * ETHER)  # fork + 1 of the new branch
        await anvil.mine(2)
        assert await anvil.block_number() == tip
        reader.reads.clear()
        hashes, late = Hashes(), EvmDeposits(reader, [deposit, other])
        third = await watch.advance("deposits:c", start, [hashes, late], max_blocks=100)
        assert (third.done, third.last_height) == (True, tip)
        assert sorted(reader.reads) == list(range(fork + 1, tip + 1))
        assert hashes.seen == await _node_hashes(anvil, fork + 1, tip)
        assert [t.ref for t in late.transfers(third.tip)] == [new_txid]

        # The first consumer, on the orphaned branch, rewinds to the fork and is served the new
        # branch (now cached and proven), never its own orphaned blocks.
        reader.reads.clear()
        hashes, deposits = Hashes(), EvmDeposits(reader, [deposit, other])
        rewound = await watch.advance("deposits:a", read.position, [hashes, deposits], max_blocks=100)
        assert (rewound.rewound_to, rewound.last_height, reader.reads) == (fork, tip, [])
        assert hashes.seen == await _node_hashes(anvil, fork + 1, tip)
        assert [t.ref for t in deposits.transfers(rewound.tip)] == [new_txid]

        # Only the top block replaced: the whole cached run is refused, and read again.
        top = await anvil.snapshot()
        await anvil.mine(1)
        await watch.advance("deposits:a", rewound.position, [], max_blocks=100)
        await anvil.revert(top)
        await anvil.fund(deposit, 3 * ETHER)  # tip + 1 of the new branch
        reader.reads.clear()
        hashes = Hashes()
        last = await watch.advance("deposits:c", third.position, [hashes], max_blocks=100)
        assert (last.last_height, reader.reads) == (tip + 1, [tip + 1])
        assert hashes.seen == await _node_hashes(anvil, tip + 1, tip + 1)
    finally:
        await reader.aclose()


def test_the_block_cache_keeps_the_highest_heights_within_its_size() -> None:
    cache = BlockCache(3)
    blocks = [Block(h, f"h{h}", None if h == 0 else f"h{h - 1}", {}) for h in range(6)]
    for block in blocks[2:]:
        cache.put(block)
    cache.put(blocks[0])  # lower than all it keeps: not kept
    assert len(cache) == 3
    assert cache.run(3, 10, "h2") == blocks[3:6]
    assert cache.run(3, 4, "h2") == blocks[3:5]
    assert cache.run(3, 10, "other") == []
    assert cache.run(2, 10, "h1") == []  # height 2 went when 5 came
    cache.drop_from(4)
    assert (len(cache), cache.first_above(0)) == (1, 3)
    assert len(BlockCache(0)) == 0
    empty = BlockCache(0)
    empty.put(blocks[1])
    assert len(empty) == 0
    with pytest.raises(ValueError, match="at least 0"):
        BlockCache(-1)


async def test_bitcoin_deposit_scan_and_wallet_sync_fetch_each_block_once(
    bcoin: Bcoin, btc_adapter: BitcoinAdapter, btc_rpc: BitcoinRpc, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []
    for rpc in (btc_adapter.rpc, btc_rpc):
        original = rpc.getblock_verbose

        async def counting(block_hash: str, original: Any = original) -> Any:
            fetched.append(block_hash)
            return await original(block_hash)

        monkeypatch.setattr(rpc, "getblock_verbose", counting)
    deposit, wallet_address = btc_adapter.deposit_address(900), btc_adapter.deposit_address(901)
    watches = ChainWatches(max_depth=MAX_DEPTH)
    scanner = DepositScanner(watches=watches)
    # Its own client on the same node, as wallet sync's settings build it: the same engine.
    source = BitcoinNodeSource(btc_rpc, network="regtest", watch=watches.bitcoin(btc_rpc))
    try:
        first = await bcoin.tip() + 1
        start = f"{first - 1}:{await bcoin.rpc('getblockhash', first - 1)}"
        deposit_txid = await bcoin.fund(deposit, 400_000)
        wallet_txid = await bcoin.fund(wallet_address, 300_000)
        await bcoin.mine(3)
        tip = await bcoin.tip()

        scan = await scanner.scan(btc_adapter, [deposit], "@" + start)
        page = await source.fetch([wallet_address], start)

        assert watches.bitcoin(btc_adapter.rpc) is watches.bitcoin(btc_rpc) is scanner.watch_of(btc_adapter)
        assert len(fetched) == len(set(fetched)) == tip - first + 1
        assert [t.ref.split(":")[0] for t in scan.transfers] == [deposit_txid]
        assert [tx.txid for tx in page.txs] == [wallet_txid]
        assert scan.cursor is not None
        assert page.checkpoint == scan.cursor.removeprefix("@") == f"{tip}:{await bcoin.rpc('getblockhash', tip)}"
    finally:
        await scanner.aclose()
        await watches.aclose()


async def test_a_worker_hands_one_engine_per_node_to_the_deposit_scans_and_wallet_sync(
    engine: AsyncEngine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[dict[str, HistorySource]] = []
    real = configured.sources_from_settings

    def recording(settings: Settings, eng: AsyncEngine | None = None, *, watches: ChainWatches | None = None) -> Any:
        made.append(real(settings, eng, watches=watches))
        return made[-1]

    monkeypatch.setattr(wallet_tasks, "sources_from_settings", recording)
    rt = Runtime(
        settings=Settings(bitcoin_enabled=True, evm_enabled=True), engine=engine, adapters={}, screener=Screener([])
    )
    try:
        create_job_app(rt, database_url)
        [sources] = made
        watches = rt.chain_watches()
        # The engines the deposit scans and the wallet sources read through (private attributes:
        # nothing public says which engine an object reads through) are the runtime's ones.
        assert rt.deposit_scanner()._chains is watches
        eth, btc = sources["ETH"], sources["BTC"]
        assert isinstance(eth, EthereumNodeSource)
        assert isinstance(btc, BitcoinNodeSource)
        assert eth._watch is watches.evm(rt.settings.evm_rpc_url)
        reader = btc._watch.reader
        assert isinstance(reader, BitcoinBlocks)
        assert btc._watch is watches.bitcoin(reader.rpc)
    finally:
        await rt.aclose()
