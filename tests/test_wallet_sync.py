"""The sync engine on a real node: import, full sync, incremental re-sync, balances, reorg."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from eth_account import Account
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.tables import address_balances, address_txs, wallet_addresses
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.wallets import service
from mixhouse.wallets.records import AddressTx, HistoryPage, Leg
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


# -- the engine's grouping and reorg scope, on a scripted source -------------------------------


@dataclass
class ScriptedChain:
    """A source over a scripted chain: ``blocks[h]`` is ``(hash, {address: net})``.

    Checkpoints are ``"<height>:<hash>"`` like a node's; a checkpoint whose block was replaced
    steps back two blocks (a node source steps back further than the fork, not knowing where
    it is). Every fetch is recorded with its address set.
    """

    blocks: list[tuple[str, dict[str, int]]]
    chain: str = "BTC"
    max_addresses_per_fetch: int = 100
    fetches: list[tuple[str, ...]] = field(default_factory=list)

    async def fetch(self, addresses: Sequence[str], checkpoint: str | None) -> HistoryPage:
        self.fetches.append(tuple(addresses))
        start, rewound = 0, None
        if checkpoint is not None:
            height, _, block_hash = checkpoint.partition(":")
            start = int(height) + 1
            if self.blocks[int(height)][0] != block_hash:
                start, rewound = int(height) - 1, int(height) - 2
        txs = tuple(
            AddressTx(
                "BTC",
                address,
                f"{block_hash}-{address}",
                (),
                (Leg(0, address, net, "BTC"),),
                net,
                "BTC",
                0,
                height,
                block_hash,
                T0,
            )
            for height, (block_hash, nets) in enumerate(self.blocks)
            if height >= start
            for address, net in nets.items()
            if address in addresses
        )
        tip = len(self.blocks) - 1
        return HistoryPage(txs, f"{tip}:{self.blocks[tip][0]}", done=True, rewound_to=rewound)


T0 = datetime(2025, 1, 1, tzinfo=UTC)
ADDRESSES = [f"bcrt1qaddress{n}" for n in range(5)]


async def _import_raw(engine: AsyncEngine, addresses: list[str]) -> None:
    user = await service.create_user(engine, "bob")
    wallet = await service.create_wallet(engine, user.id, "w")
    async with engine.begin() as conn:
        await conn.execute(
            wallet_addresses.insert().values(
                [{"wallet_id": wallet["id"], "chain": "BTC", "address": a} for a in addresses]
            )
        )


async def _confirmed(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(address_balances.c.address, address_balances.c.confirmed))).all()
    return {r.address: int(r.confirmed) for r in rows}


async def test_addresses_at_one_checkpoint_are_fetched_together(engine: AsyncEngine) -> None:
    await _import_raw(engine, ADDRESSES)
    source = ScriptedChain([("h0", {}), ("h1", {a: 10 + n for n, a in enumerate(ADDRESSES)})])
    results = await sync_all(engine, lambda chain: source if chain == "BTC" else None)
    assert sorted(r.address for r in results) == ADDRESSES
    assert {r.status for r in results} == {"synced"}
    assert source.fetches == [tuple(ADDRESSES)]  # one fetch for the five addresses
    assert await _confirmed(engine) == {a: 10 + n for n, a in enumerate(ADDRESSES)}
    # A smaller fetch limit splits the group; the checkpoints still agree afterwards.
    source.blocks.append(("h2", {ADDRESSES[0]: 1}))
    source.max_addresses_per_fetch, source.fetches = 2, []
    await sync_all(engine, lambda chain: source)
    assert [len(f) for f in source.fetches] == [2, 2, 1]
    assert (await _confirmed(engine))[ADDRESSES[0]] == 11


async def test_a_reorg_seen_by_one_group_leaves_other_addresses_confirmed(engine: AsyncEngine) -> None:
    a, b = ADDRESSES[:2]
    await _import_raw(engine, [a, b])
    source = ScriptedChain([("h0", {}), ("h1", {a: 5, b: 7}), ("h2", {b: 2}), ("h3", {a: 3})])
    await sync_all(engine, lambda chain: source)
    # Block 3 is replaced; only a's copy had seen it (b is set to block 2, still valid).
    async with engine.begin() as conn:
        await conn.execute(update(wallet_addresses).where(wallet_addresses.c.address == b).values(checkpoint="2:h2"))
    source.blocks[3] = ("h3b", {})
    await sync_all(engine, lambda chain: source)
    async with engine.connect() as conn:
        rows = {
            (r.address, r.block_height)
            for r in (await conn.execute(select(address_txs.c.address, address_txs.c.block_height))).all()
        }
    # a steps back to block 1 and its block-3 payment is orphaned (unconfirmed); b's block-2 row,
    # which b will never read again, stays confirmed.
    assert rows == {(a, 1), (a, None), (b, 1), (b, 2)}
    assert await _confirmed(engine) == {a: 5, b: 9}
