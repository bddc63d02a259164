"""Spend one of our coins whole to one address, without change (the refund of a held deposit).

A held deposit's output never joined the pool; its refund spends exactly that output, with
one output of ``coin - fee`` to the refund address and no change, so no pool coin is involved
and nothing links the refund to the pool. The fee is quoted from the vsize model of coin
selection (:func:`mixhouse.chains.bitcoin.coinselect.estimate_vsize`) at a fee rate; signing
is deterministic (RFC 6979), so the same coin, address and amount sign the same transaction.
"""

from __future__ import annotations

from mixhouse.chains.base import PoolCoin, PreparedSend
from mixhouse.chains.bitcoin.coinselect import Coin, dust_threshold, estimate_vsize, output_vbytes
from mixhouse.chains.bitcoin.networks import script_pubkey
from mixhouse.chains.bitcoin.txbuild import sign_tx
from mixhouse.errors import InvalidAmount
from mixhouse.keys.bip84 import coin_key_path
from mixhouse.keys.signer import Signer


def single_spend_fee(*, network: str, to_address: str, fee_rate: int) -> int:
    """Satoshi of miner fee for one P2WPKH input paying ``to_address`` alone at ``fee_rate``
    sat/vB (vsize: overhead + one input + that output's size).

    Raises:
        InvalidAddress: ``to_address`` is not an address of ``network``.
    """
    return fee_rate * estimate_vsize(1, output_vbytes(script_pubkey(to_address, network)))


def build_single_spend(
    *, signer: Signer, network: str, coin: PoolCoin, to_address: str, amount_sat: int
) -> PreparedSend:
    """Sign a transaction spending ``coin`` whole: one output of ``amount_sat`` to
    ``to_address``, the rest (``coin.amount - amount_sat``) to miners. ``signer`` holds the
    coin's key under its BIP-84 path.

    Returns:
        The :class:`PreparedSend` (raw transaction and txid; ``network_fee_max`` is the fee).

    Raises:
        InvalidAmount: ``amount_sat`` is not above the output's dust threshold or exceeds the coin.
        InvalidAddress: ``to_address`` is not an address of ``network``.
        SignerError: the signer failed (nothing was signed; retry later).
    """
    if amount_sat > coin.amount:
        raise InvalidAmount(f"{amount_sat} satoshi is more than the coin's {coin.amount}")
    if amount_sat < dust_threshold(script_pubkey(to_address, network)):
        raise InvalidAmount(f"{amount_sat} satoshi to {to_address} is below the dust threshold")
    key = coin_key_path(network, coin.key_chain, coin.key_index)  # any pool generation's coin
    signed = sign_tx(
        inputs=[(Coin(coin.txid, coin.vout, coin.amount, coin.address, coin.owner), key)],
        signer=signer,
        outputs=[(to_address, amount_sat)],
        network=network,
    )
    return PreparedSend(
        from_address=coin.address,
        to_address=to_address,
        amount=amount_sat,
        network_fee_max=signed.fee,
        raw_tx=signed.raw,
        txid=signed.txid,
        nonce=None,
    )
