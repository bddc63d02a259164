"""The scanning engine's tables (mixhouse.watch, issue 8 part 1).

``watch_blocks``: per chain kind, every block a watcher read at a recent height (the top
``MIXHOUSE_REORG_MAX_DEPTH + 1`` heights are kept), of every branch, with its parent. A position
whose block is no longer in the main chain is walked down its own parents to the fork point: the
rewind is exact even after another consumer read the new branch, and a reorg proven deeper than
the policy is told apart from one the window cannot see.

``watch_stops``: the consumers (``wallets``, ``deposits:<asset>``) a too-deep reorg stopped,
until the operator resumes them.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE watch_blocks (
            chain text NOT NULL,
            hash text NOT NULL,
            height bigint NOT NULL,
            parent text,
            read_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (chain, hash)
        )
        """
    )
    op.execute("CREATE INDEX ix_watch_blocks_height ON watch_blocks (chain, height)")
    op.execute(
        """
        CREATE TABLE watch_stops (
            chain text NOT NULL,
            consumer text NOT NULL,
            height bigint NOT NULL,
            max_depth integer NOT NULL,
            reason text NOT NULL,
            stopped_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (chain, consumer)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE watch_stops")
    op.execute("DROP TABLE watch_blocks")
