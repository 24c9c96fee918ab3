"""A real A2A agent built with a2a-sdk (1.x), served in the caller's event loop on port 0.

Shared by the A2A integration tests (tests/fixtures/a2a_agent.py re-exports it) and
`bastion bench a2a`, so the bench measures the agent the tests prove correct.

It speaks JSON-RPC (1.0 and 0.3 names) at its root, HTTP+JSON (1.0 routes, and 0.3's
under `/v1`) and serves its card at the well-known path, advertising a gRPC interface
too (which Bastion must remove from the card). What it does with a message depends on
its text, so tests can drive it:

- `gate NAME`: a task that reports `working`, then waits for `Agent.release(NAME)` before
  its artifact and `completed` — so a test can prove an event crossed Bastion before the
  stream ended;
- `hold …`: a task that stays `working` until it is cancelled;
- `burst N MS`: a task that reports `working`, then N artifacts MS milliseconds apart,
  then `completed` — a stream whose events are spread in time, so a hop that buffered
  them would show as a late first event (the bench's time to first event);
- `delegate …`: `Agent.on_delegate` does the work (e.g. a tool call through Bastion with
  the `Bastion-Delegation` header it was given) and its answer is the artifact;
- anything else: a task completed at once with the artifact `echo: <text>`.

`Agent.received` logs every HTTP request the agent got (method, path, JSON-RPC method):
the agent's own evidence of what Bastion forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.routes.agent_card_routes import create_agent_card_routes
from a2a.server.routes.jsonrpc_routes import create_jsonrpc_routes
from a2a.server.routes.rest_routes import create_rest_routes
from a2a.server.tasks.inmemory_push_notification_config_store import InMemoryPushNotificationConfigStore
from a2a.server.tasks.inmemory_task_store import InMemoryTaskStore
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, TaskState
from starlette.applications import Starlette

from bastion._web import start_web_server

Scope = dict[str, Any]


@dataclass
class Agent:
    url: str
    received: list[tuple[str, str, str]] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    #: Called with each request's headers (lowercase names) when set.
    on_request: Callable[[dict[str, str]], None] | None = None
    #: `delegate …` messages: called with the text and the request's headers; its answer
    #: is the artifact (the agent doing work of its own through Bastion).
    on_delegate: Callable[[str, dict[str, str]], Awaitable[str]] | None = None
    last_headers: dict[str, str] = field(default_factory=dict)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def release(self, name: str) -> None:
        self.gate(name).set()

    def methods(self) -> list[str]:
        """JSON-RPC methods and REST routes the agent received, in order."""
        return [rpc or f"{method} {path}" for method, path, rpc in self.received]


class _Executor(AgentExecutor):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        task = context.current_task
        if task is None:
            assert context.message is not None
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        if text.startswith("delegate") and self._agent.on_delegate is not None:
            answer = await self._agent.on_delegate(text, self._agent.last_headers)
            await updater.add_artifact([new_text_part(answer)], name="delegated")
            await updater.complete()
            return
        if text.startswith("gate"):
            await updater.start_work()
            await self._agent.gate(text.partition(" ")[2]).wait()
        elif text.startswith("burst"):
            count, delay_ms = _burst(text)
            await updater.start_work()
            for index in range(count):
                if index:
                    await asyncio.sleep(delay_ms / 1000)
                await updater.add_artifact([new_text_part(f"part {index}")], name=f"part-{index}")
            await updater.complete()
            return
        elif text.startswith("hold"):
            await updater.start_work()
            await asyncio.Event().wait()  # until cancelled
        await updater.add_artifact([new_text_part(f"echo: {text}")], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None
        assert context.context_id is not None
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def _burst(text: str) -> tuple[int, float]:
    # Bounded so a stray message cannot keep the agent busy for long.
    words = text.split()
    try:
        count, delay_ms = int(words[1]), float(words[2])
    except (IndexError, ValueError):
        return 3, 10.0
    return max(1, min(count, 1000)), max(0.0, min(delay_ms, 1000.0))


def agent_card(url: str) -> AgentCard:
    return AgentCard(
        name="echo agent",
        description="echoes what it is sent",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=url, protocol_binding="HTTP+JSON", protocol_version="1.0"),
            AgentInterface(url=url.replace("http://", "grpc://"), protocol_binding="GRPC", protocol_version="1.0"),
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=True, extended_agent_card=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="echoes", tags=["echo"])],
    )


class _Log:
    """ASGI middleware: record each request before the SDK sees it."""

    def __init__(self, app: Any, agent: Agent) -> None:
        self._app = app
        self._agent = agent

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        rpc = ""
        with contextlib.suppress(orjson.JSONDecodeError):
            decoded = orjson.loads(body) if body else None
            if isinstance(decoded, dict) and isinstance(decoded.get("method"), str):
                rpc = decoded["method"]
        self._agent.received.append((scope["method"], scope["path"], rpc))
        self._agent.last_headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"]}
        if self._agent.on_request is not None:
            self._agent.on_request({k.decode(): v.decode("latin-1") for k, v in scope["headers"]})
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self._app(scope, replay, send)


@contextlib.asynccontextmanager
async def a2a_agent() -> AsyncIterator[Agent]:
    """The agent on 127.0.0.1:0 until the block exits."""
    holder: dict[str, Any] = {}

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await holder["app"](scope, receive, send)

    web = await start_web_server(app, "127.0.0.1:0")
    url = f"http://{web.address}"
    agent = Agent(url=url)
    card = agent_card(url)
    handler = DefaultRequestHandlerV2(
        agent_executor=_Executor(agent),
        task_store=InMemoryTaskStore(),
        agent_card=card,
        push_config_store=InMemoryPushNotificationConfigStore(),
        extended_agent_card=card,
    )
    routes = [
        *create_agent_card_routes(card, cache_control="public, max-age=60"),
        *create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True),
        *create_rest_routes(handler, enable_v0_3_compat=True),
    ]
    holder["app"] = _Log(Starlette(routes=routes), agent)
    try:
        yield agent
    finally:
        for gate in agent.gates.values():
            gate.set()
        await web.stop()


__all__ = ["Agent", "TaskState", "a2a_agent", "agent_card"]
