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
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mixhouse.money import asset_info, format_amount

if TYPE_CHECKING:
    from mixhouse.mixer.privacy.live import LiveReport

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

    asset: str = Field(
        pattern=r"^[A-Z][A-Z0-9]{1,15}$",
        description="An asset this deployment mixes: JOBCOIN, ETH, BTC or a configured ERC-20 token such as USDT "
        "(its code, case-sensitive; GET /api/v1/assets lists them).",
    )
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


class RefundCreate(BaseModel):
    """``POST /api/v1/admin/deposits/{id}/refund``: where to refund a held deposit.

    ``address`` is checked by the chain's own rules and must not be ours (the pool or a
    deposit address). ``operator`` names who asks in the audit log (default ``"api key"``).
    """

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"address": "alice-back"}]})

    address: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    operator: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class AcknowledgementCreate(BaseModel):
    """``POST /api/v1/admin/reconciliations/{asset}/acknowledge``: the operator's written reason.

    ``expected`` and ``actual`` (base units, decimal strings) are the books and chain figures
    the operator looked at; when given they must still be the last check's (else 409).
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"reason": "1 JOBCOIN moved out by hand for the audit sample"}]},
    )

    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    operator: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    expected: Annotated[str, StringConstraints(pattern=r"^-?[0-9]{1,78}$")] | None = None
    actual: Annotated[str, StringConstraints(pattern=r"^-?[0-9]{1,78}$")] | None = None


# -- output ---------------------------------------------------------------------------------


def _coins(amount: int, asset: str) -> str:
    return format_amount(amount, asset_info(asset).decimals)


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


class RefundOut(BaseModel):
    """The operator's refund of a held deposit: a send from its deposit address.

    ``amount`` is what the refund address receives: the deposit minus ``network_fee_reserved``.
    ``txid`` is null until signed, and on Jobcoin (which has no transaction ids).
    """

    send_id: int
    deposit_id: int
    state: str = Field(description="scheduled, signed, broadcast or confirmed.")
    to_address: str
    amount: str
    amount_coins: str
    network_fee_reserved: str
    network_fee_reserved_coins: str
    txid: str | None
    confirmed_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RefundOut:
        """Build from a ``sends`` row of kind ``refund`` (``id``, ``deposit_id``, ``asset``...)."""
        asset = str(row["asset"])
        fee = int(row.get("network_fee_reserved") or 0)
        return cls(
            send_id=row["id"],
            deposit_id=row["deposit_id"],
            state=row["state"],
            to_address=row["to_address"],
            amount=str(row["amount"]),
            amount_coins=_coins(row["amount"], asset),
            network_fee_reserved=str(fee),
            network_fee_reserved_coins=_coins(fee, asset),
            txid=row.get("txid"),
            confirmed_at=row.get("confirmed_at"),
        )


class RefundRequestOut(BaseModel):
    """The answer of a refund request: the refund, new (202) or existing (200)."""

    created: bool = Field(description="True when this request scheduled the refund; false when it already existed.")
    deposit_state: str = Field(description="refunding, or refunded once the send confirmed.")
    refund: RefundOut


class AcknowledgementOut(BaseModel):
    """An operator's acknowledgement of a reconciliation mismatch (base units as strings).

    Payouts of the asset flow while later checks show a discrepancy (chain minus books) in
    ``[discrepancy_low, discrepancy_high]``; another mismatch pauses them again.
    """

    id: int
    asset: str
    expected: str
    actual: str
    low: str
    high: str
    discrepancy_low: str
    discrepancy_high: str
    operator: str
    reason: str
    created_at: datetime
    created: bool = Field(description="False when the current mismatch was already acknowledged (this is that one).")


class DepositOut(BaseModel):
    """A deposit seen on the mix's deposit address.

    ``fee_amount``, ``network_fee_amount`` and ``payout_total`` are set once the deposit is
    planned (swept into the pool), else null. Until ``released_at`` is set the release gate may
    re-choose them inside the quoted range (``mixer/gate.py``); from then on they are final.
    A held deposit the operator refunds carries its ``refund`` (else null); its
    ``network_fee_amount`` is then the refund's network fee.
    """

    id: int
    state: str = Field(description="seen, frozen, held, sweeping, pooled, dropped, refunding or refunded.")
    amount: str
    amount_coins: str
    from_addresses: list[str]
    confirmations: int
    reason: str | None = Field(description="Why it is frozen or held.")
    fee_amount: str | None
    fee_amount_coins: str | None
    network_fee_amount: str | None
    network_fee_amount_coins: str | None
    payout_total: str | None = Field(
        description="Exactly what the withdrawal addresses receive for this deposit; final once released_at is set "
        "(before, the release gate may re-choose it inside the quoted range)."
    )
    payout_total_coins: str | None
    anonymity_set: int | None = Field(
        description="When its payouts were released: how many deposits (this one included) could, by amount "
        "and time, have paid them, as measured by Mixhouse's own chain-analysis attack."
    )
    released_at: datetime | None = Field(description="When the release gate let its payouts go.")
    created_at: datetime
    refund: RefundOut | None = Field(default=None, description="The operator's refund of this held deposit, if any.")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DepositOut:
        """Build from a ``deposits`` row, with its refund's ``sends`` row under ``refund`` if any."""
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
            refund=None if row.get("refund") is None else RefundOut.from_row(row["refund"]),
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
        # get_mix lists refunds among the sends; read_mix_status puts each on its deposit.
        refunds = {s["deposit_id"]: s for s in status["sends"] if s["kind"] == "refund"}
        deps = [{**d, "refund": d.get("refund") or refunds.get(d["id"])} for d in deps]
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
    acknowledgement_id: int | None = Field(
        default=None, description="The operator's acknowledgement that covers this mismatch (payouts flow), if any."
    )


