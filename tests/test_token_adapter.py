"""Erc20Adapter on anvil against USDT's own TetherToken bytecode and an OpenZeppelin ERC20.

Real contracts, real node: a deposit is a Transfer log, found with its confirmations and lost
again on a reorg; a sweep is funded with exactly its gas by the pool and moves the whole
deposit; USDT's blacklist and fee switch are refused before signing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mixhouse.chains.base import FeeQuote, PreparedSend, SendState
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.token import TokenBlacklisted, TokenFeeActive, token_account
from tests.fixtures.anvil import (
    CONTRACTS,
    ETH,
    TOKEN_OWNER,
    TOKEN_PAYER,
    USDT,
    Anvil,
    TokenWorld,
    compile_contracts,
    deploy_token,
)
from tests.scanning import engine_scan

REPO_ROOT = Path(__file__).resolve().parents[1]
TETHER_ARTIFACT = CONTRACTS / "tether_token_artifact.json"
OWNER, PAYER = TOKEN_OWNER, TOKEN_PAYER


def await_txid(receipt: dict[str, object]) -> str:
    """The lowercase ``0x`` txid of a receipt."""
    value = receipt["transactionHash"]
    assert isinstance(value, bytes)
    return "0x" + value.hex()


@pytest_asyncio.fixture(params=["usdt", "oz"])
async def world(request: pytest.FixtureRequest, anvil: Anvil, evm_adapter: EvmAdapter) -> AsyncIterator[TokenWorld]:
    yield await deploy_token(anvil, evm_adapter, request.param)


def test_tether_artifact_is_what_the_source_compiles_to(tmp_path: Path) -> None:
    compile_contracts(tmp_path)
    assert (tmp_path / TETHER_ARTIFACT.name).read_bytes() == TETHER_ARTIFACT.read_bytes(), "run `make contracts`"
    artifact = json.loads(TETHER_ARTIFACT.read_text())
    assert artifact["compiler"].startswith("0.4.18+")
    assert "pragma solidity ^0.4.17;" in (REPO_ROOT / "contracts" / "TetherToken.sol").read_text()


def test_token_keys_are_apart_from_eth_keys() -> None:
    accounts = {token_account(code) for code in ("USDT", "OZUSD", "USDC", "DAI")}
    assert len(accounts) == 4
    assert not accounts & {0, 1}


async def test_deposit_is_found_confirmed_and_lost_on_reorg(world: TokenWorld) -> None:
    token = world.token
    deposit = token.deposit_address(0)
    assert deposit != world.evm.deposit_address(0)
    snapshot = await world.anvil.snapshot()
    txid = await world.pay(deposit, 250 * USDT)
    cursor = str(await world.anvil.block_number() - 1)
    found = await engine_scan(token, [deposit], cursor)
    assert [(t.to_address, t.amount, t.from_addresses) for t in found.transfers] == [
        (deposit, 250 * USDT, (world.evm.key_address(PAYER),))
    ]
    transfer = found.transfers[0]
    assert transfer.ref == f"{txid}/0"
    assert transfer.confirmations == 1
    await world.anvil.mine(2)
    assert await token.transfer_confirmations(transfer) == 3
    # A transfer to another address is not ours.
    await world.pay(world.evm.key_address(OWNER), 1)
    assert (await engine_scan(token, [deposit], found.cursor)).transfers == ()
    await world.anvil.revert(snapshot)
    assert await token.transfer_confirmations(transfer) is None
    assert await token.balance(deposit) == 0


async def test_sweep_is_funded_with_its_exact_gas(world: TokenWorld) -> None:
    token = world.token
    deposit, pool = token.deposit_address(1), token.pool_address
    await world.anvil.fund(pool, ETH)
    await world.pay(deposit, 100 * USDT)
    tank_before = await token.gas_balance(pool)
    # The sweep is signed first: its price is fixed before the pool sends the gas it needs.
    sweep = await token.prepare_send(
        from_address=deposit,
        from_key_index=1,
        to_address=pool,
        amount=100 * USDT,
        fee=FeeQuote(0, ""),
        nonce=await token.next_nonce(deposit),
    )
    needed = token.gas_needed(sweep)
    topup = await token.prepare_gas_topup(to_address=deposit, wei=needed, nonce=await token.next_nonce(pool))
    topup_receipt = await world.mined(topup)
    assert topup_receipt["status"] == 1
    assert await token.gas_balance(deposit) == needed
    assert sweep.network_fee_max == 0
    await world.mined(sweep)
    await world.anvil.mine(2)
    check = await token.check_send(sweep)
    assert (check.state, check.network_fee_paid) == (SendState.CONFIRMED, 0)
    assert await token.balance(pool) == 100 * USDT
    assert await token.balance(deposit) == 0
    sweep_gas = await token.gas_paid(str(sweep.txid))
    topup_gas = await token.gas_paid(str(topup.txid))
    assert sweep_gas is not None
    assert topup_gas is not None
    # The deposit address keeps, to the wei, what the gas limit reserved beyond the gas used (a
    # balance emptied to 0 earns a storage refund, so the estimate is above the use).
    assert 0 <= needed - sweep_gas < needed // 4
    assert await token.gas_balance(deposit) == needed - sweep_gas
    assert await token.gas_balance(pool) == tank_before - needed - topup_gas
    # A payout from the pool pays its own gas from the tank.
    payee = world.evm.key_address("m/44'/60'/9'/0/5")
    payout = await token.prepare_send(
        from_address=pool,
        from_key_index=None,
        to_address=payee,
        amount=40 * USDT,
        fee=FeeQuote(0, ""),
        nonce=await token.next_nonce(pool),
    )
    await world.mined(payout)
    await world.anvil.mine(2)
    assert (await token.check_send(payout)).state is SendState.CONFIRMED
    assert await token.balance(payee) == 40 * USDT


async def test_a_transfer_that_moves_nothing_is_failed(world: TokenWorld) -> None:
    token = world.token
    pool = token.pool_address
    await world.anvil.fund(pool, ETH)
    # The prepared send says 5 units, the signed call moves 4: the receipt's log does not match.
    payee = world.evm.key_address("m/44'/60'/9'/0/6")
    await world.pay(pool, 10 * USDT)
    real = await token.prepare_send(
        from_address=pool,
        from_key_index=None,
        to_address=payee,
        amount=4,
        fee=FeeQuote(0, ""),
        nonce=await token.next_nonce(pool),
    )
    claimed = PreparedSend(real.from_address, real.to_address, 5, 0, real.raw_tx, real.txid, real.nonce)
    await world.mined(real)
    await world.anvil.mine(2)
    assert (await token.check_send(claimed)).state is SendState.FAILED
    assert (await token.check_send(real)).state is SendState.CONFIRMED


async def test_usdt_blacklist_and_fee_switch_are_refused(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    world = await deploy_token(anvil, evm_adapter, "usdt")
    token = world.token
    deposit, pool = token.deposit_address(2), token.pool_address
    await world.pay(deposit, 100 * USDT)
    assert not await token.is_blacklisted(deposit)
    await world.owner("addBlackList(address)", ["address"], [deposit])
    assert await token.is_blacklisted(deposit)
    with pytest.raises(TokenBlacklisted):
        await token.prepare_send(
            from_address=deposit, from_key_index=2, to_address=pool, amount=100 * USDT, fee=FeeQuote(0, ""), nonce=0
        )
    await world.owner("removeBlackList(address)", ["address"], [deposit])
    assert await token.transfer_fee_bps() == 0
    await world.owner("setParams(uint256,uint256)", ["uint256", "uint256"], [10, 5])
    assert await token.transfer_fee_bps() == 10
    with pytest.raises(TokenFeeActive):
        await token.prepare_send(
            from_address=deposit, from_key_index=2, to_address=pool, amount=100 * USDT, fee=FeeQuote(0, ""), nonce=0
        )
    # With the fee on, a deposit counts what arrived (the Transfer log's value), not what was sent.
    other = token.deposit_address(3)
    start = str(await anvil.block_number() + 1)
    await world.pay(other, 100 * USDT)
    found = await engine_scan(token, [other], start)
    assert [t.amount for t in found.transfers] == [100 * USDT - 100 * USDT * 10 // 10_000]
    assert await token.balance(other) == found.transfers[0].amount


async def test_oz_token_has_no_blacklist_nor_fee(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    world = await deploy_token(anvil, evm_adapter, "oz")
    assert not await world.token.is_blacklisted(world.token.deposit_address(0))
    assert await world.token.transfer_fee_bps() == 0
