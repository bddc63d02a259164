"""A streaming parser of the Bitcoin wire format: blocks, transactions, ``blk*.dat`` framing,
and output-script decoding to mainnet addresses.

Sources:

* the serialization of blocks and transactions as Bitcoin Core reads it
  (``src/primitives/block.h``, ``src/primitives/transaction.h``, ``src/serialize.h``):
  80-byte header ``version:i32 | prev_hash:32 | merkle_root:32 | time:u32 | bits:u32 |
  nonce:u32``, then CompactSize ``tx_count`` and the transactions;
* BIP-141 / BIP-144 for segwit: ``version | 0x00 marker | 0x01 flag | inputs | outputs |
  witnesses | locktime``; the txid hashes the serialization *without* marker, flag and
  witnesses, the wtxid hashes all of it; ``weight = 3 * base_size + total_size``,
  ``vsize = ceil(weight / 4)``; the witness commitment is the last coinbase output whose
  script starts with ``6a24aa21a9ed``;
* BIP-34 for the block height in the coinbase ``scriptSig`` (block version >= 2);
* BIP-13/Base58Check, BIP-173 (bech32, witness v0) and BIP-350 (bech32m, v1+) for
  addresses, encoded with ``embit`` (``embit.base58``, ``embit.bech32``).

Conventions: every hash held as ``str`` (``Block.hash``, ``BlockHeader.prev_hash``,
``BlockHeader.merkle_root``, ``Tx.txid``, ``Tx.wtxid``, ``TxIn.prev_txid``) is *display* hex,
the byte-reversed double-SHA256 that block explorers and ``bitcoind`` print. Values are
``int`` satoshi. Scripts and witness items are ``bytes``.

Errors: every malformed input (truncated data, a non-canonical or oversized CompactSize,
an unknown segwit flag, trailing bytes, a bad ``blk`` magic) raises :class:`BlockParseError`
with the byte offset into the buffer that was passed in. Nothing is validated beyond the
encoding: scripts, amounts, signatures and consensus rules are not checked here (see
:func:`check_merkle_root`, :func:`check_witness_commitment`, :func:`check_proof_of_work`).

Speed: one pass over a ``memoryview`` of the input with ``struct.unpack_from`` at explicit
offsets; txids are hashed straight off the buffer (no re-serialization, no copy).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from struct import Struct
from struct import error as StructError  # noqa: N812 - it is an exception class
from typing import NamedTuple

from embit import base58, bech32  # type: ignore[import-untyped]
from embit.hashes import hash160  # type: ignore[import-untyped]

__all__ = [
    "MAINNET_MAGIC",
    "Block",
    "BlockHeader",
    "BlockParseError",
    "Tx",
    "TxIn",
    "TxOut",
    "bip34_height",
    "check_merkle_root",
    "check_proof_of_work",
    "check_witness_commitment",
    "decode_script_pubkey",
    "iter_blk_file",
    "merkle_root",
    "parse_block",
    "parse_tx",
    "witness_commitment",
]

MAINNET_MAGIC = bytes.fromhex("f9beb4d9")
"""Network magic that starts every record of a mainnet ``blk*.dat`` file (and P2P message)."""

MAX_COMPACT_SIZE = 0x02000000
"""Bitcoin Core's ``MAX_SIZE``: a larger CompactSize is rejected when deserializing."""

NULL_TXID = "00" * 32
COINBASE_VOUT = 0xFFFFFFFF
WITNESS_COMMITMENT_HEADER = bytes.fromhex("6a24aa21a9ed")

_HEADER = Struct("<i32s32sIII")
_OUTPOINT = Struct("<32sI")
_u16 = Struct("<H").unpack_from
_u32 = Struct("<I").unpack_from
_i32 = Struct("<i").unpack_from
_i64 = Struct("<q").unpack_from
_u64 = Struct("<Q").unpack_from
_sha256 = hashlib.sha256

_MIN_TX_SIZE = 10  # version(4) + 0 inputs(1) + 0 outputs(1) + locktime(4)
_MIN_INPUT_SIZE = 41  # outpoint(36) + script length(1) + sequence(4)
_MIN_OUTPUT_SIZE = 9  # value(8) + script length(1)


