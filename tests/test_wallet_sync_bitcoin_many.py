"""An address with thousands of transactions syncs completely from a Bitcoin node, follows a reorg.

The module has its own regtest node (the session's ``bcoin`` node stays small for the other
tests) and builds on it, with keys it holds (P2WPKH, signed with embit by
:class:`benchmarks.wallets_node.RegtestBuilder`), a history of about 2,400 transactions
touching one target address: 2,000+ payments funder -> target (some paying it twice in one
transaction), and spends target -> elsewhere with change back (``out``), without change
(``out``) and to itself (``self``, consolidations), some spending change of earlier spends.
The last three blocks hold target transactions for the reorg test, one of them an incoming
payment (the victim) whose input the test double-spends in a competing block it builds and
submits itself (``submitblock``): the node's miner would re-mine the victim from the mempool.

What is checked: the stored rows are exactly the transactions built (txids, ``net`` and
direction of each), the stored confirmed balance is the node's UTXO set (``scantxoutset``), a
second sync reads no block, and after the reorg every row is in the node's main chain except
the victim, which no longer counts in the confirmed balance.

The reorg test runs after the sync test (file order): it changes the node's chain.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from embit import compact, script  # type: ignore[import-untyped]
from embit.transaction import (  # type: ignore[import-untyped]
    Transaction,
    TransactionInput,
    TransactionOutput,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.wallets_node import COIN, REGTEST_HALVING, BuiltTx, Coin, RegtestBuilder, fee_for
from mixhouse.chains.bitcoin import networks
from mixhouse.chains.bitcoin.devnet import RegtestNode
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.db.tables import address_balances, address_txs
from mixhouse.errors import ChainError
from mixhouse.wallets import service
from mixhouse.wallets.sources.bitcoin_node import REORG_STEP_BACK, BitcoinNodeSource
from mixhouse.wallets.sync import SyncResult, sync_address
from tests.fixtures.bcoin import _ensure_bcoin

PAYMENTS = 2_000
PER_BLOCK = 400
PAGE = 25  # blocks per fetch: ~115 blocks come in 5 checkpointed pages


@dataclass
class History:
    """What the module built on its node.

    Attributes:
        builder: keys and RPC on the node (``builder.node`` is the node).
        target: the address whose history is synced.
        funder: the address paying the target (coinbases and their split go there too).
        txs: every transaction touching the target, by txid.
        kinds: the expected direction of each (``in``, ``out``, ``self``), by txid.
        reorg_block: hash of the block the reorg test invalidates (it and the 2 above it hold
            target transactions).
        victim: an incoming payment in ``reorg_block`` (its output to the target never spent).
        rival: a transaction spending the victim's input to the funder, signed, never sent.
    """

    builder: RegtestBuilder
    target: str
    funder: str
    txs: dict[str, BuiltTx]
    kinds: dict[str, str]
    reorg_block: str
    victim: BuiltTx
    rival: BuiltTx


class CountingRpc(BitcoinRpc):
    """A :class:`BitcoinRpc` counting the calls made, per method."""

    def __init__(self, url: str, *, user: str, password: str) -> None:
        super().__init__(url, user=user, password=password, timeout=60.0)
        self.calls: Counter[str] = Counter()

    async def call(self, method: str, *params: Any) -> Any:
        self.calls[method] += 1
        return await super().call(method, *params)


class _Builder:
    """Builds the target's history block by block (see the module docstring)."""

    def __init__(self, builder: RegtestBuilder, rng: random.Random) -> None:
        self.b = builder
        self.rng = rng
        self.funder = builder.address("many funder")
        self.target = builder.address("many target")
        self.elsewhere = builder.address("many elsewhere")
        self.txs: dict[str, BuiltTx] = {}
        self.kinds: dict[str, str] = {}
        self.coins: list[Coin] = []  # the target's confirmed, unspent coins

    def payment(self, funding: Coin, *, twice: bool = False) -> BuiltTx:
        amount = self.rng.randint(10_000, 2_000_000)
        outputs = [(self.target, amount)] * (2 if twice else 1)
        change = funding.value - amount * len(outputs) - fee_for(1, len(outputs) + 1)
        return self._keep(self.b.sign([funding], [*outputs, (self.funder, change)]), "in")

    def spend(self, kind: str, inputs: list[Coin]) -> BuiltTx:
        """``kind``: ``change`` (out, change back), ``all`` (out, no change), ``self``."""
        total = sum(c.value for c in inputs)
        fee = fee_for(len(inputs), 2)
        if kind == "change":
            amount = self.rng.randint(1_000, (total - fee) // 2)
            outputs = [(self.elsewhere, amount), (self.target, total - amount - fee)]
        else:
            outputs = [(self.elsewhere if kind == "all" else self.target, total - fee)]
        return self._keep(self.b.sign(inputs, outputs), "self" if kind == "self" else "out")

    def take(self, count: int) -> list[Coin]:
        """``count`` random confirmed target coins, removed from the pool."""
        return [self.coins.pop(self.rng.randrange(len(self.coins))) for _ in range(count)]

    def random_spends(self, count: int) -> list[BuiltTx]:
        kinds = self.rng.choices(["change", "all", "self"], weights=[5, 3, 2], k=count)
        return [self.spend(kind, self.take(self.rng.randint(2 if kind == "self" else 1, 3))) for kind in kinds]

    def block(self, txs: list[BuiltTx]) -> str:
        """Send ``txs`` (parents first), mine them into one block; its hash."""
        self.b.send(txs)
        [block_hash] = self.b.mine(1, self.funder)
        if self.b.rpc("getrawmempool"):
            raise RuntimeError("a block did not take every transaction sent")
        spent = {(c.txid, c.vout) for t in txs for c in t.inputs}
        self.coins += [c for t in txs for c in t.outputs if c.address == self.target and (c.txid, c.vout) not in spent]
        return block_hash

    def _keep(self, tx: BuiltTx, kind: str) -> BuiltTx:
        self.txs[tx.txid] = tx
        self.kinds[tx.txid] = kind
        return tx


def _build(node: RegtestNode) -> History:
    builder = RegtestBuilder(node)
    h = _Builder(builder, random.Random(2024))
    funding = builder.fund(h.funder, PAYMENTS + 100, COIN // 20)
    # 2,000 payments, every 25th paying the target twice, in blocks of PER_BLOCK.
    payments = [h.payment(coin, twice=n % 25 == 0) for n, coin in enumerate(funding[:PAYMENTS])]
    for start in range(0, PAYMENTS, PER_BLOCK):
        h.block(payments[start : start + PER_BLOCK])
    # Spends of those coins, then spends mixing new payments and change of the first spends.
    h.block(h.random_spends(250))
    h.block([*h.random_spends(60), *(h.payment(coin) for coin in funding[PAYMENTS : PAYMENTS + 30])])
    # The reorg segment: 3 blocks with payments and spends; the next block spends coins the
    # first one made, so the node must re-mine them in order after the reorg.
    segment = funding[PAYMENTS + 30 :]
    first_payments = [h.payment(coin) for coin in segment[:40]]
    victim = first_payments[0]
    reorg_block = h.block([*first_payments, *h.random_spends(20)])
    h.coins = [c for c in h.coins if c.txid != victim.txid]  # the victim's output stays unspent
    made = {t.txid for t in first_payments}
    chained = [c for c in h.coins if c.txid in made][:5]
    h.coins = [c for c in h.coins if c not in chained]
    h.block(
        [
            *(h.payment(coin) for coin in segment[40:50]),
            *(h.spend("change", [coin]) for coin in chained),
            *h.random_spends(5),
        ]
    )
    h.block([h.payment(coin) for coin in segment[50:60]])
    [funding_coin] = victim.inputs
    rival = builder.sign([funding_coin], [(h.funder, funding_coin.value - fee_for(1, 1))])
    return History(builder, h.target, h.funder, h.txs, h.kinds, reorg_block, victim, rival)


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    """A dedicated regtest node holding the target's history; stopped after the module."""
    _ensure_bcoin()
    node = RegtestNode.start()
    try:
        built = _build(node)
        try:
            yield built
        finally:
            built.builder.close()
    finally:
        node.stop()


def _rpc(history: History) -> CountingRpc:
    node = history.builder.node
    return CountingRpc(node.rpc_url, user=node.rpc_user, password=node.rpc_password)


async def _import(engine: AsyncEngine, address: str) -> None:
    user = await service.create_user(engine, "many")
    wallet = await service.create_wallet(engine, user.id, "busy")
    await service.import_addresses(engine, int(wallet["id"]), "BTC", [address], bitcoin_network="regtest")


async def _rows(engine: AsyncEngine) -> dict[str, Any]:
    """The stored rows by txid (``net``, ``direction``, ``block_height``, ``block_hash``)."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    address_txs.c.txid,
                    address_txs.c.net,
                    address_txs.c.direction,
                    address_txs.c.block_height,
                    address_txs.c.block_hash,
                )
            )
        ).all()
    return {r.txid: r for r in rows}


async def _balance(engine: AsyncEngine, address: str) -> tuple[int, int]:
    """Stored ``(confirmed, unconfirmed)`` BTC balance of ``address``, satoshi."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(address_balances.c.confirmed, address_balances.c.unconfirmed).where(
                    address_balances.c.address == address, address_balances.c.asset == "BTC"
                )
            )
        ).one()
    return int(row.confirmed), int(row.unconfirmed)


