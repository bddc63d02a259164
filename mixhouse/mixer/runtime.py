"""What a mixer process holds: settings, the engine, the chain adapters, the screener."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.base import ChainAdapter
from mixhouse.config import Settings
from mixhouse.errors import InvalidInput
from mixhouse.keys.offload import SigningThread
from mixhouse.keys.signer import Signer
from mixhouse.mixer.screening import Screener
from mixhouse.money import Asset, AssetRegistry
from mixhouse.watch.registry import ChainWatches
from mixhouse.watch.scans import DepositScanner


@dataclass(slots=True)
class Runtime:
    """The dependencies of every mixer service function, built once per process.

    Attributes:
        settings: the process's settings.
        engine: the async engine; service functions open their own transactions on it.
        adapters: one chain adapter per enabled asset.
        screener: the sanctions screener.
        rng: the random source of fees, splits and delays. ``SystemRandom`` unless a test
            passes a seeded generator.
        signers: the key holder of each asset that signs (ETH, BTC), as the adapters use them
            (for health checks; the adapters alone sign).
        scanner: the deposit scans on the scanning engine, one ChainWatch per node, made on
            first use (:meth:`deposit_scanner`) and kept for the process.
        watches: the process's scanning engines, one per node (:meth:`chain_watches`), which
            the deposit scans and, in a worker, wallet sync read blocks through.
    """

    settings: Settings
    engine: AsyncEngine
    adapters: dict[Asset, ChainAdapter]
    screener: Screener
    rng: random.Random = field(default_factory=random.SystemRandom)
    signers: dict[Asset, Signer] = field(default_factory=dict)
    scanner: DepositScanner | None = None
    watches: ChainWatches | None = None
    # (the Settings it was built from, the registry): every amount check and every listing
    # asks for the assets, and building the registry re-validates every configured token.
    _assets: tuple[Settings, AssetRegistry] | None = field(default=None, init=False, repr=False, compare=False)
    # Asset -> the thread deposit keys are made in when the buffer is empty (one per asset, so
    # a hung token holds one thread, and the calls queued behind it are dropped at their deadline).
    _key_threads: dict[Asset, SigningThread] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def assets(self) -> AssetRegistry:
        """The assets of this deployment (built-in and configured tokens) and their facts,
        built once per :class:`Settings` object (rebuilt if a test swaps ``settings``)."""
        cached = self._assets
        if cached is None or cached[0] is not self.settings:
            cached = (self.settings, self.settings.assets())
            self._assets = cached
        return cached[1]

    def key_thread(self, asset: Asset) -> SigningThread:
        """The thread that makes ``asset``'s deposit keys at issue, with the deadline
        ``settings.key_issue_timeout_seconds`` (:mod:`mixhouse.keys.offload`)."""
        thread = self._key_threads.get(asset)
        if thread is None:
            thread = SigningThread(f"keys-{asset}", timeout=self.settings.key_issue_timeout_seconds)
            self._key_threads[asset] = thread
        return thread

    def adapter(self, asset: Asset | str) -> ChainAdapter:
        """The adapter of ``asset``.

        Raises:
            InvalidInput: the asset is unknown or not enabled in this deployment.
        """
        try:
            return self.adapters[Asset(asset)]
        except (KeyError, ValueError):
            enabled = ", ".join(sorted(a.value for a in self.adapters)) or "none"
            raise InvalidInput(f"asset {asset!r} is not enabled here (enabled: {enabled})") from None

    def deposit_scanner(self) -> DepositScanner:
        """The process's :class:`DepositScanner` (its reorg depth ``reorg_max_depth``, its block
        windows and stops in this engine's database)."""
        if self.scanner is None:
            self.scanner = DepositScanner(
                max_depth=self.settings.reorg_max_depth, engine=self.engine, watches=self.chain_watches()
            )
        return self.scanner

    def chain_watches(self) -> ChainWatches:
        """The process's :class:`ChainWatches` (reorg depth ``reorg_max_depth``, windows and
        stops in this engine's database), made on first use: one engine per node for every
        consumer of the process, so each block is fetched once."""
        if self.watches is None:
            self.watches = ChainWatches(max_depth=self.settings.reorg_max_depth, engine=self.engine)
        return self.watches

    async def aclose(self) -> None:
        """Close the adapters' and the deposit scanner's network clients, and stop the key threads."""
        for thread in self._key_threads.values():
            thread.close()
        if self.scanner is not None:
            await self.scanner.aclose()
        if self.watches is not None:
            await self.watches.aclose()
        for adapter in self.adapters.values():
            await adapter.aclose()
