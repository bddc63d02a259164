"""One harness per adapter: the adapter on its real node plus the few chain-specific hooks the
contract suite needs (fund an address, mine, reorg, build a payment, an adapter at another URL).

What a chain cannot do is said by a capability flag (``has_blocks``, ``has_mempool``,
``can_reorg``), and the suite skips with the harness's stated reason instead of leaving the
test out. Adding an adapter is one harness class and one entry in ``conftest.HARNESSES``.

Amounts are ``int`` base units of the harness's asset (wei, satoshi, 1e-8 jobcoin).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.base import ChainAdapter, PoolCoin, PreparedSend, SendCheck, SendState, UtxoChainAdapter
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.chains.jobcoin import ledger
from mixhouse.chains.jobcoin.adapter import JobcoinAdapter
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.signer import SoftwareSigner
from tests.fixtures.anvil import Anvil, make_evm_adapter
from tests.fixtures.bcoin import Bcoin

# Deposit indexes of this suite: far above the other adapter tests' (which share the session's
# anvil, bcoin and mnemonic), and never reused within a session.
_indexes = itertools.count(2_000_000)
WAIT_SECONDS = 15.0


def closed_port_url(template: str) -> str:
    """``template`` (an http URL) pointed at a loopback port nothing listens on: a node that
    is down. The port was just free; nothing in the test binds it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    scheme, _, rest = template.partition("://")
    path = rest.partition("/")[2]
    return f"{scheme}://127.0.0.1:{port}/{path}"


class ChainHarness(abc.ABC):
    """An adapter on its real node, with the test hooks of its chain.

    Attributes:
        name: the pytest id.
        adapter: the adapter under test.
        node_url: the URL the adapter talks to (what a proxy forwards to).
        send_marker: bytes found only in the node request that broadcasts a send.
        amount: a deposit or payment amount that the chain moves without trouble, base units.
        invalid_addresses: texts :meth:`ChainAdapter.normalize_address` must refuse.
        has_blocks: confirmations grow with mined blocks.
        has_mempool: a broadcast send can wait, unmined, while blocks are held back.
        can_reorg: the node can replace blocks it already showed.
        no_blocks_reason, no_mempool_reason, no_reorg_reason: why not, where not.
    """

    name: str
    adapter: ChainAdapter
    node_url: str
    send_marker: bytes
    amount: int
    invalid_addresses: tuple[str, ...]
    has_blocks: bool = True
    has_mempool: bool = True
    can_reorg: bool = True
    no_blocks_reason = ""
    no_mempool_reason = ""
    no_reorg_reason = ""

    @staticmethod
    def fresh_index() -> int:
        """A deposit index no other test of the session uses."""
        return next(_indexes)

    def fresh_address(self) -> str:
        """A deposit address nobody has paid yet."""
        return self.adapter.deposit_address(self.fresh_index())

    def respell(self, address: str) -> str:
        """Another accepted spelling of ``address`` (default: itself)."""
        return address

    @abc.abstractmethod
    async def fund(self, address: str, amount: int) -> None:
        """Pay ``amount`` to ``address`` from outside the mixer; on return the payment is in a
        block (or the ledger) with 1 confirmation."""

    async def mine(self, blocks: int) -> None:
        """Add ``blocks`` empty blocks (chains with ``has_blocks``)."""
        raise NotImplementedError(self.no_blocks_reason)

    async def mark(self) -> Any:
        """Remember the chain as it is now (chains with ``can_reorg``)."""
        raise NotImplementedError(self.no_reorg_reason)

    async def reorg(self, mark: Any) -> None:
        """Remove every block after ``mark`` from the main chain."""
        raise NotImplementedError(self.no_reorg_reason)

    @contextlib.asynccontextmanager
    async def blocks_held(self) -> AsyncIterator[None]:
        """No block is made inside (chains with ``has_mempool``)."""
        raise NotImplementedError(self.no_mempool_reason)
        yield  # pragma: no cover

    async def payment(self, to_address: str, amount: int, *, funded: bool) -> PreparedSend:
        """A signed (or described) send of ``amount`` to ``to_address`` from a fresh source
        of ours; the source is paid enough for it and its fee first if ``funded``, else it
        holds nothing (the send must be refused).

        The default is an account chain's: a fresh deposit key, paid ``amount`` plus the
        quoted fee through :meth:`fund` (after :meth:`prepare_source`), sent from with its
        next nonce. UTXO chains override it."""
        index = self.fresh_index()
        source = self.adapter.deposit_address(index)
        fee = await self.adapter.quote_network_fee()
        await self.prepare_source(source)
        if funded:
            await self.fund(source, amount + fee.per_send)
        return await self.adapter.prepare_send(
            from_address=source,
            from_key_index=index,
            to_address=to_address,
            amount=amount,
            fee=fee,
            nonce=await self.adapter.next_nonce(source),
        )

    async def prepare_source(self, address: str) -> None:
        """What a payment's source needs whether or not it is funded (default: nothing)."""
        del address

    @abc.abstractmethod
    def adapter_at(self, url: str, *, timeout: float) -> ChainAdapter:
        """An adapter like :attr:`adapter` (same keys) talking to ``url``, ``timeout`` seconds
        per request. The caller closes it."""

    async def settle(self, prepared: PreparedSend) -> SendCheck:
        """Wait until ``prepared`` is on chain, mine until it has the required confirmations,
        return its final check.

        Raises:
            AssertionError: it was not seen within :data:`WAIT_SECONDS`.
        """
        check = await wait_until_found(self.adapter, prepared)
        if self.has_blocks:
            while check.confirmations < 1:
                await self.mine(1)
                check = await self.adapter.check_send(prepared, earlier_sends=0)
            if check.confirmations < self.adapter.confirmations_required:
                await self.mine(self.adapter.confirmations_required - check.confirmations)
                check = await self.adapter.check_send(prepared, earlier_sends=0)
        return check

    async def aclose(self) -> None:
        """Release the adapter."""
        await self.adapter.aclose()


