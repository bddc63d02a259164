"""Building a payout transaction from pool coins: coin selection, change, signing.

Pure (no I/O): the adapter's :meth:`~mixhouse.chains.bitcoin.adapter.BitcoinAdapter.prepare_utxo_send`
calls it with the coins the mixer locked. The paying mix's own deposit is never an input
(``exclude_owner``); the change goes to a fresh pool key on the internal chain
(``m/84'/c'/0'/1/change_index``), and the outputs are shuffled so that the change is not
always last (an ordering that would mark it as change).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mixhouse.chains.base import PoolCoin, PreparedSend, UtxoSpend
from mixhouse.chains.bitcoin.coinselect import Coin, dust_threshold, estimate_vsize, output_vbytes, select_coins
from mixhouse.chains.bitcoin.networks import script_pubkey
from mixhouse.chains.bitcoin.txbuild import sign_tx
from mixhouse.errors import InvalidAmount
from mixhouse.keys.bip84 import coin_key_path, p2wpkh_address
from mixhouse.keys.signer import Signer

POOL_CHAIN = 1  # BIP-32 "change" level of pool keys (top-up address and change)


def build_pool_spend(
    *,
    signer: Signer,
    network: str,
    coins: Sequence[PoolCoin],
    exclude_owner: str | None,
    payments: Sequence[tuple[str, int]],
    change_index: int,
    fee_rate: int,
    max_fee: int,
    rng_seed: int,
    dust: int = 546,
    change_chain: int = POOL_CHAIN,
) -> UtxoSpend:
    """Select, build and sign.

    Args:
        signer: holds the key of every pool coin, by BIP-84 path (:func:`coin_key_path` of its
            ``key_chain``: any pool generation's coins sign).
        network: ``"mainnet"``, ``"testnet"``, ``"signet"`` or ``"regtest"``.
        coins: candidate pool coins.
        exclude_owner: the paying mix (its own deposit is never spent).
        payments: ``(address, satoshi)`` outputs.
        change_index: index of the change key on the pool chain.
        fee_rate: sat/vB.
        max_fee: satoshi cap on the miner fee.
        rng_seed: seed of tie-breaking and output order (the send id: a retry of the same send
            signs the same transaction; a batch of several payouts passes a fresh secret seed).
        dust: smallest change worth an output, satoshi.
        change_chain: stored ``key_chain`` of the change key (``2g + 1`` for pool generation
            ``g``, :func:`mixhouse.keys.bip84.pool_key_chain`; 1 = generation 0); the
            returned ``from_address`` is key 0 of that chain.

    Returns:
        The :class:`UtxoSpend` (signed raw transaction, txid, inputs, change output, fee).

    Raises:
        SignerError: the signer failed (nothing was signed; retry later).
        InsufficientFunds: the eligible coins cannot cover payments and fee.
        FeeTooHigh: the fee would exceed ``max_fee``.
        InvalidAmount: no payments, or a payment below dust.
    """
    if not payments:
        raise InvalidAmount("a transaction needs at least one payment")
    rng = random.Random(rng_seed)  # noqa: S311 - deterministic per send by design, not a secret
    by_outpoint = {(c.txid, c.vout): c for c in coins}
    # The fee is estimated from the real output sizes (a P2TR or P2WSH output is 43 vB, not 31).
    payment_vbytes = tuple(output_vbytes(script_pubkey(address, network)) for address, _ in payments)
    selection = select_coins(
        coins=[Coin(c.txid, c.vout, c.amount, c.address, c.owner) for c in coins],
        targets=sum(amount for _, amount in payments),
        fee_rate=fee_rate,
        exclude_owner=exclude_owner,
        n_outputs=len(payments),
        outputs_vbytes=sum(payment_vbytes),
        max_fee=max_fee,
        rng=rng,
        dust=dust,
    )
    chosen = [by_outpoint[(coin.txid, coin.vout)] for coin in selection.inputs]
    signing = [
        (Coin(c.txid, c.vout, c.amount, c.address, c.owner), coin_key_path(network, c.key_chain, c.key_index))
        for c in chosen
    ]
    change_address = p2wpkh_address(signer.public_key(coin_key_path(network, change_chain, change_index)), network)
    outputs = list(payments)
    if selection.change:
        outputs.append((change_address, selection.change))
    rng.shuffle(outputs)
    signed = sign_tx(inputs=signing, signer=signer, outputs=outputs, network=network)
    change_vout = next(
        (i for i, (address, _) in enumerate(outputs) if selection.change and address == change_address), None
    )
    first_address, first_amount = payments[0]
    return UtxoSpend(
        prepared=PreparedSend(
            from_address=p2wpkh_address(signer.public_key(coin_key_path(network, change_chain, 0)), network),
            to_address=first_address,
            amount=first_amount if len(payments) == 1 else sum(a for _, a in payments),
            network_fee_max=signed.fee,
            raw_tx=signed.raw,
            txid=signed.txid,
            nonce=None,
        ),
        inputs=tuple(chosen),
        change_vout=change_vout,
        change_amount=selection.change,
        fee=signed.fee,
        vsize=signed.vsize,
        payment_vbytes=payment_vbytes,
        change_chain=change_chain,
        change_address=change_address,
    )


def pool_move_fee(*, network: str, n_inputs: int, to_address: str, fee_rate: int) -> int:
    """Satoshi of miner fee of a pool move: ``n_inputs`` P2WPKH inputs, one output to
    ``to_address``, at ``fee_rate`` sat/vB (:func:`~mixhouse.chains.bitcoin.coinselect.estimate_vsize`).

    Raises:
        InvalidAddress: ``to_address`` is not an address of ``network``.
    """
    return fee_rate * estimate_vsize(n_inputs, output_vbytes(script_pubkey(to_address, network)))


def build_pool_move(
    *, signer: Signer, network: str, coins: Sequence[PoolCoin], to_address: str, fee_rate: int
) -> UtxoSpend:
    """Sign the move of a draining pool key generation's coins (key rotation, issue 12): every
    coin in ``coins`` spent, one output of their total less the fee to ``to_address`` (key 0 of
    the active generation), no change. Inputs in the order given (the caller sorts them), so the
    same coins sign the same transaction.

    Args:
        signer: holds every coin's key by BIP-84 path (:func:`coin_key_path` of its ``key_chain``).
        network: the network name.
        coins: the pool coins to move, satoshi amounts.
        to_address: the receiving address.
        fee_rate: sat/vB.

    Returns:
        The :class:`UtxoSpend`; ``change_vout`` is the one output (0), ``change_amount`` its
        satoshi, ``fee`` the miner fee (``sum(coins) - change_amount``).

    Raises:
        InvalidAmount: no coins, or the total less the fee is below the output's dust threshold.
        SignerError: the signer failed or a key is retired (nothing was signed).
    """
    if not coins:
        raise InvalidAmount("a pool move spends at least one coin")
    total = sum(c.amount for c in coins)
    amount = total - pool_move_fee(network=network, n_inputs=len(coins), to_address=to_address, fee_rate=fee_rate)
    if amount < dust_threshold(script_pubkey(to_address, network)):
        raise InvalidAmount(f"{total} satoshi in {len(coins)} coins does not pay the move's fee")
    signed = sign_tx(
        inputs=[
            (Coin(c.txid, c.vout, c.amount, c.address, c.owner), coin_key_path(network, c.key_chain, c.key_index))
            for c in coins
        ],
        signer=signer,
        outputs=[(to_address, amount)],
        network=network,
    )
    return UtxoSpend(
        prepared=PreparedSend(
            from_address=coins[0].address,
            to_address=to_address,
            amount=amount,
            network_fee_max=signed.fee,
            raw_tx=signed.raw,
            txid=signed.txid,
            nonce=None,
        ),
        inputs=tuple(coins),
        change_vout=0,
        change_amount=amount,
        fee=signed.fee,
        vsize=signed.vsize,
    )
