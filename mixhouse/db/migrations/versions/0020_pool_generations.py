"""Pool key generations and the moves between them (mixhouse.mixer.pool_rotation, issue 12).

``pool_generations``: one row per pool key an asset has had. ``state`` goes ``active ->
draining -> retired``; a partial unique index keeps one ``active`` generation per asset, so two
``mixhouse keys rotate`` racing each other cannot both win. ``key_ref`` is the signer's
reference of the key (a BIP-32 path, which is also its token label); ``address`` its address.

``pool_moves``: the transfer of a draining generation's balance to the active one, a money
movement of its own kind (not a mix's send: it has no mix or deposit). Stored ``signed`` with
its raw bytes before it is broadcast, so a crash between the two rebroadcasts the same bytes;
a partial unique index allows one move in flight per generation.

A trigger refuses a send (insert) paying from or into a *retired* generation's address: a worker
process that still has the old pool address would otherwise park coins behind a key the signer
refuses. It takes a share lock on the generation, and the retirement an update lock before its
last check, so a send inserted while the generation retires either is seen by that check
(which then waits) or is refused.

Frozen SQL, like the earlier revisions.
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE pool_generations (
            asset text NOT NULL,
            generation integer NOT NULL CHECK (generation >= 0),
            key_ref text NOT NULL,
            address text NOT NULL,
            state text NOT NULL CHECK (state IN ('active', 'draining', 'retired')),
            created_at timestamptz NOT NULL DEFAULT now(),
            draining_at timestamptz,
            retired_at timestamptz,
            PRIMARY KEY (asset, generation)
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX ux_pool_generations_active ON pool_generations (asset) WHERE state = 'active'")
    op.execute(
        """
        CREATE TABLE pool_moves (
            id bigserial PRIMARY KEY,
            asset text NOT NULL,
            from_generation integer NOT NULL,
            to_generation integer NOT NULL,
            from_address text NOT NULL,
            to_address text NOT NULL,
            amount numeric(78, 0) NOT NULL CHECK (amount > 0),
            network_fee_max numeric(78, 0) NOT NULL,
            network_fee_paid numeric(78, 0),
            nonce bigint,
            raw_tx bytea NOT NULL,
            txid text NOT NULL,
            state text NOT NULL CHECK (state IN ('signed', 'broadcast', 'confirmed')),
            created_at timestamptz NOT NULL DEFAULT now(),
            broadcast_at timestamptz,
            confirmed_at timestamptz,
            FOREIGN KEY (asset, from_generation) REFERENCES pool_generations (asset, generation),
            FOREIGN KEY (asset, to_generation) REFERENCES pool_generations (asset, generation)
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX ux_pool_moves_in_flight ON pool_moves (asset, from_generation) "
        "WHERE state IN ('signed', 'broadcast')"
    )

    op.execute(
        """
        CREATE FUNCTION sends_refuse_retired_pool() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM 1 FROM pool_generations
             WHERE asset = NEW.asset AND address IN (NEW.from_address, NEW.to_address) AND state <> 'active'
               FOR SHARE;
            IF EXISTS (SELECT 1 FROM pool_generations
                        WHERE asset = NEW.asset AND address IN (NEW.from_address, NEW.to_address)
                          AND state = 'retired') THEN
                RAISE EXCEPTION 'a send of % touches a retired pool key address', NEW.asset
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER sends_refuse_retired_pool BEFORE INSERT ON sends "
        "FOR EACH ROW EXECUTE FUNCTION sends_refuse_retired_pool()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER sends_refuse_retired_pool ON sends")
    op.execute("DROP FUNCTION sends_refuse_retired_pool()")
    op.execute("DROP TABLE pool_moves")
    op.execute("DROP TABLE pool_generations")