async def wait_until_found(adapter: ChainAdapter, prepared: PreparedSend) -> SendCheck:
    """Poll :meth:`ChainAdapter.check_send` until the send is no longer ``NOT_FOUND`` (anvil
    mines asynchronously; bcoin accepts into its mempool asynchronously).

    Raises:
        AssertionError: still not found after :data:`WAIT_SECONDS`.
    """
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        check = await adapter.check_send(prepared, earlier_sends=0)
        if check.state is not SendState.NOT_FOUND:
            return check
        if time.monotonic() > deadline:
            raise AssertionError(f"the send {prepared.txid} never showed up on chain")
        await asyncio.sleep(0.02)


# -- Jobcoin: the local ledger server ---------------------------------------------------------

JOBCOIN_SECRET = b"contract-suite-secret-0123456789"


class JobcoinHarness(ChainHarness):
    """:class:`JobcoinAdapter` on the local ledger server (one fresh database per test)."""

    name = "jobcoin"
    send_marker = b"POST /api/transactions HTTP"
    amount = 3 * 10**8 + 7
    invalid_addresses = ("", " padded", "padded\n", "x" * 129, "bell\x07")
    has_blocks = False
    has_mempool = False
    can_reorg = False
    no_blocks_reason = "Jobcoin has no blocks: a listed transfer is final at its 1 confirmation"
    no_mempool_reason = "Jobcoin has no mempool: the ledger answers a send once it is committed"
    no_reorg_reason = "Jobcoin is one ledger database: nothing it listed is ever taken back"

    def __init__(self, engine: AsyncEngine, api_url: str) -> None:
        self.engine = engine
        self.node_url = api_url
        self.adapter = self.adapter_at(api_url, timeout=10.0)

    def adapter_at(self, url: str, *, timeout: float) -> ChainAdapter:
        return JobcoinAdapter(url, "mixhouse-pool", address_secret=JOBCOIN_SECRET, timeout=timeout)

    async def fund(self, address: str, amount: int) -> None:
        await ledger.mint(self.engine, address, amount)


