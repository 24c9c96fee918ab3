from __future__ import annotations

from bastion.proxy._hosts import HostCheck


def test_loopback_proxy_without_a_list_accepts_only_loopback_hosts() -> None:
    check = HostCheck((), "127.0.0.1")
    assert check.refusal({b"host": b"127.0.0.1:7070"}) is None
    assert check.refusal({b"host": b"localhost:7070"}) is None
    assert check.refusal({b"host": b"[::1]:7070"}) is None
    assert check.refusal({b"host": b"evil.example.com"}) is not None
    assert check.refusal({}) is not None


def test_a_foreign_origin_is_refused_even_with_a_good_host() -> None:
    check = HostCheck((), "127.0.0.1")
    headers = {b"host": b"127.0.0.1:7070", b"origin": b"http://evil.example.com"}
    assert "Origin" in (check.refusal(headers) or "")
    assert check.refusal({b"host": b"127.0.0.1:7070", b"origin": b"http://localhost:3000"}) is None


def test_configured_list_is_enforced_with_ports_and_wildcards() -> None:
    check = HostCheck(("bastion.internal:7070", "gw.example.com:*"), "0.0.0.0")
    assert check.refusal({b"host": b"bastion.internal:7070"}) is None
    assert check.refusal({b"host": b"bastion.internal:7071"}) is not None
    assert check.refusal({b"host": b"GW.example.com:443"}) is None
    assert check.refusal({b"host": b"127.0.0.1:7070"}) is not None


def test_proxy_on_all_interfaces_without_a_list_accepts_any_host() -> None:
    assert HostCheck((), "0.0.0.0").refusal({b"host": b"anything"}) is None
