"""The proxy's view of an upstream's live tools/list, fetched from a real `mcp` SDK server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from fixtures.sdk_upstream import serving_mcp
from mcp.server import MCPServer

from bastion import UnknownTool, UpstreamError
from bastion.proxy._catalog import LiveTool, ToolCatalog
from bastion.proxy._upstream import UpstreamPool


def _server() -> MCPServer:
    server = MCPServer("catalog-test")

    def transfer(amount: int) -> int:
        return amount

    def get_weather(city: str) -> str:
        return city

    server.add_tool(transfer, name="transfer")
    server.add_tool(transfer, name="Transfer")
    server.add_tool(get_weather, name="getWeather")
    return server


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[MCPServer, str]]:
    server = _server()
    async with serving_mcp(server) as url:
        yield server, url


async def test_exact_names_pass_and_case_variants_are_refused_with_the_real_name(
    upstream: tuple[MCPServer, str],
) -> None:
    pool = UpstreamPool(upstream[1], timeout=5)
    catalog = ToolCatalog("bank", pool)
    await catalog.check("getWeather")
    for variant in ("getweather", "GETWEATHER", "GetWeather"):
        with pytest.raises(UnknownTool, match="did you mean 'getWeather'"):
            await catalog.check(variant)
    with pytest.raises(UnknownTool, match="not in the tools/list of upstream 'bank'"):
        await catalog.check("nope")
    pool.close()


async def test_tools_that_differ_only_in_case_are_both_refused(upstream: tuple[MCPServer, str]) -> None:
    pool = UpstreamPool(upstream[1], timeout=5)
    catalog = ToolCatalog("bank", pool)
    for name in ("transfer", "Transfer", "TRANSFER"):
        with pytest.raises(UnknownTool, match="differ only in case"):
            await catalog.check(name)
    pool.close()


async def test_a_tool_added_upstream_is_callable_after_the_refresh_interval(upstream: tuple[MCPServer, str]) -> None:
    server, url = upstream
    pool = UpstreamPool(url, timeout=5)
    catalog = ToolCatalog("bank", pool, min_refresh=0.2)
    with pytest.raises(UnknownTool):
        await catalog.check("late")

    def late() -> str:
        return "late"

    server.add_tool(late, name="late")
    # Within the refresh interval the cached list still answers (no upstream round trip)...
    with pytest.raises(UnknownTool):
        await catalog.check("late")
    await asyncio.sleep(0.3)
    await catalog.check("late")
    pool.close()


async def test_concurrent_checks_share_one_fetch(upstream: tuple[MCPServer, str]) -> None:
    pool = UpstreamPool(upstream[1], timeout=5)
    catalog = ToolCatalog("bank", pool)
    fetches = 0
    original = catalog._fetch

    async def counting() -> list[LiveTool]:
        nonlocal fetches
        fetches += 1
        return await original()

    catalog._fetch = counting  # type: ignore[method-assign]
    await asyncio.gather(*(catalog.check("getWeather") for _ in range(20)))
    assert fetches == 1
    pool.close()


async def test_an_upstream_that_cannot_list_refuses_the_call_without_naming_its_address() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = UpstreamPool(f"http://127.0.0.1:{port}/mcp", timeout=5)
    catalog = ToolCatalog("bank", pool)
    with pytest.raises(UpstreamError, match="fail closed") as caught:
        await catalog.check("transfer")
    assert "127.0.0.1" not in str(caught.value)
    pool.close()


async def test_a_stale_list_answers_at_once_and_is_refreshed_behind_the_call(upstream: tuple[MCPServer, str]) -> None:
    server, url = upstream
    pool = UpstreamPool(url, timeout=5)
    catalog = ToolCatalog("bank", pool, ttl=0.2)
    await catalog.check("getWeather")
    fetched = asyncio.Event()
    release = asyncio.Event()
    original = catalog._fetch

    async def slow() -> list[LiveTool]:
        fetched.set()
        await release.wait()  # a listing that takes as long as a stdio child's start
        return await original()

    catalog._fetch = slow  # type: ignore[method-assign]
    server.remove_tool("getWeather")
    await asyncio.sleep(0.3)
    # Past the TTL a known name is answered from the stale list, without waiting...
    await asyncio.wait_for(catalog.check("getWeather"), 1.0)
    await asyncio.wait_for(fetched.wait(), 1.0)
    release.set()
    # ...and once the refresh behind it lands, the tool removed upstream is refused.
    for _ in range(100):
        try:
            await catalog.check("getWeather")
        except UnknownTool:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the refreshed list still offers a removed tool")
    pool.close()
