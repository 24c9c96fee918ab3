"""Rego mode (`engine: opa`): decisions from a real OPA server, through opa-python-client.

The adapter sends OPA the same input document the native engine decides on, and maps
OPA's answer to an `OpaDecision` the engine turns into a `Decision`.

Input document (`input` of every query; every key is always present)::

    {"action": {"kind": "TOOL_CALL",            # a bastion.v1.ActionKind name
                "server": "demo",               # upstream key in bastion.yaml
                "tool": "get_weather",          # bare names, without "server__"; for the
                                                # A2A kinds, the A2A 1.0 method (SendMessage)
                "resource": "", "prompt": "",
                "method": "tools/call",         # the JSON-RPC method
                "arguments": {...}},            # the call's arguments (JSON object)
     "ctx":    {"agent_id": "billing-bot", "tenant": "", "roles": [], "session_id": "",
                "workflow_id": "", "task": "", "labels": {}, "taint": []}}

Expected result at the queried rule (e.g. `bastion/decision`)::

    {"effect": "allow" | "deny" | "require_approval" | "queue",
     "rule_id": "...", "reason": "...", "policy": "..."}   # "policy" optional

Failing closed: OPA unreachable or erroring, no answer before the deadline, an
undefined result, a result of any other shape, or an unknown effect is a DENY whose
reason starts with "opa: " and says which. Nothing here ever turns a failure into an
allow, and no exception from `decide` reaches the caller (cancellation aside).

`policy/rego/bastion.rego` (see `bundled_module`) interprets AgentPolicy documents pushed
as OPA data with `push_policies`, with the native engine's match semantics. The pushed data
also names the set (`data.bastion.active`: its versions in order and its digest), and
`decide_bundled` asks for the decision and that name in one evaluation, which OPA makes
against one consistent snapshot of its data: the answer says which versions decided it,
and an OPA that lost its module or data (a restart) answers `missing` rather than deciding.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from types import TracebackType
from typing import Any, Literal, Self, TypedDict, cast, get_args
from urllib.parse import urlsplit

import aiohttp
from opa_client import AsyncOpaClient  # type: ignore[import-untyped]
from opa_client.errors import RegoParseError  # type: ignore[import-untyped]

from bastion._errors import ConfigError, DecisionUnavailable, PolicyValidationError

from ._document import RESERVED_RULE_ID, PolicyDocument
from ._engine import bundle_digest

OpaEffect = Literal["allow", "deny", "require_approval", "queue"]
OPA_EFFECTS: frozenset[str] = frozenset(get_args(OpaEffect))

#: Where bastion.rego answers, as a Data API path.
BUNDLED_DECISION_PATH = "bastion/decision"
#: The decision together with the set it was made by: {"decision": {...}, "active": {...}}.
BUNDLED_ANSWER_PATH = "bastion/answer"
#: OPA data path of the pushed policies: {"policies": {name: spec}, "order": [names]}.
BUNDLED_DATA_PATH = "bastion"

# What bastion.rego interprets. `limits` and `verifier` are settings the proxy applies
# (learned through Watch), not inputs of the decision, so they pass.
_REGO_SPEC_KEYS = frozenset({"default", "rules", "limits", "verifier"})
_REGO_RULE_KEYS = frozenset({"id", "description", "match", "effect"})
_RESULT_KEYS = frozenset({"effect", "rule_id", "reason", "policy"})
_MAX_REASON_CHARS = 512


class ActionInput(TypedDict):
    kind: str
    server: str
    tool: str
    resource: str
    prompt: str
    method: str
    arguments: dict[str, Any]


class ContextInput(TypedDict):
    agent_id: str
    tenant: str
    roles: list[str]
    session_id: str
    workflow_id: str
    task: str
    labels: dict[str, str]
    taint: list[str]


class OpaInput(TypedDict):
    action: ActionInput
    ctx: ContextInput


def opa_input(
    *,
    kind: str,
    agent_id: str,
    server: str = "",
    tool: str = "",
    resource: str = "",
    prompt: str = "",
    method: str = "",
    arguments: Mapping[str, Any] | None = None,
    tenant: str = "",
    roles: Sequence[str] = (),
    session_id: str = "",
    workflow_id: str = "",
    task: str = "",
    labels: Mapping[str, str] | None = None,
    taint: Sequence[str] = (),
) -> OpaInput:
    """The input document with every key present (absent values empty)."""
    return {
        "action": {
            "kind": kind,
            "server": server,
            "tool": tool,
            "resource": resource,
            "prompt": prompt,
            "method": method,
            "arguments": dict(arguments or {}),
        },
        "ctx": {
            "agent_id": agent_id,
            "tenant": tenant,
            "roles": list(roles),
            "session_id": session_id,
            "workflow_id": workflow_id,
            "task": task,
            "labels": dict(labels or {}),
            "taint": list(taint),
        },
    }


#: A policy set as OPA names it: (name, version) in evaluation order.
SetKey = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class HeldSet:
    """The set OPA holds, as pushed (`data.bastion.active`): its versions and `bundle_digest`."""

    versions: SetKey
    digest: str

    @classmethod
    def of(cls, documents: Sequence[PolicyDocument]) -> HeldSet:
        versions = tuple((document.metadata.name, document.metadata.version) for document in documents)
        return cls(versions, bundle_digest(documents))

    def describe(self) -> str:
        return ", ".join(f"{name!r} v{version}" for name, version in self.versions) or "no policy"


@dataclass(frozen=True, slots=True)
class OpaDecision:
    effect: OpaEffect
    #: The deciding rule's id as OPA reported it; "default" for every fail-closed deny.
    rule_id: str
    reason: str
    #: The policy OPA named as deciding, "" when it named none.
    policy: str = ""


@dataclass(frozen=True, slots=True)
class BundledAnswer:
    """What `decide_bundled` got: the decision, and the set OPA made it by."""

    decision: OpaDecision
    #: The set named in the same evaluation; None when OPA did not decide or named none.
    held: HeldSet | None
    #: OPA answered, but without bastion.rego or its data (e.g. it restarted): reloading them helps.
    missing: bool = False


def bundled_module() -> str:
    """The text of policy/rego/bastion.rego, shipped as package data."""
    return (resources.files("bastion.policy") / "rego" / "bastion.rego").read_text(encoding="utf-8")


class OpaEngine:
    """A connection to one OPA server; use `async with OpaEngine(url) as opa:`.

    `deadline_s` bounds every query end to end (connect, evaluate, read); no retries,
    since a retry after a slow answer could only miss the deadline. Deny reasons never
    name OPA's address (they reach agents in block envelopes); admin errors do.
    """

    def __init__(self, url: str, *, deadline_s: float = 0.5, admin_timeout_s: float = 10.0) -> None:
        if not (math.isfinite(deadline_s) and deadline_s > 0):
            raise ConfigError(f"OPA deadline must be a positive number of seconds (got {deadline_s!r})")
        self.url = url
        self.deadline_s = deadline_s
        host, port, tls = _split_url(url)
        # Admin writes (modules, data) may take longer than a decision; they get their own client.
        self._query = AsyncOpaClient(host=host, port=port, ssl=tls, retries=0, timeout=deadline_s)
        self._admin = AsyncOpaClient(host=host, port=port, ssl=tls, retries=0, timeout=admin_timeout_s)
        self._open = False

    async def __aenter__(self) -> Self:
        await self._query.__aenter__()
        await self._admin.__aenter__()
        self._open = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._open = False
        await self._query.close_connection()
        await self._admin.close_connection()

    async def decide(
        self, input_document: OpaInput | Mapping[str, Any], *, path: str = BUNDLED_DECISION_PATH
    ) -> OpaDecision:
        """Query `path` (e.g. "bastion/decision") with `input_document`; never raises, never fails open."""
        body = await self._query_rule(input_document, path)
        return body if isinstance(body, OpaDecision) else parse_result(body, path=path)

    async def decide_bundled(self, input_document: OpaInput | Mapping[str, Any]) -> BundledAnswer:
        """bastion.rego's decision and the set it was made by, in one query; never raises, never fails open."""
        body = await self._query_rule(input_document, BUNDLED_ANSWER_PATH)
        if isinstance(body, OpaDecision):
            return BundledAnswer(body, None)
        result = body.get("result") if isinstance(body, dict) else None
        held = _parse_held(result.get("active")) if isinstance(result, dict) else None
        if not isinstance(result, dict) or held is None:
            why = "OPA holds no Bastion policy set (bastion.rego or its data is missing, e.g. after a restart)"
            return BundledAnswer(fail_closed(why), None, missing=True)
        return BundledAnswer(parse_result({"result": result.get("decision")}, path=BUNDLED_DECISION_PATH), held)

    async def _query_rule(self, input_document: OpaInput | Mapping[str, Any], path: str) -> object:
        """The Data API response body for `path`, or the fail-closed decision saying why there is none."""
        if not self._open:
            return fail_closed("the OPA client is not open (use `async with OpaEngine(...)`)")
        try:
            async with asyncio.timeout(self.deadline_s):
                body: object = await self._query.query_rule(
                    input_data=dict(input_document), package_path=path.strip("/")
                )
        except TimeoutError:
            return fail_closed(f"no answer within {self.deadline_s * 1000:.0f} ms (deadline)")
        except aiohttp.ClientResponseError as exc:
            return fail_closed(f"the server answered HTTP {exc.status} for {path}: {_clip(exc.message)}")
        except aiohttp.ClientConnectionError as exc:
            return fail_closed(f"the server is unreachable ({type(exc).__name__})")
        except (aiohttp.ClientError, ValueError) as exc:
            return fail_closed(f"unreadable answer for {path} ({type(exc).__name__})")
        except Exception as exc:  # e.g. arguments JSON cannot encode: still a decision, never a crash
            return fail_closed(f"query for {path} failed ({type(exc).__name__})")
        return body

    async def load_module(self, module_id: str, rego_text: str) -> None:
        """PUT /v1/policies/<module_id>; OPA's compile errors raise PolicyValidationError."""
        try:
            async with asyncio.timeout(self._admin.timeout):
                # rego_compat=False: a module OPA refuses is reported as written, never rewritten.
                await self._admin.update_policy_from_string(rego_text, module_id, rego_compat=False)
        except RegoParseError as exc:
            raise PolicyValidationError(f"OPA refused Rego module {module_id!r}: {_compile_errors(exc)}") from exc
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise DecisionUnavailable(f"cannot load Rego module {module_id!r} into {self.url}: {exc!r}") from exc

    async def put_data(self, path: str, value: dict[str, Any]) -> None:
        """PUT /v1/data/<path> (replacing what was there) in one OPA transaction."""
        try:
            async with asyncio.timeout(self._admin.timeout):
                await self._admin.update_or_create_data(value, path.strip("/"))
        except RegoParseError as exc:
            raise PolicyValidationError(f"OPA refused data at {path!r}: {_compile_errors(exc)}") from exc
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise DecisionUnavailable(f"cannot write OPA data {path!r} at {self.url}: {exc!r}") from exc

    async def push_policies(self, documents: Sequence[PolicyDocument]) -> None:
        """Make `documents` (bastion.yaml order) the policies bastion.rego evaluates, atomically."""
        names = [document.metadata.name for document in documents]
        if len(set(names)) != len(names):
            raise PolicyValidationError(f"a policy name appears twice in {names}; list each policy once")
        for document in documents:
            check_rego_supported(document)
        held = HeldSet.of(documents)
        await self.put_data(
            BUNDLED_DATA_PATH,
            {
                "policies": {document.metadata.name: document.canonical()["spec"] for document in documents},
                "order": names,
                "active": {"versions": [list(item) for item in held.versions], "digest": held.digest},
            },
        )


