"""Bitcoin payouts built and signed per second (coin selection + BIP-143 signing, no node).

Each payout selects from a pool of 200 coins (a quarter of them owned by the paying mix, so
they must be skipped), builds a P2WPKH transaction with change, and signs every input.

Usage: ``python -m benchmarks.bitcoin_payouts [--payouts 300]``
"""

from __future__ import annotations

import argparse
import hashlib
import time

from mixhouse.chains.base import PoolCoin
from mixhouse.chains.bitcoin.pool_spend import build_pool_spend
from mixhouse.keys.bip84 import Bip84Keyring

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payouts", type=int, default=300)
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
    inputs = 0
    start = time.perf_counter()
    for i, target in enumerate(targets):
        spend = build_pool_spend(
            keyring=keyring,
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
    elapsed = time.perf_counter() - start
    print(f"{args.payouts} payouts built and signed in {elapsed:.2f} s: {args.payouts / elapsed:.0f} payouts/s")
    print(f"({inputs} inputs signed: {inputs / elapsed:.0f} signatures/s)")


if __name__ == "__main__":
    main()
