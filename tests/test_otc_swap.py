"""Atomic swaps between two swap engines (issue 10, parts 3-4), each with its own database and
its own keys, in one test process, on the real bcoin regtest and anvil.

The tests drive the engines in rounds: every engine takes one pass, then a Bitcoin block and
an Ethereum block are mined (time moves on both chains only through those blocks, and the
refund tests move it faster). Nothing waits on wall-clock time: a round loop ends when the
swaps reach the expected states, or fails after a bounded number of rounds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.deploy import deploy_contract
from mixhouse.chains.evm.htlc import EvmHtlc, htlc_artifact
from mixhouse.chains.htlc import secret_hash
from mixhouse.db.engine import make_engine
from mixhouse.db.tables import otc_orders, otc_trades
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.signer import Signer, SoftwareSigner
from mixhouse.otc.devnet import Grapes
from mixhouse.otc.node import NewOrder
from mixhouse.otc.runtime import RunningNode
from mixhouse.otc.swaps import plan, store
from mixhouse.otc.swaps.engine import SwapEngine, SwapTrade, swap_rows
from mixhouse.otc.swaps.hook import NodeSwapTransport, serve_swaps, swap_trade_of
from mixhouse.otc.swaps.legs import BitcoinLeg, EvmLeg, LockSpec, StoredTx
from mixhouse.otc.swaps.transport import LocalTransport
from tests.fixtures.anvil import Anvil, deploy_test_token, make_evm_adapter, running_anvil
from tests.fixtures.bcoin import Bcoin
from tests.otc_support import PRICE, fresh_databases, start_nodes, wait_until

ETH = 10**18
BTC_SAT = 1_000_000
EVM_AMOUNT = {"eth": ETH // 10, "erc20": 2_500 * 10**6, "usdt": 2_500 * 10**6, "oz": 2_500 * 10**6}
# Test scale: a Bitcoin block stands for 10 s; T1 = 400 s (40 blocks), T2 = 200 s, k = 2.
SETTINGS = plan.SwapSettings(
    t1_seconds=400,
    t2_seconds=200,
    min_gap_seconds=120,
    claim_margin_seconds=40,
    lock_by_seconds=3_600,
    btc_block_seconds=10,
    btc_confirmations=2,
    evm_confirmations=2,
    message_retry_seconds=0,
)
MAX_ROUNDS = 120
RECEIPT_TIMEOUT_SECONDS = 60.0


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    """This module's own anvil: its timelock tests move the chain's time on
    (``evm_increaseTime``), which must not reach the session's node (see its fixture)."""
    with running_anvil() as node:
        yield node


@pytest.fixture
def bob_database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A second fresh migrated database: Bob's node."""
    with fresh_databases(pg_server_url, template_db, 1) as (url,):
        yield url


@dataclass
class Node:
    """One side: its database, keys, legs and (re)startable engine."""

    name: str
    db: AsyncEngine
    btc: BitcoinLeg
    evm: EvmLeg
    transport: LocalTransport
    engine: SwapEngine
    settings: plan.SwapSettings = SETTINGS

    def restart(self) -> None:
        """A new engine on the same database and keys (what a restarted node process has)."""
        self.engine = SwapEngine(
            self.db,
            node=self.name,
            legs={"btc": self.btc, "evm": self.evm},
            transport=self.transport,
            settings=self.settings,
        )
        self.transport.register(self.name, self.engine.handle)

    async def state(self, swap_id: str) -> str:
        async with self.db.connect() as conn:
            row = await store.get_swap(conn, swap_id)
        assert row is not None
        return str(row.state)

    async def row(self, swap_id: str) -> Any:
        async with self.db.connect() as conn:
            return await store.get_swap(conn, swap_id)


