"""The gas tanks of the token pools (mixer/gas.py).

``gas_tanks``: per ERC-20 asset, the ETH balance of its pool address (the tank that pays the gas
of its sweeps, refunds and payouts) as the last reconciliation read it, and the recent cost in wei
of one send's gas from the tank (the mean of the last confirmed top-ups, value plus fee; NULL
before the first). /metrics exports both, and the alert ``MixhouseGasTankLow`` fires before an
empty tank stalls the token's sends.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0025"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE gas_tanks (
            asset text PRIMARY KEY,
            address text NOT NULL,
            checked_at timestamptz NOT NULL,
            balance_wei numeric(78, 0) NOT NULL,
            send_cost_wei numeric(78, 0)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE gas_tanks")
