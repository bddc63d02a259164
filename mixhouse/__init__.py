"""Mixhouse: a self-hosted cryptocurrency operations platform.

Subpackages: ``mixer`` (the mix lifecycle), ``chains`` (one adapter per chain),
``db`` (PostgreSQL through SQLAlchemy Core and Alembic), ``api`` (FastAPI).
"""

from mixhouse.recursion import pin_recursion_limit

__version__ = "0.1.0"

# Before any module of the package imports eth-account (and py_ecc with it): see
# mixhouse.recursion for the segfault this prevents.
pin_recursion_limit()
