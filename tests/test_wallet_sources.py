"""History sources on real nodes: Bitcoin on the bcoin regtest, Ethereum (ETH and ERC-20) on anvil."""

from __future__ import annotations

import asyncio
from typing import Any

from eth_account import Account
from web3 import Web3

from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.wallets.records import AddressTx, Direction
from mixhouse.wallets.sources.bitcoin_node import BitcoinNodeSource
from mixhouse.wallets.sources.ethereum_node import TRANSFER_TOPIC, EthereumNodeSource
from tests.fixtures.anvil import Anvil
from tests.fixtures.bcoin import Bcoin


async def _sync_all(
    source: BitcoinNodeSource, address: str, checkpoint: str | None
) -> tuple[list[AddressTx], str | None]:
    txs: list[AddressTx] = []
    while True:
        page = await source.fetch([address], checkpoint)
        txs.extend(page.txs)
        checkpoint = page.checkpoint
        if page.done:
            return txs, checkpoint


async def test_bitcoin_node_source_pages_through_the_whole_history(bcoin: Bcoin) -> None:
    Account.enable_unaudited_hdwallet_features()
    address = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest").address(0, 0)
    rpc = bcoin.client()
    try:
        sent = [10_000 + 1_000 * i for i in range(30)]
        txids = set()
        for i, amount in enumerate(sent):
            txids.add(await bcoin.fund(address, amount))
            if i % 10 == 9:
                await bcoin.mine(1)
        source = BitcoinNodeSource(rpc, network="regtest", blocks_per_page=20)
        txs, checkpoint = await _sync_all(source, address, None)
        assert {t.txid for t in txs} == txids
        assert all(t.address == address and t.direction is Direction.IN for t in txs)
        assert sorted(t.net for t in txs) == sorted(sent)
        assert all(t.fee is not None and t.fee > 0 and t.block_height is not None for t in txs)
        # The node's own view of the address agrees.
        unspent = (await rpc.scantxoutset_addresses([address]))["unspents"]
        assert sum(round(u["amount"] * 10**8) for u in unspent) == sum(t.net for t in txs)
        # A second sync from the checkpoint fetches nothing new.
        again, _ = await _sync_all(source, address, checkpoint)
        assert again == []
    finally:
        await rpc.aclose()


async def test_bitcoin_node_source_reports_a_reorg(bcoin: Bcoin) -> None:
    Account.enable_unaudited_hdwallet_features()
    address = Bip84Keyring(Account.create_with_mnemonic()[1], "regtest").address(0, 0)
    rpc = bcoin.client()
    try:
        await bcoin.fund(address, 50_000)
        [block] = await bcoin.mine(1)
        source = BitcoinNodeSource(rpc, network="regtest", blocks_per_page=500)
        txs, checkpoint = await _sync_all(source, address, None)
        assert len(txs) == 1
        height = txs[0].block_height
        assert height is not None
        await bcoin.rpc("invalidateblock", block)
        await bcoin.mine(2)  # a longer competing chain; the payment is mined again in it
        page = await source.fetch([address], checkpoint)
        assert page.rewound_to is not None
        assert page.rewound_to < height
        assert [t.txid for t in page.txs] == [txs[0].txid]
        assert page.txs[0].block_hash != txs[0].block_hash
    finally:
        await rpc.aclose()


# A 48-byte contract that emits an EIP-20 Transfer(caller, to, amount) log from its calldata
# (to: 32 bytes, amount: 32 bytes), assembled by hand:
#   PUSH1 32 CALLDATALOAD PUSH1 0 MSTORE        memory[0:32] = amount
#   PUSH1 0 CALLDATALOAD CALLER PUSH32 topic0   topics: Transfer, caller, to
#   PUSH1 32 PUSH1 0 LOG3 STOP
TOKEN_CODE = "0x60203560005260003533" + "7f" + TRANSFER_TOPIC[2:] + "6020" + "6000" + "a3" + "00"


async def _wait_receipt(anvil: Anvil, txid: str) -> dict[str, Any]:
    for _ in range(250):
        receipt = await anvil.rpc("eth_getTransactionReceipt", [txid])
        if receipt is not None:
            return dict(receipt)
        await asyncio.sleep(0.02)
    raise AssertionError(f"no receipt for {txid}")


async def test_ethereum_node_source_finds_eth_and_erc20_transfers(anvil: Anvil) -> None:
    tip = await anvil.block_number()
    start = await anvil.rpc("eth_getBlockByNumber", [hex(tip), False])
    checkpoint: str | None = f"{tip}:{start['hash']}"
    user = Account.create()
    other = Account.create()
    token = "0x" + "7e" * 20
    await anvil.rpc("anvil_setCode", [token, TOKEN_CODE])
    await anvil.fund(user.address, 3 * 10**18)
    await anvil.fund(user.address, 10**18)
    for amount in (5, 7, 11):  # the funder "transfers tokens" to the user
        data = "0x" + user.address[2:].lower().rjust(64, "0") + f"{amount:x}".rjust(64, "0")
        txid = await anvil.rpc("eth_sendTransaction", [{"from": anvil.funder_address, "to": token, "data": data}])
        await _wait_receipt(anvil, txid)
    nonce = int(await anvil.rpc("eth_getTransactionCount", [user.address, "latest"]), 16)
    signed = user.sign_transaction(
        {"to": other.address, "value": 10**17, "gas": 21_000, "gasPrice": 2 * 10**9, "nonce": nonce, "chainId": 31337}
    )
    out_txid = await anvil.rpc("eth_sendRawTransaction", ["0x" + signed.raw_transaction.hex().removeprefix("0x")])
    out_receipt = await _wait_receipt(anvil, out_txid)
    source = EthereumNodeSource(anvil.rpc_url, blocks_per_page=3)
    try:
        rows: list[AddressTx] = []
        while True:
            page = await source.fetch([user.address], checkpoint)
            rows.extend(page.txs)
            checkpoint = page.checkpoint
            if page.done:
                break
    finally:
        await source.aclose()
    eth = [r for r in rows if r.asset == "ETH"]
    tokens = [r for r in rows if r.asset != "ETH"]
    assert sorted(r.net for r in tokens) == [5, 7, 11]
    assert {r.asset for r in tokens} == {Web3.to_checksum_address(token)}
    assert all(r.inputs[0].address == anvil.funder_address for r in tokens)
    assert len(eth) == 3
    [out] = [r for r in eth if r.direction is Direction.OUT]
    assert out.txid == out_txid.lower()
    assert out.fee == int(out_receipt["gasUsed"], 16) * int(out_receipt["effectiveGasPrice"], 16)
    assert out.net == -(10**17) - out.fee
    # The node's own balance is the sum of the ETH rows.
    assert sum(r.net for r in eth) == await anvil.balance(user.address)
