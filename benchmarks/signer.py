"""Signatures and deposit keys per second: the software signer against SoftHSM2 (PKCS#11).

* signatures/s: ``sign_digest`` over distinct 32-byte digests with one key (the software
  signer: RFC 6979 in libsecp256k1 through embit; SoftHSM2: ``CKM_ECDSA`` in the token, then
  low S and a verification against the public key), plus the Ethereum recovery id
  (two recoveries) as every EVM send pays it, and Bitcoin's low-R variant;
* keys/s: new deposit keys, what issuing a deposit address costs: a fresh BIP-32 path derived
  and its public key (software), a key pair generated in the token and stored (SoftHSM2).

Each figure is the median of 3 runs. SoftHSM2 runs on a temporary token (``SOFTHSM2_CONF``
set by this script before the library loads).

Usage: ``python -m benchmarks.signer [--signatures 2000] [--keys 200]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from mixhouse.keys.bip84 import Bip84Keyring, key_path
from mixhouse.keys.hd import HdKeyring, deposit_path
from mixhouse.keys.signer import Signer, SoftwareSigner, recovery_id

MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-user-pin"


def _median_rate(runs: int, count: int, work: Callable[[int], None]) -> float:
    rates = []
    for run in range(runs):
        started = time.perf_counter()
        work(run)
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def _softhsm_signer(root: Path) -> Signer:
    from mixhouse.keys.hsm import Pkcs11Signer  # noqa: PLC0415 - after SOFTHSM2_CONF is set

    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--so-pin", "bench-so-pin", "--pin", PIN],
        check=True,
        capture_output=True,
    )
    return Pkcs11Signer(module=SOFTHSM_MODULE, token_label="bench", pin=PIN, label_prefix=f"{uuid.uuid4().hex}/")


def _measure(name: str, signer: Signer, new_key: Callable[[int], str], signatures: int, keys: int) -> None:
    ref = new_key(10**6)
    public = signer.public_key(ref)
    digests = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(signatures)]

    def sign(_: int) -> None:
        for digest in digests:
            signer.sign_digest(ref, digest)

    def sign_eth(_: int) -> None:
        for digest in digests:
            r, s = signer.sign_digest(ref, digest)
            recovery_id(public, digest, r, s)

    def sign_btc(_: int) -> None:
        for digest in digests:
            signer.sign_digest(ref, digest, low_r=True)

    def make_keys(run: int) -> None:
        for i in range(keys):
            signer.public_key(new_key(run * keys + i))

    print(f"{name}:")
    print(f"  signatures/s            {_median_rate(3, signatures, sign):10,.0f}")
    print(f"  EVM (+ recovery id)/s   {_median_rate(3, signatures, sign_eth):10,.0f}")
    print(f"  Bitcoin (low R)/s       {_median_rate(3, signatures, sign_btc):10,.0f}")
    print(f"  deposit keys/s          {_median_rate(3, keys, make_keys):10,.0f}")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signatures", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=200)
    args = parser.parse_args()
    evm = SoftwareSigner.for_evm(HdKeyring(MNEMONIC))
    _measure("software signer, EVM keyring (BIP-32 m/44'/60'/0'/0/i)", evm, deposit_path, args.signatures, args.keys)
    btc = SoftwareSigner.for_bip84(Bip84Keyring(MNEMONIC, "regtest"))
    _measure(
        "software signer, BIP-84 keyring (m/84'/1'/0'/0/i)",
        btc,
        lambda i: key_path("regtest", 0, i),
        args.signatures,
        args.keys,
    )
    if not Path(SOFTHSM_MODULE).exists():
        print(f"SoftHSM2 not installed ({SOFTHSM_MODULE}): `make install`")
        return
    with tempfile.TemporaryDirectory() as root:
        hsm = _softhsm_signer(Path(root))
        _measure("SoftHSM2 token (PKCS#11, CKM_ECDSA)", hsm, deposit_path, args.signatures, args.keys)


if __name__ == "__main__":
    main()
