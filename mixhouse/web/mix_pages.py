"""The user's pages: the mix form (``GET /``), a mix's live page (``GET /mix/{id}``) and what
they call (``POST /mix/check``, ``GET /mix/{id}/events``).

The form creates the mix through the API itself (``POST /api/v1/mixes``), so the page meets
exactly the API's rules, limits and messages; ``/mix/check`` runs the same withdrawal-address
rules (:mod:`mixhouse.mixer.withdrawals`) while the user types, without creating anything.
A mix's page is rendered from the same status as ``GET /api/v1/mixes/{id}`` and its status
block is sent again, as server-sent events, whenever it changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from mixhouse.api import RuntimeDep
from mixhouse.api.schemas import FEE_EXPLAINED, MixStatusOut, WithdrawalAddress
from mixhouse.errors import NotFound
from mixhouse.mixer.mixes import get_mix
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.withdrawals import check_withdrawals, ours
from mixhouse.money import Asset, asset_info, format_amount
from mixhouse.web.payment_uri import payment_uri, qr_svg
from mixhouse.web.sse import change_stream, sse_response
from mixhouse.web.templating import render, render_fragment

router = APIRouter(include_in_schema=False)

# How often a mix page's stream looks at the mix, seconds.
STATUS_POLL_SECONDS = 1.0

MixId = Annotated[str, Path(min_length=1, max_length=200)]


@dataclass(frozen=True, slots=True)
class AssetOffer:
    """What the form shows of one enabled asset before a mix is created.

    Amounts are whole-coin decimal strings (``min_coins``...); durations are seconds.
    """

    asset: str
    min_coins: str
    max_coins: str
    fee_min_bps: int
    fee_max_bps: int
    fee_percent_range: str
    confirmations: int
    default_delay_min_seconds: int
    default_delay_max_seconds: int
    max_delay_seconds: int
    extra_wait_seconds: int
    ttl_seconds: int
    grace_seconds: int
    max_addresses: int


def asset_offers(rt: Runtime) -> list[AssetOffer]:
    """One :class:`AssetOffer` per enabled asset, from the settings and the adapters."""
    s = rt.settings
    offers = []
    order = s.enabled_assets()
    for asset in sorted(rt.adapters, key=lambda a: order.index(a) if a in order else len(order)):
        low, high = rt.settings.deposit_limits(asset)
        decimals = asset_info(asset).decimals
        offers.append(
            AssetOffer(
                asset=asset.value,
                min_coins=format_amount(low, decimals),
                max_coins=format_amount(high, decimals),
                fee_min_bps=s.fee_min_bps,
                fee_max_bps=s.fee_max_bps,
                fee_percent_range=f"{format_amount(s.fee_min_bps, 2)}-{format_amount(s.fee_max_bps, 2)}",
                confirmations=rt.adapters[asset].confirmations_required,
                default_delay_min_seconds=s.default_delay_min_seconds,
                default_delay_max_seconds=s.default_delay_max_seconds,
                max_delay_seconds=s.max_delay_seconds,
                extra_wait_seconds=s.privacy_max_extra_wait_seconds,
                ttl_seconds=s.mix_ttl_seconds,
                grace_seconds=s.late_deposit_grace_seconds,
                max_addresses=s.max_withdrawal_addresses,
            )
        )
    return offers


def duration(seconds: int | float) -> str:
    """``seconds`` in plain words: ``"45 s"``, ``"5 min"``, ``"6 h"``, ``"7 days"``, ``"1 h 30 min"``."""
    total = int(seconds)
    if total < 120:
        return f"{total} s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = []
    if days:
        parts.append(f"{days} day" + ("s" if days > 1 else ""))
    if hours:
        parts.append(f"{hours} h")
    if minutes and not days:
        parts.append(f"{minutes} min")
    return " ".join(parts)


def explorer_link(rt: Runtime, asset: str, txid: str | None) -> str | None:
    """The operator's explorer page of ``txid`` (``settings.explorer_tx_urls[asset]`` with
    ``{txid}`` replaced, URL-quoted), or ``None`` without a template or a txid."""
    template = rt.settings.explorer_tx_urls.get(asset)
    if template is None or txid is None or "{txid}" not in template:
        return None
    return template.replace("{txid}", quote(txid, safe=""))


@router.get("/", response_class=HTMLResponse)
async def mix_form(request: Request, rt: RuntimeDep) -> HTMLResponse:
    """The mix form: asset, withdrawal addresses, delay window, and the quote."""
    offers = asset_offers(rt)
    return render(
        request,
        "mix_form.html",
        {
            "offers": offers,
            "offers_json": [asdict(o) for o in offers],
            "max_addresses": rt.settings.max_withdrawal_addresses,
            "fee_explained": FEE_EXPLAINED,
            "duration": duration,
        },
    )


class AddressCheckIn(BaseModel):
    """``POST /mix/check``: the addresses typed so far."""

    model_config = ConfigDict(extra="forbid", strict=True)

    asset: str = Field(max_length=16)
    withdrawal_addresses: list[WithdrawalAddress | None] = Field(max_length=50)


class AddressCheckOut(BaseModel):
    """Per field index (as a string), the API's message; ``count_error`` for the list."""

    problems: dict[str, str]
    count_error: str | None
    normalized: list[str | None]


