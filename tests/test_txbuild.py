"""Offline signing of P2WPKH spends: parse back, recompute the txid, verify the signatures."""

from __future__ import annotations

import hashlib
import io

import coincurve
import pytest
from embit import base58, bech32  # type: ignore[import-untyped]
from embit.ec import PublicKey, Signature  # type: ignore[import-untyped]
from embit.script import Script, p2pkh  # type: ignore[import-untyped]
from embit.transaction import SIGHASH, Transaction  # type: ignore[import-untyped]

from mixhouse.chains.bitcoin.coinselect import (
    P2WPKH_OUTPUT_VBYTES,
    Coin,
    estimate_vsize,
)
from mixhouse.chains.bitcoin.networks import address_of_script, script_pubkey
from mixhouse.chains.bitcoin.txbuild import RBF_SEQUENCE, SignedTx, build_signed_tx
from mixhouse.errors import InvalidAddress, InvalidAmount, InvalidInput
from mixhouse.keys.bip84 import Bip84Keyring

# A regtest P2TR address (the BIP-350 test program) and a regtest P2SH address.
P2TR = str(bech32.encode("bcrt", 1, bytes.fromhex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")))
P2SH = str(base58.encode_check(b"\xc4" + bytes.fromhex("4e9f39ca4688ff102128ea4ccda34105324305b0")))
MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
NETWORK = "regtest"


@pytest.fixture(scope="module")
def keyring() -> Bip84Keyring:
    return Bip84Keyring(MNEMONIC, NETWORK)


def _coin(keyring: Bip84Keyring, index: int, amount: int, txid_byte: int, vout: int = 0) -> tuple[Coin, bytes]:
    coin = Coin(
        txid=bytes([txid_byte]).hex() * 32,
        vout=vout,
        amount=amount,
        address=keyring.address(0, index),
        owner=None,
    )
    return coin, keyring.private_key(0, index)


def _dsha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _non_witness_serialization(tx: Transaction) -> bytes:
    """Serialize by hand (BIP-144 'legacy' form): version | vin | vout | locktime."""

    def varint(n: int) -> bytes:
        assert n < 0xFD
        return bytes([n])

    out: bytes = tx.version.to_bytes(4, "little") + varint(len(tx.vin))
    for inp in tx.vin:
        script_sig = inp.script_sig.data
        out += bytes(reversed(inp.txid)) + bytes(inp.vout.to_bytes(4, "little"))
        out += varint(len(script_sig)) + bytes(script_sig) + bytes(inp.sequence.to_bytes(4, "little"))
    out += varint(len(tx.vout))
    for o in tx.vout:
        spk = o.script_pubkey.data
        out += bytes(o.value.to_bytes(8, "little")) + varint(len(spk)) + bytes(spk)
    return out + bytes(tx.locktime.to_bytes(4, "little"))


def _build(keyring: Bip84Keyring) -> tuple[SignedTx, list[tuple[Coin, bytes]], list[tuple[str, int]]]:
    inputs = [_coin(keyring, 0, 150_000, 0xA1, 1), _coin(keyring, 3, 90_000, 0xB2, 0)]
    outputs = [
        (keyring.address(1, 0), 100_000),  # P2WPKH change-style output
        (P2TR, 60_000),  # P2TR
        (P2SH, 70_000),  # P2SH (testnet/regtest)
    ]
    return build_signed_tx(inputs=inputs, outputs=outputs, network=NETWORK), inputs, outputs


def test_build_sign_and_parse_back(keyring: Bip84Keyring) -> None:
    signed, inputs, outputs = _build(keyring)
    tx = Transaction.read_from(io.BytesIO(signed.raw))
    assert tx.serialize() == signed.raw
    assert tx.version == 2
    assert tx.locktime == 0
    assert signed.fee == 150_000 + 90_000 - 100_000 - 60_000 - 70_000 == 10_000

    # Segwit marker and flag, then the txid is the reversed double SHA-256 of the
    # serialization without witnesses.
    assert signed.raw[4:6] == b"\x00\x01"
    stripped = _non_witness_serialization(tx)
    assert signed.txid == _dsha256(stripped)[::-1].hex()
    # BIP-141 vsize from the weight.
    weight = 3 * len(stripped) + len(signed.raw)
    assert signed.vsize == (weight + 3) // 4
    # Within the coin-selection estimate (outputs here: 31 + 43 + 32 vB).
    assert signed.vsize <= estimate_vsize(2, 31 + 43 + 32)

    # Outputs exact, in order.
    assert [(o.value, address_of_script(o.script_pubkey.data, NETWORK)) for o in tx.vout] == [
        (amount, address) for address, amount in outputs
    ]

    for i, (coin, secret) in enumerate(inputs):
        inp = tx.vin[i]
        assert inp.txid.hex() == coin.txid
        assert inp.vout == coin.vout
        assert inp.sequence == RBF_SEQUENCE
        assert inp.script_sig.data == b""
        sig_item, pubkey = inp.witness.items
        # The witness pubkey is the keyring's, and it hashes to the coin's address.
        assert pubkey == keyring.public_key(0, 3 if i else 0)
        assert pubkey == coincurve.PrivateKey(secret).public_key.format(compressed=True)
        assert (
            script_pubkey(coin.address, NETWORK)[2:]
            == hashlib.new("ripemd160", hashlib.sha256(pubkey).digest()).digest()
        )
        assert sig_item[-1] == SIGHASH.ALL
        # Verify the BIP-143 signature two ways: embit, and coincurve on the same digest.
        digest = tx.sighash_segwit(i, p2pkh(PublicKey.parse(pubkey)), coin.amount, SIGHASH.ALL)
        der = sig_item[:-1]
        assert PublicKey.parse(pubkey).verify(Signature.parse(der), digest)
        assert coincurve.PublicKey(pubkey).verify(der, digest, hasher=None)
        # Low-R grinding: at most 70 bytes of DER (the 68 vB input estimate holds).
        assert len(der) <= 70


def test_signature_binds_the_amount(keyring: Bip84Keyring) -> None:
    signed, inputs, _ = _build(keyring)
    tx = Transaction.read_from(io.BytesIO(signed.raw))
    coin, _ = inputs[0]
    sig_item, pubkey = tx.vin[0].witness.items
    wrong = tx.sighash_segwit(0, p2pkh(PublicKey.parse(pubkey)), coin.amount + 1, SIGHASH.ALL)
    assert not coincurve.PublicKey(pubkey).verify(sig_item[:-1], wrong, hasher=None)


def test_deterministic(keyring: Bip84Keyring) -> None:
    first, _, _ = _build(keyring)
    second, _, _ = _build(keyring)
    assert first == second


def test_locktime(keyring: Bip84Keyring) -> None:
    signed = build_signed_tx(
        inputs=[_coin(keyring, 0, 50_000, 1)],
        outputs=[(keyring.address(0, 1), 49_000)],
        network=NETWORK,
        locktime=850_000,
    )
    assert Transaction.read_from(io.BytesIO(signed.raw)).locktime == 850_000
    # weight 4 * 82 + 109 or so = 437 -> 110 vB: the estimate (11 + 68 + 31) is an upper bound.
    assert signed.vsize <= estimate_vsize(1, P2WPKH_OUTPUT_VBYTES) == 110


def test_dust_output_rejected(keyring: Bip84Keyring) -> None:
    coin = _coin(keyring, 0, 50_000, 1)
    # 294 sat is the P2WPKH dust threshold: 293 is dust, 294 is not.
    with pytest.raises(InvalidAmount, match="dust"):
        build_signed_tx(inputs=[coin], outputs=[(keyring.address(0, 1), 293)], network=NETWORK)
    build_signed_tx(inputs=[coin], outputs=[(keyring.address(0, 1), 294)], network=NETWORK)
    with pytest.raises(InvalidAmount, match="dust"):
        build_signed_tx(inputs=[coin], outputs=[(P2SH, 539)], network=NETWORK)


@pytest.mark.parametrize("amount", [0, -5, True])
def test_non_positive_output_rejected(keyring: Bip84Keyring, amount: int) -> None:
    with pytest.raises(InvalidAmount):
        build_signed_tx(
            inputs=[_coin(keyring, 0, 50_000, 1)], outputs=[(keyring.address(0, 1), amount)], network=NETWORK
        )


def test_negative_fee_rejected(keyring: Bip84Keyring) -> None:
    with pytest.raises(InvalidAmount, match="exceed"):
        build_signed_tx(
            inputs=[_coin(keyring, 0, 50_000, 1)], outputs=[(keyring.address(0, 1), 50_001)], network=NETWORK
        )
    zero_fee = build_signed_tx(
        inputs=[_coin(keyring, 0, 50_000, 1)], outputs=[(keyring.address(0, 1), 50_000)], network=NETWORK
    )
    assert zero_fee.fee == 0


def test_wrong_key_rejected(keyring: Bip84Keyring) -> None:
    coin, _ = _coin(keyring, 0, 50_000, 1)
    with pytest.raises(InvalidInput, match="not the key"):
        build_signed_tx(
            inputs=[(coin, keyring.private_key(0, 1))], outputs=[(keyring.address(0, 1), 40_000)], network=NETWORK
        )


def test_duplicate_outpoint_rejected(keyring: Bip84Keyring) -> None:
    coin = _coin(keyring, 0, 50_000, 1)
    with pytest.raises(InvalidInput, match="twice"):
        build_signed_tx(inputs=[coin, coin], outputs=[(keyring.address(0, 1), 40_000)], network=NETWORK)


def test_other_network_output_rejected(keyring: Bip84Keyring) -> None:
    with pytest.raises(InvalidAddress, match="mainnet"):
        build_signed_tx(
            inputs=[_coin(keyring, 0, 50_000, 1)],
            outputs=[("bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", 40_000)],
            network=NETWORK,
        )


def test_non_p2wpkh_coin_rejected(keyring: Bip84Keyring) -> None:
    coin = Coin("11" * 32, 0, 50_000, P2SH, None)
    with pytest.raises(InvalidInput, match="P2WPKH"):
        build_signed_tx(
            inputs=[(coin, keyring.private_key(0, 0))], outputs=[(keyring.address(0, 1), 40_000)], network=NETWORK
        )


@pytest.mark.parametrize("txid", ["zz" * 32, "11" * 31])
def test_bad_txid_rejected(keyring: Bip84Keyring, txid: str) -> None:
    coin = Coin(txid, 0, 50_000, keyring.address(0, 0), None)
    with pytest.raises(InvalidInput, match="txid"):
        build_signed_tx(
            inputs=[(coin, keyring.private_key(0, 0))], outputs=[(keyring.address(0, 1), 40_000)], network=NETWORK
        )


def test_empty_inputs_or_outputs(keyring: Bip84Keyring) -> None:
    with pytest.raises(InvalidInput):
        build_signed_tx(inputs=[], outputs=[(keyring.address(0, 1), 40_000)], network=NETWORK)
    with pytest.raises(InvalidInput):
        build_signed_tx(inputs=[_coin(keyring, 0, 50_000, 1)], outputs=[], network=NETWORK)


def test_script_type_of_outputs(keyring: Bip84Keyring) -> None:
    signed, _, _ = _build(keyring)
    tx = Transaction.read_from(io.BytesIO(signed.raw))
    assert [Script(o.script_pubkey.data).script_type() for o in tx.vout] == ["p2wpkh", "p2tr", "p2sh"]
