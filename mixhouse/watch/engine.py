"""The scanning engine: one reader per chain kind, one cursor format, one reorg policy.

A :class:`ChainWatch` reads a chain's blocks through its :class:`BlockReader` (Bitcoin Core's
JSON-RPC in :mod:`mixhouse.watch.bitcoin`, Ethereum's in :mod:`mixhouse.watch.evm`) and hands
every block, once, to every :class:`Watcher` of the pass: wallet sync's address matchers and the
mixer's deposit matchers read the same block from the same request.

Positions are ``"<height>:<block hash>"`` of the last block a consumer has taken in. At the start
of a pass the engine checks that block is still in the main chain; if not, it walks down the
parents of that block as its :class:`BlockWindow` recorded them (every block it read, of every
branch, kept per chain kind in PostgreSQL when it has an engine) to the first one the node still
has at its height: the fork point. The
policy (``MIXHOUSE_REORG_MAX_DEPTH``):

* a fork at most ``max_depth`` blocks below the position: the pass resumes above it and says
  where (:attr:`Pass.rewound_to`), so consumers put what they saw above it back to unconfirmed;
* the window knows the position's ancestor ``max_depth`` below it and the node no longer has
  that one either: the reorg is deeper than the policy allows. The consumer is stopped (an audited
  ``watch.stopped`` entry, a ``watch_stops`` row, the ``mixhouse_watch_stopped`` metric and its
  alert) and :class:`ReorgTooDeep` is raised; its passes raise :class:`WatcherStopped` until the
  operator resumes it (:func:`mixhouse.watch.store.resume_consumer`);
* the window knows nothing that low (a fresh process without a database): the pass rewinds the
  full ``max_depth``, the most the policy allows; re-reading is idempotent for every consumer.

Within a pass each block must extend the one before it; one that does not (the chain changed
while the pass read it) or a height that vanished ends the pass early, ``complete=False``: the
next pass starts from the last block taken in and notices the reorg there.

Blocks read once serve every consumer (issue 8 part 1): a ChainWatch keeps the blocks it last
took in (:class:`BlockCache`, the highest ``cache_blocks`` heights, in memory only), and a pass
of another consumer over those heights takes them from there instead of the node. A cached run
is served only if it extends the consumer's position block by block (each block's parent is the
hash of the one before) and the node still has the run's last block at its height (one
``hash_at`` call): hash linkage then proves every block below it is main chain too. If the node
has another block there, the cached blocks from the run's first height up are dropped and read
again from the node, so a block orphaned by a reorg is never handed on as main chain. One
ChainWatch per node and process is shared by the mixer's deposit scans and wallet sync through
:class:`mixhouse.watch.registry.ChainWatches`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.errors import ChainError
from mixhouse.watch import store

# The default of Settings.reorg_max_depth: Bitcoin's 6 and Ethereum's 12 confirmations, twice.
DEFAULT_REORG_MAX_DEPTH = 24
# Blocks a ChainWatch keeps for its other consumers when its reader names no ``cache_blocks``.
DEFAULT_CACHE_BLOCKS = 64


@dataclass(frozen=True, slots=True)
class Block:
    """One block as the node gave it.

    Attributes:
        height: its height.
        hash: its hash (the node's text form: hex, ``0x``-prefixed on Ethereum).
        parent: the hash of the block it extends, ``None`` where the node gives none (height 0).
        data: the node's decoded block (Bitcoin: ``getblock`` verbosity 3; Ethereum:
            ``eth_getBlockByNumber`` with full transactions).
    """

    height: int
    hash: str
    parent: str | None
    data: dict[str, Any]


class BlockReader(Protocol):
    """A chain kind's node, as the engine reads it. A reader may say ``reorgs = False`` (a
    ledger): its block window is then not kept in the database; and ``cache_blocks = <n>``: how
    many of its blocks a :class:`ChainWatch` keeps in memory for its other consumers (default
    :data:`DEFAULT_CACHE_BLOCKS`; 0: none)."""

    chain: str

    async def tip(self) -> int:
        """The best height. Raises ChainError: the node failed."""
        ...

    async def hash_at(self, height: int) -> str | None:
        """The main-chain block hash at ``height``, ``None`` above the tip. Raises ChainError."""
        ...

    def blocks(self, start: int, end: int) -> AsyncGenerator[Block | None, None]:
        """Blocks ``start..end`` in height order; ``None`` for one that vanished (the caller
        stops there). Raises ChainError: the node failed."""
        ...


class Watcher(Protocol):
    """A consumer of blocks: handed each block of a pass once, in height order."""

    async def on_block(self, block: Block) -> None:
        """Take in ``block`` (match addresses, collect rows). Raises ChainError to fail the pass."""
        ...


class ReorgTooDeep(ChainError):
    """The chain reorganised deeper than ``max_depth`` below a consumer's position; the consumer
    is stopped.

    Attributes:
        chain, consumer: whose position it was.
        height: the position's height.
        max_depth: the policy's depth.
    """

    def __init__(self, chain: str, consumer: str, height: int, max_depth: int) -> None:
        super().__init__(f"{chain}: reorg deeper than {max_depth} blocks below height {height}; {consumer!r} stopped")
        self.chain = chain
        self.consumer = consumer
        self.height = height
        self.max_depth = max_depth


class WatcherStopped(ChainError):
    """The consumer was stopped by a too-deep reorg and has not been resumed."""


@dataclass(frozen=True, slots=True)
class Pass:
    """What one :meth:`ChainWatch.advance` read.

    Attributes:
        position: ``"<height>:<hash>"`` of the last block taken in (the input position if
            none was, ``None`` if there was none).
        start: the first height the pass asked for.
        last_height: the last height taken in, ``start - 1`` if none.
        tip: the node's best height at the start of the pass.
        rewound_to: the fork height where the input position's block had been orphaned.
        done: the pass reached ``tip`` without stopping early.
    """

    position: str | None
    start: int
    last_height: int
    tip: int
    rewound_to: int | None
    done: bool


class BlockWindow:
    """The blocks of one chain kind read at recent heights, by hash: ``{hash: (height, parent)}``,
    in memory and, with an engine, in ``watch_blocks`` (loaded on first use, saved after each
    pass). Every branch read is kept, so a consumer's orphaned position can be walked down its own
    parents to the fork even after another consumer has read the new branch."""

    def __init__(self, chain: str, keep: int, engine: AsyncEngine | None = None) -> None:
        self._chain = chain
        self._keep = keep
        self._engine = engine
        self._blocks: dict[str, tuple[int, str | None]] = {}
        self._fresh: dict[str, tuple[int, str | None]] = {}
        self._top = -1
        self._loaded = engine is None

    async def parent_of(self, block_hash: str) -> str | None:
        """The parent hash of a block read earlier, ``None`` if unknown."""
        if not self._loaded and self._engine is not None:
            self._blocks.update(await store.load_window(self._engine, self._chain))
            self._top = max((height for height, _ in self._blocks.values()), default=-1)
            self._loaded = True
        known = self._blocks.get(block_hash)
        return None if known is None else known[1]

    def record(self, block: Block) -> None:
        """Remember ``block``'s height and parent."""
        if block.hash not in self._blocks:
            self._blocks[block.hash] = self._fresh[block.hash] = (block.height, block.parent)
            self._top = max(self._top, block.height)

    async def save(self) -> None:
        """Keep the top ``keep`` heights; persist what is new (with an engine)."""
        floor = self._top - self._keep
        if len(self._blocks) > 4 * self._keep:
            self._blocks = {h: v for h, v in self._blocks.items() if v[0] >= floor}
        fresh = {h: v for h, v in self._fresh.items() if v[0] >= floor}
        self._fresh.clear()
        if self._engine is not None and fresh:
            await store.save_window(self._engine, self._chain, fresh, floor)


