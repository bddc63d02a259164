"""Bitcoin (BTC) over Bitcoin Core's JSON-RPC (or the bcoin regtest launcher).

Keys: one BIP-84 account (P2WPKH, BIP-173 bech32 addresses) held by a
:class:`~mixhouse.keys.signer.Signer` (derived from a seed, or generated in a PKCS#11 token,
each key named by its path). Deposit addresses are on the external chain ``m/84'/c'/0'/0/i``; the
pool and change keys on the internal chain ``m/84'/c'/0'/1/j``, the pool address being
``m/84'/c'/0'/1/0`` (``c`` = 0 on mainnet, 1 on test networks, BIP-44/SLIP-44). After a pool key
rotation (issue 12, :mod:`mixhouse.mixer.pool_rotation`) generation ``g``'s pool and change keys
are the internal chain of account ``g``, ``m/84'/c'/{g}'/1/j`` (:meth:`BitcoinAdapter.use_pool_generation`).

Amounts are ``int`` satoshi everywhere; node JSON is parsed with ``Decimal`` and converted
once, exactly (:func:`~mixhouse.chains.bitcoin.rpc.btc_to_sat`). Fee rates are satoshi per
virtual byte (sat/vB, BIP-141 vsize).

Node requirements: ``getblock`` verbosity 3 (Core >= 23) for input prevouts, falling back to
``getrawtransaction`` of the spent transaction, which for old coins needs ``-txindex=1`` on
Core (bcoin: ``indexTX``); ``scantxoutset`` for :meth:`BitcoinAdapter.balance`. The bcoin
launcher (``regtest_node.js``) provides all of it.

Sends: a UTXO send is built by the wallet module, which selects coins and signs (see
:meth:`BitcoinAdapter.prepare_send`); this adapter broadcasts the stored raw transaction and
tracks it by txid. A signed Bitcoin transaction has one txid and spends fixed outpoints, so
broadcasting it twice cannot pay twice (``has_idempotent_send``).

Errors: every failure of the node or the connection leaves as
:class:`~mixhouse.errors.ChainError` or a subclass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from mixhouse.chains.base import (
    FeeQuote,
    PoolCoin,
    PreparedSend,
    SendCheck,
    SendState,
    Transfer,
    UtxoChainAdapter,
    UtxoSpend,
)
from mixhouse.chains.bitcoin import networks
from mixhouse.chains.bitcoin.pool_spend import POOL_CHAIN, build_pool_move, build_pool_spend, pool_move_fee
from mixhouse.chains.bitcoin.rpc import AlreadyInChain, BitcoinRpc, SendRejected, btc_to_sat
from mixhouse.chains.bitcoin.single_spend import build_single_spend, single_spend_fee
from mixhouse.errors import ChainError, InvalidAddress
from mixhouse.keys.bip84 import coin_key_path, generation_key_prefix, p2wpkh_address, pool_key_chain
from mixhouse.keys.offload import SIGN_TIMEOUT_SECONDS, SigningThread
from mixhouse.keys.signer import Signer
from mixhouse.money import Asset

# Virtual size of a 1-input, 2-output P2WPKH transaction, the "simple send" a fee is quoted
# for: 10.5 vB overhead (version, locktime, counts, segwit marker/flag) + 68 vB per P2WPKH
# input (41 bytes + 27 vB of witness: 108 WU / 4) + 31 vB per P2WPKH output, rounded up
# (BIP-141 weight / 4). 10.5 + 68 + 2 * 31 = 140.5 -> 141.
SIMPLE_SEND_VBYTES = 141
# Transactions requested at once (the parents of a transaction's inputs).
FETCH_CONCURRENCY = 8
# Confirmation target of the fee estimate, in blocks (about an hour).
FEE_TARGET_BLOCKS = 6

# An output as this adapter keeps it: (vout index, canonical address or None, satoshi).
_Output = tuple[int, str | None, int]


class BitcoinAdapter(UtxoChainAdapter):
    """BTC on one Bitcoin network, read and broadcast through :class:`BitcoinRpc`.

    Args:
        rpc: the node client (closed by :meth:`aclose`).
        network: ``"mainnet"``, ``"testnet"``, ``"testnet4"``, ``"signet"`` or ``"regtest"``
            (see :mod:`mixhouse.chains.bitcoin.networks`).
        signer: holds the BIP-84 keys of ``network`` by path (``m/84'/c'/0'/change/index``,
            :func:`mixhouse.keys.bip84.key_path`); the adapter never sees a private key.
        confirmations: blocks (including the one holding it) after which a deposit or a
            send is final, ``>= 1``.
        fallback_fee_rate: sat/vB used when the node has no fee estimate (fresh regtest,
            too little data), ``>= 1``.
        max_fee_rate: sat/vB above which no fee is quoted, ``>= fallback_fee_rate``.
        sign_timeout: seconds a transaction's signing (all its inputs) may take in the
            adapter's signing thread before the send gives up with ``SignerError`` and is
            retried (:mod:`mixhouse.keys.offload`: a hung token never blocks the loop).

    Attributes:
        asset: ``Asset.BTC``; amounts are satoshi.
        pool_address: the P2WPKH address of key 0 of the active pool key generation's chain
            (``m/84'/c'/0'/1/0`` until a rotation, :meth:`use_pool_generation`): where
            operator top-ups are sent.
        pool_chain: the stored ``key_chain`` of the active generation (``2g + 1``): the chain
            new change goes to.
        has_idempotent_send: ``True``.

    Raises:
        ValueError: a bound above is violated.
        ConfigError: unknown ``network``.
    """

    def __init__(
        self,
        rpc: BitcoinRpc,
        *,
        network: str,
        signer: Signer,
        confirmations: int,
        fallback_fee_rate: int = 10,
        max_fee_rate: int = 500,
        sign_timeout: float = SIGN_TIMEOUT_SECONDS,
    ) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be at least 1")
        if fallback_fee_rate < 1:
            raise ValueError("fallback_fee_rate must be at least 1 sat/vB")
        if max_fee_rate < fallback_fee_rate:
            raise ValueError("max_fee_rate must be at least fallback_fee_rate")
        self.network = networks.get_network(network).name
        self.asset = Asset.BTC
        self.confirmations_required = confirmations
        self.has_idempotent_send = True
        self.fallback_fee_rate = fallback_fee_rate
        self.max_fee_rate = max_fee_rate
        self._rpc = rpc
        self._signer = signer
        # The async paths sign here, never on the event loop (a token may be slow or hang).
        self._signing = SigningThread(f"signer-{self.asset}", timeout=sign_timeout)
        # (key_chain, index) -> address: asked for on every scan, a public key costs a token
        # round trip on an HSM.
        self._addresses: dict[tuple[int, int], str] = {}
        self.pool_chain = POOL_CHAIN
        self.pool_address = self._address(POOL_CHAIN, 0)
        # Key 0 of every pool generation not yet retired -> its key_chain (top-ups are watched there).
        self._pool_key_chains: dict[str, int] = {self.pool_address: POOL_CHAIN}
        # Canonical forms of watched addresses that needed decoding, by the text given (kept
        # for the addresses still watched, rebuilt every scan).
        self._canonical_watched: dict[str, str] = {}
        self._segwit_prefix = networks.get_network(network).bech32_hrp + "1"

    # -- addresses -------------------------------------------------------------------------

    def normalize_address(self, text: str) -> str:
        """Validate a Bitcoin address of this network; return its canonical form (bech32 in
        lower case, base58 re-encoded). See :func:`networks.normalize_address`.

        Raises:
            InvalidAddress: malformed, bad checksum, another network, unsupported type.
        """
        if not isinstance(text, str):
            raise InvalidAddress("a Bitcoin address must be text")
        return networks.normalize_address(text, self.network)

    def deposit_address(self, index: int) -> str:
        """P2WPKH address of the deposit key ``m/84'/c'/0'/0/{index}`` (BIP-84).

        Raises:
            ValueError: ``index`` outside ``[0, 2**31)``.
        """
        return self._address(0, index)

    def _address(self, key_chain: int, index: int) -> str:
        address = self._addresses.get((key_chain, index))
        if address is None:
            public = self._signer.public_key(coin_key_path(self.network, key_chain, index))
            address = p2wpkh_address(public, self.network)
            self._addresses[(key_chain, index)] = address
        return address

    # -- pool key generations (key rotation, issue 12) ---------------------------------------

    def generation_key_ref(self, generation: int) -> str:
        """The key reference of pool generation ``generation``: its chain's path prefix
        ``m/84'/c'/{g}'/1/`` (:func:`mixhouse.keys.bip84.generation_key_prefix`), what a
        :class:`~mixhouse.keys.audited.RetiredKeyGuard` refuses once it retires.

        Raises:
            ValueError: ``generation`` outside ``[0, 2**31)``.
        """
        return generation_key_prefix(self.network, generation)

    def generation_address(self, generation: int) -> str:
        """The pool address of generation ``generation``: key 0 of its chain, ``m/84'/c'/{g}'/1/0``.

        Raises:
            ValueError: ``generation`` outside ``[0, 2**31)``.
            SignerError: the signer has no such key.
        """
        return self._address(pool_key_chain(generation), 0)

    async def generation_address_async(self, generation: int) -> str:
        """:meth:`generation_address` made in the adapter's signing thread: a new generation's
        key is a token round trip the first time (PKCS#11), which must not stall the loop.

        Raises:
            ValueError, SignerError: as :meth:`generation_address` (also on ``sign_timeout``).
        """
        return await self._signing.run(lambda: self.generation_address(generation))

    def generation_ref_address(self, key_ref: str) -> str:
        """The pool address of the generation whose :meth:`generation_key_ref` is ``key_ref``.

        Raises:
            ValueError: ``key_ref`` is not a generation prefix of this network.
        """
        _head, sep, tail = key_ref.removesuffix("/1/").rpartition("/")
        if not sep or not tail.endswith("'") or not tail[:-1].isdigit():
            raise ValueError(f"{key_ref!r} is not a pool generation's key reference")
        generation = int(tail[:-1])
        if self.generation_key_ref(generation) != key_ref:
            raise ValueError(f"{key_ref!r} is not a pool generation's key reference on {self.network}")
        return self.generation_address(generation)

    def use_pool_generation(self, generation: int, *, draining: Sequence[int] = ()) -> str:
        """Make pool key generation ``generation`` the active one: new change and top-ups go
        to its chain (:attr:`pool_chain`, :attr:`pool_address`); the top-up addresses of
        ``draining`` generations stay watched (:meth:`pool_key_chains`: a coin arriving there
        is a pool coin of that generation, moved by the next drain). Each send reads
        :attr:`pool_chain` once, before it signs. Returns the pool address.

        Raises:
            ValueError: a generation outside ``[0, 2**31)``.
            SignerError: the signer has no such key.
        """
        chains = {self.generation_address(g): pool_key_chain(g) for g in (*draining, generation)}
        self.pool_chain = pool_key_chain(generation)
        self.pool_address = self.generation_address(generation)
        self._pool_key_chains = chains
        return self.pool_address

    def pool_key_chains(self) -> dict[str, int]:
        """Key 0 of the active and every draining pool generation -> its stored ``key_chain``:
        the addresses whose incoming coins are pool coins."""
        return dict(self._pool_key_chains)

    # -- reading transactions --------------------------------------------------------------

    def _outputs(self, tx: dict[str, Any]) -> tuple[_Output, ...]:
        """``(n, address, satoshi)`` of every output of a decoded transaction; the address
        is derived from the scriptPubKey bytes (``None`` for OP_RETURN, bare multisig...)."""
        outputs: list[_Output] = []
        for vout in tx.get("vout", []):
            try:
                n = int(vout["n"])
                script = bytes.fromhex(str(vout["scriptPubKey"]["hex"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ChainError(f"transaction {tx.get('txid')} has an unreadable output") from exc
            outputs.append((n, networks.address_of_script(script, self.network), btc_to_sat(vout["value"])))
        return tuple(outputs)

    async def _prevout(self, vin: dict[str, Any]) -> tuple[str | None, int]:
        """``(address, satoshi)`` of the output an input spends: from the input's ``prevout``
        (getblock verbosity 3) or else from ``getrawtransaction`` of the spent transaction.

        Raises:
            ChainError: the spent transaction cannot be found (Core without ``-txindex``).
        """
        prevout = vin.get("prevout")
        if isinstance(prevout, dict):
            script = bytes.fromhex(str(prevout["scriptPubKey"]["hex"]))
            return networks.address_of_script(script, self.network), btc_to_sat(prevout["value"])
        txid, index = str(vin["txid"]), int(vin["vout"])
        parent = await self._rpc.gettransaction_verbose(txid)
        if parent is None:
            raise ChainError(f"the node cannot find transaction {txid} spent by an input (no -txindex?)")
        for n, address, value in self._outputs(parent):
            if n == index:
                return address, value
        raise ChainError(f"transaction {txid} has no output {index}")

    async def _senders(self, tx: dict[str, Any]) -> tuple[str, ...]:
        """Distinct addresses of the outputs ``tx`` spends, in input order (empty for a
        coinbase; inputs without a standard address are left out)."""
        inputs = [vin for vin in tx.get("vin", []) if vin.get("txid")]  # a coinbase input has none
        found: list[str] = []
        for offset in range(0, len(inputs), FETCH_CONCURRENCY):
            batch = inputs[offset : offset + FETCH_CONCURRENCY]
            for address, _value in await asyncio.gather(*(self._prevout(vin) for vin in batch)):
                if address is not None and address not in found:
                    found.append(address)
        return tuple(found)

    async def _input_total(self, tx: dict[str, Any]) -> int:
        """Sum of the values of the outputs ``tx`` spends, satoshi."""
        inputs = [vin for vin in tx.get("vin", []) if vin.get("txid")]
        values = await asyncio.gather(*(self._prevout(vin) for vin in inputs))
        return sum(value for _address, value in values)

    async def _main_chain_height(self, block_hash: str) -> int | None:
        """Height of ``block_hash`` if it is in the current main chain, else ``None``."""
        header = await self._rpc.getblockheader(block_hash)
        if header is None:
            return None
        height = int(header["height"])
        if await self._rpc.getblockhash(height) != block_hash:
            return None
        return height

    async def _locate(self, txid: str) -> tuple[dict[str, Any] | None, int | None]:
        """``(tx, depth)``: depth ``>= 1`` if mined in the main chain, ``0`` if only in the
        mempool, ``None`` if neither (unknown, dropped, or in a block a reorg removed)."""
        tx = await self._rpc.gettransaction_verbose(txid)
        if tx is None:
            return None, None
        block_hash = tx.get("blockhash")
        if isinstance(block_hash, str) and int(tx.get("confirmations") or 0) > 0:
            height = await self._main_chain_height(block_hash)
            if height is not None:
                tip = await self._rpc.getblockcount()
                return tx, max(1, tip - height + 1)
        if await self._rpc.getmempoolentry(txid) is not None:
            return tx, 0
        return tx, None

    # -- for the scanning engine (mixhouse.watch) ---------------------------------------------

    @property
    def rpc(self) -> BitcoinRpc:
        """The node client (the scanning engine's :class:`~mixhouse.watch.bitcoin.BitcoinBlocks`
        reads blocks through it)."""
        return self._rpc

    def canonical_addresses(self, watched: Sequence[str]) -> set[str]:
        """The canonical forms of ``watched`` (what a scan compares outputs with), without
        decoding the mixer's own addresses.

        Decoding a bech32 address costs about 0.25 ms here: 25 s per scan at 100,000 watched
        mixes. The mixer's deposit addresses are stored as :meth:`deposit_address` made them,
        in their canonical form (lower-case bech32 of this network), and such a text is taken
        as it is: were it not a valid address, no output (whose addresses are derived from
        its script, hence canonical) could equal it. Any other text (upper case, base58, space
        around it) is normalised once and remembered while it stays watched.

        Raises:
            InvalidAddress: a watched address that needs normalising is not of this network.
        """
        previous = self._canonical_watched
        remembered: dict[str, str] = {}
        wanted: set[str] = set()
        prefix = self._segwit_prefix
        for address in watched:
            if address.startswith(prefix) and address.islower() and address.strip() == address:
                wanted.add(address)
                continue
            canonical = previous.get(address)
            if canonical is None:
                canonical = self.normalize_address(address)
            remembered[address] = canonical
            wanted.add(canonical)
        self._canonical_watched = remembered
        return wanted

    async def transfer_confirmations(self, transfer: Transfer) -> int | None:
        """Current confirmations of a transfer, by the txid in its ``ref``.

        Returns:
            ``tip - height + 1`` if its transaction is in a main-chain block; ``0`` if it is
            (back) in the mempool; ``None`` if the node knows it nowhere, or only in a block
            that is no longer in the main chain (a reorg removed it).

        Raises:
            ValueError: ``ref`` is not ``"<txid>:<vout>"``.
            ChainError: the node failed.
        """
        txid, sep, vout = transfer.ref.partition(":")
        if not sep or not vout.isdigit() or len(txid) != 64:
            raise ValueError(f"a Bitcoin transfer ref is '<txid>:<vout>', got {transfer.ref!r}")
        _tx, depth = await self._locate(txid)
        return depth

    async def balance(self, address: str) -> int:
        """Confirmed balance of ``address``: the sum of its unspent outputs in the UTXO set
        (``scantxoutset``; Core reads its chainstate, the bcoin launcher its address index),
        in satoshi. Mempool spends and receipts are not counted.

        Raises:
            InvalidAddress: ``address`` is not of this network.
            ChainError: the node failed.
        """
        canonical = self.normalize_address(address)
        result = await self._rpc.scantxoutset_addresses([canonical])
        if result.get("success") is False:
            raise ChainError(f"scantxoutset did not complete for {canonical}")
        return btc_to_sat(result.get("total_amount", 0))

    async def quote_network_fee(self) -> FeeQuote:
        """Fee of one simple send now: ``rate * 141`` satoshi (141 vB: one P2WPKH input, two
        P2WPKH outputs).

        ``rate`` is ``estimatesmartfee 6`` in sat/vB (rounded up), or ``fallback_fee_rate``
        when the node has no estimate.

        Raises:
            ChainError: the node failed, or ``rate > max_fee_rate``.
        """
        estimate = await self._rpc.estimatesmartfee(FEE_TARGET_BLOCKS)
        rate, source = (estimate, "estimate") if estimate is not None else (self.fallback_fee_rate, "fallback")
        if rate > self.max_fee_rate:
            raise ChainError(f"fee rate {rate} sat/vB is above the configured cap of {self.max_fee_rate} sat/vB")
        return FeeQuote(
            per_send=rate * SIMPLE_SEND_VBYTES,
            detail=f"{SIMPLE_SEND_VBYTES} vB x {rate} sat/vB ({source})",
        )

    async def next_nonce(self, address: str) -> int | None:
        """Bitcoin has no account nonces: always ``None``."""
        del address
        return None

    # -- sending ---------------------------------------------------------------------------

    async def prepare_send(
        self,
        *,
        from_address: str,
        from_key_index: int | None,
        to_address: str,
        amount: int,
        fee: FeeQuote,
        nonce: int | None,
    ) -> PreparedSend:
        """Not used on Bitcoin: a UTXO send spends chosen pool coins and returns change, so the
        mixer calls :meth:`prepare_utxo_send` with the coins it locked.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("Bitcoin sends are built by prepare_utxo_send from the pool's coins")

    # -- the UTXO pool -----------------------------------------------------------------------

    def change_address(self, index: int) -> str:
        """Key ``index`` of the active pool generation's chain (``m/84'/c'/g'/1/index``, BIP-84
        internal chain) as a P2WPKH address."""
        return self._address(self.pool_chain, index)

    async def fee_rate(self) -> int:
        """``estimatesmartfee 6`` in sat/vB, or the fallback on a node without an estimate.

        Raises:
            ChainError: the node failed, or the rate is above ``max_fee_rate``.
        """
        estimate = await self._rpc.estimatesmartfee(FEE_TARGET_BLOCKS)
        rate = estimate if estimate is not None else self.fallback_fee_rate
        if rate > self.max_fee_rate:
            raise ChainError(f"fee rate {rate} sat/vB is above the configured cap of {self.max_fee_rate} sat/vB")
        return max(rate, 1)

    async def prepare_utxo_send(
        self,
        *,
        coins: Sequence[PoolCoin],
        exclude_owner: str | None,
        payments: Sequence[tuple[str, int]],
        change_index: int,
        fee_rate: int,
        max_fee: int,
        rng_seed: int,
        change_chain: int | None = None,
    ) -> UtxoSpend:
        """See :meth:`UtxoChainAdapter.prepare_utxo_send` and
        :func:`mixhouse.chains.bitcoin.pool_spend.build_pool_spend`, run in the adapter's
        signing thread (the signer may be a slow token). The change goes to ``change_chain``,
        or to :attr:`pool_chain` read once here (never mid-spend).

        Raises:
            SignerError: the signer failed or did not answer within ``sign_timeout`` seconds
                (a :class:`ChainError`: the send is retried).
        """
        chain = self.pool_chain if change_chain is None else change_chain
        return await self._signing.run(
            lambda: build_pool_spend(
                signer=self._signer,
                network=self.network,
                coins=coins,
                exclude_owner=exclude_owner,
                payments=payments,
                change_index=change_index,
                fee_rate=fee_rate,
                max_fee=max_fee,
                rng_seed=rng_seed,
                change_chain=chain,
            )
        )

    def pool_move_fee(self, *, n_inputs: int, to_address: str, fee_rate: int) -> int:
        """See :func:`mixhouse.chains.bitcoin.pool_spend.pool_move_fee`."""
        return pool_move_fee(network=self.network, n_inputs=n_inputs, to_address=to_address, fee_rate=fee_rate)

    async def prepare_pool_move(self, *, coins: Sequence[PoolCoin], to_address: str, fee_rate: int) -> UtxoSpend:
        """See :func:`mixhouse.chains.bitcoin.pool_spend.build_pool_move`, run in the adapter's
        signing thread.

        Raises:
            InvalidAmount: no coins, or they do not pay the fee.
            SignerError: as :meth:`prepare_utxo_send` (:class:`~mixhouse.keys.audited.KeyRetired`
                for a retired generation's coin).
        """
        return await self._signing.run(
            lambda: build_pool_move(
                signer=self._signer, network=self.network, coins=coins, to_address=to_address, fee_rate=fee_rate
            )
        )

    def single_spend_fee(self, to_address: str, fee_rate: int) -> int:
        """See :meth:`UtxoChainAdapter.single_spend_fee` and
        :func:`mixhouse.chains.bitcoin.single_spend.single_spend_fee`."""
        return single_spend_fee(network=self.network, to_address=to_address, fee_rate=fee_rate)

    async def prepare_single_spend(self, *, coin: PoolCoin, to_address: str, amount: int) -> PreparedSend:
        """See :meth:`UtxoChainAdapter.prepare_single_spend` and
        :func:`mixhouse.chains.bitcoin.single_spend.build_single_spend`, run in the adapter's
        signing thread.

        Raises:
            SignerError: as :meth:`prepare_utxo_send`.
        """
        return await self._signing.run(
            lambda: build_single_spend(
                signer=self._signer, network=self.network, coin=coin, to_address=to_address, amount_sat=amount
            )
        )

    async def unspent_amount(self, txid: str, vout: int) -> int | None:
        """``gettxout txid vout false``: satoshi of the output if it is in the confirmed UTXO
        set, else ``None``.

        Raises:
            ChainError: the node failed.
        """
        found = await self._rpc.call("gettxout", txid, vout, False)
        if not isinstance(found, dict):
            return None
        return btc_to_sat(found["value"])

    async def is_spent_elsewhere(self, prepared: PreparedSend, inputs: Sequence[PoolCoin]) -> bool:
        """True when ``prepared`` is neither in the chain nor in the mempool and one of its
        inputs is spent, in a block or by a mempool transaction (``gettxout ... true`` is
        empty): it can never confirm.

        Raises:
            ChainError: the node failed.
        """
        if prepared.txid is not None and (await self._rpc.getrawtransaction(prepared.txid, True)) is not None:
            return False
        for coin in inputs:
            if not isinstance(await self._rpc.call("gettxout", coin.txid, coin.vout, True), dict):
                return True
        return False

    async def broadcast(self, prepared: PreparedSend) -> None:
        """Send ``prepared.raw_tx`` (``sendrawtransaction``); safe to repeat.

        A repeat is success: the node already has it in the mempool (answers the txid), says
        -27 "already in block chain", or says its inputs are spent / missing while our own
        txid is in the chain or mempool (Core, once all its outputs are spent too).

        Raises:
            ValueError: ``prepared`` has no ``raw_tx`` or ``txid``.
            BroadcastRejected: the node refused it (invalid, inputs spent by another
                transaction, fee below the min relay fee, non-standard...).
            SendOutcomeUnknown: timeout or connection lost mid-request: it may have landed.
            ChainError: any other failure that certainly sent nothing.
        """
        raw, txid = prepared.raw_tx, prepared.txid
        if raw is None or txid is None:
            raise ValueError("a Bitcoin send needs raw_tx and txid (built by the wallet module)")
        try:
            await self._rpc.sendrawtransaction(raw.hex(), txid)
        except AlreadyInChain:
            return
        except SendRejected as exc:
            reason = exc.reason.lower()
            if "already" in reason or "missingorspent" in reason or "missing inputs" in reason:
                _tx, depth = await self._locate(txid)
                if depth is not None:
                    return
            raise

    async def check_send(self, prepared: PreparedSend, *, earlier_sends: int = 0) -> SendCheck:
        """Where ``prepared`` stands, by its txid (``earlier_sends`` is ignored).

        Returns:
            ``NOT_FOUND`` if neither in the mempool nor in a main-chain block; ``PENDING``
            with 0 confirmations in the mempool; ``PENDING`` or ``CONFIRMED`` (at
            ``confirmations_required``) once mined, with ``network_fee_paid`` = inputs -
            outputs in satoshi (``None`` if a spent output cannot be looked up).

        Raises:
            ValueError: ``prepared`` has no ``txid``.
            ChainError: the node failed.
        """
        del earlier_sends
        if prepared.txid is None:
            raise ValueError("a Bitcoin send needs a txid")
        tx, depth = await self._locate(prepared.txid)
        if tx is None or depth is None:
            return SendCheck(SendState.NOT_FOUND, 0, None)
        if depth == 0:
            return SendCheck(SendState.PENDING, 0, None)
        fee: int | None = None
        with contextlib.suppress(ChainError):
            fee = await self._input_total(tx) - sum(value for _n, _a, value in self._outputs(tx))
        state = SendState.CONFIRMED if depth >= self.confirmations_required else SendState.PENDING
        return SendCheck(state, depth, fee)

    async def aclose(self) -> None:
        """Close the RPC client and stop the signing thread; the adapter is unusable after."""
        self._signing.close()
        await self._rpc.aclose()
