"""Audit entries are written unhashed and chained afterwards by a single sealer.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Until this revision every writer of an audit entry took one advisory lock, read the last hash
and inserted the next link, so every commit of the system queued on that lock. Now writers only
insert (``id`` from the sequence, ``xid`` = their transaction id) and the sealer
(``mixhouse.audit.seal``) later gives each entry whose transaction is finished its chain position
``seq`` and its ``prev_hash``/``hash``.

* ``audit_log.xid``: the writing transaction (``xid8``); the sealer only takes entries whose
  ``xid`` is below the snapshot's ``xmin``, so an entry of a transaction still running is
  sealed in a later batch, never skipped.
* ``audit_log.seq``: the chain position, gap-free from 1, unique; ``NULL`` until sealed.
  Existing entries were chained in ``id`` order: they get ``seq = id``.
* ``prev_hash``/``hash`` become nullable; a check keeps the three seal columns all set or all
  ``NULL``.
* ``audit_chain_head``: one row, the last sealed position and hash, moved forward by the sealer
  in the same transaction as the entries it seals. Without it, deleting the newest entries
  would leave a shorter chain that still verifies. ``legacy_seq`` is the last position chained
  before this revision: those hashes do not cover ``seq`` (which equals their ``id``, which
  they do cover), and rehashing them would need the application's canonical JSON in SQL.
* The append-only trigger becomes a row trigger: it refuses DELETE, an INSERT that presets the
  seal columns, and any UPDATE except the sealer's one-time fill of ``NULL`` seal columns that
  changes nothing else. TRUNCATE, which only statement triggers see, has its own trigger.

Downgrade refuses while the log holds entries written since this revision: revision 0006's code
chains by ``id`` and cannot verify them. Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
DROP TRIGGER audit_log_append_only ON audit_log;
DROP FUNCTION mixhouse_audit_append_only();

ALTER TABLE audit_log
    ADD COLUMN xid xid8 DEFAULT pg_current_xact_id() NOT NULL,
    ADD COLUMN seq BIGINT,
    ALTER COLUMN prev_hash DROP NOT NULL,
    ALTER COLUMN hash DROP NOT NULL;

UPDATE audit_log SET seq = id;

ALTER TABLE audit_log ADD CONSTRAINT ck_audit_log_sealed CHECK (
    (seq IS NULL) = (prev_hash IS NULL) AND (seq IS NULL) = (hash IS NULL)
);
CREATE UNIQUE INDEX ux_audit_log_seq ON audit_log (seq);
-- The sealer's queue: unsealed entries in seal order; sealed rows leave the partial index.
CREATE INDEX ix_audit_log_unsealed ON audit_log (xid, id) WHERE seq IS NULL;

CREATE TABLE audit_chain_head (
    id BOOLEAN DEFAULT true NOT NULL,
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    legacy_seq BIGINT NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT ck_audit_chain_head_single CHECK (id)
);

INSERT INTO audit_chain_head (id, seq, hash, legacy_seq)
SELECT true, coalesce(last.seq, 0), coalesce(last.hash, decode(repeat('00', 32), 'hex')), coalesce(last.seq, 0)
FROM (SELECT 1) AS one
LEFT JOIN (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1) AS last ON true;

CREATE FUNCTION mixhouse_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unsealed audit_log;
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.seq IS NULL AND NEW.prev_hash IS NULL AND NEW.hash IS NULL THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit_log is append-only: only the sealer sets seq, prev_hash and hash';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.seq IS NULL AND OLD.prev_hash IS NULL AND OLD.hash IS NULL
       AND NEW.seq IS NOT NULL AND NEW.prev_hash IS NOT NULL AND NEW.hash IS NOT NULL THEN
        -- The seal: the row with its seal columns cleared must be exactly the old row.
        unsealed := NEW;
        unsealed.seq := NULL;
        unsealed.prev_hash := NULL;
        unsealed.hash := NULL;
        IF unsealed IS NOT DISTINCT FROM OLD THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE INSERT OR UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION mixhouse_audit_append_only();

CREATE FUNCTION mixhouse_audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION mixhouse_audit_no_truncate();

CREATE FUNCTION mixhouse_audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.seq > OLD.seq AND NEW.legacy_seq = OLD.legacy_seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_chain_head only moves forward';
END;
$$;
CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE OR DELETE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION mixhouse_audit_head_forward();
CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE ON audit_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION mixhouse_audit_no_truncate();
"""

DOWNGRADE = """
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM audit_log
        WHERE seq IS NULL OR seq > (SELECT legacy_seq FROM audit_chain_head)
    ) THEN
        RAISE EXCEPTION 'audit_log holds entries chained by seq (revision 0007): revision 0006 cannot verify them';
    END IF;
END;
$$;

DROP TABLE audit_chain_head;
DROP FUNCTION mixhouse_audit_head_forward();

DROP TRIGGER audit_log_append_only ON audit_log;
DROP TRIGGER audit_log_no_truncate ON audit_log;
DROP FUNCTION mixhouse_audit_append_only();
DROP FUNCTION mixhouse_audit_no_truncate();

DROP INDEX ix_audit_log_unsealed;
DROP INDEX ux_audit_log_seq;
ALTER TABLE audit_log
    DROP CONSTRAINT ck_audit_log_sealed,
    DROP COLUMN seq,
    DROP COLUMN xid,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;

CREATE FUNCTION mixhouse_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION mixhouse_audit_append_only();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
