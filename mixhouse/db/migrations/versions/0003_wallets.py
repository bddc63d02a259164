"""Wallet sync: users, API keys, wallets, imported addresses, address history and balances.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

The DDL is frozen here as SQL (generated once from ``mixhouse.db.tables``, plus the CHECK
constraints) so that this revision means the same thing forever.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE users (
    id BIGSERIAL NOT NULL,
    name TEXT NOT NULL,
    is_admin BOOLEAN DEFAULT false NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_users_name UNIQUE (name)
);

CREATE TABLE api_keys (
    id BIGSERIAL NOT NULL,
    user_id BIGINT NOT NULL,
    key_hash BYTEA NOT NULL,
    label TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    revoked_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (id),
    CONSTRAINT uq_api_keys_key_hash UNIQUE (key_hash),
    FOREIGN KEY(user_id) REFERENCES users (id),
    CONSTRAINT ck_api_keys_hash_length CHECK (octet_length(key_hash) = 32)
);

CREATE INDEX ix_api_keys_user ON api_keys (user_id);

CREATE TABLE wallets (
    id BIGSERIAL NOT NULL,
    user_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_wallets_user_name UNIQUE (user_id, name),
    FOREIGN KEY(user_id) REFERENCES users (id)
);

CREATE TABLE wallet_addresses (
    id BIGSERIAL NOT NULL,
    wallet_id BIGINT NOT NULL,
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    status TEXT DEFAULT 'pending' NOT NULL,
    error TEXT,
    checkpoint TEXT,
    synced_height BIGINT,
    last_synced_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_wallet_addresses UNIQUE (wallet_id, chain, address),
    FOREIGN KEY(wallet_id) REFERENCES wallets (id),
    CONSTRAINT ck_wallet_addresses_chain CHECK (chain IN ('BTC', 'ETH', 'JOBCOIN')),
    CONSTRAINT ck_wallet_addresses_status CHECK (status IN ('pending', 'syncing', 'synced', 'error'))
);

CREATE INDEX ix_wallet_addresses_chain_address ON wallet_addresses (chain, address);

CREATE TABLE address_txs (
    id BIGSERIAL NOT NULL,
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    txid TEXT NOT NULL,
    asset TEXT NOT NULL,
    direction TEXT NOT NULL,
    net NUMERIC(78, 0) NOT NULL,
    fee NUMERIC(78, 0),
    block_height BIGINT,
    block_hash TEXT,
    block_time TIMESTAMP WITH TIME ZONE,
    inputs JSONB NOT NULL,
    outputs JSONB NOT NULL,
    first_seen_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_address_txs UNIQUE (chain, address, txid, asset),
    CONSTRAINT ck_address_txs_direction CHECK (direction IN ('in', 'out', 'self'))
);

CREATE INDEX ix_address_txs_height ON address_txs (chain, block_height);

CREATE INDEX ix_address_txs_listing ON address_txs (chain, address, coalesce(block_time, first_seen_at) DESC, id DESC);

CREATE TABLE address_balances (
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    asset TEXT NOT NULL,
    confirmed NUMERIC(78, 0) NOT NULL,
    unconfirmed NUMERIC(78, 0) NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (chain, address, asset)
);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    op.execute("DROP TABLE address_balances, address_txs, wallet_addresses, wallets, api_keys, users")
