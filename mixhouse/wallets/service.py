"""Users, API keys, wallets and address imports (each function is its own transaction).

An API key is ``mh_`` + ``secrets.token_urlsafe(32)``; only its SHA-256 is stored, so the
plaintext is returned once, by :func:`create_api_key`, and never again.

Addresses are stored in canonical form per chain (see :func:`normalize_wallet_address`) so that
the same address imported twice, or reported by a history source, is one row.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.address import is_checksum_address, to_checksum_address
from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.bitcoin.networks import normalize_address as normalize_bitcoin_address
from mixhouse.db.tables import address_balances, api_keys, users, wallet_addresses, wallets
from mixhouse.errors import InvalidAddress, InvalidInput, NotFound

CHAINS = ("BTC", "ETH", "JOBCOIN")
KEY_PREFIX = "mh_"
MAX_JOBCOIN_ADDRESS = 128
MAX_NAME = 128

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
