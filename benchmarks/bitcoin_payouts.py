"""Bitcoin payouts built and signed per second (coin selection + BIP-143 signing, no node).

Each payout selects from a pool of 200 coins (a quarter of them owned by the paying mix, so
they must be skipped), builds a P2WPKH transaction with change, and signs every input.

Then the same payouts in batches (mixer/utxo_batches.py: several mixes' payouts in one
transaction, change to one fresh pool key, outputs shuffled): payouts per transaction and
virtual bytes per payout (what the miners are paid for, at a fixed sat/vB) one per transaction
versus batched, and the batches built and signed per second.

Usage: ``python -m benchmarks.bitcoin_payouts [--payouts 300] [--batch 10 50]``
"""

from __future__ import annotations

import argparse
import hashlib
import time

from mixhouse.chains.base import PoolCoin
from mixhouse.chains.bitcoin.pool_spend import build_pool_spend
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.signer import SoftwareSigner

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payouts", type=int, default=300)
    parser.add_argument("--batch", type=int, nargs="*", default=[10, 50], help="outputs per batch")
    args = parser.parse_args()
    keyring = Bip84Keyring(MNEMONIC, "regtest")
    coins = [
        PoolCoin(
            hashlib.sha256(f"c{n}".encode()).hexdigest(),
            n % 4,
            100_000 + 37_000 * n,
            keyring.address(0, n),
            0,
            n,
            f"mix-{n % 4}" if n % 4 == 0 else None,
        )
        for n in range(200)
    ]
    for n in range(200):  # warm the key cache: derivation is not what is measured
        keyring.private_key(0, n)
    targets = [keyring.address(0, 1000 + i) for i in range(args.payouts)]
    inputs = vbytes = 0
    start = time.perf_counter()
    for i, target in enumerate(targets):
        spend = build_pool_spend(
            signer=SoftwareSigner.for_bip84(keyring),
            network="regtest",
            coins=coins,
            exclude_owner="mix-0",
            payments=[(target, 1_000_000 + 7_919 * i)],
            change_index=i,
            fee_rate=5,
            max_fee=100_000,
            rng_seed=i,
        )
        inputs += len(spend.inputs)
        vbytes += spend.vsize
    elapsed = time.perf_counter() - start
    print(f"{args.payouts} payouts built and signed in {elapsed:.2f} s: {args.payouts / elapsed:.0f} payouts/s")
    print(f"({inputs} inputs signed: {inputs / elapsed:.0f} signatures/s)")
    print(f"one per transaction: 1.0 payouts/tx, {vbytes / args.payouts:.1f} vB per payout")
    for size in args.batch:
        batched_vbytes = txs = 0
        start = time.perf_counter()
        for offset in range(0, args.payouts, size):
            chunk = list(enumerate(targets))[offset : offset + size]
            spend = build_pool_spend(
                signer=SoftwareSigner.for_bip84(keyring),
                network="regtest",
                coins=coins,
                exclude_owner="mix-0",
                payments=[(target, 1_000_000 + 7_919 * i) for i, target in chunk],
                change_index=offset,
                fee_rate=5,
                max_fee=10**7,
                rng_seed=offset,
            )
            batched_vbytes += spend.vsize
            txs += 1
        elapsed = time.perf_counter() - start
        print(
            f"batches of {size}: {args.payouts / txs:.1f} payouts/tx, "
            f"{batched_vbytes / args.payouts:.1f} vB per payout ({100 * (1 - batched_vbytes / vbytes):.0f}% less), "
            f"{txs / elapsed:.0f} batches/s"
        )


if __name__ == "__main__":
    main()
