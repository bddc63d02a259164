"""Users, API keys, wallets and address imports (each function is its own transaction).

An API key is ``mh_`` + ``secrets.token_urlsafe(32)``; only its SHA-256 is stored, so the
plaintext is returned once, by :func:`create_api_key`, and never again.

Addresses are stored in canonical form per chain (see :func:`normalize_wallet_address`) so that
the same address imported twice, or reported by a history source, is one row.

Watch-only Bitcoin key sets (xpubs and one-key output descriptors, parsed by
:mod:`mixhouse.wallets.xpubs`) derive their addresses into the same table, tagged with the key
(``xpub_id``), the branch (0 receive, 1 change) and the index. The *gap limit* (BIP-44's
address gap limit, 20 by default) is kept per branch: there are always ``gap_limit`` derived
addresses after the last one with any history (:func:`extend_gap`, run by every wallet sync).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from eth_utils.address import is_checksum_address, to_checksum_address
from sqlalchemy import and_, exists, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse.chains.bitcoin.networks import normalize_address as normalize_bitcoin_address
from mixhouse.db.tables import (
    address_balances,
    address_txs,
    api_keys,
    users,
    wallet_addresses,
    wallet_xpubs,
    wallets,
)
from mixhouse.errors import InvalidAddress, InvalidInput, NotFound
from mixhouse.wallets import xpubs

log = structlog.get_logger(__name__)

CHAINS = ("BTC", "ETH", "JOBCOIN")
KEY_PREFIX = "mh_"
MAX_JOBCOIN_ADDRESS = 128
MAX_NAME = 128
DEFAULT_GAP_LIMIT = 20  # BIP-44's address gap limit
MAX_GAP_LIMIT = 1000

_ETH_RE = re.compile(r"0x[0-9a-fA-F]{40}")


class AlreadyExists(InvalidInput):
    """A user or wallet with that name already exists (the API answers 409)."""


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated user.

    Attributes:
        id: ``users.id``.
        name: unique user name.
        is_admin: admins see every user's wallets.
    """

    id: int
    name: str
    is_admin: bool


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What :func:`import_addresses` did.

    Attributes:
        added: canonical addresses newly added to the wallet, in request order.
        already_present: canonical addresses the wallet already had (or repeated in the request).
    """

    added: list[str]
    already_present: list[str]


def hash_key(key: str) -> bytes:
    """SHA-256 of the key's UTF-8 bytes (32 bytes), as stored in ``api_keys.key_hash``."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def check_name(name: str, what: str) -> str:
    """``name`` stripped, if it is 1..128 printable characters.

    Raises:
        InvalidInput: empty, too long, or with control characters.
    """
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME or not cleaned.isprintable():
        raise InvalidInput(f"a {what} name is 1 to {MAX_NAME} printable characters")
    return cleaned


async def create_user(engine: AsyncEngine, name: str, *, is_admin: bool = False) -> User:
    """Create a user.

    Raises:
        InvalidInput: a bad name.
        AlreadyExists: the name is taken.
    """
    name = check_name(name, "user")
    try:
        async with engine.begin() as conn:
            stmt = users.insert().values(name=name, is_admin=is_admin)
            row = (await conn.execute(stmt.returning(users.c.id, users.c.name, users.c.is_admin))).one()
    except IntegrityError as exc:
        raise AlreadyExists(f"a user named {name!r} already exists") from exc
    return User(id=int(row.id), name=str(row.name), is_admin=bool(row.is_admin))


async def get_user_by_name(engine: AsyncEngine, name: str) -> User:
    """The user named ``name``.

    Raises:
        NotFound: no such user.
    """
    async with engine.connect() as conn:
        row = (await conn.execute(select(users).where(users.c.name == name))).first()
    if row is None:
        raise NotFound(f"no user named {name!r}")
    return User(id=int(row.id), name=str(row.name), is_admin=bool(row.is_admin))


