"""The Ethereum HTLC leg (issue 10 part 2): the compiled contract matches its source, and
locks, claims and refunds of ETH, a plain ERC-20 and a USDT-like token (no return values) on
the real anvil, every transaction signed through the EvmAdapter's signer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from web3.types import TxReceipt

from mixhouse.chains.base import PreparedSend
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.adapter import CallReverted
from mixhouse.chains.evm.deploy import deploy_contract, send_call
from mixhouse.chains.evm.htlc import ARTIFACT_PATH, EvmHtlc, SwapState, SwapTerms, htlc_artifact
from mixhouse.chains.htlc import HtlcMismatch, new_secret, secret_hash
from mixhouse.errors import InvalidInput
from mixhouse.keys.hd import HdKeyring
from tests.fixtures.anvil import (
    CONTRACTS,
    Anvil,
    compile_contracts,
    deploy_test_token,
    make_evm_adapter,
    running_anvil,
    token_bytecode,
)

TOKENS_ARTIFACT = CONTRACTS / "test_tokens_artifact.json"
# OpenZeppelin Contracts' ERC20 (npm @openzeppelin/contracts, tests/data/contracts/OzToken.sol).
OZ_TOKEN_ARTIFACT = CONTRACTS / "oz_token_artifact.json"
# Keys of these tests only (BIP-44 account 7), so no other test's nonces or balances move.
DEPLOYER, ALICE, BOB, CAROL = (f"m/44'/60'/7'/0/{i}" for i in range(4))
ETH = 10**18
TOKEN_AMOUNT = 2_500 * 10**6  # 2,500 units of a 6-decimal token
ETH_AMOUNT = ETH // 4
RECEIPT_TIMEOUT_SECONDS = 60.0
# A limit high enough for any HTLC call, for transactions that must reach the chain and revert
# there (the default gas estimate would refuse to sign them).
FORCED_GAS = 300_000


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    """This module's own anvil: its timelock tests move the chain's time on
    (``evm_increaseTime``), which must not reach the session's node (see its fixture)."""
    with running_anvil() as node:
        yield node


GAS_USED: dict[str, int] = {}


def test_committed_artifacts_are_what_the_sources_compile_to(tmp_path: Path) -> None:
    compile_contracts(tmp_path)
    for committed in (ARTIFACT_PATH, TOKENS_ARTIFACT, OZ_TOKEN_ARTIFACT):
        rebuilt = tmp_path / committed.name
        assert rebuilt.read_bytes() == committed.read_bytes(), f"run `make contracts`: {committed.name} is stale"
    artifact = json.loads(ARTIFACT_PATH.read_text())
    assert artifact["compiler"].startswith("0.8.28+")
    assert artifact["settings"]["evmVersion"] == "cancun"


@dataclass
class Env:
    anvil: Anvil
    adapter: EvmAdapter
    htlc: EvmHtlc
    tokens: dict[str, str]  # "erc20" / "usdt" / "fee" / "oz" -> address

    def address(self, key_ref: str) -> str:
        return self.adapter.key_address(key_ref)

    async def send(self, prepared: PreparedSend) -> TxReceipt:
        """Broadcast ``prepared`` and wait for its receipt (anvil automines)."""
        assert prepared.txid is not None
        await self.adapter.broadcast(prepared)
        deadline = time.monotonic() + RECEIPT_TIMEOUT_SECONDS
        while (receipt := await self.adapter.receipt(prepared.txid)) is None:
            assert time.monotonic() < deadline, f"{prepared.txid} not mined"
            await asyncio.sleep(0.02)
        return receipt

    async def nonce(self, key_ref: str) -> int:
        return await self.adapter.next_nonce(self.address(key_ref))

    async def call_tx(self, key_ref: str, to: str, data: bytes, *, gas: int = FORCED_GAS) -> dict[str, Any]:
        """A call mined even if it reverts (a fixed gas limit: no estimate refuses it)."""
        return await send_call(self.adapter, key_ref, to=to, data=data, gas=gas, check=False)

    async def timestamp(self) -> int:
        block: dict[str, Any] = await self.anvil.rpc("eth_getBlockByNumber", ["latest", False])
        return int(block["timestamp"], 16)

    async def pass_time(self, seconds: int) -> None:
        await self.anvil.rpc("evm_increaseTime", [seconds])
        await self.anvil.rpc("evm_mine")

    async def balance(self, asset: str, owner: str) -> int:
        if asset == "eth":
            return await self.anvil.balance(owner)
        return await self.htlc.token_balance(self.tokens[asset], owner)


