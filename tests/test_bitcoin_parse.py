"""The Bitcoin wire-format parser against real mainnet blocks (tests/data/bitcoin, see the
SOURCE.md files there for origin and licence).

Blocks: 1..255 (blk framing, bzip2), 277647 (blk framing, bzip2), 574200 (segwit era,
3315 txs) and 702861 (2500 txs, mostly segwit) as raw bytes; blocks 0, 1, 50000-50002 rebuilt
from ``bitcoind getblock <hash> 2`` JSON (bitcoin-etl test resources) and cross-checked
against that JSON and bitcoin-etl's flattened export.
"""

from __future__ import annotations

import bz2
import hashlib
import itertools
import json
import struct
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from embit import base58, bech32  # type: ignore[import-untyped]

from mixhouse.chains.bitcoin.parse import (
    MAINNET_MAGIC,
    Block,
    BlockParseError,
    Tx,
    bip34_height,
    check_merkle_root,
    check_proof_of_work,
    check_witness_commitment,
    decode_script_pubkey,
    iter_blk_file,
    merkle_root,
    parse_block,
    parse_tx,
    witness_commitment,
)

DATA = Path(__file__).parent / "data" / "bitcoin"
BTCD = DATA / "btcd"
ETL = DATA / "bitcoin_etl"

HASH_574200 = "0000000000000000001602407ac49862a7bca9d00f7f402db20b7be2f5de59d2"
HASH_702861 = "000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae"
HASH_277647 = "0000000000000000054a714e580b16c583701712ab91060e92dbde6eb1e052a8"
HASH_0 = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
HASH_1 = "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"
HASH_255 = "00000000d0a75c861fabf9ff7b92022f60e4afeed9331fe5aa073d8e4706fe3c"

# name -> (raw block bytes loader, expected hash, tx count, BIP-34 height or None)
SINGLE_BLOCKS: dict[str, tuple[str, int, int | None]] = {
    "574200": (HASH_574200, 3315, 574200),
    "702861": (HASH_702861, 2500, 702861),
    "277647": (HASH_277647, 213, 277647),
}


def dsha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


@cache
def raw_block(name: str) -> bytes:
    if name == "574200":
        return (BTCD / f"block-{HASH_574200}.blk").read_bytes()
    if name == "702861":
        return (DATA / "rust_bitcoin" / f"mainnet_block_{HASH_702861}.raw").read_bytes()
    if name == "277647":
        (only,) = iter_blk_file(bz2.decompress((BTCD / "277647.dat.bz2").read_bytes()))
        return only
    raise KeyError(name)


@cache
def raw_blocks_1_255() -> tuple[bytes, ...]:
    return tuple(iter_blk_file(bz2.decompress((BTCD / "blocks1-256.bz2").read_bytes())))


@cache
def block(name: str) -> Block:
    return parse_block(raw_block(name))


@cache
def blocks_1_255() -> tuple[Block, ...]:
    return tuple(parse_block(raw) for raw in raw_blocks_1_255())


def all_raw_blocks() -> Iterator[tuple[str, bytes]]:
    for name in SINGLE_BLOCKS:
        yield name, raw_block(name)
    for height, raw in enumerate(raw_blocks_1_255(), start=1):
        yield str(height), raw


# --------------------------------------------------------------- an independent serializer


