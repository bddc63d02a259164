"""The history sources a deployment has, from its settings: its own nodes where enabled."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.config import Settings
from mixhouse.wallets.providers.blockchain_info import BlockchainInfoSource
from mixhouse.wallets.providers.esplora import EsploraSource
from mixhouse.wallets.records import HistorySource
from mixhouse.wallets.sources.bitcoin_node import BitcoinNodeSource
from mixhouse.wallets.sources.ethereum_node import EthereumNodeSource
from mixhouse.watch.bitcoin import BitcoinBlocks
from mixhouse.watch.engine import ChainWatch
from mixhouse.watch.evm import EvmBlocks


def sources_from_settings(settings: Settings, engine: AsyncEngine | None = None) -> dict[str, HistorySource]:
    """``{"BTC": ..., "ETH": ...}``: the operator's nodes (the ones the mixer uses), or for
    Bitcoin a provider API (``wallet_btc_source``). Addresses of a chain without a source stay
    ``pending``.

    The node sources read through the scanning engine (:mod:`mixhouse.watch`) with the reorg
    policy ``settings.reorg_max_depth``; with ``engine`` its block window and stops are kept in
    PostgreSQL (exact rewinds across restarts, a stop that outlives the process)."""
    sources: dict[str, HistorySource] = {}
    if settings.wallet_btc_source == "esplora":
        sources["BTC"] = EsploraSource(settings.wallet_esplora_url, network=settings.bitcoin_network)
    elif settings.wallet_btc_source == "blockchain.info":
        sources["BTC"] = BlockchainInfoSource(settings.wallet_blockchain_info_url)
    elif settings.bitcoin_enabled:
        password = settings.bitcoin_rpc_password
        rpc = BitcoinRpc(
            settings.bitcoin_rpc_url,
            user=settings.bitcoin_rpc_user,
            password=None if password is None else password.get_secret_value(),
        )
        watch = ChainWatch(BitcoinBlocks(rpc), max_depth=settings.reorg_max_depth, engine=engine)
        sources["BTC"] = BitcoinNodeSource(rpc, network=settings.bitcoin_network, watch=watch)
    if settings.evm_enabled:
        evm = ChainWatch(EvmBlocks(settings.evm_rpc_url), max_depth=settings.reorg_max_depth, engine=engine)
        sources["ETH"] = EthereumNodeSource(settings.evm_rpc_url, watch=evm)
    return sources
