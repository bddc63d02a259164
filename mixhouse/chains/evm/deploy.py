"""Deploying contracts and calling them on a dev chain, waiting for each receipt (demos, tests).

The OTC demo and the tests deploy the HTLC and ERC-20 test tokens on anvil, mint to their
holders and send one-off calls; each step is "sign with an :class:`EvmAdapter` key, broadcast,
wait for the receipt". These helpers are that, once: signed in the adapter's signing thread
(:meth:`EvmAdapter.prepare_contract_call_async`), nonce read from the node (``pending``), the
receipt polled until it appears. For dev chains: nothing here stores what it signs, so a
crash between signing and mining is the caller's to redo. Amounts are wei / token base units.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.errors import ChainError

# Gas limit of a deployment or call: the node's estimate times this, in percent (the state it
# is mined on can differ from the one it was estimated on).
GAS_MARGIN_PERCENT = 200
RECEIPT_TIMEOUT_SECONDS = 60.0
_RECEIPT_POLL_SECONDS = 0.02


def call_data(signature: str, types: list[str], values: list[Any]) -> bytes:
    """The calldata of ``signature`` (``"mint(address,uint256)"``) with ``values`` ABI-encoded
    as ``types``: the 4-byte selector, ``keccak256(signature)[:4]``, then the arguments."""
    return bytes(keccak(text=signature)[:4]) + abi_encode(types, values)


async def send_call(
    adapter: EvmAdapter,
    key_ref: str,
    *,
    to: str | None,
    data: bytes,
    value: int = 0,
    gas: int | None = None,
    check: bool = True,
    receipt_timeout: float = RECEIPT_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Sign a transaction from ``key_ref`` to ``to`` (``None``: deploy ``data`` as init code),
    broadcast it and wait for its receipt.

    Args:
        gas: the gas limit; ``None``: the node's estimate times :data:`GAS_MARGIN_PERCENT` %
            (an estimate refuses a call that would revert).
        check: raise if the transaction was mined and reverted (``status != 1``); ``False``
            returns the receipt of a revert as well.
        receipt_timeout: seconds to wait for the receipt.

    Returns:
        The receipt (``status``, ``contractAddress``, ``gasUsed``, ...).

    Raises:
        CallReverted: the estimate says it would revert (``gas=None``).
        ChainError: the node failed, the signer failed or timed out, the receipt did not come
            within ``receipt_timeout`` seconds, or (``check``) the transaction reverted.
    """
    sender = await adapter.key_address_async(key_ref)
    if gas is None:
        estimate = await adapter.estimate_gas(from_address=sender, to=to, data=data, value=value)
        gas = estimate * GAS_MARGIN_PERCENT // 100
    prepared = await adapter.prepare_contract_call_async(
        key_ref=key_ref,
        to=to,
        data=data,
        value=value,
        gas=gas,
        max_fee_per_gas=await adapter.gas_price(),
        nonce=await adapter.next_nonce(sender),
    )
    txid = str(prepared.txid)
    await adapter.broadcast(prepared)
    deadline = time.monotonic() + receipt_timeout
    while (receipt := await adapter.receipt(txid)) is None:
        if time.monotonic() > deadline:
            raise ChainError(f"{txid} was not mined within {receipt_timeout:g} s")
        await asyncio.sleep(_RECEIPT_POLL_SECONDS)
    if check and receipt["status"] != 1:
        raise ChainError(f"{txid} was mined and reverted")
    return dict(receipt)


async def deploy_contract(adapter: EvmAdapter, key_ref: str, bytecode: str | bytes) -> str:
    """Deploy ``bytecode`` (init code with any constructor arguments appended; ``0x`` hex or
    bytes) from ``key_ref``; returns the contract's checksummed address.

    Raises:
        ChainError, CallReverted: as :func:`send_call` (a reverted constructor included).
    """
    data = bytes.fromhex(bytecode.removeprefix("0x")) if isinstance(bytecode, str) else bytes(bytecode)
    receipt = await send_call(adapter, key_ref, to=None, data=data)
    return str(receipt["contractAddress"])


async def deploy_token(
    adapter: EvmAdapter,
    key_ref: str,
    bytecode: str | bytes,
    *,
    holders: Mapping[str, int],
    mint: bool = True,
) -> str:
    """Deploy an ERC-20 (EIP-20) from ``key_ref`` and give each holder its amount: by
    ``mint(address,uint256)`` (the test tokens, OpenZeppelin's), or by ``transfer`` from the
    deployer (``mint=False``: a token whose constructor gives the deployer its supply, like
    USDT's ``TetherToken``). Returns the token's address.

    Args:
        holders: address -> amount in the token's base units, each ``> 0``.

    Raises:
        ChainError, CallReverted: as :func:`send_call` (a mint or transfer that reverts).
    """
    token = await deploy_contract(adapter, key_ref, bytecode)
    signature = "mint(address,uint256)" if mint else "transfer(address,uint256)"
    for holder, amount in holders.items():
        await send_call(adapter, key_ref, to=token, data=call_data(signature, ["address", "uint256"], [holder, amount]))
    return token
