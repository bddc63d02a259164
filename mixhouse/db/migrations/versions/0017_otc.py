"""The OTC node's tables: its orders and the book it learned, its takes, its trades, its outbox.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02

See ``mixhouse.db.tables`` (``otc_*``) and ``mixhouse.otc.store``. Frozen SQL, like the
earlier revisions.
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE otc_orders (
    id TEXT NOT NULL,
    mine BOOLEAN NOT NULL,
    owner TEXT NOT NULL,
    pair TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity NUMERIC(78, 0) NOT NULL,
    price NUMERIC(78, 0) NOT NULL,
    tif TEXT NOT NULL,
    min_fill NUMERIC(78, 0) NOT NULL,
    created_at_ms BIGINT NOT NULL,
    good_till_ms BIGINT,
    nonce TEXT NOT NULL,
    order_sig TEXT NOT NULL,
    version BIGINT NOT NULL,
    remaining NUMERIC(78, 0) NOT NULL,
    state TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    address TEXT NOT NULL,
    status_sig TEXT NOT NULL,
    reserved NUMERIC(78, 0) DEFAULT 0 NOT NULL,
    rested BOOLEAN DEFAULT false NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT ck_otc_orders_remaining CHECK (remaining >= 0 AND remaining <= quantity),
    CONSTRAINT ck_otc_orders_reserved CHECK (reserved >= 0 AND reserved <= remaining)
);
CREATE INDEX ix_otc_orders_book ON otc_orders (pair, side, price, created_at_ms);
CREATE TABLE otc_takes (
    maker_order_id TEXT NOT NULL,
    taker_order_id TEXT NOT NULL,
    maker_owner TEXT NOT NULL,
    quantity NUMERIC(78, 0) NOT NULL,
    state TEXT NOT NULL,
    granted NUMERIC(78, 0),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (maker_order_id, taker_order_id)
);
CREATE TABLE otc_trades (
    id TEXT NOT NULL,
    maker_order_id TEXT NOT NULL,
    taker_order_id TEXT NOT NULL,
    role TEXT NOT NULL,
    pair TEXT NOT NULL,
    taker_side TEXT NOT NULL,
    price NUMERIC(78, 0) NOT NULL,
    quantity NUMERIC(78, 0) NOT NULL,
    quote_amount NUMERIC(78, 0) NOT NULL,
    maker_node TEXT NOT NULL,
    taker_node TEXT NOT NULL,
    state TEXT NOT NULL,
    peer_confirmed BOOLEAN DEFAULT false NOT NULL,
    confirm_acked BOOLEAN DEFAULT false NOT NULL,
    agreed_at_ms BIGINT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_otc_trades_fill UNIQUE (maker_order_id, taker_order_id),
    CONSTRAINT ck_otc_trades_quantity CHECK (quantity > 0)
);
CREATE TABLE otc_outbox (
    id BIGSERIAL NOT NULL,
    target_node TEXT NOT NULL,
    kind TEXT NOT NULL,
    trade_id TEXT,
    payload JSONB NOT NULL,
    attempts INTEGER DEFAULT 0 NOT NULL,
    next_attempt_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    delivered_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_otc_outbox_due ON otc_outbox (next_attempt_at) WHERE delivered_at IS NULL;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP TABLE otc_outbox; DROP TABLE otc_trades; DROP TABLE otc_takes; DROP TABLE otc_orders")