def rego_problems(document: PolicyDocument) -> list[str]:
    """What in `document` bastion.rego does not evaluate (empty: it can decide by it exactly)."""
    # bastion.rego decides on `match` and `effect` alone. A rule whose `when`/`args` it
    # ignored would match more than its author wrote (fail open), so such documents are
    # refused; decisions needing them belong in the native engine or in Rego.
    spec = document.canonical()["spec"]
    problems = [f"spec.{key}" for key in sorted(set(spec) - _REGO_SPEC_KEYS)]
    for rule in spec.get("rules", []):
        problems += [f"rule '{rule.get('id')}' {key}" for key in sorted(set(rule) - _REGO_RULE_KEYS)]
        if rule.get("effect") not in OPA_EFFECTS:
            problems.append(f"rule '{rule.get('id')}' effect {rule.get('effect')!r}")
    return problems


def check_rego_supported(document: PolicyDocument) -> None:
    """PolicyValidationError naming every field bastion.rego does not evaluate, if any."""
    if problems := rego_problems(document):
        raise PolicyValidationError(
            f"policy {document.metadata.name!r} v{document.metadata.version} uses what bastion.rego does not "
            f"evaluate: {', '.join(problems)}; Rego mode (BASTION_POLICY_ENGINE=opa) cannot enforce it: "
            "use the native engine for it, or express it in your own Rego module"
        )


