"""Store a transaction's legs and fee once per (chain, txid) in ``chain_txs``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21

Until this revision every ``address_txs`` row carried the whole transaction's inputs and
outputs, so a transaction touching n tracked addresses stored its legs n times (quadratic for
batch payouts: 201,486 legs for 6,026 transactions in the mainnet-blocks benchmark instead of
14,930). The legs move to ``chain_txs``; the copies of a transaction are merged on the way
(legs unioned by asset, index and address, the newest copy winning; the known fee kept).
Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE chain_txs (
    chain TEXT NOT NULL,
    txid TEXT NOT NULL,
    fee NUMERIC(78, 0),
    inputs JSONB NOT NULL,
    outputs JSONB NOT NULL,
    first_seen_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (chain, txid)
);

INSERT INTO chain_txs (chain, txid, fee, inputs, outputs, first_seen_at)
SELECT t.chain, t.txid, max(t.fee), '[]'::jsonb, '[]'::jsonb, min(t.first_seen_at)
FROM address_txs AS t
GROUP BY t.chain, t.txid;

UPDATE chain_txs AS c SET
    inputs = coalesce((
        SELECT jsonb_agg(l.leg ORDER BY (l.leg->>'index')::bigint, coalesce(l.leg->>'address', ''), l.leg->>'asset')
        FROM (
            SELECT DISTINCT ON (leg->>'asset', leg->>'index', leg->>'address') leg
            FROM address_txs AS a, jsonb_array_elements(a.inputs) AS leg
            WHERE a.chain = c.chain AND a.txid = c.txid
            ORDER BY leg->>'asset', leg->>'index', leg->>'address', a.id DESC
        ) AS l
    ), '[]'::jsonb),
    outputs = coalesce((
        SELECT jsonb_agg(l.leg ORDER BY (l.leg->>'index')::bigint, coalesce(l.leg->>'address', ''), l.leg->>'asset')
        FROM (
            SELECT DISTINCT ON (leg->>'asset', leg->>'index', leg->>'address') leg
            FROM address_txs AS a, jsonb_array_elements(a.outputs) AS leg
            WHERE a.chain = c.chain AND a.txid = c.txid
            ORDER BY leg->>'asset', leg->>'index', leg->>'address', a.id DESC
        ) AS l
    ), '[]'::jsonb);

ALTER TABLE address_txs
    DROP COLUMN fee,
    DROP COLUMN inputs,
    DROP COLUMN outputs,
    ADD CONSTRAINT fk_address_txs_chain_txs FOREIGN KEY (chain, txid) REFERENCES chain_txs (chain, txid);
"""

DOWNGRADE = """
ALTER TABLE address_txs
    DROP CONSTRAINT fk_address_txs_chain_txs,
    ADD COLUMN fee NUMERIC(78, 0),
    ADD COLUMN inputs JSONB NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN outputs JSONB NOT NULL DEFAULT '[]'::jsonb;

UPDATE address_txs AS a SET fee = c.fee, inputs = c.inputs, outputs = c.outputs
FROM chain_txs AS c
WHERE c.chain = a.chain AND c.txid = a.txid;

ALTER TABLE address_txs ALTER COLUMN inputs DROP DEFAULT, ALTER COLUMN outputs DROP DEFAULT;

DROP TABLE chain_txs;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
