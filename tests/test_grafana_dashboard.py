"""``deploy/grafana/mixhouse.json``: a Grafana dashboard that imports anywhere and queries only
metrics that ``/metrics`` exports (scraped live from the app, so a renamed metric fails here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.config import DEV_ADMIN_KEY
from tests.web import web_stack

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "mixhouse.json"
AUTH = {"Authorization": f"Bearer {DEV_ADMIN_KEY}"}
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# PromQL's functions and aggregation operators (what may stand before "("), and its keywords.
# fmt: off
FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg", "avg_over_time",
    "bottomk", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count", "count_over_time",
    "count_values", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "exp",
    "floor", "group", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "limitk", "ln", "log10", "log2", "mad_over_time", "max",
    "max_over_time", "min", "min_over_time", "minute", "month", "predict_linear", "present_over_time", "quantile",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label",
    "sort_by_label_desc", "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar", "stdvar_over_time", "sum",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "topk", "vector", "year",
})
KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "by", "without", "on", "ignoring", "group_left",
    "group_right",
})
# fmt: on
# Suffixes of the series a family of each type exposes (the bare name only for gauges and untyped).
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "unknown": ("",),
}
# What the issue asks the dashboard to show, by the metric that carries it.
REQUIRED = {
    "mixhouse_mixes",
    "mixhouse_deposits",
    "mixhouse_payouts",
    "mixhouse_payouts_failing",
    "mixhouse_payout_latency_seconds_bucket",
    "mixhouse_pool_books_base_units",
    "mixhouse_pool_chain_balance_base_units",
    "mixhouse_reconciliation_ok",
    "mixhouse_payouts_paused",
    "mixhouse_jobs",
    "mixhouse_job_queue_oldest_age_seconds",
    "mixhouse_scan_lag_blocks",
    "mixhouse_scan_age_seconds",
    "mixhouse_wallet_sync_age_seconds",
    "mixhouse_http_request_duration_seconds_bucket",
}

_STRING = re.compile(r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`""")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$:])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads.

    Strings, label matchers (``{...}``), ranges and subqueries (``[...]``, Grafana's
    ``$__rate_interval`` included) and grouping label lists are dropped; what is left are
    functions and aggregations (followed by ``(``; an unknown one fails), keywords, numbers and
    durations (skipped), and metric names.

    Raises:
        AssertionError: an identifier before ``(`` is no PromQL function.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word, call = match.group(1), match.group(2)
        if call:
            assert word in FUNCTIONS, f"{word}( in {expr!r} is no PromQL function"
        elif word.lower() not in KEYWORDS:
            names.add(word)
    return names


def test_the_tokenizer_finds_metric_names_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(mixhouse_a_bucket{route=~"/x|y", s="a b"}'
        "[$__rate_interval]))) > 1e3 and on (asset) mixhouse_b offset 5m or vector(0) + "
        "clamp_min(delta((sum without (x) (mixhouse_c))[1h:1m]), 0) / mixhouse_d"
    )
    assert metric_names(expr) == {"mixhouse_a_bucket", "mixhouse_b", "mixhouse_c", "mixhouse_d"}
    with pytest.raises(AssertionError, match="no PromQL function"):
        metric_names("sums(mixhouse_a)")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def test_the_dashboard_is_well_formed() -> None:
    board = _dashboard()
    assert board["schemaVersion"] >= 39  # Grafana 11 and later
    assert board["uid"] == "mixhouse"
    assert board["id"] is None  # imports as a new dashboard
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["asset"]["datasource"] == DATASOURCE
    panels = list(_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    queried = [p for p in panels if p["type"] != "row"]
    assert len(queried) >= 20
    for panel in queried:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["title"]
        assert panel["description"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


def _exported(body: str) -> set[str]:
    """Every series name the exposition ``body`` declares or holds."""
    names: set[str] = set()
    for family in text_string_to_metric_families(body):
        names.update(family.name + suffix for suffix in SERIES_SUFFIXES[family.type])
        names.update(s.name for s in family.samples)
    return names


async def test_every_metric_of_the_dashboard_is_exported(database_url: str, engine: AsyncEngine) -> None:
    async with (
        web_stack(database_url, engine) as stack,
        httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http,
    ):
        assert (await http.get("/api/v1/health")).status_code == 200
        scraped = await http.get("/metrics", headers=AUTH)
        assert scraped.status_code == 200
    exported = _exported(scraped.text)
    assert "mixhouse_scan_lag_blocks" in exported
    assert "mixhouse_http_request_duration_seconds_bucket" in exported
    assert "mixhouse_http_request_duration_seconds" not in exported  # a histogram's bare name is no series

    board = _dashboard()
    used: dict[str, str] = {}
    for panel in _panels(board["panels"]):
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                used.setdefault(name, panel["title"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"])
            assert found, variable["definition"]
            used.setdefault(found.group(1), f"variable {variable['name']}")
    missing = {name: title for name, title in used.items() if name not in exported}
    assert not missing, f"the dashboard queries metrics /metrics does not export: {missing}"
    assert set(used) >= REQUIRED, f"not on the dashboard: {REQUIRED - set(used)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed")
def test_every_query_parses(tmp_path: Path) -> None:
    """Each panel's PromQL, with Grafana's variables filled in, is valid to Prometheus' own parser
    (promtool checks it as a recording rule)."""
    rules = []
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$asset", "JOBCOIN")
            assert "$" not in expr, f"an unknown variable in {panel['title']}: {expr}"
            rules.append({"record": f"mixhouse:panel_{panel['id']}_{target['refId']}", "expr": expr})
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
