"""Wallet sync from a Bitcoin node: block-scan rate of the node source and end-to-end sync.

Method: a fresh bcoin regtest node (:class:`~mixhouse.chains.bitcoin.devnet.RegtestNode`, in
memory) gets a history built with :class:`RegtestBuilder` (P2WPKH keys held here, signed
with embit): 101+ blocks mined to a funder, mature coinbases split into one coin per payment,
then ``--txs`` transactions (default 5,000) touching ``--addresses`` addresses (default 10):
60 % payments funder -> address, 25 % transfers address -> address (touching two of them),
15 % spends address -> an outside address, varied amounts, ``--per-block`` (default 500)
transactions per block. Then, on a fresh database (``MIXHOUSE_BENCH_DATABASE_URL`` or an
embedded PostgreSQL, as :mod:`benchmarks.wallets`):

* fetch only: :meth:`BitcoinNodeSource.fetch` from no checkpoint to the tip, all addresses in
  one scan (what the source can do), and one address alone (what one ``sync_address`` does);
  blocks scanned per second and matched transactions per second, best of 3 after a warm-up;
* end to end: the addresses imported into a wallet, :func:`mixhouse.wallets.sync.sync_all`
  (one scan per address: ``sync_address`` fetches one address at a time), checked against
  the node (rows = transactions built, confirmed balances = ``scantxoutset``);
* re-sync: ``sync_all`` again (nothing new: one tip check per address).

Usage: ``python -m benchmarks.wallets_node [--txs 5000] [--addresses 10] [--per-block 500]
[--page 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from embit import ec, script  # type: ignore[import-untyped]
from embit.networks import NETWORKS  # type: ignore[import-untyped]
from embit.transaction import (  # type: ignore[import-untyped]
    Transaction,
    TransactionInput,
    TransactionOutput,
)
from sqlalchemy import func, select

from benchmarks.run import _server_url
from benchmarks.wallets import _drop_database, _fresh_database
from mixhouse.chains.bitcoin.devnet import RegtestNode
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.db.engine import make_engine
from mixhouse.db.tables import address_balances, address_txs
from mixhouse.wallets.service import create_user, create_wallet, import_addresses
from mixhouse.wallets.sources.bitcoin_node import BitcoinNodeSource
from mixhouse.wallets.sync import sync_all

COIN = 100_000_000
COINBASE_MATURITY = 100
# Regtest halves the 50 BTC subsidy every 150 blocks (Core and bcoin chainparams).
REGTEST_HALVING = 150
# Outputs per fan-out transaction: 31 bytes each keeps it far below the 100 kvB standard limit.
FAN_OUT_OUTPUTS = 1_000
SEND_BATCH = 500


@dataclass(frozen=True, slots=True)
class Coin:
    """An output: ``txid:vout`` paying ``value`` satoshi to ``address``."""

    txid: str
    vout: int
    address: str
    value: int


@dataclass(frozen=True, slots=True)
class BuiltTx:
    """A signed transaction built by :class:`RegtestBuilder` (not necessarily sent).

    Attributes:
        txid: display hex.
        raw_hex: the serialised transaction (with witnesses).
        inputs: the coins it spends.
        outputs: every output, in vout order.
    """

    txid: str
    raw_hex: str
    inputs: tuple[Coin, ...]
    outputs: tuple[Coin, ...]

    @property
    def fee(self) -> int:
        """Satoshi paid to the miner."""
        return sum(c.value for c in self.inputs) - sum(c.value for c in self.outputs)

    def touches(self, address: str) -> bool:
        """Whether an input or an output is ``address``'s."""
        return any(c.address == address for c in self.inputs + self.outputs)

    def net(self, address: str) -> int:
        """Satoshi ``address`` received minus what it spent (the fee is in what it spent)."""
        return sum(c.value for c in self.outputs if c.address == address) - sum(
            c.value for c in self.inputs if c.address == address
        )


def fee_for(n_inputs: int, n_outputs: int, rate: int = 2) -> int:
    """Fee in satoshi for a P2WPKH transaction at ``rate`` sat/vB (size over-estimated: 68 vB
    per input, 31 per output, 11 overhead), so it always clears the 1 sat/vB relay minimum."""
    return rate * (11 + 68 * n_inputs + 31 * n_outputs)


