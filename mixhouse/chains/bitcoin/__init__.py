"""Bitcoin support: networks and addresses, BIP-84 keys, coin selection and transaction signing.

* :mod:`.networks` - network parameters (Bitcoin Core's mainnet, testnet, signet, regtest),
  address validation (base58check P2PKH/P2SH, BIP-173 bech32 v0, BIP-350 bech32m v1) and
  the address <-> scriptPubKey mapping;
* :mod:`.coinselect` - pure coin selection with vsize and fee arithmetic in satoshi;
* :mod:`.txbuild` - building and signing P2WPKH spends (BIP-141/143) offline.

The keys themselves (BIP-32/39/84) live in :mod:`mixhouse.keys.bip84`.
"""
