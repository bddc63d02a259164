"""``python -m mixhouse.otc.swaps.demo`` (what ``make demo-otc`` ends with) settles its trade:
exit 0, each swap step printed, and the balances each chain shows."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_swap_demo_settles_a_btc_usdt_trade(pg_server_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mixhouse.otc.swaps.demo", "--timeout", "400"],
        env={**os.environ, "MIXHOUSE_DATABASE_URL": pg_server_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for step in ("locked", "lock_confirmed", "claimed", "completed"):
        assert f"(initiator): {step}" in out
        assert f"(participant): {step}" in out
    assert "Alice holds 600.00 USDT, Bob 9400.00 USDT" in out
    assert "Bob's swap address holds 99" in out  # 0.01 BTC less a claim fee of a few hundred sat
