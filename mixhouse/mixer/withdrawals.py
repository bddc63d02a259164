"""The rules a mix's withdrawal addresses must follow, shared by the API and the mix page.

:func:`check_withdrawals` gives every problem of a list of addresses, each tied to the
address it is about, so that the page can show the API's own message next to the field as the
user types; :func:`normalize_withdrawals` raises the first of them, which is what
``POST /api/v1/mixes`` answers (through :func:`mixhouse.mixer.mixes.create_mix`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.chains.base import ChainAdapter
from mixhouse.db.tables import mixes
from mixhouse.errors import InvalidAddress, InvalidInput

NOT_DISTINCT = "withdrawal addresses must be distinct"
IS_POOL = "a withdrawal address cannot be the pool address"
IS_DEPOSIT = "a withdrawal address cannot be a deposit address of this service"


def count_message(max_addresses: int) -> str:
    """The message for a list of addresses that is empty or longer than ``max_addresses``."""
    return f"give between 1 and {max_addresses} withdrawal addresses"


@dataclass(frozen=True, slots=True)
class AddressProblem:
    """One refused withdrawal address.

    Attributes:
        index: its position in the list (0-based).
        message: the API's message (the ``detail`` of its 422 problem).
        invalid: ``True`` when the address itself is malformed for the chain (these are
            reported before duplicates and ours, as the API does).
    """

    index: int
    message: str
    invalid: bool


@dataclass(frozen=True, slots=True)
class WithdrawalCheck:
    """What :func:`check_withdrawals` found.

    Attributes:
        normalized: each address in its canonical form (EIP-55 on Ethereum), or ``None``
            where it is malformed.
        problems: the refused addresses, in list order.
        count_error: the count message when the list is empty or too long, else ``None``.
    """

    normalized: list[str | None]
    problems: list[AddressProblem]
    count_error: str | None

    def first_error(self) -> InvalidInput | None:
        """The error the API raises for this list, or ``None`` when it passes.

        Precedence (the API's since its first version): the count, then the first malformed
        address, then duplicates, then the pool address, then a deposit address.
        """
        if self.count_error is not None:
            return InvalidInput(self.count_error)
        for problem in self.problems:
            if problem.invalid:
                return InvalidAddress(problem.message)
        messages = {p.message for p in self.problems}
        if NOT_DISTINCT in messages:
            return InvalidInput(NOT_DISTINCT)
        for message in (IS_POOL, IS_DEPOSIT):
            if message in messages:
                return InvalidAddress(message)
        return None


def check_withdrawals(
    adapter: ChainAdapter,
    addresses: Sequence[str],
    *,
    max_addresses: int,
    deposit_addresses: Iterable[str] = (),
) -> WithdrawalCheck:
    """Check ``addresses`` for ``adapter``'s chain without raising.

    Args:
        adapter: the chain's adapter (its ``normalize_address`` and pool address).
        addresses: what the user typed, in order.
        max_addresses: ``settings.max_withdrawal_addresses``.
        deposit_addresses: those of ``addresses`` (canonical form) that are deposit
            addresses of this service (see :func:`ours`).
    """
    ours_lower = {a.lower() for a in deposit_addresses}
    normalized: list[str | None] = []
    problems: list[AddressProblem] = []
    seen: set[str] = set()
    pool = adapter.pool_address.lower()
    for index, text in enumerate(addresses):
        try:
            canonical = adapter.normalize_address(text)
        except InvalidAddress as exc:
            normalized.append(None)
            problems.append(AddressProblem(index, str(exc), invalid=True))
            continue
        normalized.append(canonical)
        lowered = canonical.lower()
        if lowered in seen:
            problems.append(AddressProblem(index, NOT_DISTINCT, invalid=False))
        elif lowered == pool:
            problems.append(AddressProblem(index, IS_POOL, invalid=False))
        elif lowered in ours_lower:
            problems.append(AddressProblem(index, IS_DEPOSIT, invalid=False))
        seen.add(lowered)
    count_error = None if 1 <= len(addresses) <= max_addresses else count_message(max_addresses)
    return WithdrawalCheck(normalized, problems, count_error)


async def ours(conn: AsyncConnection, asset: str, addresses: Iterable[str]) -> set[str]:
    """Those of ``addresses`` (canonical form) that are deposit addresses of a mix of ``asset``."""
    wanted = list(addresses)
    if not wanted:
        return set()
    rows = await conn.execute(
        select(mixes.c.deposit_address).where(mixes.c.asset == asset, mixes.c.deposit_address.in_(wanted))
    )
    return {str(r[0]) for r in rows}
