"""Operator refunds of held deposits and acknowledged reconciliation mismatches.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

* ``uq_sends_one_refund``: at most one ``sends`` row of kind ``refund`` per deposit, so two
  refund requests racing past every other check still cannot create a second send
  (mixer/refunds.py).
* ``reconciliation_acknowledgements``: an operator's written acknowledgement of one
  reconciliation mismatch: the figures it covers (books and chain, the range the chain's
  balance could legitimately be in, and the discrepancy range ``actual - high .. actual - low``
  it accepts), who, why and when (mixer/acknowledgements.py).
* ``reconciliations.low`` / ``high``: the range of the last check (NULL for rows written
  before this revision), and ``acknowledgement_id``: the acknowledgement that covers the last
  check's mismatch, NULL when none does (payouts then stay paused).

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE UNIQUE INDEX uq_sends_one_refund ON sends (deposit_id) WHERE kind = 'refund';
CREATE TABLE reconciliation_acknowledgements (
    id BIGSERIAL NOT NULL,
    asset TEXT NOT NULL,
    expected NUMERIC(78, 0) NOT NULL,
    actual NUMERIC(78, 0) NOT NULL,
    low NUMERIC(78, 0) NOT NULL,
    high NUMERIC(78, 0) NOT NULL,
    discrepancy_low NUMERIC(78, 0) NOT NULL,
    discrepancy_high NUMERIC(78, 0) NOT NULL,
    operator TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_reconciliation_acknowledgements_asset ON reconciliation_acknowledgements (asset, id);
ALTER TABLE reconciliations ADD COLUMN low NUMERIC(78, 0);
ALTER TABLE reconciliations ADD COLUMN high NUMERIC(78, 0);
ALTER TABLE reconciliations ADD COLUMN acknowledgement_id BIGINT
    REFERENCES reconciliation_acknowledgements (id);
"""

DOWNGRADE = """
ALTER TABLE reconciliations DROP COLUMN acknowledgement_id;
ALTER TABLE reconciliations DROP COLUMN high;
ALTER TABLE reconciliations DROP COLUMN low;
DROP TABLE reconciliation_acknowledgements;
DROP INDEX uq_sends_one_refund;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
