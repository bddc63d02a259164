"""Bitcoin pool generations' keys (issue 12, key rotation), the part below the mixer: generation
``g`` is the change chain of BIP-84 account ``g`` (``m/84'/c'/g'/1/i``), stored as
``key_chain = 2g + 1``; the retired-key guard refuses a whole generation by its path prefix."""

from __future__ import annotations

import pytest
from embit import bip32, bip39  # type: ignore[import-untyped]

from mixhouse.keys.audited import KeyRetired, RetiredKeyGuard, key_role
from mixhouse.keys.bip84 import (
    Bip84Keyring,
    coin_key_path,
    generation_key_prefix,
    generation_of_key_chain,
    key_path,
    p2wpkh_address,
    pool_key_chain,
)
from mixhouse.keys.signer import SoftwareSigner

# The BIP-84 test-vector mnemonic (public).
MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


def _embit_key(path: str) -> bytes:
    """The private key at ``path`` derived independently by embit from the seed."""
    root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(MNEMONIC))
    return bytes(root.derive(path).key.serialize())


def test_account_zero_chains_keep_their_numbers() -> None:
    for chain in (0, 1):
        for index in (0, 5):
            assert coin_key_path("regtest", chain, index) == key_path("regtest", chain, index)
    assert pool_key_chain(0) == 1
    assert generation_of_key_chain(1) == 0
    assert generation_of_key_chain(0) is None  # deposit coins are not a generation's keys


@pytest.mark.parametrize("generation", [1, 2, 7])
def test_generation_paths(generation: int) -> None:
    chain = pool_key_chain(generation)
    assert chain == 2 * generation + 1
    assert generation_of_key_chain(chain) == generation
    path = coin_key_path("regtest", chain, 3)
    assert path == f"m/84'/1'/{generation}'/1/3"
    assert path.startswith(generation_key_prefix("regtest", generation))
    assert generation_key_prefix("mainnet", generation) == f"m/84'/0'/{generation}'/1/"
    assert key_role(path) == "btc-pool"
    assert generation_of_key_chain(2 * generation) is None


def test_bad_chains_refused() -> None:
    with pytest.raises(ValueError, match="must be"):
        coin_key_path("regtest", -1, 0)
    with pytest.raises(ValueError, match="must be"):
        coin_key_path("regtest", 2**32, 0)
    with pytest.raises(ValueError, match="must be"):
        generation_of_key_chain(-3)


def test_keyring_signs_for_any_account_exactly() -> None:
    keyring = Bip84Keyring(MNEMONIC, "mainnet")
    for path in ("m/84'/0'/0'/1/0", "m/84'/0'/1'/1/0", "m/84'/0'/3'/1/9", "m/84'/0'/2'/0/4"):
        assert keyring.private_key_at(path) == _embit_key(path)
    # Account 0 through either door is the same key (the BIP-84 test vector's change key).
    assert keyring.private_key_at("m/84'/0'/0'/1/0") == keyring.private_key(1, 0)
    for bad in ("m/84'/1'/1'/1/0", "m/84'/0'/1/1/0", "m/44'/0'/1'/1/0", "m/84'/0'/1'/2/0", "m/84'/0'/1'/1"):
        with pytest.raises(ValueError, match=r"not a BIP-84|must be"):
            keyring.private_key_at(bad)
    signer = SoftwareSigner.for_bip84(keyring)
    public = signer.public_key("m/84'/0'/1'/1/0")
    assert p2wpkh_address(public, "mainnet").startswith("bc1q")
    assert public != signer.public_key("m/84'/0'/0'/1/0")


def test_guard_refuses_a_retired_generation_by_prefix() -> None:
    keyring = Bip84Keyring(MNEMONIC, "regtest")
    guard = RetiredKeyGuard(SoftwareSigner.for_bip84(keyring))
    digest = bytes(range(32))
    old, new, deposit = "m/84'/1'/0'/1/12345", "m/84'/1'/1'/1/0", "m/84'/1'/0'/0/3"
    for ref in (old, new, deposit):
        guard.sign_digest(ref, digest)
    guard.set_retired(frozenset({generation_key_prefix("regtest", 0), "m/44'/60'/1'/0/0"}))
    with pytest.raises(KeyRetired):
        guard.sign_digest(old, digest)
    with pytest.raises(KeyRetired):
        guard.sign_digest("m/44'/60'/1'/0/0", digest)
    # Generation 1 and the deposit chain of account 0 still sign; a public key is still read.
    guard.sign_digest(new, digest)
    guard.sign_digest(deposit, digest)
    assert guard.public_key(old)
    guard.set_retired(frozenset())
    guard.sign_digest(old, digest)
