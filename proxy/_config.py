"""Proxy settings (BASTION_* env vars), frozen at startup."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from bastion._hosts import web_origin
from bastion._settings import CommonSettings, verifier_token_field


class ProxySettings(CommonSettings):
    proxy_addr: str = Field(
        default="127.0.0.1:7070", description="Proxy listen address (MCP/A2A clients connect here)."
    )
    policy_grpc_addr: str = Field(default="127.0.0.1:50051", description="Policy service gRPC address.")
    verifier_addr: str = Field(default="127.0.0.1:50052", description="Verifier gRPC address.")
    graph_grpc_addr: str = Field(
        default="127.0.0.1:50053", description="Graph service gRPC address (journal shipping)."
    )
    max_body: int = Field(default=4 * 1024 * 1024, ge=1024, description="Largest accepted request body in bytes.")
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds a client has to send the whole request body; past it, HTTP 408."
    )
    max_argument_values: int = Field(
        default=10_000,
        ge=16,
        description="Most values (scalars, arrays, objects) a governed call's arguments may hold; more is -32602.",
    )
    max_argument_depth: int = Field(
        # Above 32, protobuf's parser (100 message levels) could refuse the event.
        default=32,
        ge=2,
        le=32,
        description="Deepest nesting of arrays/objects in a governed call's arguments.",
    )
    max_argument_string_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Most UTF-8 bytes of keys and strings in a governed call's arguments.",
    )
    tool_list_ttl_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds an upstream's live tools/list is trusted before it is fetched again.",
    )
    policy_timeout_ms: int = Field(
        default=1000, ge=1, description="Deadline for PolicyService.Decide; past it the action is blocked."
    )
    verifier_chain: str = Field(
        default="",
        max_length=1024,
        description="Further verifiers, comma-separated host:port (at most 8), asked concurrently with "
        "BASTION_VERIFIER_ADDR about every action: the strictest answer decides (block over flag over pass), "
        "and any of them failing takes the fallback.",
    )
    verifier_chain_token: SecretStr | None = Field(
        default=None,
        description="Bearer token sent to the BASTION_VERIFIER_CHAIN verifiers instead of the service token. "
        "Set it whenever a chained verifier is not yours: the service token also lets its holder write events "
        "and audit records to the graph and read API key digests from the policy service.",
    )
    verifier_token: SecretStr | None = verifier_token_field()
    verifier_timeout_ms: int = Field(
        default=500,
        ge=1,
        le=60_000,
        description="Deadline for Verifier.Score unless the agent's policies set verifier.timeout_ms; past it "
        "the fallback applies.",
    )
    verifier_fallback: Literal["block", "allow", "queue"] = Field(
        default="block",
        description="What a verifier timeout/error does unless the agent's policies set verifier.fallback: block "
        "(fail closed), allow (audited as a fallback) or queue (parked for an operator: bastion queue).",
    )
    verifier_breaker_failures: int = Field(
        default=5,
        ge=1,
        description="Consecutive verifier failures (timeouts, errors) that open its circuit: the fallback then "
        "applies at once, without waiting for the deadline, until the cool-down ends.",
    )
    verifier_breaker_cooldown_ms: int = Field(
        default=5000,
        ge=1,
        description="How long an open verifier circuit stays open before one trial call is let through.",
    )
    upstream_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds to wait for an upstream's response headers."
    )
    max_answer_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest upstream answer (MCP server or A2A agent) the proxy reads whole, in bytes: a larger one is "
            "cut off and the call answered 502. Event streams are relayed as they come, each event at most 16 MiB."
        ),
    )
    stdio_max_sessions: int = Field(
        default=32,
        ge=1,
        description="Most concurrent sessions (each one child process) per stdio server; more are refused.",
    )
    sessions_per_principal: int = Field(
        default=4,
        ge=1,
        description="Most sessions one principal (tenant and agent) holds at once on a stdio server or the "
        "aggregated /mcp: its next initialize closes its least recently used one, so no caller can take every "
        "slot of BASTION_STDIO_MAX_SESSIONS or BASTION_AGGREGATED_MAX_SESSIONS from the others.",
    )
    session_idle_s: float = Field(
        default=900.0,
        gt=0,
        description="Seconds a session Bastion serves itself (a stdio server's, the aggregated /mcp's) may go "
        "unused before it is closed (a stdio child is stopped).",
    )
    aggregated_max_sessions: int = Field(
        default=1000, ge=1, description="Most concurrent sessions of the aggregated /mcp endpoint; more are refused."
    )
    journal_dir: Path | None = Field(
        default=None,
        description="Directory of the proxy's journal (default $BASTION_HOME/journal); one process per directory.",
    )
    journal_fsync_ms: float = Field(
        default=5.0, gt=0, description="Group-commit interval of the journal: fsync at most this often."
    )
    journal_segment_bytes: int = Field(
        default=64 * 1024 * 1024, ge=4096, description="Size at which the journal rolls to a new segment file."
    )
    access_log: bool = Field(
        default=False,
        description="Log one JSON line per request on bastion.proxy.access (method, status, outcome, duration, ids).",
    )
    history_len: int = Field(
        default=16, ge=0, le=256, description="Earlier actions of the workflow sent to the verifier with each call."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for limits, budgets and approvals shared by every proxy replica "
        "(redis://host:port/db); unset: limits are counted in this process, approvals kept in "
        "$BASTION_HOME/proxy/approvals.sqlite3.",
    )
    redis_timeout_ms: int = Field(
        default=250,
        ge=10,
        description="Deadline for one limit check or approval step in Redis; past it (or Redis unreachable) "
        "the action is blocked.",
    )
    approval_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds an approval request stays open, and an approved call may be retried, before it expires.",
    )
    approval_wait_s: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description="Seconds a call needing approval is held open waiting for an operator's decision before it is "
        "answered -32004 (0: answer at once).",
    )
    dashboard_origin: str | None = Field(
        default=None,
        description="The dashboard's origin (scheme://host:port of the graph service's /ui, e.g. "
        "http://127.0.0.1:8080): /v1/approvals and /v1/queue answer cross-origin requests from it, and "
        "from no other. Unset: they answer none.",
    )

    @field_validator("dashboard_origin")
    @classmethod
    def _dashboard_origin(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else web_origin(value)

    @field_validator("verifier_chain")
    @classmethod
    def _chain(cls, value: str) -> str:
        addresses = chain_addresses(value)
        if len(addresses) > MAX_CHAIN:
            raise ValueError(f"at most {MAX_CHAIN} chained verifiers, got {len(addresses)}")
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in address):
                raise ValueError(f"{address[:100]!r} is not host:port")
        return value


#: Chained verifiers at most: each is one more gRPC round trip per governed call.
MAX_CHAIN = 8


def chain_addresses(value: str) -> list[str]:
    """BASTION_VERIFIER_CHAIN's addresses, in order, without blanks."""
    return [address.strip() for address in value.split(",") if address.strip()]