def _node_balance(history: History) -> int:
    """The target's confirmed balance as the node sees it: its UTXO set, satoshi."""
    unspent = history.builder.rpc("scantxoutset", "start", [f"addr({history.target})"])["unspents"]
    return sum(round(u["amount"] * COIN) for u in unspent)


def _in_main_chain(history: History, rows: dict[str, Any]) -> bool:
    """Whether every confirmed row's block is the node's main-chain block at its height."""
    heights = sorted({r.block_height for r in rows.values() if r.block_height is not None})
    hashes = dict(zip(heights, history.builder.batch([("getblockhash", [h]) for h in heights]), strict=True))
    return all(r.block_hash == hashes[r.block_height] for r in rows.values() if r.block_height is not None)


async def _full_sync(engine: AsyncEngine, history: History, rpc: BitcoinRpc) -> SyncResult:
    await _import(engine, history.target)
    source = BitcoinNodeSource(rpc, network="regtest", blocks_per_page=PAGE)
    return await sync_address(engine, source, history.target)


async def test_thousands_of_transactions_sync_completely_then_nothing_is_refetched(
    engine: AsyncEngine, history: History
) -> None:
    rpc = _rpc(history)
    try:
        t0 = time.perf_counter()
        first = await _full_sync(engine, history, rpc)
        elapsed = time.perf_counter() - t0
        assert len(history.txs) >= 2_000
        assert (first.status, first.stored) == ("synced", len(history.txs)), first
        assert first.pages >= 4  # several checkpointed pages
        print(f"full sync: {len(history.txs)} transactions, {first.pages} pages in {elapsed:.2f} s")
        rows = await _rows(engine)
        assert set(rows) == set(history.txs)
        assert {txid: r.net for txid, r in rows.items()} == {
            t.txid: t.net(history.target) for t in history.txs.values()
        }
        assert {txid: r.direction for txid, r in rows.items()} == history.kinds
        assert set(history.kinds.values()) == {"in", "out", "self"}
        assert all(r.block_height is not None for r in rows.values())
        assert _in_main_chain(history, rows)
        confirmed, unconfirmed = await _balance(engine, history.target)
        assert confirmed == _node_balance(history) == sum(r.net for r in rows.values())
        assert unconfirmed == 0

        # A second sync reads no block: the tip height and the checkpoint's hash, nothing else.
        rpc.calls.clear()
        source = BitcoinNodeSource(rpc, network="regtest", blocks_per_page=PAGE)
        second = await sync_address(engine, source, history.target)
        assert (second.status, second.pages, second.stored) == ("synced", 1, 0)
        assert rpc.calls == Counter({"getblockcount": 1, "getblockhash": 1})
    finally:
        await rpc.aclose()