@dataclass
class World:
    bcoin: Bcoin
    anvil: Anvil
    rpc: BitcoinRpc
    adapter: EvmAdapter
    htlc: EvmHtlc
    tokens: dict[str, str]
    alice: Node
    bob: Node

    async def mine(self, btc_blocks: int = 1, evm_seconds: int = 0) -> None:
        await self.bcoin.mine(btc_blocks)
        if evm_seconds:
            await self.anvil.rpc("evm_increaseTime", [evm_seconds])
        await self.anvil.rpc("evm_mine")

    async def drive(
        self,
        until: Callable[[], Awaitable[bool]],
        *,
        nodes: tuple[Node, ...] | None = None,
        btc_blocks: int = 1,
        evm_seconds: int = 0,
        restart_each_round: bool = False,
    ) -> int:
        """Rounds of one pass per engine and one block per chain until ``until()``; returns
        the rounds taken."""
        running = nodes if nodes is not None else (self.alice, self.bob)
        for rounds in range(1, MAX_ROUNDS + 1):
            for node in running:
                if restart_each_round:
                    node.restart()
                await node.engine.run_once()
            if await until():
                return rounds
            await self.mine(btc_blocks, evm_seconds)
        raise AssertionError(f"not done after {MAX_ROUNDS} rounds: {await self.states()}")

    async def states(self) -> dict[str, list[tuple[str, str, Any]]]:
        found: dict[str, list[tuple[str, str, Any]]] = {}
        for node in (self.alice, self.bob):
            found[node.name] = [(r["swap_id"], r["state"], r["error"]) for r in await swap_rows(node.db)]
        return found

    async def btc_balance(self, address: str) -> int:
        result = await self.rpc.scantxoutset_addresses([address])
        return sum(int(Decimal(str(u["amount"])) * 100_000_000) for u in result.get("unspents", []))

    async def evm_balance(self, asset: str, owner: str) -> int:
        if asset == "eth":
            return await self.anvil.balance(owner)
        return await self.htlc.token_balance(self.tokens[asset], owner)

    async def evm_fee_paid(self, tx: StoredTx) -> int:
        receipt = await self.adapter.receipt(tx.txid)
        assert receipt is not None
        return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])


@pytest_asyncio.fixture
async def world(
    bcoin: Bcoin, anvil: Anvil, evm_keyring: HdKeyring, database_url: str, bob_database_url: str
) -> AsyncIterator[World]:
    """Alice and Bob, each with a database, a Bitcoin key and an Ethereum key (a fresh BIP-44
    account per test, so nonces and balances start clean); a fresh HTLC and test tokens."""
    async with make_world(bcoin, anvil, evm_keyring, database_url, bob_database_url) as built:
        yield built


@asynccontextmanager
async def make_world(
    bcoin: Bcoin,
    anvil: Anvil,
    evm_keyring: HdKeyring,
    database_url: str,
    bob_database_url: str,
    settings: plan.SwapSettings = SETTINGS,
) -> AsyncIterator[World]:
    """The :func:`world` of the tests (the benchmark builds one too)."""
    account = int.from_bytes(hashlib.sha256(database_url.encode()).digest()[:3], "big") % 100_000 + 1_000
    deployer, alice_evm, bob_evm = (f"m/44'/60'/{account}'/0/{i}" for i in range(3))
    adapter = make_evm_adapter(anvil, evm_keyring, confirmations=settings.evm_confirmations)
    rpc = bcoin.client(timeout=30.0)
    dbs = [make_engine(database_url, pool_size=3), make_engine(bob_database_url, pool_size=3)]
    try:
        for key_ref in (deployer, alice_evm, bob_evm):
            await anvil.fund(adapter.key_address(key_ref), 10 * ETH)
        htlc = EvmHtlc(adapter, await deploy_contract(adapter, deployer, htlc_artifact()["bytecode"]))
        tokens: dict[str, str] = {}
        for asset, name in (("erc20", "TestToken"), ("usdt", "NoReturnToken"), ("oz", "OzToken")):
            holders = {adapter.key_address(h): 100 * EVM_AMOUNT[asset] for h in (alice_evm, bob_evm)}
            tokens[asset] = await deploy_test_token(adapter, deployer, name, holders=holders)
        transport = LocalTransport()
        nodes = []
        for name, db, evm_key in (("alice", dbs[0], alice_evm), ("bob", dbs[1], bob_evm)):
            btc_key = hashlib.sha256(f"swap test {name} {account}".encode()).digest()
            btc = BitcoinLeg(
                rpc,
                signer=SoftwareSigner.from_keys({"swap": btc_key}),
                key_ref="swap",
                network="regtest",
                block_seconds=settings.btc_block_seconds,
            )
            evm = EvmLeg(htlc, key_ref=evm_key)
            node = Node(name, db, btc, evm, transport, None, settings)  # type: ignore[arg-type]
            node.restart()
            nodes.append(node)
        yield World(bcoin, anvil, rpc, adapter, htlc, tokens, nodes[0], nodes[1])
    finally:
        for db in dbs:
            await db.dispose()
        await rpc.aclose()
        await adapter.aclose()


async def _fund_btc(world: World, node: Node, sat: int) -> None:
    await world.bcoin.fund(node.btc.address, sat)
    await world.bcoin.mine(1)


def _trade(world: World, asset: str, *, initiator_chain: str = "btc") -> SwapTrade:
    """Alice pays Bitcoin, Bob pays ETH or tokens; the initiator is the side paying on
    ``initiator_chain``."""
    alice_initiates = initiator_chain == "btc"
    return SwapTrade(
        trade_id=uuid.uuid4().hex,
        initiator="alice" if alice_initiates else "bob",
        participant="bob" if alice_initiates else "alice",
        initiator_chain=initiator_chain,
        btc_sat=BTC_SAT,
        evm_amount=EVM_AMOUNT[asset],
        evm_token=None if asset == "eth" else world.tokens[asset],
    )


