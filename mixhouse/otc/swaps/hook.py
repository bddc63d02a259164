"""Settling the OTC node's trades with swaps: an agreed trade becomes a :class:`SwapTrade`,
and swap messages travel over the node's Grenache peer as the RPC action ``"swap"``.

Who initiates: the side that pays Bitcoin (``BTC/USDT``, ``BTC/ETH``: the seller of the base
asset; see :mod:`.plan`). ``ETH/USDT`` has no Bitcoin leg and is not settled by these swaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Row

from mixhouse.errors import InvalidInput, MixhouseError
from mixhouse.otc.node import OtcNode
from mixhouse.otc.swaps.engine import SwapEngine, SwapTrade
from mixhouse.otc.swaps.transport import PeerUnreachable

SWAP_ACTION = "swap"


def swap_trade_of(trade: Row[Any] | Mapping[str, Any], *, evm_tokens: Mapping[str, str | None]) -> SwapTrade:
    """The swap of an agreed OTC trade row (``otc_trades``).

    Args:
        trade: the row: ``id``, ``pair``, ``taker_side``, ``quantity`` (BASE base units),
            ``quote_amount`` (QUOTE base units), ``maker_node``, ``taker_node``.
        evm_tokens: the ERC-20 of each EVM asset of this deployment (``{"USDT": "0x..."}``);
            ``"ETH"`` maps to ``None`` (ether itself).

    Raises:
        InvalidInput: the pair has no Bitcoin base (``ETH/USDT``) or an EVM asset has no token.
    """
    get = trade._mapping if isinstance(trade, Row) else trade
    base, quote = str(get["pair"]).split("/")
    if base != "BTC":
        raise InvalidInput(f"{get['pair']} has no Bitcoin leg to swap against")
    if quote != "ETH" and quote not in evm_tokens:
        raise InvalidInput(f"no ERC-20 configured for {quote}")
    # The taker buys BTC: the maker pays BTC and initiates; else the taker does.
    maker_pays_btc = str(get["taker_side"]) == "buy"
    btc_payer, evm_payer = (
        (get["maker_node"], get["taker_node"]) if maker_pays_btc else (get["taker_node"], get["maker_node"])
    )
    return SwapTrade(
        trade_id=str(get["id"]),
        initiator=str(btc_payer),
        participant=str(evm_payer),
        initiator_chain="btc",
        btc_sat=int(get["quantity"]),
        evm_amount=int(get["quote_amount"]),
        evm_token=None if quote == "ETH" else evm_tokens[quote],
    )


class NodeSwapTransport:
    """Swap messages as the OTC node's RPC action ``"swap"`` (one argument: the message),
    to the peer node's address as the node resolves it.

    Args:
        node: the running :class:`OtcNode` (its Grenache peer and directory).
    """

    def __init__(self, node: OtcNode) -> None:
        self.node = node

    async def request(self, peer: str, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` to node ``peer``.

        Raises:
            PeerUnreachable: the peer is unknown, down, or answered an error or a non-object.
        """
        try:
            address = await self.node._resolve(peer)  # the node's directory of node ids
        except (MixhouseError, OSError) as exc:
            raise PeerUnreachable(f"{peer}: {exc}") from exc
        if address is None:
            raise PeerUnreachable(f"no address for node {peer}")
        try:
            reply = await self.node._request(address, {"action": SWAP_ACTION, "args": [message]})
        except (MixhouseError, OSError) as exc:
            raise PeerUnreachable(f"{peer}: {exc}") from exc
        if not isinstance(reply, dict):
            raise PeerUnreachable(f"{peer} answered a swap message with {type(reply).__name__}")
        return reply


def serve_swaps(node: OtcNode, engine: SwapEngine) -> None:
    """Have ``node`` answer the RPC action ``"swap"`` with ``engine.handle`` (a message from
    another node's swap engine)."""

    async def on_swap(args: list[Any]) -> Any:
        if len(args) != 1 or not isinstance(args[0], dict):
            raise InvalidInput("a swap message is one object")
        message = dict(args[0])
        return await engine.handle(message)

    node._actions[SWAP_ACTION] = on_swap
