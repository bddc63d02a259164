"""The Bitcoin leg of an atomic swap: a P2WSH hash-time-locked contract (issue 10, part 1).

The witness script is BIP-199's HTLC with decred/atomicswap's secret-size check, locked to key
hashes and to an absolute block height (BIP-65 ``OP_CHECKLOCKTIMEVERIFY``)::

    OP_IF
        OP_SIZE 32 OP_EQUALVERIFY OP_SHA256 <H> OP_EQUALVERIFY OP_DUP OP_HASH160 <claim pkh>
    OP_ELSE
        <lock height> OP_CHECKLOCKTIMEVERIFY OP_DROP OP_DUP OP_HASH160 <refund pkh>
    OP_ENDIF
    OP_EQUALVERIFY OP_CHECKSIG

(94 bytes for a height of one pushed byte, 96 for the three bytes of today's mainnet heights).
The coins go to its P2WSH address (``OP_0 <sha256(script)>``, BIP-141); the lock itself is an
ordinary payment there (:func:`~mixhouse.chains.bitcoin.txbuild.sign_tx` pays any address).

Spending (BIP-143 signatures over the witness script as scriptCode, ``SIGHASH_ALL``):

* claim: witness ``<sig> <pubkey> <secret> 01 <script>``, before or after the lock height;
  the secret becomes public in the witness, where :func:`extract_secret` reads it;
* refund: witness ``<sig> <pubkey> <empty> <script>`` with ``nLockTime = lock height`` and
  ``nSequence = 0xfffffffe`` (CLTV needs a non-final sequence and ``nLockTime >= height``).
  A transaction is final in a block of height ``> nLockTime`` (consensus ``IsFinalTx``), so
  the refund is accepted once the tip is at the lock height, and refused before it with
  ``-26 non-final``.

The selector is exactly ``01`` or empty: witness v0 scripts enforce MINIMALIF as policy. Heights
only, no timestamps: time locks compare with the median time past, which lags and is easy to
move on regtest. Signing goes through a :class:`~mixhouse.keys.signer.Signer` by key
reference; this module never holds a private key. The signing functions are synchronous (a
token call blocks its thread): a coroutine runs them in a
:class:`~mixhouse.keys.offload.SigningThread`, as :class:`mixhouse.otc.swaps.legs.BitcoinLeg`
does, never on the event loop. Amounts are satoshi, fee rates sat/vB.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from embit import hashes  # type: ignore[import-untyped]
from embit.script import Script, Witness  # type: ignore[import-untyped]
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput  # type: ignore[import-untyped]

from mixhouse.chains.bitcoin.coinselect import FeeTooHigh, dust_threshold
from mixhouse.chains.bitcoin.networks import address_of_script, script_pubkey
from mixhouse.chains.bitcoin.parse import BlockParseError, Tx, parse_tx
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.chains.bitcoin.txbuild import MAX_MONEY, RBF_SEQUENCE, TX_VERSION, SignedTx
from mixhouse.chains.htlc import SECRET_BYTES, HtlcMismatch, check_hash
from mixhouse.errors import ChainError, InvalidAmount, InvalidInput
from mixhouse.keys.signer import Signer, der_signature

# Opcodes (Bitcoin Core src/script/script.h).
OP_0 = 0x00
OP_PUSHDATA1 = 0x4C
OP_1 = 0x51
OP_IF = 0x63
OP_ELSE = 0x67
OP_ENDIF = 0x68
OP_DROP = 0x75
OP_DUP = 0x76
OP_SIZE = 0x82
OP_EQUALVERIFY = 0x88
OP_SHA256 = 0xA8
OP_HASH160 = 0xA9
OP_CHECKSIG = 0xAC
OP_CHECKLOCKTIMEVERIFY = 0xB1

# nSequence of a refund: below 0xffffffff so nLockTime (and so CLTV) is enforced (BIP-65).
REFUND_SEQUENCE = 0xFFFFFFFE
# nLockTime values from this one on are unix times, not heights (consensus LOCKTIME_THRESHOLD).
LOCKTIME_THRESHOLD = 500_000_000
# A DER signature with its sighash byte is at most 73 bytes (72 for low R); the vsize of a
# spend is computed with this many, so the fee rate paid is never below the one asked.
MAX_SIGNATURE_BYTES = 73
# The witness selector that takes the OP_IF (claim) branch; the empty item takes OP_ELSE.
CLAIM_SELECTOR = b"\x01"


@dataclass(frozen=True, slots=True)
class HtlcTerms:
    """What a Bitcoin HTLC commits to.

    Attributes:
        secret_hash: ``sha256(secret)``, 32 bytes.
        claim_pkh: HASH160 of the compressed public key that may claim with the secret, 20 bytes.
        refund_pkh: HASH160 of the compressed public key that may refund, 20 bytes.
        lock_height: the block height from which the refund is valid (``nLockTime``), in
            ``[1, 500_000_000)``.
    """

    secret_hash: bytes
    claim_pkh: bytes
    refund_pkh: bytes
    lock_height: int

    def __post_init__(self) -> None:
        check_hash(self.secret_hash, "secret_hash")
        if len(self.claim_pkh) != 20 or len(self.refund_pkh) != 20:
            raise InvalidInput("claim_pkh and refund_pkh must be 20-byte HASH160s")
        if isinstance(self.lock_height, bool) or not 0 < self.lock_height < LOCKTIME_THRESHOLD:
            raise InvalidInput(f"lock_height {self.lock_height!r} is not a block height")


def pubkey_hash(public_key: bytes) -> bytes:
    """HASH160 (RIPEMD-160 of SHA-256) of a 33-byte compressed public key.

    Raises:
        InvalidInput: the key is not 33 bytes starting with 02 or 03.
    """
    if len(public_key) != 33 or public_key[0] not in (2, 3):
        raise InvalidInput("a compressed public key is 33 bytes starting with 02 or 03")
    return bytes(hashes.hash160(public_key))


def _script_num(value: int) -> bytes:
    """The minimal push of a positive script number (what MINIMALDATA requires and Core's
    ``CScript << int64`` writes): ``OP_1..OP_16`` up to 16, else little-endian bytes with a
    zero byte added when the top bit would read as a sign."""
    if 1 <= value <= 16:
        return bytes([OP_1 + value - 1])
    body = value.to_bytes((value.bit_length() + 7) // 8, "little")
    if body[-1] & 0x80:
        body += b"\x00"
    return bytes([len(body)]) + body


def htlc_script(terms: HtlcTerms) -> bytes:
    """The witness script of ``terms`` (see the module docstring), 94-96 bytes."""
    return (
        bytes([OP_IF, OP_SIZE, 1, SECRET_BYTES, OP_EQUALVERIFY, OP_SHA256, 32])
        + terms.secret_hash
        + bytes([OP_EQUALVERIFY, OP_DUP, OP_HASH160, 20])
        + terms.claim_pkh
        + bytes([OP_ELSE])
        + _script_num(terms.lock_height)
        + bytes([OP_CHECKLOCKTIMEVERIFY, OP_DROP, OP_DUP, OP_HASH160, 20])
        + terms.refund_pkh
        + bytes([OP_ENDIF, OP_EQUALVERIFY, OP_CHECKSIG])
    )


def htlc_script_pubkey(script: bytes) -> bytes:
    """The P2WSH output script of a witness script: ``OP_0 <sha256(script)>`` (34 bytes)."""
    return bytes([OP_0, 32]) + hashlib.sha256(script).digest()


def htlc_address(terms: HtlcTerms, network: str) -> str:
    """The P2WSH (bech32, BIP-173) address of the HTLC of ``terms`` on ``network``.

    Raises:
        ConfigError: unknown ``network``.
    """
    address = address_of_script(htlc_script_pubkey(htlc_script(terms)), network)
    if address is None:  # pragma: no cover - a P2WSH script always has an address
        raise InvalidInput("no address for the HTLC script")
    return address


def parse_htlc_script(script: bytes) -> HtlcTerms:
    """The terms of a witness script in exactly the form :func:`htlc_script` writes.

    The script is read field by field and then rebuilt from what was read: anything else (a
    non-minimal push, another secret size, an extra opcode) is refused, so the counterparty
    cannot hand over a look-alike script with different rules.

    Raises:
        HtlcMismatch: (field ``"script"``) not this HTLC template.
    """
    data = bytes(script)
    # Fixed offsets up to the height push: 7 opcode/push bytes, H, 4 more, the claim pkh, OP_ELSE.
    head = 7 + 32 + 4 + 20 + 1
    if len(data) < head + 1 + 26:
        raise HtlcMismatch("script", f"{len(data)} bytes is too short for the HTLC template")
    secret_hash = data[7:39]
    claim_pkh = data[43:63]
    first = data[head]
    if OP_1 <= first <= OP_1 + 15:
        height, rest = first - OP_1 + 1, data[head + 1 :]
    elif 1 <= first <= 5:
        height = int.from_bytes(data[head + 1 : head + 1 + first], "little")
        rest = data[head + 1 + first :]
    else:
        raise HtlcMismatch("script", "the lock height is not a minimal push")
    refund_pkh = rest[5:25] if len(rest) == 28 else b""
    try:
        terms = HtlcTerms(secret_hash, claim_pkh, refund_pkh, height)
    except InvalidInput as exc:
        raise HtlcMismatch("script", f"not the HTLC template ({exc})") from exc
    if htlc_script(terms) != data:
        raise HtlcMismatch("script", "not the HTLC template")
    return terms


def check_htlc_output(
    *,
    script: bytes,
    output_script_pubkey: bytes,
    output_amount_sat: int,
    expected: HtlcTerms,
    expected_amount_sat: int,
) -> None:
    """Check that an output on chain is the agreed HTLC, before locking second on it.

    Args:
        script: the witness script the counterparty sent.
        output_script_pubkey: the scriptPubKey of the output it says holds the lock, as read
            from the chain.
        output_amount_sat: that output's value, satoshi.
        expected: the terms agreed: our hash, our claim key hash, their refund key hash and
            the lock height.
        expected_amount_sat: the satoshi agreed; the output must hold exactly that.

    Raises:
        HtlcMismatch: the script is not the HTLC template (``"script"``), the output does not
            pay it (``"script_pubkey"``), a term differs (``"secret_hash"``, ``"claim_pkh"``,
            ``"refund_pkh"``, ``"lock_height"``) or the amount does (``"amount"``).
    """
    terms = parse_htlc_script(script)
    if output_script_pubkey != htlc_script_pubkey(script):
        raise HtlcMismatch("script_pubkey", "the output does not pay the P2WSH of this script")
    for name in ("secret_hash", "claim_pkh", "refund_pkh", "lock_height"):
        got, want = getattr(terms, name), getattr(expected, name)
        if got != want:
            shown = (got.hex(), want.hex()) if isinstance(got, bytes) else (got, want)
            raise HtlcMismatch(name, f"the lock has {shown[0]}, agreed {shown[1]}")
    if output_amount_sat != expected_amount_sat:
        raise HtlcMismatch("amount", f"the lock holds {output_amount_sat} sat, agreed {expected_amount_sat} sat")


@dataclass(frozen=True, slots=True)
class HtlcCoin:
    """The output that holds an HTLC lock.

    Attributes:
        txid: the locking transaction's id, 64 hex characters (display order).
        vout: the output index.
        amount_sat: its value, satoshi.
        script: the witness script it pays (P2WSH).
    """

    txid: str
    vout: int
    amount_sat: int
    script: bytes


def _outpoint(coin: HtlcCoin) -> bytes:
    try:
        txid = bytes.fromhex(coin.txid)
    except ValueError:
        raise InvalidInput(f"txid {coin.txid!r} is not hex") from None
    if len(txid) != 32 or not 0 <= coin.vout <= 0xFFFFFFFF:
        raise InvalidInput(f"{coin.txid}:{coin.vout} is not an outpoint")
    return txid


def sign_htlc_spend(
    *,
    coin: HtlcCoin,
    signer: Signer,
    key_ref: str,
    unlock: Sequence[bytes],
    to_address: str,
    network: str,
    fee_rate: int,
    max_fee_sat: int,
    locktime: int,
    sequence: int,
) -> SignedTx:
    """Sign a transaction spending the HTLC ``coin`` whole to ``to_address``, minus the fee.

    Low level: ``unlock`` (the witness items between the public key and the script) is not
    checked. Use :func:`sign_claim` and :func:`sign_refund`; the tests use this one to show
    the chain refuses what they refuse.

    The witness is ``<sig> <pubkey> *unlock <script>``. The fee is ``fee_rate * vsize`` with
    the vsize computed for a :data:`MAX_SIGNATURE_BYTES` signature, so the rate paid is at
    least ``fee_rate``. The signer is RFC 6979 deterministic: the same arguments sign the same
    transaction, so a stored spend and a rebuilt one are the same bytes and txid.

    Args:
        coin: the HTLC output.
        signer: holds the key of ``key_ref``, whose HASH160 the branch taken must name.
        unlock: the items that choose the branch (``[secret, 01]`` or ``[b""]``).
        to_address: where the coins go (any address type of ``network``).
        fee_rate: sat/vB, ``>= 1``.
        max_fee_sat: the most this spend may pay in fee, satoshi.
        locktime: ``nLockTime`` (a height).
        sequence: ``nSequence`` of the input.

    Returns:
        The :class:`~mixhouse.chains.bitcoin.txbuild.SignedTx` (raw, txid, vsize, fee).

    Raises:
        FeeTooHigh: the fee at ``fee_rate`` is above ``max_fee_sat``.
        InvalidAmount: what is left after the fee is dust at ``to_address``, or a bad amount.
        InvalidAddress: ``to_address`` is not an address of ``network``.
        InvalidInput: a malformed outpoint, a fee rate below 1 or a locktime out of range.
        SignerError: the signer failed; nothing was built.
    """
    if isinstance(fee_rate, bool) or not isinstance(fee_rate, int) or fee_rate < 1:
        raise InvalidInput(f"fee rate {fee_rate!r} is not a whole number of sat/vB >= 1")
    if not 0 <= locktime < LOCKTIME_THRESHOLD:
        raise InvalidInput(f"locktime {locktime} is not a block height")
    if not 0 < coin.amount_sat <= MAX_MONEY:
        raise InvalidAmount(f"HTLC amount {coin.amount_sat} is not a positive number of satoshi")
    out_script = script_pubkey(to_address, network)
    public = signer.public_key(key_ref)
    witness_script = Script(coin.script)

    def build(amount_out: int, signature: bytes) -> Transaction:
        tx = Transaction(
            version=TX_VERSION,
            vin=[TransactionInput(_outpoint(coin), coin.vout, sequence=sequence)],
            vout=[TransactionOutput(amount_out, Script(out_script))],
            locktime=locktime,
        )
        tx.vin[0].witness = Witness([signature, public, *unlock, coin.script])
        return tx

    sized = build(coin.amount_sat, b"\x30" * MAX_SIGNATURE_BYTES)
    vsize = _vsize(sized)
    fee = fee_rate * vsize
    if fee > max_fee_sat:
        raise FeeTooHigh(f"the HTLC spend's fee {fee} sat ({fee_rate} sat/vB x {vsize} vB) is above {max_fee_sat} sat")
    amount_out = coin.amount_sat - fee
    threshold = dust_threshold(out_script)
    if amount_out < threshold:
        raise InvalidAmount(f"{coin.amount_sat} sat minus a {fee} sat fee leaves dust (below {threshold} sat)")
    tx = build(amount_out, b"")
    digest = bytes(tx.sighash_segwit(0, witness_script, coin.amount_sat, sighash=SIGHASH.ALL))
    r, s = signer.sign_digest(key_ref, digest, low_r=True)
    tx.vin[0].witness = Witness([der_signature(r, s) + bytes([SIGHASH.ALL]), public, *unlock, coin.script])
    raw = bytes(tx.serialize())
    return SignedTx(raw=raw, txid=bytes(tx.txid()).hex(), vsize=_vsize(tx), fee=fee)


def _vsize(tx: Transaction) -> int:
    """``ceil(weight / 4)`` with ``weight = 3 * size without witness + full size`` (BIP-141)."""
    full = len(bytes(tx.serialize()))
    stripped = Transaction(
        version=tx.version,
        vin=[TransactionInput(i.txid, i.vout, i.script_sig, i.sequence) for i in tx.vin],
        vout=list(tx.vout),
        locktime=tx.locktime,
    )
    return (3 * len(bytes(stripped.serialize())) + full + 3) // 4


def _check_key(signer: Signer, key_ref: str, want: bytes, role: str) -> None:
    if pubkey_hash(signer.public_key(key_ref)) != want:
        raise InvalidInput(f"the key {key_ref!r} is not the HTLC's {role} key")


def sign_claim(
    *,
    coin: HtlcCoin,
    secret: bytes,
    signer: Signer,
    key_ref: str,
    to_address: str,
    network: str,
    fee_rate: int,
    max_fee_sat: int,
    locktime: int = 0,
) -> SignedTx:
    """Sign the claim of an HTLC with its secret: witness ``<sig> <pubkey> <secret> 01 <script>``.

    ``nSequence`` is ``0xfffffffd`` (opt-in RBF, BIP-125: a claim racing the refund can be
    fee-bumped); ``nLockTime`` as given (0, or the tip height against fee sniping).

    Args:
        coin: the HTLC output (its script gives the hash and the claim key hash).
        secret: the 32-byte preimage of the script's hash.
        key_ref: the signer's key whose HASH160 is the script's claim key hash.
        Others as :func:`sign_htlc_spend`.

    Raises:
        InvalidInput: the secret is not 32 bytes or does not hash to the script's hash, the
            key is not the claim key, or the script is not an HTLC (HtlcMismatch); otherwise
            as :func:`sign_htlc_spend`.
    """
    terms = parse_htlc_script(coin.script)
    if len(secret) != SECRET_BYTES or hashlib.sha256(secret).digest() != terms.secret_hash:
        raise InvalidInput("the secret does not open this HTLC (32 bytes hashing to its hash)")
    _check_key(signer, key_ref, terms.claim_pkh, "claim")
    return sign_htlc_spend(
        coin=coin,
        signer=signer,
        key_ref=key_ref,
        unlock=[bytes(secret), CLAIM_SELECTOR],
        to_address=to_address,
        network=network,
        fee_rate=fee_rate,
        max_fee_sat=max_fee_sat,
        locktime=locktime,
        sequence=RBF_SEQUENCE,
    )


def sign_refund(
    *,
    coin: HtlcCoin,
    signer: Signer,
    key_ref: str,
    to_address: str,
    network: str,
    fee_rate: int,
    max_fee_sat: int,
) -> SignedTx:
    """Sign the refund of an HTLC: witness ``<sig> <pubkey> <empty> <script>``, ``nLockTime``
    = the script's lock height, ``nSequence`` = ``0xfffffffe``.

    It may be signed (and stored) at any time; the network accepts it once the tip height is
    at least the lock height (refused before with ``-26 non-final``).

    Raises:
        InvalidInput: the key is not the refund key, or the script is not an HTLC
            (HtlcMismatch); otherwise as :func:`sign_htlc_spend`.
    """
    terms = parse_htlc_script(coin.script)
    _check_key(signer, key_ref, terms.refund_pkh, "refund")
    return sign_htlc_spend(
        coin=coin,
        signer=signer,
        key_ref=key_ref,
        unlock=[b""],
        to_address=to_address,
        network=network,
        fee_rate=fee_rate,
        max_fee_sat=max_fee_sat,
        locktime=terms.lock_height,
        sequence=REFUND_SEQUENCE,
    )


def htlc_coins(raw_tx: bytes, script: bytes) -> list[HtlcCoin]:
    """The outputs of a transaction that pay the P2WSH of ``script`` (a locking transaction,
    read from the chain by the side that locks second, before :func:`check_htlc_output`).

    Raises:
        InvalidInput: ``raw_tx`` is not one well-formed transaction.
    """
    tx = _parse(raw_tx)
    wanted = htlc_script_pubkey(script)
    return [
        HtlcCoin(tx.txid, n, out.value, bytes(script))
        for n, out in enumerate(tx.outputs)
        if out.script_pubkey == wanted
    ]


@dataclass(frozen=True, slots=True)
class HtlcLock:
    """An HTLC output as the chain shows it now.

    Attributes:
        coin: the output.
        confirmations: ``0`` in the mempool, else the depth of its block in the best chain.
    """

    coin: HtlcCoin
    confirmations: int


async def find_lock(rpc: BitcoinRpc, *, txid: str, script: bytes) -> HtlcLock | None:
    """The output of transaction ``txid`` that pays the HTLC of ``script``, and its depth,
    read from the node (``getrawtransaction txid true``: the mempool or the transaction index).

    The side that locks second calls this with the txid the other side announced, then
    :func:`check_htlc_output` on the coin and its own confirmation rule; a lock that a reorg
    removed reads as ``None`` again (or 0 confirmations if it went back to the mempool).

    Returns:
        The :class:`HtlcLock`, or ``None`` if the node knows no such transaction.

    Raises:
        HtlcMismatch: (``"script_pubkey"``) the transaction has no output paying the script,
            or more than one (which one would be the lock is then ambiguous).
        ChainError: the node failed or answered without the transaction's hex.
    """
    tx = await rpc.gettransaction_verbose(txid)
    if tx is None:
        return None
    raw = tx.get("hex")
    if not isinstance(raw, str):
        raise ChainError(f"getrawtransaction {txid} answered without hex")
    try:
        coins = htlc_coins(bytes.fromhex(raw), script)
    except (ValueError, InvalidInput) as exc:  # not hex / not a transaction
        raise ChainError(f"getrawtransaction {txid} answered hex that is not a transaction") from exc
    if len(coins) != 1:
        raise HtlcMismatch("script_pubkey", f"{txid} has {len(coins)} outputs paying the HTLC, expected 1")
    if coins[0].txid != txid:
        raise ChainError(f"the node answered transaction {coins[0].txid} for {txid}")
    confirmations = tx.get("confirmations", 0)
    if isinstance(confirmations, bool) or not isinstance(confirmations, int) or confirmations < 0:
        confirmations = 0
    return HtlcLock(coins[0], confirmations)


def extract_secret(raw_tx: bytes, script: bytes) -> bytes | None:
    """The secret revealed by a transaction that claims the HTLC of ``script``, if it does.

    Looks at every input whose witness is ``<sig> <pubkey> <secret> 01 <script>`` with this
    very script, and returns the secret if it hashes to the script's hash (so a look-alike
    witness cannot feed a wrong secret to the other leg).

    Args:
        raw_tx: the serialised transaction (with witnesses), as ``getrawtransaction`` gives it.
        script: the HTLC witness script.

    Returns:
        The 32-byte secret, or ``None`` if no input of the transaction claims this HTLC (a
        refund, or another transaction).

    Raises:
        HtlcMismatch: ``script`` is not an HTLC.
        InvalidInput: ``raw_tx`` is not one well-formed transaction.
    """
    terms = parse_htlc_script(script)
    for tx_in in _parse(raw_tx).inputs:
        items = tx_in.witness
        if len(items) != 5 or items[4] != bytes(script) or items[3] != CLAIM_SELECTOR:
            continue
        secret = items[2]
        if len(secret) == SECRET_BYTES and hashlib.sha256(secret).digest() == terms.secret_hash:
            return secret
    return None


def _parse(raw_tx: bytes) -> Tx:
    try:
        return parse_tx(raw_tx)
    except BlockParseError as exc:
        raise InvalidInput(f"not a transaction: {exc}") from exc
