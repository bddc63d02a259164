"""Wiring: settings -> signers -> adapters -> runtime (:mod:`mixhouse.app.build`), the worker
and its tasks (:mod:`mixhouse.app.worker`), and the demos (:mod:`mixhouse.app.demos`).

The features (``mixer/``, ``wallets/``, ``otc/``) never import this package; the shells
(``cli.py``, ``api/``) do.
"""
