"""BitcoinAdapter against a real bcoin regtest node (the ``bcoin`` fixture)."""

from __future__ import annotations

import pytest
from embit.transaction import Transaction  # type: ignore[import-untyped]

from mixhouse.chains.base import PreparedSend, SendState
from mixhouse.chains.bitcoin.adapter import SIMPLE_SEND_VBYTES, BitcoinAdapter
from mixhouse.errors import BroadcastRejected, InvalidAddress
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.money import Asset, asset_info
from tests.fixtures.bcoin import Bcoin, SignedPayment
from tests.scanning import engine_scan


def _prepared(payment: SignedPayment, to_address: str, amount: int) -> PreparedSend:
    return PreparedSend(
        from_address="bcrt1qdh55mk7rgr40h84hh0sr98jgxp9kfa5n2242ge",
        to_address=to_address,
        amount=amount,
        network_fee_max=300,
        raw_tx=bytes.fromhex(payment.raw_hex),
        txid=payment.txid,
        nonce=None,
    )


def test_btc_asset_is_satoshi() -> None:
    info = asset_info(Asset.BTC)
    assert (info.decimals, info.unit, info.dust) == (8, "satoshi", 546)


async def test_addresses_are_bip84_regtest(btc_adapter: BitcoinAdapter, btc_keyring: Bip84Keyring) -> None:
    assert btc_adapter.asset == Asset.BTC
    assert btc_adapter.has_idempotent_send is True
    assert btc_adapter.pool_address == btc_keyring.address(1, 0)
    assert btc_adapter.deposit_address(3) == btc_keyring.address(0, 3)
    assert btc_adapter.deposit_address(3).startswith("bcrt1q")
    assert btc_adapter.normalize_address(btc_adapter.pool_address.upper()) == btc_adapter.pool_address
    with pytest.raises(InvalidAddress):
        btc_adapter.normalize_address("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")
    assert await btc_adapter.next_nonce(btc_adapter.pool_address) is None
    with pytest.raises(NotImplementedError, match="prepare_utxo_send"):
        await btc_adapter.prepare_send(
            from_address=btc_adapter.pool_address,
            from_key_index=None,
            to_address=btc_adapter.deposit_address(0),
            amount=10_000,
            fee=await btc_adapter.quote_network_fee(),
            nonce=None,
        )


async def test_scan_finds_a_deposit_with_amount_sender_and_growing_confirmations(
    bcoin: Bcoin, btc_adapter: BitcoinAdapter
) -> None:
    deposit = btc_adapter.deposit_address(10)
    other = btc_adapter.deposit_address(11)
    cursor = str(await bcoin.tip() + 1)
    txid = await bcoin.fund(deposit, 1_234_567)

    pending = await engine_scan(btc_adapter, [deposit, other], cursor)
    [seen] = pending.transfers
    assert seen.to_address == deposit
    assert seen.amount == 1_234_567
    assert seen.from_addresses == (bcoin.funder_address,)
    assert seen.block_number is None
    assert seen.confirmations == 0
    assert seen.ref.startswith(txid + ":")
    assert await btc_adapter.transfer_confirmations(seen) == 0

    [block_hash] = await bcoin.mine(1)
    mined = await engine_scan(btc_adapter, [deposit], pending.cursor)
    [confirmed] = mined.transfers
    assert confirmed.ref == seen.ref
    assert confirmed.block_number == await bcoin.tip()
    assert confirmed.confirmations == 1
    assert mined.cursor == f"@{confirmed.block_number}:{block_hash}"  # the engine's position

    await bcoin.mine(2)
    assert await btc_adapter.transfer_confirmations(confirmed) == 3
    later = await engine_scan(btc_adapter, [deposit], mined.cursor)
    assert later.transfers == ()
    assert later.cursor is not None
    assert later.cursor.startswith(f"@{await bcoin.tip()}:")
    assert await btc_adapter.balance(deposit) == 1_234_567


