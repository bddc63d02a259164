"""``mixhouse otc ...``: run a node, and talk to your own node's HTTP API.

``mixhouse otc node --grape http://127.0.0.1:30001`` runs one peer until Ctrl-C/SIGTERM;
``order place|cancel|list``, ``book`` and ``trades`` call a running node's API
(``--node``, or ``MIXHOUSE_OTC_NODE``, default ``http://127.0.0.1:8470``). Amounts are
integers in base units (quantity: BASE base units; price: QUOTE base units per whole BASE).

Node timers come from the environment: ``MIXHOUSE_OTC_TTL_MS``, ``MIXHOUSE_OTC_REFRESH_EVERY_S``,
``MIXHOUSE_OTC_ANTI_ENTROPY_EVERY_S``, ``MIXHOUSE_OTC_OUTBOX_EVERY_S``,
``MIXHOUSE_OTC_SWEEP_EVERY_S``, ``MIXHOUSE_OTC_MAX_SKEW_MS``, ``MIXHOUSE_OTC_REQUEST_TIMEOUT_S``
(defaults in :class:`~mixhouse.otc.node.NodeSettings`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

otc_app = typer.Typer(help="The P2P OTC exchange: run a node, place orders, see the book.", no_args_is_help=True)
order_app = typer.Typer(help="Your orders on your node.", no_args_is_help=True)
otc_app.add_typer(order_app, name="order")

DEFAULT_NODE = "http://127.0.0.1:8470"
NodeOpt = Annotated[str, typer.Option("--node", envvar="MIXHOUSE_OTC_NODE", help="Your node's HTTP API.")]


def node_settings_from_env() -> Any:
    """:class:`~mixhouse.otc.node.NodeSettings` with any ``MIXHOUSE_OTC_<FIELD>`` override.

    Raises:
        typer.BadParameter: a value is not a number.
    """
    from mixhouse.otc.node import NodeSettings  # noqa: PLC0415 - keeps `mixhouse --help` fast

    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(NodeSettings):
        raw = os.environ.get(f"MIXHOUSE_OTC_{f.name.upper()}")
        if raw is None:
            continue
        try:
            overrides[f.name] = int(raw) if f.type in (int, "int") else float(raw)
        except ValueError as exc:
            raise typer.BadParameter(f"MIXHOUSE_OTC_{f.name.upper()}={raw!r} is not a number") from exc
    return NodeSettings(**overrides)


@otc_app.command("node")
def node_command(
    *,
    grape: Annotated[str, typer.Option(help="The grape this node announces through.")] = "http://127.0.0.1:30001",
    other_grape: Annotated[
        list[str] | None, typer.Option("--other-grape", help="More grapes to check and fall back to.")
    ] = None,
    port: Annotated[int, typer.Option(help="Grenache RPC port (0: a free one).")] = 0,
    api_port: Annotated[int, typer.Option(help="HTTP API port.")] = 8470,
    api_host: Annotated[str, typer.Option(help="HTTP API bind address.")] = "127.0.0.1",
    database_url: Annotated[
        str | None,
        typer.Option(envvar="MIXHOUSE_OTC_DATABASE_URL", help="The node's own database (default: embedded)."),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Key file and embedded database of this node.")] = Path(
        ".mixhouse/otc-node"
    ),
    swaps: Annotated[
        bool | None,
        typer.Option(
            "--swaps/--no-swaps",
            help="Settle agreed trades by atomic swaps (needs the MIXHOUSE_SWAP_* settings; "
            "default: on when MIXHOUSE_SWAP_BTC_RPC_URL is set).",
        ),
    ] = None,
) -> None:
    """Run one OTC peer until Ctrl-C (SIGTERM too); with swaps, its trades settle on chain."""
    import asyncio  # noqa: PLC0415
    import os  # noqa: PLC0415
    from contextlib import AsyncExitStack  # noqa: PLC0415

    from mixhouse.otc.runtime import NodeConfig, running_node  # noqa: PLC0415
    from mixhouse.termination import exit_cleanly_on_sigterm, run_async  # noqa: PLC0415

    exit_cleanly_on_sigterm()
    settle = bool(os.environ.get("MIXHOUSE_SWAP_BTC_RPC_URL")) if swaps is None else swaps
    swap_config = None
    if settle:
        # Imported here: the swap service reads this module's node settings.
        from mixhouse.errors import ConfigError  # noqa: PLC0415
        from mixhouse.otc.swaps import plan  # noqa: PLC0415
        from mixhouse.otc.swaps.service import SwapServiceConfig  # noqa: PLC0415

        try:
            swap_config = SwapServiceConfig.from_env(os.environ)
            plan.check_settings(swap_config.settings)
        except ConfigError as exc:
            typer.echo(f"cannot settle by swaps: {exc}", err=True)
            raise typer.Exit(2) from exc
    config = NodeConfig(
        grape_url=grape,
        other_grape_urls=other_grape or [],
        data_dir=data_dir,
        port=port,
        api_host=api_host,
        api_port=api_port,
        database_url=database_url,
        settings=node_settings_from_env(),
    )

    async def main() -> None:
        async with AsyncExitStack() as stack:
            running = await stack.enter_async_context(running_node(config))
            if swap_config is not None:
                from mixhouse.otc.swaps.service import running_swaps  # noqa: PLC0415

                await stack.enter_async_context(running_swaps(running, swap_config))
            typer.echo(f"otc node {running.node.node_id}" + (" (settling by atomic swaps)" if swap_config else ""))
            typer.echo(f"grenache {running.peer.address} via {grape}; API {running.api_url}")
            await asyncio.Event().wait()  # serve until interrupted

    try:
        run_async(main())
    except KeyboardInterrupt:
        typer.echo("otc node stopped")


def _call(node: str, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = httpx.request(method, node.rstrip("/") + path, timeout=60, trust_env=False, **kwargs)
    except httpx.HTTPError as exc:
        typer.echo(f"error: node {node} unreachable: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        typer.echo(f"error ({response.status_code}): {detail}", err=True)
        raise typer.Exit(code=1)
    return response.json()


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@order_app.command("place")
def order_place(
    *,
    pair: Annotated[str, typer.Option(help="BASE/QUOTE, e.g. BTC/USDT.")],
    side: Annotated[str, typer.Option(help="buy or sell (the BASE asset).")],
    quantity: Annotated[str, typer.Option(help="BASE base units (satoshi for BTC).")],
    price: Annotated[str, typer.Option(help="QUOTE base units per whole BASE coin.")],
    tif: Annotated[str, typer.Option(help="GTC, IOC, FOK or POST_ONLY.")] = "GTC",
    min_fill: Annotated[str, typer.Option(help="Smallest fill accepted, base units.")] = "0",
    good_till_ms: Annotated[int | None, typer.Option(help="Stop offering it at this time (ms).")] = None,
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """Place a limit order; prints its fills."""
    body = {
        "pair": pair,
        "side": side,
        "quantity": quantity,
        "price": price,
        "tif": tif,
        "min_fill": min_fill,
        "good_till_ms": good_till_ms,
    }
    _echo(_call(node, "POST", "/orders", json=body))


@order_app.command("cancel")
def order_cancel(order_id: str, node: NodeOpt = DEFAULT_NODE) -> None:
    """Cancel one of your orders."""
    _echo(_call(node, "DELETE", f"/orders/{order_id}"))


@order_app.command("list")
def order_list(
    state: Annotated[str | None, typer.Option(help="open, cancelled or filled.")] = None,
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """Your orders, newest first."""
    _echo(_call(node, "GET", "/orders", params={} if state is None else {"state": state}))


@otc_app.command("book")
def book(
    pair: Annotated[str, typer.Option(help="BASE/QUOTE.")] = "BTC/USDT",
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """The network's book for a pair, as your node holds it."""
    data = _call(node, "GET", "/book", params={"pair": pair})
    typer.echo(f"{pair}  bids {len(data['bids'])}  asks {len(data['asks'])}")
    for label, rows in (("ask", list(reversed(data["asks"]))), ("bid", data["bids"])):
        for r in rows:
            mine = " (mine)" if r["mine"] else ""
            typer.echo(f"  {label} {r['price']:>22} x {r['remaining']:>14}  {r['id'][:12]} {r['owner'][:8]}{mine}")


@otc_app.command("trades")
def trades(node: NodeOpt = DEFAULT_NODE) -> None:
    """Your trades, oldest first."""
    _echo(_call(node, "GET", "/trades"))


@otc_app.command("swaps")
def swaps(node: NodeOpt = DEFAULT_NODE) -> None:
    """The atomic swap of each of your trades: state, txids, deadlines."""
    _echo(_call(node, "GET", "/swaps"))


@otc_app.command("demo")
def demo(timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 180.0) -> None:
    """Two grapes, three nodes, crossing orders on different nodes: books and fills as they happen."""
    from mixhouse.otc.demo import run_otc_demo  # noqa: PLC0415
    from mixhouse.termination import exit_cleanly_on_sigterm, run_async  # noqa: PLC0415

    exit_cleanly_on_sigterm()
    code = run_async(
        run_otc_demo(
            database_server_url=os.environ.get("MIXHOUSE_DATABASE_URL") or None,
            give_up_after=timeout,
            echo=typer.echo,
        )
    )
    raise typer.Exit(code=code)
