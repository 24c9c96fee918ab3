"""`bastion wrap -- <cmd>`: a desktop client's stdio server governed by the running stack.

The SDK's stdio client starts `bastion wrap` exactly as a desktop client would, with the
demo server (mcp SDK, stdio) as the wrapped command; policy, verifier and graph run
in-process on port 0, and the wrap finds them through the BASTION_* addresses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import mcp_types as types
import pytest
from fixtures import inprocess
from fixtures.graphapi import auditor_token, poll
from fixtures.ports import dead_address
from fixtures.stack import LOADED_DEADLINES
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from bastion._appconfig import AppConfig

ROOT = Path(__file__).resolve().parents[2]
POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "wrap", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "no-delete", "match": {"tools": ["demo__delete_file"]}, "effect": "deny"},
            {"id": "demo", "match": {"tools": ["demo__*"]}, "effect": "allow"},
        ],
    },
}


@dataclass(frozen=True)
class Services:
    env: dict[str, str]
    graph: str
    home: Path


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    app = AppConfig(policies=(policy,))
    async with (
        inprocess.policy(tmp_path, app) as policy_addrs,
        inprocess.verifier(tmp_path, app) as verifier_addrs,
        inprocess.graph(tmp_path, app, policy_addr=policy_addrs["grpc"]) as graph_addrs,
    ):
        env = {
            **LOADED_DEADLINES,
            "BASTION_HOME": str(tmp_path),
            "BASTION_POLICY_GRPC_ADDR": policy_addrs["grpc"],
            "BASTION_VERIFIER_ADDR": verifier_addrs["grpc"],
            "BASTION_GRAPH_GRPC_ADDR": graph_addrs["grpc"],
            "BASTION_LOG_LEVEL": "WARNING",
        }
        yield Services(env, graph_addrs["http"], tmp_path)


def _wrap_args(record: Path, *extra: str) -> list[str]:
    demo = [sys.executable, str(ROOT / "examples" / "demo_server.py"), "--stdio", "--record", str(record)]
    return ["-m", "bastion", "wrap", "--name", "demo", "--agent", "desktop-agent", *extra, "--", *demo]


@contextlib.asynccontextmanager
async def _wrapped(services: Services, record: Path) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, args=_wrap_args(record), env=services.env)
    async with Client(stdio_client(params)) as client:
        yield client


async def test_a_stdio_client_uses_the_wrapped_server_under_policy(services: Services, tmp_path: Path) -> None:
    record = tmp_path / "executed.jsonl"
    async with _wrapped(services, record) as client:
        tools = await client.list_tools()
        assert {tool.name for tool in tools.tools} == {"add", "echo", "count", "confirm"}
        assert (await client.call_tool("add", {"a": 20, "b": 22})).structured_content == {"result": 42}
        with pytest.raises(MCPError) as denied:
            await client.call_tool("delete_file", {"path": "/home"})
        assert denied.value.error.code == -32003
        assert isinstance(denied.value.error.data, dict)
        assert denied.value.error.data["rule_id"] == "no-delete"
    assert not record.exists()  # the denied call never reached the server
    # The wrap journaled its decisions and shipped them to the stack's graph.
    violations = await poll(
        f"http://{services.graph}",
        "/audit/violations",
        {"agent_id": "desktop-agent"},
        1,
        auditor_token(services.home),
        where=lambda v: v["rule_id"] == "no-delete",
    )
    assert violations[0]["agent_id"] == "desktop-agent"


async def test_progress_and_elicitation_cross_the_wrap(services: Services, tmp_path: Path) -> None:
    seen: list[float] = []
    asked: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async def elicit(context: object, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": False})

    params = StdioServerParameters(command=sys.executable, args=_wrap_args(tmp_path / "r"), env=services.env)
    # Server-initiated requests need the 2025-11 session (the 2026-07 form has no back-channel).
    async with Client(stdio_client(params), mode="legacy", elicitation_callback=elicit) as client:
        counted = await client.call_tool("count", {"to": 2}, progress_callback=on_progress)
        confirmed = await client.call_tool("confirm", {"question": "Proceed?"})
    assert counted.structured_content == {"result": 2}
    assert seen == [1, 2]
    assert asked == ["Proceed?"]
    assert confirmed.structured_content == {"result": "refused"}


def test_without_a_running_stack_the_wrap_says_so_and_exits(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BASTION_HOME": str(tmp_path),
        "BASTION_POLICY_GRPC_ADDR": dead_address(),
        "BASTION_VERIFIER_ADDR": dead_address(),
    }
    done = subprocess.run(
        [sys.executable, *_wrap_args(tmp_path / "r")],
        input=b"",
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert b"no Bastion stack is running" in done.stderr
    assert b"bastion up" in done.stderr
    assert done.stdout == b""  # stdout is the client's protocol channel: nothing else goes there


def test_the_wrap_needs_a_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "wrap", "--name", "demo"],
        capture_output=True,
        env={**os.environ, "BASTION_HOME": str(tmp_path)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert b"give the server's command after `--`" in done.stderr


async def test_without_a_token_or_dev_key_the_wrap_says_how_to_get_one(services: Services, tmp_path: Path) -> None:
    home = tmp_path / "elsewhere"
    env = {**os.environ, **services.env, "BASTION_HOME": str(home)}
    env.pop("BASTION_AGENT_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *_wrap_args(tmp_path / "r"), env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"set BASTION_AGENT_TOKEN" in stderr
