"""Public routes: create a mix, read its status."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from mixhouse.api import RuntimeDep
from mixhouse.api.client_address import client_identity
from mixhouse.api.problems import problem_responses
from mixhouse.api.schemas import MixCreate, MixOut, MixStatusOut
from mixhouse.mixer.admission import admit_mix_creation
from mixhouse.mixer.mixes import MixRequest, create_mix
from mixhouse.mixer.status import read_mix_status

router = APIRouter(prefix="/api/v1/mixes", tags=["mixes"])


def _status_url(request: Request, mix_id: str) -> str:
    return str(request.app.url_path_for("get_mix_status", mix_id=mix_id))


@router.post(
    "",
    status_code=201,
    response_model=MixOut,
    responses=problem_responses(400, 413, 422, 429, 500, 503),
    summary="Create a mix",
)
async def post_mix(body: MixCreate, rt: RuntimeDep, request: Request, response: Response) -> MixOut:
    """Create a mix and return its deposit address, quoted fee, limits and delay window.

    Send between ``min_deposit`` and ``max_deposit`` (base units; ``*_coins`` in whole coins)
    to ``deposit_address`` before ``expires_at``. Keep ``id`` secret: it is the only handle on
    the mix. ``Location`` and ``status_url`` give the status path.

    Errors (problem+json): 400 malformed JSON, JSON nested too deeply or a NUL in the query;
    413 a body over the size limit; 422 invalid fields, unknown or disabled asset, too many
    or duplicate addresses, an address invalid for the chain (bad EIP-55 checksum...) or
    belonging to this service, a bad delay window; 429 (with ``Retry-After``) this client
    created its share of mixes for the window, or the service's cap of open mixes is reached;
    503 the database is unreachable.
    """
    await admit_mix_creation(rt, client_identity(request, rt.settings))
    row = await create_mix(
        rt,
        MixRequest(
            asset=body.asset,
            withdrawal_addresses=list(body.withdrawal_addresses),
            delay_min_seconds=body.delay_min_seconds,
            delay_max_seconds=body.delay_max_seconds,
        ),
    )
    status_url = _status_url(request, str(row["id"]))
    response.headers["Location"] = status_url
    return MixOut.from_row(row, status_url)


@router.get(
    "/{mix_id}",
    name="get_mix_status",
    response_model=MixStatusOut,
    responses=problem_responses(400, 404, 500, 503),
    summary="Read a mix",
)
async def get_mix_status(mix_id: str, rt: RuntimeDep, request: Request) -> MixStatusOut:
    """The mix with its deposits, its payouts (``sends`` of kind payout) and totals.

    Errors: 404 for any id that is not a mix (malformed and unknown ids are not told apart);
    400 for a NUL character in the path; 503 while the database is unreachable.
    """
    status = await read_mix_status(rt, mix_id)  # one statement: this is the route users poll
    return MixStatusOut.from_status(status, _status_url(request, mix_id))
