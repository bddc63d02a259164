"""The shipped systemd units start real commands and treat a SIGTERM stop as success."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixhouse.cli import app
from mixhouse.termination import EXIT_STATUS_SIGTERM

UNITS = Path(__file__).resolve().parents[1] / "deploy" / "systemd"


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(path)
    return parser


@pytest.mark.parametrize("name", ["mixhouse-worker.service", "mixhouse-api.service"])
def test_unit_runs_a_mixhouse_command_and_restarts(name: str) -> None:
    unit = _unit(UNITS / name)
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/bin/mixhouse")
    # The command exists: its --help answers.
    assert CliRunner().invoke(app, [*argv[1:], "--help"]).exit_code == 0
    assert service["Restart"] == "always"
    assert service["KillSignal"] == "SIGTERM"
    assert str(EXIT_STATUS_SIGTERM) in service["SuccessExitStatus"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
