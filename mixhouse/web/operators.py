"""Operator accounts and sessions of the admin dashboard.

Passwords are hashed with Argon2id (argon2-cffi's ``PasswordHasher``, RFC 9106 parameters);
only the hash is stored. A login makes a session: a random 256-bit token goes to the browser
in an ``HttpOnly``, ``SameSite=Strict`` cookie, and the database keeps its SHA-256 with a CSRF
token for the session's forms and an expiry (``settings.admin_session_seconds``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.tables import operator_sessions, operators
from mixhouse.errors import InvalidInput
from mixhouse.mixer.states import now

_hasher = PasswordHasher()
MIN_PASSWORD_CHARS = 12
# Verified against when the name is unknown, so both failures take an Argon2 verification.
_DUMMY_HASH = _hasher.hash("not-a-password-of-anyone")


@dataclass(frozen=True, slots=True)
class Session:
    """A live operator session: who, and the CSRF token its forms must carry."""

    operator: str
    csrf_token: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_operator(engine: AsyncEngine, name: str, password: str) -> None:
    """Create operator ``name`` with ``password`` (or replace its password).

    Raises:
        InvalidInput: an empty or non-printable name, or a password under 12 characters.
    """
    if not name or not name.isprintable() or len(name) > 64:
        raise InvalidInput("an operator name is 1 to 64 printable characters")
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(f"an operator password has at least {MIN_PASSWORD_CHARS} characters")
    hashed = _hasher.hash(password)
    async with engine.begin() as conn:
        await conn.execute(
            insert(operators)
            .values(name=name, password_hash=hashed)
            .on_conflict_do_update(index_elements=[operators.c.name], set_={"password_hash": hashed})
        )
        # A new password ends the operator's sessions.
        await conn.execute(delete(operator_sessions).where(operator_sessions.c.operator == name))


async def login(engine: AsyncEngine, name: str, password: str, *, lifetime_seconds: int) -> str | None:
    """Check ``name``/``password``; on success open a session and return its cookie token.

    Returns ``None`` for an unknown name or a wrong password (not told apart).
    """
    async with engine.connect() as conn:
        stored = (await conn.execute(select(operators.c.password_hash).where(operators.c.name == name))).scalar()
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if stored is None:
        return None
    token = secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        moment = now()
        await conn.execute(delete(operator_sessions).where(operator_sessions.c.expires_at < moment))
        await conn.execute(
            operator_sessions.insert().values(
                token_hash=_digest(token),
                operator=name,
                csrf_token=secrets.token_urlsafe(32),
                created_at=moment,
                expires_at=moment + timedelta(seconds=lifetime_seconds),
            )
        )
        if _hasher.check_needs_rehash(stored):
            await conn.execute(
                update(operators).where(operators.c.name == name).values(password_hash=_hasher.hash(password))
            )
    return token


async def session_for(engine: AsyncEngine, token: str | None) -> Session | None:
    """The live session of cookie ``token``, or ``None`` (missing, unknown or expired)."""
    if not token:
        return None
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(operator_sessions.c.operator, operator_sessions.c.csrf_token).where(
                    operator_sessions.c.token_hash == _digest(token), operator_sessions.c.expires_at > now()
                )
            )
        ).first()
    return None if row is None else Session(str(row.operator), str(row.csrf_token))


async def logout(engine: AsyncEngine, token: str) -> None:
    """End the session of cookie ``token`` (nothing if there is none)."""
    async with engine.begin() as conn:
        await conn.execute(delete(operator_sessions).where(operator_sessions.c.token_hash == _digest(token)))