def _both(world: World, swap_id: str, alice: str, bob: str) -> Callable[[], Awaitable[bool]]:
    async def done() -> bool:
        return await world.alice.state(swap_id) == alice and await world.bob.state(swap_id) == bob

    return done


async def _audit_actions(node: Node, swap_id: str) -> list[str]:
    async with node.db.connect() as conn:
        rows = await conn.execute(
            text("SELECT action FROM audit_log WHERE entity_type = 'otc_swap' AND entity_id = :id ORDER BY id"),
            {"id": swap_id},
        )
        return [str(r.action) for r in rows]


@pytest.mark.parametrize("asset", ["eth", "erc20", "usdt", "oz"])
async def test_btc_against_evm_settles_with_the_agreed_amounts(world: World, asset: str) -> None:
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, asset)
    alice_btc_before = await world.btc_balance(alice.btc.address)
    bob_btc_before = await world.btc_balance(bob.btc.address)
    alice_evm_before = await world.evm_balance(asset, alice.evm.address)
    bob_evm_before = await world.evm_balance(asset, bob.evm.address)

    # Bob opens after Alice: her offer is refused ("unknown swap") until he has the trade.
    swap_id = await alice.engine.open_swap(trade)
    await alice.engine.run_once()
    assert await alice.state(swap_id) == "offering"
    assert await bob.engine.open_swap(trade) == swap_id
    await world.drive(_both(world, swap_id, "completed", "completed"))

    a, b = await alice.row(swap_id), await bob.row(swap_id)
    # One secret, known to both at the end; each side went through its whole machine.
    assert a.secret == b.secret
    assert secret_hash(bytes.fromhex(a.secret)).hex() == a.secret_hash == b.secret_hash
    assert [h["state"] for h in a.data["history"]] == [
        "agreed", "lock_signed", "locked", "lock_confirmed", "claim_signed", "claimed", "completed"
    ]  # fmt: skip
    assert [h["state"] for h in b.data["history"]] == [
        "offered", "lock_signed", "locked", "lock_confirmed", "secret_known", "claim_signed", "claimed", "completed"
    ]  # fmt: skip
    assert (await _audit_actions(alice, swap_id))[0] == "otc_swap.opened"
    assert "otc_swap.completed" in await _audit_actions(bob, swap_id)

    # Each chain's own view: Bob got the Bitcoin less his claim's fee, Alice the EVM amount
    # (less her claim's gas when it is ETH); each paid exactly the amount plus fees.
    alice_lock = StoredTx.from_json(a.data["lock_txs"][-1])
    bob_claim = StoredTx.from_json(b.data["claim_tx"])
    assert await world.btc_balance(bob.btc.address) == bob_btc_before + BTC_SAT - bob_claim.fee
    assert await world.btc_balance(alice.btc.address) == alice_btc_before - BTC_SAT - alice_lock.fee
    alice_claim = StoredTx.from_json(a.data["claim_tx"])
    amount = EVM_AMOUNT[asset]
    if asset == "eth":
        bob_fees = sum([await world.evm_fee_paid(StoredTx.from_json(t)) for t in b.data["lock_txs"]])
        assert await world.evm_balance(
            "eth", alice.evm.address
        ) == alice_evm_before + amount - await world.evm_fee_paid(alice_claim)
        assert await world.evm_balance("eth", bob.evm.address) == bob_evm_before - amount - bob_fees
    else:
        assert await world.evm_balance(asset, alice.evm.address) == alice_evm_before + amount
        assert await world.evm_balance(asset, bob.evm.address) == bob_evm_before - amount
    assert await world.evm_balance(asset, world.htlc.address) == 0


async def test_initiator_on_ethereum_settles_too(world: World) -> None:
    """Roles follow the trade: Bob initiates by locking ETH (T1 on Ethereum), Alice locks BTC."""
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, "eth", initiator_chain="evm")
    trade = replace(trade, initiator="bob", participant="alice")
    swap_id = await bob.engine.open_swap(trade)
    await alice.engine.open_swap(trade)
    await world.drive(_both(world, swap_id, "completed", "completed"))
    assert (await alice.row(swap_id)).role == "participant"


