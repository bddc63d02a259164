"""Pool key rotation (issue 12, ``mixhouse keys rotate ASSET``): generations of the pool key.

A mixer feature (it moves the pool's money and waits on the mixer's sends), so it lives here and
not in :mod:`mixhouse.keys`, the shared layer below it that only holds and guards the keys
(:class:`~mixhouse.keys.audited.RetiredKeyGuard`).

An asset's pool key has *generations* (table ``pool_generations``, migration 0020), each
``active -> draining -> retired``; one is ``active`` at a time (a partial unique index):

1. :func:`rotate` inserts generation ``g+1`` ``active`` and moves ``g`` to ``draining`` in one
   transaction with its ``pool.rotated`` audit entry.
2. :func:`drain_evm` (idempotent, one call per step; run it until it answers ``retired``): once
   no send of ``g``'s address is unfinished, it signs a *pool move* of ``g``'s whole balance
   less the fee to ``g+1``, stores it (``pool_moves``, ``signed``, with its raw bytes, its
   ``key.used`` and ``pool.move_signed`` audit entries) before it broadcasts it, rebroadcasts
   the same bytes after a crash, and marks it ``confirmed`` at the adapter's confirmation
   depth. A send of its own kind: it belongs to no mix.
3. Once ``g``'s balance is 0 and no move is in flight, ``g`` is ``retired`` (``pool.retired``).
   :class:`RetiredKeyGuard` refuses every signature by a retired key (:class:`KeyRetired`),
   so a bug that tries is visible, not paid.

Ethereum only for now: the pool key of generation ``g`` is ``m/44'/60'/1'/0/g`` (generation 0
is today's ``POOL_PATH``). Bitcoin (a BIP-84 account per generation and a sweep of its coins)
is not implemented: :func:`rotate` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse.audit import AuditEntry
from mixhouse.chains.base import PreparedSend, SendState
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.db.tables import pool_generations, pool_moves, sends
from mixhouse.errors import ChainError, IllegalTransition
from mixhouse.keys.audited import KeyRetired, RetiredKeyGuard, key_use_entries, recording_key_uses
from mixhouse.keys.hd import POOL_PATH
from mixhouse.keys.signer import SignerError
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.sends import allocate_nonce
from mixhouse.money import Asset
from mixhouse.unit import unit

__all__ = [
    "ROTATABLE",
    "KeyRetired",
    "PoolGeneration",
    "RetiredKeyGuard",
    "RotationError",
    "drain_evm",
    "ensure_first_generation",
    "evm_pool_key_ref",
    "follow_rotation",
    "generations",
    "retired_key_refs",
    "rotate",
]

log = structlog.get_logger(__name__)

ROTATABLE: Final = frozenset({"ETH"})
# Send states after which a send no longer moves the pool's money.
_FINISHED: Final = ("confirmed",)


class RotationError(IllegalTransition):
    """A rotation step that does not apply: the asset cannot rotate yet, a rotation is still
    draining, or the asset has no generation."""


@dataclass(frozen=True, slots=True)
class PoolGeneration:
    """One pool key generation.

    Attributes:
        asset: the asset's name (``"ETH"``).
        generation: 0, 1, ...
        key_ref: the signer's reference of the key (``m/44'/60'/1'/0/{generation}``).
        address: the key's (checksummed) address.
        state: ``"active"``, ``"draining"`` or ``"retired"``.
    """

    asset: str
    generation: int
    key_ref: str
    address: str
    state: str


def evm_pool_key_ref(generation: int) -> str:
    """The BIP-32 path of Ethereum pool generation ``generation``: ``m/44'/60'/1'/0/{g}``
    (generation 0 is :data:`mixhouse.keys.hd.POOL_PATH`).

    Raises:
        ValueError: ``generation < 0``.
    """
    if generation < 0:
        raise ValueError("a generation is >= 0")
    return f"m/44'/60'/1'/0/{generation}"


def _generation(row: Any) -> PoolGeneration:
    return PoolGeneration(row.asset, int(row.generation), row.key_ref, row.address, row.state)


async def generations(conn: AsyncConnection, asset: str) -> list[PoolGeneration]:
    """Every generation of ``asset``, oldest first."""
    rows = await conn.execute(
        select(pool_generations).where(pool_generations.c.asset == asset).order_by(pool_generations.c.generation)
    )
    return [_generation(r) for r in rows]


async def ensure_first_generation(engine: AsyncEngine, asset: str, *, key_ref: str, address: str) -> None:
    """Record generation 0 of ``asset`` (today's pool key) if the asset has none yet."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(pool_generations)
            .values(asset=asset, generation=0, key_ref=key_ref, address=address, state="active")
            .on_conflict_do_nothing()
        )


