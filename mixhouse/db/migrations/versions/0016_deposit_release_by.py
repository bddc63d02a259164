"""The release gate's secret fallback moment of each waiting deposit.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02

``deposits.release_by``: when the gate lets a deposit go even though its anonymity set is below
``k``. Drawn once, uniformly between its first payout's due time and its latest release
moment, the first time the gate sees it waiting, and never shown. Before this the gate waited
for the documented maximum wait itself, so a thin deposit's payouts left at ``arrival +
max_wait``, a moment anyone can compute (``mixhouse.mixer.privacy.deadline``).

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE deposits ADD COLUMN release_by timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE deposits DROP COLUMN release_by")