async def test_safety_rules_in_order(world: World) -> None:
    """The participant locks only after the initiator's lock has k confirmations, and the
    secret appears on chain only after the participant's lock has k confirmations."""
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, "eth")
    swap_id = await alice.engine.open_swap(trade)
    await bob.engine.open_swap(trade)
    seen_bob_lock_at: int | None = None
    for _ in range(MAX_ROUNDS):
        await alice.engine.run_once()
        await bob.engine.run_once()
        a, b = await alice.row(swap_id), await bob.row(swap_id)
        if "lock_txs" in b.data and seen_bob_lock_at is None:
            # Bob signed his lock: Alice's was confirmed k deep and checked by then.
            depth = await alice.btc.tx_confirmations(StoredTx.from_json(a.data["lock_txs"][-1]))
            assert depth is not None
            assert depth >= SETTINGS.btc_confirmations
            seen_bob_lock_at = 1
        if "claim_tx" in a.data:
            # Alice signed the claim that reveals the secret: Bob's lock was k deep.
            bob_lock = StoredTx.from_json(b.data["lock_txs"][-1])
            depth = await bob.evm.tx_confirmations(bob_lock)
            assert depth is not None
            assert depth >= SETTINGS.evm_confirmations
            break
        # Until then the secret is nowhere on either chain.
        if "lock_ref" in a.data:
            spec = LockSpec.from_json(a.data["lock_spec"])
            assert await alice.btc.find_secret(spec, a.data["lock_ref"]) is None
        await world.mine()
    else:
        raise AssertionError(await world.states())


async def test_participant_never_locks_initiator_refunds_after_t1(world: World) -> None:
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    before = await world.btc_balance(alice.btc.address)
    trade = _trade(world, "eth")
    swap_id = await alice.engine.open_swap(trade)
    await bob.engine.open_swap(trade)
    # Bob answers messages but his engine never takes a step: he never locks.
    await world.drive(lambda: _is(alice, swap_id, "lock_confirmed"), nodes=(alice,))
    spec = LockSpec.from_json((await alice.row(swap_id)).data["lock_spec"])
    await world.drive(lambda: _is(alice, swap_id, "refunded"), nodes=(alice,), btc_blocks=3)
    a = await alice.row(swap_id)
    # Refunded only from the lock height on, never before.
    refund = StoredTx.from_json(a.data["refund_tx"])
    raw = await world.rpc.gettransaction_verbose(refund.txid)
    assert raw is not None
    assert await world.rpc.getblockcount() >= spec.timeout
    lock = StoredTx.from_json(a.data["lock_txs"][-1])
    assert await world.btc_balance(alice.btc.address) == before - lock.fee - refund.fee
    assert await bob.state(swap_id) == "offered"


async def _is(node: Node, swap_id: str, state: str) -> bool:
    return await node.state(swap_id) == state


async def test_initiator_never_claims_both_refund(world: World) -> None:
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, "erc20")
    bob_tokens = await world.evm_balance("erc20", bob.evm.address)
    swap_id = await alice.engine.open_swap(trade)
    await bob.engine.open_swap(trade)
    await world.drive(lambda: _is(bob, swap_id, "lock_confirmed"))
    # Alice's node goes away before claiming; Bob refunds himself after T2.
    world.alice.transport.offline.add("alice")
    await world.drive(lambda: _is(bob, swap_id, "refunded"), nodes=(bob,), evm_seconds=20)
    assert await world.evm_balance("erc20", bob.evm.address) == bob_tokens
    # Alice comes back after T2: too late to claim, she waits for T1 and refunds.
    world.alice.transport.offline.discard("alice")
    alice.restart()
    await world.drive(lambda: _is(alice, swap_id, "refunded"), nodes=(alice,), btc_blocks=3)
    a = await alice.row(swap_id)
    assert "claim_tx" not in a.data
    assert a.data["error"]


async def test_every_step_from_a_restarted_engine(world: World) -> None:
    """Each round both engines are new objects on the same databases (a node process killed
    between any two steps and started again): the swap still completes."""
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, "usdt")
    swap_id = await alice.engine.open_swap(trade)
    await bob.engine.open_swap(trade)
    await world.drive(_both(world, swap_id, "completed", "completed"), restart_each_round=True)


async def test_signed_but_not_broadcast_is_sent_after_a_restart(world: World) -> None:
    """A node that died right after storing its lock (before broadcasting it) sends the very
    same transaction after its restart."""
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, "eth")
    swap_id = await alice.engine.open_swap(trade)
    await bob.engine.open_swap(trade)
    for _ in range(10):
        await alice.engine.pump()
        rows = await swap_rows(alice.db)
        if rows[0]["state"] == "agreed":
            break
    await alice.engine.step(await alice.row(swap_id))
    a = await alice.row(swap_id)
    assert a.state == "lock_signed"
    stored = StoredTx.from_json(a.data["lock_txs"][-1])
    assert await alice.btc.tx_confirmations(stored) is None
    alice.restart()
    await world.drive(_both(world, swap_id, "completed", "completed"))
    assert (await alice.row(swap_id)).data["txids"]["locked"] == stored.txid


