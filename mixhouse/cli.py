"""The ``mixhouse`` command line (Typer).

Every command builds one :class:`~mixhouse.config.Settings` from the environment
(``MIXHOUSE_*``), applies the migrations, and passes the settings down.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mixhouse.app.key_rotation_cli import keys_rotate
from mixhouse.config import Settings
from mixhouse.db.engine import make_engine, resolve_database_url
from mixhouse.db.migrate import upgrade
from mixhouse.errors import MixhouseError
from mixhouse.keys.cli import keys_app
from mixhouse.logs import configure_logging
from mixhouse.otc.cli import otc_app
from mixhouse.otc.devnet import grapes_command as otc_grapes_command
from mixhouse.termination import exit_cleanly_on_sigterm, run_async

app = typer.Typer(help="Mixhouse: a self-hosted cryptocurrency operations platform.", no_args_is_help=True)
ledger_app = typer.Typer(help="The local Jobcoin-compatible ledger (a development chain).", no_args_is_help=True)
mix_app = typer.Typer(help="Create and inspect mixes.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
sanctions_app = typer.Typer(help="Sanctions lists used to screen deposits.", no_args_is_help=True)
watch_app = typer.Typer(help="The scanning engine: stopped watchers, scan cursors.", no_args_is_help=True)
privacy_app = typer.Typer(help="What a chain analyst can link in the live pool.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
app.add_typer(mix_app, name="mix")
app.add_typer(audit_app, name="audit")
app.add_typer(sanctions_app, name="sanctions")
app.add_typer(privacy_app, name="privacy")
app.add_typer(watch_app, name="watch")
# rotate runs the mixer's pool rotation: added here, since keys/ imports no feature.
keys_app.command("rotate")(keys_rotate)
app.add_typer(keys_app, name="keys")

console = Console()


def _prepare() -> tuple[Settings, str]:
    # Before anything is started: SIGTERM then unwinds like Ctrl-C, and what the command
    # started (the embedded PostgreSQL first) is stopped on the way out. uvicorn re-raises the
    # SIGTERM it caught through this handler too.
    exit_cleanly_on_sigterm()
    settings = Settings()
    configure_logging(settings)
    url = resolve_database_url(settings)
    upgrade(url)
    return settings, url


def _fail(exc: MixhouseError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=2)


@app.command()
def demo(
    chain: Annotated[str, typer.Option(help="jobcoin (local ledger) or bitcoin (local regtest node)")] = "jobcoin",
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 180.0,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep serving the pages after the demo, until Ctrl-C.")
    ] = False,
) -> None:
    """Mix coins end to end on embedded PostgreSQL and a local chain, and show it."""
    settings, url = _prepare()
    if chain == "bitcoin":
        from mixhouse.app.demos.bitcoin import run_bitcoin_demo  # noqa: PLC0415 - keeps `mixhouse --help` fast

        code = run_async(run_bitcoin_demo(settings, url, give_up_after=timeout, console=console))
    elif chain == "jobcoin":
        from mixhouse.app.demos.jobcoin import run_demo  # noqa: PLC0415

        code = run_async(run_demo(settings, url, give_up_after=timeout, console=console, serve=serve))
    else:
        console.print(f"[red]error:[/red] unknown chain {chain!r}: use jobcoin or bitcoin")
        code = 2
    raise typer.Exit(code=code)


devnet_app = typer.Typer(help="Local development chains.", no_args_is_help=True)
app.add_typer(devnet_app, name="devnet")
# The OTC network's two grapes (mixhouse.otc.devnet) join the local chains' commands.
devnet_app.command("grapes")(otc_grapes_command)
app.add_typer(otc_app, name="otc")


@devnet_app.command("bitcoin")
def devnet_bitcoin(port: Annotated[int, typer.Option(help="RPC port on 127.0.0.1")] = 18443) -> None:
    """Run a Bitcoin regtest node (bcoin, Core-compatible RPC) until Ctrl-C."""
    from mixhouse.chains.bitcoin.devnet import run_devnet  # noqa: PLC0415

    run_devnet(port)


@app.command()
def serve() -> None:
    """Serve the HTTP API (and the OpenAPI docs at /docs)."""
    from mixhouse.api.serving import serve_api  # noqa: PLC0415

    settings, url = _prepare()
    serve_api(settings, url)  # MIXHOUSE_API_WORKERS processes; mix ids kept out of the access log


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once by this worker.")] = None,
) -> None:
    """Run a worker: chain scans, deposits, sweeps, payouts, reconciliation."""
    from mixhouse.app.build import build_runtime  # noqa: PLC0415
    from mixhouse.app.worker import run_worker  # noqa: PLC0415

    settings, url = _prepare()
    rt = build_runtime(settings, url)
    options: dict[str, Any] = {}
    if concurrency is not None:
        options["concurrency"] = concurrency
    try:
        run_async(run_worker(rt, url, **options))
    except KeyboardInterrupt:
        console.print("worker stopped")


@ledger_app.command("serve")
def ledger_serve() -> None:
    """Serve the Jobcoin API on MIXHOUSE_LEDGER_HOST:MIXHOUSE_LEDGER_PORT."""
    from mixhouse.chains.jobcoin.ledger_app import serve_ledger  # noqa: PLC0415

    settings, url = _prepare()
    console.print(f"Jobcoin ledger on http://{settings.ledger_host}:{settings.ledger_port}/api")
    asyncio.run(
        serve_ledger(
            make_engine(url),
            settings.ledger_host,
            settings.ledger_port,
            max_body_bytes=settings.http_max_body_bytes,
            max_json_depth=settings.http_max_json_depth,
        )
    )


@mix_app.command("create")
def mix_create(
    asset: Annotated[str, typer.Argument(help="An enabled asset: JOBCOIN, ETH, BTC or a configured token (USDT...)")],
    addresses: Annotated[list[str], typer.Argument(help="1 to 10 withdrawal addresses")],
    delay_min: Annotated[int | None, typer.Option(help="Earliest payout, seconds after pooling")] = None,
    delay_max: Annotated[int | None, typer.Option(help="Latest payout, seconds after pooling")] = None,
) -> None:
    """Create a mix and print its deposit address."""
    from mixhouse.app.build import build_runtime  # noqa: PLC0415
    from mixhouse.mixer.mixes import MixRequest, create_mix  # noqa: PLC0415

    settings, url = _prepare()

    async def _run() -> dict[str, Any]:
        rt = build_runtime(settings, url, pool_size=1)
        try:
            return await create_mix(rt, MixRequest(asset.upper(), addresses, delay_min, delay_max), actor="cli")
        finally:
            await rt.aclose()
            await rt.engine.dispose()

    try:
        mix = asyncio.run(_run())
    except MixhouseError as exc:
        raise _fail(exc) from exc
    console.print(f"mix id:          {mix['id']}")
    console.print(f"deposit address: {mix['deposit_address']}")
    console.print(f"fee range:       {mix['fee_min_bps'] / 100:.2f}%-{mix['fee_max_bps'] / 100:.2f}%")
    console.print(f"expires at:      {mix['expires_at'].isoformat()}")


@mix_app.command("status")
def mix_status(mix_id: str) -> None:
    """Show a mix with its deposits and payouts."""
    from mixhouse.app.build import build_runtime  # noqa: PLC0415
    from mixhouse.mixer.mixes import get_mix  # noqa: PLC0415

    settings, url = _prepare()

    async def _run() -> dict[str, Any]:
        rt = build_runtime(settings, url, pool_size=1)
        try:
            return await get_mix(rt, mix_id)
        finally:
            await rt.aclose()
            await rt.engine.dispose()

    try:
        view = asyncio.run(_run())
    except MixhouseError as exc:
        raise _fail(exc) from exc
    mix = view["mix"]
    console.print(f"mix {mix['id']} [{mix['asset']}] state={mix['state']} deposit={mix['deposit_address']}")
    table = Table("kind", "id", "state", "to", "amount (base units)", "due/at", "txid")
    for dep in view["deposits"]:
        table.add_row("deposit", str(dep["id"]), dep["state"], dep["deposit_address"], str(dep["amount"]), "", "")
    for snd in view["sends"]:
        table.add_row(
            snd["kind"], str(snd["id"]), snd["state"], snd["to_address"], str(snd["amount"]),
            snd["due_at"].isoformat(timespec="seconds"), snd["txid"] or "",
        )  # fmt: skip
    console.print(table)


@audit_app.command("verify")
def audit_verify(
    checkpoints: Annotated[
        Path | None, typer.Option(help="A directory of signed checkpoints to check the log against.")
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(help="The checkpoint signer's public key (hex); default: that of MIXHOUSE_AUDIT_CHECKPOINT_KEY."),
    ] = None,
) -> None:
    """Seal the audit entries of finished transactions, then recompute the audit log's hash
    chain, and with --checkpoints check it still holds every checkpointed position with the
    same hash; exit 1 if it is broken."""
    from mixhouse import audit, audit_anchor  # noqa: PLC0415

    settings, url = _prepare()
    trusted: bytes | None = None
    if checkpoints is not None:
        if public_key is not None:
            trusted = bytes.fromhex(public_key)
        elif settings.audit_checkpoint_key is not None:
            trusted = audit_anchor.signing_key(settings.audit_checkpoint_key.get_secret_value()).public_key.format()
        else:
            console.print("[red]give --public-key or set MIXHOUSE_AUDIT_CHECKPOINT_KEY[/red]")
            raise typer.Exit(code=2)

    async def _run() -> tuple[audit.ChainReport, audit_anchor.AnchorReport | None]:
        engine = make_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                report = await audit.verify_chain(conn)
                anchored = None
                if checkpoints is not None and trusted is not None:
                    found = audit_anchor.load_checkpoints(checkpoints)
                    anchored = await audit_anchor.verify_checkpoints(conn, found, trusted)
                return report, anchored
        finally:
            await engine.dispose()

    try:
        report, anchored = asyncio.run(_run())
    except MixhouseError as exc:
        console.print(f"[red]audit log BROKEN:[/red] {exc}")
        raise typer.Exit(code=1) from exc
    console.print(f"audit log OK: {report.verified} entries verified")
    if anchored is not None:
        console.print(f"matches {anchored.checked} checkpoints (newest at position {anchored.newest_seq})")
    if report.unsealed:
        # Entries of transactions still running during the seal: chained by a later seal.
        console.print(f"{report.unsealed} newer entries not sealed yet (their transactions were still open)")


@audit_app.command("checkpoint")
def audit_checkpoint(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to write it (default MIXHOUSE_AUDIT_CHECKPOINT_DIR).")
    ] = None,
) -> None:
    """Seal, then write a checkpoint of the chain head signed with MIXHOUSE_AUDIT_CHECKPOINT_KEY
    (keep the directory outside the database's reach)."""
    from mixhouse import audit_anchor  # noqa: PLC0415

    settings, url = _prepare()
    target = directory or settings.audit_checkpoint_dir
    if settings.audit_checkpoint_key is None or target is None:
        console.print("[red]set MIXHOUSE_AUDIT_CHECKPOINT_KEY and give --dir (or MIXHOUSE_AUDIT_CHECKPOINT_DIR)[/red]")
        raise typer.Exit(code=2)
    key = audit_anchor.signing_key(settings.audit_checkpoint_key.get_secret_value())

    async def _run() -> audit_anchor.Checkpoint:
        engine = make_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await audit_anchor.make_checkpoint(conn, key)
        finally:
            await engine.dispose()

    checkpoint = asyncio.run(_run())
    path = audit_anchor.write_checkpoint(target, checkpoint)
    console.print(f"checkpoint of position {checkpoint.seq} written to {path}")


@audit_app.command("keygen")
def audit_keygen() -> None:
    """Print a new checkpoint signing key (MIXHOUSE_AUDIT_CHECKPOINT_KEY) and its public key."""
    from mixhouse import audit_anchor  # noqa: PLC0415

    key = audit_anchor.new_signing_key()
    # Printed once for the operator to store as a secret; never logged.
    typer.echo(f"MIXHOUSE_AUDIT_CHECKPOINT_KEY={key.secret.hex()}")
    typer.echo(f"public key: {key.public_key.format().hex()}")


@privacy_app.command("report")
def privacy_report_command(
    asset: Annotated[str, typer.Option(help="An enabled asset (JOBCOIN, ETH, BTC, a configured token)")] = "JOBCOIN",
    hours: Annotated[int, typer.Option(help="Range of payout times: the last 1..720 hours")] = 24,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (as the admin API does).")] = False,
) -> None:
    """Run the privacy analyzer's attacks over the live pool and score them against the truth.

    Prints per attack the withdrawal addresses linked (percent), the precision and the
    anonymity-set percentiles; the release gate's anonymity sets at release and its reasons;
    the deposits held now; the analysis time. At most the newest 5,000 payouts are analysed.
    Exit 2 on an unknown or disabled asset or hours outside 1..720.
    """
    from mixhouse.api.schemas import PrivacyReportOut  # noqa: PLC0415
    from mixhouse.app.build import build_runtime  # noqa: PLC0415
    from mixhouse.mixer.privacy.live import LiveReport, check_hours, privacy_report  # noqa: PLC0415

    try:
        check_hours(hours)
    except MixhouseError as exc:
        raise _fail(exc) from exc
    settings, url = _prepare()

    async def _run() -> LiveReport:
        rt = build_runtime(settings, url, pool_size=1)
        try:
            return await privacy_report(rt, asset.upper(), hours=hours)
        finally:
            await rt.aclose()
            await rt.engine.dispose()

    try:
        out = PrivacyReportOut.from_live(asyncio.run(_run()))
    except MixhouseError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(out.model_dump_json(indent=2))
        return
    console.print(
        f"privacy of the {out.asset} pool, {out.since.isoformat(timespec='seconds')} to "
        f"{out.until.isoformat(timespec='seconds')}: {out.payouts_analysed} payouts to "
        f"{out.withdrawal_addresses} addresses, {out.deposits_analysed} deposits ({out.note})"
    )
    table = Table("attack", "linked %", "precision %", "set p10", "set p50", "set p90", "deposits de-anonymised %")
    for attack in out.attacks:
        table.add_row(
            attack.name + (" (best)" if attack.name == out.best_attack else ""),
            f"{attack.linked_pct:.1f}", f"{attack.precision_pct:.1f}",
            str(attack.set_p10), str(attack.set_p50), str(attack.set_p90),
            f"{attack.deposits_deanonymised_pct:.1f}",
        )  # fmt: skip
    console.print(table)
    gate = out.gate
    console.print(
        f"release gate (k={gate.k}): {gate.released} deposits released, {gate.released_by_anonymity_set} by "
        f"anonymity set, {gate.released_by_max_wait} by maximum wait; anonymity set at release "
        f"p10/p50/p90 = {gate.anonymity_set_p10}/{gate.anonymity_set_p50}/{gate.anonymity_set_p90}"
    )
    console.print(
        f"held by the gate now: {gate.waiting} (oldest pooled {gate.oldest_wait_seconds:.0f} s ago); "
        f"not due yet: {gate.not_yet_due}"
    )
    console.print(f"analysis time: {out.analysis_seconds:.2f} s")


@sanctions_app.command("refresh")
def sanctions_refresh(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="SDN XML, JSON list or text list")],
    source: Annotated[str, typer.Option(help="Name of the list in the database")] = "ofac-refresh",
) -> None:
    """Load a newer OFAC SDN file (or an operator denylist) into the database."""
    from mixhouse.mixer.screening import parse_list_file, store_list  # noqa: PLC0415

    _, url = _prepare()

    async def _run() -> tuple[int, int]:
        addresses = parse_list_file(file)
        engine = make_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                return len(addresses), await store_list(conn, addresses, source)
        finally:
            await engine.dispose()

    try:
        total, new = asyncio.run(_run())
    except MixhouseError as exc:
        raise _fail(exc) from exc
    console.print(json.dumps({"addresses": total, "new": new, "source": source}))


