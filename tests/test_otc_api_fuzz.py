"""schemathesis over a real OTC node's HTTP API (generated from its OpenAPI, sent over HTTP to
the node served by uvicorn on loopback): no 5xx, whatever the input, and the node still serves.

The schema is loaded at import from the app of an unused node (the schema does not depend on
it); the node under test runs on its own event loop in a thread for the whole test (its
database, grapes and background loops live there), and schemathesis calls it over HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from mixhouse.otc.api import create_app
from mixhouse.otc.devnet import Grapes
from mixhouse.otc.node import OtcNode
from mixhouse.otc.runtime import NodeConfig, running_node
from tests.otc_support import FAST, fresh_databases

api_schema = schemathesis.openapi.from_dict(create_app(cast(OtcNode, None)).openapi())
START_DEADLINE_S = 120.0


class NodeThread:
    """A node with its API on its own loop in a thread; ``api_url`` once it is up."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.api_url: str | None = None
        self.error: BaseException | None = None
        self._up = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="otc-fuzz-node")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with running_node(self.config) as node:
                self.api_url = node.api_url
                self._up.set()
                await self._stop.wait()
        except BaseException as exc:  # reported to the test thread, which fails with it
            self.error = exc
        finally:
            self._up.set()

    def __enter__(self) -> NodeThread:
        self._thread.start()
        assert self._up.wait(START_DEADLINE_S), "the node did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_DEADLINE_S)
        assert not self._thread.is_alive(), "the node did not stop"


@pytest.fixture(scope="module")
def node_api(
    grapes: Grapes, pg_server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The API URL of a real node (own database, on the session's grapes)."""
    data_dir: Path = tmp_path_factory.mktemp("otc-fuzz")
    with fresh_databases(pg_server_url, template_db, 1) as (url,):
        config = NodeConfig(
            grape_url=grapes.urls[0],
            other_grape_urls=grapes.urls[1:],
            data_dir=data_dir,
            database_url=url,
            settings=FAST,
            api_port=0,
        )
        with NodeThread(config) as node:
            assert node.api_url is not None
            yield node.api_url
            # Still serving after everything schemathesis sent.
            assert httpx.get(node.api_url + "/health", timeout=30, trust_env=False).json() == {"status": "ok"}


@api_schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_otc_api_never_answers_5xx(case: Any, node_api: str) -> None:
    response = case.call(base_url=node_api)
    assert response.status_code < 500, response.text
    case.validate_response(response, checks=[not_a_server_error])
