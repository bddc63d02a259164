"""An OTC node that settles its trades by atomic swaps: ``python -m mixhouse.otc.swaps.service``.

It runs the OTC node (:func:`mixhouse.otc.runtime.running_node`: Grenache peer, HTTP API,
its own database) and, on the same database, a :class:`~mixhouse.otc.swaps.engine.SwapEngine`
with this node's Bitcoin and Ethereum keys: every agreed BTC/USDT or BTC/ETH trade gets its
swap (:func:`~mixhouse.otc.swaps.hook.swap_trade_of`), swap messages travel as the node's RPC
action ``swap``, and the engine takes a pass every ``MIXHOUSE_SWAP_POLL_S`` seconds. Killed
at any moment and started again, it resumes every swap from its database.

Configuration (environment):

* ``MIXHOUSE_SWAP_BTC_RPC_URL``, ``MIXHOUSE_SWAP_BTC_RPC_USER``, ``MIXHOUSE_SWAP_BTC_RPC_PASSWORD``,
  ``MIXHOUSE_SWAP_BTC_NETWORK`` (``regtest``);
* ``MIXHOUSE_SWAP_BTC_KEY_FILE``: a file holding the 32-byte swap key in hex (created, mode
  0600, if missing); its P2WPKH address funds the Bitcoin locks;
* ``MIXHOUSE_SWAP_EVM_RPC_URL``, ``MIXHOUSE_SWAP_EVM_CHAIN_ID``, ``MIXHOUSE_SWAP_EVM_MNEMONIC_FILE``
  (a BIP-39 mnemonic), ``MIXHOUSE_SWAP_EVM_KEY_PATH`` (``m/44'/60'/0'/0/0``);
* ``MIXHOUSE_SWAP_HTLC_ADDRESS``: the trusted deployment of ``contracts/HTLC.sol``;
  ``MIXHOUSE_SWAP_USDT_ADDRESS``: the USDT ERC-20;
* ``MIXHOUSE_SWAP_<FIELD>`` for any :class:`~mixhouse.otc.swaps.plan.SwapSettings` field
  (``T1_SECONDS``, ``T2_SECONDS``, ``BTC_CONFIRMATIONS``...), ``MIXHOUSE_SWAP_POLL_S`` (1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.htlc import EvmHtlc
from mixhouse.db.tables import otc_trades
from mixhouse.errors import ConfigError, InvalidInput
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.signer import SoftwareSigner
from mixhouse.otc.cli import node_settings_from_env
from mixhouse.otc.runtime import NodeConfig, RunningNode, running_node
from mixhouse.otc.swaps import plan, store
from mixhouse.otc.swaps.engine import SwapEngine
from mixhouse.otc.swaps.hook import NodeSwapTransport, serve_swaps, swap_trade_of
from mixhouse.otc.swaps.legs import BitcoinLeg, EvmLeg, Leg

log = logging.getLogger(__name__)
ENV = "MIXHOUSE_SWAP_"


@dataclass(frozen=True, slots=True)
class SwapServiceConfig:
    """What the swap engine of a node needs (see the module docstring for the variables)."""

    btc_rpc_url: str
    btc_rpc_user: str
    btc_rpc_password: str
    btc_network: str
    btc_key_file: Path
    evm_rpc_url: str
    evm_chain_id: int
    evm_mnemonic_file: Path
    evm_key_path: str
    htlc_address: str
    evm_tokens: Mapping[str, str | None]
    settings: plan.SwapSettings
    poll_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SwapServiceConfig:
        """Read the ``MIXHOUSE_SWAP_*`` variables.

        Raises:
            ConfigError: a required variable is missing or a number is malformed.
        """

        def need(name: str) -> str:
            value = env.get(ENV + name)
            if not value:
                raise ConfigError(f"{ENV}{name} is not set")
            return value

        overrides: dict[str, int | float] = {}
        for f in dataclasses.fields(plan.SwapSettings):
            raw = env.get(ENV + f.name.upper())
            if raw is not None:
                try:
                    overrides[f.name] = float(raw) if f.type == "float" else int(raw)
                except ValueError as exc:
                    raise ConfigError(f"{ENV}{f.name.upper()}={raw!r} is not a number") from exc
        tokens: dict[str, str | None] = {"ETH": None}
        if env.get(ENV + "USDT_ADDRESS"):
            tokens["USDT"] = env[ENV + "USDT_ADDRESS"]
        try:
            chain_id = int(need("EVM_CHAIN_ID"))
            poll_s = float(env.get(ENV + "POLL_S", "1.0"))
        except ValueError as exc:
            raise ConfigError(f"a {ENV} number is malformed: {exc}") from exc
        return cls(
            btc_rpc_url=need("BTC_RPC_URL"),
            btc_rpc_user=env.get(ENV + "BTC_RPC_USER", ""),
            btc_rpc_password=env.get(ENV + "BTC_RPC_PASSWORD", ""),
            btc_network=env.get(ENV + "BTC_NETWORK", "regtest"),
            btc_key_file=Path(need("BTC_KEY_FILE")),
            evm_rpc_url=need("EVM_RPC_URL"),
            evm_chain_id=chain_id,
            evm_mnemonic_file=Path(need("EVM_MNEMONIC_FILE")),
            evm_key_path=env.get(ENV + "EVM_KEY_PATH", "m/44'/60'/0'/0/0"),
            htlc_address=need("HTLC_ADDRESS"),
            evm_tokens=tokens,
            settings=dataclasses.replace(plan.SwapSettings(), **overrides),  # type: ignore[arg-type]
            poll_s=poll_s,
        )


def load_or_create_btc_key(path: Path) -> bytes:
    """The 32-byte swap key in ``path`` (hex), created with the OS's CSPRNG (mode 0600) if
    the file does not exist.

    Raises:
        ConfigError: the file holds something else.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_bytes(32).hex())
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{path} does not hold a 32-byte key in hex")
    return key


