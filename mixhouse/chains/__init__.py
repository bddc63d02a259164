"""Chain adapters: one per chain kind, behind the interface in :mod:`mixhouse.chains.base`.

Chain-specific branches stay in here; the mixer never asks which chain it talks to.
"""
