"""What a stdio MCP server writes on stderr reaches the operator's log only redacted: a
server printing a JWT, a `Bearer …` header, `password=…` or a private key there must not
put it in the log (it did: each line was logged as it came). A real child process each
time; the log is read through a handler on the proxy's logger."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import inprocess
from fixtures.mcpcalls import ProxyClient

from bastion._appconfig import AppConfig, ServerConfig
from bastion.proxy._redact import Redactor
from bastion.proxy._stdio import MAX_LOGGED, MAX_STDERR_LINE, StdioProcess

ROOT = Path(__file__).resolve().parents[2]
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcGVyYXRvciIsInJvbGUiOiJhZG1pbiJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
BEARER = "Authorization: Bearer s3cr3tBearerValue0123456789"
PASSWORD = "connecting to db with password=hunter2-Tr0ub4dor"
KEY = [
    "-----BEGIN RSA PRIVATE KEY-----",
    "MIIEowIBAAKCAQEAsecretkeybody0001",
    "c2VjcmV0a2V5Ym9keTAwMDI=",
    "-----END RSA PRIVATE KEY-----",
]
SECRETS = (JWT, "s3cr3tBearerValue0123456789", "hunter2-Tr0ub4dor", "secretkeybody0001", "c2VjcmV0a2V5Ym9keTAwMDI=")
#: Written on stderr: each secret, a private key over four lines, an over-long line (with a
#: secret past any cut), a long line, then a line marking the end.
LINES = [
    f"starting with token {JWT}",
    BEARER,
    PASSWORD,
    *KEY,
    "x" * (MAX_STDERR_LINE + 10) + f" {JWT}",
    "after the key and the long line",
    "y" * (MAX_LOGGED * 2),
    "done",
]
#: A child that writes LINES on stderr, then waits for its stdin to close.
CHILD = (
    sys.executable,
    "-c",
    f"import sys\nfor line in {json.dumps(LINES)}:\n    sys.stderr.write(line + '\\n')\n"
    "sys.stderr.flush()\nsys.stdin.read()",
)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[_Lines]:
    handler = _Lines()
    logger = logging.getLogger("bastion.proxy")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def _until(predicate: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


CLIENT = {"name": "t", "version": "1"}


def _ignore(*_: Any) -> None:
    pass


async def test_a_stdio_servers_stderr_is_logged_redacted_and_bounded(logged: _Lines) -> None:
    process = StdioProcess(
        "leaky", CHILD, env={}, cwd=None, on_message=_ignore, on_garbage=_ignore, on_exit=_ignore,
        redactor=Redactor(secret=b"test"),
    )  # fmt: skip
    await process.start()
    try:
        await _until(lambda: "done" in logged.lines)
    finally:
        await process.close()
    text = "\n".join(logged.lines)
    for secret in SECRETS:
        assert secret not in text
    assert "starting with token [REDACTED:jwt:" in text
    assert "Authorization: [REDACTED:bearer:" in text
    assert "connecting to db with password=[REDACTED:field]" in text
    assert "[REDACTED:private_key]" in text
    assert "after the key and the long line" in text
    assert not any(line.startswith("xxxx") for line in logged.lines)  # over-long: dropped whole
    [long] = [line for line in logged.lines if line.startswith("yyyy")]
    assert long == "y" * MAX_LOGGED + f"…[{MAX_LOGGED} more characters]"


async def test_a_stdio_upstreams_stderr_never_reaches_the_proxys_log_in_clear(tmp_path: Path, logged: _Lines) -> None:
    # The whole stack as `bastion proxy serve` wires it; a session starts the child, an MCP
    # server that writes LINES on stderr first.
    faulty = ROOT / "tests" / "fixtures" / "stdio_faulty.py"
    command = (
        sys.executable,
        "-c",
        f"import runpy, sys\nfor line in {json.dumps(LINES)}:\n    sys.stderr.write(line + '\\n')\n"
        f"sys.stderr.flush()\nsys.argv = [{str(faulty)!r}]\nrunpy.run_path({str(faulty)!r}, run_name='__main__')",
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: bastion.dev/v1\nkind: AgentPolicy\nmetadata: {name: p, version: 1}\nspec: {}\n")
    app = AppConfig(servers={"leaky": ServerConfig(command=command)}, policies=(policy,))
    async with inprocess.stack(tmp_path, app) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph, server="leaky")
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        hdrs = {"Authorization": f"Bearer {client.token('agent')}", "Accept": "application/json, text/event-stream"}
        started = await client.post(init, hdrs)
        assert started.status_code == 200, started.text
        # Its stderr is read by now: logged redacted, or not at all without a redactor.
        await _until(lambda: "done" in logged.lines or any("stderr is not logged" in line for line in logged.lines))
    text = "\n".join(logged.lines)
    for secret in SECRETS:
        assert secret not in text
