"""The proxy's CORS wrapper of /v1/approvals and /v1/queue: the dashboard's origin alone is
answered, and whatever it refuses still reaches the route's handler, which journals
refusals (workflow `bastion.rejected`)."""

from __future__ import annotations

from typing import Any

from bastion._hosts import HostCheck
from bastion.proxy._asgi import Message, Receive, Scope, Send
from bastion.proxy._cors import allow_dashboard

DASHBOARD = "http://127.0.0.1:8080"
PREFLIGHT = [(b"access-control-request-method", b"POST"), (b"access-control-request-headers", b"authorization")]


class _Handler:
    """Stands in for the approvals handler: records what reached it, answers 418."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 418, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"handled"})


async def _call(
    handler: _Handler, method: str, headers: list[tuple[bytes, bytes]], hosts: HostCheck | None = None
) -> tuple[int, dict[bytes, list[bytes]]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "method": method, "path": "/v1/approvals", "headers": headers}
    wrapped = allow_dashboard(handler, DASHBOARD) if hosts is None else allow_dashboard(handler, DASHBOARD, hosts)
    await wrapped(scope, receive, send)
    start = sent[0]
    found: dict[bytes, list[bytes]] = {}
    for name, value in start["headers"]:
        found.setdefault(name, []).append(value)
    return start["status"], found


def _host(origin: bytes | None = None, host: bytes = b"127.0.0.1:7070") -> list[tuple[bytes, bytes]]:
    return [(b"host", host)] + ([(b"origin", origin)] if origin is not None else [])


async def test_the_dashboards_preflight_is_answered_without_the_handler() -> None:
    handler = _Handler()
    status, headers = await _call(handler, "OPTIONS", _host(DASHBOARD.encode()) + PREFLIGHT)
    assert status == 204
    assert headers[b"access-control-allow-origin"] == [DASHBOARD.encode()]
    assert handler.scopes == []


async def test_another_origins_preflight_goes_to_the_handler_which_refuses_and_journals_it() -> None:
    for origin in (b"http://evil.example", b"null", b"https://127.0.0.1:8080", DASHBOARD.encode() + b"/"):
        handler = _Handler()
        status, headers = await _call(handler, "OPTIONS", _host(origin) + PREFLIGHT)
        assert status == 418, origin
        assert len(handler.scopes) == 1
        assert (b"origin", origin) in handler.scopes[0]["headers"]  # checked by the handler as sent
        assert b"access-control-allow-origin" not in headers
        assert headers[b"vary"] == [b"origin"]


async def test_an_options_request_that_is_no_preflight_is_an_ordinary_request() -> None:
    handler = _Handler()
    status, headers = await _call(handler, "OPTIONS", _host(DASHBOARD.encode()))
    assert status == 418
    assert len(handler.scopes) == 1
    assert headers[b"access-control-allow-origin"] == [DASHBOARD.encode()]


async def test_the_dashboards_preflight_for_a_host_not_allowed_is_refused_by_the_handler() -> None:
    # DNS rebinding: the Host check applies to preflights too.
    handler = _Handler()
    hosts = HostCheck((), "127.0.0.1")
    status, _ = await _call(handler, "OPTIONS", _host(DASHBOARD.encode(), b"evil.example") + PREFLIGHT, hosts)
    assert status == 418
    assert len(handler.scopes) == 1
    status, _ = await _call(handler, "OPTIONS", _host(DASHBOARD.encode()) + PREFLIGHT, hosts)
    assert status == 204


async def test_every_answer_varies_with_origin() -> None:
    for origin in (None, b"http://evil.example", DASHBOARD.encode()):
        _, headers = await _call(_Handler(), "GET", _host(origin))
        assert headers[b"vary"] == [b"origin"], origin
