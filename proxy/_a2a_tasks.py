"""Who owns an A2A task: the principal whose message created it through Bastion.

An agent's task ids are its own; any caller that learns one (from a log, a shared
context, a guess) could read its history, cancel it or point its push notifications
elsewhere, and the agent — which sees only Bastion — cannot tell callers apart. So the
proxy notes every task id the answer to each send names (`task_in`: a 1.0 `task.id` or
the `taskId` of a message or update, a 0.3 task's `id`, every field under each spelling a
client reads, `_a2a_fields`: in a single answer read whole, in a stream event by event,
each event relayed only once read; read as the client reads it, UTF-16 and all) and claims
each for the sender in the durable ownership store (`TaskSniffer`). An answer naming a
task another principal holds is not relayed, a stream ends there with an error event: it
would show the sender that task's state (an agent continuing the task a reused contextId
points at). The answer to a read of one task (GetTask, SubscribeToTask, CancelTask) is
read the same way, and refused when it names a task the caller may not reach: the request
named the caller's own task, but the agent chooses what it answers with. A later
GetTask, CancelTask, SubscribeToTask or push-config call naming that task from another
principal is refused (403, `bastion.a2a.task_foreign`) before any decision, and so is a
message sent into it (`message.taskId` of SendMessage, SendStreamingMessage, 0.3
`message/send` and `message/stream`): writing into another caller's task would add to its
history and be answered with its state. A task Bastion
never saw created (made before Bastion sat in front of the agent, or by another route)
has no owner here and is decided by policy alone.

**Tenants.** A2A 1.0 requests may name a tenant (the `tenant` field, or a path segment
before an HTTP+JSON route), and an agent may number each tenant's tasks on its own: the
same id under two tenants is two tasks of two callers. So a task is claimed under the
tenant its send named, exactly as sent (`tenant_key`), and the task id alone records its
one holder, or SHARED once two principals hold it under different tenants (`store_key`,
also the key of claims made before tenants were recorded). A caller reaches a task when it
holds it under the tenant it names, or when nobody else holds it under any tenant
(`may_reach`). Tenant strings are compared exactly and never folded: an agent may treat
`acme` and `ACME`, or a look-alike, as one tenant or as two, and whichever it does, a
variant gets no other caller's task — no record under it, the id held by someone else or
shared: refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from bastion._errors import InvalidParams, UpstreamError
from bastion._identity import Principal
from bastion._json import loads_as_clients
from bastion.v1 import policy_pb2

from ._a2a_fields import MESSAGE_ALIASES, answered, present, spelled, spellings
from ._a2a_methods import A2aMethod
from ._owners import WorkflowOwners, owner_key
from ._sse import MAX_EVENT_BYTES, EventReader, events

_TASK_KINDS = frozenset({policy_pb2.A2A_GET, policy_pb2.A2A_CANCEL, policy_pb2.A2A_PUSH_CONFIG})
#: Where an answer to a send names its task: a member (and its other spellings) holding a
#: Task, whose id is `id`, or a Message or an update, whose task is `taskId`; or `taskId`
#: itself (key None). `msg` is the 0.3 proto's field name for `message`, which its
#: HTTP+JSON client reads too.
_HOLDERS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("task", (), "id"),
    ("message", ("msg",), "taskId"),
    ("statusUpdate", (), "taskId"),
    ("artifactUpdate", (), "taskId"),
    ("taskId", (), None),
)
#: Each holder by every name it goes under: an answer is read only for the holders it has
#: (every event of a send's stream is read, so this is the hot path).
_HOLDER_OF = {spelling: holder for holder in _HOLDERS for spelling in spellings(holder[0], holder[1])}


def store_key(agent: str, task_id: str) -> str:
    """The key of a task's holder under any tenant (or SHARED).
    "/" never occurs in a workflow id, so these keys share the ownership store safely."""
    return f"a2a-task/{agent}/{task_id}"


def tenant_key(agent: str, tenant: str, task_id: str) -> str:
    """The key of a task's holder under one tenant, exactly as the send named it (the
    tenant length-prefixed: no tenant and task id pair spells another pair's key)."""
    return f"a2a-task-tenant/{agent}/{len(tenant)}:{tenant}/{task_id}"


