"""Storage: the PostgreSQL engine (external or embedded), tables and migrations."""