async def create_api_key(engine: AsyncEngine, user_id: int, *, label: str | None = None) -> tuple[int, str]:
    """Issue a key for ``user_id``.

    Returns:
        ``(key id, plaintext key)``; the plaintext (``mh_`` + 43 URL-safe characters) is not
        stored and cannot be shown again.

    Raises:
        NotFound: no such user.
    """
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        if (await conn.execute(select(users.c.id).where(users.c.id == user_id))).first() is None:
            raise NotFound(f"no user with id {user_id}")
        key_id = (
            await conn.execute(
                api_keys.insert().values(user_id=user_id, key_hash=hash_key(key), label=label).returning(api_keys.c.id)
            )
        ).scalar_one()
    return int(key_id), key


async def revoke_api_key(engine: AsyncEngine, key_id: int) -> None:
    """Revoke a key (idempotent): it no longer authenticates.

    Raises:
        NotFound: no such key.
    """
    async with engine.begin() as conn:
        result = await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(revoked_at=func.coalesce(api_keys.c.revoked_at, func.now()))
            .returning(api_keys.c.id)
        )
        if result.first() is None:
            raise NotFound(f"no API key with id {key_id}")


async def authenticate(engine: AsyncEngine, key: str) -> User | None:
    """The user owning the unrevoked key ``key``, or ``None``.

    The key is looked up by its SHA-256 (the plaintext is never stored or compared), so the
    lookup time does not depend on how much of a guess matches.
    """
    if not key.startswith(KEY_PREFIX) or len(key) > 256:
        return None
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(users.c.id, users.c.name, users.c.is_admin)
                .join(api_keys, api_keys.c.user_id == users.c.id)
                .where(api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None))
            )
        ).first()
    if row is None:
        return None
    return User(id=int(row.id), name=str(row.name), is_admin=bool(row.is_admin))


# -- wallets ---------------------------------------------------------------------------------


async def create_wallet(engine: AsyncEngine, user_id: int, name: str) -> dict[str, Any]:
    """Create an empty wallet for ``user_id``.

    Returns:
        The ``wallets`` row (``id``, ``user_id``, ``name``, ``created_at``).

    Raises:
        InvalidInput: a bad name.
        AlreadyExists: the user already has a wallet of that name.
    """
    name = check_name(name, "wallet")
    try:
        async with engine.begin() as conn:
            row = (await conn.execute(wallets.insert().values(user_id=user_id, name=name).returning(wallets))).one()
    except IntegrityError as exc:
        raise AlreadyExists(f"you already have a wallet named {name!r}") from exc
    return dict(row._mapping)


async def get_wallet(engine: AsyncEngine, wallet_id: int, user: User) -> dict[str, Any]:
    """The wallet ``wallet_id`` if ``user`` may see it (its owner, or an admin).

    Raises:
        NotFound: no such wallet, or another user's (indistinguishable on purpose).
    """
    stmt = select(wallets).where(wallets.c.id == wallet_id)
    if not user.is_admin:
        stmt = stmt.where(wallets.c.user_id == user.id)
    async with engine.connect() as conn:
        row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"no wallet {wallet_id}")
    return dict(row._mapping)


def normalize_wallet_address(chain: str, address: str, *, bitcoin_network: str) -> str:
    """The canonical form of ``address`` on ``chain``.

    * ``BTC``: :func:`mixhouse.chains.bitcoin.networks.normalize_address` on ``bitcoin_network``
      (bech32 lower-cased; another network's address is refused).
    * ``ETH``: ``0x`` + 40 hex digits with a valid EIP-55 checksum, or without one (all
      lower- or all upper-case hex); returned checksummed.
    * ``JOBCOIN``: 1..128 printable characters, as given.

    Raises:
        InvalidAddress: the address is not valid on ``chain`` (the message names it).
        InvalidInput: an unknown chain.
    """
    if chain == "BTC":
        try:
            return normalize_bitcoin_address(address, bitcoin_network)
        except InvalidAddress as exc:
            raise InvalidAddress(f"{address!r} is not a valid {bitcoin_network} Bitcoin address: {exc}") from exc
    if chain == "ETH":
        if not _ETH_RE.fullmatch(address):
            raise InvalidAddress(f"{address!r} is not an Ethereum address (0x followed by 40 hexadecimal digits)")
        body = address[2:]
        if body not in {body.lower(), body.upper()} and not is_checksum_address(address):
            raise InvalidAddress(f"{address!r} has a bad EIP-55 checksum (mistyped?)")
        return str(to_checksum_address(address))
    if chain == "JOBCOIN":
        if not address or len(address) > MAX_JOBCOIN_ADDRESS or not address.isprintable():
            raise InvalidAddress(f"{address!r} is not a Jobcoin address (1 to 128 printable characters)")
        return address
    raise InvalidInput(f"unknown chain {chain!r}: use one of {', '.join(CHAINS)}")


