"""The EVM adapter and the HD keyring against a real anvil node.

Each test takes fresh deposit indexes from :func:`_fresh_index` (high numbers, never reused in
the session) because the anvil node and the mnemonic are shared by the whole session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from mixhouse.chains.base import FeeQuote, PreparedSend, SendState, Transfer
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.adapter import GAS_LIMIT
from mixhouse.config import DEV_MNEMONIC
from mixhouse.errors import BroadcastRejected, ChainError, ConfigError, InvalidAddress, SendOutcomeUnknown
from mixhouse.keys.hd import POOL_PATH, HdKeyring, deposit_path
from mixhouse.keys.signer import SoftwareSigner
from mixhouse.watch.evm import EvmBlocks
from mixhouse.watch.scans import EVM_FIRST_SCAN_SLACK, DepositScanner
from mixhouse.watch.scans import EVM_MAX_BLOCKS_PER_SCAN as MAX_BLOCKS_PER_SCAN
from tests.fixtures.anvil import FUNDER_ADDRESS, FUNDER_KEY, Anvil
from tests.scanning import engine_scan

ETH = 10**18
_indexes = itertools.count(1_000_000)


def _fresh_index() -> int:
    return next(_indexes)


# -- HD keys ------------------------------------------------------------------------------


def test_dev_mnemonic_matches_the_known_anvil_accounts() -> None:
    keyring = HdKeyring(DEV_MNEMONIC)
    assert keyring.address(deposit_path(0)) == FUNDER_ADDRESS
    assert keyring.private_key("m/44'/60'/0'/0/0") == bytes.fromhex(FUNDER_KEY[2:])
    # anvil's dev account 1
    assert keyring.deposit_address(1) == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert keyring.pool_address() == keyring.address(POOL_PATH)
    assert keyring.pool_address() not in {keyring.deposit_address(i) for i in range(5)}


def test_keyring_is_deterministic_and_passphrase_matters(evm_mnemonic: str) -> None:
    first, second = HdKeyring(evm_mnemonic), HdKeyring("  " + evm_mnemonic.replace(" ", "   ") + "\n")
    assert first.deposit_address(7) == second.deposit_address(7)
    assert first.deposit_address(7) != first.deposit_address(8)
    assert HdKeyring(evm_mnemonic, passphrase="x").deposit_address(7) != first.deposit_address(7)
    assert evm_mnemonic not in repr(first)


@pytest.mark.parametrize(
    "mnemonic",
    [
        "",
        "test test test test test test test test test test test test",  # bad checksum
        "test test test test test test test test test test test notaword",
        "hello world",
    ],
)
def test_invalid_mnemonic_is_a_config_error(mnemonic: str) -> None:
    with pytest.raises(ConfigError) as info:
        HdKeyring(mnemonic)
    assert "test test" not in str(info.value)


@pytest.mark.parametrize("index", [-1, 2**31])
def test_deposit_path_range(index: int) -> None:
    with pytest.raises(ValueError, match="deposit index"):
        deposit_path(index)


# -- addresses ----------------------------------------------------------------------------


@pytest.fixture
def offline_adapter(evm_keyring: HdKeyring) -> EvmAdapter:
    """An adapter whose node does not exist: for the parts that need no node."""
    return EvmAdapter(
        "http://127.0.0.1:9",
        chain_id=31337,
        signer=SoftwareSigner.for_evm(evm_keyring),
        confirmations=3,
        max_fee_per_gas_cap=500 * 10**9,
        request_timeout=2.0,
    )


EIP55 = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # a test vector of EIP-55


@pytest.mark.parametrize(
    "text",
    [EIP55, EIP55.lower(), "0x" + EIP55[2:].upper(), f"  {EIP55}\n"],
)
def test_normalize_accepts_checksummed_and_single_case(offline_adapter: EvmAdapter, text: str) -> None:
    assert offline_adapter.normalize_address(text) == EIP55


@pytest.mark.parametrize(
    "text",
    [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD",  # one letter's case flipped
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA",  # short
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed00",  # long
        "0xZZAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",  # not hex
        "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",  # no prefix
        "0X5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED",  # capital X prefix
        "",
        "0x",
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
        "0x0000000000000000000000000000000000000000",
    ],
)
def test_normalize_rejects(offline_adapter: EvmAdapter, text: str) -> None:
    with pytest.raises(InvalidAddress):
        offline_adapter.normalize_address(text)


def test_deposit_and_pool_addresses(offline_adapter: EvmAdapter, evm_keyring: HdKeyring) -> None:
    assert offline_adapter.deposit_address(3) == evm_keyring.address("m/44'/60'/0'/0/3")
    assert offline_adapter.pool_address == evm_keyring.address("m/44'/60'/1'/0/0")
    assert offline_adapter.has_idempotent_send is True
    # The mixer's keys must not be anvil's pre-funded dev accounts.
    assert offline_adapter.deposit_address(0) != FUNDER_ADDRESS


# -- scanning -----------------------------------------------------------------------------


async def test_scan_finds_a_deposit_once(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    address = evm_adapter.deposit_address(_fresh_index())
    other = evm_adapter.deposit_address(_fresh_index())
    cursor = str(await anvil.block_number() + 1)
    txid = await anvil.fund(address, 10**17 + 5)
    head = await anvil.block_number()

    result = await engine_scan(evm_adapter, [address.lower(), other], cursor)

    assert [t.ref for t in result.transfers] == [txid]
    transfer = result.transfers[0]
    assert transfer == Transfer(
        to_address=address,
        from_addresses=(FUNDER_ADDRESS,),
        amount=10**17 + 5,
        ref=txid,
        block_number=head,
        confirmations=1,
    )
    # The engine's position: the last block taken in.
    assert result.cursor == f"{head}:{(await anvil.rpc('eth_getBlockByNumber', [hex(head), False]))['hash']}"

    again = await engine_scan(evm_adapter, [address], result.cursor)
    assert again.transfers == ()
    assert again.cursor == result.cursor


async def test_first_scan_without_cursor_sees_recent_blocks(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    address = evm_adapter.deposit_address(_fresh_index())
    txid = await anvil.fund(address, ETH // 100)
    await anvil.mine(2)
    result = await engine_scan(evm_adapter, [address], None)
    assert [t.ref for t in result.transfers] == [txid]
    assert result.transfers[0].confirmations == 3
    assert (result.cursor or "").partition(":")[0] == str(await anvil.block_number())


async def test_first_scan_starts_at_the_oldest_watched_mix(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    """A worker that first scans long after the first mix was created (no cursor yet) still
    finds its deposit: the scan starts at the blocks mined since the mix's creation, not a few
    blocks below the head (found by the rotation crash test)."""
    address = evm_adapter.deposit_address(_fresh_index())
    txid = await anvil.fund(address, ETH // 100)
    funded = await anvil.rpc("eth_getBlockByNumber", [hex(await anvil.block_number()), False])
    created = datetime.fromtimestamp(int(funded["timestamp"], 16), UTC)
    await anvil.mine(evm_adapter.confirmations_required + EVM_FIRST_SCAN_SLACK + 30)

    # As before: a few blocks below the head only, so the deposit is missed.
    assert (await engine_scan(evm_adapter, [address], None)).transfers == ()

    scanner = DepositScanner()
    found: list[str] = []
    try:
        result = await scanner.scan(evm_adapter, [address], None, since=created)
        found += [t.ref for t in result.transfers]
        # A first scan reads at most EVM_MAX_BLOCKS_PER_SCAN blocks; the scans after it go on.
        while result.scanned is not None and result.tip is not None and result.scanned < result.tip:
            result = await scanner.scan(evm_adapter, [address], result.cursor)
            found += [t.ref for t in result.transfers]
    finally:
        await scanner.aclose()
    assert found == [txid]


async def test_first_height_since_is_the_first_block_at_or_after(anvil: Anvil) -> None:
    reader = EvmBlocks(anvil.rpc_url)
    try:
        head = await anvil.block_number()
        block = await anvil.rpc("eth_getBlockByNumber", [hex(head), False])
        stamp = int(block["timestamp"], 16)
        first = await reader.first_height_since(stamp)
        assert first <= head
        at = await anvil.rpc("eth_getBlockByNumber", [hex(first), False])
        assert int(at["timestamp"], 16) >= stamp
        if first > 0:
            below = await anvil.rpc("eth_getBlockByNumber", [hex(first - 1), False])
            assert int(below["timestamp"], 16) < stamp
        assert await reader.first_height_since(stamp + 10**9) == head + 1
        assert await reader.first_height_since(0) == 0
    finally:
        await reader.aclose()


async def test_scan_is_bounded_per_call(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    address = evm_adapter.deposit_address(_fresh_index())
    start = await anvil.block_number() + 1
    await anvil.mine(MAX_BLOCKS_PER_SCAN + 20)
    txid = await anvil.fund(address, ETH // 100)

    first = await engine_scan(evm_adapter, [address], str(start))
    assert first.transfers == ()
    assert (first.cursor or "").partition(":")[0] == str(start + MAX_BLOCKS_PER_SCAN - 1)
    assert first.tip is not None
    assert first.scanned == start + MAX_BLOCKS_PER_SCAN - 1 < first.tip
    second = await engine_scan(evm_adapter, [address], first.cursor)
    assert [t.ref for t in second.transfers] == [txid]


async def test_scan_without_watched_addresses_finds_nothing(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    head = await anvil.block_number()
    result = await engine_scan(evm_adapter, [], str(max(0, head - 10)))
    block = await anvil.rpc("eth_getBlockByNumber", [hex(head), False])
    assert result == type(result)((), f"{head}:{block['hash']}", tip=head, scanned=head)


async def test_scan_stops_and_rewinds_when_parent_hash_breaks(
    anvil: Anvil, evm_adapter: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = evm_adapter.deposit_address(_fresh_index())
    start = await anvil.block_number() + 1
    txid = await anvil.fund(address, ETH // 100)  # in block `start`
    await anvil.mine(10)
    real_call = EvmBlocks.call

    async def forked_call(self: EvmBlocks, method: str, *params: Any) -> Any:
        # Block start+5 claims another parent: as if the chain reorganised mid-scan.
        result = await real_call(self, method, *params)
        if method == "eth_getBlockByNumber" and params[1] is True and int(params[0], 16) == start + 5:
            result = dict(result, parentHash="0x" + "01" * 32)
        return result

    monkeypatch.setattr(EvmBlocks, "call", forked_call)
    result = await engine_scan(evm_adapter, [address], str(start))
    assert [t.ref for t in result.transfers] == [txid]
    # The pass stops below the block that does not extend it; the next one starts there and
    # sees the reorg (if it is one) at the block it took in last.
    below = await anvil.rpc("eth_getBlockByNumber", [hex(start + 4), False])
    assert result.cursor == f"{start + 4}:{below['hash']}"
    assert result.scanned == start + 4


async def test_confirmations_grow_with_blocks(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    address = evm_adapter.deposit_address(_fresh_index())
    cursor = str(await anvil.block_number() + 1)
    await anvil.fund(address, ETH // 10)
    (transfer,) = (await engine_scan(evm_adapter, [address], cursor)).transfers
    assert await evm_adapter.transfer_confirmations(transfer) == 1
    await anvil.mine(4)
    assert await evm_adapter.transfer_confirmations(transfer) == 5


async def test_reorged_deposit_disappears(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    address = evm_adapter.deposit_address(_fresh_index())
    head_before = await anvil.block_number()
    snapshot = await anvil.snapshot()
    await anvil.fund(address, ETH // 10)
    await anvil.mine(2)
    found = await engine_scan(evm_adapter, [address], str(head_before + 1))
    (transfer,) = found.transfers
    assert await evm_adapter.transfer_confirmations(transfer) == 3

    await anvil.revert(snapshot)  # the blocks holding the deposit are gone

    assert await anvil.block_number() == head_before
    assert await evm_adapter.transfer_confirmations(transfer) is None
    assert await evm_adapter.balance(address) == 0
    # The stored position is now above the head: the next scan re-reads recent blocks.
    rescan = await engine_scan(evm_adapter, [address], found.cursor)
    assert rescan.transfers == ()
    assert int((rescan.cursor or "0").partition(":")[0]) == head_before


# Init code deploying a contract whose code is PUSH1 0 PUSH1 0 REVERT: it refuses any ETH.
REVERTER_INIT_CODE = "0x6005600c60003960056000f3" + "60006000fd"


async def test_reverted_transfer_is_not_a_deposit(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    deploy = await anvil.rpc("eth_sendTransaction", [{"from": FUNDER_ADDRESS, "data": REVERTER_INIT_CODE}])
    contract = (await anvil.rpc("eth_getTransactionReceipt", [deploy]))["contractAddress"]
    cursor = str(await anvil.block_number() + 1)
    txid = await anvil.rpc(
        "eth_sendTransaction",
        [{"from": FUNDER_ADDRESS, "to": contract, "value": hex(ETH), "gas": hex(100_000)}],
    )
    assert (await anvil.rpc("eth_getTransactionReceipt", [txid]))["status"] == "0x0"

    assert (await engine_scan(evm_adapter, [contract], cursor)).transfers == ()
    ghost = Transfer(evm_adapter.normalize_address(contract), (FUNDER_ADDRESS,), ETH, txid, None, 0)
    assert await evm_adapter.transfer_confirmations(ghost) is None
    failed_send = PreparedSend(FUNDER_ADDRESS, contract, ETH, 0, None, txid, None)
    check = await evm_adapter.check_send(failed_send, earlier_sends=0)
    assert check.state is SendState.FAILED
    assert check.network_fee_paid is not None
    assert check.network_fee_paid > 0


# -- fees and sends -----------------------------------------------------------------------


async def test_quote_network_fee(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    latest = await anvil.rpc("eth_getBlockByNumber", ["latest", False])
    base_fee = int(latest["baseFeePerGas"], 16)
    tip = int(await anvil.rpc("eth_maxPriorityFeePerGas"), 16)
    fee = await evm_adapter.quote_network_fee()
    price = 2 * base_fee + tip
    assert fee == FeeQuote(per_send=GAS_LIMIT * price, detail=f"21000 gas x {price} wei")


async def test_fee_above_cap_is_refused(anvil: Anvil, evm_keyring: HdKeyring) -> None:
    adapter = EvmAdapter(
        anvil.rpc_url,
        chain_id=anvil.chain_id,
        signer=SoftwareSigner.for_evm(evm_keyring),
        confirmations=3,
        max_fee_per_gas_cap=1,
    )
    try:
        with pytest.raises(ChainError, match="cap"):
            await adapter.quote_network_fee()
    finally:
        await adapter.aclose()


async def test_sweep_empties_the_deposit_address_exactly(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    index = _fresh_index()
    address = evm_adapter.deposit_address(index)
    await anvil.fund(address, ETH // 3)  # an odd amount of wei
    pool_before = await evm_adapter.balance(evm_adapter.pool_address)
    balance = await evm_adapter.balance(address)
    fee = await evm_adapter.quote_network_fee()
    nonce = await evm_adapter.next_nonce(address)
    assert nonce == 0

    prepared = await evm_adapter.prepare_send(
        from_address=address,
        from_key_index=index,
        to_address=evm_adapter.pool_address,
        amount=balance - fee.per_send,
        fee=fee,
        nonce=nonce,
    )
    assert prepared.network_fee_max == fee.per_send
    assert prepared.txid is not None
    assert prepared.txid == prepared.txid.lower()
    assert len(prepared.txid) == 66
    assert (await evm_adapter.check_send(prepared, earlier_sends=0)).state is SendState.NOT_FOUND

    await evm_adapter.broadcast(prepared)
    # anvil automines, but asynchronously: wait (bounded) for the receipt.
    check = await evm_adapter.check_send(prepared, earlier_sends=0)
    for _ in range(100):
        if check.confirmations:
            break
        await asyncio.sleep(0.02)
        check = await evm_adapter.check_send(prepared, earlier_sends=0)
    assert (check.state, check.confirmations) == (SendState.PENDING, 1)
    await anvil.mine(2)
    check = await evm_adapter.check_send(prepared, earlier_sends=0)
    assert check.state is SendState.CONFIRMED
    assert check.confirmations == 3
    assert check.network_fee_paid == fee.per_send

    assert await evm_adapter.balance(address) == 0
    assert await evm_adapter.balance(evm_adapter.pool_address) == pool_before + balance - fee.per_send
    assert await evm_adapter.next_nonce(address) == 1


async def test_payout_from_the_pool(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    pool = evm_adapter.pool_address
    await anvil.fund(pool, ETH)
    receiver = evm_adapter.deposit_address(_fresh_index())  # any fresh address will do
    fee = await evm_adapter.quote_network_fee()
    prepared = await evm_adapter.prepare_send(
        from_address=pool,
        from_key_index=None,
        to_address=receiver.lower(),
        amount=12345,
        fee=fee,
        nonce=await evm_adapter.next_nonce(pool),
    )
    assert prepared.to_address == receiver
    await evm_adapter.broadcast(prepared)
    assert await evm_adapter.balance(receiver) == 12345


async def test_broadcasting_twice_moves_coins_once(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    index = _fresh_index()
    address = evm_adapter.deposit_address(index)
    receiver = evm_adapter.deposit_address(_fresh_index())
    await anvil.fund(address, ETH)
    fee = await evm_adapter.quote_network_fee()
    prepared = await evm_adapter.prepare_send(
        from_address=address,
        from_key_index=index,
        to_address=receiver,
        amount=ETH // 4,
        fee=fee,
        nonce=0,
    )
    # Held in the mempool: the second broadcast meets "transaction already imported".
    await anvil.rpc("evm_setAutomine", [False])
    try:
        await evm_adapter.broadcast(prepared)
        await evm_adapter.broadcast(prepared)
        check = await evm_adapter.check_send(prepared, earlier_sends=0)
        assert (check.state, check.confirmations, check.network_fee_paid) == (SendState.PENDING, 0, None)
        assert await evm_adapter.next_nonce(address) == 1
        await anvil.mine(1)
    finally:
        await anvil.rpc("evm_setAutomine", [True])
    # Mined: a third broadcast meets "nonce too low" and finds our own txid.
    await evm_adapter.broadcast(prepared)
    await anvil.mine(3)
    assert await evm_adapter.balance(receiver) == ETH // 4
    assert await evm_adapter.balance(address) == ETH - ETH // 4 - fee.per_send


async def test_pending_deposit_has_zero_confirmations(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    address = evm_adapter.deposit_address(_fresh_index())
    cursor = str(await anvil.block_number() + 1)
    await anvil.rpc("evm_setAutomine", [False])
    try:
        txid = await anvil.fund(address, ETH // 10)
        assert (await engine_scan(evm_adapter, [address], cursor)).transfers == ()  # not mined yet
        pending = Transfer(address, (FUNDER_ADDRESS,), ETH // 10, txid, None, 0)
        assert await evm_adapter.transfer_confirmations(pending) == 0
        await anvil.mine(1)
    finally:
        await anvil.rpc("evm_setAutomine", [True])
    assert await evm_adapter.transfer_confirmations(pending) == 1


async def test_insufficient_funds_is_rejected(evm_adapter: EvmAdapter) -> None:
    index = _fresh_index()
    address = evm_adapter.deposit_address(index)
    fee = await evm_adapter.quote_network_fee()
    prepared = await evm_adapter.prepare_send(
        from_address=address,
        from_key_index=index,
        to_address=evm_adapter.pool_address,
        amount=ETH,
        fee=fee,
        nonce=0,
    )
    with pytest.raises(BroadcastRejected, match=r"(?i)insufficient funds"):
        await evm_adapter.broadcast(prepared)
    assert (await evm_adapter.check_send(prepared, earlier_sends=0)).state is SendState.NOT_FOUND


async def test_nonce_taken_by_another_transaction_is_rejected(anvil: Anvil, evm_adapter: EvmAdapter) -> None:
    index = _fresh_index()
    address = evm_adapter.deposit_address(index)
    await anvil.fund(address, ETH)
    fee = await evm_adapter.quote_network_fee()
    first, second = [
        await evm_adapter.prepare_send(
            from_address=address,
            from_key_index=index,
            to_address=evm_adapter.pool_address,
            amount=amount,
            fee=fee,
            nonce=0,
        )
        for amount in (1, 2)
    ]
    await evm_adapter.broadcast(first)
    with pytest.raises(BroadcastRejected, match="nonce"):
        await evm_adapter.broadcast(second)


async def test_prepare_send_checks_its_inputs(evm_adapter: EvmAdapter) -> None:
    index = _fresh_index()
    address = evm_adapter.deposit_address(index)
    fee = FeeQuote(per_send=GAS_LIMIT * 10**9, detail="")
    with pytest.raises(ChainError, match="does not own"):
        await evm_adapter.prepare_send(
            from_address=address,
            from_key_index=index + 1,
            to_address=evm_adapter.pool_address,
            amount=1,
            fee=fee,
            nonce=0,
        )
    with pytest.raises(ValueError, match="nonce"):
        await evm_adapter.prepare_send(
            from_address=address,
            from_key_index=index,
            to_address=evm_adapter.pool_address,
            amount=1,
            fee=fee,
            nonce=None,
        )
    with pytest.raises(ChainError, match="cap"):
        await evm_adapter.prepare_send(
            from_address=address,
            from_key_index=index,
            to_address=evm_adapter.pool_address,
            amount=1,
            fee=FeeQuote(per_send=GAS_LIMIT * 10**12, detail=""),
            nonce=0,
        )


async def test_verify_chain_id(anvil: Anvil, evm_adapter: EvmAdapter, evm_keyring: HdKeyring) -> None:
    await evm_adapter.verify_chain_id()
    wrong = EvmAdapter(
        anvil.rpc_url,
        chain_id=1,
        signer=SoftwareSigner.for_evm(evm_keyring),
        confirmations=3,
        max_fee_per_gas_cap=10**12,
    )
    try:
        with pytest.raises(ChainError, match="31337"):
            await wrong.verify_chain_id()
    finally:
        await wrong.aclose()


# -- network failures ---------------------------------------------------------------------


async def _signed_send(adapter: EvmAdapter) -> Any:
    index = _fresh_index()
    return await adapter.prepare_send(
        from_address=adapter.deposit_address(index),
        from_key_index=index,
        to_address=adapter.pool_address,
        amount=1,
        fee=FeeQuote(per_send=GAS_LIMIT * 10**9, detail=""),
        nonce=0,
    )


async def test_unreachable_node_is_a_chain_error_not_unknown(offline_adapter: EvmAdapter) -> None:
    prepared = await _signed_send(offline_adapter)
    try:
        with pytest.raises(ChainError) as info:
            await offline_adapter.broadcast(prepared)
        assert not isinstance(info.value, SendOutcomeUnknown)
        with pytest.raises(ChainError):
            await offline_adapter.balance(offline_adapter.pool_address)
        with pytest.raises(ChainError):
            await engine_scan(offline_adapter, [offline_adapter.pool_address], None)
    finally:
        await offline_adapter.aclose()


@contextlib.asynccontextmanager
async def _serve(handler: Any) -> AsyncIterator[str]:
    """A TCP server on a free port that treats each connection with ``handler``; every
    connection is closed on exit so no socket outlives the test."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with server:
            yield f"http://127.0.0.1:{port}"
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    await reader.read()  # never answers; returns when the client gives up and closes


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.close()  # drops the connection without an answer


@pytest.mark.parametrize("handler", [_silent, _hang_up], ids=["timeout", "dropped"])
async def test_lost_answer_is_send_outcome_unknown(evm_keyring: HdKeyring, handler: Any) -> None:
    async with _serve(handler) as url:
        adapter = EvmAdapter(
            url,
            chain_id=31337,
            signer=SoftwareSigner.for_evm(evm_keyring),
            confirmations=3,
            max_fee_per_gas_cap=10**12,
            request_timeout=0.5,
        )
        try:
            prepared = await _signed_send(adapter)
            with pytest.raises(SendOutcomeUnknown):
                await adapter.broadcast(prepared)
            with pytest.raises(ChainError):
                await adapter.balance(adapter.pool_address)
        finally:
            await adapter.aclose()