async def test_a_reorg_that_double_spends_a_payment(engine: AsyncEngine, history: History) -> None:
    builder = history.builder
    rpc = _rpc(history)
    try:
        first = await _full_sync(engine, history, rpc)
        assert first.stored == len(history.txs)
        old_tip = int(builder.rpc("getblockcount"))
        orphaned = builder.batch([("getblockhash", [h]) for h in range(old_tip - 2, old_tip + 1)])
        assert orphaned[0] == history.reorg_block
        assert len(orphaned) <= REORG_STEP_BACK  # within the depth the source steps back

        # The 3 blocks go; their transactions return to the mempool. The competing chain's
        # first block holds the rival (so the victim conflicts and leaves the mempool), the
        # next ones the rest of the orphaned transactions, one block more than before.
        builder.rpc("invalidateblock", history.reorg_block)
        parent = builder.rpc("getbestblockhash")
        assert builder.rpc("submitblock", _block_hex(builder, parent, [history.rival], history.funder)) is None
        rival_block = builder.rpc("getblock", builder.rpc("getbestblockhash"), 1)
        assert rival_block["height"] == old_tip - 2
        assert history.rival.txid in rival_block["tx"]
        assert history.victim.txid not in builder.rpc("getrawmempool")
        builder.mine_all(history.funder)
        builder.mine(max(0, old_tip + 1 - int(builder.rpc("getblockcount"))), history.funder)

        source = BitcoinNodeSource(rpc, network="regtest", blocks_per_page=PAGE)
        third = await sync_address(engine, source, history.target)
        assert third.status == "synced"
        rows = await _rows(engine)
        victim = rows.get(history.victim.txid)
        # The store keeps a vanished transaction as unconfirmed (nothing says it is gone for
        # good); it must not count as confirmed.
        assert victim is None or victim.block_height is None
        others = {txid: r for txid, r in rows.items() if txid != history.victim.txid}
        assert set(others) == set(history.txs) - {history.victim.txid}
        assert all(r.block_height is not None for r in others.values())
        assert not {r.block_hash for r in rows.values()} & set(orphaned)
        assert _in_main_chain(history, rows)
        confirmed, _ = await _balance(engine, history.target)
        assert confirmed == _node_balance(history) == sum(r.net for r in others.values())
    finally:
        await rpc.aclose()


