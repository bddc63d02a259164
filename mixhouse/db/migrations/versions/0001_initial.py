"""Initial schema: mixes, deposits, sends, audit log, ledger, and procrastinate's tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

The DDL is frozen here as SQL (generated once from ``mixhouse.db.tables``) so that this
revision means the same thing forever, whatever the tables module becomes later.
"""

from alembic import op
from procrastinate.schema import SchemaManager

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE account_nonces (
    asset TEXT NOT NULL,
    address TEXT NOT NULL,
    next_nonce BIGINT NOT NULL,
    PRIMARY KEY (asset, address)
);

CREATE TABLE audit_log (
    id BIGSERIAL NOT NULL,
    at TIMESTAMP WITH TIME ZONE NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    asset TEXT,
    amount NUMERIC(78, 0),
    details JSONB NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (id)
);

CREATE INDEX ix_audit_entity ON audit_log (entity_type, entity_id);

CREATE TABLE chain_cursors (
    asset TEXT NOT NULL,
    cursor TEXT NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (asset)
);

CREATE TABLE key_counters (
    asset TEXT NOT NULL,
    next_index BIGINT NOT NULL,
    PRIMARY KEY (asset)
);

CREATE TABLE ledger_balances (
    address TEXT NOT NULL,
    balance NUMERIC(78, 0) NOT NULL,
    PRIMARY KEY (address)
);

CREATE TABLE ledger_transfers (
    id BIGSERIAL NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    from_address TEXT,
    to_address TEXT NOT NULL,
    amount NUMERIC(78, 0) NOT NULL,
    PRIMARY KEY (id)
);

CREATE INDEX ix_ledger_transfers_from ON ledger_transfers (from_address, id);

CREATE INDEX ix_ledger_transfers_to ON ledger_transfers (to_address, id);

CREATE TABLE mixes (
    id TEXT NOT NULL,
    asset TEXT NOT NULL,
    state TEXT NOT NULL,
    deposit_address TEXT NOT NULL,
    deposit_key_index BIGINT,
    withdrawal_addresses JSONB NOT NULL,
    fee_bps INTEGER NOT NULL,
    min_deposit NUMERIC(78, 0) NOT NULL,
    max_deposit NUMERIC(78, 0) NOT NULL,
    delay_min_seconds INTEGER NOT NULL,
    delay_max_seconds INTEGER NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    watch_until TIMESTAMP WITH TIME ZONE NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_mixes_deposit_address UNIQUE (asset, deposit_address)
);

CREATE INDEX ix_mixes_watch ON mixes (asset, watch_until);

CREATE TABLE reconciliations (
    asset TEXT NOT NULL,
    checked_at TIMESTAMP WITH TIME ZONE NOT NULL,
    pool_address TEXT NOT NULL,
    expected NUMERIC(78, 0) NOT NULL,
    actual NUMERIC(78, 0) NOT NULL,
    ok BOOLEAN NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (asset)
);

CREATE TABLE sanctioned_addresses (
    address_norm TEXT NOT NULL,
    source TEXT NOT NULL,
    added_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (address_norm, source)
);

CREATE TABLE deposits (
    id BIGSERIAL NOT NULL,
    mix_id TEXT NOT NULL,
    asset TEXT NOT NULL,
    chain_ref TEXT NOT NULL,
    deposit_address TEXT NOT NULL,
    from_addresses JSONB NOT NULL,
    amount NUMERIC(78, 0) NOT NULL,
    state TEXT NOT NULL,
    confirmations INTEGER DEFAULT '0' NOT NULL,
    block_number BIGINT,
    reason TEXT,
    fee_amount NUMERIC(78, 0),
    network_fee_amount NUMERIC(78, 0),
    payout_total NUMERIC(78, 0),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_deposits_chain_ref UNIQUE (asset, chain_ref),
    FOREIGN KEY(mix_id) REFERENCES mixes (id)
);

CREATE INDEX ix_deposits_mix ON deposits (mix_id);

CREATE INDEX ix_deposits_state ON deposits (asset, state);

CREATE TABLE sends (
    id BIGSERIAL NOT NULL,
    kind TEXT NOT NULL,
    asset TEXT NOT NULL,
    mix_id TEXT NOT NULL,
    deposit_id BIGINT NOT NULL,
    from_address TEXT NOT NULL,
    from_key_index BIGINT,
    to_address TEXT NOT NULL,
    amount NUMERIC(78, 0) NOT NULL,
    network_fee_reserved NUMERIC(78, 0) DEFAULT '0' NOT NULL,
    network_fee_paid NUMERIC(78, 0),
    due_at TIMESTAMP WITH TIME ZONE NOT NULL,
    state TEXT NOT NULL,
    raw_tx BYTEA,
    txid TEXT,
    nonce BIGINT,
    serial_key TEXT,
    attempts INTEGER DEFAULT '0' NOT NULL,
    last_error TEXT,
    signed_at TIMESTAMP WITH TIME ZONE,
    broadcast_at TIMESTAMP WITH TIME ZONE,
    confirmed_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(mix_id) REFERENCES mixes (id),
    FOREIGN KEY(deposit_id) REFERENCES deposits (id)
);

CREATE INDEX ix_sends_deposit ON sends (deposit_id);

CREATE INDEX ix_sends_mix ON sends (mix_id);

CREATE INDEX ix_sends_state ON sends (asset, state);

CREATE UNIQUE INDEX uq_sends_one_in_flight ON sends (serial_key) WHERE state = 'signed' AND serial_key IS NOT NULL;
"""

GUARDS = """
ALTER TABLE ledger_balances ADD CONSTRAINT ck_ledger_balance_nonnegative CHECK (balance >= 0);
ALTER TABLE ledger_transfers ADD CONSTRAINT ck_ledger_amount_positive CHECK (amount > 0);
ALTER TABLE deposits ADD CONSTRAINT ck_deposit_amount_positive CHECK (amount > 0);
ALTER TABLE sends ADD CONSTRAINT ck_send_amount_positive CHECK (amount > 0);

-- The audit log is append-only: no role may rewrite history, not even the owner.
CREATE FUNCTION mixhouse_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION mixhouse_audit_append_only();
"""


def upgrade() -> None:
    op.execute(SchemaManager.get_schema())
    op.execute(SCHEMA)
    op.execute(GUARDS)


def downgrade() -> None:
    raise NotImplementedError("the initial schema is not downgraded; drop the database instead")
