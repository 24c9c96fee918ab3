"""`web_origin` keeps a setting only as the exact `Origin` a browser sends for a page there
(the proxy compares it byte for byte, the page's CSP names it); anything a browser would
write otherwise, or not load, stops the service at start."""

from __future__ import annotations

import re

import pytest

from bastion._hosts import web_origin

REFUSED = [
    "http://[v1.x]",  # an IPvFuture literal, once kept unbracketed as the DNS name v1.x
    "http://...",
    "http://a..b",
    "http://@127.0.0.1:8080",  # an empty user is still a user
    "http://:@127.0.0.1:8080",
    "http://127.0.0.1:0",
    "http://127.1:8080",  # a browser sends http://127.0.0.1:8080
    "http://0x7f.0.0.1:8080",
    "http://2130706433:8080",
    "http://999.1.1.1",  # a browser refuses the URL
    "http://1.2.3.4.5",
    "http://ops.example.123",
    "http://[fe80::1%25eth0]:8080",
    "http://exa\tmple.com",  # urlsplit drops the tab: example.com
    "http://127.0.0.1:80\n80",
]


@pytest.mark.parametrize("value", REFUSED)
def test_what_a_browser_never_sends_as_that_origin_is_refused(value: str) -> None:
    # Each message names the value, as the setting's error at start shows it.
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        web_origin(value)


@pytest.mark.parametrize(
    ("value", "origin"),
    [
        ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080"),
        ("http://[::FFFF:127.0.0.1]:8080", "http://[::ffff:7f00:1]:8080"),
        ("http://[2001:DB8:0:0:1:0:0:1]", "http://[2001:db8::1:0:0:1]"),
        ("http://[1:0:0:2:0:0:0:3]", "http://[1:0:0:2::3]"),
        ("http://127.0.0.1:08080", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080\r\n", "http://127.0.0.1:8080"),
    ],
)
def test_an_ip_address_is_written_as_a_browser_writes_it(value: str, origin: str) -> None:
    assert web_origin(value) == origin