users_app = typer.Typer(help="Users of the wallet API.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys of wallet API users.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(apikey_app, name="apikey")


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="Unique user name")],
    admin: Annotated[bool, typer.Option("--admin", help="An admin sees every user's wallets.")] = False,
) -> None:
    """Create a user of the wallet API (then give them a key: mixhouse apikey create NAME)."""
    from mixhouse.wallets.service import User, create_user  # noqa: PLC0415

    _, url = _prepare()

    async def _run() -> User:
        engine = make_engine(url, pool_size=1)
        try:
            return await create_user(engine, name, is_admin=admin)
        finally:
            await engine.dispose()

    try:
        user = asyncio.run(_run())
    except MixhouseError as exc:
        raise _fail(exc) from exc
    console.print(f"user {user.name!r} created (id {user.id}{', admin' if user.is_admin else ''})")


@apikey_app.command("create")
def apikey_create(
    user: Annotated[str, typer.Argument(help="The user's name")],
    label: Annotated[str | None, typer.Option(help="What the key is for")] = None,
) -> None:
    """Issue an API key for USER and print it once (only its SHA-256 is stored)."""
    from mixhouse.wallets.service import create_api_key, get_user_by_name  # noqa: PLC0415

    _, url = _prepare()

    async def _run() -> tuple[int, str]:
        engine = make_engine(url, pool_size=1)
        try:
            found = await get_user_by_name(engine, user)
            return await create_api_key(engine, found.id, label=label)
        finally:
            await engine.dispose()

    try:
        key_id, key = asyncio.run(_run())
    except MixhouseError as exc:
        raise _fail(exc) from exc
    typer.echo(f"API key {key_id} for {user!r}; it is shown only this once, store it now:", err=True)
    typer.echo(key)


