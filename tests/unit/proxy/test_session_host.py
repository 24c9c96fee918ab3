"""The proxy's hosted MCP sessions: what one caller's request stream may receive."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from bastion._errors import UpstreamError
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


def test_a_stream_keeps_its_newest_events_within_a_byte_bound() -> None:
    """Counted in events alone, a server's 4 MiB notifications grew one stream to gigabytes
    (an attacker's probe: 182 MB → 1.4 GB in three calls)."""
    from bastion.proxy._session_host import STREAM_BYTES

    session = HostedSession("s1")
    stream, _, _ = session.begin(_call(1, "p"))
    big = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x" * (1 << 20)}}
    for _ in range(40):
        session.emit(big, None)
    assert stream.size <= STREAM_BYTES
    assert stream.size == sum(len(data) for _, data in stream.events)
    assert 4 <= len(stream.events) < 40
    # The answer, whatever its size, is kept: it is what the caller waits for.
    huge = {"jsonrpc": "2.0", "id": 1, "result": {"data": "y" * (STREAM_BYTES + 1)}}
    session.emit(huge, None)
    assert stream.done
    assert orjson.loads(stream.events[-1][1]) == huge
    assert len(stream.events) == 1


def test_the_shared_session_drops_what_only_its_get_stream_could_carry() -> None:
    """No GET stream can be opened on the shared session (it has no id): kept, a server's
    notifications after its answer were memory nobody could read."""
    session = HostedSession("shared", remap=True)
    answered, sent, _ = session.begin(_call(1, 1))
    session.emit({"jsonrpc": "2.0", "id": sent["id"], "result": {}}, None)
    assert answered.done
    for _ in range(3):
        session.emit({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "late"}}, None)
    session.to_listener({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert not session.standalone.events
    assert session.dropped == 4
    # A session of its own keeps them for its GET stream.
    own = HostedSession("s1")
    own.to_listener({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert len(own.standalone.events) == 1


def test_requests_a_backend_never_answers_are_bounded() -> None:
    from bastion.proxy._session_host import MAX_PENDING

    session = HostedSession("shared", remap=True)
    first, _, _ = session.begin(_call(1, None))
    for index in range(MAX_PENDING):
        session.begin(_call(index + 2, None))
    assert len(session._pending) == MAX_PENDING
    assert first.done
    error = orjson.loads(first.events[-1][1])
    assert error["id"] == 1
    assert error["error"]["message"] == "UPSTREAM_UNAVAILABLE"


async def _initialize(host: SessionHost, owner: str) -> tuple[int, str]:
    """(200, the new session's id), or 503 when the host refuses to open one."""
    bound: list[str] = []

    async def send(event: MutableMapping[str, Any]) -> None:
        pass

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.disconnect"}  # the answer is not waited for

    message = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    try:
        await host.post(receive, send, {}, message, orjson.dumps(message), bind=bound.append, owner=owner)
    except UpstreamError:
        return 503, ""  # what SessionHost.__call__ answers
    return 200, bound[0]


async def test_one_principal_cannot_hold_every_session_its_oldest_makes_way() -> None:
    """An agent of another tenant took all 32 slots of a stdio server with bare initializes,
    and every other caller got 503 for the 15 minutes of the idle timeout."""
    closed: list[str] = []

    class _Closing(_Backend):
        def __init__(self, session: HostedSession) -> None:
            super().__init__()
            self.session = session

        async def close(self) -> None:
            closed.append(self.session.id)

    async def open_backend(session: HostedSession) -> _Closing:
        return _Closing(session)

    host = SessionHost("test", open_backend, max_sessions=4, idle_timeout=60, max_body=1 << 20, max_per_owner=2)
    mine = [await _initialize(host, "5:evil/mallory") for _ in range(5)]
    assert all(status == 200 for status, _ in mine), mine
    assert host.session_count == 2
    assert closed == [mine[0][1], mine[1][1], mine[2][1]]  # its oldest, one by one
    assert [await _initialize(host, f"4:acme/agent-{n}") for n in range(2)][-1][0] == 200
    assert host.session_count == 4
    # Others' sessions are never closed to make way: past the server's own bound, refused.
    status, _ = await _initialize(host, "4:acme/agent-9")
    assert (status, host.session_count) == (503, 4)


class _Slow(_Backend):
    """A backend whose start takes a while, as a stdio child's does."""

    opened = 0

    @classmethod
    async def open(cls, session: HostedSession) -> _Slow:
        cls.opened += 1
        await asyncio.sleep(0.05)
        return cls()


async def test_a_burst_of_initializes_cannot_pass_the_bounds_while_backends_start() -> None:
    """An attacker's probe: 12 initializes at once each saw room while the others' backends
    started, and opened 12 sessions against a bound of 4."""
    host = SessionHost("test", _Slow.open, max_sessions=4, idle_timeout=60, max_body=1 << 20, max_per_owner=2)
    burst = await asyncio.gather(*(_initialize(host, "5:evil/mallory") for _ in range(12)))
    assert sum(status == 200 for status, _ in burst) == 2
    assert host.session_count == 2
    others = await asyncio.gather(*(_initialize(host, f"4:acme/agent-{n}") for n in range(6)))
    assert sum(status == 200 for status, _ in others) == 2
    assert host.session_count == 4


async def test_the_shared_session_starts_one_backend_however_many_ask_at_once() -> None:
    _Slow.opened = 0
    host = SessionHost("test", _Slow.open, max_sessions=4, idle_timeout=60, max_body=1 << 20)
    sessions = await asyncio.gather(*(host.shared_session() for _ in range(10)))
    assert len({id(session) for session in sessions}) == 1
    assert _Slow.opened == 1


async def test_a_closed_session_answers_the_requests_still_running() -> None:
    """Evicted while a request ran, its caller waited for ever (an attacker's probe)."""
    host = SessionHost("test", _Slow.open, max_sessions=4, idle_timeout=60, max_body=1 << 20, max_per_owner=1)
    _, first = await _initialize(host, "1:a/b")
    session = host.session(first)
    assert session is not None
    waiting, _, _ = session.begin(_call(7, None))
    await _initialize(host, "1:a/b")  # the same caller, past its one session: the first makes way
    assert waiting.done
    error = orjson.loads(waiting.events[-1][1])
    assert error["id"] == 7
    assert "newer session" in error["error"]["data"]["reason"]


def test_finished_streams_are_kept_within_a_byte_bound_and_not_at_all_in_the_shared_session() -> None:
    from bastion.proxy._session_host import _FINISHED_BYTES

    shared = HostedSession("shared", remap=True)
    own = HostedSession("s1")
    answer = {"data": "z" * (4 << 20)}
    for session in (shared, own):
        for index in range(20):
            stream, sent, _ = session.begin(_call(index, None))
            session.emit({"jsonrpc": "2.0", "id": sent["id"], "result": answer}, None)
            assert stream.done
        session.begin(_call(99, None))  # pruning happens as a request begins
    assert [stream for stream in shared._streams.values() if stream.done] == []
    kept = [stream for stream in own._streams.values() if stream.done]
    assert 0 < len(kept) < 20
    assert sum(stream.size for stream in kept) <= _FINISHED_BYTES