def request_tenant(arguments: dict[str, Any]) -> str:
    """The tenant a JSON-RPC request names (its `tenant` field; "" when absent or null)."""
    tenant = arguments.get("tenant")
    if tenant is None:
        return ""
    if not isinstance(tenant, str):
        raise InvalidParams("'tenant' must be a string")
    return tenant


async def may_reach(owners: WorkflowOwners, agent: str, tenant: str, task: str, principal: Principal) -> bool:
    """Whether `principal` may name `task` of `agent` under `tenant` (the module docstring):
    it holds the task under that tenant, or nobody else holds it under any."""
    me = owner_key(principal)
    exact = await owners.holder(tenant_key(agent, tenant, task))
    if exact is not None:
        return exact == me
    anywhere = await owners.holder(store_key(agent, task))
    return anywhere is None or anywhere == me


async def claim(owners: WorkflowOwners, agent: str, tenant: str, task: str, principal: Principal) -> bool:
    """Claim `task` of `agent` under `tenant` for `principal`; True when it holds it now."""
    return await owners.claim_in(tenant_key(agent, tenant, task), store_key(agent, task), principal)


def named_tasks(method: A2aMethod, arguments: dict[str, Any]) -> tuple[str, ...]:
    """Every task a call acts on or points at: a read's, cancel's or push config's task, a
    send's `message.taskId` and the tasks its `referenceTaskIds` name (whose content an
    agent may fold into its answer) — under every spelling (`spelled`)."""
    found: list[Any] = []
    if method.kind == policy_pb2.A2A_SEND:
        found.append(spelled(arguments, "taskId"))
        # `request` too: the 0.3 proto's name for the message (a probe wrote into another
        # caller's task under it). A send's params reach here canonical (`canonical_send`).
        message = spelled(arguments, "message", MESSAGE_ALIASES)
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
    """The task an answer (a JSON-RPC response, an SSE event's data or a REST body) names,
    as any a2a-sdk client reads it: the 1.0 and 0.3 proto readers (`task.id`, the `taskId`
    of a message or update, each under every spelling) on the JSON-RPC `result` and on a
    REST body, and the 0.3 JSON-RPC reader on the `result`, which is the Task (`kind:
    "task"`, or no kind and an `id`, as that client guesses), Message or update itself.
    UpstreamError when it names two tasks, or one field twice with different values: each
    client would learn its own, and only one would have an owner."""
    if not isinstance(message, dict):
        return None
    result = message.get("result")
    found: list[Any] = []
    for candidate in (result, message):
        if not isinstance(candidate, dict):
            continue
        for field, aliases, key in {_HOLDER_OF[name] for name in candidate.keys() & _HOLDER_OF.keys()}:
            inner = answered(candidate, field, aliases)
            if key is None:
                found.append(inner)
            elif isinstance(inner, dict):
                found.append(answered(inner, key))
    if isinstance(result, dict) and _legacy_kind(result) == "task":
        found.append(result.get("id"))
    tasks = set(value for value in found if isinstance(value, str) and value)
    if len(tasks) > 1:
        raise UpstreamError("its answer names more than one task; it was not relayed")
    return tasks.pop() if tasks else None


def _legacy_kind(result: dict[str, Any]) -> object:
    """What the 0.3 JSON-RPC client takes a result for (`kind`, or its guess without one)."""
    if kind := result.get("kind"):
        return kind
    if "taskId" in result and "final" in result:
        return "status-update"
    if "messageId" in result:
        return "message"
    return "task" if "id" in result else None


