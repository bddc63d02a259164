"""Creating mixes and reading their status."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from mixhouse.audit import AuditEntry
from mixhouse.db.tables import deposits, key_counters, mixes, sends
from mixhouse.errors import InvalidAddress, InvalidInput, KeysBusy, KeysExhausted, NotFound
from mixhouse.keys.buffer import take_key
from mixhouse.keys.signer import SignerError
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.states import MixState, now, transition
from mixhouse.mixer.withdrawals import IS_DEPOSIT, check_withdrawals
from mixhouse.money import Asset, asset_info
from mixhouse.unit import Unit, unit

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class MixRequest:
    """What a user asks for.

    Attributes:
        asset: an enabled asset's code (``"JOBCOIN"``, ``"ETH"``, ``"BTC"``, ``"USDT"``...).
        withdrawal_addresses: 1 to ``max_withdrawal_addresses`` distinct addresses of the asset.
        delay_min_seconds, delay_max_seconds: the payout window after the deposit is pooled;
            ``None`` takes the operator's defaults.
    """

    asset: str
    withdrawal_addresses: list[str]
    delay_min_seconds: int | None = None
    delay_max_seconds: int | None = None


async def create_mix(rt: Runtime, request: MixRequest, *, actor: str = "api") -> dict[str, Any]:
    """Create a mix and give it a fresh deposit address.

    Returns:
        The mix row as a dict (see :func:`get_mix` for the shape).

    Raises:
        InvalidInput: unknown asset, bad address count, duplicate addresses, empty or too
            long delay window.
        InvalidAddress: an address is invalid for the chain, or is one of ours (the pool or a
            deposit address).
        KeysBusy: the key buffer is empty and the token did not make a key within
            ``settings.key_issue_timeout_seconds`` (or is locked or gone); nothing was created.
        KeysExhausted: the asset's BIP-32 account has no index left.
    """
    settings = rt.settings
    adapter = rt.adapter(request.asset)
    asset = adapter.asset
    # The same rules (and messages) as the mix page's as-you-type check.
    checked = check_withdrawals(adapter, request.withdrawal_addresses, max_addresses=settings.max_withdrawal_addresses)
    if (refused := checked.first_error()) is not None:
        raise refused
    normalized = [a for a in checked.normalized if a is not None]
    count = len(normalized)
    delay_min = settings.default_delay_min_seconds if request.delay_min_seconds is None else request.delay_min_seconds
    delay_max = settings.default_delay_max_seconds if request.delay_max_seconds is None else request.delay_max_seconds
    if not 0 <= delay_min <= delay_max <= settings.max_delay_seconds:
        raise InvalidInput(
            f"the delay window must satisfy 0 <= delay_min_seconds <= delay_max_seconds <= {settings.max_delay_seconds}"
        )
    min_deposit, max_deposit = _limits(rt, asset)
    mix_id = secrets.token_urlsafe(24)
    created = now()
    expires_at = created + timedelta(seconds=settings.mix_ttl_seconds)
    async with unit(rt.engine) as work:
        ours = await work.conn.execute(
            select(mixes.c.id).where(mixes.c.asset == asset.value, mixes.c.deposit_address.in_(normalized)).limit(1)
        )
        if ours.first() is not None:
            raise InvalidAddress(IS_DEPOSIT)
        # A key pre-generated in a slow token if one is buffered (mixhouse.keys.buffer: taken
        # under SKIP LOCKED, back if this unit rolls back), else one made now.
        taken = await take_key(work.conn, asset.value) if asset in rt.signers else None
        try:
            if taken is not None:
                index, deposit_address = taken
            else:
                index = await next_key_index(work, asset.value)
                if settings.signer == "pkcs11" and asset in rt.signers:
                    # The token makes the key (tens to hundreds of ms): off the event loop, and
                    # within a deadline, since this unit holds the asset's counter row lock.
                    deposit_address = await _key_from_token(rt, asset, adapter.deposit_address, index)
                else:
                    deposit_address = adapter.deposit_address(index)
        except ValueError as exc:
            # Past the account's last soft BIP-32 index: nothing is created (the counter's
            # increment rolls back with this unit), and the operator is told, not a 500.
            log.exception("deposit key space exhausted", asset=asset.value)
            raise KeysExhausted(f"no deposit address left for {asset.value}; try again later") from exc
        row = (
            await work.conn.execute(
                mixes.insert()
                .values(
                    id=mix_id,
                    asset=asset.value,
                    state=MixState.AWAITING_DEPOSIT,
                    deposit_address=deposit_address,
                    deposit_key_index=index,
                    withdrawal_addresses=normalized,
                    fee_bps=None,
                    fee_min_bps=settings.fee_min_bps,
                    fee_max_bps=settings.fee_max_bps,
                    min_deposit=min_deposit,
                    max_deposit=max_deposit,
                    delay_min_seconds=delay_min,
                    delay_max_seconds=delay_max,
                    max_wait_seconds=delay_max + settings.privacy_max_extra_wait_seconds,
                    expires_at=expires_at,
                    watch_until=expires_at + timedelta(seconds=settings.late_deposit_grace_seconds),
                    created_at=created,
                    updated_at=created,
                )
                .returning(*mixes.c)
            )
        ).one()
        # The audit entry names the mix but not its withdrawal addresses in clear text beyond
        # the DB row: the operator answers lawful requests from the row itself.
        work.audit(
            AuditEntry(
                "mix.created",
                "mix",
                mix_id,
                actor=actor,
                asset=asset.value,
                details={
                    "deposit_address": deposit_address,
                    "withdrawals": count,
                    "fee_min_bps": row.fee_min_bps,
                    "fee_max_bps": row.fee_max_bps,
                },
            )
        )
    return dict(row._mapping)


def _limits(rt: Runtime, asset: Asset) -> tuple[int, int]:
    return rt.settings.deposit_limits(asset)


async def _key_from_token(rt: Runtime, asset: Asset, address_of: Callable[[int], str], index: int) -> str:
    """``address_of(index)`` in the asset's key thread (:meth:`Runtime.key_thread`).

    Raises:
        KeysBusy: no answer within the deadline, or the token failed (``SignerError``); the
            caller's unit rolls back, so the counter's increment and the mix are undone.
        ValueError: as ``address_of`` (an index past the account's soft range).
    """
    try:
        return await rt.key_thread(asset).run(address_of, index)
    except SignerError as exc:
        # The class only: a token's message may name its slot or label.
        log.warning("deposit key not made in time; mix refused", asset=asset.value, error=type(exc).__name__)
        # By the next filler round the buffer may hold keys again.
        retry = math.ceil(rt.settings.key_buffer_interval_seconds + rt.settings.key_issue_timeout_seconds)
        raise KeysBusy(
            f"no {asset.value} deposit address can be issued right now; try again later", retry_after_seconds=retry
        ) from exc


async def next_key_index(work: Unit, counter: str) -> int:
    """Allocate the next HD index of ``counter`` (``"ETH"``, ``"BTC"``, ``"BTC:change"``...),
    starting at 0; row-locked until the unit ends, so two units never get the same index."""
    stmt = (
        insert(key_counters)
        .values(asset=counter, next_index=1)
        .on_conflict_do_update(
            index_elements=[key_counters.c.asset], set_={"next_index": key_counters.c.next_index + 1}
        )
        .returning(key_counters.c.next_index)
    )
    return int((await work.conn.execute(stmt)).scalar_one()) - 1


async def get_mix(rt: Runtime, mix_id: str) -> dict[str, Any]:
    """The mix with its deposits and sends.

    Returns:
        ``{"mix": {...}, "deposits": [{...}], "sends": [{...}]}`` with amounts as int base units.

    Raises:
        NotFound: no mix has this id.
    """
    async with rt.engine.connect() as conn:
        mix = (await conn.execute(select(mixes).where(mixes.c.id == mix_id))).first()
        if mix is None:
            raise NotFound("no mix with this id")
        deps = (await conn.execute(select(deposits).where(deposits.c.mix_id == mix_id).order_by(deposits.c.id))).all()
        snd = (await conn.execute(select(sends).where(sends.c.mix_id == mix_id).order_by(sends.c.id))).all()
    return {
        "mix": dict(mix._mapping),
        "deposits": [dict(d._mapping) for d in deps],
        "sends": [dict(s._mapping) for s in snd],
    }


async def expire_mixes(rt: Runtime, at: datetime | None = None) -> int:
    """Move mixes still awaiting a deposit past their expiry to ``expired``.

    Returns:
        How many mixes expired.
    """
    moment = at or now()
    async with rt.engine.connect() as conn:
        due = (
            await conn.execute(
                select(mixes.c.id).where(mixes.c.state == MixState.AWAITING_DEPOSIT, mixes.c.expires_at < moment)
            )
        ).all()
    expired = 0
    for (mix_id,) in due:
        async with unit(rt.engine) as work:
            # A deposit may have just been seen: then the mix is not expired after all.
            seen = await work.conn.execute(select(deposits.c.id).where(deposits.c.mix_id == mix_id).limit(1))
            if seen.first() is not None:
                continue
            await transition(work.conn, mixes, mix_id, MixState.AWAITING_DEPOSIT, MixState.EXPIRED)
            work.audit(AuditEntry("mix.expired", "mix", mix_id))
            expired += 1
    return expired


async def touch_mix(work: Unit, mix_id: str) -> None:
    """Bump ``updated_at`` of a mix (used when its deposits or sends change)."""
    await work.conn.execute(update(mixes).where(mixes.c.id == mix_id).values(updated_at=now()))


def asset_decimals(asset: str) -> int:
    """Decimals of ``asset`` (8 for JOBCOIN, 18 for ETH, 6 for USDT).

    Raises:
        InvalidInput: the asset is unknown to this process.
    """
    return asset_info(asset).decimals
