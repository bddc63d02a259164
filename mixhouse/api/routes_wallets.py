"""Wallet routes under ``/api/v1/wallets``, for users authenticated by an API key.

Authentication: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` with a key issued by
``mixhouse apikey create`` (the operator's admin key is *not* accepted here). A missing,
unknown or revoked key is a 401 problem.

Authorisation: a user sees only their own wallets; another user's wallet answers 404, exactly
like a wallet that does not exist (never 403, so ids leak nothing). Admin users see every
wallet.

Amounts are decimal strings of base units (satoshi, wei, token base units); ``net`` is signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mixhouse.api import RuntimeDep
from mixhouse.api.problems import problem_responses
from mixhouse.money import known_asset
from mixhouse.wallets import service, store
from mixhouse.wallets.service import AlreadyExists, User

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="WalletBearer",
    description="A user API key (mixhouse apikey create) as a bearer token.",
)
_api_key = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="WalletApiKey",
    description="The same user API key in the X-API-Key header.",
)

MAX_ID = 2**63 - 1
NATIVE_ASSET = {"BTC": "BTC", "ETH": "ETH", "JOBCOIN": "JOBCOIN"}


async def current_user(
    rt: RuntimeDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    key: Annotated[str | None, Security(_api_key)],
) -> User:
    """The user of the request's API key (bearer token first, then ``X-API-Key``).

    Raises:
        HTTPException: 401 when no key is given or it is unknown or revoked.
    """
    given = bearer.credentials if bearer is not None else key
    user = await service.authenticate(rt.engine, given) if given else None
    if user is None:
        raise HTTPException(
            status_code=401,
            detail="a valid API key is required (Authorization: Bearer <key> or X-API-Key: <key>)",
            headers={"WWW-Authenticate": 'Bearer realm="mixhouse"'},
        )
    return user


UserDep = Annotated[User, Depends(current_user)]
WalletId = Annotated[int, Path(ge=1, le=MAX_ID, description="The wallet's id.")]

router = APIRouter(prefix="/api/v1/wallets", tags=["wallets"], responses=problem_responses(401, 422, 500))


# -- bodies ----------------------------------------------------------------------------------

Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
AddressText = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class WalletCreate(BaseModel):
    """``POST /api/v1/wallets``."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"name": "cold storage"}]})

    name: Name = Field(description="1 to 128 printable characters, unique among your wallets.")


class WalletOut(BaseModel):
    """A wallet."""

    id: int
    name: str
    user_id: int = Field(description="The owner.")
    created_at: datetime
    address_count: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WalletOut:
        """Build from a ``wallets`` row (``address_count`` defaults to 0)."""
        return cls(
            id=row["id"],
            name=row["name"],
            user_id=row["user_id"],
            created_at=row["created_at"],
            address_count=int(row.get("address_count") or 0),
        )


class WalletList(BaseModel):
    """``GET /api/v1/wallets``: your wallets (every wallet for an admin), oldest first."""

    items: list[WalletOut]


class AddressImport(BaseModel):
    """``POST /api/v1/wallets/{id}/addresses``: addresses of one chain, imported all or nothing."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"chain": "ETH", "addresses": ["0x52908400098527886E0F7030069857D2E4169EE7"]}]},
    )

    chain: Literal["BTC", "ETH", "JOBCOIN"] = Field(description="BTC, ETH or JOBCOIN, exactly.")
    addresses: list[AddressText] = Field(
        min_length=1,
        max_length=1000,
        description="1 to 1000 addresses. BTC: of the operator's network; ETH: EIP-55 (or all lower-case).",
    )


class ImportOut(BaseModel):
    """What an import did; addresses in canonical form (EIP-55, lower-case bech32)."""

    chain: str
    added: list[str] = Field(description="Newly added; they sync from status pending.")
    already_present: list[str] = Field(description="Already in the wallet (or repeated in the request).")


class BalanceOut(BaseModel):
    """The balance of one asset on an address, base units."""

    asset: str = Field(description="BTC, ETH, JOBCOIN, or an ERC-20 contract address.")
    symbol: str | None = Field(
        default=None, description="The asset's code where known (a configured token's, e.g. USDT), else null."
    )
    decimals: int | None = Field(default=None, description="Base units per coin as a power of ten, where known.")
    confirmed: str
    unconfirmed: str = Field(description="Net of unconfirmed transactions (a signed delta).")

    @classmethod
    def of(cls, asset: str, confirmed: int, unconfirmed: int) -> BalanceOut:
        """A balance with the asset's symbol and decimals when this deployment knows the asset."""
        info = known_asset(asset)
        return cls(
            asset=asset,
            symbol=None if info is None else info.asset.value,
            decimals=None if info is None else info.decimals,
            confirmed=str(confirmed),
            unconfirmed=str(unconfirmed),
        )


