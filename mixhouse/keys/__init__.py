"""Key management: hierarchical deterministic keys derived from one BIP-39 mnemonic.

Every deposit address and the pool address of an EVM chain come from a single secret (the
mnemonic in ``MIXHOUSE_EVM_MNEMONIC``), so a backup of that phrase restores every key. See
:mod:`mixhouse.keys.hd` for the derivation paths (BIP-32 / BIP-44).
"""