@pytest_asyncio.fixture
async def env(anvil: Anvil, evm_keyring: HdKeyring) -> AsyncIterator[Env]:
    """A fresh HTLC and the test tokens (ours and OpenZeppelin's ERC20) on the session's anvil;
    Alice (the locker), Bob (the recipient) and Carol (a third party who sends claims and refunds)
    with ETH, Alice with tokens."""
    adapter = make_evm_adapter(anvil, evm_keyring, confirmations=1)
    try:
        env = Env(anvil, adapter, EvmHtlc(adapter, "0x" + "11" * 20), {})
        for key_ref in (DEPLOYER, ALICE, BOB, CAROL):
            await anvil.fund(env.address(key_ref), 10 * ETH)
        env.htlc = EvmHtlc(adapter, await deploy_contract(adapter, DEPLOYER, htlc_artifact()["bytecode"]))
        holders = {env.address(ALICE): 100 * TOKEN_AMOUNT}
        for asset, name in (("erc20", "TestToken"), ("usdt", "NoReturnToken"), ("fee", "FeeToken"), ("oz", "OzToken")):
            env.tokens[asset] = await deploy_test_token(adapter, DEPLOYER, name, holders=holders)
        yield env
    finally:
        await adapter.aclose()


async def _lock(env: Env, asset: str, *, hash_lock: bytes, seconds: int = 3_600) -> SwapTerms:
    """Alice locks for Bob (approving the token first); returns the terms."""
    token = None if asset == "eth" else env.tokens[asset]
    amount = ETH_AMOUNT if asset == "eth" else TOKEN_AMOUNT
    terms = SwapTerms(hash_lock, env.address(ALICE), env.address(BOB), token, amount, await env.timestamp() + seconds)
    if token is not None:
        approve = await env.htlc.prepare_approve(
            key_ref=ALICE, token=token, amount=amount, nonce=await env.nonce(ALICE)
        )
        assert (await env.send(approve))["status"] == 1
    lock = await env.htlc.prepare_lock(key_ref=ALICE, terms=terms, nonce=await env.nonce(ALICE))
    receipt = await env.send(lock)
    assert receipt["status"] == 1
    GAS_USED[f"lock {asset}"] = int(receipt["gasUsed"])
    return terms


async def _forced(env: Env, prepare: Any, **kwargs: Any) -> TxReceipt:
    """Sign with a fixed gas limit (no estimate), send, and return the mined receipt."""
    prepared = await prepare(nonce=await env.nonce(kwargs["key_ref"]), gas=FORCED_GAS, **kwargs)
    return await env.send(prepared)


async def test_swap_id_is_the_contracts(env: Env) -> None:
    terms = SwapTerms(secret_hash(new_secret()), env.address(ALICE), env.address(BOB), None, 5, 1_900_000_000)
    data = keccak(text="swapId(bytes32,address,address,address,uint256,uint64)")[:4] + abi_encode(
        ["bytes32", "address", "address", "address", "uint256", "uint64"],
        [terms.hash_lock, terms.sender, terms.recipient, "0x" + "00" * 20, terms.amount, terms.expiry],
    )
    assert await env.adapter.call(to=env.htlc.address, data=data) == env.htlc.swap_id(terms)


