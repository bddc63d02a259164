"""Watch-only extended keys (xpub / output descriptors) of wallets, and derived addresses.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

The DDL is frozen here as SQL (generated once from ``mixhouse.db.tables``, plus the CHECK
constraints) so that this revision means the same thing forever.

``wallet_addresses`` gains ``xpub_id``, ``branch`` (0 receive, 1 change) and
``derivation_index``: all three NULL for an address imported by hand, all three set for one
derived from an xpub. The unique constraint on the three keeps one address per derivation slot
and is the index that looks up an xpub's addresses (its leading column is ``xpub_id``).
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE wallet_xpubs (
    id BIGSERIAL NOT NULL,
    wallet_id BIGINT NOT NULL,
    chain TEXT DEFAULT 'BTC' NOT NULL,
    descriptor TEXT NOT NULL,
    script_type TEXT NOT NULL,
    gap_limit INTEGER DEFAULT 20 NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_wallet_xpubs_descriptor UNIQUE (wallet_id, descriptor),
    FOREIGN KEY(wallet_id) REFERENCES wallets (id),
    CONSTRAINT ck_wallet_xpubs_chain CHECK (chain = 'BTC'),
    CONSTRAINT ck_wallet_xpubs_script_type CHECK (script_type IN ('pkh', 'sh-wpkh', 'wpkh', 'tr')),
    CONSTRAINT ck_wallet_xpubs_gap_limit CHECK (gap_limit BETWEEN 1 AND 1000)
);

ALTER TABLE wallet_addresses
    ADD COLUMN xpub_id BIGINT,
    ADD COLUMN branch SMALLINT,
    ADD COLUMN derivation_index INTEGER,
    ADD FOREIGN KEY(xpub_id) REFERENCES wallet_xpubs (id),
    ADD CONSTRAINT uq_wallet_addresses_derivation UNIQUE (xpub_id, branch, derivation_index),
    ADD CONSTRAINT ck_wallet_addresses_derivation CHECK (
        (xpub_id IS NULL AND branch IS NULL AND derivation_index IS NULL)
        OR (xpub_id IS NOT NULL AND branch IS NOT NULL AND derivation_index IS NOT NULL)
    ),
    ADD CONSTRAINT ck_wallet_addresses_branch CHECK (branch IN (0, 1)),
    ADD CONSTRAINT ck_wallet_addresses_derivation_index CHECK (derivation_index >= 0);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE wallet_addresses
            DROP COLUMN derivation_index,
            DROP COLUMN branch,
            DROP COLUMN xpub_id;
        DROP TABLE wallet_xpubs;
        """
    )
