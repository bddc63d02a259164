"""The P2P OTC exchange: a Grenache peer network where each node holds its own copy of the
order book, signs its own orders and is the only one that may fill them.

Modules: ``pairs`` (pairs and their rules), ``identity`` (the node key, BIP-340 signatures),
``orders`` (signed order records and their validation), ``store`` (the node's PostgreSQL
state), ``node`` (distribution, anti-entropy, expiry, the owner-authoritative take, trade
confirmations), ``api`` and ``cli`` (the shells), ``demo``; ``grenache`` (transport),
``matching`` (the pure engine) and ``devnet`` (local grapes) are their own packages.
"""