@app.command()
def fixtures(
    users: Annotated[int, typer.Option("--users", min=0, help="Demo users (demo-user-1..N)")] = 3,
    txs: Annotated[int, typer.Option("--txs", min=0, help="Transactions per address")] = 50,
    wallets: Annotated[int, typer.Option("--wallets", min=0, help="Wallets per user")] = 2,
    addresses: Annotated[int, typer.Option("--addresses", min=0, help="Addresses per wallet")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the generated history")] = 1,
) -> None:
    """Fill the database with demo users, wallets, addresses and history (idempotent; no API keys)."""
    from mixhouse.wallets.fixtures import FixtureSummary, generate_fixtures  # noqa: PLC0415

    _, url = _prepare()

    async def _run() -> FixtureSummary:
        engine = make_engine(url, pool_size=1)
        try:
            return await generate_fixtures(
                engine,
                users=users,
                wallets_per_user=wallets,
                addresses_per_wallet=addresses,
                txs_per_address=txs,
                seed=seed,
            )
        finally:
            await engine.dispose()

    try:
        summary = asyncio.run(_run())
    except MixhouseError as exc:
        raise _fail(exc) from exc
    console.print(
        f"fixtures: {summary.users} users, {summary.wallets} wallets, {summary.addresses} addresses, "
        f"{summary.transactions} transactions"
    )
    console.print(
        f"this run: {summary.created_users} users and {summary.created_wallets} wallets created, "
        f"{summary.added_addresses} addresses added, {summary.written} transaction rows written"
    )
    console.print("give a demo user a key with: mixhouse apikey create demo-user-1")


operator_app = typer.Typer(help="Operators of the admin dashboard (/admin).", no_args_is_help=True)
app.add_typer(operator_app, name="operator")


@operator_app.command("create")
def operator_create(
    name: Annotated[str, typer.Argument(help="The operator's login name")],
    password: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, envvar="MIXHOUSE_OPERATOR_PASSWORD"),
    ],
) -> None:
    """Create an operator of /admin (or set a new password, which ends its sessions). The
    password (12 characters or more) is stored as an Argon2id hash only."""
    from mixhouse.web.operators import create_operator  # noqa: PLC0415

    _, url = _prepare()

    async def _run() -> None:
        engine = make_engine(url, pool_size=1)
        try:
            await create_operator(engine, name, password)
        finally:
            await engine.dispose()

    try:
        asyncio.run(_run())
    except MixhouseError as exc:
        raise _fail(exc) from exc
    console.print(f"operator {name!r} can log in at /admin")


