"""An async JSON-RPC client for Bitcoin Core (and the bcoin regtest launcher) over httpx.

Wire format: JSON-RPC 1.0 as Bitcoin Core speaks it (``{"method", "params", "id"}`` posted to
the root; the answer is ``{"result", "error", "id"}``, with HTTP 500 or 404 for errors), which
bcoin answers too. Every answer is parsed with ``json.loads(..., parse_float=Decimal)``:
amounts arrive in BTC as JSON numbers and are converted to satoshi exactly once, with
:func:`btc_to_sat`, exact or :class:`~mixhouse.errors.ChainError`.

Errors (codes from Bitcoin Core ``src/rpc/protocol.h``):

=====================================  =====  ============================================
RPC_MISC_ERROR                           -1   :class:`~mixhouse.errors.ChainError`
RPC_INVALID_ADDRESS_OR_KEY               -5   "not found": ``None`` where documented
RPC_DESERIALIZATION_ERROR               -22   :class:`BroadcastRejected` on send
RPC_VERIFY_ERROR                        -25   :class:`BroadcastRejected` on send
RPC_VERIFY_REJECTED                     -26   :class:`BroadcastRejected` on send
RPC_VERIFY_ALREADY_IN_CHAIN             -27   :class:`AlreadyInChain` (a BroadcastRejected)
RPC_IN_WARMUP                           -28   :class:`~mixhouse.errors.ChainError` (retry later)
=====================================  =====  ============================================

Every error answer is a :class:`RpcError` (a ChainError) carrying ``code`` and ``message``;
the table above names the subclasses. Transport failures are ChainError for reads; for
``sendrawtransaction`` a timeout or a connection lost after the request was written is
:class:`~mixhouse.errors.SendOutcomeUnknown`.

bcoin differences are fixed in the launcher (``regtest_node.js``): Core-style ``getblock``
verbosity 2/3, Core errors from ``sendrawtransaction``, ``estimatesmartfee`` and
``scantxoutset``. The client still guards against a node that answers ``sendrawtransaction``
with a txid without accepting the transaction (stock bcoin does): see
:meth:`BitcoinRpc.sendrawtransaction`.
"""

from __future__ import annotations

import itertools
import json
import math
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import httpx

from mixhouse.errors import BroadcastRejected, ChainError, SendOutcomeUnknown

# Bitcoin Core RPC error codes (src/rpc/protocol.h).
RPC_MISC_ERROR = -1
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_IN_WARMUP = -28
RPC_METHOD_NOT_FOUND = -32601

SATOSHI_PER_BTC = 100_000_000
# Largest possible amount: 21 million BTC (consensus MAX_MONEY), in satoshi.
MAX_MONEY = 21_000_000 * SATOSHI_PER_BTC


class RpcError(ChainError):
    """The node answered a JSON-RPC error.

    Attributes:
        method: the RPC method called.
        code: the JSON-RPC error code (Bitcoin Core's ``RPCErrorCode``), ``None`` if absent.
        message: the node's message.
    """

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"{method}: the node answered error {code}: {message}")
        self.method = method
        self.code = code
        self.message = message


class SendRejected(BroadcastRejected):
    """``sendrawtransaction`` was refused (-22, -25, -26, or accepted but not in the mempool).

    Attributes:
        code: the RPC error code, ``None`` when the node answered a txid but did not keep
            the transaction.
        reason: the node's reason ("min relay fee not met, 0 < 141", "bad-txns-inputs-missingorspent").
    """

    def __init__(self, txid: str | None, code: int | None, reason: str) -> None:
        super().__init__(f"the node refused {txid or 'the transaction'}: {reason} (code {code})")
        self.code = code
        self.reason = reason


class AlreadyInChain(SendRejected):
    """``sendrawtransaction`` answered -27: this very transaction is already mined."""