class ShortLeg(BitcoinLeg):
    """A cheating initiator's leg: locks less than agreed, another hash, or a short timeout,
    and announces the agreed terms."""

    cheat = "amount"

    async def prepare_lock(self, spec: LockSpec, *, reserved: set[str]) -> tuple[list[StoredTx], dict[str, Any]]:
        if self.cheat == "amount":
            spec = replace(spec, amount=spec.amount - 1_000)
        elif self.cheat == "hash":
            spec = replace(spec, secret_hash=hashlib.sha256(b"another secret").hexdigest())
        return await super().prepare_lock(spec, reserved=reserved)

    async def timeout_in(self, seconds: int) -> int:
        if self.cheat == "timeout":
            seconds = SETTINGS.t2_seconds  # far below T1
        return await super().timeout_in(seconds)


@pytest.mark.parametrize("cheat", ["amount", "hash", "timeout"])
async def test_a_bad_initiator_lock_is_refused(world: World, cheat: str) -> None:
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    cheating = ShortLeg(
        alice.btc.rpc,
        signer=alice.btc.signer,
        key_ref="swap",
        network="regtest",
        block_seconds=SETTINGS.btc_block_seconds,
    )
    cheating.cheat = cheat
    alice.btc = cheating
    alice.restart()
    bob_eth = await world.evm_balance("eth", bob.evm.address)
    trade = _trade(world, "eth")
    swap_id = await alice.engine.open_swap(trade)
    await bob.engine.open_swap(trade)
    await world.drive(lambda: _is(bob, swap_id, "abandoned"))
    b = await bob.row(swap_id)
    assert "lock_txs" not in b.data
    assert b.data["error"]
    assert await world.evm_balance("eth", bob.evm.address) == bob_eth


def test_settings_are_checked() -> None:
    plan.check_settings(plan.SwapSettings())
    plan.check_settings(SETTINGS)
    for bad in (
        replace(SETTINGS, t2_seconds=SETTINGS.t1_seconds),
        replace(SETTINGS, min_gap_seconds=SETTINGS.t1_seconds),
        replace(SETTINGS, claim_margin_seconds=SETTINGS.min_gap_seconds),
        replace(SETTINGS, btc_confirmations=0),
    ):
        with pytest.raises(Exception, match=r"T2|gap|margin|confirmations"):
            plan.check_settings(bad)


async def test_early_announcements_are_not_trusted(world: World) -> None:
    """A lock announced before it has k confirmations (an eager or lying peer) is not acted
    on: Bob does not lock on Alice's unconfirmed lock, Alice does not reveal the secret on
    Bob's unconfirmed lock. Each waits for k on the chain itself."""
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, "eth")
    swap_id = await alice.engine.open_swap(trade)
    await bob.engine.open_swap(trade)
    await world.drive(lambda: _is(alice, swap_id, "locked"))
    assert (await bob.engine.handle(await _locked_message(alice, swap_id)))["ok"]
    for blocks in (0, SETTINGS.btc_confirmations - 1):
        if blocks:
            await world.bcoin.mine(blocks)
        for _ in range(3):
            await bob.engine.run_once()
        b = await bob.row(swap_id)
        assert b.state == "offered"
        assert "lock_txs" not in b.data
    await world.drive(lambda: _is(bob, swap_id, "locked"))
    assert (await alice.engine.handle(await _locked_message(bob, swap_id)))["ok"]
    for _ in range(3):
        await alice.engine.run_once()
    a = await alice.row(swap_id)
    assert a.state == "lock_confirmed"
    assert "claim_tx" not in a.data
    await world.drive(_both(world, swap_id, "completed", "completed"))


async def _locked_message(node: Node, swap_id: str) -> dict[str, Any]:
    """The ``locked`` announcement of ``node``'s stored lock, as the other side receives it."""
    row = await node.row(swap_id)
    return {
        "swap_id": swap_id,
        "kind": "locked",
        "payload": {"spec": row.data["lock_spec"], "ref": row.data["lock_ref"]},
        "from": node.name,
    }