class WalletAddressOut(BaseModel):
    """An imported address with its sync state and balances."""

    chain: str
    address: str
    status: Literal["pending", "syncing", "synced", "error"]
    error: str | None = Field(description="Why the last sync failed (status error).")
    confirmed: str = Field(description="Confirmed balance of the chain's native asset, base units.")
    unconfirmed: str = Field(description="Net of unconfirmed native-asset transactions, base units.")
    balances: list[BalanceOut] = Field(description="Every asset seen on the address (tokens included).")
    synced_height: int | None
    last_synced_at: datetime | None
    created_at: datetime
    xpub_id: int | None = Field(description="The xpub this address was derived from; null if imported by hand.")
    branch: int | None = Field(description="0 receive, 1 change (derived addresses only).")
    derivation_index: int | None = Field(description="Index on the branch: KEY/branch/derivation_index.")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WalletAddressOut:
        """Build from a row of :func:`mixhouse.wallets.service.list_wallet_addresses`."""
        balances: dict[str, tuple[int, int]] = row["balances"]
        native = balances.get(NATIVE_ASSET.get(row["chain"], row["chain"]), (0, 0))
        return cls(
            chain=row["chain"],
            address=row["address"],
            status=row["status"],
            error=row["error"],
            confirmed=str(native[0]),
            unconfirmed=str(native[1]),
            balances=[BalanceOut.of(asset, conf, unconf) for asset, (conf, unconf) in sorted(balances.items())],
            synced_height=row["synced_height"],
            last_synced_at=row["last_synced_at"],
            created_at=row["created_at"],
            xpub_id=row["xpub_id"],
            branch=row["branch"],
            derivation_index=row["derivation_index"],
        )


class AddressList(BaseModel):
    """``GET /api/v1/wallets/{id}/addresses``, in import order."""

    items: list[WalletAddressOut]


DescriptorText = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
# Account m/84'/1'/0' of the BIP-39 test mnemonic "abandon ... about" (a test-network key).
_EXAMPLE_VPUB = (
    "vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbBrf8ZhDYe2jWAqvZVnsc"
)
_EXAMPLE_DESCRIPTOR = (
    "wpkh([73c5da0a/84h/1h/0h]tpubDC8msFGeGuwnKG9Upg7DM2b4DaRqg3CUZa5g8v2SRQ6K4NSkxUgd7HsL2XVWbVm39yBA4LAxysQAm397zwQ"
    "SQoQgewGiYZqrA9DsP4zbQ1M/<0;1>/*)"
)
ScriptTypeOut = Literal["pkh", "sh-wpkh", "wpkh", "tr"]