async def import_addresses(
    engine: AsyncEngine, wallet_id: int, chain: str, addresses: Sequence[str], *, bitcoin_network: str
) -> ImportResult:
    """Add addresses of ``chain`` to a wallet, all or nothing, with status ``pending``.

    Every address is validated (:func:`normalize_wallet_address`) before anything is
    written: one bad address fails the whole import. Addresses already in the wallet, and
    repeats within ``addresses``, are ignored. The caller checks the wallet is the user's.

    Raises:
        InvalidAddress: an address is invalid (the message names it); nothing was imported.
        InvalidInput: an unknown chain.
        NotFound: no such wallet.
    """
    canonical = [normalize_wallet_address(chain, a, bitcoin_network=bitcoin_network) for a in addresses]
    unique = list(dict.fromkeys(canonical))
    async with engine.begin() as conn:
        if (await conn.execute(select(wallets.c.id).where(wallets.c.id == wallet_id))).first() is None:
            raise NotFound(f"no wallet {wallet_id}")
        added: set[str] = set()
        if unique:
            stmt = (
                pg_insert(wallet_addresses)
                .values([{"wallet_id": wallet_id, "chain": chain, "address": a, "status": "pending"} for a in unique])
                .on_conflict_do_nothing(constraint="uq_wallet_addresses")
                .returning(wallet_addresses.c.address)
            )
            added = {str(r.address) for r in (await conn.execute(stmt)).all()}
    return ImportResult(
        added=[a for a in unique if a in added],
        already_present=[a for a in unique if a not in added],
    )


async def list_wallets(engine: AsyncEngine, user: User) -> list[dict[str, Any]]:
    """The wallets ``user`` may see (all of them for an admin), oldest first, each with
    ``address_count``."""
    count = (
        select(func.count())
        .select_from(wallet_addresses)
        .where(wallet_addresses.c.wallet_id == wallets.c.id)
        .scalar_subquery()
    )
    stmt = select(wallets, count.label("address_count")).order_by(wallets.c.id)
    if not user.is_admin:
        stmt = stmt.where(wallets.c.user_id == user.id)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(stmt)).all()]


async def list_wallet_addresses(engine: AsyncEngine, wallet_id: int) -> list[dict[str, Any]]:
    """The wallet's addresses (oldest import first) with their sync state and balances.

    Returns:
        ``wallet_addresses`` rows, each with ``balances``: ``{asset: (confirmed,
        unconfirmed)}`` in base units from ``address_balances`` (empty before the first sync).
    """
    async with engine.connect() as conn:
        stmt = select(wallet_addresses).where(wallet_addresses.c.wallet_id == wallet_id)
        rows = [dict(r._mapping) for r in (await conn.execute(stmt.order_by(wallet_addresses.c.id))).all()]
        balances: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
        if rows:
            keys = list({(r["chain"], r["address"]) for r in rows})
            found = await conn.execute(
                select(address_balances).where(tuple_(address_balances.c.chain, address_balances.c.address).in_(keys))
            )
            for b in found.all():
                balances.setdefault((b.chain, b.address), {})[b.asset] = (int(b.confirmed), int(b.unconfirmed))
    for row in rows:
        row["balances"] = balances.get((row["chain"], row["address"]), {})
    return rows


# -- watch-only extended keys (xpubs) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DerivedAddress:
    """An address of a wallet derived from one of its xpubs: ``KEY/branch/index``.

    Attributes:
        xpub_id: ``wallet_xpubs.id``.
        branch: 0 receive, 1 change.
        index: the unhardened BIP-32 index on that branch.
        address: canonical Bitcoin address.
    """

    xpub_id: int
    branch: int
    index: int
    address: str


