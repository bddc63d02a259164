"""Conditional state transitions on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.tables import deposits, mixes, sends
from mixhouse.errors import IllegalTransition
from mixhouse.mixer.states import (
    DEPOSIT_TRANSITIONS,
    MIX_TRANSITIONS,
    SEND_TRANSITIONS,
    DepositState,
    MixState,
    SendState,
    transition,
)

T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


async def _insert_mix(engine: AsyncEngine, mix_id: str = "mix-1", state: str = MixState.AWAITING_DEPOSIT) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            mixes.insert().values(
                id=mix_id,
                asset="ETH",
                state=state,
                deposit_address=f"deposit-address-of-{mix_id}",
                deposit_key_index=1,
                withdrawal_addresses=["0x" + "11" * 20, "0x" + "22" * 20],
                fee_bps=150,
                fee_min_bps=100,
                fee_max_bps=300,
                max_wait_seconds=7_200,
                min_deposit=10**16,
                max_deposit=10**20,
                delay_min_seconds=60,
                delay_max_seconds=3_600,
                expires_at=T0 + timedelta(days=1),
                watch_until=T0 + timedelta(days=2),
                created_at=T0,
                updated_at=T0,
            )
        )


async def _mix(engine: AsyncEngine, mix_id: str = "mix-1") -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(mixes).where(mixes.c.id == mix_id))).one()


async def test_allowed_transition_returns_the_row(engine: AsyncEngine) -> None:
    await _insert_mix(engine)
    before = datetime.now(UTC)
    async with engine.begin() as conn:
        row = await transition(conn, mixes, "mix-1", MixState.AWAITING_DEPOSIT, MixState.MIXING)
    assert row.id == "mix-1"
    assert row.state == "mixing"
    assert row.fee_bps == 150
    assert row.min_deposit == 10**16
    assert row.updated_at >= before
    assert row.created_at == T0
    stored = await _mix(engine)
    assert stored.state == "mixing"
    assert stored.updated_at == row.updated_at


async def test_transition_sets_extra_values(engine: AsyncEngine) -> None:
    await _insert_mix(engine)
    at = T0 + timedelta(hours=5)
    async with engine.begin() as conn:
        row = await transition(
            conn, mixes, "mix-1", MixState.AWAITING_DEPOSIT, MixState.EXPIRED, updated_at=at, fee_bps=99
        )
    assert row.state == "expired"
    assert row.updated_at == at
    assert row.fee_bps == 99
    stored = await _mix(engine)
    assert (stored.state, stored.updated_at, stored.fee_bps) == ("expired", at, 99)


async def test_repeated_transition_is_illegal(engine: AsyncEngine) -> None:
    await _insert_mix(engine)
    async with engine.begin() as conn:
        await transition(conn, mixes, "mix-1", MixState.AWAITING_DEPOSIT, MixState.MIXING)
    first = await _mix(engine)
    async with engine.begin() as conn:
        with pytest.raises(IllegalTransition, match="not in state"):
            await transition(conn, mixes, "mix-1", MixState.AWAITING_DEPOSIT, MixState.MIXING)
    assert await _mix(engine) == first


async def test_unknown_row_is_illegal(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        with pytest.raises(IllegalTransition):
            await transition(conn, mixes, "no-such-mix", MixState.AWAITING_DEPOSIT, MixState.MIXING)


@pytest.mark.parametrize(
    ("from_state", "to_state"),
    [
        (MixState.AWAITING_DEPOSIT, MixState.COMPLETED),
        (MixState.AWAITING_DEPOSIT, MixState.AWAITING_DEPOSIT),
        (MixState.MIXING, MixState.AWAITING_DEPOSIT),
        (MixState.MIXING, MixState.EXPIRED),
        (MixState.COMPLETED, MixState.EXPIRED),
        (MixState.AWAITING_DEPOSIT, "bogus"),
    ],
)
async def test_disallowed_pair_changes_nothing(engine: AsyncEngine, from_state: str, to_state: str) -> None:
    # The row really is in from_state, so only the transition table can refuse it.
    await _insert_mix(engine, state=from_state)
    before = await _mix(engine)
    async with engine.begin() as conn:
        with pytest.raises(IllegalTransition, match="not allowed"):
            await transition(conn, mixes, "mix-1", from_state, to_state)
    after = await _mix(engine)
    assert after == before
    assert after.state == from_state
    assert after.updated_at == T0


async def test_concurrent_transitions_one_wins(engine: AsyncEngine) -> None:
    await _insert_mix(engine)
    entered = asyncio.Event()

    async def attempt(to_state: str) -> str:
        async with engine.begin() as conn:
            try:
                row = await transition(conn, mixes, "mix-1", MixState.AWAITING_DEPOSIT, to_state)
            except IllegalTransition:
                return "lost"
            entered.set()
            await asyncio.sleep(0.2)  # hold the row lock while the other one tries
            return f"won:{row.state}"

    results = await asyncio.gather(attempt(MixState.MIXING), attempt(MixState.EXPIRED))
    assert sorted(r.split(":")[0] for r in results) == ["lost", "won"]
    winner = next(r for r in results if r.startswith("won:")).removeprefix("won:")
    assert (await _mix(engine)).state == winner


async def test_blocked_transition_loses_after_commit(engine: AsyncEngine) -> None:
    """The second writer waits on the first one's row lock and then finds the row moved."""
    await _insert_mix(engine)
    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        await transition(first, mixes, "mix-1", MixState.AWAITING_DEPOSIT, MixState.MIXING)
        await second.begin()
        racer = asyncio.create_task(transition(second, mixes, "mix-1", MixState.AWAITING_DEPOSIT, MixState.EXPIRED))
        await asyncio.sleep(0.3)
        assert not racer.done()  # blocked on the row lock
        await first.commit()
        with pytest.raises(IllegalTransition):
            await racer
        await second.rollback()
    assert (await _mix(engine)).state == "mixing"