class XpubImportIn(BaseModel):
    """``POST /api/v1/wallets/{id}/xpubs``: a watch-only key set (extended public key or descriptor)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"descriptor": _EXAMPLE_VPUB, "gap_limit": 20},
                {"descriptor": _EXAMPLE_DESCRIPTOR},
            ]
        },
    )

    descriptor: DescriptorText = Field(
        description=(
            "An extended public key (xpub/ypub/zpub, tpub/upub/vpub off mainnet) or a one-key output "
            "descriptor pkh(KEY), sh(wpkh(KEY)), wpkh(KEY), tr(KEY); KEY may carry an origin "
            "[fingerprint/path] and /0/*, /1/* or /<0;1>/*; an optional #checksum is verified. "
            "Never a private key."
        )
    )
    gap_limit: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Unused addresses kept derived after the last used one, per branch (BIP-44 uses 20).",
    )


class DerivedAddressOut(BaseModel):
    """An address derived from an xpub: ``KEY/branch/index``."""

    branch: int = Field(description="0 receive, 1 change.")
    index: int
    address: str


class XpubOut(BaseModel):
    """An imported key set with every address derived from it so far."""

    id: int
    descriptor: str = Field(description="Canonical form: <type>([origin]xpub/<0;1>/*)#checksum (BIP-380, BIP-389).")
    script_type: ScriptTypeOut = Field(description="pkh (P2PKH), sh-wpkh (P2SH-P2WPKH), wpkh (P2WPKH), tr (P2TR).")
    gap_limit: int
    created_at: datetime
    addresses: list[DerivedAddressOut] = Field(description="By branch, then index; they sync from status pending.")

    @classmethod
    def from_import(cls, result: service.XpubImport) -> XpubOut:
        """Build from :func:`mixhouse.wallets.service.import_xpub`'s result."""
        return cls(
            id=result.id,
            descriptor=result.descriptor,
            script_type=result.script_type,
            gap_limit=result.gap_limit,
            created_at=result.created_at,
            addresses=[DerivedAddressOut(branch=a.branch, index=a.index, address=a.address) for a in result.addresses],
        )


class BranchOut(BaseModel):
    """The derivation state and balance of one branch of an xpub."""

    derived: int = Field(description="Addresses derived so far (indexes 0 .. derived-1).")
    last_used_index: int | None = Field(description="Highest index with any transaction; null if none.")
    confirmed: str = Field(description="Confirmed balance of the branch's addresses, satoshi.")
    unconfirmed: str = Field(description="Net of their unconfirmed transactions, satoshi (signed).")

    @classmethod
    def from_stats(cls, stats: service.BranchStats) -> BranchOut:
        """Build from a :class:`mixhouse.wallets.service.BranchStats`."""
        return cls(
            derived=stats.derived,
            last_used_index=stats.last_used,
            confirmed=str(stats.confirmed),
            unconfirmed=str(stats.unconfirmed),
        )


class XpubSummaryOut(BaseModel):
    """An imported key set with per-branch state and balance totals."""

    id: int
    descriptor: str
    script_type: ScriptTypeOut
    gap_limit: int
    created_at: datetime
    receive: BranchOut = Field(description="Branch 0.")
    change: BranchOut = Field(description="Branch 1.")
    confirmed: str = Field(description="Confirmed balance over both branches, satoshi.")
    unconfirmed: str = Field(description="Net of unconfirmed transactions over both branches, satoshi (signed).")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> XpubSummaryOut:
        """Build from a row of :func:`mixhouse.wallets.service.list_xpubs`."""
        return cls(
            id=row["id"],
            descriptor=row["descriptor"],
            script_type=row["script_type"],
            gap_limit=row["gap_limit"],
            created_at=row["created_at"],
            receive=BranchOut.from_stats(row["branches"][0]),
            change=BranchOut.from_stats(row["branches"][1]),
            confirmed=str(row["confirmed"]),
            unconfirmed=str(row["unconfirmed"]),
        )


class XpubList(BaseModel):
    """``GET /api/v1/wallets/{id}/xpubs``, oldest first."""

    items: list[XpubSummaryOut]


class LegOut(BaseModel):
    """One input or output of a transaction."""

    index: int = Field(description="vin/vout index (Bitcoin); 0 or the log index (Ethereum).")
    address: str | None
    amount: str = Field(description="Base units.")
    asset: str