@dataclass(frozen=True, slots=True)
class XpubImport:
    """What :func:`import_xpub` stored (or found already stored).

    Attributes:
        id, wallet_id, descriptor, script_type, gap_limit, created_at: the ``wallet_xpubs`` row;
            ``descriptor`` is the canonical one (``<type>([origin]xpub/<0;1>/*)#checksum``).
        created: ``False`` when the wallet already had this key set (nothing was written).
        addresses: every address derived from it so far, by branch then index.
    """

    id: int
    wallet_id: int
    descriptor: str
    script_type: xpubs.ScriptType
    gap_limit: int
    created_at: datetime
    created: bool
    addresses: list[DerivedAddress]


def _check_gap_limit(gap_limit: int) -> None:
    if isinstance(gap_limit, bool) or not isinstance(gap_limit, int) or not 1 <= gap_limit <= MAX_GAP_LIMIT:
        raise InvalidInput(f"the gap limit is a whole number from 1 to {MAX_GAP_LIMIT} (20 is usual)")


async def _store_derived(
    conn: AsyncConnection, wallet_id: int, xpub_id: int, rows: Sequence[tuple[int, int, str]]
) -> list[DerivedAddress]:
    """Insert ``(branch, index, address)`` rows of an xpub as ``pending`` wallet addresses.

    An address the wallet already has *by hand* (no ``xpub_id``) is attached to the xpub
    instead, keeping its sync state; one already derived from an xpub is left alone.

    Returns:
        The addresses inserted or attached.
    """
    if not rows:
        return []
    stmt = pg_insert(wallet_addresses).values(
        [
            {
                "wallet_id": wallet_id,
                "chain": "BTC",
                "address": address,
                "status": "pending",
                "xpub_id": xpub_id,
                "branch": branch,
                "derivation_index": index,
            }
            for branch, index, address in rows
        ]
    )
    upsert = stmt.on_conflict_do_update(
        constraint="uq_wallet_addresses",
        set_={
            "xpub_id": stmt.excluded.xpub_id,
            "branch": stmt.excluded.branch,
            "derivation_index": stmt.excluded.derivation_index,
        },
        where=wallet_addresses.c.xpub_id.is_(None),
    ).returning(wallet_addresses.c.branch, wallet_addresses.c.derivation_index, wallet_addresses.c.address)
    stored = [
        DerivedAddress(xpub_id, int(r.branch), int(r.derivation_index), str(r.address))
        for r in await conn.execute(upsert)
    ]
    return sorted(stored, key=lambda a: (a.branch, a.index))


async def _xpub_addresses(conn: AsyncConnection, xpub_id: int) -> list[DerivedAddress]:
    stmt = (
        select(wallet_addresses.c.branch, wallet_addresses.c.derivation_index, wallet_addresses.c.address)
        .where(wallet_addresses.c.xpub_id == xpub_id)
        .order_by(wallet_addresses.c.branch, wallet_addresses.c.derivation_index)
    )
    return [
        DerivedAddress(xpub_id, int(r.branch), int(r.derivation_index), str(r.address))
        for r in await conn.execute(stmt)
    ]


