"""End to end: a USDT mix (TetherToken's bytecode on anvil) with every signature made by a
SoftHSM2 token (MIXHOUSE_SIGNER=pkcs11): the sweep by the token's deposit key, the gas top-up and
every payout by the token's pool key. The mnemonic is not a valid BIP-39 phrase, so no software
key could be derived: every transaction the chain accepted was signed inside the token.
"""

from __future__ import annotations

import random
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse import audit
from mixhouse.app.build import build_runtime
from mixhouse.app.worker import run_worker
from mixhouse.chains.evm import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.db.tables import audit_log
from mixhouse.keys.audited import unwrap
from mixhouse.keys.hd import evm_address
from mixhouse.keys.hsm import Pkcs11Signer
from mixhouse.mixer.mixes import MixRequest, create_mix, get_mix
from mixhouse.mixer.reconcile import reconcile
from mixhouse.money import Asset
from mixhouse.servers import background
from tests.e2e import wait_for_payouts
from tests.fixtures.anvil import USDT, Anvil, deploy_token
from tests.fixtures.softhsm import SoftHsm
from tests.test_e2e_hsm import _audited
from tests.test_e2e_token import _keep_mining, token_settings

ETHER = 10**18
NOT_A_MNEMONIC = "no software keys in this run"


async def test_usdt_mix_with_every_signature_from_softhsm(
    database_url: str, engine: AsyncEngine, anvil: Anvil, evm_adapter: EvmAdapter, softhsm: SoftHsm
) -> None:
    world = await deploy_token(anvil, evm_adapter, "usdt")
    hsm = softhsm.settings(f"e2e-token-{uuid.uuid4().hex[:12]}/")
    rt = build_runtime(token_settings(database_url, anvil, NOT_A_MNEMONIC, world, "USDTH", **hsm), database_url)
    rt.rng = random.Random(23)
    token = rt.adapter("USDTH")
    assert isinstance(token, Erc20Adapter)
    key_holder = unwrap(token.evm._signer)
    assert isinstance(key_holder, Pkcs11Signer)
    withdrawals = [token.normalize_address("0x" + f"{random.Random(300 + i).getrandbits(160):040x}") for i in range(3)]
    try:
        # The pool (and gas tank) is the token's key: its address comes from the token's public key.
        assert token.pool_address == evm_address(key_holder.public_key(token.pool_key))
        await anvil.fund(token.pool_address, ETHER)
        mix = await create_mix(rt, MixRequest("USDTH", withdrawals, 0, 3))
        deposit = 700 * USDT
        await world.pay(mix["deposit_address"], deposit)
        async with background(_keep_mining(anvil)), background(run_worker(rt, database_url, concurrency=4)):
            view = await wait_for_payouts(rt, mix["id"], within=120)
        dep = view["deposits"][0]
        payouts = [s for s in view["sends"] if s["kind"] == "payout"]
        sweep = next(s for s in view["sends"] if s["kind"] == "sweep")
        gas = [s for s in view["sends"] if s["kind"] == "gas"]
        assert len(gas) == 1
        # Exact amounts on chain: each withdrawal address's balanceOf is what the status says.
        for address in withdrawals:
            said = sum(p["amount"] for p in payouts if p["to_address"] == address)
            assert said > 0
            assert await token.balance(address) == said
        assert sum(p["amount"] for p in payouts) == dep["payout_total"]
        assert await token.balance(mix["deposit_address"]) == 0
        # The chain's view: the sweep left the token's deposit key; top-up and payouts its pool key.
        index = next(i for i in range(64) if token.deposit_address(i) == mix["deposit_address"])
        deposit_key = evm_address(key_holder.public_key(token.deposit_path(index)))
        sweep_tx = await anvil.rpc("eth_getTransactionByHash", [sweep["txid"]])
        assert sweep_tx["from"].lower() == deposit_key.lower() == mix["deposit_address"].lower()
        for send in [*payouts, *gas]:
            tx = await anvil.rpc("eth_getTransactionByHash", [send["txid"]])
            assert tx["from"].lower() == token.pool_address.lower()
        result = await reconcile(rt, Asset("USDTH"))
        assert result.ok, result.detail()
        assert (await get_mix(rt, mix["id"]))["mix"]["state"] == "completed"
        async with engine.connect() as conn:
            assert await audit.verify(conn) > 0
            used = (await conn.execute(select(audit_log).where(audit_log.c.action == "key.used"))).all()
        # One key use per send, each by the PKCS#11 token.
        by_send = {row.entity_id: row.details["signer"] for row in used if row.entity_type == "send"}
        assert by_send == {str(s["id"]): "pkcs11" for s in view["sends"]}
        assert _audited(token.evm._signer).unrecorded == 0  # no signature outside a recorded send
    finally:
        await rt.aclose()
        await rt.engine.dispose()
        key_holder.close()