def btc_to_sat(value: object) -> int:
    """Convert a BTC amount from a node's JSON (a Decimal) to satoshi, exactly.

    Args:
        value: a :class:`~decimal.Decimal` (as parsed with ``parse_float=Decimal``) or an
            ``int`` of whole BTC; ``1e-8`` exponent notation (bcoin writes it) is fine.

    Returns:
        ``value * 10**8`` as an ``int``, satoshi.

    Raises:
        ChainError: not a number, finer than 1 satoshi, negative, or above 21 million BTC.
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ChainError(f"expected a BTC amount, the node sent {value!r}")
    try:
        scaled = Decimal(value) * SATOSHI_PER_BTC
    except InvalidOperation as exc:  # pragma: no cover - Decimal * int of a finite number
        raise ChainError(f"unusable BTC amount {value!r}") from exc
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        raise ChainError(f"BTC amount {value!r} is not a whole number of satoshi")
    sat = int(scaled)
    if sat < 0 or sat > MAX_MONEY:
        raise ChainError(f"BTC amount {value!r} is outside 0..21 million BTC")
    return sat


def _is_not_found(exc: RpcError) -> bool:
    return exc.code == RPC_INVALID_ADDRESS_OR_KEY


# One TLS context for every client: building one loads the CA bundle (~40 ms), which a client
# made per scan (mixhouse.mixer.deposits) would pay each time.
_TLS = httpx.create_ssl_context()


class BitcoinRpc:
    """Async JSON-RPC client of one Bitcoin node.

    Args:
        url: ``http://host:port/`` of the node's RPC server (for a wallet path, include it).
        user: HTTP Basic user name (Core ``rpcuser``; bcoin ignores it), or ``None``.
        password: HTTP Basic password (Core ``rpcpassword``; bcoin API key), or ``None``
            for no authentication.
        timeout: seconds per request (connect + answer), ``> 0``.

    Raises:
        ValueError: a non-positive timeout.
    """

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = url
        auth = httpx.BasicAuth(user or "", password) if password is not None else None
        self._client = httpx.AsyncClient(auth=auth, timeout=timeout, verify=_TLS)
        self._ids = itertools.count(1)

    async def aclose(self) -> None:
        """Close the HTTP connection pool; the client is unusable after."""
        await self._client.aclose()

    # -- transport -------------------------------------------------------------------------

    async def call(self, method: str, *params: Any) -> Any:
        """Call ``method`` with positional ``params``; return its ``result``.

        Raises:
            RpcError: the node answered an error (``code``/``message`` from the node).
            ChainError: connection failed, timeout, HTTP error without a JSON-RPC body, or
                an unreadable answer.
        """
        try:
            return await self._call(method, list(params))
        except httpx.TimeoutException as exc:
            raise ChainError(f"{method}: the node timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise ChainError(f"{method}: cannot reach the node ({type(exc).__name__}: {exc})") from exc

    async def _call(self, method: str, params: list[Any]) -> Any:
        payload = {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": params}
        response = await self._client.post(self.url, json=payload)
        try:
            body = json.loads(response.content, parse_float=Decimal)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if response.status_code == 401:
                raise ChainError(f"{method}: the node refused the RPC credentials (HTTP 401)") from exc
            raise ChainError(f"{method}: HTTP {response.status_code} with a body that is not JSON-RPC") from exc
        if not isinstance(body, dict):
            raise ChainError(f"{method}: the node answered {type(body).__name__}, not an object")
        error = body.get("error")
        if error is not None:
            if isinstance(error, dict):
                code = error.get("code")
                message = str(error.get("message", ""))
                raise RpcError(method, code if isinstance(code, int) else None, message)
            raise RpcError(method, None, str(error))
        if response.status_code != 200:
            raise ChainError(f"{method}: HTTP {response.status_code} without an error object")
        if "result" not in body:
            raise ChainError(f"{method}: the answer has no result")
        return body["result"]

    # -- chain -----------------------------------------------------------------------------

    async def getblockcount(self) -> int:
        """Height of the most-work fully-validated chain tip (``getblockcount``).

        Raises:
            ChainError: the node failed (-28 while warming up).
        """
        return _int(await self.call("getblockcount"), "getblockcount")

    async def getblockhash(self, height: int) -> str | None:
        """Hash of the main-chain block at ``height``, ``None`` if above the tip.

        Raises:
            ChainError: the node failed.
        """
        try:
            return _str(await self.call("getblockhash", height), "getblockhash")
        except RpcError as exc:
            # Core: -8 "Block height out of range"; bcoin: -1 "Not found."
            if exc.code in (-8, RPC_MISC_ERROR, RPC_INVALID_ADDRESS_OR_KEY):
                return None
            raise

    async def getbestblockhash(self) -> str:
        """Hash of the tip of the main chain.

        Raises:
            ChainError: the node failed.
        """
        return _str(await self.call("getbestblockhash"), "getbestblockhash")

    async def getblockheader(self, block_hash: str) -> dict[str, Any] | None:
        """Header of ``block_hash`` (``getblockheader hash true``): ``height``,
        ``previousblockhash``, ``confirmations``; ``None`` if the node knows no such block.

        Raises:
            ChainError: the node failed.
        """
        try:
            return _dict(await self.call("getblockheader", block_hash, True), "getblockheader")
        except RpcError as exc:
            # Core: -5 "Block not found"; bcoin: -1 "Block not found."
            if _is_not_found(exc) or "not found" in exc.message.lower():
                return None
            raise

    async def getblock_verbose(self, block_hash: str) -> dict[str, Any] | None:
        """Block ``block_hash`` with decoded transactions (``getblock hash 3``).

        Each transaction has ``txid``, ``vin`` (with ``prevout`` ``{value, scriptPubKey}``
        where the node has undo data: Core >= 23, the bcoin launcher; otherwise absent),
        ``vout`` (``value`` in BTC as Decimal, ``n``, ``scriptPubKey.address``). The block
        has ``height``, ``previousblockhash`` and ``confirmations`` (-1 off the main chain).

        Returns:
            The block object, or ``None`` if the node knows no such block.

        Raises:
            ChainError: the node failed.
        """
        try:
            block = await self.call("getblock", block_hash, 3)
        except RpcError as exc:
            if _is_not_found(exc):
                return None
            if exc.code == RPC_MISC_ERROR and "verbosity" in exc.message.lower():  # pragma: no cover
                block = await self.call("getblock", block_hash, 2)  # Core < 23
            else:
                raise
        return _dict(block, "getblock")

    async def getrawtransaction(self, txid: str, verbose: bool = True) -> dict[str, Any] | str | None:
        """Transaction ``txid`` from the mempool or the transaction index.

        Args:
            txid: hex transaction id.
            verbose: ``True`` for the decoded object (``vin``, ``vout``, ``blockhash``,
                ``confirmations`` when mined), ``False`` for the hex.

        Returns:
            The object or hex, ``None`` if unknown (-5: not in the mempool and, on Core
            without ``-txindex``, not in the wallet either).

        Raises:
            ChainError: the node failed.
        """
        try:
            result = await self.call("getrawtransaction", txid, verbose)
        except RpcError as exc:
            if _is_not_found(exc):
                return None
            raise
        if verbose:
            return _dict(result, "getrawtransaction")
        return _str(result, "getrawtransaction")

    async def gettransaction_verbose(self, txid: str) -> dict[str, Any] | None:
        """Like :meth:`getrawtransaction` with ``verbose=True``, typed as the object."""
        result = await self.getrawtransaction(txid, True)
        return result if isinstance(result, dict) else None

    async def getrawmempool(self) -> list[str]:
        """Txids in the node's mempool (``getrawmempool false``).

        Raises:
            ChainError: the node failed.
        """
        result = await self.call("getrawmempool", False)
        if not isinstance(result, list) or not all(isinstance(item, str) for item in result):
            raise ChainError("getrawmempool: expected a list of txids")
        return cast(list[str], result)

    async def getmempoolentry(self, txid: str) -> dict[str, Any] | None:
        """Mempool entry of ``txid``, ``None`` if not in the mempool (-5).

        Raises:
            ChainError: the node failed.
        """
        try:
            return _dict(await self.call("getmempoolentry", txid), "getmempoolentry")
        except RpcError as exc:
            # Core: -5 "Transaction not in mempool"; stock bcoin: -1 with the same words.
            if _is_not_found(exc) or "not in mempool" in exc.message.lower():
                return None
            raise

    async def scantxoutset_addresses(self, addresses: list[str]) -> dict[str, Any]:
        """Confirmed UTXOs paying ``addresses`` (``scantxoutset "start" ["addr(A)", ...]``).

        Returns:
            Core's answer: ``unspents`` (``txid``, ``vout``, ``amount`` BTC, ``height``) and
            ``total_amount``.

        Raises:
            ChainError: the node failed or lacks the method.
        """
        result = await self.call("scantxoutset", "start", [f"addr({a})" for a in addresses])
        return _dict(result, "scantxoutset")

    async def estimatesmartfee(self, blocks: int) -> int | None:
        """Fee rate for confirmation within ``blocks`` blocks, in satoshi per vbyte (rounded
        up), or ``None`` when the node has no estimate (fresh regtest, too little data).

        Core answers ``{"feerate": BTC/kvB}`` or ``{"errors": [...]}``; stock bcoin
        ``{"fee": -1}`` (no estimate) or ``{"fee": BTC/kB}`` - all understood.

        Raises:
            ChainError: the node failed.
        """
        result = _dict(await self.call("estimatesmartfee", blocks), "estimatesmartfee")
        rate = result.get("feerate", result.get("fee"))
        if rate is None or (isinstance(rate, Decimal | int) and not isinstance(rate, bool) and rate <= 0):
            return None
        sat_per_kvb = btc_to_sat(rate)
        return max(1, math.ceil(sat_per_kvb / 1000))

    # -- sending ---------------------------------------------------------------------------

    async def sendrawtransaction(self, raw_hex: str, txid: str | None = None) -> str:
        """Submit a signed transaction; return its txid once the node holds it.

        After the node answers a txid, :meth:`getmempoolentry` confirms the transaction
        really is in the mempool (or :meth:`getrawtransaction`, already mined): stock bcoin
        answers the txid for any decodable transaction and checks it later, so an answer
        alone proves nothing. The launcher's ``sendrawtransaction`` (and Bitcoin Core) only
        answer after acceptance, so the check costs one request and never fails there.

        Args:
            raw_hex: the serialised transaction, hex.
            txid: the expected txid, for messages and the answer check; ``None`` to trust
                the node's.

        Raises:
            AlreadyInChain: -27, the transaction is already mined.
            SendRejected: -22/-25/-26 (invalid, missing or spent inputs, fee too low,
                non-standard...), or the node answered a txid but does not have it.
            SendOutcomeUnknown: timeout or connection lost while sending, HTTP 5xx without
                an answer, or an answer naming another txid: it may have been accepted.
            ChainError: no connection could be made (nothing was sent), or another error.
        """
        try:
            result = await self._call("sendrawtransaction", [raw_hex])
        except RpcError as exc:
            if exc.code == RPC_VERIFY_ALREADY_IN_CHAIN:
                raise AlreadyInChain(txid, exc.code, exc.message) from exc
            if exc.code in (RPC_DESERIALIZATION_ERROR, RPC_VERIFY_ERROR, RPC_VERIFY_REJECTED):
                raise SendRejected(txid, exc.code, exc.message) from exc
            raise
        except httpx.ConnectError as exc:
            raise ChainError(f"cannot connect to the node to send {txid}: {exc}") from exc
        except httpx.ConnectTimeout as exc:
            raise ChainError(f"connecting to the node timed out, {txid} not sent") from exc
        except (httpx.HTTPError, ChainError) as exc:
            raise SendOutcomeUnknown(
                f"sending {txid}: {type(exc).__name__}: {exc}; it may have reached the node"
            ) from exc
        sent = _str(result, "sendrawtransaction")
        if txid is not None and sent != txid:
            raise SendOutcomeUnknown(f"the node accepted {txid} but answered txid {sent}")
        if await self.getmempoolentry(sent) is None and await self.getrawtransaction(sent, True) is None:
            raise SendRejected(sent, None, "the node answered its txid but does not hold it")
        return sent

    # -- regtest helpers -------------------------------------------------------------------

    async def generatetoaddress(self, blocks: int, address: str) -> list[str]:
        """Mine ``blocks`` blocks paying the coinbase to ``address`` (regtest); their hashes.

        Raises:
            ChainError: the node failed (not regtest, bad address).
        """
        result = await self.call("generatetoaddress", blocks, address)
        if not isinstance(result, list):
            raise ChainError("generatetoaddress: expected a list of block hashes")
        return [str(item) for item in result]

    async def invalidateblock(self, block_hash: str) -> None:
        """Mark ``block_hash`` invalid: it and its descendants leave the main chain (tests).

        Raises:
            ChainError: the node failed.
        """
        await self.call("invalidateblock", block_hash)


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChainError(f"{what}: expected an integer, got {value!r}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ChainError(f"{what}: expected a string, got {value!r}")
    return value


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ChainError(f"{what}: expected an object, got {type(value).__name__}")
    return cast(dict[str, Any], value)
