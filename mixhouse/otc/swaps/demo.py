"""A settled OTC trade end to end: ``python -m mixhouse.otc.swaps.demo`` (``make demo-otc``).

Starts a bcoin regtest node, an anvil, two grapes and two OTC nodes with their swap engines
(Alice, Bob), each with its own database and keys; deploys the HTLC contract and a USDT-like
6-decimal token (the test token with no return values, ``tests/data/contracts``); Alice sells
0.01 BTC for 600 USDT, Bob's buy takes it, and the two nodes settle the trade by an atomic
swap while a block is mined on each chain every half second. Prints each swap step with its
txid, then the balances as each chain shows them, and exits 0 once both swaps are
``completed`` (1 if not within ``--timeout`` seconds).

Databases: fresh ones on ``MIXHOUSE_DATABASE_URL`` if set (dropped after), else an embedded
PostgreSQL per node under a temporary directory. The demo's keys are random and thrown away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from embit.bip39 import mnemonic_from_bytes  # type: ignore[import-untyped]

from mixhouse.chains.bitcoin.devnet import RegtestNode
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.deploy import deploy_contract, deploy_token
from mixhouse.chains.evm.htlc import EvmHtlc, htlc_artifact
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.signer import SoftwareSigner
from mixhouse.otc.demo import _databases
from mixhouse.otc.devnet import start_grapes
from mixhouse.otc.node import NewOrder, NodeSettings
from mixhouse.otc.runtime import NodeConfig, running_node
from mixhouse.otc.swaps import plan
from mixhouse.otc.swaps.engine import swap_rows
from mixhouse.otc.swaps.legs import BitcoinLeg
from mixhouse.otc.swaps.service import SwapServiceConfig, running_swaps
from mixhouse.servers import background

REPO_ROOT = Path(__file__).resolve().parents[3]
ANVIL_BIN = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
TOKENS = REPO_ROOT / "tests" / "data" / "contracts" / "test_tokens_artifact.json"
CHAIN_ID = 31337
ANVIL_DEV_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # anvil's unlocked account 0
QUANTITY = 1_000_000  # 0.01 BTC
PRICE = 60_000 * 10**6  # 60,000 USDT per BTC: 600 USDT for the fill
NODE_SETTINGS = NodeSettings(ttl_ms=30_000, refresh_every_s=2.0, anti_entropy_every_s=1.0, outbox_every_s=0.2)
# Demo scale: a Bitcoin block stands for 10 s, T1 = 4000 s (400 blocks), T2 = 2000 s, k = 2.
SETTINGS = plan.SwapSettings(
    t1_seconds=4_000,
    t2_seconds=2_000,
    min_gap_seconds=1_200,
    claim_margin_seconds=400,
    btc_block_seconds=10,
    btc_confirmations=2,
    evm_confirmations=2,
    message_retry_seconds=0.5,
)
BLOCK_EVERY_S = 0.5
# The coinbases of the blocks mined after Alice's go here (a regtest address nobody uses).
BURN_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


class DemoFailed(AssertionError):
    """The swap did not settle in time."""


async def _rpc(url: str, method: str, params: list[Any]) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        body = (await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})).json()
    if body.get("error"):
        raise DemoFailed(f"{method}: {body['error']}")
    return body["result"]


@contextlib.contextmanager
def _anvil() -> Any:
    port = 20_000 + secrets.randbelow(20_000)
    proc = subprocess.Popen(  # noqa: S603 - our own npm-installed binary, fixed arguments
        [ANVIL_BIN, "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(CHAIN_ID), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _wait(check: Callable[[], Any], what: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError):
            if await check():
                return
        await asyncio.sleep(0.2)
    raise DemoFailed(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def _miner(node: RegtestNode, evm_url: str, address: str) -> AsyncIterator[None]:
    async def mine() -> None:
        while True:
            await asyncio.to_thread(node.mine, 1, address)
            await _rpc(evm_url, "evm_mine", [])
            await asyncio.sleep(BLOCK_EVERY_S)  # the chains' block interval, not a wait for anything

    async with background(mine()):
        yield


async def run_swap_demo(*, database_server_url: str | None, give_up_after: float, echo: Callable[[str], None]) -> int:
    """Run the demo (see the module docstring); 0 once the trade is settled on both chains.

    Raises:
        DemoFailed: a step did not happen in time.
    """
    deadline = time.monotonic() + give_up_after
    mnemonic = str(mnemonic_from_bytes(secrets.token_bytes(16)))
    keyring = HdKeyring(mnemonic)
    deployer, alice_evm, bob_evm = (f"m/44'/60'/0'/0/{i}" for i in range(3))
    with tempfile.TemporaryDirectory(prefix="mixhouse-swap-demo-") as tmp_name:
        root = Path(tmp_name)
        (root / "mnemonic").write_text(mnemonic)
        bitcoin = await asyncio.to_thread(RegtestNode.start)
        try:
            with (
                _anvil() as evm_url,
                start_grapes(ports=None, log_dir=root) as grapes,
                _databases(database_server_url, 2) as databases,
            ):
                signer = SoftwareSigner.for_evm(keyring)
                adapter = EvmAdapter(
                    evm_url, chain_id=CHAIN_ID, signer=signer, confirmations=1, max_fee_per_gas_cap=500 * 10**9
                )
                rpc = BitcoinRpc(bitcoin.rpc_url, user=bitcoin.rpc_user, password=bitcoin.rpc_password, timeout=30)
                try:
                    await _wait(lambda: _rpc(evm_url, "eth_chainId", []), "anvil", deadline)
                    for key in (deployer, alice_evm, bob_evm):
                        tx = {"from": ANVIL_DEV_ACCOUNT, "to": adapter.key_address(key), "value": hex(10**19)}
                        await _rpc(evm_url, "eth_sendTransaction", [tx])
                    htlc_address = await deploy_contract(adapter, deployer, htlc_artifact()["bytecode"])
                    token_code = json.loads(TOKENS.read_text())["contracts"]["NoReturnToken"]["bytecode"]
                    usdt = await deploy_token(
                        adapter, deployer, token_code, holders={adapter.key_address(bob_evm): 10_000 * 10**6}
                    )
                    echo(f"anvil {evm_url}: HTLC {htlc_address}, USDT-like token {usdt}")

                    configs = {}
                    for name, evm_key in (("alice", alice_evm), ("bob", bob_evm)):
                        key_file = root / f"{name}.btc.key"
                        key_file.write_text(secrets.token_bytes(32).hex())
                        configs[name] = SwapServiceConfig(
                            btc_rpc_url=bitcoin.rpc_url,
                            btc_rpc_user=bitcoin.rpc_user,
                            btc_rpc_password=bitcoin.rpc_password,
                            btc_network="regtest",
                            btc_key_file=key_file,
                            evm_rpc_url=evm_url,
                            evm_chain_id=CHAIN_ID,
                            evm_mnemonic_file=root / "mnemonic",
                            evm_key_path=evm_key,
                            htlc_address=htlc_address,
                            evm_tokens={"ETH": None, "USDT": usdt},
                            settings=SETTINGS,
                            poll_s=0.2,
                        )
                    btc_address = {
                        name: BitcoinLeg(
                            rpc,
                            signer=SoftwareSigner.from_keys({"swap": bytes.fromhex(c.btc_key_file.read_text())}),
                            key_ref="swap",
                            network="regtest",
                        ).address
                        for name, c in configs.items()
                    }
                    # Alice's Bitcoin: a coinbase, spendable once 100 more blocks are on top.
                    await asyncio.to_thread(bitcoin.mine, 1, btc_address["alice"])
                    burn = BURN_ADDRESS
                    await asyncio.to_thread(bitcoin.mine, 100, burn)
                    echo(f"bcoin regtest {bitcoin.rpc_url}: Alice's swap address {btc_address['alice']} holds 50 BTC")

                    async with contextlib.AsyncExitStack() as stack:
                        nodes = {}
                        for i, name in enumerate(("alice", "bob")):
                            config = NodeConfig(
                                grape_url=grapes.urls[i],
                                other_grape_urls=[grapes.urls[1 - i]],
                                data_dir=root / name,
                                database_url=databases[i],
                                api_port=None,
                                settings=NODE_SETTINGS,
                            )
                            running = await stack.enter_async_context(running_node(config))
                            await stack.enter_async_context(running_swaps(running, configs[name]))
                            nodes[name] = running
                            echo(f"{name}'s node {running.node.node_id[:12]} is up")
                        await stack.enter_async_context(_miner(bitcoin, evm_url, burn))
                        alice, bob = nodes["alice"], nodes["bob"]
                        sell = await alice.node.place(NewOrder("BTC/USDT", "sell", QUANTITY, PRICE))
                        echo(f"alice sells 0.01 BTC at 60,000 USDT: order {sell.order_id[:12]}")

                        async def seen() -> bool:
                            return any(o.id == sell.order_id for o in await bob.node.book("BTC/USDT"))

                        await _wait(seen, "Bob's node to learn the sell", deadline)
                        buy = await bob.node.place(NewOrder("BTC/USDT", "buy", QUANTITY, PRICE, tif="IOC"))
                        echo(f"bob buys it: trade {buy.fills[0].trade_id[:12]} agreed for 600 USDT")
                        shown: dict[tuple[str, str], str] = {}

                        async def settled() -> bool:
                            states = []
                            for name, running in nodes.items():
                                for row in await swap_rows(running.node.engine):
                                    states.append(row["state"])
                                    if shown.get((name, row["swap_id"])) != row["state"]:
                                        shown[(name, row["swap_id"])] = row["state"]
                                        txid = row["txids"].get(row["state"], "")
                                        echo(f"  {name:5} ({row['role']}): {row['state']:14} {txid}")
                            return len(states) == 2 and set(states) == {"completed"}

                        await _wait(settled, "the swap to settle", deadline)
                    bob_btc = await rpc.scantxoutset_addresses([btc_address["bob"]])
                    bob_sat = sum(int(Decimal(str(u["amount"])) * 100_000_000) for u in bob_btc["unspents"])
                    htlc = EvmHtlc(adapter, htlc_address)
                    alice_usdt = await htlc.token_balance(usdt, adapter.key_address(alice_evm))
                    bob_usdt = await htlc.token_balance(usdt, adapter.key_address(bob_evm))
                    echo("settled; balances as each chain shows them:")
                    echo(f"  Bitcoin:  Bob's swap address holds {bob_sat} sat (0.01 BTC less his claim's fee)")
                    echo(f"  Ethereum: Alice holds {alice_usdt / 10**6:.2f} USDT, Bob {bob_usdt / 10**6:.2f} USDT")
                    return 0 if alice_usdt == 600 * 10**6 and 0 < bob_sat <= QUANTITY else 1
                finally:
                    await rpc.aclose()
                    await adapter.aclose()
        finally:
            await asyncio.to_thread(bitcoin.stop)


def main() -> None:
    """``python -m mixhouse.otc.swaps.demo [--timeout 300]``."""
    parser = argparse.ArgumentParser(description="An OTC trade settled by an atomic swap on regtest + anvil.")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    try:
        code = asyncio.run(
            run_swap_demo(
                database_server_url=os.environ.get("MIXHOUSE_DATABASE_URL") or None,
                give_up_after=args.timeout,
                echo=print,
            )
        )
    except DemoFailed as exc:
        print(f"demo failed: {exc}")
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
