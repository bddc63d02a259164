"""``mixhouse demo --chain bitcoin``: mix 1 BTC through the UTXO pool on a local regtest node.

It starts a bcoin regtest node (installed by ``npm install``), mines coins to a demo sender,
has the operator add liquidity to the pool, deposits 1 BTC to a new mix with three withdrawal
addresses, runs a worker while blocks are mined every second, and finally shows the node's
view of every payout transaction and checks it: paid from pool coins, never from the mix's own
deposit output, and the withdrawal addresses received exactly deposit - fee - network fees.

The regtest chain lives in memory, so each run uses a database of its own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from embit.transaction import Transaction  # type: ignore[import-untyped]
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.chains.bitcoin.coinselect import Coin
from mixhouse.chains.bitcoin.devnet import RegtestNode
from mixhouse.chains.bitcoin.networks import address_of_script
from mixhouse.chains.bitcoin.rpc import BitcoinRpc, btc_to_sat
from mixhouse.chains.bitcoin.txbuild import build_signed_tx
from mixhouse.config import Settings
from mixhouse.db.engine import with_database
from mixhouse.db.migrate import upgrade
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.mixer.runtime import Runtime
from mixhouse.money import format_amount
from mixhouse.servers import background

BTC = 100_000_000
DEPOSIT = 1 * BTC
LIQUIDITY = 3 * BTC
PAYMENT_FEE = 2_000  # satoshi, the demo sender's own transactions
# A public, well-known BIP-39 test phrase: the demo's keys hold regtest coins only.
DEMO_MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


@asynccontextmanager
async def _fresh_database(database_url: str) -> AsyncIterator[str]:
    name = f"mixhouse_demo_btc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(database_url, name)
    try:
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _pay(rpc: BitcoinRpc, sender: Bip84Keyring, coin: Coin, to: str, amount: int) -> str:
    """Pay ``amount`` to ``to`` from the sender's ``coin``, change back to the sender."""
    change = coin.amount - amount - PAYMENT_FEE
    signed = build_signed_tx(
        inputs=[(coin, sender.private_key(0, 0))],
        outputs=[(to, amount), (sender.address(0, 0), change)],
        network="regtest",
    )
    return await rpc.sendrawtransaction(signed.raw.hex(), signed.txid)


async def run_bitcoin_demo(settings: Settings, database_url: str, *, give_up_after: float, console: Console) -> int:
    """Run the Bitcoin demo; returns the exit code (0 when every check passed)."""
    node = await asyncio.to_thread(RegtestNode.start)
    try:
        async with _fresh_database(database_url) as url:
            return await _run(settings, url, node, give_up_after, console)
    finally:
        await asyncio.to_thread(node.stop)


async def _run(settings: Settings, url: str, node: RegtestNode, give_up_after: float, console: Console) -> int:
    settings = settings.model_copy(
        update={
            "database_url": url,
            "jobcoin_enabled": False,
            "evm_enabled": False,
            "bitcoin_enabled": True,
            "bitcoin_rpc_url": node.rpc_url,
            "bitcoin_rpc_user": node.rpc_user,
            # model_copy does not validate: secrets must be wrapped by hand.
            "bitcoin_rpc_password": SecretStr(node.rpc_password),
            "bitcoin_network": "regtest",
            "bitcoin_confirmations": 2,
            "bitcoin_mnemonic": SecretStr(_fresh_mnemonic()),
            "scan_interval_seconds": 1,
            "job_polling_interval_seconds": 0.2,
            # Two mixes never reach the gate's k: released at their maximum wait, kept short here.
            "payout_round_seconds": 2,
            "privacy_max_extra_wait_seconds": 5,
        }
    )
    rt = build_runtime(settings, url)
    rpc = BitcoinRpc(node.rpc_url, user=node.rpc_user, password=node.rpc_password)
    sender = Bip84Keyring(DEMO_MNEMONIC, "regtest")
    user = Bip84Keyring(_fresh_mnemonic(), "regtest")
    withdrawals = [user.address(0, i) for i in range(3)]
    adapter = rt.adapter("BTC")
    try:
        await rpc.generatetoaddress(102, sender.address(0, 0))  # two coinbases mature
        unspent = (await rpc.scantxoutset_addresses([sender.address(0, 0)]))["unspents"]
        mature = sorted((u for u in unspent if int(u["height"]) <= 2), key=lambda u: int(u["height"]))
        coins = [Coin(u["txid"], int(u["vout"]), btc_to_sat(u["amount"]), sender.address(0, 0), None) for u in mature]
        mix = await create_mix(rt, MixRequest("BTC", withdrawals, 1, 20), actor="demo")
        console.print(
            f"mix created: deposit address [bold]{mix['deposit_address']}[/bold], "
            f"fee {mix['fee_min_bps'] / 100}-{mix['fee_max_bps'] / 100}%"
        )
        await _pay(rpc, sender, coins[0], adapter.pool_address, LIQUIDITY)
        console.print(f"operator added {format_amount(LIQUIDITY, 8)} BTC of liquidity to the pool")
        deposit_txid = await _pay(rpc, sender, coins[1], mix["deposit_address"], DEPOSIT)
        console.print(f"sent {format_amount(DEPOSIT, 8)} BTC to the deposit address in {deposit_txid}")
        status = await _follow(rt, rpc, sender, mix["id"], give_up_after=give_up_after, console=console)
        if status is None:
            console.print("[red]timed out before every payout was confirmed[/red]")
            return 1
        return await _report(rpc, status, withdrawals, console)
    finally:
        await rpc.aclose()
        await rt.aclose()
        await rt.engine.dispose()


