"""The one exception tree of Bastion.

    BastionError                      base; never raised itself
    ├── ConfigError                   bad bastion.yaml, env var or file
    ├── PolicyError                   policy documents and bundles
    │   ├── PolicyValidationError     a document fails its schema (unknown field, bad glob, …)
    │   └── BundleSignatureError      a signed bundle does not verify
    ├── AuthError                     missing/invalid credentials (HTTP 401)
    │   ├── ForbiddenError            valid credentials, insufficient role or tenant (HTTP 403)
    │   └── RevocationsUnavailable    a JWT on an operator route before revocations are loaded (HTTP 503)
    ├── ProtocolError                 a message Bastion cannot parse or accept
    │   ├── ParseError                not JSON (JSON-RPC -32700)
    │   ├── InvalidRequest            JSON but not a valid JSON-RPC request (-32600)
    │   ├── InvalidParams             valid request, unacceptable params, e.g. a hostile tool name (-32602)
    │   │   ├── UnknownTool           a tool name not exactly in the upstream's live tools/list (-32602)
    │   │   └── ArgumentsTooLarge     arguments over the value budget: values, depth, string bytes (-32602)
    │   ├── MethodNotAllowed          a method Bastion neither governs nor carries as protocol (-32601)
    │   ├── HeaderMismatch            2026-07 routing headers disagree with the body (-32020)
    │   ├── PayloadTooLarge           body over BASTION_MAX_BODY (HTTP 413)
    │   ├── BodyTimeout               the body did not arrive within BASTION_BODY_TIMEOUT_S (HTTP 408)
    │   ├── SessionUnknown            an Mcp-Session-Id this proxy did not see initialised (HTTP 404)
    │   └── SessionForeign            an Mcp-Session-Id initialised by another principal (HTTP 403)
    ├── DecisionUnavailable           policy or verifier unreachable, slow or failing: blocks
    ├── UpstreamError                 the upstream MCP server / A2A agent failed
    │   ├── UpstreamTimeout           … by sending no response, or no more body, in time (HTTP 504)
    │   └── UnreadableListing         … by an answer the proxy cannot read to filter listings in it (HTTP 502)
    ├── JournalError                  the local journal cannot record an event: blocks
    └── StoreError                    the graph store failed

Each class carries the single wire code it maps to (`jsonrpc_code`, `http_status`,
`grpc_code`); adapters translate third-party exceptions at the boundary with
`raise StoreError(...) from exc` so nothing from grpc, sqlite or neo4j leaks out.
docs/errors.md lists the same table.
"""

from __future__ import annotations

import grpc


class BastionError(Exception):
    """Base of every error Bastion raises on purpose."""

    #: Stable machine-readable code, used in logs, audit events and block envelopes.
    code: str = "bastion.error"
    jsonrpc_code: int = -32603
    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ConfigError(BastionError):
    code = "bastion.config"
    http_status = 500
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class PolicyError(BastionError):
    code = "bastion.policy"
    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class PolicyValidationError(PolicyError):
    code = "bastion.policy.invalid"


class BundleSignatureError(PolicyError):
    code = "bastion.policy.signature"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class AuthError(BastionError):
    code = "bastion.auth.unauthenticated"
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class ForbiddenError(AuthError):
    code = "bastion.auth.forbidden"
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class RevocationsUnavailable(AuthError):
    """This service has not yet received the revocation list from the policy service, so a
    JWT cannot be told apart from a revoked one: refused (fail closed) on the REST routes."""

    code = "bastion.auth.revocations_unavailable"
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ProtocolError(BastionError):
    code = "bastion.protocol"
    jsonrpc_code = -32600
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ParseError(ProtocolError):
    code = "bastion.protocol.parse_error"
    jsonrpc_code = -32700


class InvalidRequest(ProtocolError):
    code = "bastion.protocol.invalid_request"
    jsonrpc_code = -32600


class InvalidParams(ProtocolError):
    code = "bastion.protocol.invalid_params"
    jsonrpc_code = -32602


class UnknownTool(InvalidParams):
    code = "bastion.protocol.unknown_tool"


class ArgumentsTooLarge(InvalidParams):
    code = "bastion.protocol.arguments_too_large"


class MethodNotAllowed(ProtocolError):
    code = "bastion.protocol.method_not_allowed"
    jsonrpc_code = -32601


class BodyTimeout(ProtocolError):
    code = "bastion.protocol.body_timeout"
    http_status = 408


class SessionUnknown(ProtocolError):
    code = "bastion.session.unknown"
    http_status = 404


class SessionForeign(ProtocolError):
    code = "bastion.session.foreign"
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class DelegationRefused(ProtocolError):
    """A `Bastion-Delegation` header that is forged, expired, another tenant's or another agent's."""

    code = "bastion.delegation.refused"
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class TaskForeign(ProtocolError):
    """An A2A call naming a task another principal created through Bastion."""

    code = "bastion.a2a.task_foreign"
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class HeaderMismatch(ProtocolError):
    code = "bastion.protocol.header_mismatch"
    jsonrpc_code = -32020


class PayloadTooLarge(ProtocolError):
    code = "bastion.protocol.too_large"
    http_status = 413


class DecisionUnavailable(BastionError):
    """A dependency on the enforcement path did not answer in time or failed: the action is blocked."""

    code = "bastion.decision_unavailable"
    jsonrpc_code = -32003
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamError(BastionError):
    code = "bastion.upstream"
    jsonrpc_code = -32603
    http_status = 502
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamTimeout(UpstreamError):
    code = "bastion.upstream.timeout"
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnreadableListing(UpstreamError):
    """An answer the proxy cannot read (not JSON, compressed, another charset), where a
    listing (`tools/list`, …) may be: relayed, it would show every item unfiltered by
    policy (proxy/_listing.py)."""

    code = "bastion.upstream.unreadable_listing"


class JournalError(BastionError):
    code = "bastion.journal"
    jsonrpc_code = -32003
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class StoreError(BastionError):
    code = "bastion.store"
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class LimitsUnavailable(BastionError):
    """The limit store (Redis) did not answer: the action is blocked (fail closed, the -32003
    envelope with this code as its rule_id, like the other unavailable dependencies)."""

    code = "bastion.limits_unavailable"
    jsonrpc_code = -32003
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class NotFound(BastionError):
    code = "bastion.not_found"
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class InvalidInput(BastionError):
    """A REST request body that is not what the route takes (not JSON, unknown field, bad type)."""

    code = "bastion.invalid_request"
    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidQuery(InvalidInput):
    """A REST query string that is not what the route takes."""

    http_status = 400


class Conflict(BastionError):
    """The resource's state refuses the change (an approval already decided, a key revoked)."""

    code = "bastion.conflict"
    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


__all__ = [
    "ArgumentsTooLarge",
    "AuthError",
    "BastionError",
    "BodyTimeout",
    "BundleSignatureError",
    "ConfigError",
    "Conflict",
    "DecisionUnavailable",
    "ForbiddenError",
    "HeaderMismatch",
    "InvalidInput",
    "InvalidParams",
    "InvalidQuery",
    "InvalidRequest",
    "JournalError",
    "LimitsUnavailable",
    "MethodNotAllowed",
    "NotFound",
    "ParseError",
    "PayloadTooLarge",
    "PolicyError",
    "PolicyValidationError",
    "ProtocolError",
    "RevocationsUnavailable",
    "SessionForeign",
    "SessionUnknown",
    "StoreError",
    "UnknownTool",
    "UnreadableListing",
    "UpstreamError",
    "UpstreamTimeout",
]
