"""The durable swap driver (issue 10, part 3): each node runs one :class:`SwapEngine` over its
own database, its own keys and the two chains.

Every step is one database transaction that moves one swap to its next state together with
its audit entry (and the message it owes the other node, if any, in the outbox). Chain work
happens between transactions and is idempotent: a transaction is signed and stored
(``*_signed``) before it is broadcast, and broadcast again after a restart. Messages to the
other node are sent from the outbox until acknowledged. Deadlines are the node's own: each
pass looks at every open swap, and a side whose lock timed out refunds without being asked.
A restarted engine just runs its passes again: it keeps nothing in memory that matters.

Safety rules (see :mod:`.plan` for the figures):

* the participant locks only after the initiator's lock is confirmed (k) and checked (script
  or contract, hash, amount, recipient, refund key, token, timeout);
* the initiator reveals the secret (claims) only after the participant's lock is confirmed and
  checked, and only while it has ``claim_margin_seconds`` to run;
* the participant claims only while the initiator's lock has the claim margin to run;
* a refund only once one's own timeout is reached (the chain refuses it before anyway);
* each fill is its own swap with its own 32-byte secret.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mixhouse import audit
from mixhouse.chains.htlc import HtlcMismatch, new_secret, secret_hash
from mixhouse.errors import BroadcastRejected, ChainError, InsufficientFunds, InvalidInput, MixhouseError
from mixhouse.otc.swaps import plan, store
from mixhouse.otc.swaps.legs import Leg, LockSpec, LockStatus, StoredTx
from mixhouse.otc.swaps.states import INITIATOR, PARTICIPANT, check_transition, initial_state
from mixhouse.otc.swaps.transport import PeerUnreachable, SwapTransport

log = logging.getLogger(__name__)

SIGNED = frozenset({"lock_signed", "claim_signed", "refund_signed"})


@dataclass(frozen=True, slots=True)
class SwapTrade:
    """An agreed fill, as both nodes know it, to settle by one swap.

    Attributes:
        trade_id: the fill's id (one swap per fill; the swap id is derived from it).
        initiator: the node that makes the secret and locks first.
        participant: the other node.
        initiator_chain: ``"btc"`` or ``"evm"``: where the initiator locks (pays).
        btc_sat: satoshi locked on Bitcoin.
        evm_amount: wei, or token base units, locked on Ethereum.
        evm_token: the ERC-20 address, ``None`` for ETH.
    """

    trade_id: str
    initiator: str
    participant: str
    initiator_chain: str
    btc_sat: int
    evm_amount: int
    evm_token: str | None = None

    @property
    def swap_id(self) -> str:
        """The swap's id, the same on both nodes."""
        return f"swap:{self.trade_id}"

    def as_json(self) -> dict[str, Any]:
        """The trade as the ``terms`` column holds it (amounts as decimal strings)."""
        return {
            "trade_id": self.trade_id,
            "initiator": self.initiator,
            "participant": self.participant,
            "initiator_chain": self.initiator_chain,
            "btc_sat": str(self.btc_sat),
            "evm_amount": str(self.evm_amount),
            "evm_token": self.evm_token,
        }


def _amount(terms: Mapping[str, Any], chain: str) -> int:
    return int(terms["btc_sat"] if chain == plan.BTC else terms["evm_amount"])


def _token(terms: Mapping[str, Any], chain: str) -> str | None:
    token = terms.get("evm_token") if chain == plan.EVM else None
    return None if token is None else str(token)