# -- EVM: anvil ------------------------------------------------------------------------------


class EvmHarness(ChainHarness):
    """:class:`EvmAdapter` (native ETH) on the session's anvil, 3 confirmations."""

    name = "evm"
    send_marker = b"eth_sendRawTransaction"
    amount = 10**15 + 3
    invalid_addresses = (
        "",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD",  # EIP-55 test vector, one letter's case flipped
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA",  # short
        "bcrt1qdh55mk7rgr40h84hh0sr98jgxp9kfa5n2242ge",  # a Bitcoin regtest address
        "mixhouse-pool",  # a Jobcoin name
    )

    def __init__(self, anvil: Anvil, keyring: HdKeyring) -> None:
        self.anvil = anvil
        self.keyring = keyring
        self.node_url = anvil.rpc_url
        self.adapter = self.adapter_at(anvil.rpc_url, timeout=10.0)

    def adapter_at(self, url: str, *, timeout: float) -> ChainAdapter:
        return make_evm_adapter(self.anvil, self.keyring, url=url, request_timeout=timeout)

    def respell(self, address: str) -> str:
        return address.lower()

    async def fund(self, address: str, amount: int) -> None:
        await self.anvil.fund(address, amount)

    async def mine(self, blocks: int) -> None:
        await self.anvil.mine(blocks)

    async def mark(self) -> Any:
        return await self.anvil.snapshot()

    async def reorg(self, mark: Any) -> None:
        # evm_revert drops the later blocks and their transactions: the new branch is built
        # from the snapshot's block on.
        await self.anvil.revert(mark)

    @contextlib.asynccontextmanager
    async def blocks_held(self) -> AsyncIterator[None]:
        await self.anvil.rpc("evm_setAutomine", [False])
        try:
            yield
        finally:
            await self.anvil.rpc("evm_setAutomine", [True])


# -- ERC-20: anvil + a token contract --------------------------------------------------------


class _OwningErc20(Erc20Adapter):
    """An :class:`Erc20Adapter` that closes its own :class:`EvmAdapter` (the harness makes one
    per URL; in the app the chain's ETH adapter is shared and closed by its owner)."""

    async def aclose(self) -> None:
        await self.evm.aclose()


class Erc20Harness(EvmHarness):
    """:class:`Erc20Adapter` on the session's anvil, on a freshly deployed OpenZeppelin ERC-20
    (``tests/test_token_adapter.py``'s deployer) under a fresh asset code, 3 confirmations.

    Funding is a token transfer from the payer who holds the minted supply; a payment's source
    gets the tokens and ETH for its gas (a deposit address has none of its own).
    """

    name = "erc20"
    amount = 12_345_678

    def __init__(self, anvil: Anvil, keyring: HdKeyring, world: Any) -> None:
        # Not EvmHarness.__init__: it would open an ETH adapter of its own, never used.
        self.anvil = anvil
        self.keyring = keyring
        self.world = world
        self.node_url = anvil.rpc_url
        self.adapter = self.adapter_at(anvil.rpc_url, timeout=10.0)

    def adapter_at(self, url: str, *, timeout: float) -> ChainAdapter:
        evm = super().adapter_at(url, timeout=timeout)
        assert isinstance(evm, EvmAdapter)
        token: Erc20Adapter = self.world.token
        return _OwningErc20(evm, asset=token.asset, contract=token.contract, network_fee=token.network_fee)

    async def fund(self, address: str, amount: int) -> None:
        await self.world.pay(address, amount)

    async def prepare_source(self, address: str) -> None:
        await self.anvil.fund(address, 10**16)  # its gas, whether or not it has the tokens


# -- Bitcoin: bcoin regtest ------------------------------------------------------------------


