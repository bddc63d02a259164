"""The pool's UTXOs (Bitcoin).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE utxos (
    asset TEXT NOT NULL,
    txid TEXT NOT NULL,
    vout INTEGER NOT NULL,
    address TEXT NOT NULL,
    key_chain INTEGER NOT NULL,
    key_index BIGINT NOT NULL,
    amount NUMERIC(78, 0) NOT NULL,
    owner_mix_id TEXT,
    deposit_id BIGINT,
    state TEXT NOT NULL,
    reserved_by_send BIGINT,
    created_by_send BIGINT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (asset, txid, vout),
    FOREIGN KEY(deposit_id) REFERENCES deposits (id),
    FOREIGN KEY(reserved_by_send) REFERENCES sends (id),
    FOREIGN KEY(created_by_send) REFERENCES sends (id),
    CONSTRAINT ck_utxo_amount_positive CHECK (amount > 0),
    CONSTRAINT ck_utxo_state CHECK (state IN ('unconfirmed', 'available', 'reserved', 'spent'))
);
CREATE INDEX ix_utxos_available ON utxos (asset, state);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    op.execute("DROP TABLE utxos")
