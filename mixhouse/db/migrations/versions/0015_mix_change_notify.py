"""Notify the API when a mix's status changes (its cache of status bodies evicts the mix).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02

After-row triggers on the tables a mix's status reads (``mixhouse.mixer.status``) send
``NOTIFY mixhouse_mix_changed, left(md5(mix id), 16)``, which PostgreSQL delivers when the
writing transaction commits (identical payloads of one transaction are delivered once):

* ``mixes``: UPDATE and DELETE (a cached body only exists for a mix that existed);
* ``deposits``: INSERT, UPDATE and DELETE;
* ``sends``: the same, every kind (the status shows payouts and refunds; a sweep's rows
  change a few times per deposit, so filtering kinds would save little and break the day
  the status shows another kind);
* ``TRUNCATE`` of any of the three: the payload ``*`` (every mix).

The payload is a digest so that no mix id (the only handle on a mix) travels to listeners;
:func:`mixhouse.api.status_feed.mix_digest` computes the same in Python.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE FUNCTION mixhouse_notify_mix_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('mixhouse_mix_changed', left(md5(NEW.id), 16));
    END IF;
    IF TG_OP = 'DELETE' OR OLD.id IS DISTINCT FROM NEW.id THEN
        PERFORM pg_notify('mixhouse_mix_changed', left(md5(OLD.id), 16));
    END IF;
    RETURN NULL;
END
$$;
CREATE FUNCTION mixhouse_notify_mix_child() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('mixhouse_mix_changed', left(md5(NEW.mix_id), 16));
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.mix_id IS DISTINCT FROM NEW.mix_id) THEN
        PERFORM pg_notify('mixhouse_mix_changed', left(md5(OLD.mix_id), 16));
    END IF;
    RETURN NULL;
END
$$;
CREATE FUNCTION mixhouse_notify_every_mix() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mixhouse_mix_changed', '*');
    RETURN NULL;
END
$$;
CREATE TRIGGER mixes_notify_changed AFTER UPDATE OR DELETE ON mixes
    FOR EACH ROW EXECUTE FUNCTION mixhouse_notify_mix_row();
CREATE TRIGGER deposits_notify_changed AFTER INSERT OR UPDATE OR DELETE ON deposits
    FOR EACH ROW EXECUTE FUNCTION mixhouse_notify_mix_child();
CREATE TRIGGER sends_notify_changed AFTER INSERT OR UPDATE OR DELETE ON sends
    FOR EACH ROW EXECUTE FUNCTION mixhouse_notify_mix_child();
CREATE TRIGGER mixes_notify_truncated AFTER TRUNCATE ON mixes
    FOR EACH STATEMENT EXECUTE FUNCTION mixhouse_notify_every_mix();
CREATE TRIGGER deposits_notify_truncated AFTER TRUNCATE ON deposits
    FOR EACH STATEMENT EXECUTE FUNCTION mixhouse_notify_every_mix();
CREATE TRIGGER sends_notify_truncated AFTER TRUNCATE ON sends
    FOR EACH STATEMENT EXECUTE FUNCTION mixhouse_notify_every_mix();
"""

DOWNGRADE = """
DROP TRIGGER sends_notify_truncated ON sends;
DROP TRIGGER deposits_notify_truncated ON deposits;
DROP TRIGGER mixes_notify_truncated ON mixes;
DROP TRIGGER sends_notify_changed ON sends;
DROP TRIGGER deposits_notify_changed ON deposits;
DROP TRIGGER mixes_notify_changed ON mixes;
DROP FUNCTION mixhouse_notify_every_mix();
DROP FUNCTION mixhouse_notify_mix_child();
DROP FUNCTION mixhouse_notify_mix_row();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
