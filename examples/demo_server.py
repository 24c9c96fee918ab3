"""A small MCP server for the demo and the tests, built with the `mcp` SDK.

Tools: `add` (harmless), `echo`, `count` (streams progress notifications while it
runs), `confirm` (asks the client a question mid-call: elicitation), and `delete_file`
(the one the demo policy denies). Resources `demo://notes/readme` and the template
`demo://secrets/{name}`; prompt `greet`.
`delete_file` deletes nothing: it appends the call to --record FILE, as every resource
read and prompt get does, so a test can prove the upstream never executed a blocked call.

    python examples/demo_server.py --port 9001            # serves http://127.0.0.1:9001/mcp
    python examples/demo_server.py --port 0 --port-file P # picks a free port, writes it to P
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from pathlib import Path

import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import BaseModel


class Answer(BaseModel):
    ok: bool


def build_server(record: Path | None) -> MCPServer:
    server = MCPServer("bastion-demo")

    def _record(entry: dict[str, str]) -> None:
        if record is not None:
            with record.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    async def count(to: int, ctx: Context) -> int:
        """Count to `to`, reporting progress at each step."""
        for step in range(1, to + 1):
            await ctx.report_progress(step, to, f"step {step}")
        return to

    @server.tool()
    async def confirm(question: str, ctx: Context) -> str:
        """Ask the client to confirm; answer with what it said."""
        answer = await ctx.elicit(question, Answer)
        if answer.action == "accept" and answer.data is not None:
            return "confirmed" if answer.data.ok else "refused"
        return answer.action

    @server.tool()
    def delete_file(path: str) -> str:
        """Pretend to delete a file (records the call instead)."""
        _record({"tool": "delete_file", "path": path})
        return f"deleted {path}"

    @server.resource("demo://notes/readme", mime_type="text/plain")
    def readme() -> str:
        """A note anyone may be allowed to read (records every read)."""
        _record({"resource": "demo://notes/readme"})
        return "Bastion demo notes."

    @server.resource("demo://secrets/{name}", mime_type="text/plain")
    def secret(name: str) -> str:
        """A secret, by name: the kind of resource a policy keeps from agents (records every read)."""
        _record({"resource": f"demo://secrets/{name}"})
        return f"secret {name}"

    @server.prompt()
    def greet(name: str) -> str:
        """A greeting prompt (records every get)."""
        _record({"prompt": "greet"})
        return f"Say hello to {name}."

    return server


async def _serve(host: str, port: int, port_file: Path | None, record: Path | None) -> None:
    # IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (see bastion/_web.py).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listen before announcing the port: connections then queue until uvicorn accepts.
    sock.listen(128)
    # On loopback the SDK turns on its DNS-rebinding protection; in a container (0.0.0.0)
    # the Bastion proxy in front of it is what checks Host and Origin.
    app = build_server(record).streamable_http_app(host=host)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(sock.getsockname()[1]))
        os.replace(tmp, port_file)
    await server.serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--record", type=Path, help="append executed delete_file calls here")
    parser.add_argument("--stdio", action="store_true", help="speak MCP on stdin/stdout instead of HTTP")
    args = parser.parse_args()
    if args.stdio:
        build_server(args.record).run("stdio")
        return
    asyncio.run(_serve(args.host, args.port, args.port_file, args.record))


if __name__ == "__main__":
    main()
