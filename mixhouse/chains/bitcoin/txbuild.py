"""Build and sign P2WPKH spends offline.

Transaction format (BIP-141 segwit serialization, BIP-143 signatures, via embit):

* version 2 (BIP-68 relative lock-times are defined for version >= 2; Bitcoin Core's wallet
  also writes 2);
* every input spends a P2WPKH coin: empty scriptSig, witness ``[signature + 0x01, pubkey]``,
  signature over the BIP-143 digest with ``SIGHASH_ALL`` (the scriptCode is the P2PKH script
  of the key hash, and the digest commits to the coin's amount);
* ``nSequence = 0xfffffffd`` on every input: below ``0xfffffffe`` it signals opt-in
  replace-by-fee (BIP-125), so a stuck payout can be fee-bumped, and it keeps ``nLockTime``
  enforced; it is not a BIP-68 relative lock (the disable bit 31 is set);
* ``nLockTime`` as given (default 0). Bitcoin Core sets it to the tip height against fee
  sniping; the caller may pass that;
* outputs in the order given: the caller shuffles them (the position of the change output
  must not be predictable).

Signatures: :func:`sign_tx` computes each BIP-143 digest (embit) and asks a
:class:`~mixhouse.keys.signer.Signer` for a low-S, low-R ``(r, s)`` over it; this module
DER-encodes it (BIP-66) and builds the witness. Low R keeps every DER signature at most 71
bytes with its sighash byte, so the 68 vB input estimate of
:mod:`~mixhouse.chains.bitcoin.coinselect` is an upper bound. The software signer is RFC 6979
deterministic (the same inputs sign the same transaction, as embit's own signing did).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from embit import hashes  # type: ignore[import-untyped]
from embit.ec import PublicKey  # type: ignore[import-untyped]
from embit.script import Script, Witness, p2pkh  # type: ignore[import-untyped]
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput  # type: ignore[import-untyped]

from mixhouse.chains.bitcoin.coinselect import Coin, dust_threshold
from mixhouse.chains.bitcoin.networks import normalize_address, script_pubkey
from mixhouse.errors import InvalidAmount, InvalidInput
from mixhouse.keys.signer import Signer, SoftwareSigner, der_signature

TX_VERSION = 2
RBF_SEQUENCE = 0xFFFFFFFD
MAX_MONEY = 21_000_000 * 100_000_000


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A signed transaction ready to broadcast.

    Attributes:
        raw: the BIP-144 serialization with witnesses (what ``sendrawtransaction`` takes).
        txid: the transaction id, 64 hex characters in display order: the byte-reversed
            double SHA-256 of the serialization *without* witnesses.
        vsize: the virtual size in vbytes, ``ceil(weight / 4)`` with ``weight = 3 * base size
            + total size`` (BIP-141).
        fee: ``sum(inputs) - sum(outputs)`` in satoshi, ``>= 0``.
    """

    raw: bytes
    txid: str
    vsize: int
    fee: int


def _check_outpoint(coin: Coin) -> bytes:
    try:
        txid = bytes.fromhex(coin.txid)
    except ValueError:
        raise InvalidInput(f"coin txid {coin.txid!r} is not hex") from None
    if len(txid) != 32:
        raise InvalidInput(f"coin txid {coin.txid!r} is not 32 bytes")
    if not 0 <= coin.vout <= 0xFFFFFFFF:
        raise InvalidInput(f"coin vout {coin.vout} is out of range")
    return txid


def build_signed_tx(
    *,
    inputs: Sequence[tuple[Coin, bytes]],
    outputs: Sequence[tuple[str, int]],
    network: str,
    locktime: int = 0,
) -> SignedTx:
    """:func:`sign_tx` with the private keys given: ``inputs`` are ``(coin, 32-byte key)``
    pairs. For demos, tests and benchmarks; the adapters sign through their signer.

    Raises:
        InvalidInput: a key is not 32 bytes; otherwise as :func:`sign_tx`.
    """
    keys: dict[str, bytes] = {}
    for i, (_, secret) in enumerate(inputs):
        if len(secret) != 32:
            raise InvalidInput("a private key must be 32 bytes")
        keys[f"input/{i}"] = bytes(secret)
    return sign_tx(
        inputs=[(coin, f"input/{i}") for i, (coin, _) in enumerate(inputs)],
        signer=SoftwareSigner.from_keys(keys),
        outputs=outputs,
        network=network,
        locktime=locktime,
    )


