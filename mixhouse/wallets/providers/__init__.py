"""History sources backed by public provider APIs (blockchain.info, Esplora), each rate
limited and retried through a :class:`~mixhouse.wallets.providers.ratelimit.RateLimiter`."""

from mixhouse.wallets.providers.blockchain_info import BlockchainInfoSource
from mixhouse.wallets.providers.esplora import EsploraSource
from mixhouse.wallets.providers.ratelimit import RateLimiter

__all__ = ["BlockchainInfoSource", "EsploraSource", "RateLimiter"]