class PoolOut(BaseModel):
    """The pool of one enabled asset, from the books (no chain call).

    ``books``: confirmed sweeps into the pool minus confirmed payouts and the network fees
    the pool paid for them. ``fees_earned``: fees of pooled deposits. ``scheduled_payouts``:
    payouts not signed yet; ``in_flight_payouts``: signed or broadcast, not confirmed.
    ``payouts_paused`` is true when the last reconciliation found a mismatch that no operator
    acknowledgement covers.
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
                acknowledgement_id=reconciliation.get("acknowledgement_id"),
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
            payouts_paused=recon is not None and not recon.ok and recon.acknowledgement_id is None,
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


class PrivacyAttackOut(BaseModel):
    """How well one public attack links the pool's withdrawal addresses to their deposits,
    scored against the links only the operator knows. Percentages are floats 0..100."""

    name: str = Field(description="amount, amount+window, amount+window+structure, timing, timing+fifo, single.")
    addresses: int = Field(description="Withdrawal addresses scored (paid by exactly one deposit).")
    claims: int = Field(description="Addresses the attack linked to a deposit.")
    correct: int = Field(description="Links that were right.")
    linked_pct: float = Field(description="correct / addresses, percent.")
    precision_pct: float = Field(description="correct / claims, percent (100 when nothing was claimed).")
    set_p10: int = Field(description="10th percentile of the addresses' anonymity sets (deposits they could be).")
    set_p50: int
    set_p90: int
    deposits_deanonymised_pct: float = Field(description="Deposits all of whose addresses were linked, percent.")
    groups_found_pct: float = Field(description="Multi-address users whose address set was found as a group, percent.")
    capped_deposits: int = Field(description="Deposits whose group search hit the work cap (counted as 'many').")


class PrivacyRulesOut(BaseModel):
    """The documented rules the attacks assume (what any analyst can read)."""

    fee_min_bps: int
    fee_max_bps: int
    min_payout: str = Field(description="The asset's dust limit, base units.")
    delay_min_seconds: float = Field(description="The smallest delay_min of the analysed mixes (0 without any).")
    max_wait_seconds: float = Field(description="The largest max_wait of the analysed mixes.")
    max_addresses: int = Field(description="Largest address group searched: max_withdrawal_addresses, at most 10.")
    round_seconds: float | None = Field(description="Payout round length: the slack a payout may take.")


class PrivacyGateOut(BaseModel):
    """The release gate: deposits released in the range and what it holds now."""

    k: int = Field(description="privacy_gate_k: the anonymity set a release waits for (1: gate off).")
    released: int = Field(description="Deposits whose payouts were released in the range.")
    released_by_anonymity_set: int = Field(description="Released because their anonymity set reached k.")
    released_by_max_wait: int = Field(description="Released because their mix's maximum wait was reached.")
    anonymity_set_p10: int = Field(description="Percentiles of the anonymity set measured at release (deposits).")
    anonymity_set_p50: int
    anonymity_set_p90: int
    waiting: int = Field(description="Pooled deposits due for payout that the gate holds now.")
    oldest_wait_seconds: float = Field(description="How long the longest-held of them has been pooled, seconds.")
    not_yet_due: int = Field(description="Pooled deposits whose first payout is not due yet.")


class PrivacyReportOut(BaseModel):
    """``GET /api/v1/admin/privacy``: Mixhouse's own chain-analysis attacks run over the live
    pool of one asset, scored against the truth, and the release gate's figures."""

    asset: str
    pool_address: str
    hours: int
    since: datetime = Field(description="Start of the range of payout confirmation times.")
    until: datetime
    payouts_in_range: int = Field(description="Confirmed payouts in the range.")
    payouts_analysed: int = Field(description="The newest payout_limit of them at most.")
    payout_limit: int
    payouts_capped: bool = Field(description="True when only the newest payout_limit payouts were analysed.")
    deposits_analysed: int = Field(description="Pooled deposits that could have paid the analysed payouts.")
    withdrawal_addresses: int = Field(description="Addresses the analysed payouts went to.")
    shared_addresses: int = Field(description="Addresses paid by two or more deposits: not scored.")
    machine_made_payouts: int = Field(description="Payouts showing all eight decimals (a tell of computed splits).")
    rules: PrivacyRulesOut
    attacks: list[PrivacyAttackOut]
    best_attack: str = Field(description="The attack that linked the most addresses.")
    gate: PrivacyGateOut
    analysis_seconds: float = Field(description="Wall time of the analysis, seconds.")
    note: str

    @classmethod
    def from_live(cls, live: LiveReport) -> PrivacyReportOut:
        """Build from :func:`mixhouse.mixer.privacy.live.privacy_report`'s result."""
        pool, gate = live.pool, live.gate
        capped = {name: len(result.capped) for name, result in live.report.attacks.items()}
        note = "every confirmed payout of the range was analysed"
        if pool.payouts_capped:
            note = (
                f"only the newest {len(pool.view.payouts)} of {pool.payouts_in_range} payouts of the range were "
                "analysed"
            )
        return cls(
            asset=pool.asset.value,
            pool_address=pool.view.pool_address,
            hours=pool.hours,
            since=pool.since,
            until=pool.until,
            payouts_in_range=pool.payouts_in_range,
            payouts_analysed=len(pool.view.payouts),
            payout_limit=pool.payout_limit,
            payouts_capped=pool.payouts_capped,
            deposits_analysed=len(pool.view.deposits),
            withdrawal_addresses=len(live.report.withdrawal_addresses),
            shared_addresses=pool.shared_addresses,
            machine_made_payouts=live.report.machine_made_payouts,
            rules=PrivacyRulesOut(
                fee_min_bps=pool.rules.fee_min_bps,
                fee_max_bps=pool.rules.fee_max_bps,
                min_payout=str(pool.rules.min_payout),
                delay_min_seconds=pool.timing.delay_min_seconds,
                max_wait_seconds=pool.timing.max_wait_seconds,
                max_addresses=pool.timing.max_addresses,
                round_seconds=pool.timing.round_seconds,
            ),
            attacks=[
                PrivacyAttackOut(
                    name=s.name,
                    addresses=s.addresses,
                    claims=s.claims,
                    correct=s.correct,
                    linked_pct=s.linked_pct,
                    precision_pct=s.precision_pct,
                    set_p10=s.set_p10,
                    set_p50=s.set_p50,
                    set_p90=s.set_p90,
                    deposits_deanonymised_pct=s.deposits_deanonymised_pct,
                    groups_found_pct=s.groups_found_pct,
                    capped_deposits=capped.get(s.name, 0),
                )
                for s in live.score.attacks.values()
            ],
            best_attack=live.score.best,
            gate=PrivacyGateOut(
                k=gate.k,
                released=gate.released,
                released_by_anonymity_set=gate.released_by_k,
                released_by_max_wait=gate.released_by_max_wait,
                anonymity_set_p10=gate.set_p10,
                anonymity_set_p50=gate.set_p50,
                anonymity_set_p90=gate.set_p90,
                waiting=gate.waiting,
                oldest_wait_seconds=gate.oldest_wait_seconds,
                not_yet_due=gate.not_yet_due,
            ),
            analysis_seconds=live.analysis_seconds,
            note=note,
        )


class SignerHealthOut(BaseModel):
    """One asset's signer in ``GET /api/v1/health`` (:class:`mixhouse.keys.signer.SignerHealth`
    without the timing or the reason: the route is public; ``/metrics`` has the timing)."""

    asset: str = Field(description="The asset the signer holds keys of (one token may serve several).")
    kind: str = Field(description='"software" or "pkcs11".')
    ok: bool = Field(description="A test signature was made and verified.")
    present: bool = Field(description="The key holder (PKCS#11 token) was found.")
    logged_in: bool = Field(description="A session is logged in (the PIN was accepted).")


class HealthOut(BaseModel):
    """``GET /api/v1/health``: ``ok``; ``degraded`` (HTTP 200) when the database answers but a
    signer does not (sends wait and are retried; the reads still work); ``unavailable`` (HTTP
    503) when the database does not answer."""

    status: Literal["ok", "degraded", "unavailable"]
    database: bool
    signers: list[SignerHealthOut] = Field(default_factory=list)