class TaskSniffer:
    """Hands every task an answer names (`task_in`, event by event in a stream) to `found`,
    each task once. `found` claims it for the sender, or raises UpstreamError when the
    answer must not reach the sender (another principal holds the task)."""

    def __init__(self, found: Callable[[str], Awaitable[None]]) -> None:
        self._found = found
        self._seen: set[str] = set()

    async def whole(self, data: bytes, *, sse: bool) -> None:
        """A single answer, in memory whole and read whole: a task's history can put its id
        past any prefix (a large message pushed a task out of its sender's hands in an
        attacker's probe). An event stream's every event, the last one even if left open."""
        if not sse:
            await self._read(data)
            return
        for event in events(data):
            await self._read(event.data)

    async def watch(
        self, chunks: AsyncIterator[bytes], refusal: Callable[[UpstreamError], bytes]
    ) -> AsyncIterator[bytes]:
        """`chunks` relayed event by event, each once the tasks it names are the sender's;
        an event not yet ended is held back (its end could name a task). At an event that
        may not be relayed (`found` refused its task, or it grew past MAX_EVENT_BYTES before
        it could be read), `refusal(error)` — an error event — goes instead and the stream
        ends with the error: the client learns why, and never the task."""
        reader = EventReader()
        async for chunk in _then_end(chunks):
            passed, refused = await self._pass(reader, chunk)
            if passed:
                yield passed
            if refused is not None:
                yield refusal(refused)
                raise refused

    async def _pass(self, reader: EventReader, chunk: bytes | None) -> tuple[bytes, UpstreamError | None]:
        """The bytes of the events `chunk` completes (None: the stream ended) that may be
        relayed, and the error that stopped the rest (None when none did)."""
        passed: list[bytes] = []
        try:
            try:
                completed = reader.close() if chunk is None else reader.feed(chunk)
            except UpstreamError:  # the reader's bound on an open event
                over = f"an event of its answer is over {MAX_EVENT_BYTES} bytes, too long to read for its tasks"
                raise UpstreamError(over) from None
            for event in completed:
                await self._read(event.data)
                passed.append(event.raw)
        except UpstreamError as exc:
            return b"".join(passed), exc
        return b"".join(passed), None

    async def _read(self, data: bytes | None) -> None:
        if not data:
            return
        try:
            answer = loads_as_clients(data)
        except ValueError:  # no reader takes it: nor will the client, which learns no task
            return
        task = task_in(answer)
        if task is not None and task not in self._seen:
            await self._found(task)
            self._seen.add(task)


async def _then_end(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes | None]:
    """`chunks`, then None for their end."""
    async for chunk in chunks:
        yield chunk
    yield None


async def filter_tasks(
    data: bytes, visible: Callable[[str], Awaitable[bool]], seal: Callable[[str], str], *, first_page: bool
) -> bytes:
    """A ListTasks answer (JSON-RPC `result.tasks` or the REST body's `tasks`) without the
    tasks `visible` refuses, its `nextPageToken` sealed (`_a2a_pages`).

    The agent's `totalSize` counts every caller's tasks: it is kept only when this answer
    is the whole list (the first page, and no next one), set to what the caller sees, and
    removed otherwise (proto3: unset), since the tasks of other pages are not known here.
    Both are read and written under each spelling the client reads (`next_page_token`,
    `total_size`: an agent's snake_case page token was handed on unsealed).

    Read as the client reads it (`loads_as_clients`: UTF-16, a BOM, NaN); an answer no
    reader takes, or that gives a field twice with different values, is refused
    (UpstreamError) rather than relayed unfiltered.
    """
    try:
        answer = loads_as_clients(data)
    except ValueError as exc:
        raise UpstreamError("its ListTasks answer is not JSON Bastion can filter; it was not relayed") from exc
    if not isinstance(answer, dict):
        return data
    # The JSON-RPC client reads `result`, the HTTP+JSON client the body itself: both are
    # filtered, whichever binding was asked (a body with both would show one of them whole).
    pages = [page for page in (answer.get("result"), answer) if isinstance(page, dict)]
    if not any(isinstance(page.get("tasks"), list) for page in pages):
        return data
    for page in pages:
        await _filter_page(page, visible, seal, first_page=first_page)
    try:
        return orjson.dumps(answer)
    except TypeError as exc:  # an integer past 64 bits, which only the stdlib reader takes
        raise UpstreamError("its ListTasks answer holds a value Bastion cannot re-encode; it was not relayed") from exc


async def _filter_page(
    page: dict[str, Any], visible: Callable[[str], Awaitable[bool]], seal: Callable[[str], str], *, first_page: bool
) -> None:
    tasks = page.get("tasks")
    if isinstance(tasks, list):
        page["tasks"] = [task for task in tasks if not isinstance(task, dict) or await visible(str(task.get("id", "")))]
    token_keys, token = present(page, "nextPageToken")
    size_keys, _ = present(page, "totalSize")
    sealed = seal(token) if isinstance(token, str) and token else None
    for key in size_keys:
        if first_page and sealed is None and isinstance(page.get("tasks"), list):
            page[key] = len(page["tasks"])
        else:
            del page[key]
    if sealed is not None:
        for key in token_keys:
            page[key] = sealed