# -- page reading with blocks in flight, on a scripted node (no process) ---------------------

FAKE_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


class ScriptedNode(BitcoinRpc):
    """A node answering from ``blocks`` (height -> block), slower for lower heights so the
    answers to requests in flight arrive out of order; ``fail_at`` makes that block's
    ``getblock`` fail."""

    def __init__(self, blocks: dict[int, dict[str, Any]], tip: int, fail_at: int | None = None) -> None:
        super().__init__("http://127.0.0.1:9/")
        self.blocks = blocks
        self.by_hash = {b["hash"]: b for b in blocks.values()}
        self.tip = tip
        self.fail_at = fail_at
        self.requested: list[int] = []

    async def getblockcount(self) -> int:
        return self.tip

    async def getblockhash(self, height: int) -> str | None:
        block = self.blocks.get(height)
        return None if block is None else str(block["hash"])

    async def getblock_verbose(self, block_hash: str) -> dict[str, Any] | None:
        block = self.by_hash[block_hash]
        self.requested.append(int(block["height"]))
        await asyncio.sleep(0.001 * (20 - int(block["height"])))
        if block["height"] == self.fail_at:
            raise ChainError("getblock: the node timed out")
        return block


def _fake_block(height: int, previous: str | None, tag: str = "A") -> dict[str, Any]:
    """A block at ``height`` whose one transaction pays FAKE_ADDRESS ``height`` BTC."""
    spk = {"hex": networks.script_pubkey(FAKE_ADDRESS, "regtest").hex()}
    other = {"hex": "0014" + "11" * 20}
    tx = {
        "txid": f"{tag}{height:063x}",
        "vin": [{"txid": "22" * 32, "vout": 0, "prevout": {"value": height + 1, "scriptPubKey": other}}],
        "vout": [{"n": 0, "value": height, "scriptPubKey": spk}],
    }
    block: dict[str, Any] = {"hash": f"{tag}{height}", "height": height, "time": 1_700_000_000 + height, "tx": [tx]}
    if previous is not None:
        block["previousblockhash"] = previous
    return block


def _fake_chain(tip: int) -> dict[int, dict[str, Any]]:
    return {h: _fake_block(h, None if h == 0 else f"A{h - 1}") for h in range(tip + 1)}


async def test_blocks_in_flight_are_kept_in_height_order() -> None:
    node = ScriptedNode(_fake_chain(12), 12)
    source = BitcoinNodeSource(node, network="regtest", blocks_per_page=10, concurrency=4)
    page = await source.fetch([FAKE_ADDRESS], "0:A0")
    assert [t.block_height for t in page.txs] == list(range(1, 11))
    assert [t.net for t in page.txs] == [100_000_000 * h for h in range(1, 11)]
    assert (page.checkpoint, page.done, page.rewound_to) == ("10:A10", False, None)
    page = await source.fetch([FAKE_ADDRESS], page.checkpoint)
    assert ([t.block_height for t in page.txs], page.checkpoint, page.done) == ([11, 12], "12:A12", True)