@pytest.mark.parametrize("asset", ["eth", "erc20", "usdt", "oz"])
async def test_lock_verify_and_claim_reveals_the_secret(env: Env, asset: str) -> None:
    secret = new_secret()
    start = await env.anvil.block_number()
    bob_before = await env.balance(asset, env.address(BOB))
    terms = await _lock(env, asset, hash_lock=secret_hash(secret))
    swap_id = env.htlc.swap_id(terms)

    # The participant's check: the agreed terms are locked; any other term is refused.
    swap = await env.htlc.verify_lock(terms)
    assert swap.state is SwapState.LOCKED
    assert swap.terms == terms
    for changed in (
        SwapTerms(terms.hash_lock, terms.sender, terms.recipient, terms.token, terms.amount + 1, terms.expiry),
        SwapTerms(terms.hash_lock, terms.sender, env.address(CAROL), terms.token, terms.amount, terms.expiry),
        SwapTerms(secret_hash(new_secret()), terms.sender, terms.recipient, terms.token, terms.amount, terms.expiry),
        SwapTerms(terms.hash_lock, terms.sender, terms.recipient, terms.token, terms.amount, terms.expiry - 1),
    ):
        with pytest.raises(HtlcMismatch) as info:
            await env.htlc.verify_lock(changed)
        assert info.value.field == "swap_id"

    # A wrong 32-byte secret and a 33-byte one that starts with the right secret: both revert.
    for bad in (new_secret(), secret + b"\x00"):
        with pytest.raises(CallReverted):
            await env.htlc.prepare_claim(key_ref=CAROL, swap_id=swap_id, preimage=bad, nonce=await env.nonce(CAROL))
        receipt = await _forced(env, env.htlc.prepare_claim, key_ref=CAROL, swap_id=swap_id, preimage=bad)
        assert receipt["status"] == 0
    # No refund before the expiry.
    with pytest.raises(CallReverted):
        await env.htlc.prepare_refund(key_ref=CAROL, swap_id=swap_id, nonce=await env.nonce(CAROL))
    assert (await _forced(env, env.htlc.prepare_refund, key_ref=CAROL, swap_id=swap_id))["status"] == 0

    # Carol, a third party, claims with the secret: Bob is paid exactly the amount.
    claim = await env.htlc.prepare_claim(key_ref=CAROL, swap_id=swap_id, preimage=secret, nonce=await env.nonce(CAROL))
    receipt = await env.send(claim)
    assert receipt["status"] == 1
    GAS_USED[f"claim {asset}"] = int(receipt["gasUsed"])
    assert await env.balance(asset, env.address(BOB)) == bob_before + terms.amount
    assert await env.balance(asset, env.htlc.address) == 0

    # The initiator's node finds the secret in the Claimed event.
    assert await env.htlc.find_secret(swap_id, terms.hash_lock, from_block=start) == secret
    kinds = [event.kind for event in await env.htlc.events(swap_id, from_block=start)]
    assert kinds == ["locked", "claimed"]
    found = await env.htlc.swap(swap_id)
    assert found is not None
    assert found.state is SwapState.CLAIMED
    with pytest.raises(HtlcMismatch) as info:
        await env.htlc.verify_lock(terms)
    assert info.value.field == "state"

    # Claimed once: a second claim reverts, and so does a refund even after the expiry.
    assert (await _forced(env, env.htlc.prepare_claim, key_ref=CAROL, swap_id=swap_id, preimage=secret))["status"] == 0
    await env.pass_time(3_601)
    assert (await _forced(env, env.htlc.prepare_refund, key_ref=CAROL, swap_id=swap_id))["status"] == 0
    assert await env.balance(asset, env.address(BOB)) == bob_before + terms.amount


@pytest.mark.parametrize("asset", ["eth", "erc20", "usdt", "oz"])
async def test_refund_after_expiry_then_no_claim(env: Env, asset: str) -> None:
    secret = new_secret()
    terms = await _lock(env, asset, hash_lock=secret_hash(secret), seconds=600)
    swap_id = env.htlc.swap_id(terms)
    alice_after_lock = await env.balance(asset, env.address(ALICE))
    await env.pass_time(601)
    # Past the expiry the secret no longer claims.
    assert (await _forced(env, env.htlc.prepare_claim, key_ref=CAROL, swap_id=swap_id, preimage=secret))["status"] == 0
    refund = await env.htlc.prepare_refund(key_ref=CAROL, swap_id=swap_id, nonce=await env.nonce(CAROL))
    receipt = await env.send(refund)
    assert receipt["status"] == 1
    GAS_USED[f"refund {asset}"] = int(receipt["gasUsed"])
    # Carol paid the gas; Alice gets exactly her amount back.
    assert await env.balance(asset, env.address(ALICE)) == alice_after_lock + terms.amount
    found = await env.htlc.swap(swap_id)
    assert found is not None
    assert found.state is SwapState.REFUNDED
    assert (await _forced(env, env.htlc.prepare_claim, key_ref=CAROL, swap_id=swap_id, preimage=secret))["status"] == 0
    assert (await _forced(env, env.htlc.prepare_refund, key_ref=CAROL, swap_id=swap_id))["status"] == 0
    assert await env.htlc.find_secret(swap_id, terms.hash_lock, from_block=0) is None


async def test_a_33_byte_secret_never_claims(env: Env) -> None:
    # The hash of a 33-byte value: only the contract's length check stands in the way.
    long_secret = new_secret() + b"\x01"

    terms = await _lock(env, "eth", hash_lock=hashlib.sha256(long_secret).digest())
    swap_id = env.htlc.swap_id(terms)
    with pytest.raises(CallReverted):
        await env.htlc.prepare_claim(key_ref=CAROL, swap_id=swap_id, preimage=long_secret, nonce=await env.nonce(CAROL))
    receipt = await _forced(env, env.htlc.prepare_claim, key_ref=CAROL, swap_id=swap_id, preimage=long_secret)
    assert receipt["status"] == 0
    found = await env.htlc.swap(swap_id)
    assert found is not None
    assert found.state is SwapState.LOCKED


