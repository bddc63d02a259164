"""Watch-only xpub / descriptor import: parsing and derivation against published vectors,
refusals, the import and gap-limit service on PostgreSQL, the API, and the gap limit end to end
on the bcoin regtest node.

Vectors, all from the BIP-39 test mnemonic "abandon abandon ... about" (no passphrase, master
fingerprint 73c5da0a):

* BIP-84 (its own test vectors): account zpub, receive 0 and 1, change 0.
* BIP-49: the mainnet ypub and first address (as published by SLIP-132 wallets and BIP-49
  tools), and BIP-49's own testnet vector (upub, 2Mww8dCY...).
* BIP-86 (its own test vectors): account xpub, receive 0 and 1, change 0.
* BIP-44: the account xpub and first address published for this mnemonic by BIP-44 tools.

Checksums: BIP-380's ``raw(deadbeef)#89f8spxm``, Bitcoin Core's ``descriptor_tests.cpp``
multisig ``#tjg09x5t``, and ``wpkh([2cbe2a6d/44'/0'/0']tpub.../0/*)#nhdxg96s`` (the public form
of a Core test descriptor, from rust-miniscript's tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from embit.descriptor import Descriptor  # type: ignore[import-untyped]
from embit.networks import NETWORKS  # type: ignore[import-untyped]
from eth_account import Account
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.api.app import create_app
from mixhouse.api.problems import PROBLEM_MEDIA_TYPE
from mixhouse.app.build import build_runtime
from mixhouse.config import Settings
from mixhouse.db.tables import address_balances, address_txs, wallet_addresses, wallet_xpubs
from mixhouse.errors import InvalidInput, NotFound
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.mixer.runtime import Runtime
from mixhouse.wallets import service, store, xpubs
from mixhouse.wallets.records import AddressTx, Leg
from mixhouse.wallets.sources.bitcoin_node import BitcoinNodeSource
from mixhouse.wallets.sync import sync_all
from tests.fixtures.bcoin import Bcoin

ABANDON = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"

BIP84_ZPUB = (
    "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"
)
BIP84_RECEIVE = ["bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"]
BIP84_CHANGE_0 = "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el"

BIP49_YPUB = (
    "ypub6Ww3ibxVfGzLrAH1PNcjyAWenMTbbAosGNB6VvmSEgytSER9azLDWCxoJwW7Ke7icmizBMXrzBx9979FfaHxHcrArf3zbeJJJUZPf663zsP"
)
BIP49_RECEIVE_0 = "37VucYSaXLCAsxYyAPfbSi9eh4iEcbShgf"
BIP49_UPUB = (
    "upub5EFU65HtV5TeiSHmZZm7FUffBGy8UKeqp7vw43jYbvZPpoVsgU93oac7Wk3u6moKegAEWtGNF8DehrnHtv21XXEMYRUocHqguyjknFHYfgY"
)
BIP49_TESTNET_RECEIVE_0 = "2Mww8dCYPUpKHofjgcXcBCEGmniw9CoaiD2"

BIP86_XPUB = (
    "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ"
)
BIP86_RECEIVE = [
    "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr",
    "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh",
]
BIP86_CHANGE_0 = "bc1p3qkhfews2uk44qtvauqyr2ttdsw7svhkl9nkm9s9c3x4ax5h60wqwruhk7"

BIP44_XPUB = (
    "xpub6BosfCnifzxcFwrSzQiqu2DBVTshkCXacvNsWGYJVVhhawA7d4R5WSWGFNbi8Aw6ZRc1brxMyWMzG3DSSSSoekkudhUd9yLb6qx39T9nMdj"
)
BIP44_RECEIVE_0 = "1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA"

CORE_TPUB = (
    "tpubDCvNhURocXGZsLNqWcqD3syHTqPXrMSTwi8feKVwAcpi29oYKsDD3Vex7x2TDneKMVN23RbLprfxB69v94iYqdaYHsVz3kPR37NQXeqouVz"
)
CORE_WPKH = f"wpkh([2cbe2a6d/44'/0'/0']{CORE_TPUB}/0/*)#nhdxg96s"
CORE_MULTISIG = (
    "sh(multi(2,[00000000/111'/222]xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALH"
    "Y2grBGRjaDMzQLcgJvLJuZZvRcEL,xpub68NZiKmJWnxxS6aaHmn81bvJeTESw724CRDs6HbuccFQN9Ku14VQrADWgqbhhTHBaohPX4CjNLf9f"
    "q9MYo6oDaPPLPxSb7gwQN3ih19Zm4Y/0))#tjg09x5t"
)
# Private keys: BIP-32 test vector 1's master xprv, a Core test tprv descriptor, a Core test WIF.
BIP32_XPRV = (
    "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi"
)
CORE_TPRV = (
    "tprv8ZgxMBicQKsPcwcD4gSnMti126ZiETsuX7qwrtMypr6FBwAP65puFn4v6c3jrN9VwtMRMph6nyT63NrfUL4C3nBzPcduzVSuHD7zbX2JKVc"
)
CORE_WIF = "L4rK1yDtCWekvXuE6oXD9jCYfFNV2cWRpVuPLBcCU2z8TrisoyY1"
ANY_XPUB = (
    "xpub68NZiKmJWnxxS6aaHmn81bvJeTESw724CRDs6HbuccFQN9Ku14VQrADWgqbhhTHBaohPX4CjNLf9fq9MYo6oDaPPLPxSb7gwQN3ih19Zm4Y"
)


def _regtest_keyring() -> Bip84Keyring:
    """A keyring of a fresh random mnemonic: its addresses are unused on the session's chain."""
    Account.enable_unaudited_hdwallet_features()
    return Bip84Keyring(Account.create_with_mnemonic()[1], "regtest")


