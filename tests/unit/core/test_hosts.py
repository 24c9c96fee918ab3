"""bastion._hosts.HostCheck on raw ASGI header lists: allowlists, loopback defaults, duplicates."""

from __future__ import annotations

import pytest

from bastion._errors import ConfigError
from bastion._hosts import HostCheck

Headers = list[tuple[bytes, bytes]]


def _host(value: bytes, origin: bytes | None = None) -> Headers:
    headers = [(b"host", value)]
    if origin is not None:
        headers.append((b"origin", origin))
    return headers


def test_loopback_service_without_a_list_accepts_only_loopback_hosts() -> None:
    check = HostCheck((), "127.0.0.1")
    assert check.refusal(_host(b"127.0.0.1:7070")) is None
    assert check.refusal(_host(b"localhost:7070")) is None
    assert check.refusal(_host(b"[::1]:7070")) is None
    assert check.refusal(_host(b"evil.example.com")) is not None
    assert check.refusal([]) is not None


@pytest.mark.parametrize("bind", ["localhost", "::1"])
def test_every_loopback_bind_gets_the_loopback_default(bind: str) -> None:
    check = HostCheck((), bind)
    assert check.refusal(_host(b"localhost:8080")) is None
    assert check.refusal(_host(b"evil.example.com:8080")) is not None


def test_a_foreign_origin_is_refused_even_with_a_good_host() -> None:
    check = HostCheck((), "127.0.0.1")
    assert "Origin" in (check.refusal(_host(b"127.0.0.1:7070", b"http://evil.example.com")) or "")
    assert check.refusal(_host(b"127.0.0.1:7070", b"http://localhost:3000")) is None


@pytest.mark.parametrize("origin", [b"null", b"http://[", b"not a url"])
def test_an_origin_without_a_readable_host_is_refused(origin: bytes) -> None:
    assert "Origin" in (HostCheck((), "127.0.0.1").refusal(_host(b"localhost", origin)) or "")


def test_configured_list_is_enforced_with_ports_and_wildcards() -> None:
    check = HostCheck(("bastion.internal:7070", "gw.example.com:*"), "0.0.0.0")
    assert check.refusal(_host(b"bastion.internal:7070")) is None
    assert check.refusal(_host(b"bastion.internal:7071")) is not None
    assert check.refusal(_host(b"GW.example.com:443")) is None
    assert check.refusal(_host(b"127.0.0.1:7070")) is not None


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.0.0.5", "bastion.internal"])
def test_a_service_on_other_interfaces_without_a_list_refuses_to_start(bind: str) -> None:
    with pytest.raises(ConfigError, match="allowed_hosts"):
        HostCheck((), bind)


def test_a_star_in_the_list_accepts_any_host_on_purpose() -> None:
    assert HostCheck(("*",), "0.0.0.0").refusal(_host(b"anything")) is None


def test_header_names_match_without_case() -> None:
    check = HostCheck((), "127.0.0.1")
    assert check.refusal([(b"Host", b"localhost"), (b"Origin", b"http://evil.example.com")]) is not None
    assert check.refusal([(b"HOST", b"localhost")]) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"evil.example.com"), (b"host", b"127.0.0.1:8080")],
        [(b"host", b"127.0.0.1:8080"), (b"host", b"evil.example.com")],
        [(b"host", b"127.0.0.1:8080"), (b"Host", b"127.0.0.1:8080")],
    ],
)
def test_two_host_headers_are_refused_whichever_comes_first(headers: Headers) -> None:
    assert HostCheck((), "127.0.0.1").refusal(headers) == "more than one Host header"


def test_two_origin_headers_are_refused_even_when_both_are_allowed() -> None:
    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost"), (b"origin", b"http://evil.example.com")]
    assert HostCheck((), "127.0.0.1").refusal(headers) == "more than one Origin header"
    assert HostCheck((), "127.0.0.1").refusal([*headers[:2], headers[1]]) == "more than one Origin header"


def test_duplicates_are_refused_even_where_any_host_is_accepted() -> None:
    # Two Host headers make a malformed request (RFC 9112 §3.2) whatever the allowlist.
    check = HostCheck(("*",), "0.0.0.0")
    assert check.refusal([(b"host", b"a"), (b"host", b"b")]) is not None
    assert check.refusal([(b"host", b"a"), (b"origin", b"http://a"), (b"origin", b"http://a")]) is not None