async def rotate(
    engine: AsyncEngine, asset: str, *, address_of: Callable[[str], str], actor: str = "cli"
) -> PoolGeneration:
    """Make a new pool key generation ``active`` and the current one ``draining``, in one
    transaction with a ``pool.rotated`` audit entry.

    Args:
        asset: ``"ETH"``.
        address_of: the address of a key reference (``EvmAdapter.key_address``).

    Returns:
        The new active generation.

    Raises:
        RotationError: ``asset`` cannot rotate, has no generation (run the worker once, or
            :func:`ensure_first_generation`), or an earlier generation is still draining (one
            rotation at a time: each move has one target).
        SignerError: the signer has no key for the new generation.
    """
    if asset not in ROTATABLE:
        raise RotationError(f"rotating the {asset} pool key is not implemented (only {sorted(ROTATABLE)})")
    async with unit(engine) as work:
        rows = (
            await work.conn.execute(select(pool_generations).where(pool_generations.c.asset == asset).with_for_update())
        ).all()
        current = [_generation(r) for r in rows]
        if not current:
            raise RotationError(f"{asset} has no pool generation recorded yet")
        if any(g.state == "draining" for g in current):
            raise RotationError(f"an earlier {asset} pool generation is still draining")
        active = next(g for g in current if g.state == "active")
        number = max(g.generation for g in current) + 1
        key_ref = evm_pool_key_ref(number)
        new = PoolGeneration(asset, number, key_ref, address_of(key_ref), "active")
        await work.conn.execute(
            update(pool_generations)
            .where(pool_generations.c.asset == asset, pool_generations.c.generation == active.generation)
            .values(state="draining", draining_at=func.now())
        )
        await work.conn.execute(
            insert(pool_generations).values(
                asset=asset, generation=number, key_ref=key_ref, address=new.address, state="active"
            )
        )
        work.audit(
            AuditEntry(
                "pool.rotated",
                "pool_generation",
                f"{asset}/{number}",
                actor=actor,
                asset=asset,
                details={
                    "from_generation": active.generation,
                    "from_address": active.address,
                    "to_generation": number,
                    "to_address": new.address,
                    "key_ref": key_ref,
                },
            )
        )
    return new


async def retired_key_refs(conn: AsyncConnection) -> frozenset[str]:
    """The key references of every retired generation, of every asset."""
    rows = await conn.execute(select(pool_generations.c.key_ref).where(pool_generations.c.state == "retired"))
    return frozenset(r.key_ref for r in rows)


def _prepared(row: Any) -> PreparedSend:
    return PreparedSend(
        from_address=row.from_address,
        to_address=row.to_address,
        amount=int(row.amount),
        network_fee_max=int(row.network_fee_max),
        raw_tx=bytes(row.raw_tx),
        txid=row.txid,
        nonce=None if row.nonce is None else int(row.nonce),
    )


async def _move_in_flight(conn: AsyncConnection, asset: str, generation: int) -> Any:
    return (
        await conn.execute(
            select(pool_moves).where(
                pool_moves.c.asset == asset,
                pool_moves.c.from_generation == generation,
                pool_moves.c.state.in_(("signed", "broadcast")),
            )
        )
    ).one_or_none()


