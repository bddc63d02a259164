"""Atomic-swap settlement: how long one swap takes and how many a node settles at once
(``mixhouse.otc.swaps``, issue 10).

Method: a fresh bcoin regtest node and a fresh anvil (the test fixtures' launchers), two swap
engines (Alice pays BTC, Bob pays ETH or a token) each on its own fresh PostgreSQL database
(``MIXHOUSE_TEST_DATABASE_URL``, else the embedded server) with its own keys, in one process.
Mining is "instant": after every pass of both engines one block is mined on each chain, and
k = 1 confirmation on both, so the figures are the engines' and nodes' own cost (signing,
RPCs, database transactions), not block intervals. For ``n`` fills opened at once the
benchmark reports the wall time until every swap of both nodes is ``completed``, the passes
(rounds) that took, and swaps per second. Each ``n`` runs on fresh databases.

On a real network a swap takes about ``k_btc`` Bitcoin blocks + ``k_evm`` Ethereum blocks for
the two locks, and one block per chain for the claims (mainnet defaults, 3 and 12: ~40 min).

Usage: ``python -m benchmarks.otc_swaps [--fills 1,5,20] [--asset eth|erc20]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from mixhouse.db.embedded import start_embedded
from mixhouse.db.engine import with_database
from mixhouse.db.migrate import upgrade
from mixhouse.keys.hd import HdKeyring
from tests.fixtures.anvil import TEST_MNEMONIC, _start_anvil
from tests.fixtures.bcoin import _start as _start_bcoin
from tests.test_otc_swap import BTC_SAT, SETTINGS, World, _trade, make_world

FAST = dataclasses.replace(SETTINGS, btc_confirmations=1, evm_confirmations=1)


def _databases(server: str, count: int) -> list[str]:
    names = [f"mh_bench_swap_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    with psycopg.connect(server, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    urls = [with_database(server, n) for n in names]
    for url in urls:
        upgrade(url)
    return urls


def _drop(server: str, urls: list[str]) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        for url in urls:
            name = url.rsplit("/", 1)[1].split("?")[0]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _run(world: World, fills: int, asset: str) -> tuple[float, int]:
    for _ in range(fills):
        await world.bcoin.fund(world.alice.btc.address, BTC_SAT + 100_000)
    await world.bcoin.mine(1)
    trades = [_trade(world, asset) for _ in range(fills)]
    start = time.perf_counter()
    ids = [await world.alice.engine.open_swap(t) for t in trades]
    for trade in trades:
        await world.bob.engine.open_swap(trade)

    async def done() -> bool:
        for node in (world.alice, world.bob):
            for swap_id in ids:
                if await node.state(swap_id) != "completed":
                    return False
        return True

    rounds = await world.drive(done)
    return time.perf_counter() - start, rounds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", default="1,5,20", help="comma-separated numbers of fills opened at once")
    parser.add_argument("--asset", default="eth", choices=["eth", "erc20", "usdt"])
    args = parser.parse_args()
    server = os.environ.get("MIXHOUSE_TEST_DATABASE_URL") or with_database(
        start_embedded(Path(tempfile.gettempdir()) / "mixhouse-bench-pg"), "postgres"
    )
    bcoin = _start_bcoin()
    anvil = _start_anvil()
    keyring = HdKeyring(TEST_MNEMONIC)
    try:
        print(f"asset {args.asset}, k = 1 on both chains, one block per chain per pass")
        print(f"{'fills':>6} {'seconds':>9} {'passes':>7} {'swaps/s':>8} {'s/swap':>7}")
        for fills in (int(x) for x in args.fills.split(",")):
            alice_url, bob_url = _databases(server, 2)
            try:
                async with make_world(bcoin, anvil, keyring, alice_url, bob_url, settings=FAST) as world:
                    seconds, rounds = await _run(world, fills, args.asset)
            finally:
                _drop(server, [alice_url, bob_url])
            print(f"{fills:>6} {seconds:>9.2f} {rounds:>7} {fills / seconds:>8.2f} {seconds / fills:>7.2f}")
    finally:
        bcoin.node.stop()
        anvil.process.terminate()
        anvil.process.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