class BitcoinHarness(ChainHarness):
    """:class:`BitcoinAdapter` on the session's bcoin regtest node, 3 confirmations.

    Sends spend pool coins (:class:`~mixhouse.chains.base.PoolCoin`): :meth:`payment` pays a
    fresh deposit key from the funder, mines it, and spends that coin with
    :meth:`UtxoChainAdapter.prepare_utxo_send`.
    """

    name = "bitcoin"
    send_marker = b"sendrawtransaction"
    amount = 100_003
    invalid_addresses = (
        "",
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",  # BIP-173 mainnet vector: another network
        "bcrt1qdh55mk7rgr40h84hh0sr98jgxp9kfa5n2242gf",  # last character changed: bad checksum
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",  # an Ethereum address
        "mixhouse-pool",
    )
    # Enough for the fee of a 1-input spend at any rate the fallback (10 sat/vB) can give.
    FEE_MARGIN = 20_000

    def __init__(self, bcoin: Bcoin, keyring: Bip84Keyring) -> None:
        self.bcoin = bcoin
        self.keyring = keyring
        self.node_url = bcoin.rpc_url
        self.adapter: BitcoinAdapter = self.adapter_at(bcoin.rpc_url, timeout=10.0)

    def adapter_at(self, url: str, *, timeout: float) -> BitcoinAdapter:
        node = self.bcoin.node
        return BitcoinAdapter(
            BitcoinRpc(url, user=node.rpc_user, password=node.rpc_password, timeout=timeout),
            network="regtest",
            signer=SoftwareSigner.for_bip84(self.keyring),
            confirmations=3,
        )

    def respell(self, address: str) -> str:
        return address.upper()  # bech32 may be all upper case (BIP-173)

    async def _pay(self, address: str, amount: int) -> str:
        return await self.bcoin.fund(address, amount)

    async def fund(self, address: str, amount: int) -> None:
        await self._pay(address, amount)
        await self.mine(1)

    async def mine(self, blocks: int) -> None:
        await self.bcoin.mine(blocks)

    async def mark(self) -> Any:
        return await self.bcoin.tip()

    async def reorg(self, mark: Any) -> None:
        # As in Core, the disconnected blocks' transactions go back to the mempool.
        first_removed = await self.bcoin.rpc("getblockhash", int(mark) + 1)
        await self.bcoin.rpc("invalidateblock", first_removed)

    @contextlib.asynccontextmanager
    async def blocks_held(self) -> AsyncIterator[None]:
        yield  # regtest makes blocks only when asked

    async def coin(self, amount: int) -> PoolCoin:
        """A confirmed coin of ``amount`` satoshi on a fresh deposit key, as the pool holds it."""
        index = self.fresh_index()
        address = self.adapter.deposit_address(index)
        txid = await self._pay(address, amount)
        await self.mine(1)
        # Tests.fixtures.bcoin's payments put the payment first and the change last.
        return PoolCoin(txid, 0, amount, address, 0, index, None)

    async def spend(self, coins: list[PoolCoin], to_address: str, amount: int) -> PreparedSend:
        """Sign a spend of ``coins`` paying ``amount`` to ``to_address``, change to a fresh key."""
        adapter: UtxoChainAdapter = self.adapter
        spend = await adapter.prepare_utxo_send(
            coins=coins,
            exclude_owner=None,
            payments=[(to_address, amount)],
            change_index=self.fresh_index(),
            fee_rate=await adapter.fee_rate(),
            max_fee=self.FEE_MARGIN,
            rng_seed=self.fresh_index(),
        )
        return spend.prepared

    async def payment(self, to_address: str, amount: int, *, funded: bool) -> PreparedSend:
        if funded:
            coin = await self.coin(amount + self.FEE_MARGIN)
        else:
            # A coin the pool believes it has and the chain never made: spending it is the UTXO
            # form of spending money one does not have.
            index = self.fresh_index()
            address = self.adapter.deposit_address(index)
            coin = PoolCoin(secrets.token_hex(32), 0, amount + self.FEE_MARGIN, address, 0, index, None)
        return await self.spend([coin], to_address, amount)
