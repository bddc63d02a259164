"""Signatures and deposit keys per second: the software signer against SoftHSM2 (PKCS#11).

* signatures/s: ``sign_digest`` over distinct 32-byte digests with one key (the software
  signer: RFC 6979 in libsecp256k1 through embit; SoftHSM2: ``CKM_ECDSA`` in the token, then
  low S and a verification against the public key), plus the Ethereum recovery id
  (two recoveries) as every EVM send pays it, and Bitcoin's low-R variant;
* keys/s: new deposit keys, what issuing a deposit address costs: a fresh BIP-32 path derived
  and its public key (software), a key pair generated in the token and stored (SoftHSM2).

* deposit addresses issued/s on the token (with ``--database-url``, a PostgreSQL server):
  without the key buffer (index from ``key_counters`` and the key made in the token, in one
  transaction, as ``create_mix`` did) and with it (``mixhouse.keys.buffer.take_key`` from keys
  made ahead by ``top_up``), in a temporary database dropped afterwards. The buffer moves the
  token's work out of the issuing transaction: a burst up to the buffer's size is issued at the
  database's pace; a sustained rate above the token's keygen rate still drains it.

Each figure is the median of 3 runs. SoftHSM2 runs on a temporary token (``SOFTHSM2_CONF``
set by this script before the library loads).

Usage: ``python -m benchmarks.signer [--signatures 2000] [--keys 200] [--database-url URL]``
(``--database-url`` defaults to ``MIXHOUSE_TEST_DATABASE_URL``; without either, no issue figures)
"""

from __future__ import annotations

import argparse
import asyncio
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


async def _issue_rates(url: str, hsm: Signer, issues: int) -> tuple[float, float, float]:
    """(issued/s without the buffer, buffer filled/s, issued/s from the buffer), medians of 3."""
    import psycopg  # noqa: PLC0415

    from mixhouse.db.engine import make_engine, with_database  # noqa: PLC0415
    from mixhouse.db.migrate import upgrade  # noqa: PLC0415
    from mixhouse.keys.buffer import take_key, top_up  # noqa: PLC0415
    from mixhouse.keys.hd import evm_address  # noqa: PLC0415
    from mixhouse.mixer.mixes import next_key_index  # noqa: PLC0415
    from mixhouse.unit import unit  # noqa: PLC0415

    name = f"mh_bench_keys_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = with_database(url, name)
    try:
        upgrade(db_url)
        engine = make_engine(db_url, pool_size=4)

        def address_of(index: int) -> str:
            return evm_address(hsm.public_key(f"bench-issue/{index}"))

        inline, fill, buffered_rates = [], [], []
        try:
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(issues):
                    async with unit(engine) as work:  # the counter row stays locked while the token works
                        address_of(await next_key_index(work, "ETH"))
                inline.append(issues / (time.perf_counter() - started))
                started = time.perf_counter()
                await top_up(engine, "ETH", address_of, target=issues)
                fill.append(issues / (time.perf_counter() - started))
                started = time.perf_counter()
                for _ in range(issues):
                    async with unit(engine) as work:
                        assert await take_key(work.conn, "ETH") is not None
                buffered_rates.append(issues / (time.perf_counter() - started))
        finally:
            await engine.dispose()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return statistics.median(inline), statistics.median(fill), statistics.median(buffered_rates)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signatures", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--issues", type=int, default=100, help="deposit addresses issued per run")
    parser.add_argument("--database-url", default=os.environ.get("MIXHOUSE_TEST_DATABASE_URL"))
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
        if args.database_url:
            inline, fill, taken = asyncio.run(_issue_rates(args.database_url, hsm, args.issues))
            print("SoftHSM2 deposit addresses issued (PostgreSQL transaction each):")
            print(f"  without the key buffer/s {inline:10,.1f}")
            print(f"  buffer filled/s          {fill:10,.1f}")
            print(f"  from the key buffer/s    {taken:10,.1f}")


if __name__ == "__main__":
    main()
