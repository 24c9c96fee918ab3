"""Validation against live tools: the client side of the proxy's `GET /v1/tools`, and the
check of a document's rules against what it returns.

`fetch_live_tools` asks the proxy at BASTION_PROXY_ADDR, forwarding the caller's own
bearer token (the validate route needs an operator, whom the proxy lets read tool lists;
the policy service mints no token of its own, so it can read nothing the caller could
not), within `LIVE_TOOLS_TIMEOUT_S`. It never raises: a proxy that cannot be asked
gives a `LiveTools` whose `unchecked` says why, and validation goes on without it.

`check_live_tools` then reports, for each rule:

    problems   an exact tool name (no '*' or '?') whose server is not at the proxy, or
               whose tool is in no upstream's live list (names match as rules do:
               ignoring case); an `args` key (top level, '*' aside) that no tool the
               rule names exactly has in its inputSchema `properties`
    warnings   a glob that matches no live tool; a server whose list could not be read
               (its rules are not checked)

Only `match.tools` is checked: resources and prompts are not listed by /v1/tools.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from bastion._globs import compile_patterns

from ._document import PolicyDocument, Rule

LIVE_TOOLS_TIMEOUT_S = 3.0
_MAX_NAMES_SHOWN = 8


@dataclass(frozen=True, slots=True)
class LiveServer:
    #: Exact tool name → its argument names (None: the schema lists no `properties`).
    tools: Mapping[str, frozenset[str] | None]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LiveTools:
    servers: Mapping[str, LiveServer] = field(default_factory=dict)
    #: Why the live lists could not be read at all ("" when they were).
    unchecked: str = ""

    @property
    def summary(self) -> str:
        if self.unchecked:
            return f"live tools not checked: {self.unchecked}"
        names = ", ".join(sorted(self.servers)) or "none"
        return f"checked against the proxy's live tools (upstreams: {names})"


async def fetch_live_tools(addr: str, authorization: str | None, *, timeout: float = LIVE_TOOLS_TIMEOUT_S) -> LiveTools:
    """The proxy's live tools, or an empty `LiveTools` saying why they could not be read."""
    headers = {"Authorization": authorization} if authorization else {}
    try:
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=timeout) as http:
            response = await http.get("/v1/tools", headers=headers)
    except httpx.TimeoutException:
        return LiveTools(unchecked=f"the proxy at {addr} (BASTION_PROXY_ADDR) did not answer within {timeout:g}s")
    except httpx.HTTPError as exc:
        return LiveTools(
            unchecked=f"the proxy at {addr} (BASTION_PROXY_ADDR) is unreachable: {exc or type(exc).__name__}"
        )
    if response.status_code != 200:
        return LiveTools(unchecked=f"the proxy at {addr} answered GET /v1/tools with HTTP {response.status_code}")
    try:
        return _parse(response.json())
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return LiveTools(unchecked=f"the proxy at {addr} answered GET /v1/tools with an unexpected body ({exc})")


def _parse(body: Any) -> LiveTools:
    servers: dict[str, LiveServer] = {}
    for name, entry in body["servers"].items():
        tools: dict[str, frozenset[str] | None] = {}
        for tool in entry["tools"]:
            schema = tool.get("inputSchema")
            properties = schema.get("properties") if isinstance(schema, dict) else None
            tools[str(tool["name"])] = frozenset(properties) if isinstance(properties, dict) else None
        error = entry.get("error")
        servers[str(name)] = LiveServer(tools, str(error) if error else None)
    return LiveTools(servers)


def check_live_tools(document: PolicyDocument, live: LiveTools) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the document's rules against the live tools (see the module docstring)."""
    if live.unchecked:
        return [], []
    problems: list[str] = []
    warnings: list[str] = [
        f"upstream {name!r}: its live tools could not be read, so rules naming it are not checked ({server.error})"
        for name, server in sorted(live.servers.items())
        if server.error
    ]
    every = {f"{name}__{tool}" for name, server in live.servers.items() for tool in server.tools}
    prefix = f"policy '{document.metadata.name}' v{document.metadata.version}"
    for rule in document.spec.rules:
        where = f"{prefix} rule '{rule.id}'"
        exact: list[frozenset[str] | None] = []
        for pattern in rule.match.tools or ():
            if "*" in pattern or "?" in pattern:
                regex = compile_patterns([pattern], ignore_case=True)
                if regex is not None and not any(regex.fullmatch(name) for name in every):
                    warnings.append(f"{where}: tool pattern {pattern!r} matches no live tool")
                continue
            found, arguments = _lookup(pattern, live, where, problems)
            if found:
                exact.append(arguments)
        problems += _arg_problems(rule, exact, where)
    return problems, warnings


def _lookup(name: str, live: LiveTools, where: str, problems: list[str]) -> tuple[bool, frozenset[str] | None]:
    """(found, the tool's argument names or None when its schema lists none); not found when it
    cannot be checked or is missing (a missing tool is added to `problems`)."""
    server_name, _, tool = name.partition("__")
    server = live.servers.get(server_name)
    if server is None:
        problems.append(
            f"{where}: tool {name!r} names upstream {server_name!r}, which the proxy does not serve "
            f"(upstreams: {_names(live.servers)})"
        )
        return False, None
    if server.error:
        return False, None
    by_lower = {listed.lower(): listed for listed in server.tools}
    listed = by_lower.get(tool.lower())
    if listed is None:
        close = difflib.get_close_matches(tool.lower(), list(by_lower), n=1)
        hint = f" (did you mean '{server_name}__{by_lower[close[0]]}'?)" if close else ""
        problems.append(
            f"{where}: tool {name!r} is not in upstream {server_name!r}'s live tools/list{hint}; "
            f"it lists: {_names(server.tools)}"
        )
        return False, None
    return True, server.tools[listed]


def _arg_problems(rule: Rule, exact: list[frozenset[str] | None], where: str) -> list[str]:
    if rule.args is None or not exact or any(arguments is None for arguments in exact):
        return []
    problems = []
    known = frozenset().union(*(arguments for arguments in exact if arguments is not None))
    for key in rule.args:
        if key == "*" or key in known:
            continue
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(
            f"{where}: args.{key}: no tool the rule names has an argument {key!r}{hint}; "
            f"their arguments: {_names(known)}"
        )
    return problems


def _names(names: Iterable[str]) -> str:
    shown = sorted(names)
    if not shown:
        return "none"
    text = ", ".join(shown[:_MAX_NAMES_SHOWN])
    return text + (f" and {len(shown) - _MAX_NAMES_SHOWN} more" if len(shown) > _MAX_NAMES_SHOWN else "")
