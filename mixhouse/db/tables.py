"""The database schema, as SQLAlchemy Core tables.

Amounts are ``NUMERIC(78,0)`` (enough for any uint256) and come back as ``int`` through
:data:`Amount`. States are stored by name as text; the allowed transitions live in
``mixhouse.mixer.states``. The migration in ``migrations/versions`` creates exactly this.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import UserDefinedType


class Amount(TypeDecorator[int]):
    """``NUMERIC(78,0)`` in the database, ``int`` in Python: base units never pass through float."""

    impl = Numeric(78, 0)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Any) -> Decimal | None:  # noqa: ARG002
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"amounts are int base units, got {type(value).__name__}")
        return Decimal(value)

    def process_result_value(self, value: Any, dialect: Any) -> int | None:  # noqa: ARG002
        if value is None:
            return None
        return int(value)


class Xid8(UserDefinedType[int]):
    """PostgreSQL's ``xid8``, a 64-bit transaction id (``pg_current_xact_id()``); read as ``int``."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:  # noqa: ARG002 - SQLAlchemy's signature
        return "XID8"

    def result_processor(self, dialect: Any, coltype: Any) -> Any:  # noqa: ARG002
        # psycopg has no xid8 loader and returns the decimal text.
        return lambda value: None if value is None else int(value)


# Reflection (Alembic's schema comparison) would otherwise see an unknown type.
ischema_names.setdefault("xid8", Xid8)

metadata = MetaData()


def _timestamps() -> list[Column[Any]]:
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