class TxOut(BaseModel):
    """A transaction as seen from one of the wallet's addresses."""

    txid: str
    chain: str
    address: str = Field(description="The wallet's address this row is about.")
    asset: str
    symbol: str | None = Field(default=None, description="The asset's code where known (USDT for its contract).")
    decimals: int | None = Field(default=None, description="Base units per coin as a power of ten, where known.")
    direction: Literal["in", "out", "self"]
    net: str = Field(description="Signed effect on the address, base units of asset.")
    fee: str | None = Field(description="Network fee in the chain's base unit, if known.")
    block_height: int | None
    block_hash: str | None
    block_time: datetime | None
    confirmations: int | None = Field(description="0 unconfirmed; null when the sync height is unknown.")
    first_seen_at: datetime
    inputs: list[LegOut]
    outputs: list[LegOut]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TxOut:
        """Build from a row of :func:`mixhouse.wallets.store.list_txs`."""
        info = known_asset(row["asset"])
        return cls(
            txid=row["txid"],
            chain=row["chain"],
            address=row["address"],
            asset=row["asset"],
            symbol=None if info is None else info.asset.value,
            decimals=None if info is None else info.decimals,
            direction=row["direction"],
            net=str(row["net"]),
            fee=None if row["fee"] is None else str(row["fee"]),
            block_height=row["block_height"],
            block_hash=row["block_hash"],
            block_time=row["block_time"],
            confirmations=row["confirmations"],
            first_seen_at=row["first_seen_at"],
            inputs=[LegOut(**leg) for leg in row["inputs"]],
            outputs=[LegOut(**leg) for leg in row["outputs"]],
        )


class TxPage(BaseModel):
    """One page of transactions."""

    items: list[TxOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= (with the same sort) for the next page; null at the end."
    )


# -- routes ----------------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=WalletOut,
    responses=problem_responses(400, 409),
    summary="Create a wallet",
)
async def create_wallet(
    body: WalletCreate, user: UserDep, rt: RuntimeDep, request: Request, response: Response
) -> WalletOut:
    """Create an empty wallet of yours. ``Location`` is its path.

    Errors: 400 malformed JSON; 409 you already have a wallet of that name; 422 a bad name.
    """
    try:
        row = await service.create_wallet(rt.engine, user.id, body.name)
    except AlreadyExists as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    response.headers["Location"] = str(request.app.url_path_for("get_wallet", wallet_id=row["id"]))
    return WalletOut.from_row(row)


@router.get("", response_model=WalletList, summary="List wallets")
async def list_wallets(user: UserDep, rt: RuntimeDep) -> WalletList:
    """Your wallets, oldest first (an admin gets every user's)."""
    return WalletList(items=[WalletOut.from_row(r) for r in await service.list_wallets(rt.engine, user)])


@router.get(
    "/{wallet_id}",
    name="get_wallet",
    response_model=WalletOut,
    responses=problem_responses(404),
    summary="Read a wallet",
)
async def get_wallet(wallet_id: WalletId, user: UserDep, rt: RuntimeDep) -> WalletOut:
    """One wallet. Errors: 404 when it does not exist or is not yours."""
    row = await service.get_wallet(rt.engine, wallet_id, user)
    row["address_count"] = len(await service.list_wallet_addresses(rt.engine, wallet_id))
    return WalletOut.from_row(row)


@router.post(
    "/{wallet_id}/addresses",
    response_model=ImportOut,
    responses=problem_responses(400, 404),
    summary="Import addresses",
)
async def import_addresses(wallet_id: WalletId, body: AddressImport, user: UserDep, rt: RuntimeDep) -> ImportOut:
    """Import watch-only addresses of one chain into the wallet; they start as ``pending``.

    All or nothing: if any address is invalid for the chain (bad EIP-55 checksum, a Bitcoin
    address of another network...) nothing is imported and the 422 problem names it.
    Addresses already in the wallet are reported in ``already_present``.

    Errors: 400 malformed JSON; 404 wallet not found (or not yours); 422 invalid address.
    """
    await service.get_wallet(rt.engine, wallet_id, user)
    result = await service.import_addresses(
        rt.engine, wallet_id, body.chain, body.addresses, bitcoin_network=rt.settings.bitcoin_network
    )
    return ImportOut(chain=body.chain, added=result.added, already_present=result.already_present)


@router.get(
    "/{wallet_id}/addresses",
    response_model=AddressList,
    responses=problem_responses(404),
    summary="List a wallet's addresses",
)
async def list_addresses(wallet_id: WalletId, user: UserDep, rt: RuntimeDep) -> AddressList:
    """The wallet's addresses with sync status, last error, balances (base-unit strings)."""
    await service.get_wallet(rt.engine, wallet_id, user)
    rows = await service.list_wallet_addresses(rt.engine, wallet_id)
    return AddressList(items=[WalletAddressOut.from_row(r) for r in rows])