def compact(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def serialize_tx(tx: Tx, *, witness: bool) -> bytes:
    """Bitcoin Core's serialization of ``tx``, with (BIP-144) or without witness data."""
    use_witness = witness and tx.has_witness
    out = [struct.pack("<i", tx.version)]
    if use_witness:
        out.append(b"\x00\x01")
    out.append(compact(len(tx.inputs)))
    for txin in tx.inputs:
        out.append(bytes.fromhex(txin.prev_txid)[::-1] + struct.pack("<I", txin.prev_vout))
        out.append(compact(len(txin.script_sig)) + txin.script_sig + struct.pack("<I", txin.sequence))
    out.append(compact(len(tx.outputs)))
    out.extend(struct.pack("<q", o.value) + compact(len(o.script_pubkey)) + o.script_pubkey for o in tx.outputs)
    if use_witness:
        for txin in tx.inputs:
            out.append(compact(len(txin.witness)))
            out.extend(compact(len(item)) + item for item in txin.witness)
    out.append(struct.pack("<I", tx.locktime))
    return b"".join(out)


def serialize_header(blk: Block) -> bytes:
    h = blk.header
    return struct.pack(
        "<i32s32sIII",
        h.version,
        bytes.fromhex(h.prev_hash)[::-1],
        bytes.fromhex(h.merkle_root)[::-1],
        h.time,
        h.bits,
        h.nonce,
    )


def block_weight(blk: Block) -> int:
    return 4 * (80 + len(compact(len(blk.txs)))) + sum(tx.weight for tx in blk.txs)


# --------------------------------------------------------------- headers, hashes, merkle


@pytest.mark.parametrize("name", list(SINGLE_BLOCKS))
def test_single_block_header_hash_and_shape(name: str) -> None:
    expected_hash, n_tx, height = SINGLE_BLOCKS[name]
    blk = block(name)
    assert blk.hash == expected_hash
    assert dsha256(raw_block(name)[:80])[::-1].hex() == expected_hash
    assert len(blk.txs) == n_tx
    assert blk.height == height == bip34_height(blk)
    assert check_proof_of_work(blk)
    assert check_merkle_root(blk)
    assert merkle_root([tx.txid for tx in blk.txs]) == raw_block(name)[36:68]
    assert blk.txs[0].is_coinbase
    assert not any(tx.is_coinbase for tx in blk.txs[1:])


def test_rust_bitcoin_block_702861_header() -> None:
    blk = block("702861")
    assert blk.header.time == 1633002641
    assert len(raw_block("702861")) == 1_381_836
    assert block_weight(blk) <= 4_000_000


def test_every_txid_wtxid_size_and_weight_recomputed() -> None:
    """Re-serialize every parsed transaction: the bytes must round-trip to the raw block, and
    the txid/wtxid/size/weight must follow from the serialization (BIP-141)."""
    n_checked = 0
    for name, raw in all_raw_blocks():
        blk = parse_block(raw)
        rebuilt = [serialize_header(blk), compact(len(blk.txs))]
        for tx in blk.txs:
            full = serialize_tx(tx, witness=True)
            stripped = serialize_tx(tx, witness=False)
            assert tx.txid == dsha256(stripped)[::-1].hex(), (name, tx.txid)
            assert tx.wtxid == dsha256(full)[::-1].hex(), (name, tx.txid)
            assert tx.size == len(full)
            assert tx.weight == 3 * len(stripped) + len(full)
            assert tx.vsize == -(-tx.weight // 4)
            assert parse_tx(full) == tx
            rebuilt.append(full)
            n_checked += 1
        assert b"".join(rebuilt) == raw, name
    assert n_checked == 3315 + 2500 + 213 + 262


def test_segwit_blocks_have_witnesses_and_valid_commitment() -> None:
    for name in ("574200", "702861"):
        blk = block(name)
        assert any(tx.has_witness for tx in blk.txs)
        assert any(tx.txid != tx.wtxid for tx in blk.txs)
        assert all(tx.txid == tx.wtxid for tx in blk.txs if not tx.has_witness)
        commitment = witness_commitment(blk)
        assert commitment is not None
        assert len(commitment) == 32
        assert check_witness_commitment(blk)
        # the commitment really covers the wtxids: flip a bit of one witness item and it no
        # longer holds, while the txid (and so the header's merkle root) is unchanged
        victim_index = next(i for i, tx in enumerate(blk.txs) if i and tx.has_witness)
        victim = blk.txs[victim_index]
        k = next(k for k, txin in enumerate(victim.inputs) if txin.witness)
        witness = list(victim.inputs[k].witness)
        j = next(j for j, item in enumerate(witness) if item)  # the first item may be empty
        witness[j] = witness[j][:-1] + bytes([witness[j][-1] ^ 1])
        inputs = list(victim.inputs)
        inputs[k] = inputs[k]._replace(witness=tuple(witness))
        tampered_tx = parse_tx(serialize_tx(victim._replace(inputs=tuple(inputs)), witness=True))
        assert tampered_tx.txid == victim.txid
        assert tampered_tx.wtxid != victim.wtxid
        txs = list(blk.txs)
        txs[victim_index] = tampered_tx
        assert check_merkle_root(blk._replace(txs=tuple(txs)))
        assert not check_witness_commitment(blk._replace(txs=tuple(txs)))


def test_pre_segwit_blocks_have_no_commitment_and_no_witness() -> None:
    for blk in (block("277647"), *blocks_1_255()):
        assert witness_commitment(blk) is None
        assert not any(tx.has_witness for tx in blk.txs)
        assert check_witness_commitment(blk)
        assert all(tx.txid == tx.wtxid and tx.weight == 4 * tx.size for tx in blk.txs)


def test_chain_1_to_255_links_and_checks() -> None:
    blocks = blocks_1_255()
    assert len(blocks) == 255
    assert sum(len(b.txs) for b in blocks) == 262
    assert blocks[0].hash == HASH_1
    assert blocks[-1].hash == HASH_255
    assert blocks[0].header.prev_hash == HASH_0
    for prev, cur in itertools.pairwise(blocks):
        assert cur.header.prev_hash == prev.hash
        assert cur.header.time > prev.header.time - 7200
    for blk in blocks:
        assert blk.header.version == 1
        assert blk.height is None  # version-1 blocks predate BIP-34
        assert blk.header.bits == 0x1D00FFFF
        assert check_proof_of_work(blk)
        assert check_merkle_root(blk)
        assert blk.txs[0].is_coinbase
        assert sum(o.value for o in blk.txs[0].outputs) == 50 * 100_000_000


def test_block_1_coinbase_address() -> None:
    coinbase = blocks_1_255()[0].txs[0]
    assert coinbase.txid == "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098"
    (out,) = coinbase.outputs
    assert out.value == 5_000_000_000
    assert decode_script_pubkey(out.script_pubkey) == ("p2pk", None)
    assert decode_script_pubkey(out.script_pubkey, p2pk_as_p2pkh=True) == (
        "p2pk",
        "12c6DSiU4Rq3P4ZxziKxzrL5LmMBrzjrJX",
    )


# --------------------------------------------------------------- outputs and addresses


def script_of_address(address: str) -> bytes:
    """Decode an address back to its output script with embit (independent of the encoder
    choice in the parser: this runs the checksum verification)."""
    if address.startswith("bc1"):
        version, program = bech32.decode("bc", address)
        assert version is not None, address
        return bytes([0x50 + version if version else 0, len(program), *program])
    payload: bytes = base58.decode_check(address)
    if payload[0] == 0:
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    assert payload[0] == 5, address
    return b"\xa9\x14" + payload[1:] + b"\x87"


EXPECTED_TYPES: dict[str, dict[str, int]] = {
    "574200": {"p2pkh": 4035, "p2sh": 2601, "nulldata": 976, "p2wpkh": 442, "p2wsh": 58, "p2pk": 38},
    "702861": {"p2wpkh": 2383, "p2sh": 1816, "p2pkh": 1660, "p2wsh": 133, "nulldata": 23},
}


@pytest.mark.parametrize("name", list(SINGLE_BLOCKS))
def test_every_output_decodes_and_addresses_round_trip(name: str) -> None:
    blk = block(name)
    types: Counter[str] = Counter()
    for tx in blk.txs:
        for out in tx.outputs:
            kind, address = decode_script_pubkey(out.script_pubkey)
            types[kind] += 1
            assert 0 <= out.value <= 21_000_000 * 100_000_000
            if kind in ("p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr"):
                assert address is not None
                assert script_of_address(address) == out.script_pubkey
            else:
                assert address is None
    assert types["nonstandard"] == 0
    if name in EXPECTED_TYPES:
        assert dict(types) == EXPECTED_TYPES[name]
    if name == "702861":
        assert sum(1 for tx in blk.txs if tx.has_witness) > len(blk.txs) // 2


def test_early_chain_outputs_are_all_p2pk() -> None:
    for blk in blocks_1_255():
        for tx in blk.txs:
            for out in tx.outputs:
                kind, address = decode_script_pubkey(out.script_pubkey, p2pk_as_p2pkh=True)
                assert kind == "p2pk"
                assert address is not None
                assert address.startswith("1")


@pytest.mark.parametrize(
    ("script_hex", "expected"),
    [
        # BIP-173 / BIP-350 mainnet test vectors
        ("0014751e76e8199196d454941c45d1b3a323f1433bd6", ("p2wpkh", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")),
        (
            "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
            ("p2tr", "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"),
        ),
        (
            "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
            (
                "witness_unknown",
                "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
            ),
        ),
        ("6002751e", ("witness_unknown", "bc1sw50qgdz25j")),
        ("5210751e76e8199196d454941c45d1b3a323", ("witness_unknown", "bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs")),
        ("51024e73", ("anchor", "bc1pfeessrawgf")),
        # genesis coinbase key hash (P2PKH of the well-known 1A1z... address)
        ("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac", ("p2pkh", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")),
        ("76a914" + "00" * 20 + "88ac", ("p2pkh", "1111111111111111111114oLvT2")),
        ("a914" + "00" * 20 + "87", ("p2sh", "31h1vYVSYuKP6AhS86fbRdMw9XHieotbST")),
        ("0015" + "00" * 21, ("nonstandard", None)),  # v0 program of neither 20 nor 32 bytes
        ("", ("nonstandard", None)),
        ("6a", ("nulldata", None)),
        ("6a04deadbeef", ("nulldata", None)),
        ("6a4c", ("nonstandard", None)),  # OP_RETURN with a truncated OP_PUSHDATA1
        ("6aac", ("nonstandard", None)),  # OP_RETURN followed by a non-push opcode
        ("5121" + "02" + "11" * 32 + "21" + "03" + "22" * 32 + "52ae", ("multisig", None)),
        ("5121" + "02" + "11" * 32 + "21" + "03" + "22" * 32 + "53ae", ("nonstandard", None)),  # n != keys
        ("5321" + "02" + "11" * 32 + "21" + "03" + "22" * 32 + "52ae", ("nonstandard", None)),  # m > n
        ("21" + "05" + "11" * 32 + "ac", ("nonstandard", None)),  # not a valid key prefix
    ],
)
def test_decode_script_pubkey_vectors(script_hex: str, expected: tuple[str, str | None]) -> None:
    assert decode_script_pubkey(bytes.fromhex(script_hex)) == expected


def test_p2pk_genesis_key() -> None:
    script = bytes.fromhex(
        "4104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51"
        "ec112de5c384df7ba0b8d578a4c702b6bf11d5fac"
    )
    assert decode_script_pubkey(script) == ("p2pk", None)
    assert decode_script_pubkey(script, p2pk_as_p2pkh=True) == ("p2pk", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")


# --------------------------------------------------------------- bitcoind / bitcoin-etl


ETL_TYPES = {
    "pubkey": "p2pk",
    "pubkeyhash": "p2pkh",
    "scripthash": "p2sh",
    "multisig": "multisig",
    "nulldata": "nulldata",
    "witness_v0_keyhash": "p2wpkh",
    "witness_v0_scripthash": "p2wsh",
    "witness_v1_taproot": "p2tr",
    "witness_unknown": "witness_unknown",
    "nonstandard": "nonstandard",
}
ETL_DIRS = ("block_0", "block_1", "block_without_transactions", "block_with_transactions")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(), parse_float=Decimal)


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def getblock_replies() -> list[dict[str, Any]]:
    replies = [load_json(p) for d in ETL_DIRS for p in sorted((ETL / d).glob("rpc_response_getblock_*_2.json"))]
    return sorted(replies, key=lambda r: int(r["height"]))


def raw_from_getblock(reply: dict[str, Any]) -> bytes:
    """Serialize the block that a ``getblock <hash> 2`` reply describes."""
    header = struct.pack(
        "<i32s32sIII",
        reply["version"],
        bytes.fromhex(reply.get("previousblockhash", "00" * 32))[::-1],
        bytes.fromhex(reply["merkleroot"])[::-1],
        reply["time"],
        int(reply["bits"], 16),
        reply["nonce"],
    )
    return header + compact(len(reply["tx"])) + b"".join(bytes.fromhex(t["hex"]) for t in reply["tx"])


def to_sat(btc: Decimal) -> int:
    sat = btc * 100_000_000
    assert sat == sat.to_integral_value()
    return int(sat)


def test_getblock_replies_cover_the_expected_heights() -> None:
    assert [r["height"] for r in getblock_replies()] == [0, 1, 50000, 50001, 50002]


@pytest.mark.parametrize("reply", getblock_replies(), ids=lambda r: str(r["height"]))
def test_cross_check_with_bitcoind_getblock(reply: dict[str, Any]) -> None:
    raw = raw_from_getblock(reply)
    blk = parse_block(raw)
    assert blk.hash == reply["hash"]
    assert blk.header.merkle_root == reply["merkleroot"]
    assert blk.header.prev_hash == reply.get("previousblockhash", "00" * 32)
    assert (blk.header.time, blk.header.nonce, blk.header.version) == (
        reply["time"],
        reply["nonce"],
        reply["version"],
    )
    assert f"{blk.header.bits:08x}" == reply["bits"]
    assert len(raw) == reply["size"]
    assert block_weight(blk) == reply["weight"]
    assert check_merkle_root(blk)
    assert check_proof_of_work(blk)
    assert check_witness_commitment(blk)
    assert len(blk.txs) == reply["nTx"]
    for tx, jtx in zip(blk.txs, reply["tx"], strict=True):
        assert parse_tx(bytes.fromhex(jtx["hex"])) == tx
        assert (tx.txid, tx.wtxid, tx.size, tx.vsize) == (jtx["txid"], jtx["hash"], jtx["size"], jtx["vsize"])
        assert (tx.version, tx.locktime) == (jtx["version"], jtx["locktime"])
        for txin, jin in zip(tx.inputs, jtx["vin"], strict=True):
            assert txin.sequence == jin["sequence"]
            if "coinbase" in jin:
                assert tx.is_coinbase
                assert txin.script_sig.hex() == jin["coinbase"]
            else:
                assert (txin.prev_txid, txin.prev_vout) == (jin["txid"], jin["vout"])
                assert txin.script_sig.hex() == jin["scriptSig"]["hex"]
        for i, (out, jout) in enumerate(zip(tx.outputs, jtx["vout"], strict=True)):
            assert jout["n"] == i
            assert out.value == to_sat(jout["value"])
            spk = jout["scriptPubKey"]
            assert out.script_pubkey.hex() == spk["hex"]
            kind, address = decode_script_pubkey(out.script_pubkey, p2pk_as_p2pkh=True)
            assert kind == ETL_TYPES[spk["type"]]
            assert [address] == spk["addresses"]


def test_genesis_rebuilt_from_getblock() -> None:
    reply = load_json(next((ETL / "block_0").glob("rpc_response_getblock_*_2.json")))
    blk = parse_block(raw_from_getblock(reply))
    assert blk.hash == HASH_0 == json.loads((ETL / "block_0" / "rpc_response_getblockhash_0.json").read_text())
    assert blk.txs[0].txid == "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"


def test_block_1_from_blk_file_equals_getblock() -> None:
    (reply,) = [r for r in getblock_replies() if r["height"] == 1]
    assert raw_from_getblock(reply) == raw_blocks_1_255()[0]


def test_cross_check_with_bitcoin_etl_export() -> None:
    blocks = {r["hash"]: parse_block(raw_from_getblock(r)) for r in getblock_replies()}
    n_blocks = n_txs = 0
    for d in ETL_DIRS:
        for eb in json_lines(ETL / d / "expected_blocks.json"):
            blk = blocks[eb["hash"]]
            assert blk.header.merkle_root == eb["merkle_root"]
            assert (blk.header.time, blk.header.version) == (eb["timestamp"], eb["version"])
            assert f"{blk.header.nonce:x}" == eb["nonce"]
            assert f"{blk.header.bits:08x}" == eb["bits"]
            assert len(blk.txs) == eb["transaction_count"]
            assert blk.txs[0].inputs[0].script_sig.hex() == eb["coinbase_param"]
            assert block_weight(blk) == eb["weight"]
            n_blocks += 1
        for et in json_lines(ETL / d / "expected_transactions.json"):
            blk = blocks[et["block_hash"]]
            tx = blk.txs[et["index"]]
            assert tx.txid == et["hash"]
            assert (tx.size, tx.vsize, tx.version, tx.locktime) == (
                et["size"],
                et["virtual_size"],
                et["version"],
                et["lock_time"],
            )
            assert tx.is_coinbase == et["is_coinbase"]
            assert blk.header.time == et["block_timestamp"]
            assert len(tx.outputs) == et["output_count"]
            assert sum(o.value for o in tx.outputs) == et["output_value"]
            for eo in et["outputs"]:
                out = tx.outputs[eo["index"]]
                assert out.value == eo["value"]
                assert out.script_pubkey.hex() == eo["script_hex"]
                kind, address = decode_script_pubkey(out.script_pubkey, p2pk_as_p2pkh=True)
                assert kind == ETL_TYPES[eo["type"]]
                assert [address] == eo["addresses"]
            if not tx.is_coinbase:
                assert len(tx.inputs) == et["input_count"]
                for ei in et["inputs"]:
                    txin = tx.inputs[ei["index"]]
                    assert (txin.prev_txid, txin.prev_vout) == (
                        ei["spent_transaction_hash"],
                        ei["spent_output_index"],
                    )
                    assert txin.script_sig.hex() == ei["script_hex"]
                    assert txin.sequence == ei["sequence"]
            n_txs += 1
    assert (n_blocks, n_txs) == (5, 7)


# --------------------------------------------------------------- malformed input


def test_truncated_blocks_raise_with_offset() -> None:
    raw = raw_block("574200")
    for cut in (0, 50, 80, 81, 200, len(raw) // 2, len(raw) - 1):
        with pytest.raises(BlockParseError) as info:
            parse_block(raw[:cut])
        assert 0 <= info.value.offset <= cut
    with pytest.raises(BlockParseError, match="truncated locktime") as info:
        parse_block(raw[:-1])
    assert info.value.offset == len(raw) - 4


def test_trailing_bytes_raise() -> None:
    raw = raw_block("277647")
    with pytest.raises(BlockParseError, match="trailing") as info:
        parse_block(raw + b"\x00")
    assert info.value.offset == len(raw)
    tx_raw = serialize_tx(block("277647").txs[1], witness=True)
    with pytest.raises(BlockParseError, match="trailing"):
        parse_tx(tx_raw + b"\x00\x00")


def test_bad_varints_raise() -> None:
    raw = raw_block("277647")
    header = raw[:80]
    body = raw[81:]  # 213 txs: count byte 0xd5
    assert raw[80] == 213
    cases = {
        "non-canonical 0xfd": b"\xfd\xd5\x00",  # 213 must be one byte
        "non-canonical 0xfe": b"\xfe\xd5\x00\x00\x00",
        "too large": b"\xfe\xff\xff\xff\x7f",
        "huge 0xff": b"\xff" + b"\xff" * 8,
        "truncated": b"\xfd\xd5",
    }
    for label, count in cases.items():
        with pytest.raises(BlockParseError) as info:
            parse_block(header + count + (b"" if label == "truncated" else body))
        assert info.value.offset == 80, label
    # a count that is canonical but promises more transactions than there are bytes
    with pytest.raises(BlockParseError, match="exceeds"):
        parse_block(header + b"\xfd\x00\xff" + body)

    tx = bytearray(serialize_tx(block("277647").txs[1], witness=True))
    bad_input_count = bytes(tx[:4]) + b"\xfd\x01\x00" + bytes(tx[5:])
    with pytest.raises(BlockParseError, match="non-canonical") as info:
        parse_tx(bad_input_count)
    assert info.value.offset == 4
    script_len_at = 4 + 1 + 36
    bad_script_len = bytes(tx[:script_len_at]) + b"\xff" + b"\xff" * 8 + bytes(tx[script_len_at + 1 :])
    with pytest.raises(BlockParseError, match="too large") as info:
        parse_tx(bad_script_len)
    assert info.value.offset == script_len_at


def test_bad_segwit_flag_and_superfluous_witness_raise() -> None:
    segwit_tx = next(tx for tx in block("702861").txs if tx.has_witness)
    raw = serialize_tx(segwit_tx, witness=True)
    assert raw[4:6] == b"\x00\x01"
    with pytest.raises(BlockParseError, match="unknown segwit flag") as info:
        parse_tx(raw[:5] + b"\x02" + raw[6:])
    assert info.value.offset == 5
    stripped_inputs = tuple(txin._replace(witness=()) for txin in segwit_tx.inputs)
    legacy = serialize_tx(segwit_tx._replace(inputs=stripped_inputs), witness=False)
    # marker + flag with every witness stack empty: Core rejects it
    superfluous = legacy[:4] + b"\x00\x01" + legacy[4:-4] + b"\x00" * len(stripped_inputs) + legacy[-4:]
    with pytest.raises(BlockParseError, match="superfluous witness"):
        parse_tx(superfluous)
    assert parse_tx(legacy).txid == segwit_tx.txid


def test_blk_framing_errors() -> None:
    raw = raw_block("277647")
    record = MAINNET_MAGIC + struct.pack("<I", len(raw)) + raw
    assert list(iter_blk_file(record + record + b"\x00" * 64)) == [raw, raw]
    assert list(iter_blk_file(b"")) == []
    with pytest.raises(BlockParseError, match="bad magic") as info:
        list(iter_blk_file(record + b"\x0b\x11\x09\x07" + record[4:]))
    assert info.value.offset == len(record)
    with pytest.raises(BlockParseError, match="runs past the end") as info:
        list(iter_blk_file(record[:-1]))
    assert info.value.offset == 4
    with pytest.raises(BlockParseError, match="truncated record length"):
        list(iter_blk_file(record + MAINNET_MAGIC + b"\x01"))


def test_merkle_root_edge_cases() -> None:
    with pytest.raises(ValueError, match="no transactions"):
        merkle_root([])
    one = "ab" * 32
    assert merkle_root([one]) == bytes.fromhex(one)[::-1]
    a, b, c = "01" * 32, "02" * 32, "03" * 32
    ab = dsha256(bytes.fromhex(a)[::-1] + bytes.fromhex(b)[::-1])
    cc = dsha256(bytes.fromhex(c)[::-1] * 2)
    assert merkle_root([a, b, c]) == dsha256(ab + cc)


def test_parse_accepts_bytearray_and_memoryview() -> None:
    raw = raw_block("277647")
    assert parse_block(bytearray(raw)) == block("277647")
    assert parse_block(memoryview(raw)) == block("277647")


def test_empty_input_vector_without_flag_means_no_outputs() -> None:
    """Core's reading of ``version | 0x00 | 0x00 | locktime``: no inputs, no outputs."""
    raw = bytes.fromhex("02000000" + "0000" + "00000000")
    tx = parse_tx(raw)
    assert (tx.inputs, tx.outputs, tx.size, tx.weight, tx.vsize) == ((), (), 10, 40, 10)
    assert tx.txid == tx.wtxid == dsha256(raw)[::-1].hex()
    assert not tx.is_coinbase
