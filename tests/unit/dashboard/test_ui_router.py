"""The dashboard's files are a fixed table: `/ui` and its three assets are served with a
strict Content-Security-Policy, and no path names anything else."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from bastion.dashboard import dashboard_router
from bastion.dashboard._router import content_security_policy

CONTENT_SECURITY_POLICY = content_security_policy()


@pytest.fixture
def client() -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(dashboard_router())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/index.html", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ],
)
async def test_the_page_and_its_assets_are_served_with_a_strict_policy(
    client: httpx.AsyncClient, path: str, media: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media)
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"


def test_the_policy_allows_no_inline_script_no_eval_and_no_other_origin() -> None:
    directives = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    "path",
    [
        "/ui/_router.py",
        "/ui/__init__.py",
        "/ui/static/app.js",
        "/ui/..%2f_router.py",
        "/ui/%2e%2e/_router.py",
        "/ui/app.js%00",
        "/ui/APP.JS",
        "/ui/app%2Ejs.map",
        "/ui/\uff41\uff50\uff50.js",  # fullwidth "app"
        "/ui/" + "a" * 10_000,
        "/ui/%00",
    ],
)
async def test_no_path_names_any_other_file(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert b"import" not in response.content
    assert b"<html" not in response.content


async def test_the_files_take_no_other_method(client: httpx.AsyncClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert (await client.request(method, "/ui/app.js")).status_code == 405


def test_the_script_builds_no_element_from_html_text() -> None:
    # What the page shows was written by agents: it must never be parsed as HTML.
    from bastion.dashboard._router import _FILES

    script = _FILES["app.js"][1].decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "<script>" not in _FILES["index.html"][1].decode()  # the policy forbids inline script


async def test_the_page_learns_where_the_proxy_is_and_may_talk_to_it_alone() -> None:
    app = FastAPI()
    app.include_router(dashboard_router("http://127.0.0.1:7070"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        config = await client.get("/ui/config.json")
        page = await client.get("/ui")
    assert config.json() == {"proxy_url": "http://127.0.0.1:7070"}
    csp = page.headers["content-security-policy"]
    assert "connect-src 'self' http://127.0.0.1:7070;" in csp
    assert config.headers["content-security-policy"] == csp


async def test_without_a_proxy_the_page_talks_to_its_own_api_only(client: httpx.AsyncClient) -> None:
    assert (await client.get("/ui/config.json")).json() == {"proxy_url": None}


def test_the_policy_makes_the_browser_refuse_html_text_in_any_sink() -> None:
    # Trusted Types with no policy: a future innerHTML in the script throws instead of parsing.
    for csp in (CONTENT_SECURITY_POLICY, content_security_policy("http://127.0.0.1:7070")):
        directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
        assert directives["require-trusted-types-for"] == "'script'"
        assert directives["trusted-types"] == "'none'"


def test_every_id_reaches_an_api_path_through_segment() -> None:
    # An id of "." or ".." is resolved away by the browser and one holding "/" is decoded
    # into another route by the services (found by an attacker's probe): app.js's segment()
    # refuses those, so an id reaches a path through it alone; route() builds in-page links.
    from bastion.dashboard._router import _FILES

    code = [line.split("//", 1)[0] for line in _FILES["app.js"][1].decode().splitlines()]
    uses = [line.strip() for line in code if "encodeURIComponent(" in line]
    assert uses == [
        'return "#/" + parts.map((part) => encodeURIComponent(part)).join("/");',
        "return encodeURIComponent(text);",
    ]
