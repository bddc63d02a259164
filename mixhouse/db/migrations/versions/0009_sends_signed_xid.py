"""Sends remember the transaction that signed them, for reconciliation in commit order.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

Reconciliation reads the books, then the pool's balance on chain, then adds back "sends signed
after the books were read" (they may have landed before the balance was read). It found them
by ``signed_at >= <the books' read time>``, but ``signed_at`` is the signer's clock taken
before its transaction commits: a send signed just before the books were read and committed
just after was invisible to the books and too early for the ``late`` query, and its payout
showed as a deficit that paused payouts (issue 14, item 5).

* ``sends.signed_xid``: the transaction (``xid8``, ``pg_current_xact_id()``) that last set
  ``signed_at``, filled by a trigger so that every signing path (one send, a payout round's
  batch, a UTXO payout) records it. Reconciliation keeps the books' snapshot
  (``pg_current_snapshot()``) and counts as late every send whose ``signed_xid`` that snapshot
  does not see (``pg_visible_in_snapshot``): commit order, no clock.
* ``ix_sends_signed_xid``: a transaction the snapshot does not see has an id at or above the
  snapshot's ``xmin``, so the late query is an index range scan.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE sends ADD COLUMN signed_xid xid8;
CREATE INDEX ix_sends_signed_xid ON sends (signed_xid) WHERE signed_xid IS NOT NULL;

CREATE FUNCTION sends_record_signed_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.signed_xid := pg_current_xact_id();
    RETURN NEW;
END;
$$;

CREATE TRIGGER sends_signed_xid_insert BEFORE INSERT ON sends
    FOR EACH ROW WHEN (NEW.signed_at IS NOT NULL)
    EXECUTE FUNCTION sends_record_signed_xid();
CREATE TRIGGER sends_signed_xid_update BEFORE UPDATE OF signed_at ON sends
    FOR EACH ROW WHEN (NEW.signed_at IS NOT NULL AND NEW.signed_at IS DISTINCT FROM OLD.signed_at)
    EXECUTE FUNCTION sends_record_signed_xid();
"""

DOWNGRADE = """
DROP TRIGGER sends_signed_xid_update ON sends;
DROP TRIGGER sends_signed_xid_insert ON sends;
DROP FUNCTION sends_record_signed_xid();
DROP INDEX ix_sends_signed_xid;
ALTER TABLE sends DROP COLUMN signed_xid;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