async def _follow_move(engine: AsyncEngine, adapter: EvmAdapter, move: Any) -> str:
    """Broadcast (again: the same bytes) and check a stored move; ``"confirmed"`` once deep
    enough, else ``"broadcast"``."""
    prepared = _prepared(move)
    check = await adapter.check_send(prepared)
    if check.state is SendState.NOT_FOUND:
        await adapter.broadcast(prepared)
    if move.state == "signed":
        async with unit(engine) as work:
            await work.conn.execute(
                update(pool_moves)
                .where(pool_moves.c.id == move.id, pool_moves.c.state == "signed")
                .values(state="broadcast", broadcast_at=func.now())
            )
            work.audit(_move_entry("pool.move_broadcast", move))
    if check.state is not SendState.CONFIRMED:
        return "broadcast"
    async with unit(engine) as work:
        done = await work.conn.execute(
            update(pool_moves)
            .where(pool_moves.c.id == move.id, pool_moves.c.state.in_(("signed", "broadcast")))
            .values(state="confirmed", confirmed_at=func.now(), network_fee_paid=check.network_fee_paid)
        )
        if done.rowcount:
            work.audit(_move_entry("pool.move_confirmed", move, network_fee_paid=check.network_fee_paid))
    return "confirmed"


def _move_entry(action: str, move: Any, **extra: Any) -> AuditEntry:
    return AuditEntry(
        action,
        "pool_move",
        str(move.id),
        asset=move.asset,
        amount=int(move.amount),
        details={
            "from_generation": int(move.from_generation),
            "to_generation": int(move.to_generation),
            "from_address": move.from_address,
            "to_address": move.to_address,
            "txid": move.txid,
            "network_fee_max": int(move.network_fee_max),
            **extra,
        },
    )


def _unfinished_of(asset: str, address: str) -> Any:
    return (
        select(func.count())
        .select_from(sends)
        .where(
            sends.c.asset == asset,
            # Paid from it, or (a sweep stored before the rotation) paid into it: a coin
            # landing after the retirement would be stuck behind a refused key.
            or_(sends.c.from_address == address, sends.c.to_address == address),
            sends.c.state.not_in(_FINISHED),
        )
    )


async def _retire(engine: AsyncEngine, adapter: EvmAdapter, draining: PoolGeneration) -> bool:
    """Retire ``draining`` if, under its row lock, no send from or into it is unfinished and
    its balance is 0. The lock orders this against the sends trigger (migration 0020): a send
    inserted meanwhile is either counted here or refused."""
    asset = draining.asset
    async with unit(engine) as work:
        state = (
            await work.conn.execute(
                select(pool_generations.c.state)
                .where(pool_generations.c.asset == asset, pool_generations.c.generation == draining.generation)
                .with_for_update()
            )
        ).scalar_one()
        if state != "draining":
            return bool(state == "retired")
        if (await work.conn.execute(_unfinished_of(asset, draining.address))).scalar_one():
            return False
        if await _move_in_flight(work.conn, asset, draining.generation) is not None:
            return False
        # Read again under the lock: a send that landed since the first look counts.
        if await adapter.balance(draining.address) != 0:
            return False
        await work.conn.execute(
            update(pool_generations)
            .where(pool_generations.c.asset == asset, pool_generations.c.generation == draining.generation)
            .values(state="retired", retired_at=func.now())
        )
        work.audit(
            AuditEntry(
                "pool.retired",
                "pool_generation",
                f"{asset}/{draining.generation}",
                asset=asset,
                details={"address": draining.address, "key_ref": draining.key_ref},
            )
        )
    return True


