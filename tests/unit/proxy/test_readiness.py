"""The proxy's /readyz says not ready, and why, while its journal cannot take records: a
replica that must block every call should get none (an attacker's probe found it ready with
the journal's disk full)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from bastion.proxy._app import ProxyApp
from bastion.proxy._journal import MIN_FREE_BYTES, Journal
from bastion.proxy._metrics import ProxyMetrics


async def _noop(*_: Any) -> None:
    return None


async def _readyz(app: ProxyApp) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/readyz", "headers": []}
    await app(scope, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def _app() -> ProxyApp:
    adapter: Any = SimpleNamespace(handle=_noop)
    return ProxyApp(mcp=adapter, metrics=ProxyMetrics(), aggregated=_noop)


async def test_readyz_reports_the_journals_problem() -> None:
    app = _app()
    assert await _readyz(app) == (503, {"ready": False})
    app.ready = True
    assert await _readyz(app) == (200, {"ready": True})
    app.problem = lambda: "the journal's disk has 512 bytes free (under 1048576)"
    assert await _readyz(app) == (
        503,
        {"ready": False, "reason": "the journal's disk has 512 bytes free (under 1048576)"},
    )


async def test_the_journal_has_a_problem_when_broken_closed_or_its_disk_nearly_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(tmp_path)
    assert journal.problem() is None
    real = os.statvfs

    def nearly_full(path: Any) -> Any:  # fault injection: a full disk needs root to make
        stat = real(path)
        return SimpleNamespace(f_bavail=(MIN_FREE_BYTES // stat.f_frsize) - 1, f_frsize=stat.f_frsize)

    monkeypatch.setattr("bastion.proxy._journal.os.statvfs", nearly_full)
    assert "bytes free (under 1048576)" in (journal.problem() or "")
    monkeypatch.undo()
    await journal.close()
    assert journal.problem() == "the journal is closed"
