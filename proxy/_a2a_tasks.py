"""Who owns an A2A task: the principal whose message created it through Bastion.

An agent's task ids are its own; any caller that learns one (from a log, a shared
context, a guess) could read its history, cancel it or point its push notifications
elsewhere, and the agent — which sees only Bastion — cannot tell callers apart. So the
proxy notes the task id in the answer to each send (the first `task.id`, 0.3 `kind:
"task"` id, or `taskId` of a message or update: in a single answer read whole, in a
stream as it passes, an event over 16 MiB before the task is named ending the stream; read
as the client reads it, UTF-16 and all) and claims it for the sender in the durable ownership store; a later
GetTask, CancelTask, SubscribeToTask or push-config call naming that task from another
principal is refused (403, `bastion.a2a.task_foreign`) before any decision, and so is a
message sent into it (`message.taskId` of SendMessage, SendStreamingMessage, 0.3
`message/send` and `message/stream`): writing into another caller's task would add to its
history and be answered with its state. A task Bastion
never saw created (made before Bastion sat in front of the agent, or by another route)
has no owner here and is decided by policy alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from bastion._errors import InvalidParams, UpstreamError
from bastion._json import loads_as_clients
from bastion.v1 import policy_pb2

from ._a2a_methods import A2aMethod
from ._sse import MAX_EVENT_BYTES, EventReader

_TASK_KINDS = frozenset({policy_pb2.A2A_GET, policy_pb2.A2A_CANCEL, policy_pb2.A2A_PUSH_CONFIG})


def store_key(agent: str, task_id: str) -> str:
    # "/" never occurs in a workflow id, so these keys share the ownership store safely.
    return f"a2a-task/{agent}/{task_id}"


def spelled(mapping: dict[str, Any], name: str) -> Any:
    """The value of field `name` (camelCase, the proto's JSON name) under either spelling an
    agent reads: a2a-sdk parses 1.0 with protobuf's `ParseDict` and 0.3 with pydantic, and
    both take the proto field's own snake_case name too (`task_id`). Found by an attacker's
    probe: a check that read only `taskId` let `task_id` name another caller's task. Both
    spellings with different values are refused: which one an agent reads is its own."""
    snake = "".join(f"_{char.lower()}" if char.isupper() else char for char in name)
    value = mapping.get(name)
    other = mapping.get(snake) if snake != name else None
    if value is not None and other is not None and value != other:
        raise InvalidParams(f"{name!r} and {snake!r} are both given, with different values; send one")
    return value if value is not None else other


def named_tasks(method: A2aMethod, arguments: dict[str, Any]) -> tuple[str, ...]:
    """Every task a call acts on or points at: a read's, cancel's or push config's task, a
    send's `message.taskId` and the tasks its `referenceTaskIds` name (whose content an
    agent may fold into its answer) — under every spelling (`spelled`)."""
    found: list[Any] = []
    if method.kind == policy_pb2.A2A_SEND:
        if "request" in arguments:
            # The 0.3 proto names the message field `request` (JSON name `message`), and the
            # agent's 0.3 HTTP+JSON parser takes either: a fifth probe wrote into another
            # caller's task under `request`. Clients send `message`; the other is refused.
            raise InvalidParams("a send's message goes in 'message'; 'request' (the 0.3 proto's field name) is refused")
        found.append(spelled(arguments, "taskId"))
        message = arguments.get("message")
        if isinstance(message, dict):
            found.append(spelled(message, "taskId"))
            references = spelled(message, "referenceTaskIds")
            found += references if isinstance(references, list) else [references]
    elif method.kind in _TASK_KINDS:
        found += [spelled(arguments, "taskId"), arguments.get("id")]
        if isinstance(arguments.get("name"), str):
            # 1.0 resource names: "tasks/{id}" or "tasks/{id}/pushNotificationConfigs/{cid}".
            parts = arguments["name"].split("/")
            found.append(parts[1] if len(parts) >= 2 and parts[0] == "tasks" else None)
    return tuple(dict.fromkeys(value for value in found if isinstance(value, str) and value))


def task_in(message: Any) -> str | None:
    """The task id an answer (a JSON-RPC response, an SSE event's data or a REST body) names."""
    if not isinstance(message, dict):
        return None
    for candidate in (message.get("result"), message):
        if not isinstance(candidate, dict):
            continue
        task = candidate.get("task")
        if isinstance(task, dict) and isinstance(task.get("id"), str):
            return str(task["id"])
        if candidate.get("kind") == "task" and isinstance(candidate.get("id"), str):
            return str(candidate["id"])
        for key in ("message", "statusUpdate", "artifactUpdate"):
            inner = candidate.get(key)
            if isinstance(inner, dict) and isinstance(inner.get("taskId"), str):
                return str(inner["taskId"])
        if isinstance(candidate.get("taskId"), str):
            return str(candidate["taskId"])
    return None


class TaskSniffer:
    """Watches an answer go by and reports the first task id in it, once."""

    def __init__(self, found: Callable[[str], Awaitable[None]]) -> None:
        self._found = found
        self._buffer = b""
        self._events = EventReader()
        self._done = False

    async def feed(self, chunk: bytes, *, sse: bool) -> None:
        if self._done:
            return
        if not sse:
            # A single answer is in memory whole already and read whole (`end`): a task's
            # history can put its id past any prefix (a large message pushed a task out of
            # its sender's hands in an attacker's probe).
            self._buffer += chunk
            return
        try:
            completed = self._events.feed(chunk)
        except UpstreamError:  # the reader's bound on an open event
            # The client would read the event and learn a task nobody owns: the stream ends.
            over = f"an event of its answer is over {MAX_EVENT_BYTES} bytes before naming its task"
            raise UpstreamError(over) from None
        for event in completed:
            if (data := event.data) and await self._try(data):
                return

    async def end(self) -> None:
        """A whole (non-streamed) answer has been fed."""
        if not self._done and self._buffer:
            await self._try(self._buffer)
        self._done = True

    async def _try(self, data: bytes) -> bool:
        try:
            task = task_in(loads_as_clients(data))
        except ValueError:  # no reader takes it: nor will the client, which learns no task
            return False
        if task is None:
            return False
        self._done = True
        await self._found(task)
        return True

    async def watch(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            await self.feed(chunk, sse=True)
            yield chunk


async def filter_tasks(
    data: bytes, visible: Callable[[str], Awaitable[bool]], seal: Callable[[str], str], *, first_page: bool
) -> bytes:
    """A ListTasks answer (JSON-RPC `result.tasks` or the REST body's `tasks`) without the
    tasks `visible` refuses, its `nextPageToken` sealed (`_a2a_pages`).

    The agent's `totalSize` counts every caller's tasks: it is kept only when this answer
    is the whole list (the first page, and no next one), set to what the caller sees, and
    removed otherwise (proto3: unset), since the tasks of other pages are not known here.

    Read as the client reads it (`loads_as_clients`: UTF-16, a BOM, NaN); an answer no
    reader takes is refused (UpstreamError) rather than relayed unfiltered.
    """
    try:
        answer = loads_as_clients(data)
    except ValueError as exc:
        raise UpstreamError("its ListTasks answer is not JSON Bastion can filter; it was not relayed") from exc
    holder = answer.get("result") if isinstance(answer, dict) and "result" in answer else answer
    tasks = holder.get("tasks") if isinstance(holder, dict) else None
    if not isinstance(tasks, list):
        return data
    assert isinstance(holder, dict)
    kept = [task for task in tasks if not isinstance(task, dict) or await visible(str(task.get("id", "")))]
    holder["tasks"] = kept
    token = holder.get("nextPageToken")
    sealed = seal(token) if isinstance(token, str) and token else None
    if "totalSize" in holder:
        if first_page and sealed is None:
            holder["totalSize"] = len(kept)
        else:
            del holder["totalSize"]
    if sealed is not None:
        holder["nextPageToken"] = sealed
    try:
        return orjson.dumps(answer)
    except TypeError as exc:  # an integer past 64 bits, which only the stdlib reader takes
        raise UpstreamError("its ListTasks answer holds a value Bastion cannot re-encode; it was not relayed") from exc
