"""Native ETH on any EVM chain over JSON-RPC: :class:`~mixhouse.chains.evm.adapter.EvmAdapter`."""

from mixhouse.chains.evm.adapter import EvmAdapter

__all__ = ["EvmAdapter"]
