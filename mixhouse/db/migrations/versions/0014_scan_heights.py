"""Chain scans' heights: how far each scan is behind the chain's tip.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02

* ``chain_cursors.tip_height``: the chain's height the last scan saw (EVM ``eth_blockNumber``,
  Bitcoin ``getblockcount``, Jobcoin the ledger's highest transfer id).
* ``chain_cursors.scanned_height``: the height that scan read through (one below where the
  next scan starts). ``tip_height - scanned_height`` is ``mixhouse_scan_lag_blocks``.

Both are written with the cursor in the scan's transaction, and are NULL until a scan that
knows them (or where the adapter cannot tell: a Jobcoin ledger without the history cursor).

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE chain_cursors ADD COLUMN tip_height BIGINT, ADD COLUMN scanned_height BIGINT;
"""

DOWNGRADE = """
ALTER TABLE chain_cursors DROP COLUMN scanned_height, DROP COLUMN tip_height;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
