"""An example agent: calls tools of the demo MCP server through the Bastion proxy, forever.

    python examples/agent.py --url http://127.0.0.1:7070/mcp/demo --token "$TOKEN"
    python examples/agent.py --url http://proxy:7070/mcp/demo --agent example-agent   # docker-compose.yml

It connects with the `mcp` SDK's streamable-HTTP client and a bearer token, lists the tools,
then makes one call every --interval seconds, cycling through --call NAME=JSON (default: the
demo's `add`, which the demo policy allows, and `delete_file`, which it denies). Each step is
one JSON line on stdout:

    {"at": …, "event": "tools", "tools": ["add", …]}
    {"at": …, "event": "result", "tool": "add", "result": {…CallToolResult…}}
    {"at": …, "event": "blocked", "tool": "delete_file",
     "error": {"code": -32003, "message": "POLICY_VIOLATION", "data": {…the block envelope…}}}
    {"at": …, "event": "error", "error": "ConnectError: …"}

`blocked` is any JSON-RPC error answer: Bastion's refusals (the block envelope of
docs/errors.md in `data`) as well as the server's own. Nothing stops it: after a failed
connection it waits --interval seconds and connects again.

The token is --token, else $BASTION_AGENT_TOKEN, else one `bastion token issue --agent ID`
prints (signed with the stack's dev key under $BASTION_HOME: compose shares that volume
with the services). A token it issued itself is issued again at each connection, and the
agent reconnects before it expires, so it runs for as long as the stack does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

#: The demo policy (examples/policies/demo.yaml) allows the first and denies the second.
DEFAULT_CALLS = ('add={"a": 2, "b": 3}', 'delete_file={"path": "/etc/passwd"}')
#: Reconnect (with a fresh token) once this share of an issued token's lifetime has passed.
RENEW_AT = 0.8


def emit(event: str, **fields: Any) -> None:
    """One JSON line per step, flushed: a log collector (or `docker compose logs`) sees it at once."""
    line = orjson.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields})
    sys.stdout.write(line.decode() + "\n")
    sys.stdout.flush()


def parse_call(value: str) -> tuple[str, dict[str, Any]]:
    """`add={"a": 1, "b": 2}` → ("add", {"a": 1, "b": 2}); `NAME` alone calls it without arguments."""
    name, _, raw = value.partition("=")
    try:
        arguments = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--call {value!r}: the arguments are not JSON ({exc})") from exc
    if not name or not isinstance(arguments, dict):
        raise argparse.ArgumentTypeError(f"--call {value!r}: use NAME or NAME={{json object}}")
    return name, arguments


async def issue_token(agent: str) -> tuple[str, float]:
    """(token, seconds it is valid) from `bastion token issue --agent AGENT --json`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bastion",
        "token",
        "issue",
        "--agent",
        agent,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"bastion token issue failed: {err.decode().strip()}")
    issued = orjson.loads(out)
    return str(issued["token"]), float(issued["expires_in"])


def describe(exc: BaseException) -> str:
    # The SDK raises from inside task groups: the first leaf is the useful part.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


async def session(
    url: str, token: str, calls: Iterator[tuple[str, dict[str, Any]]], interval: float, until: float
) -> None:
    """One connection: list the tools, then call until `until` (monotonic seconds)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        listed = await client.list_tools()
        emit("tools", tools=[tool.name for tool in listed.tools])
        while time.monotonic() < until:
            name, arguments = next(calls)
            try:
                result = await client.call_tool(name, arguments)
            except MCPError as exc:  # a JSON-RPC error answer: the session itself is fine
                emit("blocked", tool=name, error={"code": exc.code, "message": exc.message, "data": exc.data})
            else:
                emit("result", tool=name, result=result.model_dump(mode="json", by_alias=True, exclude_none=True))
            await asyncio.sleep(interval)


async def run(options: argparse.Namespace) -> None:
    calls = itertools.cycle(options.call or [parse_call(value) for value in DEFAULT_CALLS])
    given = options.token or os.environ.get("BASTION_AGENT_TOKEN")
    while True:
        try:
            if given:
                token, until = given, float("inf")
            else:
                token, lifetime = await issue_token(options.agent)
                until = time.monotonic() + lifetime * RENEW_AT
            await session(options.url, token, calls, options.interval, until)
        except Exception as exc:  # an example agent keeps going; each failure is one line
            emit("error", error=describe(exc))
            await asyncio.sleep(options.interval)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:7070/mcp/demo", help="the proxy's MCP endpoint")
    parser.add_argument("--token", help="bearer token (default: $BASTION_AGENT_TOKEN, else issued for --agent)")
    parser.add_argument("--agent", default="example-agent", help="agent id of a token issued here")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between calls (default 10)")
    parser.add_argument(
        "--call",
        action="append",
        type=parse_call,
        help="a tool to call, NAME=JSON (repeatable; default add and delete_file)",
    )
    return parser


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parser().parse_args()))