@router.post(
    "/{wallet_id}/xpubs",
    status_code=201,
    response_model=XpubOut,
    responses={
        200: {"model": XpubOut, "description": "The wallet already had this key set; returned unchanged."},
        **problem_responses(400, 404),
    },
    summary="Import an xpub or descriptor",
)
async def import_xpub(
    wallet_id: WalletId, body: XpubImportIn, user: UserDep, rt: RuntimeDep, response: Response
) -> XpubOut:
    """Import a watch-only Bitcoin key set: its first ``gap_limit`` receive and change addresses
    are added to the wallet (``pending``), and every sync derives more so that ``gap_limit``
    unused addresses always follow the last used one on each branch.

    Idempotent: the same key set again (any origin, any of its chains) answers 200 with the
    stored one, unchanged. A derived address already imported by hand is attached to the key.

    Errors: 400 malformed JSON; 404 wallet not found (or not yours); 422 the key is refused
    (a private key, a bad checksum, hardened steps after the key, another network than the
    server's, multisig or another unsupported descriptor, malformed) or the gap limit is out of
    1..1000. Nothing is written on an error.
    """
    await service.get_wallet(rt.engine, wallet_id, user)
    result = await service.import_xpub(
        rt.engine,
        wallet_id,
        body.descriptor,
        gap_limit=body.gap_limit,
        bitcoin_network=rt.settings.bitcoin_network,
    )
    if not result.created:
        response.status_code = 200
    return XpubOut.from_import(result)


@router.get(
    "/{wallet_id}/xpubs",
    response_model=XpubList,
    responses=problem_responses(404),
    summary="List a wallet's xpubs",
)
async def list_xpubs(wallet_id: WalletId, user: UserDep, rt: RuntimeDep) -> XpubList:
    """The wallet's key sets with, per branch, the addresses derived, the last used index and
    the balance (satoshi strings). The addresses themselves are in ``/addresses``."""
    await service.get_wallet(rt.engine, wallet_id, user)
    return XpubList(items=[XpubSummaryOut.from_row(r) for r in await service.list_xpubs(rt.engine, wallet_id)])


AmountParam = Annotated[
    str | None,
    Query(pattern=r"^[0-9]{1,78}$", description="Bound on abs(net), base units, inclusive (decimal string)."),
]


@router.get(
    "/{wallet_id}/transactions",
    response_model=TxPage,
    responses=problem_responses(404),
    summary="List a wallet's transactions",
)
async def list_transactions(
    *,
    wallet_id: WalletId,
    user: UserDep,
    rt: RuntimeDep,
    cursor: Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size, 1..500.")] = 50,
    since: Annotated[datetime | None, Query(description="Time >= since (block time, else first seen).")] = None,
    until: Annotated[datetime | None, Query(description="Time < until.")] = None,
    direction: Annotated[Literal["in", "out", "self"] | None, Query()] = None,
    min_amount: AmountParam = None,
    max_amount: AmountParam = None,
    sort: Annotated[Literal["newest", "oldest"], Query()] = "newest",
) -> TxPage:
    """Transactions of the wallet's addresses, one row per (address, txid, asset).

    Ordered by time (the block time; the first-seen time while unconfirmed) then by row,
    ``newest`` or ``oldest`` first. Pages are keyset-cut: new transactions arriving while you
    page never repeat or skip rows of your listing. Naive times are UTC.

    Errors: 404 wallet not found (or not yours); 422 invalid parameters or cursor (a cursor
    is only valid with the sort it was made for).
    """
    await service.get_wallet(rt.engine, wallet_id, user)
    async with rt.engine.connect() as conn:
        rows, next_cursor = await store.list_txs(
            conn,
            wallet_id,
            cursor=cursor,
            limit=limit,
            since=since,
            until=until,
            direction=direction,
            min_amount=None if min_amount is None else int(min_amount),
            max_amount=None if max_amount is None else int(max_amount),
            sort=sort,
        )
    return TxPage(items=[TxOut.from_row(r) for r in rows], next_cursor=next_cursor)
