"""The core of the local Jobcoin ledger: balances and transfers in PostgreSQL.

A development chain: coins appear by :func:`mint` and move by :func:`transfer`; a transfer
is final as soon as its transaction commits. Amounts are ``int`` base units
(1 jobcoin = 10**8). Writers own their transaction (they take the engine); readers take an
``AsyncConnection`` and never commit.

Amounts on the wire (:func:`parse_wire_amount`): the ledger keeps 8 decimals (base units of
1e-8 jobcoin, stored as integers). An amount given with more precision is **rounded down**
to 8 decimals, exactly (integer arithmetic, no float), and what was moved is what the
history shows. Rounding down never moves more than a client asked for, so a sender that
splits its balance into parts computed with floats (``16.666666666666668``) can always pay
every part: the sum of the rounded parts never exceeds the sum of the parts. The sub-unit
remainder stays with the sender, visible in its balance, and every coin stays accounted for
to the base unit (the sum of balances is the sum of mints). Refusing such amounts instead
strands coins in the books of clients that send floats and do not handle the refusal.

Ordering guarantee the adapter relies on: transfers *into* one address become visible in
``id`` order. Jobcoin deposit refs are positions ("the n-th incoming transfer of X"), so a
reader must never see transfer 7 into X before transfer 6 into X has committed, or the
positions would shift under it. Each writer therefore takes the receiver's balance row
lock *before* it allocates the transfer id, and holds it until commit.

Reading the history since a cursor (:func:`transfers_after`) needs more: that no transfer with
an id at or below the highest id returned can still commit later, across *all* addresses (ids
are allocated before commit, so a plain ``id > cursor`` read could skip a slow writer's row).
Each writer holds a shared transaction-level advisory lock (:data:`WRITERS_LOCK`) from before it
allocates its id until it commits; the cursor reader takes the same lock exclusively, which waits
for the writers in flight to finish (new ones queue behind it), and reads while holding it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Row, or_, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse.db.tables import ledger_balances, ledger_transfers
from mixhouse.errors import InsufficientFunds, InvalidAddress, InvalidAmount, InvalidInput
from mixhouse.money import MAX_BASE_UNITS

MAX_ADDRESS_LENGTH = 128
DECIMALS = 8  # base units per jobcoin as a power of ten
# Longer than any amount a client computes (the exact expansion of a float has at most a few
# hundred digits) and short enough that parsing stays cheap.
MAX_AMOUNT_DIGITS = 800
# A plain or exponent-form decimal without sign, ASCII digits only (Decimal would also take
# "1_000", "١" and " 1 ").
# The advisory lock writers share and the cursor reader takes alone ("jcledger" in ASCII).
WRITERS_LOCK = 0x6A636C6564676572
_WRITERS_SHARED = text("SELECT pg_advisory_xact_lock_shared(:k)").bindparams(k=WRITERS_LOCK)
_WRITERS_EXCLUSIVE = text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=WRITERS_LOCK)
MAX_PAGE = 10_000
# A long poll (:func:`wait_for_transfer`) looks for a new transfer this often, seconds, and waits
# at most MAX_WAIT_MS.
WAIT_POLL_SECONDS = 0.02
MAX_WAIT_MS = 30_000
# Answer header of a long poll (``wait_ms``): milliseconds the ledger waited for a transfer.
WAITED_HEADER = "X-Jobcoin-Waited"
_ANY_AFTER_SQL = text("SELECT EXISTS (SELECT 1 FROM ledger_transfers WHERE id > :after)")
_TRANSFER_MANY_SQL = text(
    """
    SELECT t.transfer_id, t.available
    FROM unnest(CAST(:froms AS text[]), CAST(:tos AS text[]), CAST(:amounts AS numeric[]))
         WITH ORDINALITY AS i(from_address, to_address, amount, n)
    CROSS JOIN LATERAL ledger_transfer(i.from_address, i.to_address, i.amount, :lock) AS t
    ORDER BY i.n
    """
)
_TRANSFER_SQL = text("SELECT transfer_id, available FROM ledger_transfer(:from_, :to, CAST(:amount AS numeric), :lock)")
_AMOUNT_TEXT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class LedgerTransfer:
    """One row of the ledger history.

    Attributes:
        id: position in the whole ledger (ascending = older first).
        created_at: when it was recorded (timezone-aware, UTC from the database).
        from_address: the sender, ``None`` for minted coins.
        to_address: the receiver.
        amount: base units moved, ``> 0``.
    """

    id: int
    created_at: datetime
    from_address: str | None
    to_address: str
    amount: int


def validate_address(text: str) -> str:
    """Check a Jobcoin address and return it unchanged.

    A Jobcoin address is any name: non-empty, at most 128 characters, all printable
    (:meth:`str.isprintable`), with no leading or trailing whitespace. Nothing is stripped:
    ``" Alice"`` is refused rather than silently read as ``"Alice"``, since it would name a
    different account.

    Raises:
        InvalidAddress: the text breaks one of those rules (or is not a ``str``).
    """
    if not isinstance(text, str):
        raise InvalidAddress("an address must be a string")
    if not text:
        raise InvalidAddress("the address is empty")
    if len(text) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"the address is longer than {MAX_ADDRESS_LENGTH} characters")
    if not text.isprintable():
        raise InvalidAddress("the address contains non-printable characters")
    if text != text.strip():
        raise InvalidAddress("the address has leading or trailing whitespace")
    return text


def parse_wire_amount(value: object, decimals: int = DECIMALS) -> int:
    """A client's amount in whole jobcoins as base units, rounded down to ``decimals``.

    Args:
        value: a decimal string (``"49.5"``, ``"4.2090000000000005"``, ``"1E-7"``), a JSON
            number as parsed with ``parse_float=Decimal`` (``37``, ``Decimal("49.5")``), or
            anything else (refused).
        decimals: the ledger's precision, 8.

    Returns:
        Base units, ``1..MAX_BASE_UNITS``: ``value * 10**decimals`` rounded toward zero
        (see the module docstring for why down).

    Raises:
        InvalidAmount: not a string or number (``true``, ``null``, a list); a string with a
            sign, spaces, ``NaN``, ``Infinity``, ``_`` or anything but ``digits[.digits][e±n]``;
            more than :data:`MAX_AMOUNT_DIGITS` characters; zero or negative; below one base
            unit (it rounds down to zero); larger than ``MAX_BASE_UNITS`` base units.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidAmount('amount must be a decimal string such as "49.5" or a JSON number')
    if isinstance(value, str):
        if len(value) > MAX_AMOUNT_DIGITS or not _AMOUNT_TEXT.fullmatch(value):
            raise InvalidAmount(f"amount {value[:40]!r} is not a plain positive decimal number")
        try:
            number = Decimal(value)
        except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
            raise InvalidAmount(f"amount {value[:40]!r} is not a number") from exc
    else:
        number = Decimal(value)
    shown = value[:40] if isinstance(value, str) else str(number)[:40]
    if not number.is_finite():
        raise InvalidAmount(f"amount {shown!r} is not a number")
    if number <= 0:
        raise InvalidAmount(f"amount {shown!r} must be greater than zero")
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite
    if len(digits) > MAX_AMOUNT_DIGITS:
        raise InvalidAmount(f"amount {shown!r} has more than {MAX_AMOUNT_DIGITS} digits")
    # adjusted() is the power of ten of the leading digit: bounds checked before any big power.
    if number.adjusted() >= len(str(MAX_BASE_UNITS)) - decimals:
        raise InvalidAmount(f"amount {shown!r} is too large")
    if number.adjusted() < -decimals:
        raise InvalidAmount(f"amount {shown!r} is smaller than one base unit (the ledger keeps {decimals} decimals)")
    coefficient = int("".join(map(str, digits)))
    shift = exponent + decimals
    base_units: int = coefficient * 10**shift if shift >= 0 else coefficient // 10**-shift
    if base_units > MAX_BASE_UNITS:
        raise InvalidAmount(f"amount {shown!r} is too large")
    return base_units