class BlockParseError(ValueError):
    """Bytes that are not a well-formed block, transaction or ``blk`` file.

    ``offset`` is the byte position, in the buffer given to the public function, of the field
    that could not be read; ``reason`` is the bare message without the offset.
    """

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} at offset {offset}")
        self.reason = reason
        self.offset = offset


class BlockHeader(NamedTuple):
    """The 80-byte block header. ``prev_hash`` and ``merkle_root`` are display hex; ``time`` is
    Unix seconds; ``bits`` the compact target; ``version`` is signed (``int32``)."""

    version: int
    prev_hash: str
    merkle_root: str
    time: int
    bits: int
    nonce: int

    @property
    def target(self) -> int:
        """The proof-of-work target that ``bits`` encodes (``mantissa * 256**(exponent-3)``)."""
        exponent = self.bits >> 24
        mantissa = self.bits & 0x007FFFFF
        if exponent <= 3:
            return mantissa >> (8 * (3 - exponent))
        return mantissa << (8 * (exponent - 3))


class TxIn(NamedTuple):
    """One input: the outpoint it spends (``prev_txid`` display hex, ``prev_vout``), its
    ``script_sig``, ``sequence`` (``uint32``) and witness stack (``()`` when it has none)."""

    prev_txid: str
    prev_vout: int
    script_sig: bytes
    sequence: int
    witness: tuple[bytes, ...]


class TxOut(NamedTuple):
    """One output: ``value`` in satoshi (``int64`` as serialized) and its ``script_pubkey``."""

    value: int
    script_pubkey: bytes


class Tx(NamedTuple):
    """One transaction.

    ``txid``: double-SHA256 of the serialization without witness data, display hex.
    ``wtxid``: double-SHA256 of the full serialization (equals ``txid`` without witnesses).
    ``size``: serialized bytes including witnesses; ``weight = 3 * stripped_size + size``
    (BIP-141); ``vsize = ceil(weight / 4)`` in virtual bytes.
    """

    txid: str
    wtxid: str
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int
    vsize: int
    weight: int
    size: int

    @property
    def is_coinbase(self) -> bool:
        """One input spending the null outpoint (``00…00:4294967295``)."""
        return (
            len(self.inputs) == 1
            and self.inputs[0].prev_vout == COINBASE_VOUT
            and self.inputs[0].prev_txid == NULL_TXID
        )

    @property
    def has_witness(self) -> bool:
        """Whether any input carries a non-empty witness stack."""
        return any(txin.witness for txin in self.inputs)


class Block(NamedTuple):
    """A parsed block: ``hash`` (display hex of the header's double-SHA256), ``header`` and the
    transactions in block order (the first is the coinbase)."""

    hash: str
    header: BlockHeader
    txs: tuple[Tx, ...]

    @property
    def height(self) -> int | None:
        """The BIP-34 height from the coinbase, or ``None`` (see :func:`bip34_height`)."""
        return bip34_height(self)


# --------------------------------------------------------------------------- wire format


def _read_compact_slow(data: bytes, off: int) -> tuple[int, int]:
    """Read a CompactSize whose first byte is ``0xfd``, ``0xfe`` or ``0xff`` at ``off``;
    return ``(value, next_offset)``. Non-canonical encodings and values above
    :data:`MAX_COMPACT_SIZE` are rejected as Bitcoin Core does."""
    size = len(data)
    first = data[off]
    if first == 0xFD:
        if off + 3 > size:
            raise BlockParseError("truncated CompactSize", off)
        value: int = _u16(data, off + 1)[0]
        minimum, nxt = 0xFD, off + 3
    elif first == 0xFE:
        if off + 5 > size:
            raise BlockParseError("truncated CompactSize", off)
        value = _u32(data, off + 1)[0]
        minimum, nxt = 0x10000, off + 5
    else:
        if off + 9 > size:
            raise BlockParseError("truncated CompactSize", off)
        value = _u64(data, off + 1)[0]
        minimum, nxt = 0x100000000, off + 9
    if value < minimum:
        raise BlockParseError(f"non-canonical CompactSize {value}", off)
    if value > MAX_COMPACT_SIZE:
        raise BlockParseError(f"CompactSize {value} too large", off)
    return value, nxt