@router.post("/mix/check")
async def check_addresses(body: AddressCheckIn, rt: RuntimeDep) -> AddressCheckOut:
    """Check withdrawal addresses with the API's rules; creates nothing.

    Empty fields (``null`` or ``""``) are skipped and reported nowhere.

    Errors: 422 (problem) for an unknown or disabled asset, as ``POST /api/v1/mixes``.
    """
    adapter = rt.adapter(body.asset)
    filled = [(i, a) for i, a in enumerate(body.withdrawal_addresses) if a]
    typed = [a for _, a in filled]
    first = check_withdrawals(adapter, typed, max_addresses=rt.settings.max_withdrawal_addresses)
    async with rt.engine.connect() as conn:
        mine = await ours(conn, adapter.asset.value, [a for a in first.normalized if a is not None])
    checked = check_withdrawals(
        adapter, typed, max_addresses=rt.settings.max_withdrawal_addresses, deposit_addresses=mine
    )
    normalized: list[str | None] = [None] * len(body.withdrawal_addresses)
    for (index, _), canonical in zip(filled, checked.normalized, strict=True):
        normalized[index] = canonical
    return AddressCheckOut(
        problems={str(filled[p.index][0]): p.message for p in checked.problems},
        count_error=checked.count_error if typed else None,
        normalized=normalized,
    )


async def _status_context(rt: Runtime, mix_id: str) -> dict[str, Any]:
    status = MixStatusOut.from_status(await get_mix(rt, mix_id), f"/api/v1/mixes/{mix_id}")
    adapter = rt.adapters.get(Asset(status.asset))
    return {
        "mix": status,
        "confirmations_required": 1 if adapter is None else adapter.confirmations_required,
        "links": {p.id: explorer_link(rt, status.asset, p.txid) for p in status.payouts},
        "sent": sum(1 for p in status.payouts if p.state in ("signed", "broadcast")),
        "confirmed": sum(1 for p in status.payouts if p.state == "confirmed"),
        "duration": duration,
    }


@router.get("/mix/{mix_id}", response_class=HTMLResponse)
async def mix_page(mix_id: MixId, request: Request, rt: RuntimeDep) -> HTMLResponse:
    """A mix's own page: deposit address (text, copy button, QR code), quote, live status.

    Errors: 404 page for an id that is not a mix.
    """
    try:
        context = await _status_context(rt, mix_id)
    except NotFound:
        return render(request, "not_found.html", {}, status_code=404)
    mix: MixStatusOut = context["mix"]
    adapter = rt.adapters.get(Asset(mix.asset))
    chain_id = getattr(adapter, "chain_id", None)
    uri = payment_uri(
        mix.asset,
        mix.deposit_address,
        chain_id=chain_id if isinstance(chain_id, int) else None,
        contract=asset_info(mix.asset).contract,
    )
    context.update(
        {
            "uri": uri,
            "qr": qr_svg(uri),
            "grace": duration(rt.settings.late_deposit_grace_seconds),
            "watch_until": mix.expires_at + timedelta(seconds=rt.settings.late_deposit_grace_seconds),
            "fee_explained": FEE_EXPLAINED,
        }
    )
    return render(request, "mix.html", context)


@router.get("/mix/{mix_id}/events")
async def mix_events(mix_id: MixId, request: Request, rt: RuntimeDep) -> StreamingResponse:
    """Server-sent events: ``status`` with the page's status block (HTML) whenever it changes.

    Errors: 404 (problem) for an id that is not a mix.
    """
    await get_mix(rt, mix_id)  # NotFound -> 404 before the stream starts

    async def snapshot() -> str:
        return render_fragment("_mix_status.html", await _status_context(rt, mix_id))

    return sse_response(change_stream(request, snapshot, event="status", interval=STATUS_POLL_SECONDS))