def _check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidAmount(f"amounts are int base units, got {type(amount).__name__}")
    if amount <= 0:
        raise InvalidAmount("the amount must be greater than zero")
    if amount > MAX_BASE_UNITS:
        raise InvalidAmount("the amount is too large")


async def _credit(conn: AsyncConnection, address: str, amount: int) -> None:
    """Add ``amount`` to ``address``, creating its balance row if needed.

    On a new address a concurrent writer to the same address blocks here on our uncommitted
    insert, before it allocates its transfer id: that keeps the ordering guarantee above.
    """
    stmt = pg_insert(ledger_balances).values(address=address, balance=amount)
    stmt = stmt.on_conflict_do_update(
        index_elements=[ledger_balances.c.address],
        set_={"balance": ledger_balances.c.balance + stmt.excluded.balance},
    )
    await conn.execute(stmt)


async def mint(engine: AsyncEngine, address: str, amount: int) -> None:
    """Create ``amount`` base units out of nothing at ``address`` (one transaction).

    Recorded as a transfer without sender.

    Raises:
        InvalidAddress: ``address`` is not a valid Jobcoin address.
        InvalidAmount: ``amount`` is not an ``int`` in ``1..MAX_BASE_UNITS``.
    """
    validate_address(address)
    _check_amount(amount)
    async with engine.begin() as conn:
        await conn.execute(_WRITERS_SHARED)
        await _credit(conn, address, amount)
        await conn.execute(ledger_transfers.insert().values(from_address=None, to_address=address, amount=amount))


