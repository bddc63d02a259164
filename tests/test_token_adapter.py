"""Erc20Adapter on anvil against USDT's own TetherToken bytecode and an OpenZeppelin ERC20.

Real contracts, real node: a deposit is a Transfer log, found with its confirmations and lost
again on a reorg; a sweep is funded with exactly its gas by the pool and moves the whole
deposit; USDT's blacklist and fee switch are refused before signing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from mixhouse.chains.base import FeeQuote, PreparedSend, SendState
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter, TokenBlacklisted, TokenFeeActive, token_account
from mixhouse.money import Asset
from tests.fixtures.anvil import Anvil
from tests.scanning import engine_scan

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = REPO_ROOT / "tests" / "data" / "contracts"
TETHER_ARTIFACT = CONTRACTS / "tether_token_artifact.json"
OZ_ARTIFACT = CONTRACTS / "oz_token_artifact.json"
OWNER = "m/44'/60'/9'/0/0"  # the token's deployer and owner (USDT: may blacklist, set fees)
PAYER = "m/44'/60'/9'/0/1"  # a user who deposits tokens
ETH = 10**18
USDT = 10**6
# A fresh asset code per test: each has its own BIP-44 account, so deposit addresses (and
# their ETH residue) never carry over between tests on the session's anvil.
_codes = (f"TK{n}" for n in itertools.count())


def _call(signature: str, types: list[str], values: list[object]) -> bytes:
    return keccak(text=signature)[:4] + abi_encode(types, values)


@dataclass
class World:
    anvil: Anvil
    evm: EvmAdapter
    token: Erc20Adapter
    kind: str

    async def tx(self, key_ref: str, to: str | None, data: bytes) -> dict[str, object]:
        sender = self.evm.key_address(key_ref)
        gas = await self.evm.estimate_gas(from_address=sender, to=to, data=data)
        prepared = self.evm.prepare_contract_call(
            key_ref=key_ref,
            to=to,
            data=data,
            value=0,
            gas=gas + gas // 4,
            max_fee_per_gas=await self.evm.gas_price(),
            nonce=await self.evm.next_nonce(sender),
        )
        return await self.mined(prepared)

    async def mined(self, prepared: PreparedSend) -> dict[str, object]:
        return await self.mined_by(self.evm, prepared)

    @staticmethod
    async def mined_by(evm: EvmAdapter, prepared: PreparedSend) -> dict[str, object]:
        """Broadcast ``prepared`` and wait (a condition, 10 s at most) for its receipt."""
        assert prepared.txid is not None
        await evm.broadcast(prepared)
        deadline = time.monotonic() + 10
        while (receipt := await evm.receipt(prepared.txid)) is None:
            assert time.monotonic() < deadline, f"{prepared.txid} not mined"
            await asyncio.sleep(0.02)
        return dict(receipt)

    async def pay(self, to: str, amount: int) -> str:
        """The payer sends ``amount`` tokens to ``to``; returns the txid."""
        receipt = await self.tx(
            PAYER, self.token.contract, _call("transfer(address,uint256)", ["address", "uint256"], [to, amount])
        )
        assert receipt["status"] == 1
        return str(await_txid(receipt))

    async def owner(self, signature: str, types: list[str], values: list[object]) -> None:
        assert (await self.tx(OWNER, self.token.contract, _call(signature, types, values)))["status"] == 1


def await_txid(receipt: dict[str, object]) -> str:
    """The lowercase ``0x`` txid of a receipt."""
    value = receipt["transactionHash"]
    assert isinstance(value, bytes)
    return "0x" + value.hex()


async def _deploy(evm: EvmAdapter, bytecode: str, key_ref: str) -> str:
    data = bytes.fromhex(bytecode.removeprefix("0x"))
    sender = evm.key_address(key_ref)
    gas = await evm.estimate_gas(from_address=sender, to=None, data=data)
    prepared = evm.prepare_contract_call(
        key_ref=key_ref,
        to=None,
        data=data,
        value=0,
        gas=gas * 2,
        max_fee_per_gas=await evm.gas_price(),
        nonce=await evm.next_nonce(sender),
    )
    receipt = await World.mined_by(evm, prepared)
    assert receipt["status"] == 1
    return str(receipt["contractAddress"])


async def deploy_token(anvil: Anvil, evm: EvmAdapter, kind: str, *, network_fee: int = 0) -> World:
    """A fresh token (``"usdt"``: TetherToken, ``"oz"``: OzToken) with 1,000,000 of it at the
    payer, ETH for the owner and the payer, and an adapter on it under a fresh asset code."""
    for key_ref in (OWNER, PAYER):
        await anvil.fund(evm.key_address(key_ref), 10 * ETH)
    payer = evm.key_address(PAYER)
    if kind == "usdt":
        contract = json.loads(TETHER_ARTIFACT.read_text())["contracts"]["TetherToken"]
        args = abi_encode(["uint256", "string", "string", "uint256"], [10**12 * USDT, "Tether USD", "USDT", 6])
        address = await _deploy(evm, contract["bytecode"] + args.hex(), OWNER)
    else:
        contract = json.loads(OZ_ARTIFACT.read_text())["contracts"]["OzToken"]
        address = await _deploy(evm, contract["bytecode"], OWNER)
    world = World(
        anvil, evm, Erc20Adapter(evm, asset=Asset(next(_codes)), contract=address, network_fee=network_fee), kind
    )
    if kind == "usdt":
        await world.owner("transfer(address,uint256)", ["address", "uint256"], [payer, 10**6 * USDT])
    else:
        await world.owner("mint(address,uint256)", ["address", "uint256"], [payer, 10**6 * USDT])
    return world


@pytest_asyncio.fixture(params=["usdt", "oz"])
async def world(request: pytest.FixtureRequest, anvil: Anvil, evm_adapter: EvmAdapter) -> AsyncIterator[World]:
    yield await deploy_token(anvil, evm_adapter, request.param)


def test_tether_artifact_is_what_the_source_compiles_to(tmp_path: Path) -> None:
    subprocess.run(
        ["node", "contracts/compile.js", "--out-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (tmp_path / TETHER_ARTIFACT.name).read_bytes() == TETHER_ARTIFACT.read_bytes(), "run `make contracts`"
    artifact = json.loads(TETHER_ARTIFACT.read_text())
    assert artifact["compiler"].startswith("0.4.18+")
    assert "pragma solidity ^0.4.17;" in (REPO_ROOT / "contracts" / "TetherToken.sol").read_text()


def test_token_keys_are_apart_from_eth_keys() -> None:
    accounts = {token_account(code) for code in ("USDT", "OZUSD", "USDC", "DAI")}
    assert len(accounts) == 4
    assert not accounts & {0, 1}


async def test_deposit_is_found_confirmed_and_lost_on_reorg(world: World) -> None:
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


async def test_sweep_is_funded_with_its_exact_gas(world: World) -> None:
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


async def test_a_transfer_that_moves_nothing_is_failed(world: World) -> None:
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
