"""DNS-rebinding protection: the Host (and Origin, when sent) must be one the operator allows.

A browser tricked into calling `http://evil.example.com` that resolves to 127.0.0.1
sends `Host: evil.example.com`; answering it would hand a web page the agent's tools.
With no `allowed_hosts` in bastion.yaml a loopback-bound proxy accepts only loopback
names, as the MCP SDK does; a proxy bound to other interfaces needs the list.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_LOOPBACK = ("127.0.0.1:*", "localhost:*", "[::1]:*")


def _split(hostport: str) -> tuple[str, str]:
    if hostport.startswith("["):
        host, _, rest = hostport.partition("]")
        return host + "]", rest.lstrip(":")
    host, _, port = hostport.partition(":")
    return host, port


class HostCheck:
    def __init__(self, allowed: tuple[str, ...], bind_host: str) -> None:
        if not allowed and bind_host in ("127.0.0.1", "localhost", "::1"):
            allowed = _LOOPBACK
        self._any = not allowed
        self._rules = [_split(entry.lower()) for entry in allowed]

    def _ok(self, hostport: str) -> bool:
        host, port = _split(hostport.lower())
        return any(host == h and (p in ("*", "") or p == port) for h, p in self._rules)

    def refusal(self, headers: dict[bytes, bytes]) -> str | None:
        """None when the request may proceed, else the reason to refuse it."""
        if self._any:
            return None
        host = headers.get(b"host", b"").decode("latin-1")
        if not self._ok(host):
            return f"Host {host!r} is not allowed (allowed_hosts in bastion.yaml)"
        origin = headers.get(b"origin")
        if origin is not None:
            netloc = urlsplit(origin.decode("latin-1")).netloc
            if not self._ok(netloc):
                return f"Origin {origin.decode('latin-1')!r} is not allowed (allowed_hosts in bastion.yaml)"
        return None
