"""Bitcoin payouts of several mixes in one transaction, on a real regtest node (bcoin).

The rounds are driven by hand (scan, round, mine) so each step can be checked: the batch's
outputs are exactly its payouts plus change, its fee is split to the satoshi, the books
reconcile, and a batch whose input is spent elsewhere is re-planned without paying anyone twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from typing import Any

from eth_account import Account
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.chains.base import UtxoChainAdapter
from mixhouse.chains.bitcoin.coinselect import Coin
from mixhouse.chains.bitcoin.txbuild import build_signed_tx
from mixhouse.db.tables import deposits, payout_batches, sends, utxos
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.gate import release_gate
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.mixer.rounds import run_round
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.utxo_batches import REPLANNED, advance_batch, sign_batch
from mixhouse.money import Asset
from tests.fixtures.bcoin import Bcoin
from tests.test_e2e_bitcoin import bitcoin_settings

BTC = 100_000_000


async def _until(check: Any, *, within: float, step: Any = None) -> None:
    """Run ``step`` (if any) and poll ``check`` until it is true, or fail after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if step is not None:
            await step()
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached in {within} s")


async def _pooled(rt: Runtime, bcoin: Bcoin, n: int, topups: int) -> None:
    """Mine and scan until ``n`` deposits are pooled and ``topups`` operator coins spendable."""

    async def step() -> None:
        await bcoin.mine(1)
        await scan_asset(rt, Asset.BTC)

    async def check() -> bool:
        async with rt.engine.connect() as conn:
            states = [r.state for r in await conn.execute(select(deposits.c.state))]
            spendable = (
                await conn.execute(
                    select(utxos.c.txid).where(utxos.c.deposit_id.is_(None), utxos.c.state == "available")
                )
            ).all()
        return len(states) == n and set(states) == {"pooled"} and len(spendable) == topups

    await _until(check, within=60, step=step)


