"""Mixing that hides the link (issue 13): a quoted fee range, a release gate, payout rounds.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

* ``mixes.fee_min_bps`` / ``fee_max_bps``: the fee range quoted at creation (the fee itself is
  drawn in base units inside it when the deposit is pooled); ``fee_bps`` stays for mixes created
  before, now nullable. ``mixes.max_wait_seconds``: the longest a payout may wait for the release
  gate, shown at creation.
* ``deposits.pooled_at``, ``quantum``, ``released_at``, ``anonymity_set``: when the deposit joined
  the pool, its payouts' quantum, and when the release gate let its payouts go, with the
  anonymity set the analyzer measured then.
* ``sends.released_at``: set when the gate hands a payout to a round; a payout without it is
  never signed.
Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE mixes ADD COLUMN fee_min_bps INTEGER;
ALTER TABLE mixes ADD COLUMN fee_max_bps INTEGER;
ALTER TABLE mixes ADD COLUMN max_wait_seconds INTEGER;
UPDATE mixes SET fee_min_bps = fee_bps, fee_max_bps = fee_bps, max_wait_seconds = delay_max_seconds;
ALTER TABLE mixes ALTER COLUMN fee_min_bps SET NOT NULL;
ALTER TABLE mixes ALTER COLUMN fee_max_bps SET NOT NULL;
ALTER TABLE mixes ALTER COLUMN max_wait_seconds SET NOT NULL;
ALTER TABLE mixes ALTER COLUMN fee_bps DROP NOT NULL;

ALTER TABLE deposits ADD COLUMN pooled_at TIMESTAMP WITH TIME ZONE;
ALTER TABLE deposits ADD COLUMN quantum NUMERIC(78, 0);
ALTER TABLE deposits ADD COLUMN released_at TIMESTAMP WITH TIME ZONE;
ALTER TABLE deposits ADD COLUMN anonymity_set INTEGER;
UPDATE deposits SET pooled_at = updated_at, released_at = updated_at WHERE state = 'pooled';
CREATE INDEX ix_deposits_unreleased ON deposits (asset, pooled_at) WHERE state = 'pooled' AND released_at IS NULL;

ALTER TABLE sends ADD COLUMN released_at TIMESTAMP WITH TIME ZONE;
UPDATE sends SET released_at = created_at WHERE kind = 'payout';
CREATE INDEX ix_sends_round ON sends (asset, due_at) WHERE kind = 'payout' AND state = 'scheduled';
"""

DOWNGRADE = """
DROP INDEX ix_sends_round;
ALTER TABLE sends DROP COLUMN released_at;
DROP INDEX ix_deposits_unreleased;
ALTER TABLE deposits DROP COLUMN anonymity_set;
ALTER TABLE deposits DROP COLUMN released_at;
ALTER TABLE deposits DROP COLUMN quantum;
ALTER TABLE deposits DROP COLUMN pooled_at;
UPDATE mixes SET fee_bps = fee_max_bps WHERE fee_bps IS NULL;
ALTER TABLE mixes ALTER COLUMN fee_bps SET NOT NULL;
ALTER TABLE mixes DROP COLUMN max_wait_seconds;
ALTER TABLE mixes DROP COLUMN fee_max_bps;
ALTER TABLE mixes DROP COLUMN fee_min_bps;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
