"""The proxy's hosted MCP sessions: what one caller's request stream may receive."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from bastion.proxy._session_host import HostedSession, SessionHost


def _call(msg_id: Any, token: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"_meta": {"progressToken": token}}}


def _progress(token: Any, message: str) -> dict[str, Any]:
    params = {"progressToken": token, "progress": 1, "message": message}
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}


def _received(stream: Any) -> list[dict[str, Any]]:
    return [orjson.loads(data) for _, data in stream.events]


def test_stateless_callers_choosing_the_same_progress_token_each_get_only_their_own_progress() -> None:
    """Every stateless caller shares one hosted session (ids remapped); SDK clients pick
    the request id as the token, so two callers' tokens collide. A probe got agent A's
    progress messages, secrets and all, on agent B's stream, across tenants."""
    session = HostedSession("shared", remap=True)
    stream_a, sent_a, _ = session.begin(_call(1, 1))
    stream_b, sent_b, _ = session.begin(_call(1, 1))
    token_a = sent_a["params"]["_meta"]["progressToken"]
    token_b = sent_b["params"]["_meta"]["progressToken"]
    assert token_a != token_b
    session.emit(_progress(token_a, "A's secret step"), None)
    session.emit(_progress(token_b, "B's step"), None)
    assert _received(stream_a) == [_progress(1, "A's secret step")]  # the token its client chose
    assert _received(stream_b) == [_progress(1, "B's step")]
    # A token no request was given goes to no request's stream.
    session.emit(_progress(1, "guess"), None)
    assert len(stream_a.events) == len(stream_b.events) == 1


def test_a_session_of_its_own_keeps_the_client_s_token() -> None:
    session = HostedSession("s1")
    stream, sent, raw = session.begin(_call(5, "p"))
    assert raw is None
    assert sent["params"]["_meta"]["progressToken"] == "p"
    session.emit(_progress("p", "step"), None)
    assert _received(stream) == [_progress("p", "step")]


@pytest.mark.parametrize("event_id", ["1-" + "9" * 4400, "0-\u00b2", "\u00b9-1", "1-\u0661", "-1", "1-", "1-1-1", ""])
def test_a_last_event_id_the_host_never_issued_names_no_stream(event_id: str) -> None:
    """`str.isdigit()` took superscripts and int() refuses over 4,300 digits: both were a 500."""
    session = HostedSession("s1")
    session.begin(_call(1, "p"))
    assert session.stream_of(event_id) is None


def test_an_issued_event_id_names_its_stream() -> None:
    session = HostedSession("s1")
    stream, _, _ = session.begin(_call(1, "p"))
    assert session.stream_of(f"{stream.index}-3") == (stream, 3)
    assert session.stream_of("0-0") == (session.standalone, 0)


class _Backend:
    def __init__(self) -> None:
        self.delivered: list[dict[str, Any]] = []

    async def deliver(self, message: dict[str, Any], raw: bytes, context: Any) -> None:
        self.delivered.append(message)

    async def close(self) -> None:
        pass


async def _post(host: SessionHost, message: dict[str, Any], headers: dict[bytes, bytes]) -> int:
    sent: list[MutableMapping[str, Any]] = []

    async def send(event: MutableMapping[str, Any]) -> None:
        sent.append(event)

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.disconnect"}

    await host.post(receive, send, headers, message, orjson.dumps(message))
    return int(sent[0]["status"])


async def test_in_the_shared_session_a_callers_cancel_or_answer_reaches_no_one() -> None:
    """Stateless callers share one hosted session whose request ids are the host's sequential
    `bastion-N`: a probe cancelled another tenant's call by naming them."""
    backend = _Backend()

    async def open_backend(session: HostedSession) -> _Backend:
        return backend

    host = SessionHost("test", open_backend, max_sessions=4, idle_timeout=60, max_body=1 << 20)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "bastion-1"}}
    answer = {"jsonrpc": "2.0", "id": "bastion-ask-1", "result": {"action": "accept"}}
    changed = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
    assert [await _post(host, message, {}) for message in (cancel, answer, changed)] == [202, 202, 202]
    assert backend.delivered == [changed]
    # A session of one's own still carries its cancels to the backend.
    private = HostedSession("s-own")
    private.backend = backend
    host._sessions["s-own"] = private
    assert await _post(host, cancel, {b"mcp-session-id": b"s-own"}) == 202
    assert backend.delivered == [changed, cancel]
