"""The agent card as Bastion serves it: every way to reach the agent points at Bastion.

A card names the agent's endpoints (1.0 `supportedInterfaces[].url`, 0.3 `url` and
`additionalInterfaces[].url`). Served unchanged, it would send clients straight to the
agent, around every decision. So each endpoint under the agent's configured URL is
rewritten to the same place under `/a2a/{agent}`, and every other one is removed:
interfaces Bastion does not carry (gRPC) and URLs outside the configured agent (a card
cannot make Bastion, or a client through Bastion, reach a host it names: Bastion only
ever forwards to the URL in bastion.yaml).

Signatures (`signatures`, JWS over the card) cannot survive the rewrite: they cover the
agent's URLs. They are removed rather than passed on broken, so a client that requires a
signed card refuses the card instead of trusting a signature that no longer verifies.
Everything else (skills, capabilities, security schemes, extensions) passes unchanged.

Every field is read and rewritten under each spelling a client's reader takes
(`_a2a_fields`): protobuf's (1.0) and pydantic's (0.3) readers take `supported_interfaces`,
`additional_interfaces`, `preferred_transport` and `protocol_binding` as well as the JSON
names, and an attacker's probe pointed a client at the agent itself through a card that
spelled them so. A card giving one field twice with different values is not relayed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson

from bastion._errors import UpstreamError
from bastion._json import loads_as_clients

from ._a2a_fields import answered, present

#: Bindings Bastion carries (DESIGN §4); gRPC is not one of them.
CARRIED_BINDINGS = frozenset({"JSONRPC", "HTTP+JSON"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def rewrite_card(card: dict[str, Any], agent_url: str, bastion_url: str) -> dict[str, Any]:
    """`card` with its endpoints moved under `bastion_url` (a new dict; `card` is unchanged).
    UpstreamError when it gives a field it names endpoints with twice, differently."""
    out = {key: value for key, value in card.items() if key != "signatures"}
    for field, binding_key in (("supportedInterfaces", "protocolBinding"), ("additionalInterfaces", "transport")):
        keys, interfaces = present(card, field)
        for key in keys:
            # Not a list: no reader takes it as interfaces, and none is shown it.
            if isinstance(interfaces, list):
                out[key] = _interfaces(interfaces, binding_key, agent_url, bastion_url)
            else:
                del out[key]
    if "url" in card:
        # 0.3's main URL is required and serves `preferredTransport`; when that is one
        # Bastion does not carry, the client is pointed at JSON-RPC through Bastion.
        keys, preferred = present(card, "preferredTransport")
        preferred = preferred.upper() if isinstance(preferred, str) else "JSONRPC"
        if preferred == "HTTP+JSON" and (moved := move_url(card["url"], agent_url, bastion_url)) is not None:
            out["url"] = moved
        else:
            out["url"] = bastion_url
            if preferred != "JSONRPC" or not same_endpoint(card["url"], agent_url):
                for key in keys or ["preferredTransport"]:
                    out[key] = "JSONRPC"
    return out


def rewrite_card_answer(data: bytes, *, jsonrpc: bool, agent_url: str, bastion_url: str) -> bytes:
    """A GetExtendedAgentCard answer with its card rewritten: the JSON-RPC `result`, or
    the HTTP+JSON body. An answer that holds no card object is passed as it came; one no
    reader takes is refused, and one only the client's reader takes (UTF-16, a BOM) is
    read as it reads it: passed on unread, its card would name the agent's own URLs."""
    try:
        answer = loads_as_clients(data)
    except ValueError as exc:
        raise UpstreamError("its extended agent card is not JSON Bastion can rewrite; it was not relayed") from exc
    if not isinstance(answer, dict):
        return data
    card = answer.get("result") if jsonrpc else answer
    if not isinstance(card, dict):
        return data
    moved = rewrite_card(card, agent_url, bastion_url)
    try:
        return orjson.dumps({**answer, "result": moved} if jsonrpc else moved)
    except TypeError as exc:  # an integer past 64 bits, which only the stdlib reader takes
        raise UpstreamError("its extended agent card holds a value Bastion cannot re-encode") from exc


def _interfaces(items: list[Any], binding_key: str, agent_url: str, bastion_url: str) -> list[dict[str, Any]]:
    kept = []
    for item in items:
        if not isinstance(item, dict):
            continue
        binding = answered(item, binding_key)
        if not isinstance(binding, str) or binding.upper() not in CARRIED_BINDINGS:
            continue
        if binding.upper() == "JSONRPC":
            # Bastion posts JSON-RPC to the configured URL itself, whatever path it came to.
            moved = bastion_url if same_endpoint(item.get("url"), agent_url) else None
        else:
            moved = move_url(item.get("url"), agent_url, bastion_url)
        if moved is not None:
            kept.append({**item, "url": moved})
    return kept


def move_url(url: object, agent_url: str, bastion_url: str) -> str | None:
    """`url` under `bastion_url` when it lies under `agent_url` (same origin, path below
    it), else None."""
    if not isinstance(url, str):
        return None
    try:
        parts, base = urlsplit(url), urlsplit(agent_url)
        port, base_port = _port(parts.scheme, parts.port), _port(base.scheme, base.port)
    except ValueError:
        return None
    if (parts.scheme, (parts.hostname or ""), port) != (base.scheme, (base.hostname or ""), base_port):
        return None
    if parts.username or parts.password or parts.fragment:
        return None
    root = base.path.rstrip("/")
    path = parts.path
    if path != root and not path.startswith(root + "/") and not (root == "" and path == ""):
        return None
    rest = path[len(root) :]
    moved = bastion_url.rstrip("/") + (rest if rest != "/" else "")
    return moved + (f"?{parts.query}" if parts.query else "")


def same_endpoint(url: object, agent_url: str) -> bool:
    """Whether `url` is the configured agent URL itself (up to a trailing '/')."""
    return move_url(url, agent_url, "") == ""


def _port(scheme: str, port: int | None) -> int | None:
    return port if port is not None else _DEFAULT_PORTS.get(scheme)
