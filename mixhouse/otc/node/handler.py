"""The RPC handler: one Grenache service key, ``{"action", "args"}`` payloads, refusals
as ``ERR_*`` error replies that change nothing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.errors import IllegalTransition, InvalidInput, NotFound
from mixhouse.otc import store
from mixhouse.otc.grenache.errors import RpcError
from mixhouse.otc.identity import NodeKey
from mixhouse.otc.node.placing import UserOrders
from mixhouse.otc.node.settings import MAX_FETCH, NodeSettings, now_ms
from mixhouse.otc.node.wire import message_fingerprint, to_json
from mixhouse.otc.orders import (
    InvalidMessage,
)

log = logging.getLogger(__name__)


class RpcHandler(UserOrders):
    """The node's RPC actions (``info``, ``announce``, ``digest``, ``fetch``, ``take``, ``confirm``)."""

    def __init__(
        self,
        *,
        key: NodeKey,
        engine: AsyncEngine,
        settings: NodeSettings | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        super().__init__(key=key, engine=engine, settings=settings, clock=clock)
        self._actions: dict[str, Callable[[list[Any]], Awaitable[Any]]] = {
            "info": self._on_info,
            "announce": self._on_announce,
            "digest": self._on_digest,
            "fetch": self._on_fetch,
            "take": self._on_take,
            "confirm": self._on_confirm,
        }

    async def handle(self, key: str, payload: Any) -> Any:  # noqa: ARG002 - one service key
        """Serve one RPC (the Grenache peer's handler).

        Raises:
            RpcError: ``ERR_BAD_REQUEST`` (not ``{"action", "args"}``), ``ERR_UNKNOWN_ACTION``,
                ``ERR_INVALID: ...`` (a message refused: nothing changed), ``ERR_STATE: ...``.
        """
        if not isinstance(payload, dict) or not set(payload) <= {"action", "args"}:
            raise RpcError('ERR_BAD_REQUEST: the payload is {"action": str, "args": [...]}')
        action, args = payload.get("action"), payload.get("args", [])
        if not isinstance(action, str) or not isinstance(args, list) or len(args) > 4:
            raise RpcError('ERR_BAD_REQUEST: the payload is {"action": str, "args": [...]}')
        serve = self._actions.get(action)
        if serve is None:
            raise RpcError(f"ERR_UNKNOWN_ACTION: {action[:40]!r}")
        try:
            return await serve(args)
        except InvalidInput as exc:
            raise RpcError(f"ERR_INVALID: {exc}") from None
        except (IllegalTransition, NotFound) as exc:
            raise RpcError(f"ERR_STATE: {exc}") from None

    async def _on_info(self, args: list[Any]) -> Any:  # noqa: ARG002
        return {"node_id": self.node_id, "address": self.address}

    async def _on_announce(self, args: list[Any]) -> Any:
        raw = self._arg(args)
        fingerprint = message_fingerprint(raw)
        if fingerprint is not None and fingerprint in self._seen:
            # A byte-for-byte copy of an announcement already verified and stored (relays make
            # several): nothing would change, so the signature checks, the costly part, are skipped.
            return {"accepted": False}
        ann = self._parse_announcement(raw)
        accepted = await self.ingest(ann)
        if accepted:
            self._spawn(self.broadcast(ann))  # relay once: a second copy is not new here
        return {"accepted": accepted}

    async def _on_digest(self, args: list[Any]) -> Any:  # noqa: ARG002
        async with self.engine.connect() as conn:
            pairs = await store.digest(conn, now_ms=self.clock())
        return {"orders": [[oid, version] for oid, version in pairs]}

    async def _on_fetch(self, args: list[Any]) -> Any:
        ids = self._arg(args)
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_FETCH
            or not all(isinstance(i, str) and len(i) == 64 for i in ids)
        ):
            raise InvalidMessage(f"fetch takes a list of at most {MAX_FETCH} order ids")
        async with self.engine.connect() as conn:
            rows = await store.orders_by_id(conn, ids, now_ms=self.clock())
        return {"orders": [to_json(store.announcement(r)) for r in rows]}