class RegtestBuilder:
    """Keys, signing, sending and mining on a regtest node, to build large histories fast.

    Every key is P2WPKH, derived from a label (``sha256(label)``); the builder signs any
    input whose address it made (BIP-143). Nothing is checked against the node before
    sending: the node's answer to :meth:`send` is the check.

    Args:
        node: a running regtest node (not stopped by the builder).
    """

    def __init__(self, node: RegtestNode) -> None:
        self.node = node
        self._keys: dict[str, Any] = {}
        # One keep-alive connection; a long timeout because a batch of 500 transactions is
        # verified one by one by bcoin (JavaScript secp256k1: about a millisecond each).
        self._http = httpx.Client(auth=(node.rpc_user, node.rpc_password), timeout=300.0)

    def close(self) -> None:
        """Close the HTTP connection (the node keeps running)."""
        self._http.close()

    def address(self, label: str) -> str:
        """The ``bcrt1q...`` address of the key ``sha256(label)`` (remembered for signing)."""
        key = ec.PrivateKey(hashlib.sha256(label.encode()).digest())
        address = str(script.p2wpkh(key.get_public_key()).address(NETWORKS["regtest"]))
        self._keys[address] = key
        return address

    def rpc(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call (amounts parsed as Decimal); its ``result``.

        Raises:
            RuntimeError: the node answered an error.
        """
        [result] = self.batch([(method, list(params))])
        return result

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """JSON-RPC batch (one HTTP request, executed in order by the node); the results.

        Raises:
            RuntimeError: any call failed (the first error is named).
        """
        body = [{"jsonrpc": "1.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        response = self._http.post(self.node.rpc_url, json=body)
        answers = sorted(json.loads(response.content, parse_float=Decimal), key=lambda a: a["id"])
        for answer in answers:
            if answer.get("error") is not None:
                method = calls[answer["id"]][0]
                raise RuntimeError(f"{method} #{answer['id']} failed: {answer['error']}")
        return [a["result"] for a in answers]

    def sign(self, inputs: Sequence[Coin], outputs: Sequence[tuple[str, int]]) -> BuiltTx:
        """Build and sign a version-2 transaction spending ``inputs`` to ``outputs``
        (address, satoshi), in that order; the fee is what is left over.

        Raises:
            KeyError: an input's address is not one of :meth:`address`'s.
            ValueError: the outputs exceed the inputs, or one is negative.
        """
        if sum(value for _, value in outputs) > sum(c.value for c in inputs) or min(v for _, v in outputs) < 0:
            raise ValueError("outputs exceed inputs, or one is negative")
        tx = Transaction(
            version=2,
            vin=[TransactionInput(bytes.fromhex(c.txid), c.vout) for c in inputs],
            vout=[TransactionOutput(value, script.address_to_scriptpubkey(a)) for a, value in outputs],
        )
        for index, coin in enumerate(inputs):
            key = self._keys[coin.address]
            pub = key.get_public_key()
            digest = tx.sighash_segwit(index, script.p2pkh(pub), coin.value)
            tx.vin[index].witness = script.witness_p2wpkh(key.sign(digest), pub)
        txid = tx.txid().hex()
        made = tuple(Coin(txid, n, address, value) for n, (address, value) in enumerate(outputs))
        return BuiltTx(txid, tx.serialize().hex(), tuple(inputs), made)

    def send(self, txs: Sequence[BuiltTx]) -> None:
        """``sendrawtransaction`` each, in order (parents before children), in batches.

        Raises:
            RuntimeError: the node refused one (the ones before it are in the mempool).
        """
        for start in range(0, len(txs), SEND_BATCH):
            chunk = txs[start : start + SEND_BATCH]
            sent = self.batch([("sendrawtransaction", [t.raw_hex]) for t in chunk])
            if sent != [t.txid for t in chunk]:
                raise RuntimeError("the node answered other txids than the ones sent")

    def mine(self, blocks: int, address: str) -> list[str]:
        """Mine ``blocks`` blocks (coinbase to ``address``); their hashes."""
        hashes: list[str] = self.rpc("generatetoaddress", blocks, address)
        return hashes

    def mine_all(self, address: str) -> list[str]:
        """Mine until the mempool is empty; the new blocks' hashes.

        Raises:
            RuntimeError: a block left the mempool unchanged (the miner refuses something).
        """
        hashes: list[str] = []
        while pending := len(self.rpc("getrawmempool")):
            hashes += self.mine(1, address)
            if len(self.rpc("getrawmempool")) == pending:
                raise RuntimeError(f"{pending} transactions stay in the mempool after a block")
        return hashes

    def mature_coinbases(self, address: str) -> list[Coin]:
        """``address``'s coinbase outputs spendable in the next block (``scantxoutset``)."""
        tip = int(self.rpc("getblockcount"))
        result = self.rpc("scantxoutset", "start", [f"addr({address})"])
        return [
            Coin(u["txid"], int(u["vout"]), address, round(u["amount"] * COIN))
            for u in sorted(result["unspents"], key=lambda u: (u["height"], u["txid"]))
            if u["coinbase"] and tip + 1 - int(u["height"]) >= COINBASE_MATURITY
        ]

    def fund(self, funder: str, count: int, value: int) -> list[Coin]:
        """Give ``funder`` ``count`` confirmed coins of ``value`` satoshi: mines enough
        coinbases to it (on a fresh node), splits them with fan-out transactions, mines those.

        Returns:
            The new coins.

        Raises:
            RuntimeError: too few mature coinbases of the funder's (a node not fresh: earlier
                coinbases spent, or past the regtest halvings), or the node refused something.
        """
        per_coinbase = min(FAN_OUT_OUTPUTS, (50 * COIN - fee_for(1, FAN_OUT_OUTPUTS + 1)) // value)
        needed = -(-count // per_coinbase)
        # Coinbases mined now are spendable COINBASE_MATURITY blocks later.
        self.mine(max(0, COINBASE_MATURITY + needed - int(self.rpc("getblockcount"))), funder)
        fan_outs: list[BuiltTx] = []
        made = 0
        for coinbase in self.mature_coinbases(funder):
            room = (coinbase.value - fee_for(1, FAN_OUT_OUTPUTS + 1)) // value
            outputs = [(funder, value)] * min(FAN_OUT_OUTPUTS, room, count - made)
            if not outputs:
                break
            change = coinbase.value - value * len(outputs) - fee_for(1, len(outputs) + 1)
            fan_outs.append(self.sign([coinbase], [*outputs, (funder, change)]))
            made += len(outputs)
        if made < count:
            raise RuntimeError(f"the funder's mature coinbases give {made} coins of {value} sat, not {count}")
        self.send(fan_outs)
        self.mine_all(funder)
        return [c for t in fan_outs for c in t.outputs[:-1]]


def build_history(
    builder: RegtestBuilder, n_txs: int, n_addresses: int, per_block: int, rng: random.Random
) -> tuple[list[str], list[BuiltTx]]:
    """Build and mine ``n_txs`` transactions touching ``n_addresses`` addresses.

    Returns:
        ``(addresses, transactions built)``.
    """
    funder = builder.address("bench funder")
    outside = builder.address("bench outside")
    addresses = [builder.address(f"bench address {i}") for i in range(n_addresses)]
    n_payments = n_txs * 60 // 100
    n_transfers = n_txs * 25 // 100
    n_spends = n_txs - n_payments - n_transfers
    funding = builder.fund(funder, n_payments, COIN // 20)
    built: list[BuiltTx] = []
    wallet: list[Coin] = []  # confirmed coins of the addresses, spendable next
    pending: list[BuiltTx] = []

    def flush() -> None:
        builder.send(pending)
        builder.mine_all(funder)
        built.extend(pending)
        wallet.extend(c for t in pending for c in t.outputs if c.address in addresses)
        pending.clear()

    for coin in funding:
        amount = rng.randint(50_000, 4_000_000)
        target = rng.choice(addresses)
        pending.append(builder.sign([coin], [(target, amount), (funder, coin.value - amount - fee_for(1, 2))]))
        if len(pending) == per_block:
            flush()
    flush()
    # Transfers and spends, a block's worth at a time, only from confirmed coins (so the
    # mempool never holds chains of unconfirmed transactions: bcoin limits ancestors to 25).
    kinds = ["transfer"] * n_transfers + ["spend"] * n_spends
    rng.shuffle(kinds)
    fee = fee_for(1, 2)
    for kind in kinds:
        # Coins too small to pay 1,000 sat plus 1,000 sat of change and the fee stay unspent.
        while (coin := wallet.pop(rng.randrange(len(wallet)))).value < 2_000 + fee + 1_000:
            pass
        amount = rng.randint(1_000, (coin.value - fee) // 2)
        recipient = rng.choice(addresses) if kind == "transfer" else outside
        pending.append(builder.sign([coin], [(recipient, amount), (coin.address, coin.value - amount - fee)]))
        if len(pending) == per_block or not wallet:
            flush()
    flush()
    return addresses, built


async def _scan(source: BitcoinNodeSource, addresses: list[str]) -> tuple[float, int, int]:
    """Fetch from no checkpoint to the tip; ``(seconds, pages, distinct txids)``."""
    checkpoint: str | None = None
    txids: set[str] = set()
    pages = 0
    t0 = time.perf_counter()
    while True:
        page = await source.fetch(addresses, checkpoint)
        pages += 1
        txids.update(t.txid for t in page.txs)
        checkpoint = page.checkpoint
        if page.done:
            return time.perf_counter() - t0, pages, len(txids)


async def bench(n_txs: int, n_addresses: int, per_block: int, page: int) -> None:
    """Build the history, then print the fetch-only, end-to-end and re-sync figures."""
    node = RegtestNode.start()
    builder = RegtestBuilder(node)
    rpc = BitcoinRpc(node.rpc_url, user=node.rpc_user, password=node.rpc_password, timeout=120.0)
    server = _server_url()
    url = _fresh_database(server)
    engine = make_engine(url, pool_size=2)
    try:
        t0 = time.perf_counter()
        addresses, built = build_history(builder, n_txs, n_addresses, per_block, random.Random(7))
        blocks = int(builder.rpc("getblockcount")) + 1  # height 0 is scanned too
        hashes = builder.batch([("getblockhash", [h]) for h in range(blocks)])
        in_blocks = sum(len(b["tx"]) for b in builder.batch([("getblock", [h, 1]) for h in hashes]))
        print(
            f"history: {len(built):,} transactions touching {n_addresses} addresses; {blocks} blocks holding "
            f"{in_blocks:,} transactions (built, sent and mined in {time.perf_counter() - t0:.1f} s)"
        )
        expected_rows = sum(t.touches(a) for t in built for a in addresses)
        source = BitcoinNodeSource(rpc, network="regtest", blocks_per_page=page)
        await _scan(source, addresses)  # warm-up: the node's caches, httpx's connection
        # Best of 3: the machine's other load only ever slows a run down.
        elapsed, pages, found = min([await _scan(source, addresses) for _ in range(3)])
        assert found == len(built), (found, len(built))
        print(f"fetch only, {n_addresses} addresses in one scan ({pages} pages of {page} blocks, best of 3):")
        print(f"  {elapsed:.2f} s: {blocks / elapsed:,.0f} blocks/s, {found / elapsed:,.0f} transactions/s")
        one, _, found_one = min([await _scan(source, addresses[:1]) for _ in range(3)])
        print(
            f"fetch only, 1 address (best of 3): {one:.2f} s: {blocks / one:,.0f} blocks/s, {found_one / one:,.0f} tx/s"
        )

        user = await create_user(engine, "bench")
        wallet = await create_wallet(engine, user.id, "node")
        await import_addresses(engine, int(wallet["id"]), "BTC", addresses, bitcoin_network="regtest")
        t0 = time.perf_counter()
        results = await sync_all(engine, lambda chain: source if chain == "BTC" else None)
        full = time.perf_counter() - t0
        # Addresses at one checkpoint sync as one group; each result carries the group's count.
        stored = max(r.stored for r in results)
        assert all(r.status == "synced" for r in results), results
        async with engine.connect() as conn:
            rows = (await conn.execute(select(func.count()).select_from(address_txs))).scalar_one()
            balances = (await conn.execute(select(address_balances.c.address, address_balances.c.confirmed))).all()
        confirmed = {r.address: int(r.confirmed) for r in balances}
        assert rows == stored == expected_rows, (rows, stored, expected_rows)
        unspent = builder.rpc("scantxoutset", "start", [f"addr({a})" for a in addresses])["unspents"]
        node_view = dict.fromkeys(addresses, 0)
        for u in unspent:
            node_view[u["desc"][5:-1]] += round(u["amount"] * COIN)
        assert confirmed == node_view, "stored balances differ from the node's UTXO set"
        print(f"end to end (sync_all: {n_addresses} addresses synced together, {rows:,} rows stored):")
        print(
            f"  {full:.2f} s: {len(built) / full:,.0f} transactions/s, {rows / full:,.0f} rows/s, "
            f"{blocks / full:,.0f} blocks/s; balances equal scantxoutset"
        )
        t0 = time.perf_counter()
        again = await sync_all(engine, lambda chain: source if chain == "BTC" else None)
        resync = time.perf_counter() - t0
        assert sum(r.stored for r in again) == 0
        print(f"re-sync (nothing new): {resync * 1000:.0f} ms for {n_addresses} addresses")
    finally:
        await engine.dispose()
        _drop_database(server, url)
        await rpc.aclose()
        builder.close()
        node.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txs", type=int, default=5_000)
    parser.add_argument("--addresses", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=500)
    parser.add_argument("--page", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(bench(args.txs, args.addresses, args.per_block, args.page))