def _same_trade(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> str | None:
    """The first trade field on which the offer differs from our own record, else ``None``."""
    for name in ("trade_id", "initiator", "participant", "initiator_chain", "btc_sat", "evm_amount", "evm_token"):
        if str(mine.get(name)) != str(theirs.get(name)):
            return name
    return None


class SwapEngine:
    """One node's swaps.

    Args:
        db: this node's database (migrated to 0019).
        node: this node's name on the OTC network (what the other node sends to).
        legs: ``{"btc": BitcoinLeg, "evm": EvmLeg}`` with this node's keys.
        transport: reaches the other node's engine.
        settings: T1, T2, margins, k (checked by :func:`plan.check_settings`).

    Raises:
        ConfigError: unsafe settings.
    """

    def __init__(
        self,
        db: AsyncEngine,
        *,
        node: str,
        legs: Mapping[str, Leg],
        transport: SwapTransport,
        settings: plan.SwapSettings,
    ) -> None:
        plan.check_settings(settings)
        self.db = db
        self.node = node
        self.legs = dict(legs)
        self.transport = transport
        self.settings = settings
        self._last_attempt: dict[int, float] = {}

    # -- opening ---------------------------------------------------------------------------

    def role_in(self, trade: SwapTrade) -> str:
        """Our role in ``trade``.

        Raises:
            InvalidInput: we are neither side.
        """
        if trade.initiator == self.node:
            return INITIATOR
        if trade.participant == self.node:
            return PARTICIPANT
        raise InvalidInput(f"{self.node} is not a side of trade {trade.trade_id}")

    def _ids(self) -> dict[str, str]:
        return {chain: leg.identity() for chain, leg in self.legs.items()}

    async def open_swap(self, trade: SwapTrade) -> str:
        """Start the swap of an agreed fill; idempotent (a second call changes nothing).

        The initiator makes a fresh secret (stored in its database only) and owes the
        participant an ``offer`` with the hash and its ids; the participant waits for it.

        Returns:
            The swap id.

        Raises:
            InvalidInput: we are not a side, or an unknown chain.
        """
        role = self.role_in(trade)
        plan.other_chain(trade.initiator_chain)
        terms = trade.as_json()
        terms["ids"] = {role: self._ids()}
        secret = new_secret() if role == INITIATOR else None
        peer = trade.participant if role == INITIATOR else trade.initiator
        async with self.db.begin() as conn:
            created = await store.insert_swap(
                conn,
                swap_id=trade.swap_id,
                trade_id=trade.trade_id,
                role=role,
                peer=peer,
                state=initial_state(role),
                secret_hash=secret_hash(secret).hex() if secret else "",
                secret=secret.hex() if secret else None,
                terms=terms,
            )
            if created:
                if secret is not None:
                    offer = {"terms": terms, "secret_hash": secret_hash(secret).hex()}
                    await store.enqueue(conn, swap_id=trade.swap_id, kind="offer", payload=offer)
                await audit.append(conn, [self._entry(trade.swap_id, "opened", role, {"trade_id": trade.trade_id})])
        return trade.swap_id

    # -- messages --------------------------------------------------------------------------

    async def handle(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Answer a message from the other node's engine (idempotent: a repeat gets the same
        answer). ``{"ok": True, ...}`` acknowledges it; ``{"ok": False, "error"}`` does not
        (the sender tries again later, e.g. while we have not seen the trade yet).

        Kinds: ``offer`` (``terms``, ``secret_hash``: answered with our ids) and ``locked``
        (the sender's lock ``spec`` and ``ref``).
        """
        swap_id, kind = str(message.get("swap_id")), message.get("kind")
        payload = message.get("payload") or {}
        async with self.db.begin() as conn:
            row = await store.get_swap(conn, swap_id, lock=True)
            if row is None or row.peer != message.get("from"):
                return {"ok": False, "error": "unknown swap"}
            data = dict(row.data)
            if kind == "offer" and row.role == PARTICIPANT:
                theirs = payload.get("terms") or {}
                differs = _same_trade(row.terms, theirs)
                if differs is not None:
                    return {"ok": False, "error": f"the offer's {differs} is not the agreed one"}
                hash_hex = str(payload.get("secret_hash", ""))
                if row.state == "awaiting_offer":
                    if len(bytes.fromhex(hash_hex)) != 32:
                        return {"ok": False, "error": "the secret hash is not 32 bytes"}
                    terms = dict(row.terms)
                    terms["ids"] = {**terms.get("ids", {}), INITIATOR: dict(theirs.get("ids", {}).get(INITIATOR, {}))}
                    await self._write(conn, row, "offered", data, terms=terms, secret_hash=hash_hex)
                elif row.secret_hash != hash_hex:
                    return {"ok": False, "error": "another secret hash was offered before"}
                return {"ok": True, "ids": self._ids()}
            if kind == "locked":
                if "peer_lock" not in data:
                    data["peer_lock"] = {"spec": payload.get("spec"), "ref": payload.get("ref")}
                    await store.update_swap(conn, swap_id, state=row.state, data=data)
                    await audit.append(
                        conn, [self._entry(swap_id, "peer_locked", row.role, {"ref": payload.get("ref")})]
                    )
                return {"ok": True}
        return {"ok": False, "error": f"unexpected {kind!r}"}

    async def pump(self) -> int:
        """Send every unacknowledged message once (at most every ``message_retry_seconds``);
        returns how many were acknowledged."""
        async with self.db.connect() as conn:
            pending = await store.undelivered(conn)
        acked = 0
        now = time.monotonic()
        for msg in pending:
            if now - self._last_attempt.get(msg.id, -1e9) < self.settings.message_retry_seconds:
                continue
            self._last_attempt[msg.id] = now
            request = {"swap_id": msg.swap_id, "kind": msg.kind, "payload": msg.payload, "from": self.node}
            try:
                reply = await self.transport.request(msg.peer, request)
            except (PeerUnreachable, MixhouseError, OSError) as exc:
                log.info("swap %s: %s to %s not delivered (%s)", msg.swap_id, msg.kind, msg.peer, type(exc).__name__)
                async with self.db.begin() as conn:
                    await store.count_attempt(conn, msg.id)
                continue
            if not reply.get("ok"):
                async with self.db.begin() as conn:
                    await store.count_attempt(conn, msg.id)
                continue
            async with self.db.begin() as conn:
                await store.mark_delivered(conn, msg.id)
                if msg.kind == "offer":
                    row = await store.get_swap(conn, msg.swap_id, lock=True)
                    if row is not None and row.state == "offering":
                        terms = dict(row.terms)
                        terms["ids"] = {**terms["ids"], PARTICIPANT: dict(reply.get("ids") or {})}
                        await self._write(conn, row, "agreed", dict(row.data), terms=terms)
            acked += 1
        return acked

    # -- the passes ------------------------------------------------------------------------

    async def run_once(self) -> None:
        """One pass: deliver owed messages, then one step of every open swap."""
        await self.pump()
        async with self.db.connect() as conn:
            rows = await store.open_swaps(conn)
        for row in rows:
            try:
                await self.step(row)
                # A transaction just signed and stored is broadcast at once (the next swap's
                # Ethereum nonce then counts it); a crash in between sends it on restart.
                async with self.db.connect() as conn:
                    fresh = await store.get_swap(conn, row.id)
                if fresh is not None and fresh.state != row.state and fresh.state in SIGNED:
                    await self.step(fresh)
            except (ChainError, InsufficientFunds, PeerUnreachable) as exc:
                # Retried on the next pass: the swap's state is unchanged.
                log.warning("swap %s (%s): step failed: %s", row.id, row.state, exc)
        await self.pump()

    async def step(self, row: Row[Any]) -> None:
        """Take at most one step of the swap ``row`` (see the module docstring)."""
        role, state, data, terms = row.role, row.state, dict(row.data), dict(row.terms)
        my_chain = plan.lock_chain(role, terms["initiator_chain"])
        peer_chain = plan.other_chain(my_chain)
        mine, theirs = self.legs[my_chain], self.legs[peer_chain]
        s = self.settings
        k_peer = s.confirmations(peer_chain)

        if state in ("offering", "awaiting_offer") or (state == "offered" and "peer_lock" not in data):
            if self._age(row) > s.lock_by_seconds:
                await self._move(row, "abandoned", data, error="no lock from the other side in time")
            return

        if state == "agreed":
            await self._lock_own(row, data, claimer_role=PARTICIPANT, lock_seconds=s.t1_seconds)
            return

        if state == "offered":
            spec, status, why = await self._checked_peer_lock(row, terms, data, peer_chain, peer_role=INITIATOR)
            if status is None:
                await self._move(row, "abandoned", data, error=why)
                return
            if status.confirmations is None:
                if self._age(row) > s.lock_by_seconds:
                    await self._move(row, "abandoned", data, error="the initiator's lock never appeared")
                return
            left = await theirs.seconds_left(spec.timeout)
            refusal = plan.participant_may_lock(
                s,
                initiator_left_seconds=left,
                initiator_confirmations=status.confirmations,
                initiator_chain_=peer_chain,
            )
            if refusal is None and plan.initiator_timeout_too_long(s, initiator_left_seconds=left):
                refusal = "long_timeout"
            if refusal == "unconfirmed":
                return
            if refusal is not None:
                await self._move(
                    row, "abandoned", data, error=f"the initiator's lock has a {refusal.replace('_', ' ')}"
                )
                return
            data["peer_lock"]["ref"] = status.ref
            await self._lock_own(row, data, claimer_role=INITIATOR, lock_seconds=s.t2_seconds)
            return

        if state == "lock_signed":
            try:
                for tx in self._txs(data, "lock_txs"):
                    await mine.broadcast(tx)
            except BroadcastRejected:
                if my_chain != plan.EVM:
                    raise
                # Its nonce went to another of our transactions: this one can never be
                # mined, so the same lock is signed again with the next nonce.
                await self._sign_lock(row, data, LockSpec.from_json(data["lock_spec"]), state="lock_signed")
                return
            await self._move(row, "locked", data, txid=self._txs(data, "lock_txs")[-1].txid)
            return

        own_spec = LockSpec.from_json(data["lock_spec"]) if "lock_spec" in data else None

        if state == "locked":
            assert own_spec is not None
            depth = await mine.tx_confirmations(self._txs(data, "lock_txs")[-1])
            if depth is None:
                await self._move(row, "lock_signed", data, error="our lock left the chain; sending it again")
            elif depth >= s.confirmations(my_chain):
                message = {"spec": own_spec.as_json(), "ref": data["lock_ref"]}
                await self._move(row, "lock_confirmed", data, message=("locked", message))
            elif await mine.refundable(own_spec.timeout):
                await self._move(row, "refund_wait", data, error="our lock never confirmed before its timeout")
            return

        if state == "lock_confirmed":
            assert own_spec is not None
            if role == PARTICIPANT:
                found = await mine.find_secret(own_spec, data["lock_ref"])
                if found is not None and secret_hash(found).hex() == row.secret_hash:
                    await self._move(row, "secret_known", data, secret=found.hex())
                elif await mine.refundable(own_spec.timeout):
                    await self._move(row, "refund_wait", data, error="the initiator never claimed")
                return
            await self._initiator_claim(
                row,
                data=data,
                terms=terms,
                own_spec=own_spec,
                mine=mine,
                theirs=theirs,
                peer_chain=peer_chain,
                k_peer=k_peer,
            )
            return

        if state == "secret_known":
            spec, ref = self._peer_lock(data)
            status = await theirs.lock_status(spec, ref)
            left = await theirs.seconds_left(spec.timeout)
            verdict = plan.may_claim(
                s, other_left_seconds=left, other_confirmations=status.confirmations or 0, chain=peer_chain
            )
            late_on_bitcoin = verdict == "too_late" and peer_chain == plan.BTC and status.confirmations is not None
            if late_on_bitcoin:
                # The secret is public already, so a late claim risks only its fee: the script
                # still takes it after the lock height, racing the initiator's refund.
                data["error"] = "late claim: the initiator may refund first"
                claim = await theirs.prepare_claim(spec, ref, bytes.fromhex(row.secret))
                await self._sign(row, data, "claim_tx", "claim_signed", claim)
            elif verdict == "too_late" or status.confirmations is None:
                await self._move(row, "too_late", data, error="the secret came too late to claim")
            elif verdict is None:
                await self._sign(
                    row,
                    data,
                    "claim_tx",
                    "claim_signed",
                    await theirs.prepare_claim(spec, ref, bytes.fromhex(row.secret)),
                )
            return

        if state == "claim_signed":
            tx = StoredTx.from_json(data["claim_tx"])
            try:
                await theirs.broadcast(tx)
            except BroadcastRejected:
                if peer_chain != plan.EVM:
                    if role == PARTICIPANT and await theirs.lock_spent(self._peer_lock(data)[1]):
                        # The initiator's refund was first: the late claim lost the race.
                        await self._move(row, "too_late", data, error="the initiator refunded before our claim")
                        return
                    raise
                spec, ref = self._peer_lock(data)
                again = await theirs.prepare_claim(spec, ref, bytes.fromhex(row.secret))
                await self._sign(row, data, "claim_tx", "claim_signed", again)
                return
            await self._move(row, "claimed", data, txid=tx.txid)
            return

        if state == "claimed":
            tx = StoredTx.from_json(data["claim_tx"])
            depth = await theirs.tx_confirmations(tx)
            if depth is None:
                await self._move(row, "claim_signed", data, error="our claim left the chain; sending it again")
            elif depth < 0:
                if role == INITIATOR:
                    await self._move(row, "refund_wait", data, error="our claim reverted")
            elif depth >= k_peer:
                await self._move(row, "completed", data, txid=tx.txid)
            return

        if state == "refund_wait":
            assert own_spec is not None
            if await mine.refundable(own_spec.timeout):
                await self._sign(
                    row, data, "refund_tx", "refund_signed", await mine.prepare_refund(own_spec, data["lock_ref"])
                )
            return

        if state == "refund_signed":
            assert own_spec is not None
            tx = StoredTx.from_json(data["refund_tx"])
            try:
                await mine.broadcast(tx)
            except BroadcastRejected:
                if my_chain != plan.EVM:
                    raise
                again = await mine.prepare_refund(own_spec, data["lock_ref"])
                await self._sign(row, data, "refund_tx", "refund_signed", again)
                return
            await self._move(row, "refunding", data, txid=tx.txid)
            return

        if state == "refunding":
            tx = StoredTx.from_json(data["refund_tx"])
            depth = await mine.tx_confirmations(tx)
            if depth is None:
                await self._move(row, "refund_signed", data, error="our refund left the chain; sending it again")
            elif depth >= s.confirmations(my_chain):
                await self._move(row, "refunded", data, txid=tx.txid)

    async def _initiator_claim(
        self,
        row: Row[Any],
        *,
        data: dict[str, Any],
        terms: dict[str, Any],
        own_spec: LockSpec,
        mine: Leg,
        theirs: Leg,
        peer_chain: str,
        k_peer: int,
    ) -> None:
        """The initiator, locked and confirmed: claim the participant's lock when it is
        confirmed and checked with time to spare, else refund at T1."""
        if await mine.refundable(own_spec.timeout):
            await self._move(row, "refund_wait", data, error="the participant's lock did not come in time")
            return
        if "peer_lock" not in data:
            return
        spec, status, why = await self._checked_peer_lock(row, terms, data, peer_chain, peer_role=PARTICIPANT)
        if status is None:
            await self._move(row, "refund_wait", data, error=why)
            return
        if status.confirmations is None or status.confirmations < k_peer:
            return
        peer_left = await theirs.seconds_left(spec.timeout)
        own_left = await mine.seconds_left(own_spec.timeout)
        if not plan.participant_timeout_ok(
            self.settings, participant_left_seconds=peer_left, initiator_left_seconds=own_left
        ):
            await self._move(row, "refund_wait", data, error="the participant's timeout does not leave the margin")
            return
        verdict = plan.may_claim(
            self.settings, other_left_seconds=peer_left, other_confirmations=status.confirmations, chain=peer_chain
        )
        if verdict == "too_late":
            await self._move(row, "refund_wait", data, error="too late to claim the participant's lock safely")
            return
        if verdict is None:
            data["peer_lock"]["ref"] = status.ref
            claim = await theirs.prepare_claim(spec, status.ref, bytes.fromhex(row.secret))
            await self._sign(row, data, "claim_tx", "claim_signed", claim)

    # -- helpers ---------------------------------------------------------------------------

    def _check_peer_spec(
        self, row: Row[Any], terms: Mapping[str, Any], spec: LockSpec, chain: str, *, peer_role: str
    ) -> str | None:
        """Why the other side's announced lock is not the agreed one, else ``None``."""
        expected = {
            "secret_hash": row.secret_hash,
            "claimer": self.legs[chain].identity(),
            "refunder": terms["ids"][peer_role][chain],
            "amount": _amount(terms, chain),
            "token": _token(terms, chain),
        }
        for name, want in expected.items():
            got = getattr(spec, name)
            if str(got).lower() != str(want).lower():
                return f"the {peer_role}'s lock has another {name}"
        return None

    async def _checked_peer_lock(
        self, row: Row[Any], terms: Mapping[str, Any], data: Mapping[str, Any], chain: str, *, peer_role: str
    ) -> tuple[LockSpec, LockStatus | None, str]:
        """The other side's announced lock, checked against the agreed terms and on its chain:
        ``(spec, status, "")``, or ``(spec, None, why)`` when it is not the agreed one."""
        spec, ref = self._peer_lock(data)
        why = self._check_peer_spec(row, terms, spec, chain, peer_role=peer_role)
        if why is not None:
            return spec, None, why
        try:
            return spec, await self.legs[chain].lock_status(spec, ref), ""
        except HtlcMismatch as exc:
            return spec, None, f"the {peer_role}'s lock is not the agreed one ({exc})"

    @staticmethod
    def _peer_lock(data: Mapping[str, Any]) -> tuple[LockSpec, dict[str, Any]]:
        lock = data["peer_lock"]
        return LockSpec.from_json(lock["spec"]), dict(lock["ref"])

    @staticmethod
    def _txs(data: Mapping[str, Any], key: str) -> list[StoredTx]:
        return [StoredTx.from_json(tx) for tx in data[key]]

    @staticmethod
    def _age(row: Row[Any]) -> float:
        return time.time() - float(row.created_at.timestamp())

    async def _lock_own(self, row: Row[Any], data: dict[str, Any], *, claimer_role: str, lock_seconds: int) -> None:
        """Sign our side's lock of the agreed amount: claimable by ``claimer_role``'s key on our
        chain, refundable to us after ``lock_seconds`` (t1 for the initiator, t2 for the participant)."""
        terms = row.terms
        chain = plan.lock_chain(row.role, terms["initiator_chain"])
        mine = self.legs[chain]
        spec = LockSpec(
            secret_hash=row.secret_hash,
            claimer=terms["ids"][claimer_role][chain],
            refunder=mine.identity(),
            amount=_amount(terms, chain),
            timeout=await mine.timeout_in(lock_seconds),
            token=_token(terms, chain),
        )
        await self._sign_lock(row, data, spec)

    async def _sign_lock(self, row: Row[Any], data: dict[str, Any], spec: LockSpec, state: str = "lock_signed") -> None:
        async with self.db.connect() as conn:
            reserved = await store.reserved_outpoints(conn)
        chain = plan.lock_chain(row.role, row.terms["initiator_chain"])
        txs, ref = await self.legs[chain].prepare_lock(spec, reserved=reserved)
        data.update(lock_spec=spec.as_json(), lock_txs=[tx.as_json() for tx in txs], lock_ref=ref)
        await self._move(row, state, data, txid=txs[-1].txid, amount=spec.amount, asset=chain)

    async def _sign(self, row: Row[Any], data: dict[str, Any], key: str, state: str, tx: StoredTx) -> None:
        data[key] = tx.as_json()
        await self._move(row, state, data, txid=tx.txid)

    def _entry(
        self, swap_id: str, action: str, role: str, details: Mapping[str, Any], **extra: Any
    ) -> audit.AuditEntry:
        return audit.AuditEntry(
            action=f"otc_swap.{action}",
            entity_type="otc_swap",
            entity_id=swap_id,
            actor="worker",
            asset=extra.get("asset"),
            amount=extra.get("amount"),
            details={"node": self.node, "role": role, **details},
        )

    async def _write(
        self, conn: AsyncConnection, row: Row[Any], state: str, data: dict[str, Any], **columns: Any
    ) -> None:
        check_transition(row.role, row.state, state)
        history = list(data.get("history", []))
        history.append({"state": state, "at": int(time.time())})
        data["history"] = history
        await store.update_swap(conn, row.id, state=state, data=data, **columns)
        await audit.append(conn, [self._entry(row.id, state, row.role, {"from": row.state})])

    async def _move(
        self,
        row: Row[Any],
        state: str,
        data: dict[str, Any],
        *,
        error: str | None = None,
        txid: str | None = None,
        secret: str | None = None,
        message: tuple[str, dict[str, Any]] | None = None,
        amount: int | None = None,
        asset: str | None = None,
    ) -> None:
        """Move ``row`` to ``state`` in one transaction with its audit entry (and the message
        it owes); nothing happens if another pass moved it first."""
        check_transition(row.role, row.state, state)
        async with self.db.begin() as conn:
            current = await store.get_swap(conn, row.id, lock=True)
            if current is None or current.state != row.state:
                return
            # Fields another writer (``handle``) may have added since ``row`` was read.
            fresh = dict(current.data)
            merged = {**fresh, **data}
            if "peer_lock" in fresh and "peer_lock" not in data:
                merged["peer_lock"] = fresh["peer_lock"]
            if error is not None:
                merged["error"] = error
            if txid is not None:
                merged.setdefault("txids", {})[state] = txid
            history = list(merged.get("history", []))
            history.append({"state": state, "at": int(time.time())})
            merged["history"] = history
            await store.update_swap(conn, row.id, state=state, data=merged, secret=secret)
            details: dict[str, Any] = {"from": row.state}
            if error is not None:
                details["reason"] = error
            if txid is not None:
                details["txid"] = txid
            entry = self._entry(row.id, state, row.role, details, amount=amount, asset=asset)
            await audit.append(conn, [entry])
            if message is not None:
                await store.enqueue(conn, swap_id=row.id, kind=message[0], payload=message[1])
        log.info("swap %s: %s -> %s%s", row.id, row.state, state, f" ({error})" if error else "")


async def swap_rows(db: AsyncEngine, *, trade_id: str | None = None) -> list[dict[str, Any]]:
    """Every swap as the API shows it: id, trade, role, state, txids, deadlines, error (no secret)."""
    async with db.connect() as conn:
        rows = await store.all_swaps(conn, trade_id=trade_id)
    shown = []
    for row in rows:
        data = row.data or {}
        own = data.get("lock_spec") or {}
        peer = (data.get("peer_lock") or {}).get("spec") or {}
        shown.append(
            {
                "swap_id": row.id,
                "trade_id": row.trade_id,
                "role": row.role,
                "peer": row.peer,
                "state": row.state,
                "txids": data.get("txids", {}),
                "own_timeout": own.get("timeout"),
                "peer_timeout": peer.get("timeout"),
                "error": data.get("error"),
            }
        )
    return shown
