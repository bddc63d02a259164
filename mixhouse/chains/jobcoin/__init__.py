"""Jobcoin: a simple account ledger spoken to over HTTP.

``ledger`` and ``ledger_app`` are a local Jobcoin ledger (a development chain persisted in
PostgreSQL and served with the original Jobcoin HTTP API); ``adapter`` is the
:class:`~mixhouse.chains.base.ChainAdapter` that talks to any server speaking that API.
"""