def _parse_held(value: object) -> HeldSet | None:
    """`data.bastion.active` as pushed, or None when it is absent or not of that shape."""
    if not isinstance(value, dict):
        return None
    versions, digest = value.get("versions"), value.get("digest")
    if not isinstance(versions, list) or not isinstance(digest, str):
        return None
    key: list[tuple[str, int]] = []
    for item in versions:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            return None
        if not isinstance(item[1], int) or isinstance(item[1], bool):
            return None
        key.append((item[0], item[1]))
    return HeldSet(tuple(key), digest)


def parse_result(body: object, *, path: str = BUNDLED_DECISION_PATH) -> OpaDecision:
    """Map a Data API response body to a decision; anything unexpected is a deny."""
    if not isinstance(body, dict):
        return fail_closed(f"response for {path} is not a JSON object")
    if "result" not in body:
        return fail_closed(f"{path} is undefined for this input (no rule produced a decision)")
    result = body["result"]
    if not isinstance(result, dict):
        return fail_closed(f"{path} returned {type(result).__name__}, expected an object with effect, rule_id, reason")
    unknown = sorted(set(result) - _RESULT_KEYS)
    missing = sorted({"effect", "rule_id", "reason"} - set(result))
    if unknown or missing:
        problems = [f"{what} {', '.join(keys)}" for what, keys in (("missing", missing), ("unknown", unknown)) if keys]
        return fail_closed(f"{path} returned an object of the wrong shape ({'; '.join(problems)})")
    wrong = sorted(key for key, value in result.items() if not isinstance(value, str))
    if wrong:
        return fail_closed(f"{path} returned non-string {', '.join(wrong)}")
    effect, rule_id = result["effect"], result["rule_id"]
    if effect not in OPA_EFFECTS:
        return fail_closed(f"{path} returned unknown effect {_clip(effect)!r} (expected one of {sorted(OPA_EFFECTS)})")
    if not rule_id:
        return fail_closed(f"{path} returned an empty rule_id")
    return OpaDecision(
        effect=cast(OpaEffect, effect),
        rule_id=rule_id,
        reason=_clip(result["reason"]),
        policy=result.get("policy", ""),
    )


def fail_closed(why: str) -> OpaDecision:
    """The deny that stands in for a decision OPA did not make; `why` reaches agents (no addresses)."""
    return OpaDecision(effect="deny", rule_id=RESERVED_RULE_ID, reason=f"opa: {why} (fail closed)")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


def _compile_errors(exc: RegoParseError) -> str:
    details = []
    for error in exc.errors:
        if not isinstance(error, dict):
            continue
        location = error.get("location") or {}
        where = f"{location.get('file', '')}:{location.get('row', '?')}:{location.get('col', '?')}"
        details.append(f"{where}: {error.get('message', '')} ({error.get('code', 'error')})")
    return "; ".join(details) or f"{exc.expression}: {exc.message}"


def _split_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path not in {"", "/"}:
        raise ConfigError(f"OPA URL {url!r} must look like http://host:port (no path; opa-python-client adds /v1)")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError as exc:
        raise ConfigError(f"OPA URL {url!r} has an invalid port") from exc
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host, port, tls
