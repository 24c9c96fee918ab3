"""The upstream MCP servers a scenario's tools live on: real `mcp` SDK servers (`MCPServer`,
streamable HTTP, port 0), one per server of the tool catalogue, whose tools answer what
the scenario being replayed scripted for them.

Scenarios are replayed one at a time, so one `Script` serves them all: before a scenario
the harness loads its steps' results, each tool answers its own in call order, and every
call that reached an upstream is recorded (a call Bastion blocked must never appear).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import uvicorn
from mcp.server import MCPServer

from ._pack import Step

_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list[Any],
    "object": dict[str, Any],
}


class Script:
    """What the upstream tools answer for the scenario being replayed, and what reached them."""

    def __init__(self) -> None:
        self._queued: dict[str, deque[dict[str, Any]]] = {}
        #: (server__tool, arguments) of every call an upstream received, in order.
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def load(self, steps: Iterable[Step]) -> None:
        self._queued.clear()
        self.calls.clear()
        for step in steps:
            self._queued.setdefault(step.tool, deque()).append(step.result)

    def answer(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((tool, arguments))
        queued = self._queued.get(tool)
        return queued.popleft() if queued else {"ok": True}


def build_server(name: str, tools: Mapping[str, Mapping[str, Any]], script: Script) -> MCPServer:
    """One upstream: every tool of `tools` (the catalogue's entry for server `name`)."""
    # The SDK configures logging at INFO unless told otherwise; the harness prints its own report.
    server = MCPServer(name, log_level="WARNING")
    for tool, spec in tools.items():
        params = spec.get("params") or {}
        server.add_tool(
            _tool_function(f"{name}__{tool}", params, script), name=tool, description=spec.get("description", tool)
        )
    return server


def _annotation(kind: str) -> Any:
    # A string parameter is `str` itself, not `str | None`: the SDK parses a string argument as
    # JSON whenever its parameter is annotated otherwise (`pre_parse_json`, for clients that
    # send lists as JSON text), so a webhook body written as JSON text arrived as an object and
    # failed validation (a blind pack's scenario). The default None is never validated.
    return str if _TYPES[kind] is str else _TYPES[kind] | None


def _tool_function(tool: str, params: Mapping[str, str], script: Script) -> Callable[..., dict[str, Any]]:
    """A function the SDK derives the tool's input schema from: every parameter optional."""

    def call(**arguments: Any) -> dict[str, Any]:
        return script.answer(tool, {key: value for key, value in arguments.items() if value is not None})

    parameters = [
        inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_annotation(kind))
        for param, kind in params.items()
    ]
    call.__signature__ = inspect.Signature(parameters, return_annotation=dict[str, Any])  # type: ignore[attr-defined]
    call.__annotations__ = {param.name: param.annotation for param in parameters} | {"return": dict[str, Any]}
    call.__name__ = tool
    return call


@contextlib.asynccontextmanager
async def serving_mcp(server: MCPServer, wrap: Callable[[Any], Any] | None = None) -> AsyncIterator[str]:
    """Serve `server` over streamable HTTP on a free loopback port until the block exits;
    yield its MCP URL. `wrap` may put another ASGI app in front of the server's."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    app = server.streamable_http_app(host="127.0.0.1")
    if wrap is not None:
        app = wrap(app)
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(web.serve(sockets=[sock]))
    while not web.started:
        if task.done():
            task.result()  # raises the startup error
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    finally:
        web.should_exit = True
        await task


@contextlib.asynccontextmanager
async def upstreams(
    catalogue: Mapping[str, Mapping[str, Mapping[str, Any]]], names: Iterable[str], script: Script
) -> AsyncIterator[dict[str, str]]:
    """The catalogue's servers named in `names`, each serving; yields their URLs by name."""
    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for name in sorted(set(names)):
            urls[name] = await stack.enter_async_context(serving_mcp(build_server(name, catalogue[name], script)))
        yield urls
