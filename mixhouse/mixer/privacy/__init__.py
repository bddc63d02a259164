"""The privacy analyzer: what a chain analyst can link from the public record alone.

A pure core (no I/O): a public view of deposits and payouts and the service's documented rules
in, per-address anonymity sets and candidate links out. Used by ``mixhouse privacy report``,
by the payout release gate, and by ``benchmarks/privacy.py``.
"""
