"""DNS-rebinding protection: the Host (and Origin, when sent) must be one the operator allows.

A browser tricked into calling `http://evil.example.com` that resolves to 127.0.0.1
sends `Host: evil.example.com`; answering it would hand a web page the agent's tools
(at the proxy) or the audit trail (at the graph). With no `allowed_hosts` in bastion.yaml
a loopback-bound service accepts only loopback names, as the MCP SDK does; a service
bound to other interfaces refuses to start without the list (`'*'` in it accepts any
Host, for a deployment whose gateway checks Host itself).

The check reads the raw ASGI header list, not a dict of it: a request carrying two
`Host` (or two `Origin`) headers is refused outright. Folding them into a dict keeps the
last one, so `Host: evil.example.com` followed by `Host: 127.0.0.1` would pass here while
a front proxy or cache that reads the first one routes on the evil name (RFC 9112 §3.2:
a server must reject such a request).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from ._errors import ConfigError

_LOOPBACK = ("127.0.0.1:*", "localhost:*", "[::1]:*")
_LOOPBACK_BINDS = ("127.0.0.1", "localhost", "::1")


def _split(hostport: str) -> tuple[str, str]:
    if hostport.startswith("["):
        host, _, rest = hostport.partition("]")
        return host + "]", rest.lstrip(":")
    host, _, port = hostport.partition(":")
    return host, port


class HostCheck:
    """Which Host/Origin values a service bound to `bind_host` answers.

    `allowed` entries are `host:port`, `host:*` or `host` (any port), matched without case.
    """

    def __init__(self, allowed: tuple[str, ...], bind_host: str) -> None:
        if not allowed:
            if bind_host not in _LOOPBACK_BINDS:
                # DESIGN §4: without the list, a service reachable from other machines
                # would answer any Host, which is exactly what DNS rebinding needs.
                raise ConfigError(
                    f"listening on {bind_host} (not loopback) needs allowed_hosts in bastion.yaml: the host:port "
                    "names clients use (or '*' to accept any Host, e.g. behind a gateway that checks it)"
                )
            allowed = _LOOPBACK
        self._any = "*" in allowed
        self._rules = [_split(entry.lower()) for entry in allowed]

    def _ok(self, hostport: str) -> bool:
        host, port = _split(hostport.lower())
        return any(host == h and (p in ("*", "") or p == port) for h, p in self._rules)

    def refusal(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """None when the request may proceed, else the reason to refuse it.

        `headers` is the ASGI scope's raw list of (name, value) pairs.
        """
        hosts: list[bytes] = []
        origins: list[bytes] = []
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"host":
                hosts.append(value)
            elif lowered == b"origin":
                origins.append(value)
        if len(hosts) > 1:
            return "more than one Host header"
        if len(origins) > 1:
            return "more than one Origin header"
        if self._any:
            return None
        host = hosts[0].decode("latin-1") if hosts else ""
        if not self._ok(host):
            return f"Host {host!r} is not allowed (allowed_hosts in bastion.yaml)"
        if origins:
            origin = origins[0].decode("latin-1")
            if not self._ok(_netloc(origin)):
                return f"Origin {origin!r} is not allowed (allowed_hosts in bastion.yaml)"
        return None


def _netloc(origin: str) -> str:
    """The host:port of an Origin; empty (never allowed) for `null` or one that does not parse."""
    try:
        return urlsplit(origin).netloc
    except ValueError:  # e.g. 'http://[' — an unclosed IPv6 literal
        return ""


_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
#: A last label a browser reads as a number (WHATWG URL "ends in a number"): the host is then
#: an IPv4 address, in any of the forms it accepts (`127.1`, `0x7f.0.0.1`, `2130706433`).
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


def _ipv6(text: str) -> str:
    """An IPv6 address as a browser serializes it (WHATWG URL §3.6): lower-case hex
    without leading zeros, the first longest run of two or more zero pieces as `::`, no
    dotted IPv4 tail (`::ffff:127.0.0.1` is `::ffff:7f00:1`). ValueError if not one."""
    if "%" in text:
        raise ValueError("a zone (`%eth0`) is no part of a URL's host")
    packed = ipaddress.IPv6Address(text).packed
    pieces = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    best, best_len, run_start = -1, 1, -1
    for i, piece in enumerate([*pieces, 1]):
        if piece == 0 and run_start < 0:
            run_start = i
        elif piece != 0 and run_start >= 0:
            if i - run_start > best_len:
                best, best_len = run_start, i - run_start
            run_start = -1
    hexes = [f"{piece:x}" for piece in pieces]
    if best < 0:
        return ":".join(hexes)
    return ":".join(hexes[:best]) + "::" + ":".join(hexes[best + best_len :])


def web_origin(url: str) -> str:
    """The origin (`scheme://host[:port]`, lower case) of an http(s) URL naming a web
    server and nothing more: no user, path, query or fragment. ValueError otherwise.

    The result is the `Origin` a browser sends for a page there, byte for byte (the proxy
    compares it so, and a page's CSP names it): an IPv6 address is written in the browser's
    form, and a host a browser would write otherwise (an IPv4 address not in four decimal
    parts) or would not load at all is refused, not kept as a value that never matches."""
    shown = url[:200]
    text = url.strip()
    if any(char.isspace() or not char.isprintable() for char in text):
        # urlsplit (as a browser) drops tabs and newlines anywhere: `exa\tmple.com` would
        # silently become example.com.
        raise ValueError(f"{shown!r} holds a space or a control character")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises on a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"{shown!r} is not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown!r} is not an http(s) URL with a host")
    if "@" in parts.netloc or parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"{shown!r} must name only scheme, host and port")
    if port == 0:
        raise ValueError(f"{shown!r}: port 0 is no port a browser connects to")
    hostname = parts.hostname
    if parts.netloc.startswith("["):
        try:
            host = f"[{_ipv6(hostname)}]"
        except ValueError:
            raise ValueError(f"{shown!r}: the host in brackets must be an IPv6 address") from None
    elif _NUMERIC_LABEL.fullmatch(hostname.rpartition(".")[2]):
        try:
            canonical = str(ipaddress.IPv4Address(hostname))
        except ValueError:
            canonical = None
        if canonical != hostname:
            raise ValueError(f"{shown!r}: an IPv4 address must be written as four decimal numbers (e.g. 127.0.0.1)")
        host = hostname
    elif _HOST_NAME.fullmatch(hostname):
        # Also what keeps a configured origin from adding to a Content-Security-Policy
        # (`;` or `,` would start a directive or a source list there).
        host = hostname
    else:
        raise ValueError(f"{shown!r}: the host must be a DNS name (punycode for IDN) or an IP address")
    # As a browser sends it in Origin: the default port left out.
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")
