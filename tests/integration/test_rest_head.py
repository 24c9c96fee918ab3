"""HEAD on the graph's and the policy service's REST: answered as GET is, without the body.

RFC 9110 has every GET resource answer HEAD. FastAPI routes a GET route for GET alone, so
every HEAD was 405, uptime checks on /healthz included (`bastion._rest.HeadAsGet`). Real
servers on port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fixtures import inprocess
from fixtures.graphapi import OPEN_PATHS, UI_PATHS, app_routes, callers, guarded_routes, open_path

from bastion._appconfig import AppConfig, AuthConfig
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, load_public_keys
from bastion._rest import rest_app
from bastion._web import start_web_server
from bastion.graph import SqliteGraphStore, create_app

CALLERS = ("anonymous", "garbage", "agent", "auditor", "operator")


async def _same_but_the_body(url: str, paths: list[str], who: dict[str, dict[str, str]]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for path in paths:
            for caller in CALLERS:
                got = await http.get(path, headers=who[caller])
                head = await http.head(path, headers=who[caller])
                assert (head.status_code, head.content) == (got.status_code, b""), (path, caller)
                # The length GET's body has (not /metrics', which changes between the two reads).
                length = ("content-length",) if path != "/metrics" else ()
                for header in ("content-type", "www-authenticate", "allow", *length):
                    assert head.headers.get(header) == got.headers.get(header), (path, caller, header)


async def test_every_graph_route_answers_head_as_it_answers_get(tmp_path: Path) -> None:
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), tmp_path))
    app = create_app(store, verifier=verifier, hosts=HostCheck((), "127.0.0.1"))
    server = await start_web_server(app, "127.0.0.1:0")
    try:
        paths = [path for _, path in guarded_routes(app, {"workflow_id": "wf-1", "node_id": "node-e1"})]
        paths += [open_path(path) for _, path in app_routes(app) if path in OPEN_PATHS | UI_PATHS]
        assert "/healthz" in paths
        assert "/graphs" in paths
        await _same_but_the_body(f"http://{server.address}", paths, callers(tmp_path, tmp_path / "elsewhere"))
    finally:
        await server.stop()
        await store.close()


async def test_the_policy_service_answers_head_as_it_answers_get(tmp_path: Path) -> None:
    async with inprocess.policy(tmp_path, AppConfig()) as policy:
        paths = ["/healthz", "/readyz", "/metrics", "/v1/policies", "/v1/policies/none", "/v1/rollouts", "/nowhere"]
        await _same_but_the_body(f"http://{policy['http']}", paths, callers(tmp_path, tmp_path / "elsewhere"))


@pytest.fixture
async def tiny() -> AsyncIterator[str]:
    app: FastAPI = rest_app(title="t", hosts=HostCheck((), "127.0.0.1"))

    @app.get("/streamed")
    async def streamed() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                await asyncio.sleep(0)
                yield b"chunk\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.post("/written")
    async def written() -> dict[str, str]:
        return {"done": "yes"}

    server = await start_web_server(app, "127.0.0.1:0")
    try:
        yield f"http://{server.address}"
    finally:
        await server.stop()


async def test_a_streamed_answer_loses_its_body_and_a_post_route_stays_post_only(tiny: str) -> None:
    async with httpx.AsyncClient(base_url=tiny, timeout=10) as http:
        streamed = await http.head("/streamed")
        written = await http.head("/written")
        # The connection carries on (the HTTP server also drops a HEAD's body).
        after = await http.get("/streamed")
    assert (streamed.status_code, streamed.content) == (200, b"")
    assert written.status_code == 405
    assert written.headers["allow"] == "POST"
    assert written.content == b""
    assert after.text == "chunk\n" * 3
