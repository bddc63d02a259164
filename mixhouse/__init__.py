"""Mixhouse: a self-hosted cryptocurrency operations platform.

Subpackages: ``mixer`` (the mix lifecycle), ``chains`` (one adapter per chain),
``db`` (PostgreSQL through SQLAlchemy Core and Alembic), ``api`` (FastAPI).
"""

__version__ = "0.1.0"