@watch_app.command("status")
def watch_status() -> None:
    """Show stopped watchers, the deposit scans' cursors and lag, and the block windows."""
    from mixhouse.watch import store  # noqa: PLC0415

    _, url = _prepare()

    async def _read() -> tuple[list[store.Stop], list[tuple[str, str | None, int | None, int | None]], Any]:
        engine = make_engine(url, pool_size=1)
        try:
            return await store.stops(engine), await store.deposit_cursors(engine), await store.windows(engine)
        finally:
            await engine.dispose()

    stopped, cursors, kept = asyncio.run(_read())
    if stopped:
        table = Table("chain", "consumer", "height", "max depth", "stopped at", "reason", title="stopped watchers")
        for s in stopped:
            table.add_row(s.chain, s.consumer, str(s.height), str(s.max_depth), s.stopped_at.isoformat(), s.reason)
        console.print(table)
    else:
        console.print("no watcher is stopped")
    table = Table("asset", "cursor", "tip", "scanned", "lag", title="deposit scans")
    for asset, cursor, tip, scanned in cursors:
        lag = "" if tip is None or scanned is None else str(tip - scanned)
        table.add_row(
            asset, cursor or "", "" if tip is None else str(tip), "" if scanned is None else str(scanned), lag
        )
    console.print(table)
    table = Table("chain", "lowest", "highest", "blocks", title="block windows")
    for chain, (low, high, n) in sorted(kept.items()):
        table.add_row(chain, str(low), str(high), str(n))
    console.print(table)