def check_transfer(from_address: str, to_address: str, amount: int) -> tuple[str, str, int]:
    """``(from, to, amount)`` if :func:`transfer` would accept them (funds aside).

    Raises:
        InvalidAddress: either address is not a valid Jobcoin address.
        InvalidInput: ``from_address == to_address``.
        InvalidAmount: ``amount`` is not an ``int`` in ``1..MAX_BASE_UNITS``.
    """
    validate_address(from_address)
    validate_address(to_address)
    if from_address == to_address:
        raise InvalidInput("the sender and the receiver are the same address")
    _check_amount(amount)
    return from_address, to_address, amount


async def transfer(engine: AsyncEngine, from_address: str, to_address: str, amount: int) -> None:
    """Move ``amount`` base units from one address to another, atomically (one transaction).

    Both balance rows that exist are locked ``FOR UPDATE`` in address order, so that two
    opposite transfers (A->B, B->A) cannot deadlock and two sends from one address cannot
    both spend the same coins.

    Raises:
        InvalidAddress: either address is not a valid Jobcoin address.
        InvalidInput: ``from_address == to_address`` (a send to oneself is refused: it
            would only add noise to the history and confuse position-based refs).
        InvalidAmount: ``amount`` is not an ``int`` in ``1..MAX_BASE_UNITS``.
        InsufficientFunds: the sender's balance is below ``amount``; nothing changed.
    """
    check_transfer(from_address, to_address, amount)
    # One statement in autocommit (``ledger_transfer``, migration 0008, does the steps in the
    # order this module documents): the balance row locks are held for the statement only, not
    # across round trips, so transfers out of one busy address do not queue on the network.
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as conn:
        moved = (
            await conn.execute(
                _TRANSFER_SQL, {"from_": from_address, "to": to_address, "amount": amount, "lock": WRITERS_LOCK}
            )
        ).one()
    if moved.transfer_id is None:
        raise InsufficientFunds(f"{from_address!r} holds {moved.available} base units, {amount} are needed")


async def transfer_many(engine: AsyncEngine, items: list[tuple[str, str, int]]) -> list[bool]:
    """Move each ``(from, to, amount)`` as :func:`transfer` would, in order, in one statement
    (one transaction: a crash moves all or none). Items must be valid (checked by the caller
    with :func:`validate_address` and the amount rules); a sender too poor for one item only
    fails that item.

    Raises:
        InvalidAddress, InvalidInput, InvalidAmount: an item :func:`check_transfer` refuses
            (nothing moved).

    Returns:
        Per item, whether it moved (``False``: insufficient funds, nothing moved).
    """
    if not items:
        return []
    for item in items:
        check_transfer(*item)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as conn:
        rows = (
            await conn.execute(
                _TRANSFER_MANY_SQL,
                {
                    "froms": [f for f, _, _ in items],
                    "tos": [t for _, t, _ in items],
                    "amounts": [a for _, _, a in items],
                    "lock": WRITERS_LOCK,
                },
            )
        ).all()
    if len(rows) != len(items):  # pragma: no cover - the function returns one row per call
        raise RuntimeError("ledger_transfer returned no row for an item")
    return [row.transfer_id is not None for row in rows]


