"""Throughput of the Bitcoin wire-format parser (:mod:`mixhouse.chains.bitcoin.parse`) on real
mainnet blocks.

The blocks are the test data in ``tests/data/bitcoin`` (heights 1..255, 277647, 574200,
702861: 258 blocks, 6,290 transactions, about 2.9 MB serialized), read and decompressed once
before timing. Two passes are timed, each the best of ``--runs`` runs (default 3):

* parse: :func:`parse_block` on every block (header hash, every tx parsed and its txid and
  wtxid computed);
* parse + decode: the same, then :func:`decode_script_pubkey` on every output (type and
  mainnet address).

Printed: blocks/s, transactions/s, outputs/s and MB/s, overall and per block for the three
large blocks. ``--extra FILE`` adds more raw blocks (no framing), for example btcd's block
540107 from the shared chain data.

Usage: ``python -m benchmarks.bitcoin_parse [--runs 3] [--extra path/to/block.blk ...]``
"""

from __future__ import annotations

import argparse
import bz2
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mixhouse.chains.bitcoin.parse import Block, decode_script_pubkey, iter_blk_file, parse_block

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "bitcoin"


def load_blocks(extra: Sequence[Path]) -> list[tuple[str, bytes]]:
    """``(label, raw block)`` for every test block, in chain order, then the extras."""
    blocks: list[tuple[str, bytes]] = []
    chain = bz2.decompress((DATA / "btcd" / "blocks1-256.bz2").read_bytes())
    blocks.extend((f"h{height}", raw) for height, raw in enumerate(iter_blk_file(chain), start=1))
    blocks.extend(
        ("277647", raw) for raw in iter_blk_file(bz2.decompress((DATA / "btcd" / "277647.dat.bz2").read_bytes()))
    )
    blocks.append(("574200", next((DATA / "btcd").glob("block-*.blk")).read_bytes()))
    blocks.append(("702861", next((DATA / "rust_bitcoin").glob("mainnet_block_*.raw")).read_bytes()))
    blocks.extend((path.name[:24], path.read_bytes()) for path in extra)
    return blocks


def parse_only(raws: Sequence[bytes]) -> int:
    n_tx = 0
    for raw in raws:
        n_tx += len(parse_block(raw).txs)
    return n_tx


def parse_and_decode(raws: Sequence[bytes]) -> int:
    n_tx = 0
    for raw in raws:
        blk: Block = parse_block(raw)
        for tx in blk.txs:
            for out in tx.outputs:
                decode_script_pubkey(out.script_pubkey)
        n_tx += len(blk.txs)
    return n_tx


def best_of(runs: int, fn: Callable[[Sequence[bytes]], int], raws: Sequence[bytes]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn(raws)
        best = min(best, time.perf_counter() - start)
    return best


def report(label: str, raws: Sequence[bytes], runs: int) -> None:
    blocks = [parse_block(raw) for raw in raws]
    n_blocks = len(blocks)
    n_tx = sum(len(b.txs) for b in blocks)
    n_out = sum(len(tx.outputs) for b in blocks for tx in b.txs)
    n_bytes = sum(len(raw) for raw in raws)
    print(f"{label}: {n_blocks} blocks, {n_tx} txs, {n_out} outputs, {n_bytes / 1e6:.2f} MB")
    for name, fn in (("parse", parse_only), ("parse+decode", parse_and_decode)):
        seconds = best_of(runs, fn, raws)
        print(
            f"  {name:<13} {seconds * 1000:8.1f} ms  {n_blocks / seconds:9.1f} blocks/s  "
            f"{n_tx / seconds:9.0f} tx/s  {n_out / seconds:9.0f} outputs/s  {n_bytes / 1e6 / seconds:6.1f} MB/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure; the best is kept")
    parser.add_argument("--extra", type=Path, nargs="*", default=[], help="more raw blocks (no framing)")
    args = parser.parse_args()
    blocks = load_blocks(args.extra)
    report("all blocks", [raw for _, raw in blocks], args.runs)
    report("heights 1..255", [raw for label, raw in blocks if label.startswith("h")], args.runs)
    for label, raw in blocks:
        if not label.startswith("h"):
            report(f"block {label}", [raw], args.runs)


if __name__ == "__main__":
    main()
