"""/docs is Swagger UI from the package's own files, under a policy that runs nothing from
another origin; /redoc (ReDoc exists only on a CDN) is not served."""

from __future__ import annotations

import re

import httpx
import pytest

from bastion._api_docs import CONTENT_SECURITY_POLICY
from bastion._hosts import HostCheck
from bastion._rest import rest_app


@pytest.fixture
def client() -> httpx.AsyncClient:
    app = rest_app(title="Bastion graph", hosts=HostCheck((), "127.0.0.1"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def test_the_page_loads_only_its_own_files(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources == ["/docs/favicon-32x32.png", "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/docs/init.js"]
    assert "<script>" not in page.text  # no inline script: the policy would refuse it
    for source in sources:
        asset = await client.get(source)
        assert asset.status_code == 200, source
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert "/openapi.json" in (await client.get("/docs/init.js")).text


@pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect", "/docs/../_rest.py", "/docs/index.html", "/docs/"])
async def test_nothing_else_is_served(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


def test_the_policy_allows_no_other_origin() -> None:
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "http" not in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