async def _mixes(rt: Runtime, bcoin: Bcoin, user: Bip84Keyring, shapes: list[int]) -> list[dict[str, Any]]:
    made = []
    for i, addresses in enumerate(shapes):
        mix = await create_mix(rt, MixRequest("BTC", [user.address(0, 10 * i + k) for k in range(addresses)], 0, 0))
        await bcoin.fund(mix["deposit_address"], BTC // 5 + i * 3_000_000)
        made.append(mix)
    return made


async def _all_confirmed(rt: Runtime, bcoin: Bcoin) -> None:
    async def step() -> None:
        await bcoin.mine(1)
        await scan_asset(rt, Asset.BTC)
        await run_round(rt, Asset.BTC)

    async def check() -> bool:
        async with rt.engine.connect() as conn:
            open_sends = (await conn.execute(select(sends.c.id).where(sends.c.state != "confirmed"))).first()
            busy = (await conn.execute(select(utxos.c.txid).where(utxos.c.state.in_(["reserved"])))).first()
        return open_sends is None and busy is None

    try:
        await _until(check, within=120, step=step)
    except AssertionError:
        async with rt.engine.connect() as conn:
            left = [(s.id, s.state, s.batch_id, s.last_error) for s in await conn.execute(select(sends))]
            coins = [(c.state, c.amount, c.owner_mix_id) for c in await conn.execute(select(utxos))]
        raise AssertionError(f"payouts not all confirmed: {left}; coins {coins}") from None


def _outputs(tx: dict[str, Any]) -> Counter[tuple[str, int]]:
    found: Counter[tuple[str, int]] = Counter()
    for out in tx["vout"]:
        spk = out["scriptPubKey"]
        address = spk.get("address") or (spk.get("addresses") or [None])[0]
        found[(address, round(out["value"] * BTC))] += 1
    return found


async def test_several_mixes_released_together_share_one_transaction_and_the_books_balance(
    database_url: str, engine: AsyncEngine, bcoin: Bcoin
) -> None:
    rt = build_runtime(bitcoin_settings(database_url, bcoin, utxo_batch_max_outputs=50), database_url)
    adapter = rt.adapter("BTC")
    Account.enable_unaudited_hdwallet_features()
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    try:
        mixes = await _mixes(rt, bcoin, user, [1, 2, 3])
        await bcoin.fund(adapter.pool_address, 2 * BTC)  # operator liquidity: no mix's own deposit
        await _pooled(rt, bcoin, len(mixes), topups=1)
        first = await run_round(rt, Asset.BTC)  # the gate releases all three; the first batch leaves
        assert first.released == 3
        await _all_confirmed(rt, bcoin)
        async with engine.connect() as conn:
            batches = (await conn.execute(select(payout_batches).order_by(payout_batches.c.id))).all()
            rows = (await conn.execute(select(sends))).all()
            deps = {d.mix_id: d for d in await conn.execute(select(deposits))}
            assert await audit.verify(conn) > 0
        assert batches
        assert all(b.state == "confirmed" for b in batches)
        assert all(s.batch_id is not None for s in rows), "every payout went out in a batch"
        # The first batch pays all three mixes at once.
        assert {s.mix_id for s in rows if s.batch_id == batches[0].id} == {m["id"] for m in mixes}
        assert len(batches) < len(rows)
        for batch in batches:
            members = [s for s in rows if s.batch_id == batch.id]
            assert len(members) == batch.payouts
            assert len({s.to_address for s in members}) == len(members)  # one output per address
            tx = await bcoin.rpc("getrawtransaction", batch.txid, True)
            assert tx["confirmations"] >= 2
            assert all(s.txid == batch.txid for s in members)
            change = _outputs(tx) - Counter((s.to_address, int(s.amount)) for s in members)
            assert sum(change.values()) == (1 if batch.change_amount else 0)  # exactly payouts + change
            assert sum(amount for _address, amount in change) == batch.change_amount
            spent = {f"{vin['txid']}:{vin['vout']}" for vin in tx["vin"]}
            assert not spent & {deps[s.mix_id].chain_ref for s in members}, "a batch spent a member's deposit"
            inputs = 0
            for vin in tx["vin"]:
                parent = await bcoin.rpc("getrawtransaction", vin["txid"], True)
                inputs += round(parent["vout"][vin["vout"]]["value"] * BTC)
            fee = inputs - sum(round(o["value"] * BTC) for o in tx["vout"])
            assert fee == batch.fee == sum(int(s.network_fee_paid) for s in members)  # split to the satoshi
        paid: dict[str, int] = defaultdict(int)
        for s in rows:
            paid[s.to_address] += int(s.amount)
        for address, amount in paid.items():
            assert await adapter.balance(address) == amount
        for mix in mixes:
            dep = deps[mix["id"]]
            assert sum(int(s.amount) for s in rows if s.mix_id == mix["id"]) == dep.payout_total
        assert (await reconcile(rt, Asset.BTC)).ok
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def test_a_batch_whose_input_is_spent_elsewhere_is_replanned_and_pays_once(
    database_url: str, engine: AsyncEngine, bcoin: Bcoin
) -> None:
    settings = bitcoin_settings(database_url, bcoin, utxo_batch_max_outputs=50)
    rt = build_runtime(settings, database_url)
    adapter = rt.adapter("BTC")
    assert isinstance(adapter, UtxoChainAdapter)
    pool_keys = Bip84Keyring(settings.bitcoin_mnemonic.get_secret_value(), "regtest")
    Account.enable_unaudited_hdwallet_features()
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    try:
        mixes = await _mixes(rt, bcoin, user, [1, 1])
        await bcoin.fund(adapter.pool_address, 2 * BTC)
        await bcoin.fund(adapter.pool_address, 2 * BTC)
        await _pooled(rt, bcoin, len(mixes), topups=2)
        # Released, then one batch signed by hand and not broadcast yet.
        await release_gate(rt, Asset.BTC)
        signed = await sign_batch(rt, adapter, Asset.BTC)
        assert signed.batch_id is not None
        assert signed.payouts == 2  # one piece of each mix's address
        async with engine.connect() as conn:
            [coin] = (await conn.execute(select(utxos).where(utxos.c.reserved_by_batch == signed.batch_id))).all()
        # The same coin spent by another transaction first (a conflict, as after a reorg).
        other = build_signed_tx(
            inputs=[
                (
                    Coin(coin.txid, coin.vout, int(coin.amount), coin.address, None),
                    pool_keys.private_key(coin.key_chain, coin.key_index),
                )
            ],
            outputs=[(bcoin.funder_address, int(coin.amount) - 10_000)],
            network="regtest",
        )
        await bcoin.rpc("sendrawtransaction", other.raw.hex())
        await bcoin.mine(1)

        async def replanned() -> bool:
            return await advance_batch(rt, adapter, signed.batch_id or 0) == REPLANNED

        await _until(replanned, within=30)
        async with engine.connect() as conn:
            again = (await conn.execute(select(sends))).all()
            state = (
                await conn.execute(select(utxos.c.state).where(utxos.c.txid == coin.txid, utxos.c.vout == coin.vout))
            ).scalar_one()
        assert {s.state for s in again} == {"scheduled"}
        assert all(s.batch_id is None for s in again)
        assert state == "spent"
        await _all_confirmed(rt, bcoin)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(sends))).all()
            batches = (await conn.execute(select(payout_batches.c.state))).scalars().all()
            assert await audit.verify(conn) > 0
        assert sorted(batches).count("replanned") == 1
        assert set(batches) == {"confirmed", "replanned"}
        paid: dict[str, int] = defaultdict(int)
        for s in rows:
            paid[s.to_address] += int(s.amount)
        assert len(paid) == len(mixes)
        for address, amount in paid.items():
            assert await adapter.balance(address) == amount  # every piece paid once, not twice
        assert (await reconcile(rt, Asset.BTC)).ok
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def test_a_batch_change_is_confirmed_by_its_batch_only_and_never_made_spendable_twice(
    database_url: str, engine: AsyncEngine, bcoin: Bcoin
) -> None:
    """A batch's change coin waits for its batch, not for the scan's top-up path, and a late
    batch confirmation never turns a change coin already reserved again back into
    ``available`` (it was: spent twice, a false reconciliation deficit, and a pool move stuck
    on a spent input, seen under load by tests/test_key_rotation_bitcoin.py)."""
    rt = build_runtime(bitcoin_settings(database_url, bcoin, utxo_batch_max_outputs=50), database_url)
    adapter = rt.adapter("BTC")
    assert isinstance(adapter, UtxoChainAdapter)
    Account.enable_unaudited_hdwallet_features()
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    try:
        mixes = await _mixes(rt, bcoin, user, [1, 2])
        await bcoin.fund(adapter.pool_address, 2 * BTC)
        await _pooled(rt, bcoin, len(mixes), topups=1)
        await run_round(rt, Asset.BTC)  # signs and broadcasts the first batch
        async with engine.connect() as conn:
            batch = (await conn.execute(select(payout_batches).order_by(payout_batches.c.id))).first()
        assert batch is not None
        assert batch.change_amount > 0

        def change_state() -> Any:
            return select(utxos.c.state).where(utxos.c.created_by_batch == batch.id)

        # Deep enough, scanned, but the batch not yet advanced: the change is still its batch's.
        await bcoin.mine(adapter.confirmations_required + 1)
        await scan_asset(rt, Asset.BTC)
        async with engine.connect() as conn:
            assert (await conn.execute(change_state())).scalar_one() == "unconfirmed"

        # Stand-in for a spend that took the coin before this batch's confirmation was recorded
        # (the race the top-up path opened): the confirmation must not make it available again.
        async with engine.begin() as conn:
            await conn.execute(utxos.update().where(utxos.c.created_by_batch == batch.id).values(state="reserved"))
        assert await advance_batch(rt, adapter, batch.id) == "confirmed"
        async with engine.connect() as conn:
            assert (await conn.execute(change_state())).scalar_one() == "reserved"
    finally:
        await rt.aclose()
        await rt.engine.dispose()
