"""Development fixtures: demo users, wallets, addresses and plausible transaction history.

:func:`generate_fixtures` fills a database with users ``demo-user-1..N``, each with wallets
``demo-wallet-1..M``; every wallet holds addresses alternating between Bitcoin (regtest P2WPKH
derived with :class:`~mixhouse.keys.bip84.Bip84Keyring` from a public dev mnemonic) and Ethereum
(``m/44'/60'/0'/0/i`` of the same mnemonic, via ``eth_account``). Each address gets a history
of confirmed transactions (and, for some, a trailing unconfirmed one) whose legs, fees, block
heights and times are drawn from a generator seeded by ``seed`` and the address, so the same
arguments always give the same rows. History goes through :func:`store.upsert_address_txs`,
balances through :func:`store.recompute_balance`, and the addresses end ``synced``.

Idempotent: users and wallets are looked up by name before being created, addresses and
history rows are keyed by their natural unique keys, and nothing is rewritten when it is
already there (a second run with the same arguments writes nothing). No API keys are made.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eth_account import Account
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.chains.bitcoin.networks import address_of_script
from mixhouse.db.tables import address_balances, users, wallet_addresses, wallets
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.wallets import store
from mixhouse.wallets.records import AddressTx, Leg
from mixhouse.wallets.service import AlreadyExists, create_user, create_wallet, import_addresses

# The BIP-39 test vector: public, for development data only (never holds real funds).
FIXTURE_MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
BTC_NETWORK = "regtest"

_BTC_START_HEIGHT = 150
_BTC_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)  # time of _BTC_START_HEIGHT
_ETH_START_HEIGHT = 19_000_000
_ETH_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)  # time of _ETH_START_HEIGHT
_GWEI = 10**9


@dataclass(frozen=True, slots=True)
class FixtureSummary:
    """What :func:`generate_fixtures` did.

    Attributes:
        users, wallets, addresses, transactions: how many the fixture set has.
        created_users, created_wallets, added_addresses: how many this run created.
        written: ``address_txs`` rows inserted or changed by this run (0 when re-run).
    """

    users: int
    wallets: int
    addresses: int
    transactions: int
    created_users: int
    created_wallets: int
    added_addresses: int
    written: int


def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


def _btc_block_time(height: int) -> datetime:
    return _BTC_EPOCH + timedelta(seconds=600 * (height - _BTC_START_HEIGHT))


def _eth_block_time(height: int) -> datetime:
    return _ETH_EPOCH + timedelta(seconds=12 * (height - _ETH_START_HEIGHT))


def _external_btc(rng: random.Random) -> str:
    address = address_of_script(b"\x00\x14" + rng.randbytes(20), BTC_NETWORK)
    assert address is not None
    return address


def _external_eth(rng: random.Random) -> str:
    return str(Account.from_key(rng.randbytes(32)).address)


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` positive amounts (fewer if ``total`` is too small)."""
    parts = max(1, min(parts, total))
    cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
    bounds = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(bounds)]


def btc_history(address: str, count: int, seed: int) -> list[AddressTx]:
    """``count`` plausible transactions of a regtest P2WPKH ``address`` (deterministic)."""
    rng = random.Random(_digest(seed, "BTC", address))  # noqa: S311 - reproducible demo data, not secrets
    txs: list[AddressTx] = []
    balance = 0
    height = _BTC_START_HEIGHT + rng.randint(0, 50)
    unconfirmed_tail = rng.random() < 0.3
    for n in range(count):
        height += rng.randint(1, 30)
        confirmed = not (unconfirmed_tail and n == count - 1)
        fee = rng.randint(150, 600) * rng.choice((1, 2, 5, 10))
        kind = "in" if balance < 50_000 + fee else rng.choices(("in", "out", "self"), (5, 4, 1))[0]
        if kind == "in":
            amount = rng.randint(10_000, 5 * 10**8)
            senders = [_external_btc(rng) for _ in range(rng.randint(1, 2))]
            change = rng.randint(0, 2 * 10**8)
            funded = _split(rng, amount + change + fee, len(senders))
            inputs = tuple(Leg(i, a, v, "BTC") for i, (a, v) in enumerate(zip(senders, funded, strict=False)))
            mine = rng.randrange(2) if change else 0
            outs: list[Leg] = [Leg(mine, address, amount, "BTC")]
            if change:
                outs.append(Leg(1 - mine, senders[0], change, "BTC"))
            net = amount
        else:
            spent = _split(rng, balance, rng.randint(1, 3))
            inputs = tuple(Leg(i, address, v, "BTC") for i, v in enumerate(spent))
            if kind == "out":
                payment = rng.randint(10_000, balance - fee)
                back = balance - payment - fee
                outs = [Leg(0, _external_btc(rng), payment, "BTC")]
                if back:
                    outs.append(Leg(1, address, back, "BTC"))
                net = -(payment + fee)
            else:  # consolidation into the same address
                outs = [Leg(0, address, balance - fee, "BTC")]
                net = -fee
        balance += net
        txs.append(
            AddressTx(
                chain="BTC",
                address=address,
                txid=_digest(seed, "btc-tx", address, n),
                inputs=inputs,
                outputs=tuple(sorted(outs, key=lambda leg: leg.index)),
                net=net,
                asset="BTC",
                fee=fee,
                block_height=height if confirmed else None,
                block_hash=_digest("btc-block", height)[:64] if confirmed else None,
                block_time=_btc_block_time(height) if confirmed else None,
            )
        )
    return txs


