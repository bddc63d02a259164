"""UTXO payouts of several mixes in one transaction (issue 13, part 5).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

* ``payout_batches``: one signed transaction paying several released payouts (raw bytes, txid,
  miner fee in satoshi and each payout's share of it, change, virtual size), stored with its inputs reserved and its change
  recorded in the same transaction that moves its payouts to ``signed``, before any broadcast.
  ``state`` is ``open``, ``confirmed`` or ``replanned`` (an input was spent elsewhere, so it can
  never confirm and its payouts were scheduled again).
* ``sends.batch_id``: the batch a payout is an output of (NULL: a transaction of its own).
* ``utxos.reserved_by_batch`` / ``created_by_batch``: the batch spending a pool coin, and the
  batch whose change a coin is (the per-send links stay for single payouts).

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE payout_batches (
    id BIGSERIAL PRIMARY KEY,
    asset TEXT NOT NULL,
    state TEXT NOT NULL,
    txid TEXT NOT NULL,
    raw_tx BYTEA NOT NULL,
    payouts INTEGER NOT NULL,
    fee NUMERIC(78, 0) NOT NULL,
    fee_shares JSONB NOT NULL,
    change_amount NUMERIC(78, 0) NOT NULL,
    vsize INTEGER NOT NULL,
    broadcast_at TIMESTAMP WITH TIME ZONE,
    confirmed_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL
);
CREATE INDEX ix_payout_batches_open ON payout_batches (asset) WHERE state = 'open';

ALTER TABLE sends ADD COLUMN batch_id BIGINT REFERENCES payout_batches (id);
CREATE INDEX ix_sends_batch ON sends (batch_id) WHERE batch_id IS NOT NULL;

ALTER TABLE utxos ADD COLUMN reserved_by_batch BIGINT REFERENCES payout_batches (id);
ALTER TABLE utxos ADD COLUMN created_by_batch BIGINT REFERENCES payout_batches (id);
"""

DOWNGRADE = """
ALTER TABLE utxos DROP COLUMN created_by_batch;
ALTER TABLE utxos DROP COLUMN reserved_by_batch;
DROP INDEX ix_sends_batch;
ALTER TABLE sends DROP COLUMN batch_id;
DROP TABLE payout_batches;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