def _to_transfer(row: Row[Any]) -> LedgerTransfer:
    return LedgerTransfer(
        id=row.id,
        created_at=row.created_at,
        from_address=row.from_address,
        to_address=row.to_address,
        amount=row.amount,
    )


async def address_info(conn: AsyncConnection, address: str) -> tuple[int, list[LedgerTransfer]]:
    """The balance of ``address`` and every transfer it sent or received, oldest first.

    An address never used has balance ``0`` and no transfers. For a consistent pair, run it
    in a ``REPEATABLE READ`` transaction (two statements are issued).

    Returns:
        ``(balance in base units, transfers in id order)``.

    Raises:
        InvalidAddress: ``address`` is not a valid Jobcoin address.
    """
    validate_address(address)
    balance = await conn.scalar(select(ledger_balances.c.balance).where(ledger_balances.c.address == address))
    rows = await conn.execute(
        select(ledger_transfers)
        .where(or_(ledger_transfers.c.from_address == address, ledger_transfers.c.to_address == address))
        .order_by(ledger_transfers.c.id)
    )
    return (balance or 0, [_to_transfer(row) for row in rows])


async def incoming_of(conn: AsyncConnection, addresses: list[str]) -> dict[str, list[LedgerTransfer]]:
    """Every transfer received by each of ``addresses``, oldest first, read in one statement
    (one snapshot): ``{address: transfers}``, an address that received nothing with ``[]``.

    The n-th item of an address's list is its n-th incoming transfer, as in its full history
    (transfers into one address become visible in id order: see the module doc).

    Raises:
        InvalidAddress: an address is not a valid Jobcoin address.
    """
    wanted = [validate_address(a) for a in dict.fromkeys(addresses)]
    out: dict[str, list[LedgerTransfer]] = {a: [] for a in wanted}
    if wanted:
        rows = await conn.execute(
            select(ledger_transfers).where(ledger_transfers.c.to_address.in_(wanted)).order_by(ledger_transfers.c.id)
        )
        for row in rows:
            out[row.to_address].append(_to_transfer(row))
    return out


async def all_transfers(conn: AsyncConnection) -> list[LedgerTransfer]:
    """Every transfer in the ledger, oldest first (id order)."""
    rows = await conn.execute(select(ledger_transfers).order_by(ledger_transfers.c.id))
    return [_to_transfer(row) for row in rows]


async def transfers_after(engine: AsyncEngine, after: int, limit: int) -> list[LedgerTransfer]:
    """Up to ``limit`` transfers with an id above ``after``, oldest first, such that no transfer
    with a smaller id than the last one returned can ever appear later (see the module doc).

    Writers wait while this runs (one indexed range read), so it is cheap for them.

    Raises:
        ValueError: ``after`` is negative or ``limit`` is outside ``1..MAX_PAGE``.
    """
    if after < 0 or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"bad page: after={after}, limit={limit}")
    async with engine.begin() as conn:
        await conn.execute(_WRITERS_EXCLUSIVE)
        # READ COMMITTED: this statement's snapshot is taken after the lock is granted, when no
        # writer holds an allocated but uncommitted id.
        rows = await conn.execute(
            select(ledger_transfers).where(ledger_transfers.c.id > after).order_by(ledger_transfers.c.id).limit(limit)
        )
        return [_to_transfer(row) for row in rows]


async def wait_for_transfer(engine: AsyncEngine, after: int, wait_seconds: float) -> bool:
    """Wait until a transfer with an id above ``after`` has committed, at most ``wait_seconds``;
    returns whether one has. A cheap indexed probe every :data:`WAIT_POLL_SECONDS` (no lock:
    writers are never held up), so it also sees transfers written straight into the database by
    other processes, not only through this ledger's HTTP API. The caller reads the page itself
    with :func:`transfers_after`, whose ordering guarantee this does not replace.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, wait_seconds)
    async with engine.connect() as conn:
        while True:
            found = bool((await conn.execute(_ANY_AFTER_SQL, {"after": after})).scalar_one())
            await conn.rollback()  # a fresh snapshot for the next probe
            if found:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(WAIT_POLL_SECONDS, left))
