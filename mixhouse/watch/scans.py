"""Deposit scans on the scanning engine, for every kind of adapter.

:class:`DepositScanner` holds one :class:`~mixhouse.watch.engine.ChainWatch` per chain (per node:
native ETH and every ERC-20 token of one EVM node share one, as do all Bitcoin watchers of a
node), built on first use and kept for the life of the process (a ChainWatch made per scan
cost 10 to 15 ms: its HTTP client, and its block window loaded again from PostgreSQL). They
come from a :class:`~mixhouse.watch.registry.ChainWatches`, the process's (shared with wallet
sync, so a block either reads is fetched once) or its own: the scan of a token after ETH's
takes the blocks ETH's scan read from the engine's cache. Its
:meth:`DepositScanner.scan` is what ``ChainAdapter.scan`` was, on the engine: the transfers to
the watched addresses after a cursor, the next cursor and the heights.

Cursors are the engine's positions ``"<height>:<hash>"`` of the last block taken in; on Bitcoin,
on tokens and on Jobcoin prefixed ``@`` (the adapters' own cursors, stored before, had the same
shape and mean something else: ``"<next height>:<hash below it>"``, Jobcoin's ``"<a>:<b>"``).
An old cursor is converted on first use to the position of the block below it; none (a first
scan) starts ``confirmations + slack`` blocks below the tip, as the adapters did, or, on an EVM
node given ``since`` (the creation time of the oldest watched mix), at the first block mined
after ``since`` less :data:`FIRST_SCAN_CLOCK_MARGIN_SECONDS`, if that is lower: a worker first
started long after the first mixes were created still finds their deposits. Native ETH's
positions carry no prefix: they were stored so since the engine first scanned ETH.

Per chain kind:

* **ETH** (:class:`~mixhouse.chains.evm.adapter.EvmAdapter`): :class:`~mixhouse.watch.deposits.EvmDeposits`.
* **ERC-20** (:class:`~mixhouse.chains.evm.token.Erc20Adapter`): :class:`~mixhouse.watch.tokens.Erc20Deposits`.
* **BTC** (:class:`~mixhouse.chains.bitcoin.adapter.BitcoinAdapter`):
  :class:`~mixhouse.watch.deposits.BitcoinDeposits` and, once a pass reaches the tip, the
  mempool (:class:`~mixhouse.watch.bitcoin.BitcoinMempool`, ``block_number=None``).
* **Jobcoin** (:class:`~mixhouse.chains.jobcoin.adapter.JobcoinAdapter`): the ledger's pages
  (:mod:`mixhouse.watch.jobcoin`), then the paid addresses' incoming transfers. The cursor is
  ``"@<from>;<reached>"``: a scan reads after ``<from>``, where the scan before the last one
  reached, so every part of the history is read by two consecutive scans (a mix created while
  a scan runs is not in its watched set, but its first deposit comes after the head the
  previous scan read). On a ledger without the history cursor every watched address is read
  on each scan and the cursor stays ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.base import ChainAdapter, ScanResult, Transfer
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.chains.jobcoin import adapter as jobcoin
from mixhouse.chains.jobcoin.adapter import JobcoinAdapter
from mixhouse.watch.bitcoin import BitcoinMempool
from mixhouse.watch.deposits import BitcoinDeposits, EvmDeposits
from mixhouse.watch.engine import DEFAULT_REORG_MAX_DEPTH, ChainWatch
from mixhouse.watch.evm import EvmBlocks
from mixhouse.watch.jobcoin import JobcoinDeposits, LedgerPages, NoHistoryCursor
from mixhouse.watch.registry import ChainWatches
from mixhouse.watch.tokens import Erc20Deposits

# Blocks one EVM scan reads at most, so one call stays bounded after a long pause.
EVM_MAX_BLOCKS_PER_SCAN = 500
# A first EVM scan starts this many blocks below the confirmation depth: blocks mined while
# the caller started up (a deposit address exists only from its mix's creation on).
EVM_FIRST_SCAN_SLACK = 2
# A first EVM scan given the oldest watched mix's creation time starts at the blocks mined this
# long before it: the database's clock and the block producers' may disagree. Ethereum's block
# timestamps are slot times (genesis + 12 s per slot) and an NTP-kept clock is within a second,
# so two minutes covers a badly drifted database clock; more only re-reads blocks that cannot
# hold a deposit (its address exists from the mix's creation on) and, on a chain that mines
# fast, makes the first scan take several passes.
FIRST_SCAN_CLOCK_MARGIN_SECONDS = 120
# Blocks one Bitcoin scan reads at most.
BTC_MAX_BLOCKS_PER_SCAN = 200
# A first Bitcoin scan reads a day of mainnet blocks below the confirmation depth, so deposits
# made while no worker ran yet are still found.
BTC_FIRST_SCAN_SLACK = 144


class DepositScanner:
    """The deposit scans of one process, on one ChainWatch per node.

    Args:
        max_depth: the reorg policy's depth (``Settings.reorg_max_depth``), ``>= 1``.
        engine: where the engines keep their block windows and stops; ``None``: in memory.
        watches: the process's engines, shared with its other consumers (not closed here);
            ``None``: its own, with ``max_depth`` and ``engine`` (closed by :meth:`aclose`).
    """

    def __init__(
        self,
        *,
        max_depth: int = DEFAULT_REORG_MAX_DEPTH,
        engine: AsyncEngine | None = None,
        watches: ChainWatches | None = None,
    ) -> None:
        self._owns_watches = watches is None
        self._chains = ChainWatches(max_depth=max_depth, engine=engine) if watches is None else watches
        self.max_depth = self._chains.max_depth
        self._engine = engine
        self._ledgers: dict[int, ChainWatch] = {}
        self._mempools: dict[int, BitcoinMempool] = {}

    def watch_of(self, adapter: ChainAdapter) -> ChainWatch:
        """The ChainWatch of ``adapter``'s node (made on first use, then kept).

        Raises:
            TypeError: an adapter of a kind the engine has no reader for.
        """
        evm = adapter.evm if isinstance(adapter, Erc20Adapter) else adapter
        if isinstance(evm, EvmAdapter):
            return self._chains.evm(evm.rpc_url)
        if isinstance(adapter, BitcoinAdapter):
            return self._chains.bitcoin(adapter.rpc)
        if not isinstance(adapter, JobcoinAdapter):
            raise TypeError(f"no block reader for {type(adapter).__name__}")
        # A ledger has one consumer, the deposit scan: its watch is not shared.
        watch = self._ledgers.get(id(adapter))
        if watch is None:
            watch = ChainWatch(LedgerPages(adapter), max_depth=self.max_depth, engine=self._engine)
            self._ledgers[id(adapter)] = watch
        return watch

    async def aclose(self) -> None:
        """Close the HTTP clients of the readers made here (not the adapters' own, nor those of
        a ChainWatches given)."""
        if self._owns_watches:
            await self._chains.aclose()
        self._ledgers.clear()

    async def scan(
        self,
        adapter: ChainAdapter,
        watched: Sequence[str],
        cursor: str | None,
        *,
        consumer: str | None = None,
        since: datetime | None = None,
    ) -> ScanResult:
        """One pass of ``adapter``'s asset's deposit watching after ``cursor`` (see the module).

        Args:
            adapter: an ETH, ERC-20, Bitcoin or Jobcoin adapter.
            watched: the addresses to look for (any accepted form; Bitcoin's are canonicalised).
            cursor: from the previous scan, an adapter cursor stored before, or ``None``.
            consumer: whose position it is (what a too-deep reorg stops), default
                ``"deposits:<asset>"``.
            since: for a first scan (``cursor`` None) on an EVM node: the creation time of the
                oldest watched mix; the scan then starts no later than the blocks mined from
                then on (see the module). Ignored with a cursor and on other chains.

        Returns:
            The transfers (``confirmations`` at the tip read, ``tip - block + 1``; mempool ones 0;
            Jobcoin's 1 without a block), the next cursor, ``tip`` and ``scanned`` (the last
            height taken in; Jobcoin: ids).

        Raises:
            ReorgTooDeep, WatcherStopped: a reorg deeper than the policy stopped ``consumer``
                (audited, alerted); its scans fail until the operator resumes it.
            ValueError: a cursor of unknown form.
            InvalidAddress: a watched Bitcoin address of another network.
            ChainError: the node failed.
        """
        who = consumer or f"deposits:{adapter.asset}"
        if isinstance(adapter, JobcoinAdapter):
            return await self._scan_ledger(adapter, watched, cursor, who)
        watch = self.watch_of(adapter)
        reader = watch.reader
        watcher: EvmDeposits | Erc20Deposits | BitcoinDeposits
        wanted: set[str] = set()
        if isinstance(adapter, BitcoinAdapter):
            wanted = adapter.canonical_addresses(watched)
            watcher = BitcoinDeposits(adapter.network, wanted)
            prefix, slack, most = "@", BTC_FIRST_SCAN_SLACK, BTC_MAX_BLOCKS_PER_SCAN
        elif isinstance(adapter, Erc20Adapter):
            assert isinstance(reader, EvmBlocks)
            watcher = Erc20Deposits(reader, {adapter.contract: watched})
            prefix, slack, most = "@", EVM_FIRST_SCAN_SLACK, EVM_MAX_BLOCKS_PER_SCAN
        else:
            assert isinstance(reader, EvmBlocks)
            watcher = EvmDeposits(reader, watched)
            prefix, slack, most = "", EVM_FIRST_SCAN_SLACK, EVM_MAX_BLOCKS_PER_SCAN
        position = await self._position(watch, adapter, cursor, prefix, slack, since=since)
        read = await watch.advance(who, position, [watcher], max_blocks=most)
        if isinstance(watcher, Erc20Deposits):
            await watcher.settle()
        transfers = watcher.transfers(read.tip)
        if isinstance(adapter, BitcoinAdapter) and read.done:
            transfers += tuple(await self._mempool(adapter).transfers(wanted))
        next_cursor = None if read.position is None else prefix + read.position
        return ScanResult(transfers, next_cursor, tip=read.tip, scanned=read.last_height)

    def _mempool(self, adapter: BitcoinAdapter) -> BitcoinMempool:
        mempool = self._mempools.get(id(adapter.rpc))
        if mempool is None:
            mempool = self._mempools[id(adapter.rpc)] = BitcoinMempool(adapter.rpc, adapter.network)
        return mempool

    async def _position(
        self,
        watch: ChainWatch,
        adapter: ChainAdapter,
        cursor: str | None,
        prefix: str,
        slack: int,
        *,
        since: datetime | None = None,
    ) -> str | None:
        """The engine position of ``cursor`` (converting an adapter cursor or none)."""
        if cursor is not None and ":" in cursor and cursor.startswith(prefix):
            return cursor.removeprefix(prefix)
        head, _, parent = (cursor or "").partition(":")
        if cursor is None:
            start = max(0, await watch.reader.tip() - adapter.confirmations_required - slack)
            if since is not None and isinstance(watch.reader, EvmBlocks):
                first = await watch.reader.first_height_since(int(since.timestamp()) - FIRST_SCAN_CLOCK_MARGIN_SECONDS)
                start = min(start, first)
        elif head.isdigit():
            start = int(head)
        else:
            raise ValueError(f"a {adapter.asset} scan cursor of unknown form: {cursor!r}")
        below = parent or (await watch.reader.hash_at(start - 1) if start > 0 else None)
        return None if below is None else f"{start - 1}:{below}"

    async def _scan_ledger(
        self, adapter: JobcoinAdapter, watched: Sequence[str], cursor: str | None, consumer: str
    ) -> ScanResult:
        """Jobcoin's scan: the ledger's pages after the position two scans back (see the module)."""
        addresses = list(dict.fromkeys(watched))
        watch = self.watch_of(adapter)
        start, reached = _ledger_cursor(cursor)
        watcher = JobcoinDeposits(addresses)
        try:
            read = await watch.advance(
                consumer, None if start == 0 else f"{start}:{start}", [watcher], max_blocks=_ledger_ids_per_scan()
            )
        except NoHistoryCursor:
            return ScanResult(await adapter.incoming_transfers(addresses, batched=False), None)
        now = max(read.last_height, reached)
        adapter.saw_history(now)
        transfers: tuple[Transfer, ...] = await adapter.incoming_transfers(list(watcher.paid), batched=True)
        return ScanResult(transfers, f"@{reached};{now}", tip=max(read.tip, now), scanned=now)


def _ledger_ids_per_scan() -> int:
    """Ledger ids one Jobcoin scan reads at most: 20 pages of 5,000 (read when used, so a test
    can make pages small)."""
    return jobcoin.PAGE_SIZE * jobcoin.MAX_PAGES_PER_SCAN


def _ledger_cursor(cursor: str | None) -> tuple[int, int]:
    """``(read after, reached)`` of a Jobcoin cursor: ours ``"@<a>;<b>"`` or the adapter's old
    ``"<a>:<b>"``; ``(0, 0)`` (the whole history) for none or one this version cannot read."""
    if cursor is None:
        return 0, 0
    first, _, second = cursor.removeprefix("@").replace(";", ":").partition(":")
    if not (first.isascii() and first.isdigit() and second.isascii() and second.isdigit()):
        return 0, 0
    return int(first), int(second)
