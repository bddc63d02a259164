"""The local Jobcoin ledger's transfer as one server-side function.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

Every transfer out of one address (the mixer's pool pays every payout) queues on that address's
balance row lock. Run from Python, a transfer held the lock across four statements and their
round trips, each waiting its turn on a busy server's event loop, which capped the ledger at
about a hundred transfers a second. ``ledger_transfer`` does the same steps in the order
``mixhouse.chains.jobcoin.ledger`` documents, in one statement (run in autocommit, so the lock
is released when the statement ends):

1. the writers' shared advisory lock (before the transfer id is allocated);
2. the existing balance rows of both addresses locked in address order;
3. the balance check: too poor a sender returns ``transfer_id`` ``NULL`` and its balance;
4. debit, credit (creating the receiver's row), then the transfer row.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE FUNCTION ledger_transfer(p_from text, p_to text, p_amount numeric, p_writers_lock bigint)
RETURNS TABLE (transfer_id bigint, available numeric) LANGUAGE plpgsql AS $$
DECLARE
    have numeric;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(p_writers_lock);
    PERFORM 1 FROM ledger_balances WHERE address IN (p_from, p_to) ORDER BY address FOR UPDATE;
    SELECT balance INTO have FROM ledger_balances WHERE address = p_from;
    have := coalesce(have, 0);
    IF have < p_amount THEN
        RETURN QUERY SELECT NULL::bigint, have;
        RETURN;
    END IF;
    UPDATE ledger_balances SET balance = balance - p_amount WHERE address = p_from;
    INSERT INTO ledger_balances (address, balance) VALUES (p_to, p_amount)
        ON CONFLICT (address) DO UPDATE SET balance = ledger_balances.balance + excluded.balance;
    RETURN QUERY
        INSERT INTO ledger_transfers (from_address, to_address, amount) VALUES (p_from, p_to, p_amount)
        RETURNING id, have - p_amount;
END;
$$;
"""

DOWNGRADE = """
DROP FUNCTION ledger_transfer(text, text, numeric, bigint);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
