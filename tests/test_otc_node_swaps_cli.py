"""``mixhouse otc node`` and its swap engine: a node asked to settle by swaps without the
settings it needs refuses to start, with the missing setting named, and never half-starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixhouse.cli import app


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"MIXHOUSE_SWAP_BTC_RPC_URL": "http://127.0.0.1:1"}, "MIXHOUSE_SWAP_EVM_CHAIN_ID"),
        (
            {
                "MIXHOUSE_SWAP_BTC_RPC_URL": "http://127.0.0.1:1",
                "MIXHOUSE_SWAP_BTC_KEY_FILE": "/nonexistent/k",
                "MIXHOUSE_SWAP_EVM_RPC_URL": "http://127.0.0.1:1",
                "MIXHOUSE_SWAP_EVM_CHAIN_ID": "31337",
                "MIXHOUSE_SWAP_EVM_MNEMONIC_FILE": "/nonexistent/m",
                "MIXHOUSE_SWAP_HTLC_ADDRESS": "0x" + "11" * 20,
                "MIXHOUSE_SWAP_T2_SECONDS": "90000",
            },
            "T2",
        ),
    ],
)
def test_a_node_that_cannot_settle_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], missing: str
) -> None:
    for name in list(os.environ):
        if name.startswith("MIXHOUSE_SWAP_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["otc", "node", "--data-dir", str(tmp_path / "n"), "--api-port", "0"])
    assert result.exit_code == 2, result.output
    assert "cannot settle by swaps" in result.output
    assert missing in result.output
    assert not (tmp_path / "n").exists(), "nothing was started before the settings were checked"