# -- parsing and derivation: published vectors -------------------------------------------------


def test_bip84_zpub_vectors() -> None:
    key = xpubs.parse_watch_only(BIP84_ZPUB, network="mainnet")
    assert key.script_type == "wpkh"
    assert key.origin is None
    assert xpubs.derive_addresses(key, xpubs.RECEIVE, 0, 2) == BIP84_RECEIVE
    assert xpubs.derive_address(key, xpubs.CHANGE, 0) == BIP84_CHANGE_0
    # Canonical: the plain xpub (descriptors take no SLIP-132 version), both chains, checksummed.
    body, _, check = key.descriptor.partition("#")
    assert body == f"wpkh({key.xpub}/<0;1>/*)"
    assert key.xpub.startswith("xpub")
    assert check == xpubs.descriptor_checksum(body)


def test_bip49_ypub_and_upub_vectors() -> None:
    key = xpubs.parse_watch_only(BIP49_YPUB, network="mainnet")
    assert key.script_type == "sh-wpkh"
    assert xpubs.derive_address(key, 0, 0) == BIP49_RECEIVE_0
    assert key.descriptor.startswith("sh(wpkh(xpub")
    test_key = xpubs.parse_watch_only(BIP49_UPUB, network="testnet")
    assert xpubs.derive_address(test_key, 0, 0) == BIP49_TESTNET_RECEIVE_0
    assert test_key.descriptor.startswith("sh(wpkh(tpub")


def test_bip86_taproot_vectors() -> None:
    key = xpubs.parse_watch_only(f"tr([73c5da0a/86'/0'/0']{BIP86_XPUB}/0/*)", network="mainnet")
    assert key.script_type == "tr"
    assert key.origin == "73c5da0a/86h/0h/0h"
    assert xpubs.derive_addresses(key, 0, 0, 2) == BIP86_RECEIVE
    assert xpubs.derive_address(key, 1, 0) == BIP86_CHANGE_0


def test_bip44_xpub_is_p2pkh() -> None:
    key = xpubs.parse_watch_only(BIP44_XPUB, network="mainnet")
    assert key.script_type == "pkh"
    assert xpubs.derive_address(key, 0, 0) == BIP44_RECEIVE_0
    assert key.descriptor == f"pkh({BIP44_XPUB}/<0;1>/*)#{xpubs.descriptor_checksum(f'pkh({BIP44_XPUB}/<0;1>/*)')}"


