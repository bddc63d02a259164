"""Key-use audit (mixhouse.keys.audited) and signer health (mixhouse.keys.health, Pkcs11Signer.
health): every signature noted with its key id and role, never the key; the notes written as
audit entries in the caller's transaction; a token that is gone, locked or busy reported by
health() and the /metrics gauges instead of raising."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from embit import hashes  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.chains.bitcoin.coinselect import Coin
from mixhouse.chains.bitcoin.txbuild import sign_tx
from mixhouse.config import Settings
from mixhouse.db.tables import audit_log
from mixhouse.keys.audited import AuditedSigner, KeyUse, key_role, key_use_entries, recording_key_uses, unwrap
from mixhouse.keys.bip84 import Bip84Keyring, key_path
from mixhouse.keys.hd import POOL_PATH, HdKeyring, deposit_path
from mixhouse.keys.health import check_signer, signer_metrics
from mixhouse.keys.hsm import Pkcs11Signer
from mixhouse.keys.signer import HEALTH_DIGEST, SoftwareSigner
from mixhouse.money import Asset
from mixhouse.unit import unit
from tests.fixtures.softhsm import SOFTHSM_MODULE, SoftHsm

MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
DIGEST = bytes(range(32))


class _Snapshot(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def _exposition(metrics: list[Metric]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry).decode()


def test_key_roles_follow_the_paths() -> None:
    assert key_role(deposit_path(7)) == "evm-deposit"
    assert key_role(POOL_PATH) == "evm-pool"
    assert key_role(key_path("regtest", 0, 3)) == "btc-deposit"
    assert key_role(key_path("mainnet", 1, 0)) == "btc-pool"
    assert key_role("health-check") == "other"
    assert key_role("m/44'/60'/0'/0/7/1") == "other"


def test_every_signature_is_noted_with_its_key_never_the_key() -> None:
    keyring = HdKeyring(MNEMONIC)
    signer = AuditedSigner(SoftwareSigner.for_evm(keyring))
    assert signer.kind == "software"
    assert unwrap(signer) is signer.inner
    with recording_key_uses() as uses:
        r, s = signer.sign_digest(POOL_PATH, DIGEST)
        signer.sign_digest(deposit_path(2), DIGEST)
        with recording_key_uses() as inner:
            signer.sign_digest(deposit_path(3), DIGEST)
        signer.public_key(deposit_path(4))  # not a use of a private key
    assert (r, s) == signer.inner.sign_digest(POOL_PATH, DIGEST)  # the wrapper changes nothing
    pool_id = bytes(hashes.hash160(keyring_public(keyring, POOL_PATH))).hex()
    assert uses == [
        KeyUse(POOL_PATH, "evm-pool", pool_id, "software"),
        KeyUse(deposit_path(2), "evm-deposit", uses[1].key_id, "software"),
    ]
    assert [u.key_ref for u in inner] == [deposit_path(3)]
    assert (signer.signatures, signer.unrecorded) == (3, 0)
    signer.sign_digest(POOL_PATH, DIGEST)
    assert (signer.signatures, signer.unrecorded) == (4, 1)
    secret = keyring.private_key(POOL_PATH).hex()
    assert secret not in repr(uses) + repr(signer)


def keyring_public(keyring: HdKeyring, path: str) -> bytes:
    return SoftwareSigner.for_evm(keyring).public_key(path)


async def test_collectors_follow_their_own_task_and_its_threads() -> None:
    signer = AuditedSigner(SoftwareSigner.for_evm(HdKeyring(MNEMONIC)))
    started = asyncio.Event()

    async def sign(index: int) -> list[KeyUse]:
        with recording_key_uses() as uses:
            signer.sign_digest(deposit_path(index), DIGEST)
            started.set()
            await asyncio.sleep(0)  # let the other task sign meanwhile
            await asyncio.to_thread(signer.sign_digest, deposit_path(index + 100), DIGEST)
        return uses

    first, second = await asyncio.gather(sign(1), sign(2))
    assert [u.key_ref for u in first] == [deposit_path(1), deposit_path(101)]
    assert [u.key_ref for u in second] == [deposit_path(2), deposit_path(102)]
    assert signer.unrecorded == 0


def test_a_bitcoin_spend_through_the_token_notes_each_input_key(softhsm: SoftHsm) -> None:
    signer = AuditedSigner(softhsm.signer())
    refs = [key_path("regtest", 0, 5), key_path("regtest", 1, 0), key_path("regtest", 1, 0)]
    from mixhouse.keys.bip84 import p2wpkh_address  # noqa: PLC0415

    coins = [
        Coin(f"{i + 1:064x}", i, 50_000 + i, p2wpkh_address(signer.public_key(ref), "regtest"), None)
        for i, ref in enumerate(refs)
    ]
    payee = Bip84Keyring(MNEMONIC, "regtest").address(0, 0)
    with recording_key_uses() as uses:
        signed = sign_tx(
            inputs=list(zip(coins, refs, strict=True)), signer=signer, outputs=[(payee, 140_000)], network="regtest"
        )
    assert signed.txid
    assert [u.key_ref for u in uses] == refs
    assert {u.signer for u in uses} == {"pkcs11"}
    entries = key_use_entries(uses, entity_type="send", entity_id="42", purpose="payout", asset="BTC")
    # The pool key signed two inputs: one entry, two signatures.
    assert [(e.details["role"], e.details["signatures"]) for e in entries] == [("btc-deposit", 1), ("btc-pool", 2)]
    assert all(e.action == "key.used" and e.entity_id == "42" for e in entries)
    unwrap(signer).close()  # type: ignore[attr-defined]


async def test_key_use_entries_commit_with_the_transaction(engine: AsyncEngine) -> None:
    keyring = HdKeyring(MNEMONIC)
    signer = AuditedSigner(SoftwareSigner.for_evm(keyring))
    with recording_key_uses() as uses:
        signer.sign_digest(deposit_path(9), DIGEST)

    async def rolled_back() -> None:
        async with unit(engine) as work:
            for entry in key_use_entries(uses, entity_type="send", entity_id="7", purpose="sweep", asset="ETH"):
                work.audit(entry)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        await rolled_back()
    async with unit(engine) as work:
        for entry in key_use_entries(uses, entity_type="send", entity_id="7", purpose="sweep", asset="ETH"):
            work.audit(entry)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(audit_log).where(audit_log.c.action == "key.used"))).all()
        assert len(rows) == 1
        # The chain still verifies (how many entries are sealed yet depends on the server's xmin,
        # which other databases' transactions hold back).
        await audit.verify(conn)
    row = rows[0]
    assert (row.entity_type, row.entity_id, row.asset) == ("send", "7", "ETH")
    assert row.details == {
        "key_ref": deposit_path(9),
        "role": "evm-deposit",
        "key_id": uses[0].key_id,
        "signer": "software",
        "purpose": "sweep",
        "signatures": 1,
    }
    assert keyring.private_key(deposit_path(9)).hex() not in json.dumps(row.details)


# -- health -------------------------------------------------------------------------------


def test_software_health_is_ok() -> None:
    health = AuditedSigner(SoftwareSigner.for_evm(HdKeyring(MNEMONIC))).health()
    assert (health.kind, health.ok, health.present, health.logged_in, health.error) == (
        "software",
        True,
        True,
        True,
        None,
    )
    assert health.sign_seconds is not None
    assert health.sign_seconds > 0


def test_token_health_signs_with_its_own_key(softhsm: SoftHsm) -> None:
    signer = softhsm.signer()
    health = signer.health()
    assert health.ok, health.error
    assert (health.present, health.logged_in) == (True, True)
    assert health.sign_seconds is not None
    assert health.sign_seconds > 0
    # The probe key is made once, then reused.
    again = signer.health()
    assert again.ok
    assert "health-check" in signer._public
    signer.close()


def test_a_busy_token_is_reported_not_waited_for(softhsm: SoftHsm) -> None:
    signer = softhsm.signer()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with signer._lock:  # what a signature stuck inside a slow token does
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(60)
        health = signer.health(timeout=0.05)
        assert not health.ok
        assert health.error is not None
        assert health.error.startswith("busy")
    finally:
        release.set()
        thread.join(60)
    assert signer.health().ok
    signer.close()


async def test_a_hung_check_is_cut_by_its_deadline() -> None:
    class Hung:
        kind = "pkcs11"

        def __init__(self) -> None:
            self.release = threading.Event()

        def public_key(self, key_ref: str) -> bytes:
            raise NotImplementedError

        def sign_digest(self, key_ref: str, digest: bytes, *, low_r: bool = False) -> tuple[int, int]:
            raise NotImplementedError

        def health(self, timeout: float) -> object:
            self.release.wait(60)  # a PKCS#11 call that does not come back
            raise AssertionError("not reached in time")

    hung = Hung()
    try:
        health = await check_signer(hung, deadline_seconds=0.05)
    finally:
        hung.release.set()
    assert (health.ok, health.logged_in) == (False, False)
    assert health.error == "no answer within 0.05 s"


async def test_signer_gauges_of_a_runtime(database_url: str, softhsm: SoftHsm) -> None:
    settings = Settings(
        database_url=database_url,
        jobcoin_enabled=False,
        evm_enabled=True,
        bitcoin_enabled=True,
        **softhsm.settings("test-gauges/"),
    )
    rt = build_runtime(settings, database_url)
    try:
        assert set(rt.signers) == {Asset.ETH, Asset.BTC}
        assert rt.signers[Asset.ETH] is rt.signers[Asset.BTC]  # one token session for both
        assert isinstance(unwrap(rt.signers[Asset.ETH]), Pkcs11Signer)
        text = _exposition(await signer_metrics({a.value: s for a, s in rt.signers.items()}))
    finally:
        await rt.aclose()
        await rt.engine.dispose()
        unwrap(rt.signers[Asset.ETH]).close()  # type: ignore[attr-defined]
    for asset in ("BTC", "ETH"):
        assert f'mixhouse_signer_up{{asset="{asset}",signer="pkcs11"}} 1.0' in text
        assert f'mixhouse_signer_token_present{{asset="{asset}",signer="pkcs11"}} 1.0' in text
        assert f'mixhouse_signer_logged_in{{asset="{asset}",signer="pkcs11"}} 1.0' in text
        assert f'mixhouse_signer_test_signature_seconds{{asset="{asset}",signer="pkcs11"}}' in text
    assert softhsm.pin not in text


# A process of its own: SoftHSM2 reads its token directory once per process, and PKCS#11 logs
# in per process (a wrong PIN is only refused while no session of the process is logged in).
_CHILD = textwrap.dedent(
    """
    import json, shutil, sys
    from mixhouse.keys.hsm import Pkcs11Signer
    from mixhouse.keys.signer import HEALTH_DIGEST, SignerError
    module, label, pin, tokens, mode = sys.argv[1:]
    signer = Pkcs11Signer(module=module, token_label=label, pin=pin)
    out = {}
    def health():
        h = signer.health(timeout=30)
        return {"ok": h.ok, "present": h.present, "logged_in": h.logged_in, "error": h.error}
    if mode == "gone":
        out["before"] = health()
        signer.public_key("m/44'/60'/1'/0/0")
        shutil.rmtree(tokens)
        out["after"] = health()
        out["later"] = health()
    else:
        out["health"] = health()
    try:
        signer.sign_digest("m/44'/60'/1'/0/0", HEALTH_DIGEST)
        out["sign"] = "signed"
    except SignerError as exc:
        out["sign"] = "SignerError: " + str(exc)
    print(json.dumps(out))
    """
)


def _child(tmp_path: Path, mode: str, pin: str) -> dict[str, object]:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "child", "--so-pin", "5555-so", "--pin", "7777-user"],
        check=True,
        capture_output=True,
        env=env,
        timeout=60,
    )
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, SOFTHSM_MODULE, "child", pin, str(tokens), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    assert pin not in done.stdout + done.stderr
    return result


def test_a_wrong_pin_is_a_token_present_but_not_logged_in(tmp_path: Path) -> None:
    result = _child(tmp_path, "locked", "0000-wrong")
    assert result["health"] == {
        "ok": False,
        "present": True,
        "logged_in": False,
        "error": "cannot open PKCS#11 token 'child': PinIncorrect",
    }
    assert str(result["sign"]).startswith("SignerError: cannot open PKCS#11 token")


def test_a_removed_token_is_reported_and_signing_fails_as_signer_error(tmp_path: Path) -> None:
    result = _child(tmp_path, "gone", "7777-user")
    assert result["before"] == {"ok": True, "present": True, "logged_in": True, "error": None}
    after, later = result["after"], result["later"]
    assert isinstance(after, dict)
    assert isinstance(later, dict)
    assert after["ok"] is False
    assert later["ok"] is False
    assert later["logged_in"] is False  # the session was dropped; it cannot log in again
    assert str(result["sign"]).startswith("SignerError:")


def test_a_failed_signature_is_not_noted() -> None:
    signer = AuditedSigner(SoftwareSigner.from_keys({"a": b"\x01" * 32}))
    with recording_key_uses() as uses, pytest.raises(ValueError, match="32 bytes"):
        signer.sign_digest("a", b"short")
    assert uses == []
    assert signer.signatures == 0
    assert len(HEALTH_DIGEST) == 32
