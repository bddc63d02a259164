"""``mixhouse keys rotate ASSET``: a new pool key generation (:mod:`mixhouse.mixer.pool_rotation`).

A shell command (it builds a runtime and runs a mixer feature), so it lives here and is added
to the ``keys`` group of :mod:`mixhouse.keys.cli` by :mod:`mixhouse.cli`: the keys layer
itself imports no feature and no wiring (the arrows point down). Heavy imports (web3, the
database) happen only when the command runs.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from mixhouse.errors import ConfigError, MixhouseError
from mixhouse.keys.cli import _fail, _settings


def keys_rotate(
    asset: Annotated[str, typer.Argument(help="The asset whose pool key rotates (ETH, BTC or an ERC-20 token: USDT).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Make a new pool key generation of ASSET (ETH, BTC or a configured ERC-20 token) active;
    the worker drains the old one into it (audited, stored-before-broadcast moves: on BTC all of
    the old generation's pool coins in one transaction; on a token its tokens, then its gas
    tank's ETH) and retires it once empty and confirmed."""
    import asyncio  # noqa: PLC0415

    from mixhouse.app.build import build_runtime  # noqa: PLC0415
    from mixhouse.chains.bitcoin.adapter import BitcoinAdapter  # noqa: PLC0415
    from mixhouse.chains.evm.adapter import EvmAdapter  # noqa: PLC0415 - web3: slow to import
    from mixhouse.chains.evm.token import Erc20Adapter  # noqa: PLC0415
    from mixhouse.db.engine import resolve_database_url  # noqa: PLC0415 - the database: only here
    from mixhouse.db.migrate import upgrade  # noqa: PLC0415
    from mixhouse.keys.hd import POOL_PATH  # noqa: PLC0415
    from mixhouse.mixer.pool_rotation import (  # noqa: PLC0415
        ensure_first_generation,
        evm_pool_key_ref,
        generations,
        rotate,
    )
    from mixhouse.money import Asset  # noqa: PLC0415

    settings = _settings()
    name = asset.upper()

    async def _run() -> list[dict[str, object]]:
        url = resolve_database_url(settings)
        upgrade(url)
        rt = build_runtime(settings, url, pool_size=1)
        try:
            if name == "ETH" and isinstance(evm := rt.adapters.get(Asset.ETH), EvmAdapter):
                address_of = evm.key_address
                key_ref_of = evm_pool_key_ref
                first_ref = POOL_PATH
            elif name == "BTC" and isinstance(btc := rt.adapters.get(Asset.BTC), BitcoinAdapter):
                address_of = btc.generation_ref_address
                key_ref_of = btc.generation_key_ref
                first_ref = btc.generation_key_ref(0)
            elif isinstance(
                token := next((a for a in rt.adapters.values() if str(a.asset) == name), None), Erc20Adapter
            ):
                address_of = token.evm.key_address
                key_ref_of = token.generation_key_ref
                first_ref = token.generation_key_ref(0)
            else:
                raise ConfigError(
                    f"rotating {name} is not available (ETH with MIXHOUSE_EVM_ENABLED, "
                    "BTC with MIXHOUSE_BITCOIN_ENABLED, an ERC-20 token configured in MIXHOUSE_EVM_TOKENS)"
                )
            await ensure_first_generation(rt.engine, name, key_ref=first_ref, address=address_of(first_ref))
            await rotate(rt.engine, name, address_of=address_of, key_ref_of=key_ref_of, actor="cli")
            async with rt.engine.connect() as conn:
                return [
                    {"generation": g.generation, "state": g.state, "address": g.address, "key_ref": g.key_ref}
                    for g in await generations(conn, name)
                ]
        finally:
            await rt.aclose()
            await rt.engine.dispose()

    try:
        rows = asyncio.run(_run())
    except MixhouseError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{name} generation {row['generation']:>3}  {row['state']:<9} {row['address']}  {row['key_ref']}")
    typer.echo(
        "The worker moves the draining generation's balance (BTC: its pool coins; a token: its tokens,"
        " then its gas tank's ETH) to the active one and retires it once empty."
    )