class BlockCache:
    """The blocks a ChainWatch last took in, by height: at most ``size`` of them, the highest
    heights (where consumers that caught up meet), one block per height (the latest read).
    In memory only. Memory is ``size`` decoded blocks: on Ethereum mainnet a block with its
    transactions is ~0.5-2 MB of Python objects, a Bitcoin block at verbosity 3 several MB,
    hence each reader's own ``cache_blocks``.

    Args:
        size: the most blocks kept, ``>= 0`` (0: nothing is kept).
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("a block cache size is at least 0")
        self.size = size
        self._blocks: dict[int, Block] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def put(self, block: Block) -> None:
        """Keep ``block`` (replacing what was kept at its height); beyond ``size``, the lowest
        height goes (``block`` itself if it is the lowest)."""
        if self.size == 0:
            return
        self._blocks[block.height] = block
        if len(self._blocks) > self.size:
            del self._blocks[min(self._blocks)]

    def run(self, start: int, end: int, parent: str | None) -> list[Block]:
        """The kept blocks ``start, start + 1, ...`` (at most to ``end``) each extending the one
        before, the first extending ``parent``; ``[]`` if none does. Not yet checked against
        the node."""
        found: list[Block] = []
        for height in range(start, end + 1):
            block = self._blocks.get(height)
            if block is None or block.parent != parent:
                break
            found.append(block)
            parent = block.hash
        return found

    def has(self, height: int) -> bool:
        """Whether a block is kept at ``height``."""
        return height in self._blocks

    def first_above(self, height: int) -> int | None:
        """The lowest kept height above ``height``, ``None`` if none."""
        return min((h for h in self._blocks if h > height), default=None)

    def drop_from(self, height: int) -> None:
        """Forget the blocks at ``height`` and above (another branch, or not proven main chain)."""
        for stale in [h for h in self._blocks if h >= height]:
            del self._blocks[stale]


def parse_position(position: str) -> tuple[int, str]:
    """``(height, hash)`` of a ``"<height>:<hash>"`` position.

    Raises:
        ValueError: not of that form.
    """
    height_text, sep, block_hash = position.partition(":")
    if not sep or not height_text.isdigit() or not block_hash:
        raise ValueError(f"a watch position is '<height>:<block hash>', got {position!r}")
    return int(height_text), block_hash


class ChainWatch:
    """The engine of one chain kind.

    Args:
        reader: the chain's node.
        max_depth: the reorg policy's depth (``Settings.reorg_max_depth``), ``>= 1``.
        engine: where the block window and the stops are kept; ``None``: in memory only (no
            stop outlives the process, and a fresh process rewinds the full depth).
        cache_blocks: blocks kept in memory for the other consumers (:class:`BlockCache`);
            ``None``: the reader's ``cache_blocks``, else :data:`DEFAULT_CACHE_BLOCKS`.

    Attributes:
        blocks_from_node, blocks_from_cache: blocks handed on, by where they came from (for
            tests and benchmarks).

    Raises:
        ValueError: ``max_depth`` below 1, ``cache_blocks`` below 0.
    """

    def __init__(
        self,
        reader: BlockReader,
        *,
        max_depth: int = DEFAULT_REORG_MAX_DEPTH,
        engine: AsyncEngine | None = None,
        cache_blocks: int | None = None,
    ) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        size = getattr(reader, "cache_blocks", DEFAULT_CACHE_BLOCKS) if cache_blocks is None else cache_blocks
        self._cache = BlockCache(int(size))
        self.blocks_from_node = 0
        self.blocks_from_cache = 0
        self.reader = reader
        self.chain = reader.chain
        self.max_depth = max_depth
        self._engine = engine
        # A chain that cannot reorganise (a ledger: reader.reorgs False) keeps its window in
        # memory only: persisting it would cost a write per pass and could never be used.
        self._window = BlockWindow(reader.chain, max_depth + 1, engine if getattr(reader, "reorgs", True) else None)
        self._stopped: dict[str, str] = {}

    async def advance(
        self, consumer: str, position: str | None, watchers: Sequence[Watcher], *, max_blocks: int
    ) -> Pass:
        """Read up to ``max_blocks`` blocks after ``position`` and hand each to every watcher.

        Args:
            consumer: who owns ``position`` (``"wallets"``, ``"deposits:ETH"``): what a too-deep
                reorg stops.
            position: ``"<height>:<hash>"`` of the last block taken in, ``None``: from height 0.
            watchers: handed every block, in order; all of them see the same blocks.
            max_blocks: the most blocks this pass reads, ``>= 1``.

        Raises:
            WatcherStopped: ``consumer`` is stopped.
            ReorgTooDeep: the position's block was orphaned by a reorg deeper than the policy
                (``consumer`` is stopped now).
            ValueError: a malformed position.
            ChainError: the node failed.
        """
        await self._check_running(consumer)
        tip = await self.reader.tip()
        start, rewound, previous = await self._resume(consumer, position)
        end = min(tip, start + max_blocks - 1)
        last = position if rewound is None else f"{start - 1}:{previous}"
        last_height = start - 1
        complete = True
        # Closed on an early stop too, so the reader cancels the blocks it has in flight.
        async with aclosing(self._blocks(start, end, previous)) as blocks:
            async for block in blocks:
                # A parent is absent at height 0 only; where it is there it must name the
                # block taken in before, or the chain changed under this pass.
                if block is None or (block.parent is not None and block.parent != previous):
                    complete = False
                    break
                for watcher in watchers:
                    await watcher.on_block(block)
                self._window.record(block)
                self._cache.put(block)
                last = f"{block.height}:{block.hash}"
                last_height = block.height
                previous = block.hash
        await self._window.save()
        return Pass(last, start, last_height, tip, rewound, done=complete and end >= tip)

    async def _blocks(self, start: int, end: int, previous: str | None) -> AsyncGenerator[Block | None, None]:
        """Blocks ``start..end`` extending ``previous``: runs of the cache proven main chain
        (see the module), the rest from the reader; ``None`` where one vanished."""
        height = start
        while height <= end:
            run = self._cache.run(height, end, previous)
            if run and await self.reader.hash_at(run[-1].height) == run[-1].hash:
                for kept in run:
                    self.blocks_from_cache += 1
                    yield kept
                previous, height = run[-1].hash, run[-1].height + 1
                continue
            if run or self._cache.has(height):
                # Kept blocks of another branch, or not the node's any more: never served.
                self._cache.drop_from(height)
            above = self._cache.first_above(height)
            upto = end if above is None else min(end, above - 1)
            async with aclosing(self.reader.blocks(height, upto)) as blocks:
                async for read in blocks:
                    yield read
                    if read is None:
                        return
                    self.blocks_from_node += 1
                    previous, height = read.hash, read.height + 1
            if height <= upto:
                yield None  # the reader ended early without saying why: as a vanished block
                return

    async def _check_running(self, consumer: str) -> None:
        # With a database its row is the truth: a ChainWatch lives as long as its process
        # (mixhouse.watch.scans), and a resume from another process (the CLI) must reach it.
        if self._engine is not None:
            reason = await store.stop_reason(self._engine, self.chain, consumer)
        else:
            reason = self._stopped.get(consumer)
        if reason is not None:
            raise WatcherStopped(f"{self.chain} {consumer!r} is stopped: {reason}")

    async def _resume(self, consumer: str, position: str | None) -> tuple[int, int | None, str | None]:
        """``(first height to read, fork height if rewound, hash the first block must extend)``."""
        if position is None:
            return 0, None, None
        height, block_hash = parse_position(position)
        if await self.reader.hash_at(height) == block_hash:
            return height + 1, None, block_hash
        # Down the position's own branch (its parents as read), to the first block the node
        # still has at that height: the fork.
        below, current = height, block_hash
        for depth in range(1, self.max_depth + 1):
            parent = await self._window.parent_of(current)
            if parent is None or below == 0:
                break  # not read by this engine: fall back to the full depth
            below -= 1
            if await self.reader.hash_at(below) == parent:
                return below + 1, below, parent
            if depth == self.max_depth:
                await self._stop(consumer, height)
            current = parent
        back = max(0, height - self.max_depth)
        parent = await self.reader.hash_at(back)
        if parent is None:
            raise ChainError(f"{self.chain}: no block at height {back} (the chain is shorter than the position)")
        return back + 1, back, parent

    async def _stop(self, consumer: str, height: int) -> None:
        """Stop ``consumer`` (audited, with an engine) and raise :class:`ReorgTooDeep`."""
        error = ReorgTooDeep(self.chain, consumer, height, self.max_depth)
        if self._engine is None:
            self._stopped[consumer] = str(error)
        else:
            await store.stop_consumer(
                self._engine, self.chain, consumer, height=height, max_depth=self.max_depth, reason=str(error)
            )
        raise error

    def resumed(self, consumer: str) -> None:
        """Forget this process's stop of ``consumer`` (without a database; with one,
        :func:`store.resume_consumer` alone resumes it)."""
        self._stopped.pop(consumer, None)
