"""The graph REST app in process (ASGI transport): error mapping, metrics isolation, schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bastion.graph import SqliteGraphStore, create_app


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteGraphStore]:
    opened = await SqliteGraphStore.open(tmp_path / "graph.db")
    yield opened
    await opened.close()


def _client(store: SqliteGraphStore) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(store)), base_url="http://graph")


async def test_unavailable_store_makes_reads_and_readiness_503_with_a_detail(store: SqliteGraphStore) -> None:
    async with _client(store) as client:
        assert (await client.get("/readyz")).status_code == 200
        await store.close()

        ready = await client.get("/readyz")
        listing = await client.get("/graphs")
        alive = await client.get("/healthz")

    assert (ready.status_code, listing.status_code) == (503, 503)
    assert "is closed" in ready.json()["detail"]
    assert "is closed" in listing.json()["detail"]
    assert alive.json() == {"status": "ok"}


async def test_each_app_has_its_own_metrics_registry(store: SqliteGraphStore) -> None:
    # With the global registry the second app would fail on duplicate metric names.
    async with _client(store) as first, _client(store) as second:
        one, two = await first.get("/metrics"), await second.get("/metrics")

    assert one.status_code == two.status_code == 200
    assert "bastion_graph_ingest_seconds" in one.text
    assert one.headers["content-type"].startswith("text/plain")


async def test_openapi_documents_the_enum_names_clients_receive(store: SqliteGraphStore) -> None:
    async with _client(store) as client:
        schema = (await client.get("/openapi.json")).json()

    node = schema["components"]["schemas"]["NodeView"]["properties"]
    assert "BLOCKED" in node["outcome"]["description"]
    assert "THINKING" in node["node_type"]["description"]
    listing = schema["paths"]["/graphs"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "cursor"}