async def test_deposit_and_send_transitions(engine: AsyncEngine) -> None:
    await _insert_mix(engine)
    async with engine.begin() as conn:
        deposit_id = (
            await conn.execute(
                deposits.insert()
                .values(
                    mix_id="mix-1",
                    asset="ETH",
                    chain_ref="0xabc:0",
                    deposit_address="0x" + "33" * 20,
                    from_addresses=["0x" + "44" * 20],
                    amount=10**18,
                    state=DepositState.SEEN,
                )
                .returning(deposits.c.id)
            )
        ).scalar_one()
        frozen = await transition(conn, deposits, deposit_id, DepositState.SEEN, DepositState.FROZEN, reason="OFAC")
        assert (frozen.state, frozen.reason, frozen.amount) == ("frozen", "OFAC", 10**18)
        with pytest.raises(IllegalTransition):
            await transition(conn, deposits, deposit_id, DepositState.FROZEN, DepositState.SWEEPING)

        send_id = (
            await conn.execute(
                sends.insert()
                .values(
                    kind="payout",
                    asset="ETH",
                    mix_id="mix-1",
                    deposit_id=deposit_id,
                    from_address="0x" + "55" * 20,
                    to_address="0x" + "11" * 20,
                    amount=5 * 10**17,
                    due_at=T0,
                    state=SendState.SCHEDULED,
                )
                .returning(sends.c.id)
            )
        ).scalar_one()
        signed = await transition(conn, sends, send_id, SendState.SCHEDULED, SendState.SIGNED, raw_tx=b"\x01\x02")
        assert signed.raw_tx == b"\x01\x02"
        with pytest.raises(IllegalTransition):  # not an allowed pair: a confirmed send is final
            await transition(conn, sends, send_id, SendState.CONFIRMED, SendState.SCHEDULED)
        with pytest.raises(IllegalTransition):  # allowed pair, but the row is no longer scheduled
            await transition(conn, sends, send_id, SendState.SCHEDULED, SendState.SIGNED)
        broadcast = await transition(conn, sends, send_id, SendState.SIGNED, SendState.BROADCAST, txid="0xfeed")
        assert (broadcast.state, broadcast.txid) == ("broadcast", "0xfeed")


def test_transition_tables_name_real_states() -> None:
    for pairs, enum_type in (
        (MIX_TRANSITIONS, MixState),
        (DEPOSIT_TRANSITIONS, DepositState),
        (SEND_TRANSITIONS, SendState),
    ):
        values = {s.value for s in enum_type}
        for a, b in pairs:
            assert a in values
            assert b in values
            assert a != b
    # Terminal states have no way out.
    assert not [p for p in DEPOSIT_TRANSITIONS if p[0] in {DepositState.FROZEN, DepositState.POOLED}]
    assert not [p for p in SEND_TRANSITIONS if p[0] == SendState.CONFIRMED]
