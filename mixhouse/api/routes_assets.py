"""Public route: the assets this deployment mixes, with their facts and limits."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from mixhouse.api import RuntimeDep
from mixhouse.api.problems import problem_responses
from mixhouse.money import format_amount

router = APIRouter(prefix="/api/v1/assets", tags=["mixes"])


class AssetOut(BaseModel):
    """One asset a mix can be created in. Amounts are decimal strings of base units."""

    asset: str = Field(description="The code to pass as a mix's asset (JOBCOIN, ETH, BTC, USDT...).")
    chain: str = Field(description="jobcoin, evm or bitcoin.")
    decimals: int = Field(description="Base units per coin as a power of ten (USDT: 6).")
    unit: str = Field(description="The base unit's name (wei, satoshi...).")
    contract: str | None = Field(description="The ERC-20 contract (EIP-55) of a token, null for a native coin.")
    dust: str = Field(description="The smallest payout, base units.")
    min_deposit: str = Field(description="Base units.")
    max_deposit: str = Field(description="Base units.")
    min_deposit_coins: str
    max_deposit_coins: str
    confirmations: int = Field(description="Confirmations after which a deposit counts.")


class AssetList(BaseModel):
    """The enabled assets, in the deployment's order."""

    items: list[AssetOut]


@router.get("", response_model=AssetList, responses=problem_responses(500), summary="List the assets")
async def list_assets(rt: RuntimeDep) -> AssetList:
    """The assets a mix can be created in here: built-in coins and configured ERC-20 tokens."""
    items = []
    registry = rt.assets
    for asset in rt.settings.enabled_assets():
        adapter = rt.adapters.get(asset)
        if adapter is None:
            continue
        info = registry.info(asset)
        low, high = rt.settings.deposit_limits(asset)
        items.append(
            AssetOut(
                asset=asset.value,
                chain=info.chain,
                decimals=info.decimals,
                unit=info.unit,
                contract=info.contract,
                dust=str(info.dust),
                min_deposit=str(low),
                max_deposit=str(high),
                min_deposit_coins=format_amount(low, info.decimals),
                max_deposit_coins=format_amount(high, info.decimals),
                confirmations=adapter.confirmations_required,
            )
        )
    return AssetList(items=items)
