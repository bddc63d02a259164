"""A swap node SIGKILLed mid-swap and started again resumes the swap from its database
(issue 10, part 3). Alice runs ``python -m mixhouse.otc.swaps.service`` as a child process (an
OTC node plus its swap engine, its own database and keys); Bob runs the same in the test
process. Their BTC/USDT trade is agreed over real grapes and settled on bcoin regtest and
anvil while a miner task makes a block on each chain every half second."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from mixhouse.db.engine import make_engine
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.signer import SoftwareSigner
from mixhouse.otc.devnet import Grapes
from mixhouse.otc.node import NewOrder
from mixhouse.otc.runtime import NodeConfig, running_node
from mixhouse.otc.swaps import plan
from mixhouse.otc.swaps.legs import BitcoinLeg, StoredTx
from mixhouse.otc.swaps.service import SwapServiceConfig, running_swaps
from mixhouse.servers import background
from tests.fixtures.anvil import TEST_MNEMONIC, Anvil
from tests.fixtures.bcoin import Bcoin
from tests.otc_support import FAST, PRICE, fresh_databases, wait_until
from tests.test_otc_swap import World, make_world

# Long enough that nothing times out while a process restarts on a loaded machine (blocks
# come every 0.5 s: T1 = 400 blocks, about 200 s), k = 2 on both chains.
SETTINGS = plan.SwapSettings(
    t1_seconds=4_000,
    t2_seconds=2_000,
    min_gap_seconds=1_200,
    claim_margin_seconds=400,
    lock_by_seconds=3_600,
    btc_block_seconds=10,
    btc_confirmations=2,
    evm_confirmations=2,
    message_retry_seconds=0.5,
)
QUANTITY = 1_000_000  # 0.01 BTC at 60,000: 600 USDT
BLOCK_EVERY_S = 0.5


def _env(world: World, anvil: Anvil, bcoin: Bcoin, tmp: Path, name: str, evm_key: str) -> dict[str, str]:
    mnemonic = tmp / "mnemonic"
    mnemonic.write_text(TEST_MNEMONIC)
    key_file = tmp / f"{name}.btc.key"
    key_file.write_text(hashlib.sha256(f"kill test {name} {tmp}".encode()).hexdigest())
    env = {
        "MIXHOUSE_SWAP_BTC_RPC_URL": bcoin.node.rpc_url,
        "MIXHOUSE_SWAP_BTC_RPC_USER": bcoin.node.rpc_user,
        "MIXHOUSE_SWAP_BTC_RPC_PASSWORD": bcoin.node.rpc_password,
        "MIXHOUSE_SWAP_BTC_NETWORK": "regtest",
        "MIXHOUSE_SWAP_BTC_KEY_FILE": str(key_file),
        "MIXHOUSE_SWAP_EVM_RPC_URL": anvil.rpc_url,
        "MIXHOUSE_SWAP_EVM_CHAIN_ID": str(anvil.chain_id),
        "MIXHOUSE_SWAP_EVM_MNEMONIC_FILE": str(mnemonic),
        "MIXHOUSE_SWAP_EVM_KEY_PATH": evm_key,
        "MIXHOUSE_SWAP_HTLC_ADDRESS": world.htlc.address,
        "MIXHOUSE_SWAP_USDT_ADDRESS": world.tokens["usdt"],
        "MIXHOUSE_SWAP_POLL_S": "0.2",
    }
    for field in ("t1_seconds", "t2_seconds", "min_gap_seconds", "claim_margin_seconds", "btc_block_seconds"):
        env[f"MIXHOUSE_SWAP_{field.upper()}"] = str(getattr(SETTINGS, field))
    env["MIXHOUSE_SWAP_BTC_CONFIRMATIONS"] = "2"
    env["MIXHOUSE_SWAP_EVM_CONFIRMATIONS"] = "2"
    env["MIXHOUSE_SWAP_MESSAGE_RETRY_SECONDS"] = "0.5"
    return env


def _btc_address(key_file: Path) -> str:
    signer = SoftwareSigner.from_keys({"swap": bytes.fromhex(key_file.read_text())})
    return BitcoinLeg(None, signer=signer, key_ref="swap", network="regtest").address  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _miner(bcoin: Bcoin, anvil: Anvil) -> AsyncIterator[None]:
    """A block on each chain every BLOCK_EVERY_S (the chains' clocks; not a wait for anything)."""

    async def mine() -> None:
        while True:
            await bcoin.mine(1)
            await anvil.rpc("evm_mine")
            await asyncio.sleep(BLOCK_EVERY_S)

    async with background(mine()):
        yield


class AliceProcess:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.parametrize("kill_at", ["locked", "lock_confirmed", "claimed"])
async def test_a_node_killed_mid_swap_resumes_after_restart(
    bcoin: Bcoin,
    anvil: Anvil,
    evm_keyring: HdKeyring,
    grapes: Grapes,
    pg_server_url: str,
    template_db: str,
    tmp_path: Path,
    kill_at: str,
) -> None:
    with fresh_databases(pg_server_url, template_db, 4) as (alice_url, bob_url, scratch_a, scratch_b):
        async with make_world(bcoin, anvil, evm_keyring, scratch_a, scratch_b) as world:
            alice_env = _env(world, anvil, bcoin, tmp_path, "alice", world.alice.evm.key_ref)
            bob_env = _env(world, anvil, bcoin, tmp_path, "bob", world.bob.evm.key_ref)
            alice_btc = _btc_address(Path(alice_env["MIXHOUSE_SWAP_BTC_KEY_FILE"]))
            bob_btc = _btc_address(Path(bob_env["MIXHOUSE_SWAP_BTC_KEY_FILE"]))
            await bcoin.fund(alice_btc, 3 * QUANTITY)
            await bcoin.mine(1)
            bob_tokens = await world.evm_balance("usdt", world.bob.evm.address)
            alice_tokens = await world.evm_balance("usdt", world.alice.evm.address)

            api_port = 18_000 + int(hashlib.sha256(str(tmp_path).encode()).hexdigest()[:4], 16) % 2_000
            alice = AliceProcess(
                [
                    sys.executable,
                    "-m",
                    "mixhouse.otc.swaps.service",
                    "--grape",
                    grapes.urls[0],
                    "--other-grape",
                    grapes.urls[1],
                    "--data-dir",
                    str(tmp_path / "alice"),
                    "--database-url",
                    alice_url,
                    "--api-port",
                    str(api_port),
                ],
                {
                    **os.environ,
                    **alice_env,
                    "MIXHOUSE_OTC_TTL_MS": str(FAST.ttl_ms),
                    "MIXHOUSE_OTC_REFRESH_EVERY_S": str(FAST.refresh_every_s),
                    "MIXHOUSE_OTC_ANTI_ENTROPY_EVERY_S": str(FAST.anti_entropy_every_s),
                    "MIXHOUSE_OTC_OUTBOX_EVERY_S": str(FAST.outbox_every_s),
                },
                tmp_path / "alice.log",
            )
            alice_db = make_engine(alice_url, pool_size=2)
            config = replace(SwapServiceConfig.from_env(bob_env), settings=SETTINGS)
            node_config = NodeConfig(
                grape_url=grapes.urls[1],
                other_grape_urls=[grapes.urls[0]],
                data_dir=tmp_path / "bob",
                database_url=bob_url,
                api_port=None,
                settings=FAST,
            )

            async def alice_state() -> str | None:
                async with alice_db.connect() as conn:
                    row = (await conn.execute(text("SELECT state FROM otc_swaps"))).first()
                return None if row is None else str(row.state)

            try:
                alice.start()
                async with running_node(node_config) as bob, running_swaps(bob, config), _miner(bcoin, anvil):
                    api = f"http://127.0.0.1:{api_port}"

                    async def api_up() -> bool:
                        try:
                            async with httpx.AsyncClient(trust_env=False) as client:
                                return (await client.get(api + "/health", timeout=2)).status_code == 200
                        except httpx.HTTPError:
                            return False

                    await wait_until(api_up, timeout_s=120, what="Alice's node")
                    async with httpx.AsyncClient(trust_env=False) as client:
                        placed = await client.post(
                            api + "/orders",
                            json={"pair": "BTC/USDT", "side": "sell", "quantity": str(QUANTITY), "price": str(PRICE)},
                            timeout=30,
                        )
                    assert placed.status_code == 201, placed.text
                    order_id = placed.json()["order_id"]

                    async def bob_sees() -> bool:
                        return any(o.id == order_id for o in await bob.node.book("BTC/USDT"))

                    await wait_until(bob_sees, timeout_s=180, what="the sell at Bob's node")
                    buy = await bob.node.place(NewOrder("BTC/USDT", "buy", QUANTITY, PRICE, tif="IOC"))
                    assert [f.quantity for f in buy.fills] == [QUANTITY]

                    order = plan_order(kill_at)

                    async def reached() -> bool:
                        state = await alice_state()
                        return state is not None and state in order

                    await wait_until(reached, timeout_s=180, what=f"Alice at {kill_at}")
                    alice.kill()
                    killed_in = await alice_state()
                    alice.start()

                    async def bob_done() -> str | None:
                        async with bob.node.engine.connect() as conn:
                            row = (await conn.execute(text("SELECT state FROM otc_swaps"))).first()
                        state = None if row is None else str(row.state)
                        return state if state == "completed" else None

                    await wait_until(bob_done, timeout_s=240, what="Bob's swap completed")
                    await wait_until(lambda: _is_completed(alice_state), timeout_s=240, what="Alice's swap completed")
                    async with bob.node.engine.connect() as conn:
                        data = (await conn.execute(text("SELECT data FROM otc_swaps"))).scalar_one()
                    bob_claim = StoredTx.from_json(data["claim_tx"])
            finally:
                alice.stop()
                await alice_db.dispose()
            assert killed_in in order - {"completed"}, f"killed in {killed_in}: too late to test a resume"
            # No coin lost or doubled: Bob has the Bitcoin less his claim's fee, Alice the tokens.
            assert await world.btc_balance(bob_btc) == QUANTITY - bob_claim.fee
            assert await world.evm_balance("usdt", world.alice.evm.address) == alice_tokens + 600 * 10**6
            assert await world.evm_balance("usdt", world.bob.evm.address) == bob_tokens - 600 * 10**6


async def _is_completed(state: Callable[[], Awaitable[str | None]]) -> bool:
    return await state() == "completed"


def plan_order(kill_at: str) -> set[str]:
    """``kill_at`` and the initiator states after it (the kill lands at or after it)."""
    states = ["agreed", "lock_signed", "locked", "lock_confirmed", "claim_signed", "claimed", "completed"]
    return set(states[states.index(kill_at) :])
