"""Operators of the admin dashboard and their sessions.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01

* ``operators``: one row per operator, created with ``mixhouse operator create``; only the
  Argon2id hash of the password is stored (argon2-cffi's PHC string).
* ``operator_sessions``: one row per login. The browser holds a random token in a cookie; the
  database holds its SHA-256, the CSRF token of the session's forms and its expiry, so a
  session can be ended on the server and no API process needs a signing key.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE operators (
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (name)
);
CREATE TABLE operator_sessions (
    token_hash BYTEA NOT NULL,
    operator TEXT NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (token_hash)
);
CREATE INDEX ix_operator_sessions_expires ON operator_sessions (expires_at);
"""

DOWNGRADE = """
DROP TABLE operator_sessions;
DROP TABLE operators;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
