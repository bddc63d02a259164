"""Request and response bodies of the HTTP API (pydantic models).

Inputs and outputs are separate models. Inputs forbid unknown fields and are strict: a
number is never coerced to a string nor a string to a number, ``true`` is not ``1``.

Amounts leave as decimal strings, twice: ``amount`` in base units (``"4950000000"``) and
``amount_coins`` in whole coins (``"49.5"``, via :func:`mixhouse.money.format_amount`), so
that no client parses them as floats. Timestamps are ISO-8601 with a UTC offset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mixhouse.money import ASSETS, Asset, format_amount

# -- problems (documentation only: mixhouse.api.problems builds the bodies) -----------------


class FieldError(BaseModel):
    """One failed check of a request field."""

    loc: list[str | int] = Field(description='Where: e.g. ["body", "withdrawal_addresses", 0].')
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem (``application/problem+json``)."""

    type: str = Field(description="URI of the problem type; about:blank for plain HTTP statuses.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldError] | None = Field(default=None, description="Validation errors (422 only).")
    error_id: str | None = Field(default=None, description="Quote it to the operator (500 only).")


# -- input ----------------------------------------------------------------------------------

WithdrawalAddress = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class MixCreate(BaseModel):
    """``POST /api/v1/mixes``: what to mix and where to pay it out.

    ``asset`` is case-sensitive: ``"eth"`` is refused (422) rather than guessed, as asset
    names are identifiers shown back everywhere in this exact form. The number of addresses
    (default at most 10), their validity for the chain, and the delay window against the
    operator's maximum are checked by the service (422 problems as well).
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "asset": "JOBCOIN",
                    "withdrawal_addresses": ["alice-1", "alice-2"],
                    "delay_min_seconds": 60,
                    "delay_max_seconds": 3600,
                }
            ]
        },
    )

    asset: Literal["JOBCOIN", "ETH", "BTC"] = Field(description="JOBCOIN, ETH or BTC, exactly (case-sensitive).")
    withdrawal_addresses: list[WithdrawalAddress] = Field(
        min_length=1,
        max_length=50,
        description="1 to max_withdrawal_addresses (default 10) distinct addresses of the asset.",
    )
    delay_min_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Earliest payout, seconds after the deposit is pooled (default: the operator's).",
    )
    delay_max_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Latest payout, seconds after the deposit is pooled (default: the operator's).",
    )


# -- output ---------------------------------------------------------------------------------


def _coins(amount: int, asset: str) -> str:
    return format_amount(amount, ASSETS[Asset(asset)].decimals)


def _maybe(amount: int | None) -> str | None:
    return None if amount is None else str(amount)


def _maybe_coins(amount: int | None, asset: str) -> str | None:
    return None if amount is None else _coins(amount, asset)


FEE_EXPLAINED = (
    "Each pooled deposit is charged a fee drawn at random inside the quoted range (in base units, not a "
    "computable percentage), plus network fees where the chain has them. The withdrawal addresses receive the "
    "rest rounded down to the deposit's quantum, in standard pieces (1-2-5 series); the remainder below the "
    "quantum is part of the fee, which stays inside the range. The exact figures are on the mix's status once "
    "the deposit is pooled. Nothing is charged on a deposit that is not paid out (frozen, held or dropped)."
)


class MixOut(BaseModel):
    """A mix as its owner sees it. Amounts: base-unit strings and ``*_coins`` strings."""

    id: str = Field(description="Unguessable token: the only handle on the mix; keep it private.")
    asset: str
    state: str = Field(description="awaiting_deposit, mixing, completed or expired.")
    deposit_address: str
    fee_min_bps: int = Field(description="The quoted fee range, basis points of the pooled deposit: lowest.")
    fee_max_bps: int = Field(description="The quoted fee range: highest. The exact fee of a deposit is drawn inside.")
    fee_percent_range: str = Field(description='The same range in percent, e.g. "1-3" or "0.5-2.25".')
    fee_explained: str = Field(description="What a deposit is charged and what the withdrawal addresses receive.")
    min_deposit: str
    min_deposit_coins: str
    max_deposit: str
    max_deposit_coins: str
    delay_min_seconds: int
    delay_max_seconds: int
    max_wait_seconds: int = Field(
        description="The longest a payout may wait after its deposit is pooled: the release gate holds payouts "
        "until enough other deposits could have paid them, never longer than this."
    )
    expires_at: datetime = Field(description="Deposit before this (a grace period applies).")
    created_at: datetime
    withdrawal_addresses: list[str]
    status_url: str = Field(description="Path of GET /api/v1/mixes/{id}.")

    @classmethod
    def fields_from_row(cls, row: Mapping[str, Any], status_url: str) -> dict[str, Any]:
        """The fields of this model from a ``mixes`` row (amounts as ints)."""
        asset = str(row["asset"])
        return {
            "id": row["id"],
            "asset": asset,
            "state": row["state"],
            "deposit_address": row["deposit_address"],
            "fee_min_bps": row["fee_min_bps"],
            "fee_max_bps": row["fee_max_bps"],
            "fee_percent_range": "-".join(format_amount(int(row[k]), 2) for k in ("fee_min_bps", "fee_max_bps")),
            "fee_explained": FEE_EXPLAINED,
            "min_deposit": str(row["min_deposit"]),
            "min_deposit_coins": _coins(row["min_deposit"], asset),
            "max_deposit": str(row["max_deposit"]),
            "max_deposit_coins": _coins(row["max_deposit"], asset),
            "delay_min_seconds": row["delay_min_seconds"],
            "delay_max_seconds": row["delay_max_seconds"],
            "max_wait_seconds": row["max_wait_seconds"],
            "expires_at": row["expires_at"],
            "created_at": row["created_at"],
            "withdrawal_addresses": list(row["withdrawal_addresses"]),
            "status_url": status_url,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], status_url: str) -> MixOut:
        """Build from a ``mixes`` row."""
        return cls(**cls.fields_from_row(row, status_url))


class DepositOut(BaseModel):
    """A deposit seen on the mix's deposit address.

    ``fee_amount``, ``network_fee_amount`` and ``payout_total`` are set once the deposit is
    planned (swept into the pool), else null.
    """

    id: int
    state: str = Field(description="seen, frozen, held, sweeping, pooled or dropped.")
    amount: str
    amount_coins: str
    from_addresses: list[str]
    confirmations: int
    reason: str | None = Field(description="Why it is frozen or held.")
    fee_amount: str | None
    fee_amount_coins: str | None
    network_fee_amount: str | None
    network_fee_amount_coins: str | None
    payout_total: str | None = Field(description="Exactly what the withdrawal addresses receive for this deposit.")
    payout_total_coins: str | None
    anonymity_set: int | None = Field(
        description="When its payouts were released: how many deposits (this one included) could, by amount "
        "and time, have paid them, as measured by Mixhouse's own chain-analysis attack."
    )
    released_at: datetime | None = Field(description="When the release gate let its payouts go.")
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DepositOut:
        """Build from a ``deposits`` row."""
        asset = str(row["asset"])
        return cls(
            id=row["id"],
            state=row["state"],
            amount=str(row["amount"]),
            amount_coins=_coins(row["amount"], asset),
            from_addresses=list(row["from_addresses"]),
            confirmations=row["confirmations"],
            reason=row["reason"],
            fee_amount=_maybe(row["fee_amount"]),
            fee_amount_coins=_maybe_coins(row["fee_amount"], asset),
            network_fee_amount=_maybe(row["network_fee_amount"]),
            network_fee_amount_coins=_maybe_coins(row["network_fee_amount"], asset),
            payout_total=_maybe(row["payout_total"]),
            payout_total_coins=_maybe_coins(row["payout_total"], asset),
            anonymity_set=row.get("anonymity_set"),
            released_at=row.get("released_at"),
            created_at=row["created_at"],
        )


class PayoutOut(BaseModel):
    """One payout to a withdrawal address."""

    id: int
    to_address: str
    amount: str
    amount_coins: str
    state: str = Field(description="scheduled, signed, broadcast or confirmed.")
    due_at: datetime
    txid: str | None
    confirmed_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PayoutOut:
        """Build from a ``sends`` row of kind ``payout``."""
        return cls(
            id=row["id"],
            to_address=row["to_address"],
            amount=str(row["amount"]),
            amount_coins=_coins(row["amount"], str(row["asset"])),
            state=row["state"],
            due_at=row["due_at"],
            txid=row["txid"],
            confirmed_at=row["confirmed_at"],
        )


class MixTotals(BaseModel):
    """Sums over the mix, in base units and in coins.

    ``deposited``: every deposit except ``dropped`` ones (frozen and held included).
    ``paid_out``: confirmed payouts. ``pending``: payouts not yet confirmed.
    """

    deposited: str
    deposited_coins: str
    paid_out: str
    paid_out_coins: str
    pending: str
    pending_coins: str


class MixStatusOut(MixOut):
    """``GET /api/v1/mixes/{id}``: the mix with its deposits, payouts and totals."""

    deposits: list[DepositOut]
    payouts: list[PayoutOut]
    totals: MixTotals

    @classmethod
    def from_status(cls, status: Mapping[str, Any], status_url: str) -> MixStatusOut:
        """Build from :func:`mixhouse.mixer.mixes.get_mix`'s ``{"mix", "deposits", "sends"}``."""
        mix = status["mix"]
        asset = str(mix["asset"])
        deps: Sequence[Mapping[str, Any]] = status["deposits"]
        payouts = [s for s in status["sends"] if s["kind"] == "payout"]
        deposited = sum(int(d["amount"]) for d in deps if d["state"] != "dropped")
        paid_out = sum(int(p["amount"]) for p in payouts if p["state"] == "confirmed")
        pending = sum(int(p["amount"]) for p in payouts if p["state"] != "confirmed")
        return cls(
            **MixOut.fields_from_row(mix, status_url),
            deposits=[DepositOut.from_row(d) for d in deps],
            payouts=[PayoutOut.from_row(p) for p in payouts],
            totals=MixTotals(
                deposited=str(deposited),
                deposited_coins=_coins(deposited, asset),
                paid_out=str(paid_out),
                paid_out_coins=_coins(paid_out, asset),
                pending=str(pending),
                pending_coins=_coins(pending, asset),
            ),
        )


# -- admin output ---------------------------------------------------------------------------


class AdminMixOut(MixOut):
    """A mix as the operator sees it."""

    updated_at: datetime
    watch_until: datetime = Field(description="The deposit address is watched until then.")

    @classmethod
    def from_admin_row(cls, row: Mapping[str, Any], status_url: str) -> AdminMixOut:
        """Build from a ``mixes`` row."""
        return cls(
            **MixOut.fields_from_row(row, status_url),
            updated_at=row["updated_at"],
            watch_until=row["watch_until"],
        )


class AdminMixPage(BaseModel):
    """One page of mixes, newest first."""

    items: list[AdminMixOut]
    next_after: str | None = Field(description="Pass as ?after= for the next page; null on the last page.")


class AdminDepositOut(DepositOut):
    """A deposit as the operator sees it (frozen and held ones need action)."""

    mix_id: str
    asset: str
    deposit_address: str
    chain_ref: str = Field(description="The txid, or the ledger's position of the transfer.")
    block_number: int | None
    updated_at: datetime

    @classmethod
    def from_admin_row(cls, row: Mapping[str, Any]) -> AdminDepositOut:
        """Build from a ``deposits`` row."""
        return cls(
            **DepositOut.from_row(row).model_dump(),
            mix_id=row["mix_id"],
            asset=row["asset"],
            deposit_address=row["deposit_address"],
            chain_ref=row["chain_ref"],
            block_number=row["block_number"],
            updated_at=row["updated_at"],
        )


class AdminDepositPage(BaseModel):
    """One page of deposits, newest (highest id) first."""

    items: list[AdminDepositOut]
    next_after: int | None = Field(description="Pass as ?after= for the next page; null on the last page.")


class ReconciliationOut(BaseModel):
    """The last reconciliation of a pool."""

    ok: bool
    detail: str
    checked_at: datetime
    expected: str = Field(description="The books at the time of the check, base units.")
    expected_coins: str
    actual: str = Field(description="The on-chain balance of the pool, base units.")
    actual_coins: str


class PoolOut(BaseModel):
    """The pool of one enabled asset, from the books (no chain call).

    ``books``: confirmed sweeps into the pool minus confirmed payouts and the network fees
    the pool paid for them. ``fees_earned``: fees of pooled deposits. ``scheduled_payouts``:
    payouts not signed yet; ``in_flight_payouts``: signed or broadcast, not confirmed.
    ``payouts_paused`` is true when the last reconciliation found a mismatch.
    """

    asset: str
    pool_address: str
    books: str
    books_coins: str
    fees_earned: str
    fees_earned_coins: str
    scheduled_payouts: str
    scheduled_payouts_coins: str
    in_flight_payouts: str
    in_flight_payouts_coins: str
    reconciliation: ReconciliationOut | None = Field(description="null until the first check.")
    payouts_paused: bool

    @classmethod
    def build(
        cls,
        *,
        asset: str,
        pool_address: str,
        books: int,
        fees_earned: int,
        scheduled_payouts: int,
        in_flight_payouts: int,
        reconciliation: Mapping[str, Any] | None,
    ) -> PoolOut:
        """Build from the sums (base units) and the ``reconciliations`` row, if any."""
        recon = None
        if reconciliation is not None:
            recon = ReconciliationOut(
                ok=reconciliation["ok"],
                detail=reconciliation["detail"],
                checked_at=reconciliation["checked_at"],
                expected=str(reconciliation["expected"]),
                expected_coins=_coins(reconciliation["expected"], asset),
                actual=str(reconciliation["actual"]),
                actual_coins=_coins(reconciliation["actual"], asset),
            )
        return cls(
            asset=asset,
            pool_address=pool_address,
            books=str(books),
            books_coins=_coins(books, asset),
            fees_earned=str(fees_earned),
            fees_earned_coins=_coins(fees_earned, asset),
            scheduled_payouts=str(scheduled_payouts),
            scheduled_payouts_coins=_coins(scheduled_payouts, asset),
            in_flight_payouts=str(in_flight_payouts),
            in_flight_payouts_coins=_coins(in_flight_payouts, asset),
            reconciliation=recon,
            payouts_paused=recon is not None and not recon.ok,
        )


class PoolReport(BaseModel):
    """``GET /api/v1/admin/pool``: one entry per enabled asset."""

    pools: list[PoolOut]


class AuditEntryOut(BaseModel):
    """One audit log entry; hashes are lower-case hex, ``null`` (like ``seq``) until the sealer
    has chained the entry, normally within a second or two of its commit."""

    id: int
    seq: int | None = Field(description="Position in the hash chain; null until sealed.")
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    asset: str | None
    amount: str | None = Field(description="Base units moved, if any.")
    details: dict[str, Any]
    prev_hash: str | None
    hash: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditEntryOut:
        """Build from an ``audit_log`` row."""
        return cls(
            id=row["id"],
            seq=row["seq"],
            at=row["at"],
            actor=row["actor"],
            action=row["action"],
            entity_type=row["entity_type"],
            entity_id=row["entity_id"],
            asset=row["asset"],
            amount=_maybe(row["amount"]),
            details=dict(row["details"]),
            prev_hash=None if row["prev_hash"] is None else bytes(row["prev_hash"]).hex(),
            hash=None if row["hash"] is None else bytes(row["hash"]).hex(),
        )


class AuditPage(BaseModel):
    """One page of audit entries, newest (highest id) first."""

    items: list[AuditEntryOut]
    next_after: int | None = Field(description="Pass as ?after= for the next page; null on the last page.")


class HealthOut(BaseModel):
    """``GET /api/v1/health``."""

    status: Literal["ok", "unavailable"]
    database: bool