async def drain_evm(engine: AsyncEngine, adapter: EvmAdapter, guard: RetiredKeyGuard | None = None) -> str:
    """One step of draining the draining generation of ``adapter.asset`` into the active one.

    Safe to call again at any point (and after a crash at any point): every step is a
    conditional transition of the stored state.

    Returns:
        ``"idle"`` (nothing draining), ``"waiting"`` (a send from the old address is unfinished),
        ``"signed"``/``"broadcast"``/``"confirmed"`` (the move's state after this step),
        ``"dust"`` (a balance that does not pay the move's fee: the operator decides), or
        ``"retired"`` (the generation is empty and now retired; ``guard`` refuses its key).

    Raises:
        ChainError: the node failed; retry later, nothing is lost.
        SignerError: the signer failed.
    """
    asset = adapter.asset.value
    async with engine.connect() as conn:
        gens = await generations(conn, asset)
        draining = next((g for g in gens if g.state == "draining"), None)
        if draining is None:
            return "idle"
        active = next(g for g in gens if g.state == "active")
        move = await _move_in_flight(conn, asset, draining.generation)
        unfinished = (await conn.execute(_unfinished_of(asset, draining.address))).scalar_one()
    if move is not None:
        return await _follow_move(engine, adapter, move)
    if unfinished:
        return "waiting"
    balance = await adapter.balance(draining.address)
    if balance == 0:
        retired = await _retire(engine, adapter, draining)
        if retired and guard is not None:
            async with engine.connect() as conn:
                guard.set_retired(await retired_key_refs(conn))
        return "retired" if retired else "waiting"
    fee = await adapter.quote_network_fee()
    price = fee.per_send // 21_000
    cost = 21_000 * price
    if balance <= cost:
        return "dust"
    async with unit(engine) as work:
        nonce = await allocate_nonce(work, adapter, draining.address)
        if nonce is None:
            raise SignerError("no nonce for the pool move")  # pragma: no cover - EVM always has one
        with recording_key_uses() as uses:
            prepared = await adapter.prepare_send(
                from_address=draining.address,
                from_key_index=None,
                from_key_ref=draining.key_ref,
                to_address=active.address,
                amount=balance - cost,
                fee=fee,
                nonce=nonce,
            )
        row = (
            await work.conn.execute(
                insert(pool_moves)
                .values(
                    asset=asset,
                    from_generation=draining.generation,
                    to_generation=active.generation,
                    from_address=prepared.from_address,
                    to_address=prepared.to_address,
                    amount=prepared.amount,
                    network_fee_max=prepared.network_fee_max,
                    nonce=prepared.nonce,
                    raw_tx=prepared.raw_tx,
                    txid=prepared.txid,
                    state="signed",
                )
                .returning(pool_moves)
            )
        ).one()
        work.audit(_move_entry("pool.move_signed", row))
        for entry in key_use_entries(
            uses, entity_type="pool_move", entity_id=str(row.id), purpose="pool_move", asset=asset
        ):
            work.audit(entry)
    return await _follow_move(engine, adapter, row)


async def follow_rotation(rt: Runtime) -> str | None:
    """The worker's rotation step (each reconcile tick and at start): record generation 0 the
    first time, point the ETH adapter at the active generation's key (new sweeps and payouts
    use it), refuse retired keys, and take one :func:`drain_evm` step.

    Returns:
        The drain step's answer, ``None`` without an ETH adapter. A node error is logged and
        answered ``"error"``: the next tick retries, nothing is lost.
    """
    adapter = rt.adapters.get(Asset.ETH)
    if not isinstance(adapter, EvmAdapter):
        return None
    guard = rt.signers.get(Asset.ETH)
    guard = guard if isinstance(guard, RetiredKeyGuard) else None
    await ensure_first_generation(rt.engine, "ETH", key_ref=POOL_PATH, address=adapter.key_address(POOL_PATH))
    async with rt.engine.connect() as conn:
        gens = await generations(conn, "ETH")
        if guard is not None:
            guard.set_retired(await retired_key_refs(conn))
    active = next(g for g in gens if g.state == "active")
    for g in gens:
        if g.state in ("draining", "active"):
            # A new generation's key is a token round trip the first time: made in the
            # adapter's signing thread, so a slow token does not stall the worker's loop.
            await adapter.key_address_async(g.key_ref)
    for g in gens:
        if g.state == "draining":
            adapter.use_pool_key(g.key_ref)  # known to the adapter: its stored sends still sign
    adapter.use_pool_key(active.key_ref)
    try:
        return await drain_evm(rt.engine, adapter, guard)
    except ChainError as exc:
        log.warning("pool rotation step failed; retried next tick", error=str(exc))
        return "error"