async def test_a_reorg_removing_the_deposit_block_is_noticed(bcoin: Bcoin, btc_adapter: BitcoinAdapter) -> None:
    deposit = btc_adapter.deposit_address(20)
    start = await bcoin.tip() + 1
    await bcoin.fund(deposit, 500_000)
    [block_hash] = await bcoin.mine(1)
    first = await engine_scan(btc_adapter, [deposit], str(start))
    [transfer] = first.transfers
    assert transfer.confirmations == 1
    assert await btc_adapter.transfer_confirmations(transfer) == 1
    assert await btc_adapter.balance(deposit) == 500_000

    # As in Core, the disconnected block's transactions go back to the mempool: 0 confirmations.
    await bcoin.rpc("invalidateblock", block_hash)
    assert await btc_adapter.transfer_confirmations(transfer) == 0
    assert await btc_adapter.balance(deposit) == 0

    # The stored cursor names the removed block as the parent: the scan steps back, re-reads
    # the new branch and finds the deposit in its new block.
    await bcoin.mine(2)
    again = await engine_scan(btc_adapter, [deposit], first.cursor)
    [moved] = [t for t in again.transfers if t.ref == transfer.ref]
    assert moved.block_number == start  # the first block of the new branch, at the same height
    assert moved.confirmations == 2
    assert await btc_adapter.transfer_confirmations(moved) == 2

    # A transaction the node knows nowhere (reorged out and dropped) has no confirmations.
    gone = type(transfer)(deposit, (), 1, f"{'ef' * 32}:0", transfer.block_number, 1)
    assert await btc_adapter.transfer_confirmations(gone) is None


async def test_scan_with_a_stale_parent_hash_steps_back(bcoin: Bcoin, btc_adapter: BitcoinAdapter) -> None:
    tip = await bcoin.tip()
    result = await engine_scan(btc_adapter, [btc_adapter.deposit_address(30)], f"{tip + 1}:{'00' * 32}")
    assert result.cursor is not None
    # The block below the cursor is not the one named: the engine rewinds (the full policy
    # depth, knowing nothing of that hash) and re-reads up to the tip.
    assert result.cursor.startswith(f"@{tip}:")
    assert result.scanned == result.tip == tip
    with pytest.raises(ValueError, match="cursor"):
        await engine_scan(btc_adapter, [], "nonsense")


async def test_fee_quote_falls_back_on_a_fresh_regtest(btc_adapter: BitcoinAdapter, bcoin: Bcoin) -> None:
    quote = await btc_adapter.quote_network_fee()
    assert quote.per_send == 10 * SIMPLE_SEND_VBYTES
    assert "fallback" in quote.detail
    with pytest.raises(ValueError, match="max_fee_rate"):
        BitcoinAdapter(bcoin.client(), network="regtest", signer=btc_adapter._signer, confirmations=1, max_fee_rate=5)


async def test_broadcast_of_an_invalid_tx_is_rejected(bcoin: Bcoin, btc_adapter: BitcoinAdapter) -> None:
    to = btc_adapter.deposit_address(40)
    payment = bcoin.sign_payment([(to, 50_000)])
    tx = Transaction.parse(bytes.fromhex(payment.raw_hex))
    tx.vout[0].value += 1  # breaks the signature
    bad = SignedPayment(tx.txid().hex(), tx.serialize().hex(), payment.spent)
    with pytest.raises(BroadcastRejected):
        await btc_adapter.broadcast(_prepared(bad, to, 50_001))
    check = await btc_adapter.check_send(_prepared(bad, to, 50_001), earlier_sends=0)
    assert check.state is SendState.NOT_FOUND


async def test_broadcast_is_idempotent_and_check_send_follows_the_send(
    bcoin: Bcoin, btc_adapter: BitcoinAdapter
) -> None:
    to = btc_adapter.deposit_address(41)
    payment = bcoin.sign_payment([(to, 60_000)])
    prepared = _prepared(payment, to, 60_000)

    assert (await btc_adapter.check_send(prepared, earlier_sends=0)).state is SendState.NOT_FOUND
    await btc_adapter.broadcast(prepared)
    await btc_adapter.broadcast(prepared)  # again: already in the mempool, not an error
    pending = await btc_adapter.check_send(prepared, earlier_sends=0)
    assert (pending.state, pending.confirmations, pending.network_fee_paid) == (SendState.PENDING, 0, None)

    await bcoin.mine(1)
    await btc_adapter.broadcast(prepared)  # again: already in the chain, not an error
    one = await btc_adapter.check_send(prepared, earlier_sends=0)
    assert (one.state, one.confirmations, one.network_fee_paid) == (SendState.PENDING, 1, 300)

    await bcoin.mine(2)
    done = await btc_adapter.check_send(prepared, earlier_sends=0)
    assert (done.state, done.confirmations, done.network_fee_paid) == (SendState.CONFIRMED, 3, 300)