async def import_xpub(
    engine: AsyncEngine,
    wallet_id: int,
    text: str,
    *,
    gap_limit: int = DEFAULT_GAP_LIMIT,
    bitcoin_network: str,
) -> XpubImport:
    """Import a watch-only key set into a wallet with its first addresses, in one transaction.

    ``text`` is an extended public key or a one-key output descriptor
    (:func:`mixhouse.wallets.xpubs.parse_watch_only`). The key set is stored with its canonical
    descriptor, and the addresses ``0 .. gap_limit-1`` of the receive and of the change branch
    become ``pending`` wallet addresses (an address already imported by hand is attached to the
    key instead). The caller checks the wallet is the user's.

    Idempotent: if the wallet already has the same key set (same key and script type, whatever
    the key origin or the chain the descriptor named), that one is returned unchanged, gap limit
    included, with ``created=False``.

    Raises:
        InvalidInput: ``text`` is refused (private key, bad checksum, hardened step after the
            key, other network, unsupported or malformed; see :mod:`mixhouse.wallets.xpubs`)
            or ``gap_limit`` is not in ``1..1000``; nothing was written.
        NotFound: no such wallet.
    """
    _check_gap_limit(gap_limit)
    key = xpubs.parse_watch_only(text, network=bitcoin_network)
    rows = [
        (branch, index, address)
        for branch in xpubs.BRANCHES
        for index, address in enumerate(xpubs.derive_addresses(key, branch, 0, gap_limit))
    ]
    async with engine.begin() as conn:
        # Imports into one wallet take turns on its row, so two concurrent imports of one key
        # set (even with different origins, which the unique constraint would not catch) make
        # one row.
        locked = await conn.execute(select(wallets.c.id).where(wallets.c.id == wallet_id).with_for_update())
        if locked.first() is None:
            raise NotFound(f"no wallet {wallet_id}")
        # The canonical descriptor holds the plain xpub, so a substring test finds the same key.
        same = (
            await conn.execute(
                select(wallet_xpubs).where(
                    wallet_xpubs.c.wallet_id == wallet_id,
                    wallet_xpubs.c.script_type == key.script_type,
                    func.strpos(wallet_xpubs.c.descriptor, key.xpub) > 0,
                )
            )
        ).first()
        if same is not None:
            return XpubImport(
                id=int(same.id),
                wallet_id=wallet_id,
                descriptor=str(same.descriptor),
                script_type=same.script_type,
                gap_limit=int(same.gap_limit),
                created_at=same.created_at,
                created=False,
                addresses=await _xpub_addresses(conn, int(same.id)),
            )
        row = (
            await conn.execute(
                wallet_xpubs.insert()
                .values(
                    wallet_id=wallet_id,
                    chain="BTC",
                    descriptor=key.descriptor,
                    script_type=key.script_type,
                    gap_limit=gap_limit,
                )
                .returning(wallet_xpubs)
            )
        ).one()
        await _store_derived(conn, wallet_id, int(row.id), rows)
        addresses = await _xpub_addresses(conn, int(row.id))
    return XpubImport(
        id=int(row.id),
        wallet_id=wallet_id,
        descriptor=str(row.descriptor),
        script_type=row.script_type,
        gap_limit=int(row.gap_limit),
        created_at=row.created_at,
        created=True,
        addresses=addresses,
    )


@dataclass(frozen=True, slots=True)
class BranchStats:
    """The derivation state of one branch of an xpub.

    Attributes:
        derived: addresses derived so far (indexes ``0 .. derived-1``).
        last_used: the highest index whose address has any history, ``None`` if none has.
        confirmed: sum of the addresses' confirmed BTC balances, satoshi.
        unconfirmed: sum of their unconfirmed deltas, satoshi (signed).
    """

    derived: int = 0
    last_used: int | None = None
    confirmed: int = 0
    unconfirmed: int = 0


async def _branch_stats(conn: AsyncConnection, xpub_ids: Sequence[int]) -> dict[tuple[int, int], BranchStats]:
    """:class:`BranchStats` per ``(xpub_id, branch)`` that has addresses, in one statement."""
    if not xpub_ids:
        return {}
    used = exists().where(
        address_txs.c.chain == wallet_addresses.c.chain, address_txs.c.address == wallet_addresses.c.address
    )
    stmt = (
        select(
            wallet_addresses.c.xpub_id,
            wallet_addresses.c.branch,
            func.count().label("derived"),
            func.max(wallet_addresses.c.derivation_index).filter(used).label("last_used"),
            func.coalesce(func.sum(address_balances.c.confirmed), 0).label("confirmed"),
            func.coalesce(func.sum(address_balances.c.unconfirmed), 0).label("unconfirmed"),
        )
        .select_from(
            wallet_addresses.outerjoin(
                address_balances,
                and_(
                    address_balances.c.chain == wallet_addresses.c.chain,
                    address_balances.c.address == wallet_addresses.c.address,
                    address_balances.c.asset == "BTC",
                ),
            )
        )
        .where(wallet_addresses.c.xpub_id.in_(list(xpub_ids)))
        .group_by(wallet_addresses.c.xpub_id, wallet_addresses.c.branch)
    )
    return {
        (int(r.xpub_id), int(r.branch)): BranchStats(
            derived=int(r.derived),
            last_used=None if r.last_used is None else int(r.last_used),
            confirmed=int(r.confirmed),
            unconfirmed=int(r.unconfirmed),
        )
        for r in await conn.execute(stmt)
    }


