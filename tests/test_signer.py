"""The software signer (mixhouse.keys.signer): low S, low R, Ethereum recovery ids, and the
same signatures and transactions as the in-process signing it replaced (eth-account, embit)."""

from __future__ import annotations

import hashlib

import coincurve
import pytest
from embit.ec import PrivateKey  # type: ignore[import-untyped]
from eth_account import Account

from mixhouse.chains.base import FeeQuote
from mixhouse.chains.evm.adapter import GAS_LIMIT, EvmAdapter
from mixhouse.config import DEV_MNEMONIC
from mixhouse.keys.bip84 import Bip84Keyring, key_path, p2wpkh_address
from mixhouse.keys.hd import POOL_PATH, HdKeyring, deposit_path, evm_address
from mixhouse.keys.signer import (
    HALF_N,
    SECP256K1_N,
    SignerError,
    SoftwareSigner,
    der_signature,
    is_low_r,
    low_s,
    recovery_id,
    verify,
)

DIGESTS = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(200)]


@pytest.fixture(scope="module")
def evm_keyring() -> HdKeyring:
    return HdKeyring(DEV_MNEMONIC)


@pytest.fixture(scope="module")
def btc_keyring() -> Bip84Keyring:
    return Bip84Keyring(DEV_MNEMONIC, "regtest")


def test_low_s_flips_only_high_s() -> None:
    assert low_s(5, HALF_N) == (5, HALF_N)
    assert low_s(5, HALF_N + 1) == (5, SECP256K1_N - HALF_N - 1)


def test_der_matches_libsecp256k1(evm_keyring: HdKeyring) -> None:
    key = coincurve.PrivateKey(evm_keyring.private_key(deposit_path(0)))
    for digest in DIGESTS[:50]:
        der = key.sign(digest, hasher=None)
        compact = key.sign_recoverable(digest, hasher=None)
        r, s = int.from_bytes(compact[:32], "big"), int.from_bytes(compact[32:64], "big")
        assert der_signature(r, s) == der


def test_software_signatures_verify_with_low_s_and_recover(evm_keyring: HdKeyring) -> None:
    signer = SoftwareSigner.for_evm(evm_keyring)
    path = deposit_path(3)
    public = signer.public_key(path)
    assert len(public) == 33
    assert evm_address(public) == evm_keyring.address(path)
    for digest in DIGESTS:
        r, s = signer.sign_digest(path, digest)
        assert s <= HALF_N
        assert verify(public, digest, r, s)
        assert not verify(public, digest, r, SECP256K1_N - s)  # coincurve refuses high S
        v = recovery_id(public, digest, r, s)
        recovered = coincurve.PublicKey.from_signature_and_message(
            r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v]), digest, hasher=None
        )
        assert recovered.format() == public


def test_recovery_id_refuses_a_foreign_signature(evm_keyring: HdKeyring) -> None:
    signer = SoftwareSigner.for_evm(evm_keyring)
    r, s = signer.sign_digest(deposit_path(1), DIGESTS[0])
    with pytest.raises(SignerError):
        recovery_id(signer.public_key(deposit_path(2)), DIGESTS[0], r, s)


def test_low_r_is_embit_signing_byte_for_byte(btc_keyring: Bip84Keyring) -> None:
    """The Bitcoin path signed with embit's ``PrivateKey.sign`` before the signer existed."""
    signer = SoftwareSigner.for_bip84(btc_keyring)
    ref = key_path("regtest", 1, 4)
    assert btc_keyring.split_path(ref) == (1, 4)
    assert p2wpkh_address(signer.public_key(ref), "regtest") == btc_keyring.address(1, 4)
    old = PrivateKey(btc_keyring.private_key(1, 4))
    high_r_without_grinding = 0
    for digest in DIGESTS:
        r, s = signer.sign_digest(ref, digest, low_r=True)
        assert is_low_r(r, s)
        assert len(der_signature(r, s)) <= 70
        assert s <= HALF_N
        assert der_signature(r, s) == bytes(old.sign(digest).serialize())
        high_r_without_grinding += not is_low_r(*signer.sign_digest(ref, digest))
    assert 60 < high_r_without_grinding < 140  # about half: the grinding was exercised


def test_software_signer_refuses_unknown_refs_and_bad_digests(btc_keyring: Bip84Keyring) -> None:
    signer = SoftwareSigner.for_bip84(btc_keyring)
    with pytest.raises(ValueError, match="is not a BIP-84 key path"):
        signer.public_key("m/44'/60'/0'/0/1")
    with pytest.raises(ValueError, match="32 bytes"):
        signer.sign_digest(key_path("regtest", 0, 0), b"\x00" * 31)
    fixed = SoftwareSigner.from_keys({"a": b"\x01" * 32})
    with pytest.raises(ValueError, match="no key"):
        fixed.public_key("b")
    assert "0101" not in repr(fixed)


@pytest.mark.parametrize("from_key_index", [None, 0, 7])
async def test_evm_send_is_the_transaction_eth_account_signed(
    evm_keyring: HdKeyring, from_key_index: int | None
) -> None:
    """Same raw bytes and txid as ``Account.sign_transaction`` (the code before the signer)."""
    adapter = EvmAdapter(
        "http://127.0.0.1:9",
        chain_id=31337,
        signer=SoftwareSigner.for_evm(evm_keyring),
        confirmations=3,
        max_fee_per_gas_cap=500 * 10**9,
    )
    path = POOL_PATH if from_key_index is None else deposit_path(from_key_index)
    sender = evm_keyring.address(path)
    receiver = evm_keyring.address(deposit_path(99))
    try:
        for nonce, price in [(0, 1), (5, 3 * 10**9), (1234, 77 * 10**9 + 13)]:
            prepared = await adapter.prepare_send(
                from_address=sender,
                from_key_index=from_key_index,
                to_address=receiver,
                amount=10**18 + nonce,
                fee=FeeQuote(per_send=GAS_LIMIT * price, detail=""),
                nonce=nonce,
            )
            expected = Account.from_key(evm_keyring.private_key(path)).sign_transaction(
                {
                    "type": 2,
                    "chainId": 31337,
                    "nonce": nonce,
                    "to": receiver,
                    "value": 10**18 + nonce,
                    "gas": GAS_LIMIT,
                    "maxFeePerGas": price,
                    "maxPriorityFeePerGas": price,
                    "data": b"",
                }
            )
            assert prepared.raw_tx == bytes(expected.raw_transaction)
            assert prepared.txid == expected.hash.to_0x_hex()
            assert Account.recover_transaction(prepared.raw_tx) == sender
    finally:
        await adapter.aclose()
