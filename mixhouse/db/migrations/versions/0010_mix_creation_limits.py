"""Mix creation limits: a rate per client and a cap on open mixes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

One anonymous client created 3,055 mixes in 150 s, and every mix is a deposit address each
chain scan watches (issue 14, item 7). ``mixhouse.mixer.admission`` limits creations:

* ``mix_creation_rates``: one row per client (an IPv4 address or an IPv6 network) holding the
  theoretical arrival time of the generic cell rate algorithm; one conditional upsert admits or
  refuses a creation, atomically across every API process. Rows whose time has passed are
  deleted as creations come.
* ``ix_mixes_open``: the mixes awaiting a deposit, by expiry, so that counting the open mixes
  against the cap (and finding the ones to expire) reads an index, not every mix.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE mix_creation_rates (
    client TEXT NOT NULL,
    tat TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (client)
);
CREATE INDEX ix_mix_creation_rates_tat ON mix_creation_rates (tat);
CREATE INDEX ix_mixes_open ON mixes (expires_at) WHERE state = 'awaiting_deposit';
"""

DOWNGRADE = """
DROP INDEX ix_mixes_open;
DROP TABLE mix_creation_rates;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