async def _extend_one(engine: AsyncEngine, xpub_id: int, bitcoin_network: str) -> list[DerivedAddress]:
    """Derive what one xpub lacks so that each branch has ``gap_limit`` addresses after its
    last used one (one transaction, holding the xpub's row lock)."""
    async with engine.begin() as conn:
        row = (await conn.execute(select(wallet_xpubs).where(wallet_xpubs.c.id == xpub_id).with_for_update())).first()
        if row is None:
            return []
        try:
            key = xpubs.parse_watch_only(row.descriptor, network=bitcoin_network)
        except InvalidInput as exc:
            # Only if the server's network changed since the import: leave the key alone.
            log.warning("cannot derive from a stored xpub", xpub_id=xpub_id, error=str(exc))
            return []
        stats = await _branch_stats(conn, [xpub_id])
        rows: list[tuple[int, int, str]] = []
        for branch in xpubs.BRANCHES:
            got = stats.get((xpub_id, branch), BranchStats())
            # Indexes 0 .. derived-1 exist (derivation only ever appends); the branch needs
            # indexes up to last_used + gap_limit.
            needed = (-1 if got.last_used is None else got.last_used) + int(row.gap_limit) + 1
            fresh = xpubs.derive_addresses(key, branch, got.derived, max(needed, got.derived))
            rows.extend((branch, got.derived + offset, address) for offset, address in enumerate(fresh))
        return await _store_derived(conn, int(row.wallet_id), xpub_id, rows)


async def extend_gap(
    engine: AsyncEngine, *, bitcoin_network: str, wallet_id: int | None = None
) -> list[DerivedAddress]:
    """Keep the gap limit of every xpub (or of one wallet's): derive new addresses as needed.

    Per xpub and branch, the *last used* index is the highest ``derivation_index`` whose
    address has any ``address_txs`` row (history from any sync, in or out, confirmed or not).
    Addresses are derived up to ``last used + gap_limit`` (``gap_limit - 1`` when none is used),
    so that ``gap_limit`` unused addresses follow the last used one, as BIP-44 wallets expect.
    New addresses are ``pending``; sync them to learn whether they are used in turn.

    Each xpub is extended in its own transaction, under its row lock (two workers extending at
    once derive each address once).

    Returns:
        The addresses added (or attached to the xpub), by xpub, branch and index.
    """
    stmt = select(wallet_xpubs.c.id).order_by(wallet_xpubs.c.id)
    if wallet_id is not None:
        stmt = stmt.where(wallet_xpubs.c.wallet_id == wallet_id)
    async with engine.connect() as conn:
        ids = [int(i) for i in (await conn.execute(stmt)).scalars()]
    added: list[DerivedAddress] = []
    for xpub_id in ids:
        added.extend(await _extend_one(engine, xpub_id, bitcoin_network))
    return added


async def list_xpubs(engine: AsyncEngine, wallet_id: int) -> list[dict[str, Any]]:
    """The wallet's xpubs, oldest first, with per-branch derivation state and balances.

    Returns:
        ``wallet_xpubs`` rows, each with ``branches``: ``{0: BranchStats, 1: BranchStats}``
        (0 receive, 1 change; see :class:`BranchStats`), plus ``confirmed`` and
        ``unconfirmed``: the sums over both branches (satoshi; ``unconfirmed`` is signed).
    """
    async with engine.connect() as conn:
        stmt = select(wallet_xpubs).where(wallet_xpubs.c.wallet_id == wallet_id).order_by(wallet_xpubs.c.id)
        rows = [dict(r._mapping) for r in (await conn.execute(stmt)).all()]
        stats = await _branch_stats(conn, [int(r["id"]) for r in rows])
    for row in rows:
        branches = {branch: stats.get((int(row["id"]), branch), BranchStats()) for branch in xpubs.BRANCHES}
        row["branches"] = branches
        row["confirmed"] = sum(b.confirmed for b in branches.values())
        row["unconfirmed"] = sum(b.unconfirmed for b in branches.values())
    return rows
