"""The dashboard's two settings take an origin and nothing else, and `bastion up` sets them
only where a browser on this machine reaches both services at their own addresses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bastion._up import _dashboard_env
from bastion.graph import GraphSettings
from bastion.proxy import ProxySettings

BAD = [
    "javascript:alert(1)",
    "ftp://127.0.0.1:8080",
    "http://127.0.0.1:8080/ui",
    "http://user:pw@127.0.0.1:8080",
    "http://127.0.0.1:8080?x=1",
    "http://127.0.0.1:8080#x",
    "http://127.0.0.1:99999",
    "http://ｅvil.example",  # noqa: RUF001 - a fullwidth letter, on purpose
    "http://127.0.0.1:8080\\@evil.example",
    "127.0.0.1:8080",
    "http://",
    "http://a;b.example",  # would start a new directive of the page's CSP
    "http://a,b.example",
    "http://ex_ample.example",
    "http://" + "a" * 5000 + "/x",
]


@pytest.mark.parametrize("value", BAD)
def test_anything_but_an_http_origin_is_refused_at_start(value: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        ProxySettings(home=tmp_path, dashboard_origin=value)
    with pytest.raises(ValidationError):
        GraphSettings(home=tmp_path, dashboard_proxy_url=value)


@pytest.mark.parametrize(
    ("value", "origin"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("HTTP://LocalHost:8080/", "http://localhost:8080"),
        ("https://ops.example.com:443", "https://ops.example.com"),
        ("http://[::1]:7070", "http://[::1]:7070"),
        ("", None),
    ],
)
def test_an_origin_is_kept_as_a_browser_sends_it(value: str, origin: str | None, tmp_path: Path) -> None:
    assert ProxySettings(home=tmp_path, dashboard_origin=value).dashboard_origin == origin
    assert GraphSettings(home=tmp_path, dashboard_proxy_url=value).dashboard_proxy_url == origin


def test_up_wires_the_dashboard_on_loopback_only() -> None:
    assert _dashboard_env({}) == {
        "BASTION_DASHBOARD_PROXY_URL": "http://127.0.0.1:7070",
        "BASTION_DASHBOARD_ORIGIN": "http://127.0.0.1:8080",
    }
    pinned = {"BASTION_PROXY_ADDR": "127.0.0.1:41001", "BASTION_GRAPH_ADDR": "localhost:41002"}
    assert _dashboard_env(pinned) == {
        "BASTION_DASHBOARD_PROXY_URL": "http://127.0.0.1:41001",
        "BASTION_DASHBOARD_ORIGIN": "http://localhost:41002",
    }
    # Reachable from elsewhere: the address a browser uses is not known here.
    assert _dashboard_env({"BASTION_GRAPH_ADDR": "0.0.0.0:8080"}) == {}