def test_checksums() -> None:
    assert xpubs.descriptor_checksum("raw(deadbeef)") == "89f8spxm"  # BIP-380
    assert xpubs.descriptor_checksum(CORE_MULTISIG.partition("#")[0]) == "tjg09x5t"  # Bitcoin Core
    # A descriptor with a valid checksum is accepted; its canonical form gets a new checksum.
    key = xpubs.parse_watch_only(CORE_WPKH, network="testnet")
    canonical = f"wpkh([2cbe2a6d/44h/0h/0h]{CORE_TPUB}/<0;1>/*)"
    assert key.descriptor == f"{canonical}#{xpubs.descriptor_checksum(canonical)}"


def test_every_form_of_one_account_has_one_canonical_descriptor() -> None:
    origin = "[2cbe2a6d/44'/0'/0']"
    forms = [
        CORE_WPKH,
        f"wpkh({origin}{CORE_TPUB}/1/*)",
        f"wpkh({origin}{CORE_TPUB}/<0;1>/*)",
        f"wpkh({origin}{CORE_TPUB})",
        f"  wpkh([2CBE2A6D/44h/0H/0h]{CORE_TPUB}/0/*)\n",
    ]
    keys = [xpubs.parse_watch_only(form, network="testnet") for form in forms]
    assert {k.descriptor for k in keys} == {keys[0].descriptor}
    # Without the origin: another descriptor, the same addresses (the same identity).
    bare = xpubs.parse_watch_only(f"wpkh({CORE_TPUB})", network="testnet")
    assert bare.descriptor != keys[0].descriptor
    assert bare.identity == keys[0].identity
    # The canonical form parses back to itself (it is what the database stores).
    assert xpubs.parse_watch_only(keys[0].descriptor, network="testnet") == keys[0]


@pytest.mark.parametrize(
    ("descriptor", "network"),
    [
        (f"pkh({ANY_XPUB}/<0;1>/*)", "mainnet"),
        (f"sh(wpkh({ANY_XPUB}/<0;1>/*))", "mainnet"),
        (f"wpkh({ANY_XPUB}/<0;1>/*)", "mainnet"),
        (f"tr({ANY_XPUB}/<0;1>/*)", "mainnet"),
        (f"wpkh([2cbe2a6d/44h/0h/0h]{CORE_TPUB}/<0;1>/*)", "testnet"),
    ],
)
def test_derivation_agrees_with_embit_descriptors(descriptor: str, network: str) -> None:
    """Our per-branch derivation and address encoding against embit's own descriptor code."""
    key = xpubs.parse_watch_only(descriptor, network=network)
    reference = Descriptor.from_string(key.descriptor.partition("#")[0])
    embit_net = NETWORKS["main" if network == "mainnet" else "test"]
    for branch in (0, 1):
        expected = [reference.derive(i, branch_index=branch).address(embit_net) for i in range(5)]
        assert xpubs.derive_addresses(key, branch, 0, 5) == expected


def test_bip84_keyring_descriptors_import_the_keyring_addresses() -> None:
    keyring = _regtest_keyring()
    from_vpub = xpubs.parse_watch_only(keyring.account_xpub(), network="regtest")
    from_receive = xpubs.parse_watch_only(keyring.descriptor(0), network="regtest")
    from_change = xpubs.parse_watch_only(keyring.descriptor(1), network="regtest")
    assert from_receive.descriptor == from_change.descriptor
    assert from_vpub.identity == from_receive.identity
    for branch in (0, 1):
        expected = [keyring.address(branch, i) for i in range(3)]
        assert xpubs.derive_addresses(from_receive, branch, 0, 3) == expected
        assert xpubs.derive_addresses(from_vpub, branch, 0, 3) == expected
    assert expected[0].startswith("bcrt1q")


