"""No agent credential passes an operator route, in any service: every guarded route of
every REST surface is enumerated from the code (the services' FastAPI apps, the proxy's
handlers' ROUTES), never listed by hand, and called with no token, an agent's JWT, an
agent's API key shape and an auditor's token against a real stack.

Agents never approve, grant, revoke or change policy: a change route answers an agent 403
(401 for none) and an auditor 403; a read route answers an agent 403 too.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fixtures import inprocess
from fixtures.graphapi import bearer
from fixtures.upstream import DemoUpstream, demo_upstream

import bastion.proxy
from bastion._identity import ensure_dev_key, issue_token

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEMO_POLICY = Path(__file__).resolve().parents[2] / "examples" / "policies" / "demo.yaml"
VALUES = {"approval_id": "apr_" + "0" * 32, "queue_id": "que_" + "0" * 32}


def proxy_routes() -> list[tuple[str, str]]:
    """(method, path) of every proxy handler that declares ROUTES (operator surfaces)."""
    found: set[tuple[str, str]] = set()
    for module in pkgutil.iter_modules(bastion.proxy.__path__):
        loaded = importlib.import_module(f"bastion.proxy.{module.name}")
        for value in vars(loaded).values():
            routes = getattr(value, "ROUTES", None)
            if isinstance(value, type) and routes:
                found.update(routes)
    return sorted((method, re.sub(r"\{(\w+)\}", lambda m: VALUES[m.group(1)], path)) for method, path in found)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: DemoUpstream) -> AsyncIterator[tuple[str, str]]:
    home = tmp_path_factory.mktemp("stack")
    async with inprocess.stack(home, inprocess.app_config(upstream.url, DEMO_POLICY)) as running:
        yield f"http://{running.proxy}", str(home)


async def test_the_proxy_declares_its_operator_routes() -> None:
    # The enumeration finds what the proxy mounts; a new operator route is found by it.
    assert ("GET", "/v1/tools") in proxy_routes()
    assert ("POST", f"/v1/approvals/{VALUES['approval_id']}/approve") in proxy_routes()
    assert ("POST", f"/v1/queue/{VALUES['queue_id']}/release") in proxy_routes()


@pytest.mark.parametrize(("method", "path"), proxy_routes())
async def test_agents_get_403_and_anonymous_callers_401_on_every_proxy_operator_route(
    proxy: tuple[str, str], method: str, path: str
) -> None:
    base, home = proxy
    key = ensure_dev_key(Path(home))
    callers = {
        "anonymous": {},
        "agent": bearer(issue_token(key, subject="agent-1")),
        "agent-with-tenant": bearer(issue_token(key, subject="agent-1", tenant="acme")),
        "api-key-shaped": bearer("bk_0123456789abcdef." + "A" * 43),
    }
    if method != "GET":
        callers["auditor"] = bearer(issue_token(key, subject="auditor-1", roles=("auditor",)))
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        got = {name: (await http.request(method, path, headers=hdrs)).status_code for name, hdrs in callers.items()}

    expected = {name: 403 for name in callers} | {"anonymous": 401, "api-key-shaped": 401}
    assert got == expected
