"""Key management: who holds the private keys, and how keys are named.

* :mod:`mixhouse.keys.signer` - the :class:`~mixhouse.keys.signer.Signer` interface the chain
  adapters sign through (the only code that uses private keys), the software signer, low S,
  DER, Ethereum recovery ids;
* :mod:`mixhouse.keys.hd` and :mod:`mixhouse.keys.bip84` - BIP-39/BIP-32 keys derived from one
  mnemonic per chain (the software signer's keys; a backup of the phrase restores every key);
* :mod:`mixhouse.keys.hsm` - the PKCS#11 signer: keys generated and kept inside a token.
"""
