"""Which history source each chain gets, from the settings."""

from __future__ import annotations

from mixhouse.config import Settings
from mixhouse.wallets.providers.blockchain_info import BlockchainInfoSource
from mixhouse.wallets.providers.esplora import EsploraSource
from mixhouse.wallets.sources.bitcoin_node import BitcoinNodeSource
from mixhouse.wallets.sources.configured import sources_from_settings
from mixhouse.wallets.sources.ethereum_node import EthereumNodeSource


def test_nodes_by_default_and_nothing_for_chains_without_one() -> None:
    assert sources_from_settings(Settings(bitcoin_enabled=False, evm_enabled=False)) == {}
    sources = sources_from_settings(Settings(bitcoin_enabled=True, evm_enabled=True))
    assert isinstance(sources["BTC"], BitcoinNodeSource)
    assert isinstance(sources["ETH"], EthereumNodeSource)


def test_a_provider_api_replaces_the_bitcoin_node() -> None:
    esplora = sources_from_settings(Settings(bitcoin_enabled=True, wallet_btc_source="esplora"))
    assert isinstance(esplora["BTC"], EsploraSource)
    info = sources_from_settings(Settings(bitcoin_enabled=False, wallet_btc_source="blockchain.info"))
    assert isinstance(info["BTC"], BlockchainInfoSource)