async def test_an_agreed_otc_trade_settles_over_the_otc_network(
    world: World, grapes: Grapes, pg_server_url: str, template_db: str, tmp_path: Path
) -> None:
    """Two OTC nodes on real grapes: Alice's BTC/USDT sell is taken by Bob's buy; each node's
    swap engine (on the node's own database) settles that trade, messages as the node's RPC
    action ``swap`` over Grenache: Alice locks BTC, Bob locks USDT-like tokens."""
    quantity = 1_000_000  # 0.01 BTC at 60,000: 600 units of the 6-decimal token
    await _fund_btc(world, world.alice, 3 * BTC_SAT)
    with fresh_databases(pg_server_url, template_db, 2) as urls:
        async with AsyncExitStack() as stack:
            a, b = await start_nodes(stack, grapes.urls, urls, tmp_path, api=True)
            sell = await a.node.place(NewOrder("BTC/USDT", "sell", quantity, PRICE))
            await wait_until(lambda: _sees_order(b, sell.order_id), what="the sell at Bob's node")
            buy = await b.node.place(NewOrder("BTC/USDT", "buy", quantity, PRICE, tif="IOC"))
            assert [f.quantity for f in buy.fills] == [quantity]
            engines = []
            for running, side in ((a, world.alice), (b, world.bob)):
                engine = SwapEngine(
                    running.node.engine,
                    node=running.node.node_id,
                    legs={"btc": side.btc, "evm": side.evm},
                    transport=NodeSwapTransport(running.node),
                    settings=SETTINGS,
                )
                serve_swaps(running.node, engine)
                engines.append(engine)
            swap_ids = set()
            for running, engine in zip((a, b), engines, strict=True):
                async with running.node.engine.connect() as conn:
                    (row,) = list(await conn.execute(select(otc_trades)))
                trade = swap_trade_of(row, evm_tokens={"USDT": world.tokens["usdt"]})
                assert trade.initiator == a.node.node_id
                assert trade.evm_amount == 600 * 10**6
                swap_ids.add(await engine.open_swap(trade))
            (swap_id,) = swap_ids

            async def settled() -> bool:
                states: set[str] = set()
                for running in (a, b):
                    rows = await swap_rows(running.node.engine, trade_id=buy.fills[0].trade_id)
                    states.update(r["state"] for r in rows)
                return states == {"completed"}

            for _ in range(MAX_ROUNDS):
                for engine in engines:
                    await engine.run_once()
                if await settled():
                    break
                await world.mine()
            else:
                raise AssertionError([await swap_rows(r.node.engine) for r in (a, b)])
            # What the node's API (GET /swaps, `mixhouse otc swaps`) shows: state, txids, deadlines.
            assert a.api_url is not None
            async with httpx.AsyncClient(trust_env=False) as client:
                shown = (await client.get(a.api_url + "/swaps", timeout=30)).json()
            assert [(s["swap_id"], s["role"], s["state"]) for s in shown] == [(swap_id, "initiator", "completed")]
            assert set(shown[0]["txids"]) >= {"lock_signed", "locked", "claim_signed", "claimed", "completed"}
            # Alice's own timeout is a Bitcoin height, Bob's an Ethereum unix time.
            assert 0 < shown[0]["own_timeout"] < 500_000_000 <= shown[0]["peer_timeout"]
            async with a.node.engine.connect() as conn:
                secret = (await conn.execute(text("SELECT secret FROM otc_swaps"))).scalar_one()
            assert secret not in json.dumps(shown)


async def _sees_order(node: RunningNode, order_id: str) -> bool:
    async with node.node.engine.connect() as conn:
        found = await conn.execute(select(otc_orders.c.id).where(otc_orders.c.id == order_id))
        return found.first() is not None


async def test_partial_fills_settle_at_once_each_with_its_own_secret(world: World) -> None:
    """Four fills between the same two nodes at once (two in ETH, two in a token): each its
    own swap and secret, Bitcoin locks on distinct coins, Ethereum nonces in sequence."""
    alice, bob = world.alice, world.bob
    for _ in range(4):
        await world.bcoin.fund(alice.btc.address, 2 * BTC_SAT)
    await world.bcoin.mine(1)
    trades = [_trade(world, asset) for asset in ("eth", "erc20", "eth", "erc20")]
    ids = [await alice.engine.open_swap(t) for t in trades]
    for trade in trades:
        await bob.engine.open_swap(trade)

    async def all_done() -> bool:
        return all([await alice.state(i) == "completed" and await bob.state(i) == "completed" for i in ids])

    await world.drive(all_done)
    rows = [await alice.row(i) for i in ids]
    assert len({r.secret for r in rows}) == len(ids)
    assert len({r.secret_hash for r in rows}) == len(ids)
    inputs = [x for r in rows for x in r.data["lock_txs"][-1]["extra"]["inputs"]]
    assert len(inputs) == len(set(inputs))


