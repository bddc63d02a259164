"""One OTC node process: its database, key, Grenache peer, background loops and HTTP API.

:func:`running_node` wires them in order (database migrated, key loaded or created, peer
started and visible on the grapes, loops started, API listening) and takes them down in
reverse; ``mixhouse otc node`` runs it until Ctrl-C/SIGTERM, the demo and tests run several
in one process or as processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from mixhouse.db.embedded import start_embedded
from mixhouse.db.engine import make_engine
from mixhouse.db.migrate import upgrade
from mixhouse.otc.api import create_app
from mixhouse.otc.grenache import OTC_SERVICE, GrenachePeer
from mixhouse.otc.identity import NodeKey
from mixhouse.otc.node import NodeSettings, OtcNode
from mixhouse.servers import running_server


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How to run one node.

    Attributes:
        grape_url: the grape this node announces through (on its own host).
        data_dir: the node's directory: its key (``otc_node.key``) and, without
            ``database_url``, its embedded PostgreSQL (``pg/``).
        port: Grenache RPC port (0: a free one).
        api_host: the HTTP API's bind address (loopback by default: it places orders).
        api_port: the HTTP API's port (0: a free one; None: no API).
        database_url: a libpq URI of the node's own database (None: embedded).
        other_grape_urls: further grapes ``ready()`` checks and lookups fall back to.
        settings: timers and limits.
    """

    grape_url: str
    data_dir: Path
    port: int = 0
    api_host: str = "127.0.0.1"
    api_port: int | None = 0
    database_url: str | None = None
    other_grape_urls: Sequence[str] = ()
    settings: NodeSettings = field(default_factory=NodeSettings)


@dataclass(frozen=True, slots=True)
class RunningNode:
    """A started node: its logic, its peer and its API's URL (``None`` without an API)."""

    node: OtcNode
    peer: GrenachePeer
    api_url: str | None


@asynccontextmanager
async def running_node(config: NodeConfig) -> AsyncIterator[RunningNode]:
    """Start a node (see the module docstring); stop it on exit.

    Raises:
        KeyFileError: the key file is unusable.
        GrenacheError: the peer could not start or become visible on the grapes.
    """
    if config.database_url is not None:
        url = config.database_url
    else:
        url = await asyncio.to_thread(start_embedded, config.data_dir)
    await asyncio.to_thread(upgrade, url)
    key = NodeKey.load_or_create(config.data_dir / "otc_node.key")
    # A node's own transactions are short; a small pool keeps many nodes on one server possible.
    engine = make_engine(url, pool_size=4, max_overflow=4)
    node = OtcNode(key=key, engine=engine, settings=config.settings)
    peer = GrenachePeer(
        grape_url=config.grape_url,
        service=OTC_SERVICE,
        handler=node.handle,
        port=config.port,
        other_grape_urls=config.other_grape_urls,
    )
    try:
        await peer.start()
        node.attach(peer)
        await peer.ready()  # announced and listed by every grape given
        await node.start()
        try:
            if config.api_port is None:
                yield RunningNode(node, peer, None)
            else:
                server = uvicorn.Server(
                    uvicorn.Config(
                        create_app(node),
                        host=config.api_host,
                        port=config.api_port,
                        log_level="warning",
                        lifespan="off",
                    )
                )
                async with running_server(server):
                    port = server.servers[0].sockets[0].getsockname()[1]
                    yield RunningNode(node, peer, f"http://{config.api_host}:{port}")
        finally:
            await node.close()
    finally:
        await peer.close()
        await engine.dispose()
