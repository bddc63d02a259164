"""The ``chain`` fixture: every test of the contract suite runs once per adapter, on its real
node (web3.py runs one module-testing suite against every backend the same way).

The nodes are the session's (``anvil``, ``bcoin``); the Jobcoin ledger is served per test on the
test's fresh database, and the ERC-20 param deploys an OpenZeppelin token per test. A param is
one entry of :data:`HARNESSES`: the fixtures it needs and a builder; a builder that returns a
reason instead of a harness makes the param skip with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from tests.adapter_contract.harnesses import BitcoinHarness, ChainHarness, Erc20Harness, EvmHarness, JobcoinHarness
from tests.e2e import local_ledger
from tests.fixtures.anvil import deploy_token

Builder = Callable[[dict[str, Any], AsyncExitStack], Awaitable[ChainHarness | str]]


async def _jobcoin(deps: dict[str, Any], stack: AsyncExitStack) -> ChainHarness:
    served = await stack.enter_async_context(local_ledger(deps["engine"]))
    return JobcoinHarness(deps["engine"], served.api_url)


async def _evm(deps: dict[str, Any], stack: AsyncExitStack) -> ChainHarness:
    return EvmHarness(deps["anvil"], deps["evm_keyring"])


async def _erc20(deps: dict[str, Any], stack: AsyncExitStack) -> ChainHarness:
    world = await deploy_token(deps["anvil"], deps["evm_adapter"], "oz")
    return Erc20Harness(deps["anvil"], deps["evm_keyring"], world)


async def _bitcoin(deps: dict[str, Any], stack: AsyncExitStack) -> ChainHarness:
    return BitcoinHarness(deps["bcoin"], deps["btc_keyring"])


# name -> (the fixtures the harness is built from, its builder)
HARNESSES: dict[str, tuple[tuple[str, ...], Builder]] = {
    "jobcoin": (("engine",), _jobcoin),
    "evm": (("anvil", "evm_keyring"), _evm),
    "erc20": (("anvil", "evm_keyring", "evm_adapter"), _erc20),
    "bitcoin": (("bcoin", "btc_keyring"), _bitcoin),
}


@pytest.fixture(params=list(HARNESSES))
def chain_deps(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The param's name and its fixtures, asked for here (a sync fixture) so that a param
    starts only the nodes it uses and async fixtures such as ``engine`` can be requested."""
    names, _builder = HARNESSES[request.param]
    return request.param, {name: request.getfixturevalue(name) for name in names}


@pytest.fixture
async def chain(chain_deps: tuple[str, dict[str, Any]]) -> AsyncIterator[ChainHarness]:
    """The harness of one adapter (see :mod:`tests.adapter_contract.harnesses`)."""
    name, deps = chain_deps
    async with AsyncExitStack() as stack:
        built = await HARNESSES[name][1](deps, stack)
        if isinstance(built, str):
            pytest.skip(built)
        try:
            yield built
        finally:
            await built.aclose()