def eth_history(address: str, count: int, seed: int) -> list[AddressTx]:
    """``count`` plausible ETH transfers of ``address`` (EIP-55; deterministic)."""
    rng = random.Random(_digest(seed, "ETH", address))  # noqa: S311 - reproducible demo data, not secrets
    txs: list[AddressTx] = []
    balance = 0
    height = _ETH_START_HEIGHT + rng.randint(0, 5_000)
    unconfirmed_tail = rng.random() < 0.3
    for n in range(count):
        height += rng.randint(1, 2_000)
        confirmed = not (unconfirmed_tail and n == count - 1)
        fee = 21_000 * rng.randint(5, 60) * _GWEI
        if balance < 10**16 + fee or rng.random() < 0.5:
            value = rng.randint(10**15, 5 * 10**18)
            sender = _external_eth(rng)
            inputs, outputs = (Leg(0, sender, value, "ETH"),), (Leg(0, address, value, "ETH"),)
            net = value
        else:
            value = rng.randint(10**15, balance - fee)
            inputs, outputs = (Leg(0, address, value, "ETH"),), (Leg(0, _external_eth(rng), value, "ETH"),)
            net = -(value + fee)
        balance += net
        txs.append(
            AddressTx(
                chain="ETH",
                address=address,
                txid="0x" + _digest(seed, "eth-tx", address, n),
                inputs=inputs,
                outputs=outputs,
                net=net,
                asset="ETH",
                fee=fee,
                block_height=height if confirmed else None,
                block_hash="0x" + _digest("eth-block", height) if confirmed else None,
                block_time=_eth_block_time(height) if confirmed else None,
            )
        )
    return txs


async def _get_or_create_user(engine: AsyncEngine, name: str) -> tuple[int, bool]:
    async with engine.connect() as conn:
        found = (await conn.execute(select(users.c.id).where(users.c.name == name))).scalar_one_or_none()
    if found is not None:
        return int(found), False
    try:
        return (await create_user(engine, name)).id, True
    except AlreadyExists:  # created concurrently
        async with engine.connect() as conn:
            return int((await conn.execute(select(users.c.id).where(users.c.name == name))).scalar_one()), False


async def _get_or_create_wallet(engine: AsyncEngine, user_id: int, name: str) -> tuple[int, bool]:
    where = (wallets.c.user_id == user_id, wallets.c.name == name)
    async with engine.connect() as conn:
        found = (await conn.execute(select(wallets.c.id).where(*where))).scalar_one_or_none()
    if found is not None:
        return int(found), False
    try:
        return int((await create_wallet(engine, user_id, name))["id"]), True
    except AlreadyExists:
        async with engine.connect() as conn:
            return int((await conn.execute(select(wallets.c.id).where(*where))).scalar_one()), False


async def generate_fixtures(
    engine: AsyncEngine,
    *,
    users: int = 3,
    wallets_per_user: int = 2,
    addresses_per_wallet: int = 5,
    txs_per_address: int = 50,
    seed: int = 1,
) -> FixtureSummary:
    """Fill the database with demo users, wallets, addresses and history (idempotent).

    Address ``k`` of a wallet is Bitcoin when ``k`` is even and Ethereum when odd; the key
    index is global across wallets, so no two fixture addresses coincide.
    """
    keyring = Bip84Keyring(FIXTURE_MNEMONIC, BTC_NETWORK)
    Account.enable_unaudited_hdwallet_features()
    created_users = created_wallets = added = written = n_txs = 0
    btc_index = eth_index = 0
    for u in range(users):
        user_id, new_user = await _get_or_create_user(engine, f"demo-user-{u + 1}")
        created_users += new_user
        for w in range(wallets_per_user):
            wallet_id, new_wallet = await _get_or_create_wallet(engine, user_id, f"demo-wallet-{w + 1}")
            created_wallets += new_wallet
            by_chain: dict[str, list[str]] = {"BTC": [], "ETH": []}
            for k in range(addresses_per_wallet):
                if k % 2 == 0:
                    by_chain["BTC"].append(keyring.address(0, btc_index))
                    btc_index += 1
                else:
                    path = f"m/44'/60'/0'/0/{eth_index}"
                    by_chain["ETH"].append(str(Account.from_mnemonic(FIXTURE_MNEMONIC, account_path=path).address))
                    eth_index += 1
            for chain, addresses in by_chain.items():
                if not addresses:
                    continue
                result = await import_addresses(engine, wallet_id, chain, addresses, bitcoin_network=BTC_NETWORK)
                added += len(result.added)
                history = btc_history if chain == "BTC" else eth_history
                async with engine.begin() as conn:
                    for address in addresses:
                        txs = history(address, txs_per_address, seed)
                        n_txs += len(txs)
                        changed = await store.upsert_address_txs(conn, txs)
                        has_balance = (
                            await conn.execute(
                                select(func.count())
                                .select_from(address_balances)
                                .where(address_balances.c.chain == chain, address_balances.c.address == address)
                            )
                        ).scalar_one()
                        if changed or (txs and not has_balance):
                            await store.recompute_balance(conn, chain, address)
                        written += changed
                        tip = max((t.block_height for t in txs if t.block_height is not None), default=None)
                        await conn.execute(
                            update(wallet_addresses)
                            .where(
                                wallet_addresses.c.wallet_id == wallet_id,
                                wallet_addresses.c.chain == chain,
                                wallet_addresses.c.address == address,
                                (wallet_addresses.c.status != "synced")
                                | wallet_addresses.c.synced_height.is_distinct_from(tip),
                            )
                            .values(status="synced", error=None, synced_height=tip, last_synced_at=func.now())
                        )
    return FixtureSummary(
        users=users,
        wallets=users * wallets_per_user,
        addresses=users * wallets_per_user * addresses_per_wallet,
        transactions=n_txs,
        created_users=created_users,
        created_wallets=created_wallets,
        added_addresses=added,
        written=written,
    )
