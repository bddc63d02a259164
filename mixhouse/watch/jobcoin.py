"""The Jobcoin ledger as the scanning engine reads it: pages of its history as "blocks".

Jobcoin has no blocks, no hashes and no reorgs, only a history of transfers numbered by an
increasing id (our ledger's ``GET /transactions?after=<id>``; ids may skip, as a database
sequence does). :class:`LedgerPages` is a :class:`~mixhouse.watch.engine.BlockReader` over it:

* a **height** is a transfer id; the **tip** is the ledger's highest id;
* a **block** is one page of the history (up to 5,000 transfers): its height is the id of the
  page's last transfer, its ``hash`` that id in decimal (an id names its transfer for good), its
  ``parent`` the id the page was read after; ``data`` is ``{"to": [receiver of each transfer]}``.
  So :meth:`ChainWatch.advance`'s ``max_blocks`` counts ids, not pages;
* :meth:`LedgerPages.hash_at` of any id up to the tip is that id: a ledger does not reorganise,
  and a position above the tip (a ledger reset, in development) reads as orphaned and makes
  the engine re-read ``max_depth`` ids below it.

:class:`JobcoinDeposits` is the watcher: it collects the watched addresses a page pays; their
deposits are then read with :meth:`JobcoinAdapter.incoming_transfers` (refs ``"<address>#<n>"``,
positions in the address's own history, as they have always been recorded).

A ledger without the history cursor (the original Jobcoin API) cannot be read this way:
:class:`NoHistoryCursor` is raised, and the deposit scan reads every watched address instead
(:mod:`mixhouse.watch.scans`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable

from mixhouse.chains.jobcoin import adapter as jobcoin
from mixhouse.chains.jobcoin.adapter import JobcoinAdapter
from mixhouse.errors import ChainError
from mixhouse.watch.engine import Block


class NoHistoryCursor(ChainError):
    """The ledger has no history cursor (the original Jobcoin API): it has no pages to read."""


class LedgerPages:
    """:class:`~mixhouse.watch.engine.BlockReader` of a Jobcoin ledger's history (see the module).

    Args:
        adapter: the ledger's adapter (its HTTP client is used; not closed here).
        page_size: transfers per page, ``1..5000``; ``None``: :data:`~mixhouse.chains.jobcoin.adapter.PAGE_SIZE`.

    Raises:
        ValueError: ``page_size`` out of range.
    """

    chain = "JOBCOIN"
    reorgs = False  # one ledger database: nothing it listed is taken back
    # No block cache (engine.BlockCache): the deposit scan is a ledger's one consumer, and its
    # second read of a page (the two-scan cursor of mixhouse.watch.scans) must reach the ledger,
    # not a copy of the first read.
    cache_blocks = 0

    def __init__(self, adapter: JobcoinAdapter, *, page_size: int | None = None) -> None:
        if page_size is not None and not 1 <= page_size <= jobcoin.PAGE_SIZE:
            raise ValueError(f"page_size must be in 1..{jobcoin.PAGE_SIZE}")
        self.adapter = adapter
        self._page_size = page_size
        self._known = 0  # an id the ledger has (0: none known yet)
        # The page tip() read, ``(after, page)``: the first page blocks() asks is usually it.
        self._first: tuple[int, list[tuple[int, str]]] | None = None

    async def tip(self) -> int:
        """The highest transfer id (0 on an empty ledger): the page after the highest id known,
        and only if that page is full the search for the last id (one-item pages, about
        ``2 log2(distance)`` requests).

        Raises:
            NoHistoryCursor: the ledger has no history cursor.
            ChainError: the API failed.
        """
        size = self._page_size or jobcoin.PAGE_SIZE
        page = (
            None if self.adapter.history_cursor is False else await self.adapter.history_page(self._known, limit=size)
        )
        if page is None:
            raise NoHistoryCursor("the Jobcoin ledger has no history cursor (GET /transactions?after=)")
        self._first = (self._known, page)
        if page:
            last = page[-1][0]
            self._known = last if len(page) < size else await self.adapter.last_history_id(last)
        return self._known

    async def hash_at(self, height: int) -> str | None:
        """``str(height)`` up to the tip, ``None`` above it (see the module). Raises ChainError."""
        if height <= self._known:
            return str(height)
        return str(height) if height <= await self.tip() else None

    async def blocks(self, start: int, end: int) -> AsyncGenerator[Block | None, None]:
        """The pages of ids ``start..end``, in order (none for a stretch without transfers).

        Raises:
            NoHistoryCursor: the ledger has no history cursor.
            ChainError: the API failed or sent a page out of id order.
        """
        after = start - 1
        size = self._page_size or jobcoin.PAGE_SIZE
        while after < end:
            first, self._first = self._first, None
            if first is not None and first[0] == max(after, 0):
                page: list[tuple[int, str]] | None = first[1]
            else:
                page = await self.adapter.history_page(max(after, 0), limit=size)
            if page is None:
                raise NoHistoryCursor("the Jobcoin ledger has no history cursor (GET /transactions?after=)")
            within = [(i, to) for i, to in page if i <= end]
            if not within:
                return
            last = within[-1][0]
            yield Block(last, str(last), None if after < 0 else str(after), {"to": [to for _, to in within]})
            self.adapter.saw_history(last)
            if len(page) < size:
                return  # a short page: nothing after it
            after = last


class JobcoinDeposits:
    """:class:`~mixhouse.watch.engine.Watcher` of the watched addresses a ledger page pays.

    Args:
        watched: the deposit addresses (exact names: Jobcoin addresses are compared as they are).

    Attributes:
        paid: the watched addresses paid in the pages taken in, in first-paid order.
    """

    def __init__(self, watched: Iterable[str]) -> None:
        self._wanted = set(watched)
        self.paid: dict[str, None] = {}

    async def on_block(self, block: Block) -> None:
        """Note the watched receivers of the page ``block``."""
        for to_address in block.data["to"]:
            if to_address in self._wanted:
                self.paid.setdefault(to_address)