async def test_bad_locks_are_refused(env: Env) -> None:
    now = await env.timestamp()
    alice, bob = env.address(ALICE), env.address(BOB)
    with pytest.raises(InvalidInput):
        SwapTerms(secret_hash(new_secret()), alice, bob, None, 0, now + 60)
    # An expiry in the past.
    past = SwapTerms(secret_hash(new_secret()), alice, bob, None, ETH_AMOUNT, now - 1)
    with pytest.raises(CallReverted):
        await env.htlc.prepare_lock(key_ref=ALICE, terms=past, nonce=await env.nonce(ALICE))
    # A token lock without the allowance (USDT-like: its transferFrom reverts, returns nothing).
    unapproved = SwapTerms(secret_hash(new_secret()), alice, bob, env.tokens["usdt"], TOKEN_AMOUNT, now + 600)
    with pytest.raises(CallReverted):
        await env.htlc.prepare_lock(key_ref=ALICE, terms=unapproved, nonce=await env.nonce(ALICE))
    # A fee-on-transfer token: the contract would receive less than the swap promises.
    fee_token = env.tokens["fee"]
    approve = await env.htlc.prepare_approve(
        key_ref=ALICE, token=fee_token, amount=TOKEN_AMOUNT, nonce=await env.nonce(ALICE)
    )
    assert (await env.send(approve))["status"] == 1
    short = SwapTerms(secret_hash(new_secret()), alice, bob, fee_token, TOKEN_AMOUNT, now + 600)
    with pytest.raises(CallReverted):
        await env.htlc.prepare_lock(key_ref=ALICE, terms=short, nonce=await env.nonce(ALICE))
    assert (await _forced(env, env.htlc.prepare_lock, key_ref=ALICE, terms=short))["status"] == 0
    assert await env.htlc.swap(env.htlc.swap_id(short)) is None
    # The key must be the sender's.
    with pytest.raises(InvalidInput):
        await env.htlc.prepare_lock(key_ref=BOB, terms=unapproved, nonce=0)
    # The same terms twice: the second lock reverts (SwapExists), the first stands.
    terms = await _lock(env, "eth", hash_lock=secret_hash(new_secret()))
    again = await _forced(env, env.htlc.prepare_lock, key_ref=ALICE, terms=terms)
    assert again["status"] == 0
    assert (await env.htlc.verify_lock(terms)).state is SwapState.LOCKED


async def test_a_recipient_that_reenters_gets_paid_once(env: Env) -> None:
    attacker = await deploy_contract(env.adapter, DEPLOYER, token_bytecode("ReentrantRecipient"))
    secret = new_secret()
    now = await env.timestamp()
    alice = env.address(ALICE)
    # Two swaps in the contract: the attacker's, and Bob's that a second payout would drain.
    mine = SwapTerms(secret_hash(secret), alice, attacker, None, ETH_AMOUNT, now + 3_600)
    bobs = SwapTerms(secret_hash(new_secret()), alice, env.address(BOB), None, ETH_AMOUNT, now + 3_600)
    for terms in (mine, bobs):
        lock = await env.htlc.prepare_lock(key_ref=ALICE, terms=terms, nonce=await env.nonce(ALICE))
        assert (await env.send(lock))["status"] == 1
    swap_id = env.htlc.swap_id(mine)
    arm = keccak(text="arm(address,bytes32,bytes)")[:4] + abi_encode(
        ["address", "bytes32", "bytes"], [env.htlc.address, swap_id, secret]
    )
    assert (await env.call_tx(DEPLOYER, attacker, arm))["status"] == 1
    claim = await env.htlc.prepare_claim(key_ref=CAROL, swap_id=swap_id, preimage=secret, nonce=await env.nonce(CAROL))
    assert (await env.send(claim))["status"] == 1

    async def counter(name: str) -> int:
        return int.from_bytes(await env.adapter.call(to=attacker, data=keccak(text=f"{name}()")[:4]), "big")

    assert await counter("attempts") == 1  # the payment did call back into the HTLC
    assert await counter("reentered") == 0  # and neither the claim nor the refund went through
    assert await env.anvil.balance(attacker) == ETH_AMOUNT
    assert await env.anvil.balance(env.htlc.address) == ETH_AMOUNT
    assert (await env.htlc.verify_lock(bobs)).state is SwapState.LOCKED


def test_print_gas_used() -> None:
    """Runs last in this file: the gas the locks, claims and refunds above used."""
    if GAS_USED:
        print("\nHTLC gas used on anvil: " + ", ".join(f"{k} {v:,}" for k, v in sorted(GAS_USED.items())))
