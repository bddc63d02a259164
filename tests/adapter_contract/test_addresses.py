"""Addresses: deterministic deposit addresses, one canonical form, foreign texts refused."""

from __future__ import annotations

import pytest

from mixhouse.errors import InvalidAddress
from tests.adapter_contract.harnesses import ChainHarness


def test_deposit_addresses_are_deterministic_distinct_and_canonical(chain: ChainHarness) -> None:
    adapter = chain.adapter
    index = chain.fresh_index()
    addresses = [adapter.deposit_address(index + i) for i in range(5)]
    assert addresses == [adapter.deposit_address(index + i) for i in range(5)]
    assert len(set(addresses)) == 5
    assert adapter.pool_address not in addresses
    for address in [*addresses, adapter.pool_address]:
        assert adapter.normalize_address(address) == address
        assert adapter.normalize_address(chain.respell(address)) == address


def test_foreign_and_malformed_addresses_are_refused(chain: ChainHarness) -> None:
    for text in chain.invalid_addresses:
        with pytest.raises(InvalidAddress):
            chain.adapter.normalize_address(text)
