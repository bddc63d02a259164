"""A Bitcoin scan's cost does not grow with decoding every watched address (issue 14, item 7).

Decoding one bech32 address costs about 0.25 ms, so a scan that normalised all of them spent
25 s at 100,000 watched mixes. The mixer's own addresses, stored canonical, are taken as they
are; other forms are decoded once and remembered. Real bcoin regtest node.
"""

from __future__ import annotations

import pytest

from mixhouse.chains.bitcoin import networks
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.errors import InvalidAddress
from tests.fixtures.bcoin import Bcoin
from tests.scanning import engine_scan


async def test_watched_addresses_are_not_decoded_on_every_scan(
    bcoin: Bcoin, btc_adapter: BitcoinAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    original = networks.normalize_address

    def counting(text: str, network: str) -> str:
        decoded.append(text)
        return original(text, network)

    many = [btc_adapter.deposit_address(i) for i in range(100, 400)]
    deposit = btc_adapter.deposit_address(400)
    shouting = btc_adapter.deposit_address(401).upper()  # a valid form, not the canonical one
    cursor = str(await bcoin.tip() + 1)
    paid_deposit = await bcoin.fund(deposit, 500_000)
    paid_shouting = await bcoin.fund(btc_adapter.deposit_address(401), 600_000)
    monkeypatch.setattr(networks, "normalize_address", counting)

    first = await engine_scan(btc_adapter, [*many, deposit, shouting], cursor)
    second = await engine_scan(btc_adapter, [*many, deposit, shouting], cursor)

    # Only the one non-canonical text was decoded, and only once for both scans.
    assert decoded == [shouting]
    for result in (first, second):
        found = {t.ref.split(":")[0]: t for t in result.transfers}
        assert found[paid_deposit].to_address == deposit
        assert found[paid_deposit].amount == 500_000
        assert found[paid_shouting].to_address == btc_adapter.deposit_address(401)
        assert len(result.transfers) == 2


async def test_a_watched_address_of_another_network_is_still_refused(btc_adapter: BitcoinAdapter) -> None:
    with pytest.raises(InvalidAddress):
        await engine_scan(btc_adapter, ["BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4"], None)