async def test_a_reorg_that_removes_the_first_lock_is_noticed(world: World) -> None:
    """Alice's lock reaches k confirmations, then a reorg takes its blocks away before Bob's
    next step: Bob does not lock on it until it is k deep again in the new chain."""
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, "eth")
    swap_id = await alice.engine.open_swap(trade)
    await bob.engine.open_swap(trade)
    # Bob only answers messages meanwhile; Alice locks and announces at k.
    await world.drive(lambda: _is(alice, swap_id, "lock_confirmed"), nodes=(alice,))
    a = await alice.row(swap_id)
    lock_txid = a.data["lock_txs"][-1]["txid"]
    found = await world.rpc.gettransaction_verbose(lock_txid)
    assert found is not None
    depth = int(found["confirmations"])
    assert depth >= SETTINGS.btc_confirmations
    tip = await world.rpc.getblockcount()
    first = await world.rpc.getblockhash(tip - depth + 1)
    assert first is not None
    await world.rpc.invalidateblock(first)
    assert (await bob.row(swap_id)).data.get("peer_lock") is not None
    for _ in range(3):
        await bob.engine.run_once()
    b = await bob.row(swap_id)
    assert b.state == "offered"
    assert "lock_txs" not in b.data
    # The lock comes back (from the mempool, or Alice sends it again) and Bob goes on at k.
    await world.drive(_both(world, swap_id, "completed", "completed"))


async def test_a_33_byte_secret_claims_nothing_and_both_refund(world: World) -> None:
    """An initiator whose hash lock is the hash of a 33-byte secret (the secret-size attack):
    Bob locks against the hash (he cannot tell), but no chain takes a 33-byte preimage, so
    Alice claims nothing and each side refunds at its own timeout."""
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, "eth")
    bob_eth = await world.evm_balance("eth", bob.evm.address)
    swap_id = await alice.engine.open_swap(trade)
    long_secret = b"\x42" * 33
    long_hash = hashlib.sha256(long_secret).hexdigest()
    async with alice.db.begin() as conn:
        await conn.execute(
            text("UPDATE otc_swaps SET secret = :s, secret_hash = :h WHERE id = :id"),
            {"s": long_secret.hex(), "h": long_hash, "id": swap_id},
        )
        await conn.execute(
            text(
                "UPDATE otc_swap_outbox SET payload = jsonb_set(payload, '{secret_hash}', to_jsonb(CAST(:h AS TEXT)))"
            ),
            {"h": long_hash},
        )
    await bob.engine.open_swap(trade)
    await world.drive(lambda: _is(bob, swap_id, "lock_confirmed"))
    await world.drive(_both(world, swap_id, "refunded", "refunded"), btc_blocks=3, evm_seconds=20)
    assert "claim_tx" not in (await alice.row(swap_id)).data
    b = await bob.row(swap_id)
    fees = sum([await world.evm_fee_paid(StoredTx.from_json(t)) for t in [*b.data["lock_txs"], b.data["refund_tx"]]])
    assert await world.evm_balance("eth", bob.evm.address) == bob_eth - fees


@pytest.mark.parametrize("back", ["before_t1", "after_t1", "after_refund"])
async def test_participant_offline_after_the_secret_is_out(world: World, back: str) -> None:
    """Bob's node goes away right after locking; Alice claims his ETH (the secret is out).
    Back before T1, Bob claims the Bitcoin. Back after T1, the secret is public already, so he
    still claims on Bitcoin (the script takes it after the lock height) racing Alice's refund:
    he gets it if she has not refunded. If she did refund first, he has lost his ETH: the
    documented risk of a node offline past the margin."""
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    trade = _trade(world, "eth")
    swap_id = await alice.engine.open_swap(trade)
    await bob.engine.open_swap(trade)
    await world.drive(lambda: _is(bob, swap_id, "lock_confirmed"))
    await world.drive(lambda: _is(alice, swap_id, "completed"), nodes=(alice,))
    a = await alice.row(swap_id)
    spec = LockSpec.from_json(a.data["lock_spec"])
    if back != "before_t1":
        while await world.rpc.getblockcount() < spec.timeout:
            await world.bcoin.mine(5)
    if back == "after_refund":
        # An initiator that takes both: it refunds its own lock after claiming Bob's.
        refund = await alice.btc.prepare_refund(spec, a.data["lock_ref"])
        await alice.btc.broadcast(refund)
        await world.bcoin.mine(1)
    bob.restart()
    final = "too_late" if back == "after_refund" else "completed"
    await world.drive(lambda: _is(bob, swap_id, final), nodes=(bob,))
    b = await bob.row(swap_id)
    bob_btc = await world.btc_balance(bob.btc.address)
    if final == "completed":
        assert bob_btc == BTC_SAT - StoredTx.from_json(b.data["claim_tx"]).fee
    else:
        assert bob_btc == 0
        assert "refunded" in b.data["error"]