def test_derivation_bounds() -> None:
    key = xpubs.parse_watch_only(BIP84_ZPUB, network="mainnet")
    assert xpubs.derive_addresses(key, 0, 3, 3) == []
    for branch, start, stop in ((2, 0, 1), (True, 0, 1), (0, -1, 1), (0, 2, 1), (0, 0, 2**31 + 1)):
        with pytest.raises(ValueError, match=r"branch|indexes"):
            xpubs.derive_addresses(key, branch, start, stop)


# -- refusals --------------------------------------------------------------------------------

PRIVATE = "watch-only: send the extended public key, never a private key"
ZPUB_BODY = BIP84_ZPUB

# (input, network, words the message must hold)
REFUSALS: list[tuple[str, str, str]] = [
    (BIP32_XPRV, "mainnet", PRIVATE),
    (f"wpkh({BIP32_XPRV}/0/*)", "mainnet", PRIVATE),
    (f"wpkh({CORE_TPRV}/44'/0'/0'/0/*)", "testnet", PRIVATE),
    (BIP32_XPRV[:-1] + "x", "mainnet", PRIVATE),  # a mistyped xprv is still a private key
    (CORE_WIF, "mainnet", PRIVATE),
    (f"wpkh({CORE_WIF})", "mainnet", PRIVATE),
    (f"wsh(multi(1,{ANY_XPUB},{BIP32_XPRV}))", "mainnet", PRIVATE),  # named before "multisig"
    (f"wpkh({ANY_XPUB}/0h/*)", "mainnet", "hardened"),
    (f"wpkh({ANY_XPUB}/0/*h)", "mainnet", "hardened"),
    (f"pkh({ANY_XPUB}/1'/*)", "mainnet", "hardened"),
    (BIP84_ZPUB, "regtest", "mainnet key, but this server runs regtest"),
    (BIP84_ZPUB, "testnet", "mainnet key"),
    (CORE_WPKH, "mainnet", "testnet/signet/regtest key, but this server runs mainnet"),
    (CORE_MULTISIG, "mainnet", "multisig"),
    (f"wsh(pkh({ANY_XPUB}))", "mainnet", "unsupported descriptor wsh(...)"),
    (f"tr({ANY_XPUB},pk({ANY_XPUB}))", "mainnet", "script trees"),
    ("addr(bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu)", "mainnet", "unsupported descriptor addr(...)"),
    ("wpkh(03a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd)", "mainnet", "single public key"),
    (CORE_WPKH[:-1] + "t", "testnet", "checksum does not match"),
    (CORE_WPKH.replace("/0/*", "/1/*"), "testnet", "checksum does not match"),
    (CORE_WPKH[:-1], "testnet", "8 characters"),
    (CORE_WPKH + "#qqqqqqqq", "testnet", "at most one '#'"),
    (f"wpkh({BIP84_ZPUB})", "mainnet", "plain xpub/tpub"),
    (f"wpkh({ANY_XPUB}/2/*)", "mainnet", "unsupported derivation"),
    (f"wpkh({ANY_XPUB}/0/0/*)", "mainnet", "unsupported derivation"),
    (f"wpkh([zz]{ANY_XPUB})", "mainnet", "key origin"),
    (ZPUB_BODY[:-1] + "t", "mainnet", "base58check"),
    ("wpkh(Ü)", "mainnet", "character"),
    ("hello", "mainnet", "base58check"),
    ("   ", "mainnet", "empty"),
    ("x" * 2001, "mainnet", "far shorter"),
]


