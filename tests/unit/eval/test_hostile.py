"""The bench's hostile client sends each hostile body at least once, however short its slice."""

from __future__ import annotations

import asyncio

from bastion.eval.bench._hostile import Attacker, attack
from bastion.eval.bench._timing import percentile_us
from bastion.proxy._upstream import UpstreamPool

_REFUSED = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"too wide"}}'


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSED), _REFUSED))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_a_slice_over_before_the_first_refusal_still_sends_each_body_once() -> None:
    # On a loaded CI machine the wide body's refusal outlasted --quick's 0.2 s slice, the
    # deep body was never sent, and the bench crashed on a percentile of nothing.
    server = await asyncio.start_server(_refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(f"http://127.0.0.1:{port}/mcp", timeout=5)
    stop = asyncio.Event()
    stop.set()  # the slice is already over
    seen = Attacker()
    async with server:
        await attack(pool, [], stop, seen)
        pool.close()
    figures = seen.figures()
    assert {name: figures[name]["sent"] for name in figures} == {"wide": 1, "deep": 1}
    assert figures["deep"]["answers"] == {"HTTP 400 -32602": 1}
    assert percentile_us([], 0.5) == 0.0
