"""The OTC swap engine's table: one row per atomic swap (one per fill), its state and its
stored transactions, and the messages it owes the other node.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02

See ``mixhouse.otc.swaps.store``. Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE otc_swaps (
    id TEXT NOT NULL,
    trade_id TEXT NOT NULL,
    role TEXT NOT NULL,
    peer TEXT NOT NULL,
    state TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    secret TEXT,
    terms JSONB NOT NULL,
    data JSONB DEFAULT '{}'::jsonb NOT NULL,
    next_check_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT ck_otc_swaps_role CHECK (role IN ('initiator', 'participant'))
);
CREATE INDEX ix_otc_swaps_trade ON otc_swaps (trade_id);
CREATE INDEX ix_otc_swaps_open ON otc_swaps (state, next_check_at);
CREATE TABLE otc_swap_outbox (
    id BIGSERIAL NOT NULL,
    swap_id TEXT NOT NULL REFERENCES otc_swaps (id),
    kind TEXT NOT NULL,
    payload JSONB NOT NULL,
    delivered BOOLEAN DEFAULT false NOT NULL,
    attempts INTEGER DEFAULT 0 NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_otc_swap_outbox UNIQUE (swap_id, kind)
);
"""

DOWNGRADE = """
DROP TABLE otc_swap_outbox;
DROP TABLE otc_swaps;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
