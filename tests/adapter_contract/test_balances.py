"""Balances and fees: exact base units, what was paid and nothing else."""

from __future__ import annotations

from mixhouse.chains.base import FeeQuote
from tests.adapter_contract.harnesses import ChainHarness


async def test_balance_is_what_was_paid_to_the_unit(chain: ChainHarness) -> None:
    address = chain.fresh_address()
    assert await chain.adapter.balance(address) == 0
    await chain.fund(address, chain.amount)
    assert await chain.adapter.balance(address) == chain.amount
    await chain.fund(address, 1)
    assert await chain.adapter.balance(address) == chain.amount + 1
    assert await chain.adapter.balance(chain.fresh_address()) == 0


async def test_fee_quote_is_in_base_units(chain: ChainHarness) -> None:
    quote = await chain.adapter.quote_network_fee()
    assert isinstance(quote, FeeQuote)
    assert type(quote.per_send) is int
    assert quote.per_send >= 0
    assert quote.detail