@pytest.mark.parametrize(("text", "network", "words"), REFUSALS)
def test_refusals_say_why(text: str, network: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        xpubs.parse_watch_only(text, network=network)
    message = str(caught.value)
    assert words in message
    # Nothing of the input is echoed (it may hold a secret).
    assert BIP32_XPRV[5:30] not in message
    assert CORE_WIF[5:30] not in message


def test_a_private_key_is_never_parsed_into_a_key() -> None:
    """The private-key check runs before anything else: even inside otherwise valid input."""
    for text in (CORE_TPRV, f"{CORE_TPRV}#abcdefgh", f"[2cbe2a6d/44h]{CORE_TPRV}"):
        with pytest.raises(InvalidInput, match="never a private key"):
            xpubs.parse_watch_only(text, network="testnet")


# -- the service on PostgreSQL ---------------------------------------------------------------


async def _wallet(engine: AsyncEngine, name: str = "alice") -> int:
    user = await service.create_user(engine, name)
    return int((await service.create_wallet(engine, user.id, "main"))["id"])


async def _counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        keys = (await conn.execute(select(func.count()).select_from(wallet_xpubs))).scalar_one()
        addresses = (await conn.execute(select(func.count()).select_from(wallet_addresses))).scalar_one()
    return int(keys), int(addresses)


async def test_import_stores_the_key_and_the_first_gap_of_each_branch(engine: AsyncEngine) -> None:
    wallet = await _wallet(engine)
    result = await service.import_xpub(engine, wallet, BIP84_ZPUB, gap_limit=20, bitcoin_network="mainnet")
    assert result.created
    assert (result.script_type, result.gap_limit) == ("wpkh", 20)
    assert [(a.branch, a.index) for a in result.addresses] == [(b, i) for b in (0, 1) for i in range(20)]
    assert [a.address for a in result.addresses[:2]] == BIP84_RECEIVE
    assert result.addresses[20].address == BIP84_CHANGE_0
    rows = await service.list_wallet_addresses(engine, wallet)
    assert len(rows) == 40
    assert {(r["chain"], r["status"], r["xpub_id"]) for r in rows} == {("BTC", "pending", result.id)}
    assert (rows[0]["address"], rows[0]["branch"], rows[0]["derivation_index"]) == (BIP84_RECEIVE[0], 0, 0)
    [listed] = await service.list_xpubs(engine, wallet)
    assert listed["descriptor"] == result.descriptor
    assert listed["branches"][0] == service.BranchStats(derived=20, last_used=None, confirmed=0, unconfirmed=0)
    assert listed["branches"][1].derived == 20


async def test_import_is_idempotent_across_forms_of_one_key(engine: AsyncEngine) -> None:
    wallet = await _wallet(engine)
    keyring = Bip84Keyring(ABANDON, "mainnet")
    first = await service.import_xpub(engine, wallet, keyring.descriptor(0), gap_limit=5, bitcoin_network="mainnet")
    assert first.descriptor.startswith("wpkh([73c5da0a/84h/0h/0h]xpub")
    assert await _counts(engine) == (1, 10)
    for again in (keyring.descriptor(0), keyring.descriptor(1), keyring.account_xpub(), BIP84_ZPUB):
        result = await service.import_xpub(engine, wallet, again, gap_limit=7, bitcoin_network="mainnet")
        assert (result.created, result.id, result.gap_limit, result.descriptor) == (
            False,
            first.id,
            5,
            first.descriptor,
        )
        assert result.addresses == first.addresses
    assert await _counts(engine) == (1, 10)
    # Another wallet may import the same key: its own rows.
    other = await _wallet(engine, "bob")
    assert (await service.import_xpub(engine, other, BIP84_ZPUB, gap_limit=5, bitcoin_network="mainnet")).created
    assert await _counts(engine) == (2, 20)


async def test_an_address_imported_by_hand_is_attached(engine: AsyncEngine) -> None:
    wallet = await _wallet(engine)
    await service.import_addresses(engine, wallet, "BTC", [BIP84_RECEIVE[1], BIP84_CHANGE_0], bitcoin_network="mainnet")
    before = {r["address"]: r["id"] for r in await service.list_wallet_addresses(engine, wallet)}
    result = await service.import_xpub(engine, wallet, BIP84_ZPUB, gap_limit=3, bitcoin_network="mainnet")
    rows = {r["address"]: r for r in await service.list_wallet_addresses(engine, wallet)}
    assert len(rows) == 6
    assert (
        rows[BIP84_RECEIVE[1]]["id"],
        rows[BIP84_RECEIVE[1]]["branch"],
        rows[BIP84_RECEIVE[1]]["derivation_index"],
    ) == (
        before[BIP84_RECEIVE[1]],
        0,
        1,
    )
    assert rows[BIP84_CHANGE_0]["id"] == before[BIP84_CHANGE_0]
    assert {r["xpub_id"] for r in rows.values()} == {result.id}
    assert len(result.addresses) == 6


async def test_refused_imports_write_nothing(engine: AsyncEngine) -> None:
    wallet = await _wallet(engine)
    for text, network, words in REFUSALS:
        with pytest.raises(InvalidInput) as caught:
            await service.import_xpub(engine, wallet, text, bitcoin_network=network)
        assert words in str(caught.value)
    for gap in (0, 1001, -5):
        with pytest.raises(InvalidInput, match="gap limit"):
            await service.import_xpub(engine, wallet, BIP84_ZPUB, gap_limit=gap, bitcoin_network="mainnet")
    with pytest.raises(NotFound):
        await service.import_xpub(engine, wallet + 1000, BIP84_ZPUB, bitcoin_network="mainnet")
    assert await _counts(engine) == (0, 0)


def _payment(address: str, txid: str, amount: int, height: int | None = 100) -> AddressTx:
    return AddressTx(
        chain="BTC",
        address=address,
        txid=txid,
        inputs=(Leg(0, "bc1qsender", amount + 200, "BTC"),),
        outputs=(Leg(0, address, amount, "BTC"),),
        net=amount,
        asset="BTC",
        fee=200,
        block_height=height,
        block_hash=None if height is None else f"hash{height}",
        block_time=None,
    )


async def _receive(engine: AsyncEngine, tx: AddressTx) -> None:
    async with engine.begin() as conn:
        await store.upsert_address_txs(conn, [tx])
        await store.recompute_balance(conn, tx.chain, tx.address)


async def test_extend_gap_follows_the_last_used_index(engine: AsyncEngine) -> None:
    wallet = await _wallet(engine)
    result = await service.import_xpub(engine, wallet, BIP84_ZPUB, gap_limit=5, bitcoin_network="mainnet")
    key = xpubs.parse_watch_only(BIP84_ZPUB, network="mainnet")
    assert await service.extend_gap(engine, bitcoin_network="mainnet") == []  # nothing used yet
    # Receive index 3 used (confirmed), change index 1 used (unconfirmed).
    await _receive(engine, _payment(xpubs.derive_address(key, 0, 3), "aa" * 32, 7_000))
    await _receive(engine, _payment(xpubs.derive_address(key, 1, 1), "bb" * 32, 1_500, height=None))
    added = await service.extend_gap(engine, bitcoin_network="mainnet", wallet_id=wallet)
    assert [(a.branch, a.index) for a in added] == [(0, 5), (0, 6), (0, 7), (0, 8), (1, 5), (1, 6)]
    assert all(a.address == xpubs.derive_address(key, a.branch, a.index) for a in added)
    assert {a.xpub_id for a in added} == {result.id}
    assert await service.extend_gap(engine, bitcoin_network="mainnet") == []
    [listed] = await service.list_xpubs(engine, wallet)
    assert listed["branches"][0] == service.BranchStats(derived=9, last_used=3, confirmed=7_000, unconfirmed=0)
    assert listed["branches"][1] == service.BranchStats(derived=7, last_used=1, confirmed=0, unconfirmed=1_500)
    assert (listed["confirmed"], listed["unconfirmed"]) == (7_000, 1_500)
    # Another wallet's extension leaves this one alone.
    assert await service.extend_gap(engine, bitcoin_network="mainnet", wallet_id=wallet + 1) == []


async def test_the_schema_keeps_derivation_columns_together(engine: AsyncEngine) -> None:
    wallet = await _wallet(engine)
    result = await service.import_xpub(engine, wallet, BIP84_ZPUB, gap_limit=1, bitcoin_network="mainnet")
    bad_rows: list[dict[str, Any]] = [
        {"xpub_id": result.id},  # branch and index missing
        {"branch": 0, "derivation_index": 4},  # no xpub
        {"xpub_id": result.id, "branch": 2, "derivation_index": 4},
        {"xpub_id": result.id, "branch": 0, "derivation_index": 0},  # slot taken
    ]

    async def insert(table: Any, values: dict[str, Any]) -> None:
        async with engine.begin() as conn:
            await conn.execute(table.insert().values(**values))

    for i, extra in enumerate(bad_rows):
        with pytest.raises(IntegrityError):
            await insert(wallet_addresses, {"wallet_id": wallet, "chain": "BTC", "address": f"bc1qfake{i}", **extra})
    with pytest.raises(IntegrityError):
        await insert(wallet_xpubs, {"wallet_id": wallet, "descriptor": "x", "script_type": "wsh", "gap_limit": 20})
    with pytest.raises(IntegrityError):
        await insert(wallet_xpubs, {"wallet_id": wallet, "descriptor": "y", "script_type": "wpkh", "gap_limit": 0})
    assert await _counts(engine) == (1, 2)


# -- the API ---------------------------------------------------------------------------------


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[Runtime]:
    settings = Settings(jobcoin_enabled=True, evm_enabled=False, database_url=database_url, bitcoin_network="regtest")
    runtime = build_runtime(settings, database_url, pool_size=2)
    yield runtime
    await runtime.aclose()
    await runtime.engine.dispose()


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert (body["status"], bool(body["title"]), bool(body["detail"])) == (status, True, True)
    return body


async def test_xpub_api(client: httpx.AsyncClient, rt: Runtime) -> None:
    alice = await service.create_user(rt.engine, "alice")
    bob = await service.create_user(rt.engine, "bob")
    _, alice_key = await service.create_api_key(rt.engine, alice.id)
    _, bob_key = await service.create_api_key(rt.engine, bob.id)
    auth = {"Authorization": f"Bearer {alice_key}"}
    wallet = (await client.post("/api/v1/wallets", json={"name": "hd"}, headers=auth)).json()["id"]
    path = f"/api/v1/wallets/{wallet}/xpubs"
    keyring = _regtest_keyring()

    # Refusals: problem documents, nothing written.
    body = _problem(await client.post(path, json={"descriptor": BIP84_ZPUB}, headers=auth), 422)
    assert "mainnet key, but this server runs regtest" in body["detail"]
    assert body["type"] == "urn:mixhouse:problem:invalid-input"
    body = _problem(await client.post(path, json={"descriptor": CORE_TPRV}, headers=auth), 422)
    assert PRIVATE in body["detail"]
    assert CORE_TPRV not in (await client.post(path, json={"descriptor": CORE_TPRV}, headers=auth)).text
    hardened = keyring.descriptor(0).partition("#")[0].replace("/0/*", "/0h/*")
    assert "hardened" in _problem(await client.post(path, json={"descriptor": hardened}, headers=auth), 422)["detail"]
    vpub = keyring.account_xpub()
    for bad_gap in (0, 1001, "20"):
        _problem(await client.post(path, json={"descriptor": vpub, "gap_limit": bad_gap}, headers=auth), 422)
    _problem(await client.post(path, json={"descriptor": vpub, "extra": 1}, headers=auth), 422)
    _problem(await client.post(path, content=b"{not json", headers=auth | {"content-type": "application/json"}), 400)
    _problem(await client.post(path, json={"descriptor": vpub}), 401)
    _problem(await client.post(path, json={"descriptor": vpub}, headers={"Authorization": f"Bearer {bob_key}"}), 404)
    _problem(await client.get(path, headers={"Authorization": f"Bearer {bob_key}"}), 404)
    _problem(await client.post("/api/v1/wallets/999999/xpubs", json={"descriptor": vpub}, headers=auth), 404)
    assert await _counts(rt.engine) == (0, 0)

    # Import: 201 with the canonical descriptor and the derived addresses.
    created = await client.post(path, json={"descriptor": vpub, "gap_limit": 3}, headers=auth)
    assert created.status_code == 201, created.text
    out = created.json()
    assert out["script_type"] == "wpkh"
    assert out["gap_limit"] == 3
    canonical = f"wpkh({keyring.account_xpub(slip132=False)}/<0;1>/*)"
    assert out["descriptor"] == f"{canonical}#{xpubs.descriptor_checksum(canonical)}"
    assert out["addresses"] == [
        {"branch": b, "index": i, "address": keyring.address(b, i)} for b in (0, 1) for i in range(3)
    ]
    # The same key set again (a descriptor of its change chain): 200, the stored one.
    again = await client.post(path, json={"descriptor": keyring.descriptor(1)}, headers=auth)
    assert again.status_code == 200, again.text
    assert again.json() == out

    listed = (await client.get(path, headers=auth)).json()["items"]
    assert [(x["id"], x["descriptor"], x["gap_limit"]) for x in listed] == [(out["id"], out["descriptor"], 3)]
    assert listed[0]["receive"] == {"derived": 3, "last_used_index": None, "confirmed": "0", "unconfirmed": "0"}
    assert (listed[0]["confirmed"], listed[0]["unconfirmed"]) == ("0", "0")
    addresses = (await client.get(f"/api/v1/wallets/{wallet}/addresses", headers=auth)).json()["items"]
    assert [(a["address"], a["xpub_id"], a["branch"], a["derivation_index"]) for a in addresses] == [
        (keyring.address(b, i), out["id"], b, i) for b in (0, 1) for i in range(3)
    ]
    # The admin-less owner sees them; the wallet's count includes them.
    assert (await client.get(f"/api/v1/wallets/{wallet}", headers=auth)).json()["address_count"] == 6


# -- the gap limit end to end on the regtest node ----------------------------------------------


async def test_sync_all_follows_the_gap_limit_on_a_real_node(engine: AsyncEngine, bcoin: Bcoin) -> None:
    keyring = _regtest_keyring()
    wallet = await _wallet(engine)
    imported = await service.import_xpub(engine, wallet, keyring.descriptor(0), gap_limit=20, bitcoin_network="regtest")
    assert len(imported.addresses) == 40
    # Receive 0, 19 (the last of the first gap), 35 (reachable only after 19 is seen), change 3.
    payments = {(0, 0): 110_000, (0, 19): 120_000, (0, 35): 135_000, (1, 3): 103_000}
    txids = {slot: await bcoin.fund(keyring.address(*slot), amount) for slot, amount in payments.items()}
    await bcoin.mine(1)
    rpc = bcoin.client()
    try:
        source = BitcoinNodeSource(rpc, network="regtest")
        results = await sync_all(engine, lambda chain: source if chain == "BTC" else None, bitcoin_network="regtest")
        assert {r.status for r in results} == {"synced"}
        async with engine.connect() as conn:
            found = {(r.address, r.txid, int(r.net)) for r in await conn.execute(select(address_txs))}
            balances = {
                r.address: (int(r.confirmed), int(r.unconfirmed))
                for r in await conn.execute(select(address_balances).where(address_balances.c.asset == "BTC"))
            }
        assert found == {(keyring.address(*slot), txids[slot], amount) for slot, amount in payments.items()}
        assert balances == {keyring.address(*slot): (amount, 0) for slot, amount in payments.items()}
        [listed] = await service.list_xpubs(engine, wallet)
        assert listed["branches"][0] == service.BranchStats(
            derived=35 + 20 + 1, last_used=35, confirmed=110_000 + 120_000 + 135_000, unconfirmed=0
        )
        assert listed["branches"][1] == service.BranchStats(derived=3 + 20 + 1, last_used=3, confirmed=103_000)
        addresses = await service.list_wallet_addresses(engine, wallet)
        expected = {(keyring.address(b, i), b, i) for b, n in ((0, 56), (1, 24)) for i in range(n)}
        assert {(a["address"], a["branch"], a["derivation_index"]) for a in addresses} == expected
        assert {a["status"] for a in addresses} == {"synced"}

        # A second run derives nothing: it only re-syncs what exists.
        again = await sync_all(engine, lambda chain: source, bitcoin_network="regtest")
        assert len(again) == len(addresses)
        assert len(await service.list_wallet_addresses(engine, wallet)) == len(addresses)
    finally:
        await rpc.aclose()