@watch_app.command("resume")
def watch_resume(
    consumer: Annotated[str, typer.Argument(help="The stopped consumer, e.g. deposits:ETH or wallets.")],
    chain: Annotated[
        str | None, typer.Option(help="Its chain (BTC, ETH, JOBCOIN); needed if it is stopped on several.")
    ] = None,
    actor: Annotated[str, typer.Option(help="Who resumes it, for the audit log.")] = "cli",
) -> None:
    """Let a watcher stopped by a too-deep reorg run again (audited as watch.resumed); running
    workers see it at their next pass."""
    from mixhouse.watch import store  # noqa: PLC0415

    _, url = _prepare()

    async def _run() -> list[str]:
        engine = make_engine(url, pool_size=1)
        try:
            chains = [s.chain for s in await store.stops(engine) if s.consumer == consumer]
            if chain is not None:
                chains = [c for c in chains if c == chain]
            if len(chains) > 1:
                raise typer.BadParameter(f"{consumer!r} is stopped on {', '.join(chains)}: give --chain")
            return [c for c in chains if await store.resume_consumer(engine, c, consumer, actor=actor)]
        finally:
            await engine.dispose()

    resumed = asyncio.run(_run())
    if not resumed:
        console.print(f"[red]{consumer!r} is not stopped{'' if chain is None else f' on {chain}'}[/red]")
        raise typer.Exit(code=1)
    console.print(f"resumed {consumer!r} on {resumed[0]}")
