"""The whole-suite secret grep (issue 12): no mnemonic or private key of the test settings in
any captured log line, output or traceback of any test.

:class:`SecretGrep` knows the test suite's mnemonics and the private keys they derive (Ethereum
deposit and pool keys, Bitcoin BIP-84 deposit and change keys, on every network the tests use)
in the forms a leak would take: the phrase, 64 hex digits with or without ``0x``, and WIF.
``tests/conftest.py`` feeds it every test report's captured sections (stdout, stderr, log
records) and traceback, and fails the session if any holds one, naming the test and the kind
of secret, never the secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from embit import ec  # type: ignore[import-untyped]
from embit.networks import NETWORKS  # type: ignore[import-untyped]

from mixhouse.config import DEV_MNEMONIC
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.hd import POOL_PATH, HdKeyring, deposit_path

# Every BIP-39 phrase the tests give a signer or a keystore.
TEST_MNEMONICS = (
    DEV_MNEMONIC,
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
    "end wool manage flavor able hockey relax cattle size approve style mystery",
    "legal winner thank year wave sausage worth useful legal winner thank yellow",
)
# Keys derived per chain and mnemonic: more than any test uses (deposit indexes, pool generations).
KEYS_PER_CHAIN = 40
POOL_GENERATIONS = 8
BITCOIN_NETWORKS = ("regtest", "testnet", "mainnet")
# Candidates: runs of hex digits (a key is 64 of them, inside a longer run too) and base58 words
# of a WIF's length (51 uncompressed, 52 compressed).
_HEX_RUN = re.compile(r"[0-9a-fA-F]{64,}")
_BASE58_WORD = re.compile(r"(?<![1-9A-HJ-NP-Za-km-z])[1-9A-HJ-NP-Za-km-z]{51,52}(?![1-9A-HJ-NP-Za-km-z])")


@dataclass(slots=True)
class Leak:
    """Where a secret showed up: the test's node id, the report section, the kind of secret."""

    where: str
    section: str
    kind: str


@dataclass(slots=True)
class SecretGrep:
    """Searches texts for the test secrets; :attr:`leaks` collects what it found."""

    needles: dict[str, str]  # secret text -> kind ("mnemonic", "eth key", "btc key (wif)"...)
    leaks: list[Leak] = field(default_factory=list)

    @classmethod
    def for_test_settings(cls) -> SecretGrep:
        """The grep of :data:`TEST_MNEMONICS` and their first keys."""
        needles: dict[str, str] = {}
        for mnemonic in TEST_MNEMONICS:
            needles[mnemonic] = "mnemonic"
            evm = HdKeyring(mnemonic)
            paths = [deposit_path(i) for i in range(KEYS_PER_CHAIN)] + [POOL_PATH]
            paths += [f"m/44'/60'/1'/0/{g}" for g in range(1, POOL_GENERATIONS)]
            for path in paths:
                secret = evm.private_key(path).hex()
                needles[secret] = "eth private key (hex)"
            for network in BITCOIN_NETWORKS:
                btc = Bip84Keyring(mnemonic, network)
                for change in (0, 1):
                    for index in range(KEYS_PER_CHAIN):
                        secret_bytes = btc.private_key(change, index)
                        needles[secret_bytes.hex()] = "btc private key (hex)"
                        wif = ec.PrivateKey(secret_bytes).wif(NETWORKS[_embit_network(network)])
                        needles[wif] = "btc private key (wif)"
        return cls(needles)

    def check(self, text: str, *, where: str, section: str) -> None:
        """Record a :class:`Leak` for each secret in ``text`` (hex compared case-insensitively,
        found inside longer hex runs too: a key glued to other bytes is still a leak)."""
        if not text:
            return
        found: set[str] = set()
        for match in _HEX_RUN.findall(text):
            run = match.lower()
            found.update(run[i : i + 64] for i in range(len(run) - 63) if run[i : i + 64] in self.needles)
        found.update(word for word in _BASE58_WORD.findall(text) if word in self.needles)
        found.update(phrase for phrase in TEST_MNEMONICS if phrase in text)
        for needle in sorted(found):
            leak = Leak(where, section, self.needles[needle])
            if leak not in self.leaks:  # a teardown report repeats the call's sections
                self.leaks.append(leak)


def _embit_network(network: str) -> str:
    return {"mainnet": "main", "testnet": "test", "regtest": "regtest"}[network]
