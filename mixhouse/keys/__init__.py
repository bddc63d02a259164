"""Key management: who holds the private keys, and how keys are named.

* :mod:`mixhouse.keys.signer` - the :class:`~mixhouse.keys.signer.Signer` interface the chain
  adapters sign through (the only code that uses private keys), the software signer, low S,
  DER, Ethereum recovery ids, :class:`~mixhouse.keys.signer.SignerHealth`;
* :mod:`mixhouse.keys.hd` and :mod:`mixhouse.keys.bip84` - BIP-39/BIP-32 keys derived from one
  mnemonic per chain (the software signer's keys; a backup of the phrase restores every key);
* :mod:`mixhouse.keys.keystore` - those mnemonics encrypted at rest (Argon2id, ChaCha20-Poly1305)
  in one file, unlocked at start; :mod:`mixhouse.keys.cli` (``mixhouse keys ...``) and
  :mod:`mixhouse.keys.xpubs` (fingerprints, xpubs, the pool address: the public side);
* :mod:`mixhouse.keys.hsm` - the PKCS#11 signer: keys generated and kept inside a token;
* :mod:`mixhouse.keys.audited` - every signature noted for the audit log (key id, role, never
  the key); :mod:`mixhouse.keys.health` - the signers' health gauges of ``/metrics``;
* :mod:`mixhouse.keys.buffer` - deposit keys pre-generated in a slow token, taken under
  ``FOR UPDATE SKIP LOCKED``.
"""
