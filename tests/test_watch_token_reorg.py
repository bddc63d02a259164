"""ERC-20 deposits on the scanning engine, on anvil with USDT's TetherToken and an OpenZeppelin
token: the engine reads each block once for native ETH and both tokens (one ``eth_getLogs`` by
block hash for the tokens, none for a block whose bloom has no transfer of theirs); a reorg
within the policy rewinds to the exact fork (the block window in PostgreSQL), the orphaned
token deposit is no longer found and the new branch's is, with refs ``"<txid>/<n>"`` as the
token adapter always gave them; the mixer's scan converts a cursor the adapter stored before."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.evm import EvmAdapter
from mixhouse.watch.deposits import EvmDeposits
from mixhouse.watch.engine import ChainWatch
from mixhouse.watch.scans import DepositScanner
from mixhouse.watch.tokens import Erc20Deposits
from tests.fixtures.anvil import USDT, Anvil, deploy_token
from tests.scanning import CountingBlocks, position_at

MAX_DEPTH = 6
ETHER = 10**18


async def test_token_deposits_share_the_pass_and_follow_a_reorg(
    engine: AsyncEngine, anvil: Anvil, evm_adapter: EvmAdapter
) -> None:
    usdt = await deploy_token(anvil, evm_adapter, "usdt")
    oz = await deploy_token(anvil, evm_adapter, "oz")
    usdt_deposit, oz_deposit = usdt.token.deposit_address(0), oz.token.deposit_address(0)
    eth_deposit = Account.create().address
    reader = CountingBlocks(anvil.rpc_url)
    watch = ChainWatch(reader, max_depth=MAX_DEPTH, engine=engine)
    try:
        await anvil.mine(1)
        fork = await anvil.block_number()
        start = await position_at(anvil, fork - 1)
        snapshot = await anvil.snapshot()
        usdt_txid = await usdt.pay(usdt_deposit, 250 * USDT)  # fork + 1
        oz_txid = await oz.pay(oz_deposit, 40 * USDT)  # fork + 2
        eth_txid = await anvil.fund(eth_deposit, ETHER)  # fork + 3
        await usdt.pay(evm_adapter.key_address("m/44'/60'/9'/0/0"), 1)  # fork + 4: to nobody watched
        await anvil.mine(1)  # fork + 5: empty
        tip = await anvil.block_number()

        tokens = Erc20Deposits(reader, {usdt.token.contract: [usdt_deposit], oz.token.contract: [oz_deposit]})
        eth = EvmDeposits(reader, [eth_deposit])
        first = await watch.advance("deposits:tokens", start, [eth, tokens], max_blocks=100)
        await tokens.settle()
        assert (first.done, first.rewound_to, first.last_height) == (True, None, tip)
        # Each block read once for all three watchers; the tokens' logs in one eth_getLogs over
        # the blocks whose bloom may hold a transfer of theirs.
        assert sorted(reader.reads) == list(range(fork, tip + 1))
        assert tokens.requests == len(reader.log_requests) == 1
        [usdt_seen] = tokens.transfers_of(usdt.token.contract, first.tip)
        [oz_seen] = tokens.transfers_of(oz.token.contract, first.tip)
        assert (usdt_seen.ref, usdt_seen.amount, usdt_seen.to_address) == (f"{usdt_txid}/0", 250 * USDT, usdt_deposit)
        assert usdt_seen.block_number == fork + 1
        assert usdt_seen.confirmations == tip - fork
        assert (oz_seen.ref, oz_seen.amount, oz_seen.block_number) == (f"{oz_txid}/0", 40 * USDT, fork + 2)
        assert [t.ref for t in eth.transfers(first.tip)] == [eth_txid]
        # The adapter's own check of a deposit agrees with what the engine found.
        assert await usdt.token.transfer_confirmations(usdt_seen) == usdt_seen.confirmations

        # A reorg 5 blocks deep (within the policy): the new branch pays the USDT deposit 7 instead.
        await anvil.revert(snapshot)
        new_txid = await usdt.pay(usdt_deposit, 7 * USDT)  # fork + 1 of the new branch
        await anvil.mine(5)
        new_tip = await anvil.block_number()
        tokens = Erc20Deposits(reader, {usdt.token.contract: [usdt_deposit], oz.token.contract: [oz_deposit]})
        rewound = await watch.advance("deposits:tokens", first.position, [tokens], max_blocks=100)
        await tokens.settle()
        assert rewound.rewound_to == fork  # the exact fork, from the window in PostgreSQL
        assert (rewound.done, rewound.last_height) == (True, new_tip)
        [replaced] = tokens.transfers(rewound.tip)
        assert (replaced.ref, replaced.amount, replaced.block_number) == (f"{new_txid}/0", 7 * USDT, fork + 1)
        assert await usdt.token.transfer_confirmations(usdt_seen) is None
        assert await oz.token.transfer_confirmations(oz_seen) is None
    finally:
        await reader.aclose()


async def test_the_scanner_converts_a_token_cursor_of_the_adapter(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    world = await deploy_token(anvil, evm_adapter, "oz")
    deposit = world.token.deposit_address(3)
    head = await anvil.block_number()
    below = await anvil.rpc("eth_getBlockByNumber", [hex(head), False])
    old_cursor = f"{head + 1}:{below['hash']}"  # Erc20Adapter.scan's "<next block>:<hash below it>"
    txid = await world.pay(deposit, 5 * USDT)
    scanner = DepositScanner(max_depth=MAX_DEPTH)
    try:
        found = await scanner.scan(world.token, [deposit], old_cursor)
        assert [(t.ref, t.amount) for t in found.transfers] == [(f"{txid}/0", 5 * USDT)]
        assert found.cursor == f"@{await position_at(anvil, await anvil.block_number())}"
        assert found.scanned == found.tip == await anvil.block_number()
        # The engine's own cursor goes on from there: nothing new, the same ChainWatch.
        watch = scanner.watch_of(world.token)
        again = await scanner.scan(world.token, [deposit], found.cursor)
        assert again.transfers == ()
        assert scanner.watch_of(world.token) is watch is scanner.watch_of(world.evm)
    finally:
        await scanner.aclose()


class StaleRangeBlocks(CountingBlocks):
    """A node whose ranged ``eth_getLogs`` answers from another branch (every log's blockHash
    another block's): the watcher must not trust it and reads by block hash instead."""

    async def call(self, method: str, *params: Any) -> Any:
        result = await super().call(method, *params)
        if method == "eth_getLogs" and "fromBlock" in params[0]:
            result = [dict(entry, blockHash="0x" + "ee" * 32) for entry in result]
        return result


async def test_a_ranged_answer_from_another_branch_is_read_again_by_block_hash(
    anvil: Anvil, evm_adapter: EvmAdapter
) -> None:
    world = await deploy_token(anvil, evm_adapter, "oz")
    deposit = world.token.deposit_address(5)
    start = await position_at(anvil, await anvil.block_number())
    txid = await world.pay(deposit, 9 * USDT)
    await anvil.mine(2)
    reader = StaleRangeBlocks(anvil.rpc_url)
    try:
        tokens = Erc20Deposits(reader, {world.token.contract: [deposit]})
        read = await ChainWatch(reader, max_depth=MAX_DEPTH).advance("t", start, [tokens], max_blocks=10)
        await tokens.settle()
        assert [(t.ref, t.amount) for t in tokens.transfers(read.tip)] == [(f"{txid}/0", 9 * USDT)]
        # One ranged query (refused), then one by hash per block whose bloom may hold the token.
        assert reader.log_requests[0] == "None"
        assert len(reader.log_requests) == tokens.requests >= 2
        assert all(h.startswith("0x") for h in reader.log_requests[1:])
    finally:
        await reader.aclose()
