"""Scan scaling: time from a deposit to ``seen`` with 100, 10,000 and 100,000 watched mixes.

For each chain kind on its local development chain (Jobcoin on the local ledger, Ethereum on
anvil, Bitcoin on a bcoin regtest node), a fresh database is filled with watched mixes (bulk
``COPY`` of mixes awaiting a deposit, each with its own address; not through the API), then,
at each size:

* **idle scan**: one :func:`mixhouse.mixer.deposits.scan_asset` with nothing new on the chain
  (median of ``--runs``);
* **deposit to seen**: a fresh mix is created through :func:`mixhouse.mixer.mixes.create_mix`,
  a scan brings the cursor to the head, its deposit is sent, and scans run back to back (no
  scan interval) until the deposit row exists (median of ``--runs``). A worker adds at most
  one scan interval (``MIXHOUSE_SCAN_INTERVAL_SECONDS``) to this.

The scan reads every watched mix from the database on each tick, then asks the chain for what
is new since its cursor: what should grow with the number of watched mixes is only the cost of
reading them and of a set lookup per output.

It runs on ``MIXHOUSE_BENCH_DATABASE_URL`` (a maintenance DB URI of a server we may create
databases on) or on an embedded PostgreSQL.

Usage: ``python -m benchmarks.scan [--chains jobcoin,evm,bitcoin] [--sizes 100,10000,100000]
[--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from embit import script  # type: ignore[import-untyped]
from embit.networks import NETWORKS  # type: ignore[import-untyped]
from pydantic import SecretStr
from sqlalchemy import select

from mixhouse.app.build import build_runtime
from mixhouse.chains.bitcoin.coinselect import Coin
from mixhouse.chains.bitcoin.devnet import RegtestNode
from mixhouse.chains.bitcoin.rpc import BitcoinRpc, btc_to_sat
from mixhouse.chains.bitcoin.txbuild import build_signed_tx
from mixhouse.chains.jobcoin import ledger
from mixhouse.chains.jobcoin.ledger_app import ledger_server
from mixhouse.config import Settings
from mixhouse.db.embedded import start_embedded
from mixhouse.db.engine import with_database
from mixhouse.db.migrate import upgrade
from mixhouse.db.tables import deposits
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.deposits import scan_asset
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.runtime import Runtime
from mixhouse.money import Asset
from mixhouse.servers import free_port, running_server

ROOT = Path(__file__).resolve().parents[1]
ANVIL_BIN = ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
# anvil's dev account 0 (public, development only) pays the ETH deposits.
ANVIL_FUNDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
# Public test phrases: the mixer's keys must not be anvil's pre-funded dev accounts.
MIXER_MNEMONIC = "end wool manage flavor able hockey relax cattle size approve style mystery"
SENDER_MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
COIN = 10**8
SAT_FEE = 2_000  # the Bitcoin sender's own fee per deposit, in satoshi
# A deposit that takes longer than this to be seen is a failure of the benchmark.
SEEN_DEADLINE_SECONDS = 600.0
CHAINS = ("jobcoin", "evm", "bitcoin")


@dataclass
class Chain:
    """One chain kind under test: its asset, settings and how to fill and pay it."""

    name: str
    asset: Asset
    settings: Settings
    filler: Callable[[int], str]  # the deposit address of filler mix ``i``
    withdrawal: Callable[[int], str]
    pay: Callable[[str], Awaitable[None]]  # send one deposit to a deposit address


def _server_url() -> str:
    return os.environ.get("MIXHOUSE_BENCH_DATABASE_URL") or with_database(
        start_embedded(Path(tempfile.gettempdir()) / "mixhouse-bench-pg"), "postgres"
    )


@contextlib.contextmanager
def _fresh_database(server_url: str) -> Iterator[str]:
    name = f"mixhouse_bench_scan_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fill(url: str, chain: Chain, start: int, stop: int) -> None:
    """Add watched mixes ``start..stop-1`` awaiting a deposit, in one COPY."""
    created = datetime.now(UTC)
    expires = created + timedelta(days=1)
    watch_until = expires + timedelta(days=7)
    columns = (
        "id, asset, state, deposit_address, withdrawal_addresses, fee_min_bps, fee_max_bps, min_deposit,"
        " max_deposit, delay_min_seconds, delay_max_seconds, max_wait_seconds, expires_at, watch_until"
    )
    withdrawals = json.dumps([chain.withdrawal(0)])
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY mixes ({columns}) FROM STDIN") as copy:
            for i in range(start, stop):
                copy.write_row(
                    (
                        f"fill-{chain.name}-{i}",
                        chain.asset.value,
                        "awaiting_deposit",
                        chain.filler(i),
                        withdrawals,
                        100,
                        300,
                        1,
                        10**30,
                        0,
                        0,
                        0,
                        expires,
                        watch_until,
                    )
                )
        conn.commit()
        conn.execute("ANALYZE mixes")


async def _seen(rt: Runtime, mix_id: str) -> bool:
    async with rt.engine.connect() as conn:
        return (await conn.execute(select(deposits.c.id).where(deposits.c.mix_id == mix_id))).first() is not None


async def _measure(rt: Runtime, chain: Chain, runs: int, serial: Iterator[int]) -> tuple[float, float, float]:
    """``(idle scan, deposit to seen, scans per deposit)``: medians over ``runs``, seconds."""
    idle: list[float] = []
    latency: list[float] = []
    scans: list[float] = []
    await scan_asset(rt, chain.asset)  # the cursor at the head, the adapter's caches warm
    for _ in range(runs):
        t0 = time.perf_counter()
        await scan_asset(rt, chain.asset)
        idle.append(time.perf_counter() - t0)
    for _ in range(runs):
        mix = await create_mix(rt, MixRequest(chain.asset.value, [chain.withdrawal(next(serial))], 0, 0))
        await scan_asset(rt, chain.asset)
        t0 = time.perf_counter()
        await chain.pay(str(mix["deposit_address"]))
        count = 0
        while not await _seen(rt, str(mix["id"])):
            if time.perf_counter() - t0 > SEEN_DEADLINE_SECONDS:
                raise RuntimeError(f"{chain.name}: a deposit was not seen in {SEEN_DEADLINE_SECONDS:.0f} s")
            await scan_asset(rt, chain.asset)
            count += 1
        latency.append(time.perf_counter() - t0)
        scans.append(count)
    return statistics.median(idle), statistics.median(latency), statistics.median(scans)


# -- the chains ------------------------------------------------------------------------------


@asynccontextmanager
async def _jobcoin(url: str) -> AsyncIterator[Chain]:
    port = free_port()
    settings = Settings(
        database_url=url,
        jobcoin_enabled=True,
        jobcoin_api_url=f"http://127.0.0.1:{port}/api",
        privacy_gate_k=1,
    )
    probe = build_runtime(settings, url, pool_size=2)
    try:
        await ledger.mint(probe.engine, "bench-sender", 10**6 * COIN)
        async with running_server(ledger_server(probe.engine, "127.0.0.1", port, log_level="warning")):

            async def pay(address: str) -> None:
                await ledger.transfer(probe.engine, "bench-sender", address, 10 * COIN)

            yield Chain(
                "jobcoin",
                Asset.JOBCOIN,
                settings,
                filler=lambda i: hashlib.sha256(b"fill%d" % i).hexdigest()[:24],
                withdrawal=lambda i: f"bench-out-{i}",
                pay=pay,
            )
    finally:
        await probe.engine.dispose()


async def _rpc_call(client: httpx.AsyncClient, url: str, method: str, params: list[object]) -> object:
    reply = (await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})).json()
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


@asynccontextmanager
async def _evm(url: str) -> AsyncIterator[Chain]:
    if not ANVIL_BIN.exists():
        raise SystemExit(f"anvil is missing at {ANVIL_BIN}: run make install")
    port = free_port()
    rpc_url = f"http://127.0.0.1:{port}"
    process = await asyncio.create_subprocess_exec(
        *[str(ANVIL_BIN), "--host", "127.0.0.1", "--port", str(port), "--chain-id", "31337", "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    await _rpc_call(client, rpc_url, "eth_chainId", [])
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or process.returncode is not None:
                        raise RuntimeError("anvil did not start") from None
                    await asyncio.sleep(0.05)

            async def pay(address: str) -> None:
                tx = {"from": ANVIL_FUNDER, "to": address, "value": hex(10**17)}
                await _rpc_call(client, rpc_url, "eth_sendTransaction", [tx])

            yield Chain(
                "evm",
                Asset.ETH,
                Settings(
                    database_url=url,
                    jobcoin_enabled=False,
                    evm_enabled=True,
                    evm_rpc_url=rpc_url,
                    evm_chain_id=31337,
                    evm_mnemonic=SecretStr(MIXER_MNEMONIC),
                    privacy_gate_k=1,
                ),
                filler=lambda i: "0x" + hashlib.sha256(b"fill%d" % i).hexdigest()[:40],
                withdrawal=lambda i: "0x" + hashlib.sha256(b"out%d" % i).hexdigest()[:40],
                pay=pay,
            )
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)


def _bech32_filler(i: int) -> str:
    program = hashlib.sha256(b"fill%d" % i).digest()[:20]
    return str(script.Script(b"\x00\x14" + program).address(NETWORKS["regtest"]))


@asynccontextmanager
async def _bitcoin(url: str) -> AsyncIterator[Chain]:
    node = await asyncio.to_thread(RegtestNode.start)
    rpc = BitcoinRpc(node.rpc_url, user=node.rpc_user, password=node.rpc_password)
    sender = Bip84Keyring(SENDER_MNEMONIC, "regtest")
    user = Bip84Keyring(MIXER_MNEMONIC, "regtest")
    try:
        funder = sender.address(0, 0)
        await rpc.generatetoaddress(150, funder)  # 50 mature coinbases, one per deposit
        unspent = (await rpc.scantxoutset_addresses([funder]))["unspents"]
        mature = sorted((u for u in unspent if int(u["height"]) <= 50), key=lambda u: int(u["height"]))
        coins = iter([Coin(u["txid"], int(u["vout"]), btc_to_sat(u["amount"]), funder, None) for u in mature])

        async def pay(address: str) -> None:
            coin = next(coins)
            amount = COIN
            signed = build_signed_tx(
                inputs=[(coin, sender.private_key(0, 0))],
                outputs=[(address, amount), (funder, coin.amount - amount - SAT_FEE)],
                network="regtest",
            )
            await rpc.sendrawtransaction(signed.raw.hex(), signed.txid)

        yield Chain(
            "bitcoin",
            Asset.BTC,
            Settings(
                database_url=url,
                jobcoin_enabled=False,
                bitcoin_enabled=True,
                bitcoin_rpc_url=node.rpc_url,
                bitcoin_rpc_user=node.rpc_user,
                bitcoin_rpc_password=SecretStr(node.rpc_password),
                bitcoin_network="regtest",
                bitcoin_confirmations=2,
                bitcoin_mnemonic=SecretStr(MIXER_MNEMONIC),
                privacy_gate_k=1,
            ),
            filler=_bech32_filler,
            withdrawal=lambda i: user.address(0, i),
            pay=pay,
        )
    finally:
        await rpc.aclose()
        await asyncio.to_thread(node.stop)


_STARTERS = {"jobcoin": _jobcoin, "evm": _evm, "bitcoin": _bitcoin}


# (chain, watched mixes, idle scan s, deposit to seen s, scans per deposit)
Row = tuple[str, int, float, float, float]


async def _bench_chain(server_url: str, name: str, sizes: list[int], runs: int) -> list[Row]:
    rows: list[Row] = []
    serial = iter(range(1, 10**9))
    with _fresh_database(server_url) as url:
        async with _STARTERS[name](url) as chain:
            rt = build_runtime(chain.settings, url, pool_size=4)
            try:
                filled = 0
                for size in sorted(sizes):
                    t0 = time.perf_counter()
                    await asyncio.to_thread(_fill, url, chain, filled, size)
                    filled = size
                    print(f"  {name}: {size:,} watched mixes ready ({time.perf_counter() - t0:.1f} s)", flush=True)
                    idle, latency, scans = await _measure(rt, chain, runs, serial)
                    rows.append((name, size, idle, latency, scans))
            finally:
                await rt.aclose()
                await rt.engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", default=",".join(CHAINS), help="comma-separated: jobcoin, evm, bitcoin")
    parser.add_argument("--sizes", default="100,10000,100000", help="comma-separated numbers of watched mixes")
    parser.add_argument("--runs", type=int, default=3, help="deposits (and idle scans) per size; medians")
    args = parser.parse_args(argv)
    chains = [c.strip() for c in args.chains.split(",") if c.strip()]
    unknown = [c for c in chains if c not in CHAINS]
    if unknown:
        parser.error(f"unknown chains: {', '.join(unknown)}")
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    server_url = _server_url()
    rows: list[Row] = []
    for name in chains:
        rows.extend(asyncio.run(_bench_chain(server_url, name, sizes, args.runs)))
    print(f"\nmedians of {args.runs}; scans back to back (a worker adds up to one scan interval)")
    print(f"{'chain':<9} {'watched':>9} {'idle scan ms':>13} {'deposit->seen ms':>17} {'scans':>6}")
    for name, size, idle, latency, scans in rows:
        print(f"{name:<9} {size:>9,} {idle * 1000:>13.1f} {latency * 1000:>17.1f} {scans:>6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
