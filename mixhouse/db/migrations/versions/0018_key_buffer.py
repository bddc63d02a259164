"""Pre-generated deposit keys of a slow signer (mixhouse.keys.buffer, issue 12 part 4).

``key_buffer``: one row per deposit key generated ahead of need in a PKCS#11 token (about 7 keys/s
on SoftHSM2), not yet issued. The key's index was allocated from ``key_counters`` when it was
generated, so a buffered index is never allocated again; creating a mix takes (deletes) the row
with the lowest index under ``FOR UPDATE SKIP LOCKED``, in the mix's transaction, so two API
processes never issue one key twice and a mix that rolls back puts its key back.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE key_buffer (
            asset text NOT NULL,
            key_index bigint NOT NULL CHECK (key_index >= 0),
            address text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (asset, key_index)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE key_buffer")