def _read_compact(data: bytes, off: int) -> tuple[int, int]:
    if off >= len(data):
        raise BlockParseError("truncated CompactSize", off)
    first = data[off]
    if first < 0xFD:
        return first, off + 1
    return _read_compact_slow(data, off)


def _parse_tx_at(data: bytes, mv: memoryview, start: int) -> tuple[Tx, int]:
    """Parse the transaction that starts at ``start``; return it and the offset after it."""
    try:
        return _parse_tx_body(data, mv, start)
    except (IndexError, StructError) as exc:  # a bounds check missed; keep the error named
        raise BlockParseError("truncated transaction", start) from exc


def _parse_tx_body(data: bytes, mv: memoryview, start: int) -> tuple[Tx, int]:
    size = len(data)
    if start + _MIN_TX_SIZE > size:
        raise BlockParseError("truncated transaction", start)
    version: int = _i32(data, start)[0]
    off = start + 4
    io_start = off

    # Inputs, or the segwit marker (an empty input vector) followed by the flag byte.
    n_in, off = _read_compact(data, off)
    flags = 0
    no_outputs = False
    if n_in == 0:
        if off >= size:
            raise BlockParseError("truncated segwit flag", off)
        flags = data[off]
        off += 1
        if flags == 0:
            # Core reads an empty input vector followed by a zero byte as "no inputs, no
            # outputs" (the zero is the output count); the txid then covers every byte.
            no_outputs = True
        elif flags != 1:
            raise BlockParseError(f"unknown segwit flag 0x{flags:02x}", off - 1)
        else:
            io_start = off
            n_in, off = _read_compact(data, off)

    if n_in * _MIN_INPUT_SIZE > size - off:
        raise BlockParseError(f"input count {n_in} exceeds the remaining data", off)
    raw_inputs: list[tuple[str, int, bytes, int]] = []
    append_in = raw_inputs.append
    for _ in range(n_in):
        if off + 37 > size:
            raise BlockParseError("truncated input", off)
        prev, vout = _OUTPOINT.unpack_from(data, off)
        off += 36
        slen = data[off]
        if slen < 0xFD:
            off += 1
        else:
            slen, off = _read_compact_slow(data, off)
        end = off + slen
        if end + 4 > size:
            raise BlockParseError("truncated input script or sequence", off)
        append_in((prev[::-1].hex(), vout, data[off:end], _u32(data, end)[0]))
        off = end + 4

    outputs: list[TxOut] = []
    if not no_outputs:
        n_out, off = _read_compact(data, off)
        if n_out * _MIN_OUTPUT_SIZE > size - off:
            raise BlockParseError(f"output count {n_out} exceeds the remaining data", off)
        append_out = outputs.append
        for _ in range(n_out):
            if off + 9 > size:
                raise BlockParseError("truncated output", off)
            value: int = _i64(data, off)[0]
            off += 8
            slen = data[off]
            if slen < 0xFD:
                off += 1
            else:
                slen, off = _read_compact_slow(data, off)
            end = off + slen
            if end > size:
                raise BlockParseError("truncated output script", off)
            append_out(TxOut(value, data[off:end]))
            off = end
    io_end = off

    if flags & 1:
        inputs_list: list[TxIn] = []
        any_witness = False
        for prev_txid, vout, script_sig, sequence in raw_inputs:
            n_items, off = _read_compact(data, off)
            if n_items > size - off:
                raise BlockParseError(f"witness item count {n_items} exceeds the remaining data", off)
            items: list[bytes] = []
            for _ in range(n_items):
                ilen, off = _read_compact(data, off)
                end = off + ilen
                if end > size:
                    raise BlockParseError("truncated witness item", off)
                items.append(data[off:end])
                off = end
            if items:
                any_witness = True
            inputs_list.append(TxIn(prev_txid, vout, script_sig, sequence, tuple(items)))
        if not any_witness:
            raise BlockParseError("superfluous witness record", io_end)
        inputs = tuple(inputs_list)
    else:
        inputs = tuple([TxIn(p, v, s, q, ()) for p, v, s, q in raw_inputs])

    if off + 4 > size:
        raise BlockParseError("truncated locktime", off)
    locktime: int = _u32(data, off)[0]
    end = off + 4
    total = end - start
    if flags:
        h = _sha256(mv[start : start + 4])
        h.update(mv[io_start:io_end])
        h.update(mv[off:end])
        txid = _sha256(h.digest()).digest()[::-1].hex()
        wtxid = _sha256(_sha256(mv[start:end]).digest()).digest()[::-1].hex()
        stripped = total - (io_start - start - 4) - (off - io_end)
    else:
        txid = wtxid = _sha256(_sha256(mv[start:end]).digest()).digest()[::-1].hex()
        stripped = total
    weight = 3 * stripped + total
    tx = Tx(txid, wtxid, version, inputs, tuple(outputs), locktime, (weight + 3) // 4, weight, total)
    return tx, end


def _as_bytes(raw: bytes | bytearray | memoryview) -> bytes:
    return raw if isinstance(raw, bytes) else bytes(raw)


def parse_tx(raw: bytes | bytearray | memoryview) -> Tx:
    """Parse exactly one serialized transaction (legacy or BIP-144 segwit).

    Raises :class:`BlockParseError` if it is malformed or followed by extra bytes.
    """
    data = _as_bytes(raw)
    tx, end = _parse_tx_at(data, memoryview(data), 0)
    if end != len(data):
        raise BlockParseError(f"{len(data) - end} trailing bytes after the transaction", end)
    return tx


def parse_block(raw: bytes | bytearray | memoryview) -> Block:
    """Parse one serialized block (80-byte header, CompactSize count, transactions).

    ``raw`` is the bare block, without ``blk*.dat`` framing (see :func:`iter_blk_file`).
    Raises :class:`BlockParseError` if it is malformed or followed by extra bytes.
    """
    data = _as_bytes(raw)
    mv = memoryview(data)
    size = len(data)
    if size < 81:
        raise BlockParseError("truncated block header", 0)
    version, prev, root, time, bits, nonce = _HEADER.unpack_from(data, 0)
    header = BlockHeader(version, prev[::-1].hex(), root[::-1].hex(), time, bits, nonce)
    block_hash = _sha256(_sha256(mv[:80]).digest()).digest()[::-1].hex()
    n_tx, off = _read_compact(data, 80)
    if n_tx * _MIN_TX_SIZE > size - off:
        raise BlockParseError(f"transaction count {n_tx} exceeds the remaining data", 80)
    txs: list[Tx] = []
    append = txs.append
    for _ in range(n_tx):
        tx, off = _parse_tx_at(data, mv, off)
        append(tx)
    if off != size:
        raise BlockParseError(f"{size - off} trailing bytes after the last transaction", off)
    return Block(block_hash, header, tuple(txs))


def iter_blk_file(data: bytes, magic: bytes = MAINNET_MAGIC) -> Iterator[bytes]:
    """Yield each block of a ``blk*.dat`` file: records of ``magic(4) | length:u32 LE |
    block(length)``.

    A run of zero bytes where a record should start ends the file (Bitcoin Core pre-allocates
    ``blk`` files in zero-filled chunks). Raises :class:`BlockParseError` at a wrong magic or a
    record that runs past the end of ``data``.
    """
    size = len(data)
    off = 0
    while off < size:
        if data[off : off + 4] != magic:
            if not any(data[off:]):
                return
            raise BlockParseError(f"bad magic {data[off : off + 4].hex()}", off)
        if off + 8 > size:
            raise BlockParseError("truncated record length", off + 4)
        length: int = _u32(data, off + 4)[0]
        end = off + 8 + length
        if end > size:
            raise BlockParseError(f"record of {length} bytes runs past the end of the file", off + 4)
        yield data[off + 8 : end]
        off = end


# --------------------------------------------------------------------------- verification


def _dsha256(data: bytes) -> bytes:
    return _sha256(_sha256(data).digest()).digest()


def merkle_root(txids: Sequence[str]) -> bytes:
    """The Merkle root of ``txids`` (display hex, block order), in internal byte order — the
    32 bytes as serialized in the header, so ``merkle_root(ids)[::-1].hex()`` is comparable to
    :attr:`BlockHeader.merkle_root`. An odd level repeats its last hash (Bitcoin's rule; this
    function does not detect the CVE-2012-2459 duplicate-subtree mutation).

    Raises ``ValueError`` on an empty list.
    """
    if not txids:
        raise ValueError("merkle_root of no transactions")
    level = [bytes.fromhex(txid)[::-1] for txid in txids]
    while len(level) > 1:
        if len(level) & 1:
            level.append(level[-1])
        level = [_dsha256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def check_merkle_root(block: Block) -> bool:
    """Whether the header's Merkle root matches the root of the block's txids."""
    if not block.txs:
        return False
    return merkle_root([tx.txid for tx in block.txs])[::-1].hex() == block.header.merkle_root


def check_proof_of_work(block: Block) -> bool:
    """Whether the block hash is at or below the target encoded in ``bits``."""
    return int(block.hash, 16) <= block.header.target


def witness_commitment(block: Block) -> bytes | None:
    """The 32-byte BIP-141 witness commitment from the coinbase: the last output whose script
    is at least 38 bytes and starts with ``OP_RETURN 0x24 aa21a9ed``; ``None`` if there is none.
    """
    if not block.txs:
        return None
    for txout in reversed(block.txs[0].outputs):
        spk = txout.script_pubkey
        if len(spk) >= 38 and spk.startswith(WITNESS_COMMITMENT_HEADER):
            return spk[6:38]
    return None


def check_witness_commitment(block: Block) -> bool:
    """BIP-141: with a commitment, it must equal ``dSHA256(witness_root || reserved)`` where
    ``witness_root`` is the Merkle root of the wtxids (the coinbase's taken as 32 zero bytes)
    and ``reserved`` is the coinbase input's single 32-byte witness item. Without a commitment,
    no transaction may carry witness data.
    """
    commitment = witness_commitment(block)
    if commitment is None:
        return not any(tx.has_witness for tx in block.txs)
    coinbase_witness = block.txs[0].inputs[0].witness if block.txs[0].inputs else ()
    if len(coinbase_witness) != 1 or len(coinbase_witness[0]) != 32:
        return False
    wtxids = [NULL_TXID, *(tx.wtxid for tx in block.txs[1:])]
    return _dsha256(merkle_root(wtxids) + coinbase_witness[0]) == commitment


def bip34_height(block: Block) -> int | None:
    """The height that BIP-34 puts first in the coinbase ``scriptSig`` (a minimal
    little-endian push, or ``OP_0``/``OP_1``..``OP_16``); ``None`` for version-1 blocks
    (before BIP-34) or when the script does not start with a number."""
    if block.header.version < 2 or not block.txs or not block.txs[0].inputs:
        return None
    script = block.txs[0].inputs[0].script_sig
    if not script:
        return None
    op = script[0]
    if op == 0:
        return 0
    if 0x51 <= op <= 0x60:
        return op - 0x50
    if 1 <= op <= 8 and len(script) > op:
        return int.from_bytes(script[1 : 1 + op], "little", signed=True)
    return None


# --------------------------------------------------------------------------- scripts


def _base58check(payload: bytes) -> str:
    return str(base58.encode_check(payload))


def _segwit_address(version: int, program: bytes, hrp: str = "bc") -> str:
    encoding = bech32.Encoding.BECH32 if version == 0 else bech32.Encoding.BECH32M
    return str(bech32.bech32_encode(encoding, hrp, [version, *bech32.convertbits(program, 8, 5)]))


def _is_push_only(script: bytes, off: int) -> bool:
    """Core's ``CScript::IsPushOnly`` from ``off``: only push opcodes (``<= OP_16``), each
    complete."""
    size = len(script)
    while off < size:
        op = script[off]
        off += 1
        if op > 0x60:
            return False
        if op < 0x4C:
            off += op
        elif op == 0x4C:
            if off + 1 > size:
                return False
            off += 1 + script[off]
        elif op == 0x4D:
            if off + 2 > size:
                return False
            off += 2 + int.from_bytes(script[off : off + 2], "little")
        elif op == 0x4E:
            if off + 4 > size:
                return False
            off += 4 + int.from_bytes(script[off : off + 4], "little")
        if off > size:
            return False
    return True


def _valid_pubkey_size(data: bytes) -> bool:
    """Core's ``CPubKey::ValidSize``: 33 bytes with prefix 2/3 or 65 bytes with prefix 4/6/7."""
    if len(data) == 33:
        return data[0] in (2, 3)
    if len(data) == 65:
        return data[0] in (4, 6, 7)
    return False


def _multisig_number(script: bytes, off: int) -> tuple[int, int] | None:
    """A multisig count at ``off``: ``OP_1``..``OP_16`` or a minimal one-byte push of 17..20."""
    op = script[off]
    if 0x51 <= op <= 0x60:
        return op - 0x50, off + 1
    if op == 1 and off + 2 <= len(script) and 17 <= script[off + 1] <= 20:
        return script[off + 1], off + 2
    return None


def _is_multisig(script: bytes) -> bool:
    """Core's ``MatchMultisig``: ``m <pubkey>... n OP_CHECKMULTISIG`` with ``1 <= m <= n <= 20``
    and exactly ``n`` valid-size keys."""
    if len(script) < 3 or script[-1] != 0xAE:
        return False
    first = _multisig_number(script, 0)
    if first is None:
        return False
    required, off = first
    keys = 0
    last = len(script) - 1
    while off < last:
        op = script[off]
        if op in (33, 65) and off + 1 + op <= last and _valid_pubkey_size(script[off + 1 : off + 1 + op]):
            keys += 1
            off += 1 + op
            continue
        second = _multisig_number(script, off)
        if second is None:
            return False
        total, off = second
        return off == last and total == keys and 1 <= required <= total
    return False


def decode_script_pubkey(script: bytes, *, p2pk_as_p2pkh: bool = False) -> tuple[str, str | None]:
    """Classify an output script the way Bitcoin Core's ``Solver`` does and give its mainnet
    address.

    Returns ``(type, address)``; ``type`` is one of ``"p2pkh"``, ``"p2sh"`` (Base58Check,
    versions ``0x00``/``0x05``), ``"p2wpkh"``, ``"p2wsh"`` (bech32), ``"p2tr"``,
    ``"anchor"`` (``OP_1 <4e73>``, pay-to-anchor), ``"witness_unknown"`` (other witness
    versions/lengths; bech32m), ``"p2pk"``, ``"multisig"``, ``"nulldata"`` (``OP_RETURN``
    followed by pushes only) or ``"nonstandard"`` (including a v0 witness program that is
    neither 20 nor 32 bytes, and the empty script).

    ``address`` is ``None`` for multisig, nulldata and nonstandard. A P2PK output has no
    address of its own: ``None`` by default (as ``bitcoind`` >= 22 reports it); with
    ``p2pk_as_p2pkh=True`` the P2PKH address of the key is returned instead, as older
    ``bitcoind`` and many explorers show it. Note that coins sent to a P2PK script are not
    spendable as that P2PKH address's coins.
    """
    n = len(script)
    if n == 0:
        return "nonstandard", None
    first = script[0]
    if n == 23 and first == 0xA9 and script[1] == 0x14 and script[22] == 0x87:
        return "p2sh", _base58check(b"\x05" + script[2:22])
    if 4 <= n <= 42 and script[1] == n - 2 and (first == 0 or 0x51 <= first <= 0x60):
        version = first - 0x50 if first else 0
        program = script[2:]
        if version == 0:
            if n == 22:
                return "p2wpkh", _segwit_address(0, program)
            if n == 34:
                return "p2wsh", _segwit_address(0, program)
            return "nonstandard", None
        if version == 1 and n == 34:
            return "p2tr", _segwit_address(1, program)
        if version == 1 and program == b"\x4e\x73":
            return "anchor", _segwit_address(1, program)
        return "witness_unknown", _segwit_address(version, program)
    if first == 0x6A and _is_push_only(script, 1):
        return "nulldata", None
    if (n == 35 and first == 33 and script[1] in (2, 3) and script[34] == 0xAC) or (
        n == 67 and first == 65 and script[1] in (4, 6, 7) and script[66] == 0xAC
    ):
        return "p2pk", (_base58check(b"\x00" + hash160(script[1:-1])) if p2pk_as_p2pkh else None)
    if (
        n == 25
        and first == 0x76
        and script[1] == 0xA9
        and script[2] == 0x14
        and script[23] == 0x88
        and script[24] == 0xAC
    ):
        return "p2pkh", _base58check(b"\x00" + script[3:23])
    if _is_multisig(script):
        return "multisig", None
    return "nonstandard", None
