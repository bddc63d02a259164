"""End to end with every signature made by a SoftHSM2 token (MIXHOUSE_SIGNER=pkcs11): an ETH
mix on anvil and a BTC mix on bcoin; and no key, mnemonic or PIN in any log line.

The mnemonics of the HSM runs are not valid BIP-39 phrases: a software key could not even
be derived, so every transaction the chain accepted was signed inside the token. The ETH run
is also made with the software signer, to check its logs for the seed and the derived keys.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from eth_account import Account
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.db.tables import audit_log
from mixhouse.keys.audited import AuditedSigner, RetiredKeyGuard, unwrap
from mixhouse.keys.bip84 import Bip84Keyring, key_path, p2wpkh_address
from mixhouse.keys.hd import POOL_PATH, HdKeyring, deposit_path, evm_address
from mixhouse.keys.hsm import Pkcs11Signer
from mixhouse.keys.signer import SignerError
from mixhouse.logs import configure_logging
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.e2e import anvil_settings, fast_settings, wait_for_payouts
from tests.fixtures.anvil import Anvil
from tests.fixtures.bcoin import Bcoin
from tests.fixtures.softhsm import SoftHsm
from tests.test_e2e_bitcoin import BTC, bitcoin_settings, mining

ETHER = 10**18
NOT_A_MNEMONIC = "no software keys in this run"


def _audited(signer: object) -> AuditedSigner:
    """The AuditedSigner an adapter signs through (under the rotation's RetiredKeyGuard, if any)."""
    while isinstance(signer, RetiredKeyGuard):
        signer = signer.inner
    assert isinstance(signer, AuditedSigner)
    return signer


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every log line at DEBUG, for the log greps: structlog's (to stdout) and the standard
    library's (procrastinate's job lines with their arguments, web3, httpx...) in caplog."""
    configure_logging(fast_settings("postgresql://unused"), level=logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield
    structlog.reset_defaults()


def _hsm_settings(softhsm: SoftHsm) -> dict[str, Any]:
    # A fresh prefix: fresh keys, so a fresh pool, whatever other tests did.
    return softhsm.settings(f"e2e-{uuid.uuid4().hex[:12]}/")


def _assert_no_secret(text: str, secrets: list[str]) -> None:
    # Procrastinate's job lines (with their arguments), web3's and httpx's requests, ours.
    assert len(text.splitlines()) >= 20, "too few log lines captured: the grep would prove nothing"
    for secret in secrets:
        assert secret not in text, "a secret of the test settings is in the logs"


async def _keep_mining(anvil: Anvil) -> None:
    while True:
        await anvil.mine(1)
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("signer", ["pkcs11", "software"])
@pytest.mark.usefixtures("debug_logs")
async def test_eth_mix_with_every_signature_from_the_signer(
    database_url: str,
    engine: AsyncEngine,
    anvil: Anvil,
    softhsm: SoftHsm,
    signer: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    Account.enable_unaudited_hdwallet_features()
    mnemonic = Account.create_with_mnemonic()[1] if signer == "software" else NOT_A_MNEMONIC
    extra = _hsm_settings(softhsm) if signer == "pkcs11" else {}
    settings = anvil_settings(database_url, anvil, mnemonic, **extra)
    rt = build_runtime(settings, database_url)
    rt.rng = random.Random(17)
    adapter = rt.adapter("ETH")
    key_holder = unwrap(adapter._signer)  # type: ignore[attr-defined]
    assert key_holder.kind == signer
    withdrawals = [
        adapter.normalize_address("0x" + f"{random.Random(100 + i).getrandbits(160):040x}") for i in range(3)
    ]
    try:
        if signer == "pkcs11":
            assert isinstance(key_holder, Pkcs11Signer)
            assert adapter.pool_address == evm_address(key_holder.public_key(POOL_PATH))
        mix = await create_mix(rt, MixRequest("ETH", withdrawals, 0, 3))
        before = {w: await anvil.balance(w) for w in withdrawals}
        await anvil.fund(mix["deposit_address"], ETHER)
        async with background(_keep_mining(anvil)), background(run_worker(rt, database_url, concurrency=4)):
            view = await wait_for_payouts(rt, mix["id"], within=90)
        dep = view["deposits"][0]
        assert dep["amount"] == ETHER
        payouts = [s for s in view["sends"] if s["kind"] == "payout"]
        sweep = next(s for s in view["sends"] if s["kind"] == "sweep")
        gains = [await anvil.balance(w) - before[w] for w in withdrawals]
        assert sum(gains) == ETHER - dep["fee_amount"] - dep["network_fee_amount"] == dep["payout_total"]
        assert all(gain > 0 for gain in gains)
        # The chain's view: the sweep left the token's deposit key, every payout its pool key.
        index = next(i for i in range(64) if adapter.deposit_address(i) == mix["deposit_address"])
        deposit_key = evm_address(key_holder.public_key(deposit_path(index)))
        sweep_tx = await anvil.rpc("eth_getTransactionByHash", [sweep["txid"]])
        assert sweep_tx["from"].lower() == deposit_key.lower() == mix["deposit_address"].lower()
        for send in payouts:
            tx = await anvil.rpc("eth_getTransactionByHash", [send["txid"]])
            assert tx["from"].lower() == adapter.pool_address.lower()
            assert int(tx["value"], 16) == send["amount"]
        assert await anvil.balance(mix["deposit_address"]) == 0
        assert await anvil.balance(adapter.pool_address) == dep["fee_amount"]
        assert (await get_mix(rt, mix["id"]))["mix"]["state"] == "completed"
        assert (await reconcile(rt, Asset.ETH)).ok
        async with engine.connect() as conn:
            assert await audit.verify(conn) > 0
            used = (await conn.execute(select(audit_log).where(audit_log.c.action == "key.used"))).all()
        # Every signature is in the audit log: one key use per send, by the key that sent it.
        roles = {row.entity_id: (row.details["role"], row.details["signer"]) for row in used}
        assert len(used) == len(view["sends"])
        assert roles == {
            str(s["id"]): ("evm-deposit" if s["kind"] == "sweep" else "evm-pool", signer) for s in view["sends"]
        }
        assert _audited(adapter._signer).unrecorded == 0  # type: ignore[attr-defined]
    finally:
        await rt.aclose()
        await rt.engine.dispose()
        if isinstance(key_holder, Pkcs11Signer):
            key_holder.close()
    captured = capfd.readouterr()
    secrets = [softhsm.pin, mnemonic]
    if signer == "software":
        keyring = HdKeyring(mnemonic)
        for path in [POOL_PATH, *(deposit_path(i) for i in range(index + 1))]:
            secret = keyring.private_key(path)
            secrets += [secret.hex(), "0x" + secret.hex()]
        secrets += [" ".join(mnemonic.split()[:4])]  # not even the first words
    _assert_no_secret(captured.out + captured.err + caplog.text, secrets)


@pytest.mark.usefixtures("debug_logs")
async def test_btc_mix_with_every_signature_from_the_token(
    database_url: str,
    engine: AsyncEngine,
    bcoin: Bcoin,
    softhsm: SoftHsm,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = bitcoin_settings(database_url, bcoin, bitcoin_mnemonic=NOT_A_MNEMONIC, **_hsm_settings(softhsm))
    rt = build_runtime(settings, database_url)
    rt.rng = random.Random(23)
    adapter = rt.adapter("BTC")
    key_holder = unwrap(adapter._signer)  # type: ignore[attr-defined]
    assert isinstance(key_holder, Pkcs11Signer)
    user = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")
    withdrawals = [user.address(0, i) for i in range(3)]
    try:
        assert adapter.pool_address == p2wpkh_address(key_holder.public_key(key_path("regtest", 1, 0)), "regtest")
        mix = await create_mix(rt, MixRequest("BTC", withdrawals, 0, 3))
        await bcoin.fund(mix["deposit_address"], BTC)
        await bcoin.fund(adapter.pool_address, 2 * BTC)  # the operator's liquidity, to the token's key
        async with mining(bcoin), background(run_worker(rt, database_url, concurrency=4)):
            view = await wait_for_payouts(rt, mix["id"], within=120)
        dep = view["deposits"][0]
        assert dep["amount"] == BTC
        payouts = [s for s in view["sends"] if s["kind"] == "payout"]
        assert sum(p["amount"] for p in payouts) == dep["payout_total"]
        assert dep["payout_total"] == dep["amount"] - dep["fee_amount"] - dep["network_fee_amount"]
        received = dict.fromkeys(withdrawals, 0)
        for txid in {send["txid"] for send in payouts}:
            tx = await bcoin.rpc("getrawtransaction", txid, True)
            assert tx["confirmations"] >= 2
            for vin in tx["vin"]:
                # Every input was signed by the token: its witness key is one of the token's.
                assert len(vin["txinwitness"]) == 2
                assert len(vin["txinwitness"][0]) <= 2 * 71  # low R, as the software signer
            for out in tx["vout"]:
                address = out["scriptPubKey"].get("address")
                if address in received:
                    received[address] += round(out["value"] * BTC)
        assert sum(received.values()) == dep["payout_total"]
        assert all(amount > 0 for amount in received.values())
        for address in withdrawals:
            assert await adapter.balance(address) == received[address]
        assert (await reconcile(rt, Asset.BTC)).ok
        async with engine.connect() as conn:
            assert await audit.verify(conn) > 0
            used = (await conn.execute(select(audit_log).where(audit_log.c.action == "key.used"))).all()
        # Every input's signature is in the audit log, by the token, on its batch or send.
        inputs = 0
        for txid in {send["txid"] for send in payouts}:
            inputs += len((await bcoin.rpc("getrawtransaction", txid, True))["vin"])
        assert sum(row.details["signatures"] for row in used) == inputs
        assert {row.details["signer"] for row in used} == {"pkcs11"}
        assert _audited(adapter._signer).unrecorded == 0  # type: ignore[attr-defined]
    finally:
        await rt.aclose()
        await rt.engine.dispose()
        key_holder.close()
    captured = capfd.readouterr()
    _assert_no_secret(captured.out + captured.err + caplog.text, [softhsm.pin])


async def test_a_token_that_is_gone_delays_sends_and_fails_none(
    database_url: str, anvil: Anvil, softhsm: SoftHsm
) -> None:
    """The token goes away after the deposit address is issued: the sweep waits (SignerError
    is a ChainError: retried), nothing is marked failed; the token is back: the mix completes."""
    settings = anvil_settings(database_url, anvil, NOT_A_MNEMONIC, **_hsm_settings(softhsm))
    rt = build_runtime(settings, database_url)
    adapter = rt.adapter("ETH")
    key_holder = unwrap(adapter._signer)  # type: ignore[attr-defined]
    assert isinstance(key_holder, Pkcs11Signer)
    withdrawal = adapter.normalize_address("0x" + f"{random.Random(7).getrandbits(160):040x}")
    refused = 0
    real_open = key_holder._open

    def unplugged() -> Any:
        nonlocal refused
        refused += 1
        raise SignerError("cannot open PKCS#11 token 'mixhouse-test': DeviceRemoved")

    try:
        mix = await create_mix(rt, MixRequest("ETH", [withdrawal], 0, 3))
        key_holder.close()
        key_holder._open = unplugged  # type: ignore[method-assign]
        await anvil.fund(mix["deposit_address"], ETHER // 2)
        async with background(_keep_mining(anvil)), background(run_worker(rt, database_url, concurrency=4)):
            for _ in range(300):
                if refused >= 3:
                    break
                await asyncio.sleep(0.1)
            assert refused >= 3, "the worker never tried to sign"
            view = await get_mix(rt, mix["id"])
            assert [s["state"] for s in view["sends"] if s["state"] in ("failed", "signed", "confirmed")] == []
            assert view["deposits"][0]["state"] != "failed"
            key_holder._open = real_open  # type: ignore[method-assign]
            view = await wait_for_payouts(rt, mix["id"], within=120)
        assert all(s["state"] == "confirmed" for s in view["sends"])
        assert await anvil.balance(withdrawal) == view["deposits"][0]["payout_total"]
    finally:
        await rt.aclose()
        await rt.engine.dispose()
        key_holder.close()
