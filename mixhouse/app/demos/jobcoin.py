"""``mixhouse demo``: one process mixes 50 jobcoins end to end and shows the ledger.

It starts the local Jobcoin ledger, the API and a worker on the embedded PostgreSQL, mints
50 coins to a sender, creates a mix to three fresh withdrawal addresses through the HTTP API,
sends the coins to the deposit address through the ledger's HTTP API, and follows the mix
until every payout is confirmed. Then it prints what the ledger shows and checks it: the
deposit went to the pool, the withdrawal addresses were paid from the pool only, and they
received exactly the deposit minus the fee (drawn inside the quoted range), as the status says.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from decimal import Decimal
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.live import Live
from rich.table import Table

from mixhouse.api.app import create_app
from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.chains.jobcoin.ledger_app import ledger_server
from mixhouse.config import Settings
from mixhouse.mixer.planner import is_series_value
from mixhouse.money import parse_amount
from mixhouse.servers import background, free_port, running_server

DEPOSIT_COINS = "50"


def demo_settings(settings: Settings, ledger_port: int) -> Settings:
    """The settings of a demo run: the local ledger, short delays, fast polling."""
    return settings.model_copy(
        update={
            "jobcoin_enabled": True,
            "evm_enabled": False,
            "jobcoin_api_url": f"http://127.0.0.1:{ledger_port}/api",
            "scan_interval_seconds": 1,
            "reconcile_interval_seconds": 5,
            "job_polling_interval_seconds": 0.2,
            "jobcoin_send_settle_seconds": 2.0,
            # One mix alone never reaches the gate's k: it is released at its fallback moment,
            # drawn inside its maximum wait, kept short here (delay_max + 5 s) so the demo shows
            # the gate without waiting hours.
            "payout_round_seconds": 2,
            "privacy_max_extra_wait_seconds": 5,
        }
    )


async def run_demo(
    settings: Settings, database_url: str, *, give_up_after: float, console: Console, serve: bool = False
) -> int:
    """Run the demo; returns the process exit code (0 when every check passed).

    With ``serve``, keep the ledger, the API with its pages and the worker running after the
    checks, until the task is cancelled (Ctrl-C), so that the pages can be opened.
    """
    ledger_port, api_port = free_port(), free_port()
    settings = demo_settings(settings, ledger_port)
    rt = build_runtime(settings, database_url)
    ledger = ledger_server(rt.engine, "127.0.0.1", ledger_port, log_level="warning")
    api = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=api_port, log_level="warning"))
    try:
        async with (
            running_server(ledger),
            running_server(api),
            background(run_worker(rt, database_url, concurrency=4)),
            httpx.AsyncClient(timeout=10) as http,
        ):
            base = f"http://127.0.0.1:{api_port}"
            console.print(f"mix page: [bold]{base}/[/bold]   admin dashboard: [bold]{base}/admin[/bold]")
            code = await _scenario(http, f"http://127.0.0.1:{ledger_port}/api", base, give_up_after, console)
            if serve:
                console.print(
                    f"serving until Ctrl-C: mix page {base}/ , dashboard {base}/admin "
                    "(create an operator with: mixhouse operator create NAME)"
                )
                await asyncio.Event().wait()
            return code
    finally:
        await rt.aclose()
        await rt.engine.dispose()


async def _scenario(http: httpx.AsyncClient, ledger: str, api: str, give_up_after: float, console: Console) -> int:
    tag = secrets.token_hex(3)
    sender = f"demo-sender-{tag}"
    withdrawals = [f"demo-{name}-{tag}" for name in ("alice", "bob", "carol")]
    (await http.post(f"{ledger}/mint", json={"address": sender, "amount": DEPOSIT_COINS})).raise_for_status()
    console.print(f"minted {DEPOSIT_COINS} jobcoins to [bold]{sender}[/bold]")
    created = await http.post(
        f"{api}/api/v1/mixes",
        json={
            "asset": "JOBCOIN",
            "withdrawal_addresses": withdrawals,
            "delay_min_seconds": 1,
            "delay_max_seconds": 20,
        },
    )
    created.raise_for_status()
    mix = created.json()
    console.print(f"its page: [bold]{api}/mix/{mix['id']}[/bold]")
    console.print(
        f"mix created: deposit address [bold]{mix['deposit_address']}[/bold], fee {mix['fee_percent_range']}%, "
        f"payouts within 1-20 s to {', '.join(withdrawals)}"
    )
    sent = await http.post(
        f"{ledger}/transactions",
        json={"fromAddress": sender, "toAddress": mix["deposit_address"], "amount": DEPOSIT_COINS},
    )
    sent.raise_for_status()
    console.print(f"sent {DEPOSIT_COINS} jobcoins {sender} -> {mix['deposit_address']}")
    started = time.monotonic()
    status: dict[str, Any] = {}
    with Live(console=console, refresh_per_second=4) as live:
        while time.monotonic() - started < give_up_after:
            status = (await http.get(f"{api}/api/v1/mixes/{mix['id']}")).json()
            live.update(_progress(status, time.monotonic() - started))
            payouts = status.get("payouts", [])
            if payouts and all(p["state"] == "confirmed" for p in payouts):
                break
            await asyncio.sleep(0.5)
        else:
            console.print("[red]timed out before every payout was confirmed[/red]")
            return 1
    return await _report(
        http, ledger=ledger, sender=sender, mix=mix, status=status, withdrawals=withdrawals, console=console
    )


def _progress(status: dict[str, Any], elapsed: float) -> Table:
    table = Table(title=f"mix {status.get('state', '?')} - {elapsed:.0f} s")
    for column in ("payout", "to", "amount", "state", "due"):
        table.add_column(column)
    for dep in status.get("deposits", []):
        table.add_row("deposit", "", dep["amount_coins"], dep["state"], "")
    for p in status.get("payouts", []):
        table.add_row(str(p["id"]), p["to_address"], p["amount_coins"], p["state"], p["due_at"][11:19])
    return table


async def _report(
    http: httpx.AsyncClient,
    *,
    ledger: str,
    sender: str,
    mix: dict[str, Any],
    status: dict[str, Any],
    withdrawals: list[str],
    console: Console,
) -> int:
    deposit_address = mix["deposit_address"]
    everything = (await http.get(f"{ledger}/transactions")).json()
    ours = {sender, deposit_address, *withdrawals}
    relevant = [t for t in everything if t.get("fromAddress") in ours or t["toAddress"] in ours]
    table = Table(title="What the ledger shows")
    for column in ("time", "from", "to", "amount"):
        table.add_column(column)
    for t in relevant:
        table.add_row(t["timestamp"][11:23], t.get("fromAddress", "(minted)"), t["toAddress"], t["amount"])
    console.print(table)
    deposit = status["deposits"][0]
    received = sum((Decimal(t["amount"]) for t in relevant if t["toAddress"] in withdrawals), Decimal(0))
    expected = Decimal(deposit["payout_total"]) / Decimal(10**8)
    direct = [t for t in relevant if t.get("fromAddress") == deposit_address and t["toAddress"] in withdrawals]
    paid_by_pool = all(
        t.get("fromAddress") not in (sender, deposit_address) for t in relevant if t["toAddress"] in withdrawals
    )
    fee = Decimal(deposit["fee_amount"]) / Decimal(10**8)
    console.print(f"deposit {DEPOSIT_COINS}, fee {fee} kept by the pool, withdrawal addresses received {received}")
    checks = {
        "withdrawal addresses received deposit - fee exactly": received == Decimal(DEPOSIT_COINS) - fee == expected,
        "no direct transfer from the deposit address to a withdrawal address": not direct,
        "every payout came from the pool": paid_by_pool,
        "every withdrawal address was paid": all(any(t["toAddress"] == w for t in relevant) for w in withdrawals),
        "every payout is a standard piece (1-2-5 series)": all(
            is_series_value(parse_amount(t["amount"], 8), 1) for t in relevant if t["toAddress"] in withdrawals
        ),
    }
    console.print(
        f"release gate: anonymity set {deposit['anonymity_set']} at release "
        "(one mix alone: released at its fallback moment, inside its maximum wait)"
    )
    for name, ok in checks.items():
        console.print(f"  {'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {name}")
    return 0 if all(checks.values()) else 1