class GatedSigner:
    """A signer whose ``sign_digest`` waits until the test opens its gate: an HSM that is slow
    (or hung, while the gate stays shut) exactly where a token's ``C_Sign`` blocks its thread."""

    kind = "software"

    def __init__(self, inner: Signer) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()

    def public_key(self, key_ref: str) -> bytes:
        return self.inner.public_key(key_ref)

    def sign_digest(self, key_ref: str, digest: bytes, *, low_r: bool = False) -> tuple[int, int]:
        self.entered.set()
        self.gate.wait(60)  # bounded: a signature on the loop fails the test instead of hanging it
        return self.inner.sign_digest(key_ref, digest, low_r=low_r)


async def _pass_through_gate(node: Node, gated: GatedSigner, api_url: str) -> bool:
    """One pass of ``node``'s engine. If it signs, the OTC node's API must answer while the
    signature waits behind the gate (the pass still pending); then the gate opens. Returns
    whether the pass signed."""
    task = asyncio.create_task(node.engine.run_once())
    await wait_until(lambda: _async_true(task.done() or gated.entered.is_set()), what="the pass to end or to sign")
    signed = gated.entered.is_set()
    if signed and not gated.gate.is_set():
        async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
            for _ in range(3):
                assert (await client.get(api_url + "/health")).status_code == 200
        assert not task.done(), "the pass ended while its signature was held"
        gated.gate.set()
    await task
    return signed


async def _async_true(value: bool) -> bool:
    return value


async def test_a_slow_signer_leaves_the_node_serving_and_a_hung_one_is_retried(
    world: World, grapes: Grapes, pg_server_url: str, template_db: str, tmp_path: Path, evm_keyring: HdKeyring
) -> None:
    """Issue 12 for the swaps: every swap signature runs in a signing thread. While Alice's
    Bitcoin lock and Bob's token approval and lock wait on a slow token, the OTC node on the
    same loop answers its /health; a token that does not answer within the deadline leaves
    the swap as it was (no error recorded), and the next pass signs; the swap completes."""
    alice, bob = world.alice, world.bob
    await _fund_btc(world, alice, 3 * BTC_SAT)
    btc_signer = alice.btc.signer

    def gated_btc_leg(timeout: float) -> tuple[GatedSigner, BitcoinLeg]:
        gated = GatedSigner(btc_signer)
        leg = BitcoinLeg(
            world.rpc,
            signer=gated,
            key_ref="swap",
            network="regtest",
            block_seconds=SETTINGS.btc_block_seconds,
            sign_timeout=timeout,
        )
        return gated, leg

    hung, alice.btc = gated_btc_leg(0.5)
    alice.restart()
    trade = _trade(world, "erc20")
    swap_id = await alice.engine.open_swap(trade)
    assert await bob.engine.open_swap(trade) == swap_id
    try:
        for _ in range(MAX_ROUNDS):
            await alice.engine.run_once()  # the lock's signature times out in it: no hang
            await bob.engine.run_once()
            if hung.entered.is_set():
                break
        assert hung.entered.is_set(), await world.states()
        await alice.engine.run_once()  # queued behind the hung call: dropped at its deadline
        ((_, state, error),) = (await world.states())["alice"]
        assert (state, error) == ("agreed", None)
    finally:
        hung.gate.set()  # the hung call returns in its thread; its signature is dropped
        alice.btc.close()

    evm_gated = GatedSigner(SoftwareSigner.for_evm(evm_keyring))
    bob_adapter = make_evm_adapter(world.anvil, evm_keyring, confirmations=SETTINGS.evm_confirmations, signer=evm_gated)
    slow, alice.btc = gated_btc_leg(60.0)
    alice.restart()
    bob.evm = EvmLeg(EvmHtlc(bob_adapter, world.htlc.address), key_ref=bob.evm.key_ref)
    bob.restart()
    try:
        with fresh_databases(pg_server_url, template_db, 1) as urls:
            async with AsyncExitStack() as stack:
                (running,) = await start_nodes(stack, grapes.urls, urls, tmp_path, api=True)
                assert running.api_url is not None
                assert await _pass_through_gate(alice, slow, running.api_url)
                assert await alice.state(swap_id) in ("lock_signed", "locked")
                for _ in range(MAX_ROUNDS):
                    await alice.engine.run_once()
                    if await _pass_through_gate(bob, evm_gated, running.api_url):
                        break
                    await world.mine()
                assert await bob.state(swap_id) in ("lock_signed", "locked")
        await world.drive(_both(world, swap_id, "completed", "completed"))
    finally:
        slow.gate.set()
        alice.btc.close()
        await bob_adapter.aclose()