def sign_tx(
    *,
    inputs: Sequence[tuple[Coin, str]],
    signer: Signer,
    outputs: Sequence[tuple[str, int]],
    network: str,
    locktime: int = 0,
) -> SignedTx:
    """Build and sign a transaction spending P2WPKH ``inputs`` to ``outputs``.

    Args:
        inputs: ``(coin, key reference)`` pairs; ``signer``'s key of that reference must be
            the one of ``coin.address`` (a P2WPKH address of ``network``).
        signer: holds the keys (:mod:`mixhouse.keys.signer`).
        outputs: ``(address, satoshi)`` pairs, any address type :func:`normalize_address`
            accepts; in the order they will appear.
        network: the network name (``"mainnet"``, ``"regtest"``, ...).
        locktime: ``nLockTime`` (block height below 500,000,000), default 0.

    Returns:
        The :class:`SignedTx`; its ``fee`` is ``sum(coin amounts) - sum(output amounts)``.

    Raises:
        InvalidAmount: an output below Bitcoin Core's dust threshold for its type
            (:func:`~mixhouse.chains.bitcoin.coinselect.dust_threshold`), an amount not a
            positive int, or outputs worth more than the inputs (negative fee).
        InvalidAddress: an output address is invalid or of another network.
        InvalidInput: no inputs or outputs, a duplicate outpoint, a malformed txid, a coin
            that is not P2WPKH, or a key that does not match its coin's address.
        SignerError: the signer failed (token locked or gone): nothing was built.
    """
    if not inputs:
        raise InvalidInput("a transaction needs at least one input")
    if not outputs:
        raise InvalidInput("a transaction needs at least one output")
    if not 0 <= locktime < 500_000_000:
        raise InvalidInput(f"locktime {locktime} is not a block height")

    vout: list[TransactionOutput] = []
    total_out = 0
    for address, amount in outputs:
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_MONEY:
            raise InvalidAmount(f"output amount {amount!r} is not a positive number of satoshi")
        script = script_pubkey(address, network)
        threshold = dust_threshold(script)
        if amount < threshold:
            raise InvalidAmount(
                f"output of {amount} sat to {normalize_address(address, network)} is dust (below {threshold} sat)"
            )
        vout.append(TransactionOutput(amount, Script(script)))
        total_out += amount

    vin: list[TransactionInput] = []
    signers: list[tuple[str, bytes, Script, int]] = []
    seen: set[tuple[bytes, int]] = set()
    total_in = 0
    for coin, key_ref in inputs:
        txid = _check_outpoint(coin)
        if (txid, coin.vout) in seen:
            raise InvalidInput(f"outpoint {coin.txid}:{coin.vout} is spent twice")
        seen.add((txid, coin.vout))
        if isinstance(coin.amount, bool) or not isinstance(coin.amount, int) or coin.amount <= 0:
            raise InvalidAmount(f"coin {coin.txid}:{coin.vout} has no positive amount")
        spk = script_pubkey(coin.address, network)
        if len(spk) != 22 or spk[:2] != b"\x00\x14":
            raise InvalidInput(f"coin {coin.txid}:{coin.vout} is not a P2WPKH output")
        public = signer.public_key(key_ref)
        if hashes.hash160(public) != spk[2:]:
            raise InvalidInput(f"the key given for {coin.txid}:{coin.vout} is not the key of {coin.address}")
        vin.append(TransactionInput(txid, coin.vout, sequence=RBF_SEQUENCE))
        # BIP-143: the scriptCode of a P2WPKH spend is the P2PKH script of the key hash.
        signers.append((key_ref, public, p2pkh(PublicKey.parse(public)), coin.amount))
        total_in += coin.amount

    fee = total_in - total_out
    if fee < 0:
        raise InvalidAmount(f"outputs ({total_out} sat) exceed inputs ({total_in} sat)")

    tx = Transaction(version=TX_VERSION, vin=vin, vout=vout, locktime=locktime)
    for i, (key_ref, public, script_code, amount) in enumerate(signers):
        digest = bytes(tx.sighash_segwit(i, script_code, amount, sighash=SIGHASH.ALL))
        r, s = signer.sign_digest(key_ref, digest, low_r=True)
        # BIP-141 P2WPKH witness: [DER signature || sighash type, compressed public key].
        tx.vin[i].witness = Witness([der_signature(r, s) + bytes([SIGHASH.ALL]), public])

    raw = bytes(tx.serialize())
    base_size = len(_strip_witness(tx))
    weight = 3 * base_size + len(raw)
    return SignedTx(raw=raw, txid=bytes(tx.txid()).hex(), vsize=(weight + 3) // 4, fee=fee)


def _strip_witness(tx: Transaction) -> bytes:
    """The serialization of ``tx`` without marker, flag and witnesses (what the txid hashes)."""
    stripped = Transaction(
        version=tx.version,
        vin=[TransactionInput(i.txid, i.vout, i.script_sig, i.sequence) for i in tx.vin],
        vout=list(tx.vout),
        locktime=tx.locktime,
    )
    return bytes(stripped.serialize())