def _fresh_mnemonic() -> str:
    from eth_account import Account  # noqa: PLC0415 - a BIP-39 generator we already depend on

    Account.enable_unaudited_hdwallet_features()
    return str(Account.create_with_mnemonic()[1])


async def _follow(
    rt: Runtime, rpc: BitcoinRpc, sender: Bip84Keyring, mix_id: str, *, give_up_after: float, console: Console
) -> dict[str, Any] | None:
    async def _mine() -> None:
        while True:
            await rpc.generatetoaddress(1, sender.address(0, 1))
            await asyncio.sleep(1.0)

    started = time.monotonic()
    async with background(_mine()), background(run_worker(rt, rt.settings.database_url or "", concurrency=4)):
        while time.monotonic() - started < give_up_after:
            status = await get_mix(rt, mix_id)
            payouts = [s for s in status["sends"] if s["kind"] == "payout"]
            console.print(
                f"  {time.monotonic() - started:5.1f} s  mix {status['mix']['state']:<16} "
                f"deposit {status['deposits'][0]['state'] if status['deposits'] else 'not seen':<8} "
                f"payouts {sum(p['state'] == 'confirmed' for p in payouts)}/{len(payouts)} confirmed"
            )
            if payouts and all(s["state"] == "confirmed" for s in status["sends"]):
                return status
            await asyncio.sleep(2.0)
    return None


async def _report(rpc: BitcoinRpc, status: dict[str, Any], withdrawals: list[str], console: Console) -> int:
    deposit = status["deposits"][0]
    table = Table(title="What the node shows: the payout transactions")
    for column in ("txid", "inputs", "to", "BTC", "confirmations"):
        table.add_column(column)
    received = dict.fromkeys(withdrawals, 0)
    spends_own_deposit = False
    # Several payouts (of this mix and others) may share one transaction: read each once.
    txids = list(dict.fromkeys(s["txid"] for s in status["sends"] if s["kind"] == "payout"))
    for txid in txids:
        raw = await rpc.getrawtransaction(txid, False)
        tx = Transaction.parse(bytes.fromhex(str(raw)))
        inputs = [f"{vin.txid.hex()}:{vin.vout}" for vin in tx.vin]
        spends_own_deposit |= deposit["chain_ref"] in inputs
        verbose = await rpc.getrawtransaction(txid, True)
        confirmations = verbose.get("confirmations", 0) if isinstance(verbose, dict) else 0
        for out in tx.vout:
            address = address_of_script(out.script_pubkey.data, "regtest")
            if address in received:
                received[address] += out.value
                table.add_row(
                    txid[:16] + "…", str(len(inputs)), address, format_amount(out.value, 8), str(confirmations)
                )
    console.print(table)
    total = sum(received.values())
    console.print(
        f"deposit {format_amount(deposit['amount'], 8)} BTC, fee {format_amount(deposit['fee_amount'], 8)}, "
        f"network fees {format_amount(deposit['network_fee_amount'], 8)}, received {format_amount(total, 8)}"
    )
    checks = {
        "withdrawal addresses received deposit - fee - network fees exactly": total
        == deposit["amount"] - deposit["fee_amount"] - deposit["network_fee_amount"]
        == deposit["payout_total"],
        "no payout spent the mix's own deposit output": not spends_own_deposit,
        "every withdrawal address was paid": all(v > 0 for v in received.values()),
    }
    for name, ok in checks.items():
        console.print(f"  {'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {name}")
    return 0 if all(checks.values()) else 1