async def open_agreed(engine: SwapEngine, running: RunningNode, tokens: Mapping[str, str | None]) -> int:
    """Open the swap of every agreed trade that has none yet; returns how many were opened."""
    async with running.node.engine.connect() as conn:
        trades = list(await conn.execute(select(otc_trades)))
        known = {r.trade_id for r in await store.all_swaps(conn)}
    opened = 0
    for trade in trades:
        if trade.id in known:
            continue
        try:
            swap = swap_trade_of(trade, evm_tokens=tokens)
        except InvalidInput as exc:
            log.info("trade %s is not settled by a swap: %s", trade.id, exc)
            continue
        await engine.open_swap(swap)
        opened += 1
    return opened


@asynccontextmanager
async def running_swaps(running: RunningNode, config: SwapServiceConfig) -> AsyncIterator[SwapEngine]:
    """The swap engine of ``running``'s node, passing every ``poll_s`` until exit."""
    rpc = BitcoinRpc(config.btc_rpc_url, user=config.btc_rpc_user, password=config.btc_rpc_password, timeout=30.0)
    keyring = HdKeyring(config.evm_mnemonic_file.read_text().strip())
    adapter = EvmAdapter(
        config.evm_rpc_url,
        chain_id=config.evm_chain_id,
        signer=SoftwareSigner.for_evm(keyring),
        confirmations=config.settings.evm_confirmations,
        max_fee_per_gas_cap=500 * 10**9,
    )
    btc_key = load_or_create_btc_key(config.btc_key_file)
    try:
        # Each leg reads its key in a signing thread: the node's peer and API are serving.
        btc_leg = await BitcoinLeg.open(
            rpc,
            signer=SoftwareSigner.from_keys({"swap": btc_key}),
            key_ref="swap",
            network=config.btc_network,
            block_seconds=config.settings.btc_block_seconds,
        )
        evm_leg = await EvmLeg.open(EvmHtlc(adapter, config.htlc_address), key_ref=config.evm_key_path)
    except BaseException:
        await rpc.aclose()
        await adapter.aclose()
        raise
    legs: dict[str, Leg] = {"btc": btc_leg, "evm": evm_leg}
    engine = SwapEngine(
        running.node.engine,
        node=running.node.node_id,
        legs=legs,
        transport=NodeSwapTransport(running.node),
        settings=config.settings,
    )
    serve_swaps(running.node, engine)

    async def loop() -> None:
        while True:
            try:
                await open_agreed(engine, running, config.evm_tokens)
                await engine.run_once()
            except Exception:
                log.exception("swap pass failed")
            await asyncio.sleep(config.poll_s)

    task = asyncio.create_task(loop(), name="swap-engine")
    try:
        yield engine
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        btc_leg.close()
        await rpc.aclose()
        await adapter.aclose()


async def _serve(node_config: NodeConfig, config: SwapServiceConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_node(node_config) as running, running_swaps(running, config):
        print(f"swap node {running.node.node_id} api {running.api_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m mixhouse.otc.swaps.service --grape URL --data-dir DIR [--database-url URL]
    [--api-port N] [--other-grape URL...]``."""
    parser = argparse.ArgumentParser(description="An OTC node that settles its trades by atomic swaps.")
    parser.add_argument("--grape", required=True)
    parser.add_argument("--other-grape", action="append", default=[])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--api-port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    node_config = NodeConfig(
        grape_url=args.grape,
        other_grape_urls=args.other_grape,
        data_dir=args.data_dir,
        database_url=args.database_url,
        api_port=args.api_port,
        settings=node_settings_from_env(),  # the node's own MIXHOUSE_OTC_* timers
    )
    config = SwapServiceConfig.from_env(os.environ)
    plan.check_settings(config.settings)
    asyncio.run(_serve(node_config, config))


if __name__ == "__main__":
    main()
