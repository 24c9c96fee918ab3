"""What happened after a forwarded action: the result event's facts, gathered while the
answer is relayed (DESIGN §3: outcome, JSON-RPC error code, duration, result digest).

The tap sees every chunk once as it passes (hashing and counting cost what a copy of
the bytes would), keeps only a bounded tail, and reads the JSON-RPC error code from it
at the end: a JSON body whole, or the last SSE event answering the request. A tool's
answer is the last message of its POST stream, so the tail holds it unless the answer
itself is larger than the tail — then the code is left at 0 and the digest still
covers every byte. The answer's `result` member (or `{"error": …}` for an error), parsed
then, is kept as `answer` for provenance (`_provenance.py`): None for a non-JSON body or
one over the tail, and `UNREAD` for an answer that is JSON but could not be read with
every copy of a repeated key (nested too deeply for that reading). Several results or
errors (a stream answering the request many times, as A2A's does) come as `Copies`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from bastion._json import Copies, TooDeep, loads_every
from bastion.v1 import graph_pb2

from ._recorder import timestamp
from ._sse import events

#: The answer's last bytes kept and parsed; a larger answer is not read (provenance: unread).
TAIL_BYTES = 256 << 10


class _Unread:
    """An answer that is JSON but could not be read in full: its data is untraceable."""

    def __repr__(self) -> str:
        return "UNREAD"


UNREAD: Any = _Unread()


class ResultTap:
    def __init__(self, request_id: Any) -> None:
        self._request_id = request_id
        self._hash = hashlib.sha256()
        self._tail = bytearray()
        self._started = time.perf_counter()
        self.size = 0
        self.status = 0
        #: The JSON-RPC `result` of a completed answer, once `result()` has read it.
        self.answer: Any = None

    def feed(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        self._tail += chunk
        if len(self._tail) > TAIL_BYTES:
            del self._tail[: len(self._tail) - TAIL_BYTES]

    async def watch(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks`, unchanged, fed to the tap on the way."""
        async for chunk in chunks:
            self.feed(chunk)
            yield chunk

    def result(
        self, outcome: graph_pb2.ResultOutcome.ValueType, *, sse: bool = False, detail: str = ""
    ) -> graph_pb2.ActionResult:
        return graph_pb2.ActionResult(
            outcome=outcome,
            jsonrpc_error_code=self._error_code(sse) if outcome == graph_pb2.COMPLETED else 0,
            http_status=self.status,
            duration_ms=(time.perf_counter() - self._started) * 1000,
            result_digest=self._hash.hexdigest() if self.size else "",
            result_bytes=self.size,
            completed_at=timestamp(time.time()),
            detail=detail,
        )

    def _error_code(self, sse: bool) -> int:
        answers = self._answers_in(sse)
        message = answers[-1] if answers else None
        if message is UNREAD:
            self.answer = UNREAD
        else:
            # Every result and every error of every message answering the request: a stream
            # answering it many times (A2A's message/stream: the task, then artifact and status
            # updates) has its data in the earlier events, and an error's text, or a result
            # beside an error, reaches the agent too (an attacker's probe read only the last).
            parts: list[Any] = []
            for answer in answers:
                if isinstance(answer, dict):
                    if "result" in answer:
                        parts.append(answer["result"])
                    if "error" in answer:
                        parts.append({"error": answer["error"]})
            self.answer = parts[0] if len(parts) == 1 else Copies(parts) if parts else None
        return _code(message)

    def _answers(self, message_id: Any) -> bool:
        """Whether an event's `id` is the request's (given twice, by any of its copies)."""
        if isinstance(message_id, Copies):
            return any(self._answers(copy) for copy in message_id)
        return bool(message_id == self._request_id)

    def _answers_in(self, sse: bool) -> list[Any]:
        """The JSON-RPC messages answering the request, in order (UNREAD for one that could
        not be read); empty when none could be."""
        if not sse:
            if self.size != len(self._tail):
                return []  # larger than the tail: not read again
            message = _loads(bytes(self._tail))
            return [] if message is None else [message]
        answers: list[Any] = []
        for event in events(bytes(self._tail)):
            data = event.data
            message = _loads(data) if data else None
            if message is UNREAD:  # whether it answers the request cannot be told
                return [UNREAD]
            # A request has a string method; `"method": null` beside a result is read as a response.
            if (
                isinstance(message, dict)
                and self._answers(message.get("id"))
                and not isinstance(message.get("method"), str)
            ):
                answers.append(message)
        return answers


@dataclass(frozen=True, slots=True)
class Reading:
    """What provenance can make of a forwarded action's answer (`reading`)."""

    #: The answer was read: fingerprint it.
    read: bool
    #: It reached the agent but could not be read (too large for the tail, too deep, no JSON
    #: any reader takes, a batch array): later calls must say its data is untraceable.
    unread: bool
    #: Only its last part was read (an event stream longer than the tail).
    partial: bool


def reading(result: graph_pb2.ActionResult, answer: Any) -> Reading:
    """How provenance takes `answer` (`ResultTap.answer`) of an action that ended as `result`:
    an upstream that answered, with a result or an error, said something the agent reads.
    An attacker's probe found small unreadable answers passing with no label at all."""
    answered = result.outcome == graph_pb2.COMPLETED
    read = answered and answer is not None and answer is not UNREAD
    return Reading(
        read=read,
        unread=answered and result.result_bytes > 0 and not read,
        partial=read and result.result_bytes > TAIL_BYTES,
    )


def _loads(data: bytes) -> Any:
    """The message, every copy of a repeated key kept (the agent's reader may keep the
    first: provenance must see what it sees); None for what is not JSON."""
    try:
        return loads_every(data)
    except TooDeep:
        return UNREAD
    except ValueError:
        return None


def _code(message: Any) -> int:
    if isinstance(message, dict) and isinstance(error := message.get("error"), dict):
        code = error.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and -(2**31) <= code < 2**31:
            return code
    return 0
