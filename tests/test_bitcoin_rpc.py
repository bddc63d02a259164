"""BitcoinRpc and the regtest launcher against a real bcoin node (the ``bcoin`` fixture).

Checks that the launcher makes bcoin look like Bitcoin Core regtest (address prefixes,
segwit from height 0, getblock verbosity, sendrawtransaction errors, estimatesmartfee,
scantxoutset) and that the client maps answers and errors as documented.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from decimal import Decimal

import pytest
from embit.transaction import Transaction  # type: ignore[import-untyped]

from mixhouse.chains.bitcoin.rpc import (
    RPC_DESERIALIZATION_ERROR,
    RPC_VERIFY_REJECTED,
    AlreadyInChain,
    BitcoinRpc,
    RpcError,
    SendRejected,
    btc_to_sat,
)
from mixhouse.errors import BroadcastRejected, ChainError, SendOutcomeUnknown
from mixhouse.keys.bip84 import Bip84Keyring
from tests.fixtures.bcoin import Bcoin

# -- pure conversion ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "sat"),
    [
        (Decimal("0.00000001"), 1),
        (Decimal("1e-8"), 1),
        (Decimal(50), 5_000_000_000),
        (50, 5_000_000_000),
        (Decimal("20999999.97690000"), 2_099_999_997_690_000),
        (Decimal(0), 0),
    ],
)
def test_btc_to_sat_is_exact(value: Decimal | int, sat: int) -> None:
    assert btc_to_sat(value) == sat


@pytest.mark.parametrize(
    "value", [Decimal("0.000000001"), Decimal(-1), Decimal("21000000.00000001"), 0.5, "1", True, None]
)
def test_btc_to_sat_refuses_what_is_not_satoshi(value: object) -> None:
    with pytest.raises(ChainError):
        btc_to_sat(value)


# -- Core-style regtest ------------------------------------------------------------------------


async def test_addresses_use_bitcoin_core_regtest_prefixes(bcoin: Bcoin) -> None:
    assert bcoin.funder_address.startswith("bcrt1q")
    # A base58 P2PKH address with version 0x6f (testnet/regtest in Core), and a P2SH with 0xc4.
    assert (await bcoin.rpc("validateaddress", "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"))["isvalid"] is True
    assert (await bcoin.rpc("validateaddress", "2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc"))["isvalid"] is True
    # bcoin's own regtest hrp "rb" is gone; mainnet addresses are refused.
    assert (await bcoin.rpc("validateaddress", "rb1qw508d6qejxtdg4y5r3zarvary0c5xw7kl7gvu3"))["isvalid"] is False
    assert (await bcoin.rpc("validateaddress", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"))["isvalid"] is False


async def test_segwit_and_csv_are_active_and_a_p2wpkh_spend_is_accepted(bcoin: Bcoin, btc_rpc: BitcoinRpc) -> None:
    info = await bcoin.rpc("getblockchaininfo")
    assert info["bip9_softforks"]["segwit"]["status"] == "active"
    assert info["bip9_softforks"]["csv"]["status"] == "active"
    assert await btc_rpc.getblockcount() < 432  # where bcoin's BIP-9 activation would land
    txid = await bcoin.fund("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", 10_000)
    entry = await btc_rpc.getmempoolentry(txid)
    assert entry is not None
    [block_hash] = await bcoin.mine(1)
    block = await btc_rpc.getblock_verbose(block_hash)
    assert block is not None
    assert txid in [tx["txid"] for tx in block["tx"]]


async def test_getblock_verbosity_3_has_hex_fee_and_prevouts(bcoin: Bcoin, btc_rpc: BitcoinRpc) -> None:
    txid = await bcoin.fund("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", 20_000)
    [block_hash] = await bcoin.mine(1)
    block = await btc_rpc.getblock_verbose(block_hash)
    assert block is not None
    assert block["height"] == await btc_rpc.getblockcount()
    assert block["confirmations"] == 1
    assert block["previousblockhash"] == await btc_rpc.getblockhash(block["height"] - 1)
    [tx] = [tx for tx in block["tx"] if tx["txid"] == txid]
    assert isinstance(tx["hex"], str)
    assert btc_to_sat(tx["fee"]) == 300
    [vin] = tx["vin"]
    assert vin["prevout"]["scriptPubKey"]["address"] == bcoin.funder_address
    assert btc_to_sat(vin["prevout"]["value"]) > 20_000  # Decimal, or int for whole BTC
    assert tx["vout"][0]["scriptPubKey"]["address"] == "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    assert btc_to_sat(tx["vout"][0]["value"]) == 20_000
    # bcoin's own calling convention still works and plain verbosity 1 lists txids.
    assert isinstance((await btc_rpc.call("getblock", block_hash, True, True))["tx"][0], dict)
    assert txid in (await btc_rpc.call("getblock", block_hash, 1))["tx"]
    assert isinstance(await btc_rpc.call("getblock", block_hash, 0), str)


async def test_not_found_answers_are_none(btc_rpc: BitcoinRpc) -> None:
    unknown = "ab" * 32
    assert await btc_rpc.getrawtransaction(unknown) is None
    assert await btc_rpc.getmempoolentry(unknown) is None
    assert await btc_rpc.getblock_verbose(unknown) is None
    assert await btc_rpc.getblockheader(unknown) is None
    assert await btc_rpc.getblockhash(await btc_rpc.getblockcount() + 5) is None


async def test_unknown_method_is_a_named_rpc_error(btc_rpc: BitcoinRpc) -> None:
    with pytest.raises(RpcError) as info:
        await btc_rpc.call("nosuchmethod")
    assert info.value.code == -32601


async def test_estimatesmartfee_has_no_estimate_on_a_fresh_regtest(btc_rpc: BitcoinRpc) -> None:
    assert await btc_rpc.estimatesmartfee(6) is None
    answer = await btc_rpc.call("estimatesmartfee", 6, "conservative")
    assert answer["errors"]
    assert answer["blocks"] == 6


async def test_scantxoutset_sums_confirmed_utxos(bcoin: Bcoin, btc_rpc: BitcoinRpc, btc_keyring: Bip84Keyring) -> None:
    address = btc_keyring.address(0, 900)
    before = btc_to_sat((await btc_rpc.scantxoutset_addresses([address]))["total_amount"])
    await bcoin.fund(address, 7_000)
    assert btc_to_sat((await btc_rpc.scantxoutset_addresses([address]))["total_amount"]) == before
    await bcoin.mine(1)
    result = await btc_rpc.scantxoutset_addresses([address])
    assert btc_to_sat(result["total_amount"]) == before + 7_000
    assert result["height"] == await btc_rpc.getblockcount()


# -- sendrawtransaction ------------------------------------------------------------------------


async def test_send_is_idempotent_then_already_in_chain(bcoin: Bcoin, btc_rpc: BitcoinRpc) -> None:
    payment = bcoin.sign_payment([("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", 5_000)])
    assert await btc_rpc.sendrawtransaction(payment.raw_hex, payment.txid) == payment.txid
    assert await btc_rpc.sendrawtransaction(payment.raw_hex, payment.txid) == payment.txid
    await bcoin.mine(1)
    with pytest.raises(AlreadyInChain):
        await btc_rpc.sendrawtransaction(payment.raw_hex, payment.txid)


async def test_send_of_a_bad_signature_is_rejected(bcoin: Bcoin, btc_rpc: BitcoinRpc) -> None:
    payment = bcoin.sign_payment([("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", 5_000)])
    tx = Transaction.parse(bytes.fromhex(payment.raw_hex))
    tx.vout[0].value -= 1  # the signature no longer commits to the outputs
    with pytest.raises(SendRejected) as info:
        await btc_rpc.sendrawtransaction(tx.serialize().hex(), tx.txid().hex())
    assert info.value.code == RPC_VERIFY_REJECTED
    assert "script-verify" in info.value.reason
    assert await btc_rpc.getrawtransaction(tx.txid().hex()) is None


async def test_send_below_the_min_relay_fee_is_rejected(bcoin: Bcoin, btc_rpc: BitcoinRpc) -> None:
    payment = bcoin.sign_payment([("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", 5_000)], fee=0)
    with pytest.raises(SendRejected, match="min relay fee not met"):
        await btc_rpc.sendrawtransaction(payment.raw_hex, payment.txid)


async def test_send_of_garbage_is_a_deserialization_error(btc_rpc: BitcoinRpc) -> None:
    with pytest.raises(BroadcastRejected) as info:
        await btc_rpc.sendrawtransaction("00", None)
    assert isinstance(info.value, SendRejected)
    assert info.value.code == RPC_DESERIALIZATION_ERROR


async def test_send_spending_unknown_coins_is_rejected(bcoin: Bcoin, btc_rpc: BitcoinRpc) -> None:
    payment = bcoin.sign_payment([("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", 5_000)])
    tx = Transaction.parse(bytes.fromhex(payment.raw_hex))
    tx.vin[0].txid = bytes.fromhex("cd" * 32)
    with pytest.raises(SendRejected, match="missingorspent"):
        await btc_rpc.sendrawtransaction(tx.serialize().hex(), tx.txid().hex())


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections (kernel backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


async def test_send_timeout_is_outcome_unknown(silent_server: str) -> None:
    rpc = BitcoinRpc(silent_server, timeout=0.3)
    try:
        with pytest.raises(SendOutcomeUnknown):
            await rpc.sendrawtransaction("00", "ab" * 32)
        with pytest.raises(ChainError) as info:
            await rpc.getblockcount()
        assert not isinstance(info.value, SendOutcomeUnknown)
    finally:
        await rpc.aclose()


async def test_send_to_a_closed_port_is_a_plain_chain_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rpc = BitcoinRpc(f"http://127.0.0.1:{port}/", timeout=1.0)
    try:
        with pytest.raises(ChainError) as info:
            await rpc.sendrawtransaction("00", "ab" * 32)
        assert not isinstance(info.value, SendOutcomeUnknown | BroadcastRejected)
    finally:
        await rpc.aclose()


async def test_wrong_credentials_are_a_chain_error(bcoin: Bcoin) -> None:
    rpc = BitcoinRpc(bcoin.rpc_url, user="x", password="wrong")
    try:
        with pytest.raises(ChainError, match=r"401|credentials"):
            await rpc.getblockcount()
    finally:
        await rpc.aclose()
