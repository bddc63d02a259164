"""What a pool move carries (issue 12, ERC-20 pool key rotation; mixer/pool_rotation.py).

``pool_moves.kind``: ``'pool'``, the asset's own base units (ETH's wei, BTC's satoshi, a token's
base units), as every move before this revision; or ``'gas'``, the ETH (wei) of an ERC-20
pool's gas tank, moved after the token itself from the draining generation's address to the
active one. A gas move is stored under the token's asset (the same addresses, the same nonce
counter) but its wei are never counted in the token's books.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE pool_moves ADD COLUMN kind text NOT NULL DEFAULT 'pool' "
        "CONSTRAINT pool_moves_kind_check CHECK (kind IN ('pool', 'gas'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE pool_moves DROP COLUMN kind")