mixes = Table(
    "mixes",
    metadata,
    Column("id", Text, primary_key=True),  # unguessable token, the user's only handle
    Column("asset", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("deposit_address", Text, nullable=False),
    Column("deposit_key_index", BigInteger, nullable=True),
    Column("withdrawal_addresses", JSONB, nullable=False),
    Column("fee_bps", Integer, nullable=True),  # mixes created before the fee range (0006)
    Column("fee_min_bps", Integer, nullable=False),  # the quoted fee range
    Column("fee_max_bps", Integer, nullable=False),
    Column("min_deposit", Amount, nullable=False),
    Column("max_deposit", Amount, nullable=False),
    Column("delay_min_seconds", Integer, nullable=False),
    Column("delay_max_seconds", Integer, nullable=False),
    Column("max_wait_seconds", Integer, nullable=False),  # longest wait for the release gate
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("watch_until", DateTime(timezone=True), nullable=False),
    *_timestamps(),
    UniqueConstraint("asset", "deposit_address", name="uq_mixes_deposit_address"),
)
Index("ix_mixes_watch", mixes.c.asset, mixes.c.watch_until)
# The open mixes, counted against settings.max_open_mixes on every creation (migration 0010).
Index("ix_mixes_open", mixes.c.expires_at, postgresql_where=text("state = 'awaiting_deposit'"))

# Mix creations per client (mixhouse.mixer.admission): the generic cell rate algorithm's
# theoretical arrival time of the client's next creation. A row whose ``tat`` has passed says
# nothing more than no row, and is deleted.
mix_creation_rates = Table(
    "mix_creation_rates",
    metadata,
    Column("client", Text, primary_key=True),  # an IPv4 address or an IPv6 network
    Column("tat", DateTime(timezone=True), nullable=False),
)
Index("ix_mix_creation_rates_tat", mix_creation_rates.c.tat)

# Operators of the admin dashboard (mixhouse.web.operators): Argon2id password hashes, and
# sessions kept by the SHA-256 of their cookie token.
operators = Table(
    "operators",
    metadata,
    Column("name", Text, primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

operator_sessions = Table(
    "operator_sessions",
    metadata,
    Column("token_hash", LargeBinary, primary_key=True),
    Column("operator", Text, ForeignKey("operators.name", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
Index("ix_operator_sessions_expires", operator_sessions.c.expires_at)

deposits = Table(
    "deposits",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("mix_id", Text, ForeignKey("mixes.id"), nullable=False),
    Column("asset", Text, nullable=False),
    Column("chain_ref", Text, nullable=False),  # txid, or the ledger's position of the transfer
    Column("deposit_address", Text, nullable=False),
    Column("from_addresses", JSONB, nullable=False),
    Column("amount", Amount, nullable=False),
    Column("state", Text, nullable=False),
    Column("confirmations", Integer, nullable=False, server_default="0"),
    Column("block_number", BigInteger, nullable=True),
    Column("reason", Text, nullable=True),  # why frozen or held
    Column("fee_amount", Amount, nullable=True),
    Column("network_fee_amount", Amount, nullable=True),
    Column("payout_total", Amount, nullable=True),
    Column("pooled_at", DateTime(timezone=True), nullable=True),
    Column("quantum", Amount, nullable=True),
    Column("released_at", DateTime(timezone=True), nullable=True),  # the release gate opened
    Column("anonymity_set", Integer, nullable=True),  # measured by the analyzer at release
    # The gate's secret fallback: released at this moment even below k (drawn in the window).
    Column("release_by", DateTime(timezone=True), nullable=True),
    *_timestamps(),
    UniqueConstraint("asset", "chain_ref", name="uq_deposits_chain_ref"),
)
Index("ix_deposits_mix", deposits.c.mix_id)
Index("ix_deposits_state", deposits.c.asset, deposits.c.state)
Index(
    "ix_deposits_unreleased",
    deposits.c.asset,
    deposits.c.pooled_at,
    postgresql_where=text("state = 'pooled' AND released_at IS NULL"),
)

sends = Table(
    "sends",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    # 'sweep' (deposit -> pool), 'payout' (pool -> user) or 'refund' (a held deposit -> an
    # address the operator gives, mixer/refunds.py)
    Column("kind", Text, nullable=False),
    Column("asset", Text, nullable=False),
    Column("mix_id", Text, ForeignKey("mixes.id"), nullable=False),
    Column("deposit_id", BigInteger, ForeignKey("deposits.id"), nullable=False),
    Column("from_address", Text, nullable=False),
    Column("from_key_index", BigInteger, nullable=True),  # HD index of the signing key; NULL = pool
    Column("to_address", Text, nullable=False),
    Column("amount", Amount, nullable=False),
    Column("network_fee_reserved", Amount, nullable=False, server_default="0"),
    Column("network_fee_paid", Amount, nullable=True),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("state", Text, nullable=False),
    Column("raw_tx", LargeBinary, nullable=True),
    Column("txid", Text, nullable=True),
    Column("nonce", BigInteger, nullable=True),
    # Set where the chain has no idempotent send (Jobcoin): at most one send per key may be
    # in flight, so that the ledger history can tell whether *this* send landed.
    Column("serial_key", Text, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("signed_at", DateTime(timezone=True), nullable=True),
    Column("broadcast_at", DateTime(timezone=True), nullable=True),
    Column("confirmed_at", DateTime(timezone=True), nullable=True),
    Column("released_at", DateTime(timezone=True), nullable=True),  # handed to a payout round
    # The transaction that last set signed_at (a trigger fills it, migration 0009): reconciliation
    # tells sends signed after its books snapshot by commit order, not by the signer's clock.
    Column("signed_xid", Xid8, nullable=True),
    # UTXO chains: the shared transaction this payout is an output of (migration 0011); NULL
    # for a payout with a transaction of its own.
    Column("batch_id", BigInteger, ForeignKey("payout_batches.id"), nullable=True),
    *_timestamps(),
)
Index("ix_sends_batch", sends.c.batch_id, postgresql_where=text("batch_id IS NOT NULL"))

# UTXO chains: one transaction paying the payouts of several mixes (mixer/utxo_batches.py).
# Stored with its raw bytes, inputs reserved and change recorded before it is broadcast.
payout_batches = Table(
    "payout_batches",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("asset", Text, nullable=False),
    # 'open' (signed, maybe broadcast), 'confirmed', or 'replanned' (can never confirm: an
    # input was spent elsewhere; its payouts went back to scheduled)
    Column("state", Text, nullable=False),
    Column("txid", Text, nullable=False),
    Column("raw_tx", LargeBinary, nullable=False),
    Column("payouts", Integer, nullable=False),
    Column("fee", Amount, nullable=False),  # satoshi to miners, split over the payouts
    Column("fee_shares", JSONB, nullable=False),  # {send id: its share of fee, decimal string}
    Column("change_amount", Amount, nullable=False),
    Column("vsize", Integer, nullable=False),
    Column("broadcast_at", DateTime(timezone=True), nullable=True),
    Column("confirmed_at", DateTime(timezone=True), nullable=True),
    *_timestamps(),
)
Index("ix_payout_batches_open", payout_batches.c.asset, postgresql_where=text("state = 'open'"))
Index("ix_sends_signed_xid", sends.c.signed_xid, postgresql_where=text("signed_xid IS NOT NULL"))
Index("ix_sends_round", sends.c.asset, sends.c.due_at, postgresql_where=text("kind = 'payout' AND state = 'scheduled'"))
Index("ix_sends_deposit", sends.c.deposit_id)
Index("ix_sends_mix", sends.c.mix_id)
Index("ix_sends_state", sends.c.asset, sends.c.state)
# At most one refund per deposit (migration 0013): the last guard of refunds' exactly-once.
Index("uq_sends_one_refund", sends.c.deposit_id, unique=True, postgresql_where=text("kind = 'refund'"))
Index(
    "uq_sends_one_in_flight",
    sends.c.serial_key,
    unique=True,
    postgresql_where=text("state = 'signed' AND serial_key IS NOT NULL"),
)

account_nonces = Table(
    "account_nonces",
    metadata,
    Column("asset", Text, primary_key=True),
    Column("address", Text, primary_key=True),
    Column("next_nonce", BigInteger, nullable=False),
)

chain_cursors = Table(
    "chain_cursors",
    metadata,
    Column("asset", Text, primary_key=True),
    Column("cursor", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The chain's height the last scan saw and the height it read through (ScanResult.tip and
    # .scanned; migration 0014); NULL where the adapter cannot tell.
    Column("tip_height", BigInteger),
    Column("scanned_height", BigInteger),
)

key_counters = Table(
    "key_counters",
    metadata,
    Column("asset", Text, primary_key=True),
    Column("next_index", BigInteger, nullable=False),
)

# Deposit keys generated ahead of need in a slow signer's token, not issued yet (migration 0018,
# mixhouse.keys.buffer): their index was allocated from key_counters when they were made.
key_buffer = Table(
    "key_buffer",
    metadata,
    Column("asset", Text, primary_key=True),
    Column("key_index", BigInteger, primary_key=True),
    Column("address", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("key_index >= 0", name="key_buffer_key_index_check"),
)

# An operator's written acknowledgement of one reconciliation mismatch (migration 0013,
# mixer/acknowledgements.py): the figures it covers and the discrepancy range it accepts.
reconciliation_acknowledgements = Table(
    "reconciliation_acknowledgements",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("asset", Text, nullable=False),
    Column("expected", Amount, nullable=False),
    Column("actual", Amount, nullable=False),
    Column("low", Amount, nullable=False),
    Column("high", Amount, nullable=False),
    Column("discrepancy_low", Amount, nullable=False),  # actual - high at the acknowledged check
    Column("discrepancy_high", Amount, nullable=False),  # actual - low
    Column("operator", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index(
    "ix_reconciliation_acknowledgements_asset",
    reconciliation_acknowledgements.c.asset,
    reconciliation_acknowledgements.c.id,
)

reconciliations = Table(
    "reconciliations",
    metadata,
    Column("asset", Text, primary_key=True),
    Column("checked_at", DateTime(timezone=True), nullable=False),
    Column("pool_address", Text, nullable=False),
    Column("expected", Amount, nullable=False),
    Column("actual", Amount, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("detail", Text, nullable=False),
    # The range of the check (NULL before migration 0013) and the acknowledgement covering its
    # mismatch, if any: a covered mismatch does not pause payouts.
    Column("low", Amount, nullable=True),
    Column("high", Amount, nullable=True),
    Column("acknowledgement_id", BigInteger, ForeignKey("reconciliation_acknowledgements.id"), nullable=True),
)

sanctioned_addresses = Table(
    "sanctioned_addresses",
    metadata,
    Column("address_norm", Text, primary_key=True),  # lower-cased for EVM, as-is otherwise
    Column("source", Text, primary_key=True),  # 'ofac:ETH', 'operator', ...
    Column("added_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("entity_type", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("asset", Text, nullable=True),
    Column("amount", Amount, nullable=True),
    Column("details", JSONB, nullable=False),
    # The writing transaction: the sealer only chains entries of transactions certainly finished.
    Column("xid", Xid8, nullable=False, server_default=text("pg_current_xact_id()")),
    # Chain position and links, NULL until the sealer (mixhouse.audit.seal) fills them once.
    Column("seq", BigInteger, nullable=True),
    Column("prev_hash", LargeBinary, nullable=True),
    Column("hash", LargeBinary, nullable=True),
    CheckConstraint(
        "(seq IS NULL) = (prev_hash IS NULL) AND (seq IS NULL) = (hash IS NULL)", name="ck_audit_log_sealed"
    ),
)
Index("ix_audit_entity", audit_log.c.entity_type, audit_log.c.entity_id)
Index("ux_audit_log_seq", audit_log.c.seq, unique=True)
Index("ix_audit_log_unsealed", audit_log.c.xid, audit_log.c.id, postgresql_where=text("seq IS NULL"))

# The last sealed chain position and its hash (one row), moved forward only by the sealer, so
# deleting the newest entries is detected. Positions up to legacy_seq were chained before 0007.
audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("id", Boolean, primary_key=True, server_default=text("true")),
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("legacy_seq", BigInteger, nullable=False),
    CheckConstraint("id", name="ck_audit_chain_head_single"),
)

# The pool's coins on UTXO chains (Bitcoin): deposits join the pool as UTXOs; payouts spend
# them, never the paying mix's own deposit, with change to a fresh pool address.
utxos = Table(
    "utxos",
    metadata,
    Column("asset", Text, primary_key=True),
    Column("txid", Text, primary_key=True),
    Column("vout", Integer, primary_key=True),
    Column("address", Text, nullable=False),
    Column("key_chain", Integer, nullable=False),  # BIP-32 change level: 0 deposit, 1 pool/change
    Column("key_index", BigInteger, nullable=False),
    Column("amount", Amount, nullable=False),
    Column("owner_mix_id", Text, nullable=True),  # the mix whose deposit this is; NULL for change
    Column("deposit_id", BigInteger, ForeignKey("deposits.id"), nullable=True),
    # 'unconfirmed' (our change, not yet mined), 'available', 'reserved' (a signed send spends
    # it), 'spent'
    Column("state", Text, nullable=False),
    Column("reserved_by_send", BigInteger, ForeignKey("sends.id"), nullable=True),
    Column("created_by_send", BigInteger, ForeignKey("sends.id"), nullable=True),
    # The same two links for a batched payout transaction (migration 0011).
    Column("reserved_by_batch", BigInteger, ForeignKey("payout_batches.id"), nullable=True),
    Column("created_by_batch", BigInteger, ForeignKey("payout_batches.id"), nullable=True),
    *_timestamps(),
)
Index("ix_utxos_available", utxos.c.asset, utxos.c.state)

# The local Jobcoin ledger (a development chain served by ``mixhouse ledger serve``).
ledger_transfers = Table(
    "ledger_transfers",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("from_address", Text, nullable=True),  # NULL for minted coins
    Column("to_address", Text, nullable=False),
    Column("amount", Amount, nullable=False),
)
Index("ix_ledger_transfers_from", ledger_transfers.c.from_address, ledger_transfers.c.id)
Index("ix_ledger_transfers_to", ledger_transfers.c.to_address, ledger_transfers.c.id)

ledger_balances = Table(
    "ledger_balances",
    metadata,
    Column("address", Text, primary_key=True),
    Column("balance", Amount, nullable=False),
)

# -- wallet sync: users, their API keys, wallets of imported addresses, address history ------

users = Table(
    "users",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("is_admin", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("name", name="uq_users_name"),
)

# Only the SHA-256 of a key is stored; the key itself is shown once, when it is created.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, ForeignKey("users.id"), nullable=False),
    Column("key_hash", LargeBinary, nullable=False),
    Column("label", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
)
Index("ix_api_keys_user", api_keys.c.user_id)

wallets = Table(
    "wallets",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, ForeignKey("users.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("user_id", "name", name="uq_wallets_user_name"),
)

# A watch-only extended key of a wallet (see mixhouse.wallets.xpubs): its addresses are
# derived into wallet_addresses, gap_limit unused ones past the last used, per branch.
wallet_xpubs = Table(
    "wallet_xpubs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("wallet_id", BigInteger, ForeignKey("wallets.id"), nullable=False),
    Column("chain", Text, nullable=False, server_default=text("'BTC'")),
    Column("descriptor", Text, nullable=False),  # canonical output descriptor with its BIP-380 checksum
    Column("script_type", Text, nullable=False),  # 'pkh', 'sh-wpkh', 'wpkh' or 'tr'
    Column("gap_limit", Integer, nullable=False, server_default=text("20")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("wallet_id", "descriptor", name="uq_wallet_xpubs_descriptor"),
    CheckConstraint("chain = 'BTC'", name="ck_wallet_xpubs_chain"),
    CheckConstraint("script_type IN ('pkh', 'sh-wpkh', 'wpkh', 'tr')", name="ck_wallet_xpubs_script_type"),
    CheckConstraint("gap_limit BETWEEN 1 AND 1000", name="ck_wallet_xpubs_gap_limit"),
)

wallet_addresses = Table(
    "wallet_addresses",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("wallet_id", BigInteger, ForeignKey("wallets.id"), nullable=False),
    Column("chain", Text, nullable=False),  # 'BTC', 'ETH' or 'JOBCOIN'
    Column("address", Text, nullable=False),  # canonical form (EIP-55 on Ethereum)
    Column("status", Text, nullable=False, server_default=text("'pending'")),  # pending/syncing/synced/error
    Column("error", Text, nullable=True),
    Column("checkpoint", Text, nullable=True),  # the history source's opaque resume point
    Column("synced_height", BigInteger, nullable=True),
    Column("last_synced_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Set (all three) when the address was derived from an xpub: m/.../branch/derivation_index.
    Column("xpub_id", BigInteger, ForeignKey("wallet_xpubs.id"), nullable=True),
    Column("branch", SmallInteger, nullable=True),  # 0 receive, 1 change
    Column("derivation_index", Integer, nullable=True),
    UniqueConstraint("wallet_id", "chain", "address", name="uq_wallet_addresses"),
    # One address per derivation slot; also the index that finds an xpub's addresses.
    UniqueConstraint("xpub_id", "branch", "derivation_index", name="uq_wallet_addresses_derivation"),
    CheckConstraint(
        "(xpub_id IS NULL AND branch IS NULL AND derivation_index IS NULL)"
        " OR (xpub_id IS NOT NULL AND branch IS NOT NULL AND derivation_index IS NOT NULL)",
        name="ck_wallet_addresses_derivation",
    ),
    CheckConstraint("branch IN (0, 1)", name="ck_wallet_addresses_branch"),
    CheckConstraint("derivation_index >= 0", name="ck_wallet_addresses_derivation_index"),
)
Index("ix_wallet_addresses_chain_address", wallet_addresses.c.chain, wallet_addresses.c.address)

# One row per (address, transaction, asset), shared by every wallet that imported the address.
# ``net`` is signed; legs are JSON lists of {"index", "address", "amount" (decimal string), "asset"}.
# A transaction's legs and fee, once per (chain, txid) whatever the number of tracked
# addresses it touches (see mixhouse.wallets.store).
chain_txs = Table(
    "chain_txs",
    metadata,
    Column("chain", Text, primary_key=True),
    Column("txid", Text, primary_key=True),
    Column("fee", Amount, nullable=True),
    Column("inputs", JSONB, nullable=False),
    Column("outputs", JSONB, nullable=False),
    Column("first_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

address_txs = Table(
    "address_txs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("chain", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("txid", Text, nullable=False),
    Column("asset", Text, nullable=False),
    Column("direction", Text, nullable=False),  # 'in', 'out' or 'self'
    Column("net", Amount, nullable=False),
    Column("block_height", BigInteger, nullable=True),
    Column("block_hash", Text, nullable=True),
    Column("block_time", DateTime(timezone=True), nullable=True),
    Column("first_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("chain", "address", "txid", "asset", name="uq_address_txs"),
    ForeignKeyConstraint(["chain", "txid"], ["chain_txs.chain", "chain_txs.txid"], name="fk_address_txs_chain_txs"),
)
# Listing sorts on coalesce(block_time, first_seen_at) then id (see mixhouse.wallets.store).
Index(
    "ix_address_txs_listing",
    address_txs.c.chain,
    address_txs.c.address,
    func.coalesce(address_txs.c.block_time, address_txs.c.first_seen_at).desc(),
    address_txs.c.id.desc(),
)
Index("ix_address_txs_height", address_txs.c.chain, address_txs.c.block_height)

address_balances = Table(
    "address_balances",
    metadata,
    Column("chain", Text, primary_key=True),
    Column("address", Text, primary_key=True),
    Column("asset", Text, primary_key=True),
    Column("confirmed", Amount, nullable=False),
    Column("unconfirmed", Amount, nullable=False),  # the net of unconfirmed transactions (a delta)
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The OTC node (mixhouse.otc.store). One table holds the node's own orders (mine: the
# authoritative row, locked FOR UPDATE by a take or a cancel) and the orders it learned from
# the network (their last signed status: the highest version wins). Amount columns are base
# units; prices are QUOTE base units per whole BASE coin; times from the order are ms.
otc_orders = Table(
    "otc_orders",
    metadata,
    Column("id", Text, primary_key=True),  # hex tagged hash of the signed body
    Column("mine", Boolean, nullable=False),
    Column("owner", Text, nullable=False),  # node id: x-only public key, hex
    Column("pair", Text, nullable=False),
    Column("side", Text, nullable=False),  # 'buy' or 'sell'
    Column("quantity", Amount, nullable=False),
    Column("price", Amount, nullable=False),
    Column("tif", Text, nullable=False),
    Column("min_fill", Amount, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("good_till_ms", BigInteger, nullable=True),  # the owner stops refreshing at this time
    Column("nonce", Text, nullable=False),
    Column("order_sig", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("remaining", Amount, nullable=False),
    Column("state", Text, nullable=False),  # 'open', 'cancelled', 'filled'
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("address", Text, nullable=False),  # the owner's Grenache address when it signed
    Column("status_sig", Text, nullable=False),
    # Own orders: quantity asked of makers by takes still unanswered (not offered to others).
    Column("reserved", Amount, nullable=False, server_default=text("0")),
    # Own orders: offered in the book (false during the order's first round of takes).
    Column("rested", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("remaining >= 0 AND remaining <= quantity", name="ck_otc_orders_remaining"),
    CheckConstraint("reserved >= 0 AND reserved <= remaining", name="ck_otc_orders_reserved"),
)
Index("ix_otc_orders_book", otc_orders.c.pair, otc_orders.c.side, otc_orders.c.price, otc_orders.c.created_at_ms)

# A taker's requests to makers' owners, written before the request is sent (its quantity is
# reserved on the taker order), answered 'granted' or 'refused'; re-sent after a restart.
otc_takes = Table(
    "otc_takes",
    metadata,
    Column("maker_order_id", Text, primary_key=True),
    Column("taker_order_id", Text, primary_key=True),
    Column("maker_owner", Text, nullable=False),
    Column("quantity", Amount, nullable=False),  # asked for, base units
    Column("state", Text, nullable=False),  # 'pending', 'granted', 'refused'
    Column("granted", Amount, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# A fill and its trade, on both nodes (one row each): the fill's key (maker order, taker
# order) is unique; the state machine is mixhouse.otc.trades (issue 10 adds the swap states).
otc_trades = Table(
    "otc_trades",
    metadata,
    Column("id", Text, primary_key=True),  # hex tagged hash of the two order ids
    Column("maker_order_id", Text, nullable=False),
    Column("taker_order_id", Text, nullable=False),
    Column("role", Text, nullable=False),  # this node's side: 'maker' or 'taker'
    Column("pair", Text, nullable=False),
    Column("taker_side", Text, nullable=False),
    Column("price", Amount, nullable=False),
    Column("quantity", Amount, nullable=False),  # BASE base units
    Column("quote_amount", Amount, nullable=False),  # QUOTE base units
    Column("maker_node", Text, nullable=False),
    Column("taker_node", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("peer_confirmed", Boolean, nullable=False, server_default=text("false")),  # theirs arrived
    Column("confirm_acked", Boolean, nullable=False, server_default=text("false")),  # ours was acknowledged
    Column("agreed_at_ms", BigInteger, nullable=False),  # the owner's grant time
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("maker_order_id", "taker_order_id", name="uq_otc_trades_fill"),
    CheckConstraint("quantity > 0", name="ck_otc_trades_quantity"),
)

# Messages to other nodes that must arrive (trade confirmations), retried until acknowledged.
otc_outbox = Table(
    "otc_outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("target_node", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("trade_id", Text, nullable=True),
    Column("payload", JSONB, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("ix_otc_outbox_due", otc_outbox.c.next_attempt_at, postgresql_where=text("delivered_at IS NULL"))

# One atomic swap per fill (migration 0019, mixhouse/otc/swaps/store.py): its role, state, the
# secret's hash (the secret itself only on the initiator, never served), the agreed terms and the
# transactions it stored before broadcasting them.
otc_swaps = Table(
    "otc_swaps",
    metadata,
    Column("id", Text, primary_key=True),
    Column("trade_id", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("peer", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("secret", Text, nullable=True),
    Column("terms", JSONB, nullable=False),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("next_check_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("role IN ('initiator', 'participant')", name="ck_otc_swaps_role"),
)
Index("ix_otc_swaps_trade", otc_swaps.c.trade_id)
Index("ix_otc_swaps_open", otc_swaps.c.state, otc_swaps.c.next_check_at)

# The messages a swap owes the other node, one per kind, retried until acknowledged.
otc_swap_outbox = Table(
    "otc_swap_outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("swap_id", Text, ForeignKey("otc_swaps.id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("delivered", Boolean, nullable=False, server_default=text("false")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("swap_id", "kind", name="uq_otc_swap_outbox"),
)

# Pool key generations (migration 0020, mixer/pool_rotation.py): active -> draining -> retired, one
# active per asset; the key a payout of the asset is signed with is the active one's.
pool_generations = Table(
    "pool_generations",
    metadata,
    Column("asset", Text, primary_key=True),
    Column("generation", Integer, primary_key=True),
    Column("key_ref", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("draining_at", DateTime(timezone=True), nullable=True),
    Column("retired_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("generation >= 0", name="pool_generations_generation_check"),
    CheckConstraint("state IN ('active', 'draining', 'retired')", name="pool_generations_state_check"),
)
Index(
    "ux_pool_generations_active",
    pool_generations.c.asset,
    unique=True,
    postgresql_where=text("state = 'active'"),
)

# A draining generation's balance moved to the active one (migration 0020): signed and stored
# before broadcast, one in flight per generation.
pool_moves = Table(
    "pool_moves",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("asset", Text, nullable=False),
    Column("from_generation", Integer, nullable=False),
    Column("to_generation", Integer, nullable=False),
    Column("from_address", Text, nullable=False),
    Column("to_address", Text, nullable=False),
    Column("amount", Amount, nullable=False),
    Column("network_fee_max", Amount, nullable=False),
    Column("network_fee_paid", Amount, nullable=True),
    Column("nonce", BigInteger, nullable=True),
    Column("raw_tx", LargeBinary, nullable=False),
    Column("txid", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("broadcast_at", DateTime(timezone=True), nullable=True),
    Column("confirmed_at", DateTime(timezone=True), nullable=True),
    # 'pool': the asset's base units; 'gas': an ERC-20 pool's ETH gas tank, in wei (migration 0026).
    Column("kind", Text, nullable=False, server_default=text("'pool'")),
    CheckConstraint("amount > 0", name="pool_moves_amount_check"),
    CheckConstraint("kind IN ('pool', 'gas')", name="pool_moves_kind_check"),
    CheckConstraint("state IN ('signed', 'broadcast', 'confirmed')", name="pool_moves_state_check"),
    ForeignKeyConstraint(
        ["asset", "from_generation"],
        ["pool_generations.asset", "pool_generations.generation"],
        name="pool_moves_asset_from_generation_fkey",
    ),
    ForeignKeyConstraint(
        ["asset", "to_generation"],
        ["pool_generations.asset", "pool_generations.generation"],
        name="pool_moves_asset_to_generation_fkey",
    ),
)
Index(
    "ux_pool_moves_in_flight",
    pool_moves.c.asset,
    pool_moves.c.from_generation,
    unique=True,
    postgresql_where=text("state IN ('signed', 'broadcast')"),
)


# The scanning engine's block window (migration 0021, mixhouse/watch/): every block a watcher read
# at a recent height, of every branch, with its parent, to walk an orphaned position to the fork.
watch_blocks = Table(
    "watch_blocks",
    metadata,
    Column("chain", Text, primary_key=True),
    Column("hash", Text, primary_key=True),
    Column("height", BigInteger, nullable=False),
    Column("parent", Text, nullable=True),
    Column("read_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("ix_watch_blocks_height", watch_blocks.c.chain, watch_blocks.c.height)

# Watchers stopped by a reorg deeper than MIXHOUSE_REORG_MAX_DEPTH (migration 0021): one row per
# (chain, consumer) until the operator resumes it (mixhouse.watch.store.resume_consumer).
watch_stops = Table(
    "watch_stops",
    metadata,
    Column("chain", Text, primary_key=True),
    Column("consumer", Text, primary_key=True),
    Column("height", BigInteger, nullable=False),
    Column("max_depth", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("stopped_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The ETH of each token pool's gas tank (migration 0025, mixer/gas.py): read at every
# reconciliation of the token, with what a send from the tank has cost lately, so /metrics can
# warn before an empty tank stalls the token's sweeps and payouts.
gas_tanks = Table(
    "gas_tanks",
    metadata,
    Column("asset", Text, primary_key=True),
    Column("address", Text, nullable=False),
    Column("checked_at", DateTime(timezone=True), nullable=False),
    Column("balance_wei", Amount, nullable=False),
    Column("send_cost_wei", Amount, nullable=True),
)
