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
from mixhouse.watch.registry import ChainWatches


def sources_from_settings(
    settings: Settings, engine: AsyncEngine | None = None, *, watches: ChainWatches | None = None
) -> dict[str, HistorySource]:
    """``{"BTC": ..., "ETH": ...}``: the operator's nodes (the ones the mixer uses), or for
    Bitcoin a provider API (``wallet_btc_source``). Addresses of a chain without a source stay
    ``pending``.

    The node sources read through the scanning engine (:mod:`mixhouse.watch`) with the reorg
    policy ``settings.reorg_max_depth``; with ``engine`` its block window and stops are kept in
    PostgreSQL (exact rewinds across restarts, a stop that outlives the process). ``watches``:
    the process's engines, shared with the mixer's deposit scans so each block is fetched from
    the node once (:mod:`mixhouse.app` passes them; not closed here); ``None``: engines of
    their own."""
    if watches is None:
        watches = ChainWatches(max_depth=settings.reorg_max_depth, engine=engine)
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
        sources["BTC"] = BitcoinNodeSource(rpc, network=settings.bitcoin_network, watch=watches.bitcoin(rpc))
    if settings.evm_enabled:
        sources["ETH"] = EthereumNodeSource(settings.evm_rpc_url, watch=watches.evm(settings.evm_rpc_url))
    return sources
