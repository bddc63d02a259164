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

Ethereum: the pool key of generation ``g`` is ``m/44'/60'/1'/0/g`` (generation 0 is today's
``POOL_PATH``).

Bitcoin: generation ``g`` is the change chain of BIP-84 account ``g``, ``m/84'/c'/{g}'/1/i``
(stored ``key_chain = 2g + 1``, :func:`mixhouse.keys.bip84.pool_key_chain`); its key reference
is that prefix (``m/84'/c'/{g}'/1/``, refused whole once retired) and its address key 0 (where
top-ups go). Every payout signed after the rotation sends its change to the active chain and
spends no coin of the draining one (mixer/sends.py :func:`~mixhouse.mixer.sends.pool_chains`).
:func:`drain_bitcoin`: once no coin of the draining generation is reserved by a send or waiting
for its own send to confirm, one move spends all of its pool coins (never a mix's deposit) to
the active generation's address; stored with its inputs ``spent`` and its output an
``unconfirmed`` coin of the active generation in the same transaction, before the broadcast; the
output becomes ``available`` when the move confirms. Retired once no coin of the chain is left,
no move is in flight and the top-up address holds nothing on chain.

ERC-20 tokens (USDT...): generation ``g`` of a token's pool key is ``m/44'/60'/{a}'/1/{g}``
(``a`` the token's BIP-44 account, :func:`mixhouse.chains.evm.token.token_account`; generation 0
is the token's first pool key). Its address holds two balances: the tokens and the ETH gas tank
that pays the gas of the token's sweeps, refunds and payouts. :func:`drain_token`, once no send
from or into the old address is unfinished, makes two moves one after the other, each stored
before its broadcast with its audit entries: the whole token balance (its gas paid by the old
address's ETH; ``kind = 'pool'``, token base units), then the ETH left less one transfer's fee
(``kind = 'gas'``, wei: never counted in the token's books). ETH that does not pay its own
move's fee (at most ``21000 * P`` wei) stays on the retired address and is recorded in the
``pool.retired`` entry (``gas_left_wei``). Tokens are never dust: any balance is moved. Until
the gas move lands, the new generation's sends wait for gas (retried, nothing lost); a sweep
stored into the old generation before the rotation gets its gas top-up from the old tank
(:func:`mixhouse.mixer.gas.sweep_gas_ready`), since the drain waits for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse.audit import AuditEntry
from mixhouse.chains.base import ChainAdapter, FeeQuote, PreparedSend, SendState
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.db.tables import pool_generations, pool_moves, sends, utxos
from mixhouse.errors import ChainError, IllegalTransition, InvalidAmount
from mixhouse.keys.audited import KeyRetired, KeyUse, RetiredKeyGuard, key_use_entries, recording_key_uses
from mixhouse.keys.bip84 import pool_key_chain
from mixhouse.keys.hd import POOL_PATH
from mixhouse.keys.signer import SignerError
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.sends import allocate_nonce, coin_of
from mixhouse.money import Asset
from mixhouse.unit import Unit, unit

__all__ = [
    "UNROTATABLE",
    "KeyRetired",
    "PoolGeneration",
    "RetiredKeyGuard",
    "RotationError",
    "drain_bitcoin",
    "drain_evm",
    "drain_token",
    "ensure_first_generation",
    "evm_pool_key_ref",
    "follow_pool_generations",
    "follow_rotation",
    "generations",
    "retired_key_refs",
    "rotate",
]

log = structlog.get_logger(__name__)

# Assets without a pool key: the Jobcoin pool is an account of a ledger we run.
UNROTATABLE: Final = frozenset({"JOBCOIN"})
# Send states after which a send no longer moves the pool's money.
_FINISHED: Final = ("confirmed",)


class RotationError(IllegalTransition):
    """A rotation step that does not apply: the asset cannot rotate yet, a rotation is still
    draining, or the asset has no generation."""


@dataclass(frozen=True, slots=True)
class PoolGeneration:
    """One pool key generation.

    Attributes:
        asset: the asset's name (``"ETH"``, ``"BTC"``).
        generation: 0, 1, ...
        key_ref: the signer's reference of the key (``m/44'/60'/1'/0/{generation}``; Bitcoin:
            the chain's prefix ``m/84'/c'/{generation}'/1/``).
        address: the key's (checksummed) address; Bitcoin: key 0 of the chain (top-ups).
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
    engine: AsyncEngine,
    asset: str,
    *,
    address_of: Callable[[str], str],
    actor: str = "cli",
    key_ref_of: Callable[[int], str] = evm_pool_key_ref,
) -> PoolGeneration:
    """Make a new pool key generation ``active`` and the current one ``draining``, in one
    transaction with a ``pool.rotated`` audit entry.

    Args:
        asset: ``"ETH"``, ``"BTC"`` or an ERC-20 token's (``"USDT"``).
        address_of: the address of a key reference (``EvmAdapter.key_address``, also for a
            token; ``BitcoinAdapter.generation_ref_address``).
        key_ref_of: the key reference of a generation number (:func:`evm_pool_key_ref`;
            ``BitcoinAdapter.generation_key_ref``; ``Erc20Adapter.generation_key_ref``).

    Returns:
        The new active generation.

    Raises:
        RotationError: ``asset`` cannot rotate, has no generation (run the worker once, or
            :func:`ensure_first_generation`), or an earlier generation is still draining (one
            rotation at a time: each move has one target).
        SignerError: the signer has no key for the new generation.
    """
    if asset in UNROTATABLE:
        raise RotationError(f"rotating the {asset} pool key is not implemented: its pool is a ledger account")
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
        key_ref = key_ref_of(number)
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


async def _follow_move(engine: AsyncEngine, adapter: ChainAdapter, move: Any) -> str:
    """Broadcast (again: the same bytes) and check a stored move; ``"confirmed"`` once deep
    enough, else ``"broadcast"``. A UTXO move's output coin becomes ``available`` in the
    confirming transaction."""
    prepared = _prepared(move)
    check = await adapter.check_send(prepared, earlier_sends=0)
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
            await work.conn.execute(
                update(utxos)
                .where(utxos.c.asset == move.asset, utxos.c.txid == move.txid, utxos.c.state == "unconfirmed")
                .values(state="available", updated_at=func.now())
            )
    return "confirmed"


async def _store_move(
    work: Unit,
    draining: PoolGeneration,
    active: PoolGeneration,
    *,
    uses: list[KeyUse],
    kind: str = "pool",
    **columns: Any,
) -> Any:
    """Insert a signed pool move from ``draining`` to ``active`` (``columns``: addresses, amount
    and fee cap in base units, nonce, raw bytes, txid; extra keys go to the audit details only)
    with its ``pool.move_signed`` entry and a ``key.used`` entry per key that signed it, in
    ``work``: the move is stored before anything is broadcast. Returns the ``pool_moves`` row."""
    stored = {k: columns.pop(k) for k in _MOVE_COLUMNS}
    row = (
        await work.conn.execute(
            insert(pool_moves)
            .values(
                asset=draining.asset,
                from_generation=draining.generation,
                to_generation=active.generation,
                state="signed",
                kind=kind,
                **stored,
            )
            .returning(pool_moves)
        )
    ).one()
    work.audit(_move_entry("pool.move_signed", row, **columns))
    for entry in key_use_entries(
        uses, entity_type="pool_move", entity_id=str(row.id), purpose="pool_move", asset=draining.asset
    ):
        work.audit(entry)
    return row


_MOVE_COLUMNS: Final = ("from_address", "to_address", "amount", "network_fee_max", "nonce", "raw_tx", "txid")


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
            "kind": move.kind,
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


async def _retire(
    engine: AsyncEngine,
    adapter: EvmAdapter | BitcoinAdapter | Erc20Adapter,
    draining: PoolGeneration,
    **details: Any,
) -> bool:
    """Retire ``draining`` if, under its row lock, nothing of it is left in the books, no move is
    in flight and its address holds nothing on chain.

    "Left in the books": on Ethereum an unfinished send from or into its address; on Bitcoin a
    coin of its chain not yet ``spent`` (a top-up the scan has not recorded yet shows as the
    address's balance and waits for it); on a token, its token balance (``details``, e.g. the
    ETH left behind, go to the ``pool.retired`` entry). The lock orders this against the sends trigger
    (migration 0020): a send inserted meanwhile is either counted here or refused."""
    asset = draining.asset
    if isinstance(adapter, BitcoinAdapter):
        held: Any = (
            select(func.count())
            .select_from(utxos)
            .where(
                utxos.c.asset == asset,
                utxos.c.key_chain == pool_key_chain(draining.generation),
                utxos.c.state != "spent",
            )
        )
    else:
        held = _unfinished_of(asset, draining.address)
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
        if (await work.conn.execute(held)).scalar_one():
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
                details={"address": draining.address, "key_ref": draining.key_ref, **details},
            )
        )
    return True


async def _account_drain(engine: AsyncEngine, asset: str) -> tuple[PoolGeneration, PoolGeneration, Any, int] | None:
    """An account chain's drain as stored: (draining, active, the move in flight or ``None``,
    how many sends from or into the draining address are unfinished); ``None``: nothing drains."""
    async with engine.connect() as conn:
        gens = await generations(conn, asset)
        draining = next((g for g in gens if g.state == "draining"), None)
        if draining is None:
            return None
        active = next(g for g in gens if g.state == "active")
        move = await _move_in_flight(conn, asset, draining.generation)
        unfinished = int((await conn.execute(_unfinished_of(asset, draining.address))).scalar_one())
    return draining, active, move, unfinished


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
    state = await _account_drain(engine, adapter.asset.value)
    if state is None:
        return "idle"
    draining, active, move, unfinished = state
    if move is not None:
        return await _follow_move(engine, adapter, move)
    if unfinished:
        return "waiting"
    balance = await adapter.balance(draining.address)
    if balance == 0:
        return await _retire_and_guard(engine, adapter, draining, guard)
    fee = await adapter.quote_network_fee()
    if balance <= fee.per_send:
        return "dust"
    row = await _sign_account_move(
        engine, adapter, draining, active, _eth_move(adapter, draining, active, balance, fee)
    )
    return await _follow_move(engine, adapter, row)


def _eth_move(
    evm: EvmAdapter, draining: PoolGeneration, active: PoolGeneration, balance: int, fee: FeeQuote
) -> Callable[[int], Awaitable[PreparedSend]]:
    """The signing of an ETH move of ``balance`` wei less ``fee`` from ``draining``'s key to
    ``active``'s address, at ``fee``'s price (so the two add up to the balance exactly)."""

    async def sign(nonce: int) -> PreparedSend:
        return await evm.prepare_send(
            from_address=draining.address,
            from_key_index=None,
            from_key_ref=draining.key_ref,
            to_address=active.address,
            amount=balance - fee.per_send,
            fee=fee,
            nonce=nonce,
        )

    return sign


async def _retire_and_guard(
    engine: AsyncEngine,
    adapter: EvmAdapter | BitcoinAdapter | Erc20Adapter,
    draining: PoolGeneration,
    guard: RetiredKeyGuard | None,
    **details: Any,
) -> str:
    """:func:`_retire`, then ``guard`` refuses the retired key: ``"retired"``, else ``"waiting"``."""
    retired = await _retire(engine, adapter, draining, **details)
    if retired and guard is not None:
        async with engine.connect() as conn:
            guard.set_retired(await retired_key_refs(conn))
    return "retired" if retired else "waiting"


class _ShortOfGas(Exception):
    """The draining address's ETH does not pay a token move's gas (rolls the nonce back)."""


async def _sign_account_move(
    engine: AsyncEngine,
    nonces: EvmAdapter | Erc20Adapter,
    draining: PoolGeneration,
    active: PoolGeneration,
    sign: Callable[[int], Awaitable[PreparedSend]],
    *,
    kind: str = "pool",
    gas_available: int | None = None,
) -> Any:
    """Allocate the draining address's next nonce (``nonces``: the adapter whose asset keys the
    counter), sign by ``sign(nonce)`` and store the move, in one transaction: stored before
    anything is broadcast. Returns the ``pool_moves`` row.

    Raises:
        _ShortOfGas: ``gas_available`` (wei) is given and below the signed transaction's most
            gas cost; nothing is stored and the nonce is not used.
        ChainError, SignerError: the node or the signer failed; nothing is stored.
    """
    async with unit(engine) as work:
        nonce = await allocate_nonce(work, nonces, draining.address)
        if nonce is None:
            raise SignerError("no nonce for the pool move")  # pragma: no cover - EVM always has one
        with recording_key_uses() as uses:
            prepared = await sign(nonce)
        needed = nonces.gas_needed(prepared) if isinstance(nonces, Erc20Adapter) else 0
        if gas_available is not None and needed > gas_available:
            raise _ShortOfGas(needed)
        return await _store_move(
            work,
            draining,
            active,
            kind=kind,
            from_address=prepared.from_address,
            to_address=prepared.to_address,
            amount=prepared.amount,
            network_fee_max=prepared.network_fee_max,
            nonce=prepared.nonce,
            raw_tx=prepared.raw_tx,
            txid=prepared.txid,
            uses=uses,
        )


async def drain_token(engine: AsyncEngine, adapter: Erc20Adapter, guard: RetiredKeyGuard | None = None) -> str:
    """One step of draining the draining pool generation of an ERC-20 token into the active one
    (see the module: the tokens first, then the gas tank's ETH).

    Safe to call again at any point (and after a crash at any point): every step is a
    conditional transition of the stored state; a move is stored (with its nonce, raw bytes,
    ``key.used`` and ``pool.move_signed`` entries) before its broadcast and rebroadcast as the
    same bytes after a crash.

    Returns:
        ``"idle"`` (nothing draining), ``"waiting"`` (a send from or into the old address is
        unfinished), ``"signed"``/``"broadcast"``/``"confirmed"`` (the state of the move in
        flight after this step), ``"no-gas"`` (tokens are left but the old address's ETH does
        not pay their move's gas: fund it), or ``"retired"`` (no token left, ETH below one
        transfer's fee left behind and recorded; ``guard`` refuses the key).

    Raises:
        ChainError: the node failed (``TokenBlacklisted``: the token refuses transfers from the
            old address); retry later, nothing is lost.
        SignerError: the signer failed.
    """
    state = await _account_drain(engine, adapter.asset.value)
    if state is None:
        return "idle"
    draining, active, move, unfinished = state
    if move is not None:
        # A gas move is a plain ETH transfer: checked as one, not for a token Transfer log.
        return await _follow_move(engine, adapter.evm if move.kind == "gas" else adapter, move)
    if unfinished:
        return "waiting"
    tokens = await adapter.balance(draining.address)
    wei = await adapter.gas_balance(draining.address)
    if tokens > 0:

        async def sign_tokens(nonce: int) -> PreparedSend:
            return await adapter.prepare_send(
                from_address=draining.address,
                from_key_index=None,
                to_address=active.address,
                amount=tokens,
                fee=FeeQuote(per_send=0, detail="a pool move: the gas is the old address's ETH"),
                nonce=nonce,
            )

        try:
            row = await _sign_account_move(engine, adapter, draining, active, sign_tokens, gas_available=wei)
        except _ShortOfGas as short:
            log.warning(
                "the draining token pool's ETH does not pay its move's gas: fund its address",
                asset=draining.asset,
                address=draining.address,
                balance_wei=wei,
                needed_wei=short.args[0],
            )
            return "no-gas"
        return await _follow_move(engine, adapter, row)
    fee = await adapter.evm.quote_network_fee()
    if wei <= fee.per_send:
        return await _retire_and_guard(engine, adapter, draining, guard, gas_left_wei=wei)

    sign_gas = _eth_move(adapter.evm, draining, active, wei, fee)
    row = await _sign_account_move(engine, adapter, draining, active, sign_gas, kind="gas")
    return await _follow_move(engine, adapter.evm, row)


def _coins_of(asset: str, key_chain: int) -> Any:
    """The pool coins (owned by no mix) of one stored key chain."""
    return (utxos.c.asset == asset) & (utxos.c.key_chain == key_chain) & utxos.c.owner_mix_id.is_(None)


async def _busy_coins(conn: AsyncConnection, asset: str, key_chain: int) -> int:
    """Coins of ``key_chain`` a send still holds: reserved by one (it spends them) or its
    change not yet confirmed (``unconfirmed``, a top-up not yet deep enough included)."""
    return int(
        (
            await conn.execute(
                select(func.count())
                .select_from(utxos)
                .where(_coins_of(asset, key_chain), utxos.c.state.in_(("reserved", "unconfirmed")))
            )
        ).scalar_one()
    )


async def drain_bitcoin(engine: AsyncEngine, adapter: BitcoinAdapter, guard: RetiredKeyGuard | None = None) -> str:
    """One step of draining the draining Bitcoin pool generation into the active one.

    Safe to call again at any point (and after a crash at any point): every step is a
    conditional transition of the stored state. Each move spends every pool coin of the draining
    generation's chain (``key_chain = 2g + 1``; a mix's deposit coin is never one) at the
    node's fee rate, to key 0 of the active generation, with no change. Coins that reach the
    draining generation later (a top-up to its address) are moved by a later step.

    Returns:
        ``"idle"`` (nothing draining), ``"waiting"`` (a coin of the old chain is still reserved by
        a send, or its change or a top-up is not yet confirmed, or the scan has not recorded a
        top-up yet), ``"signed"``/``"broadcast"``/``"confirmed"`` (the move's state after this
        step), ``"dust"`` (coins that do not pay the move's fee: the operator decides), or
        ``"retired"`` (nothing left; ``guard`` now refuses every key of the chain).

    Raises:
        ChainError: the node failed; retry later, nothing is lost.
        SignerError: the signer failed (:class:`KeyRetired`: a retired key was asked).
    """
    asset = adapter.asset.value
    async with engine.connect() as conn:
        gens = await generations(conn, asset)
        draining = next((g for g in gens if g.state == "draining"), None)
        if draining is None:
            return "idle"
        active = next(g for g in gens if g.state == "active")
        move = await _move_in_flight(conn, asset, draining.generation)
        chain = pool_key_chain(draining.generation)
        busy = await _busy_coins(conn, asset, chain)
        available = (
            await conn.execute(
                select(func.count()).select_from(utxos).where(_coins_of(asset, chain), utxos.c.state == "available")
            )
        ).scalar_one()
    if move is not None:
        return await _follow_move(engine, adapter, move)
    if busy:
        return "waiting"
    if not available:
        return await _retire_and_guard(engine, adapter, draining, guard)
    fee_rate = await adapter.fee_rate()
    async with unit(engine) as work:
        # The generation's row first (as sends take it, shared): no send signs meanwhile.
        await work.conn.execute(
            select(pool_generations.c.state)
            .where(pool_generations.c.asset == asset, pool_generations.c.generation == draining.generation)
            .with_for_update()
        )
        if await _busy_coins(work.conn, asset, chain):
            return "waiting"
        coin_rows = (
            await work.conn.execute(
                select(utxos)
                .where(_coins_of(asset, chain), utxos.c.state == "available")
                .order_by(utxos.c.txid, utxos.c.vout)
                .with_for_update()
            )
        ).all()
        if not coin_rows:
            return "waiting"
        try:
            with recording_key_uses() as uses:
                spend = await adapter.prepare_pool_move(
                    coins=[coin_of(c) for c in coin_rows], to_address=active.address, fee_rate=fee_rate
                )
        except InvalidAmount as exc:
            log.warning("the draining pool generation's coins do not pay a move", asset=asset, error=str(exc))
            return "dust"
        prepared = spend.prepared
        if prepared.raw_tx is None or prepared.txid is None:  # pragma: no cover - a UTXO move is signed
            raise IllegalTransition("a pool move needs signed bytes and a txid")
        row = await _store_move(
            work,
            draining,
            active,
            from_address=draining.address,
            to_address=active.address,
            amount=spend.change_amount,
            network_fee_max=spend.fee,
            nonce=None,
            raw_tx=prepared.raw_tx,
            txid=prepared.txid,
            uses=uses,
            inputs=[f"{c.txid}:{c.vout}" for c in spend.inputs],
            fee_rate=fee_rate,
        )
        for coin in spend.inputs:
            await work.conn.execute(
                update(utxos)
                .where(
                    utxos.c.asset == asset,
                    utxos.c.txid == coin.txid,
                    utxos.c.vout == coin.vout,
                    utxos.c.state == "available",
                )
                .values(state="spent", updated_at=func.now())
            )
        await work.conn.execute(
            insert(utxos).values(
                asset=asset,
                txid=prepared.txid,
                vout=spend.change_vout,
                address=active.address,
                key_chain=pool_key_chain(active.generation),
                key_index=0,
                amount=spend.change_amount,
                owner_mix_id=None,
                state="unconfirmed",
            )
        )
    return await _follow_move(engine, adapter, row)


async def _point_bitcoin(rt: Runtime, adapter: BitcoinAdapter) -> RetiredKeyGuard | None:
    """Record Bitcoin generation 0 the first time, refuse retired generations' keys, and point
    the adapter at the active generation (change and top-ups) with the draining ones watched."""
    guard = rt.signers.get(Asset.BTC)
    guard = guard if isinstance(guard, RetiredKeyGuard) else None
    await ensure_first_generation(
        rt.engine, "BTC", key_ref=adapter.generation_key_ref(0), address=adapter.generation_address(0)
    )
    async with rt.engine.connect() as conn:
        gens = await generations(conn, "BTC")
        if guard is not None:
            guard.set_retired(await retired_key_refs(conn))
    active = next(g for g in gens if g.state == "active")
    for g in gens:
        if g.state in ("draining", "active"):
            await adapter.generation_address_async(g.generation)  # then cached: no token call on the loop
    adapter.use_pool_generation(active.generation, draining=[g.generation for g in gens if g.state == "draining"])
    return guard


async def _point_evm(rt: Runtime, adapter: EvmAdapter | Erc20Adapter) -> RetiredKeyGuard | None:
    """Record generation 0 of ETH or of a token the first time, refuse retired keys, and point
    the adapter at the active generation (its draining ones still sign their stored sends)."""
    evm = adapter.evm if isinstance(adapter, Erc20Adapter) else adapter
    asset = adapter.asset.value
    # A token signs with the chain's signer, so ETH's guard refuses a token's retired keys too.
    guard = rt.signers.get(Asset.ETH)
    guard = guard if isinstance(guard, RetiredKeyGuard) else None
    first = adapter.generation_key_ref(0) if isinstance(adapter, Erc20Adapter) else POOL_PATH
    await ensure_first_generation(rt.engine, asset, key_ref=first, address=evm.key_address(first))
    async with rt.engine.connect() as conn:
        gens = await generations(conn, asset)
        if guard is not None:
            guard.set_retired(await retired_key_refs(conn))
    active = next(g for g in gens if g.state == "active")
    for g in gens:
        if g.state in ("draining", "active"):
            # A new generation's key is a token round trip the first time: made in the
            # adapter's signing thread, so a slow token does not stall the worker's loop.
            await evm.key_address_async(g.key_ref)
    for g in gens:
        if g.state == "draining":
            adapter.use_pool_key(g.key_ref)  # known to the adapter: its stored sends still sign
    adapter.use_pool_key(active.key_ref)
    return guard


def _token_adapters(rt: Runtime) -> list[Erc20Adapter]:
    return [a for a in rt.adapters.values() if isinstance(a, Erc20Adapter)]


async def follow_pool_generations(rt: Runtime) -> None:
    """Point the ETH, ERC-20 and BTC adapters at their active pool generation and refuse retired keys,
    without a drain step (the worker at start, before its first job: a process started after a
    rotation never plans a send from the old pool). A node or signer error is logged; the
    next :func:`follow_rotation` retries."""
    try:
        btc = rt.adapters.get(Asset.BTC)
        if isinstance(btc, BitcoinAdapter):
            await _point_bitcoin(rt, btc)
        eth = rt.adapters.get(Asset.ETH)
        if isinstance(eth, EvmAdapter):
            await _point_evm(rt, eth)
        for token in _token_adapters(rt):
            await _point_evm(rt, token)
    except ChainError as exc:
        log.warning("pool generations not followed yet; retried next tick", error=str(exc))


async def follow_rotation(rt: Runtime) -> str | None:
    """The worker's rotation step (each reconcile tick): for BTC, ETH and every ERC-20 token,
    record generation 0 the first time, point the adapter at the active generation (new change,
    sweeps and payouts use it), refuse retired keys, and take one :func:`drain_bitcoin` /
    :func:`drain_evm` / :func:`drain_token` step.

    Returns:
        The ETH drain step's answer, else the BTC one's; ``None`` without either adapter (a
        token's answer is logged, not returned). A node error is logged and answered
        ``"error"``: the next tick retries, nothing is lost.
    """
    answer: str | None = None
    btc = rt.adapters.get(Asset.BTC)
    if isinstance(btc, BitcoinAdapter):
        try:
            guard = await _point_bitcoin(rt, btc)
            answer = await drain_bitcoin(rt.engine, btc, guard)
        except ChainError as exc:
            log.warning("BTC pool rotation step failed; retried next tick", error=str(exc))
            answer = "error"
    eth = rt.adapters.get(Asset.ETH)
    if isinstance(eth, EvmAdapter):
        guard = await _point_evm(rt, eth)
        try:
            answer = await drain_evm(rt.engine, eth, guard)
        except ChainError as exc:
            log.warning("pool rotation step failed; retried next tick", error=str(exc))
            answer = "error"
    for token in _token_adapters(rt):
        try:
            guard = await _point_evm(rt, token)
            step = await drain_token(rt.engine, token, guard)
        except ChainError as exc:
            log.warning("token pool rotation step failed; retried next tick", asset=str(token.asset), error=str(exc))
            continue
        if step not in ("idle", "retired"):
            log.info("token pool rotation step", asset=str(token.asset), step=step)
    return answer