async def test_a_page_stops_where_the_chain_changed_under_it() -> None:
    # Height 6 was read after a reorg: it extends B5, not the A5 read before it.
    blocks = _fake_chain(9)
    blocks[6] = _fake_block(6, "B5", tag="B")
    source = BitcoinNodeSource(ScriptedNode(blocks, 9), network="regtest", blocks_per_page=10)
    page = await source.fetch([FAKE_ADDRESS], "3:A3")
    assert ([t.block_height for t in page.txs], page.checkpoint, page.done) == ([4, 5], "5:A5", False)
    # The tip went down while the page was read: the page ends at the last block that exists.
    del blocks[7]
    source = BitcoinNodeSource(ScriptedNode(blocks, 9), network="regtest", blocks_per_page=10)
    page = await source.fetch([FAKE_ADDRESS], "6:B6")
    assert (page.txs, page.checkpoint, page.done) == ((), "6:B6", False)


async def test_a_failed_block_read_fails_the_page_and_cancels_the_others() -> None:
    node = ScriptedNode(_fake_chain(30), 30, fail_at=5)
    source = BitcoinNodeSource(node, network="regtest", blocks_per_page=30, concurrency=4)
    with pytest.raises(ChainError, match="timed out"):
        await source.fetch([FAKE_ADDRESS], "0:A0")
    assert max(node.requested) <= 5 + 4  # no more than the window past the failed block
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _merkle_root(leaves: list[bytes]) -> bytes:
    """Bitcoin's merkle root of internal-order hashes (an odd level repeats its last hash)."""
    level = leaves
    while len(level) > 1:
        if len(level) % 2:
            level = [*level, level[-1]]
        level = [_sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _push_number(n: int) -> bytes:
    """A script push of ``n`` as a minimal CScriptNum (BIP-34 coinbase height), ``n > 16``."""
    data = n.to_bytes((n.bit_length() + 8) // 8, "little")  # a spare bit keeps the sign positive
    return bytes([len(data)]) + data


def _block_hex(builder: RegtestBuilder, parent: str, txs: list[BuiltTx], pay_to: str) -> str:
    """A valid block on ``parent`` holding ``txs``: BIP-34 coinbase paying the subsidy to
    ``pay_to``, BIP-141 witness commitment, proof of work at the parent's (regtest) bits."""
    header = builder.rpc("getblockheader", parent, True)
    height = int(header["height"]) + 1
    bits = int(header["bits"], 16) if isinstance(header["bits"], str) else int(header["bits"])
    reserved = bytes(32)
    witness_root = _merkle_root([reserved, *(_sha256d(bytes.fromhex(t.raw_hex)) for t in txs)])
    commitment = bytes.fromhex("6a24aa21a9ed") + _sha256d(witness_root + reserved)
    coinbase = Transaction(
        version=1,
        vin=[
            TransactionInput(
                reserved,
                0xFFFFFFFF,
                script_sig=script.Script(_push_number(height) + b"\x0emixhouse rival"),
                witness=script.Witness([reserved]),
            )
        ],
        vout=[
            TransactionOutput(50 * COIN >> (height // REGTEST_HALVING), script.address_to_scriptpubkey(pay_to)),
            TransactionOutput(0, script.Script(commitment)),
        ],
    )
    root = _merkle_root([coinbase.txid()[::-1], *(bytes.fromhex(t.txid)[::-1] for t in txs)])
    stamp = max(int(header["time"]) + 1, int(time.time()))
    head = (
        (0x20000000).to_bytes(4, "little") + bytes.fromhex(parent)[::-1] + root + stamp.to_bytes(4, "little")
    ) + bits.to_bytes(4, "little")
    target = (bits & 0xFFFFFF) << (8 * ((bits >> 24) - 3))
    nonce = next(
        n for n in range(2**32) if int.from_bytes(_sha256d(head + n.to_bytes(4, "little")), "little") <= target
    )
    body = b"".join(bytes.fromhex(t.raw_hex) for t in txs)
    count = bytes(compact.to_bytes(1 + len(txs)))
    raw = head + nonce.to_bytes(4, "little") + count + bytes(coinbase.serialize()) + body
    return raw.hex()
