"""Process wiring of the proxy: channels, journal, shipper, upstream pools, HTTP server."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion._apikeys import IdentityState
from bastion._appconfig import AppConfig
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_service_token
from bastion._identity_watch import IdentityWatch
from bastion._rpc import auth_metadata, open_channel
from bastion._service import run_service
from bastion._settings import check_token, parse_addr
from bastion._tls import grpc_tls
from bastion._web import start_web_server
from bastion.v1 import graph_pb2_grpc, policy_pb2, policy_pb2_grpc, verifier_pb2_grpc

from ._a2a_http import A2aAgent, A2aHttpAdapter
from ._a2a_pages import PageTokens
from ._app import ProxyApp
from ._approvals import Approvals, ApprovalStore
from ._approvals_api import ApprovalsApi
from ._approvals_redis import RedisApprovalStore
from ._breaker import CircuitBreaker
from ._budget import ValueBudget
from ._catalog import ToolCatalog
from ._config import ProxySettings, chain_addresses
from ._cors import Handler, allow_dashboard
from ._delegation import Delegations
from ._enforcer import DecisionStage, Enforcer
from ._journal import Journal
from ._limits import open_limiter
from ._mcp_aggregate import AggregatedMcpAdapter
from ._mcp_http import McpHttpAdapter
from ._metrics import ProxyMetrics
from ._owners import SessionOwners, WorkflowOwners
from ._pipeline import Governor
from ._policy_watch import PolicyWatch
from ._provenance import Provenance
from ._queue import QueueStage
from ._queue_api import QueueApi
from ._recorder import Recorder
from ._redact import Redactor
from ._shipper import Shipper, raw_ingest_batch
from ._stages import ApprovalStage, IdentityStage, LimitStage
from ._stdio_bridge import StdioUpstream
from ._tools_api import ToolsApi
from ._tracing import Tracing
from ._upstream import UpstreamPool
from ._verifier_settings import VerifierSettings
from ._workflows import WorkflowTracker

log = logging.getLogger("bastion.proxy")
#: How long a starting proxy waits for the first snapshot of API keys and revocations.
IDENTITY_SYNC_S = 5.0


async def serve(
    settings: ProxySettings,
    app: AppConfig,
    ready: Callable[[dict[str, str]], None],
    stop: asyncio.Event,
    *,
    governor_type: type[Governor] = Governor,
) -> None:
    """`governor_type` is for `bastion bench stack` alone, which measures the pipeline with
    a decision stage that asks nothing (eval/bench/_passthrough.py); no setting reaches it."""
    home = settings.home.resolve()
    secret = settings.service_token.get_secret_value() if settings.service_token else None
    service_token = ensure_service_token(home, secret)
    tls = grpc_tls(settings)  # checked before anything starts
    metadata = auth_metadata(service_token)
    verifier_metadata = _verifier_metadata(settings, service_token)
    # API keys and revocations as the policy service pushes them (IdentityWatch below).
    identity = IdentityState()
    tokens = TokenVerifier.from_config(app.auth, home, identity=identity)
    await tokens.start()  # a JWKS URL is fetched now (a failure stops the start), then refreshed
    journal_dir = settings.journal_dir.resolve() if settings.journal_dir is not None else home / "journal"
    journal = Journal.open(
        journal_dir, fsync_interval=settings.journal_fsync_ms / 1000, segment_bytes=settings.journal_segment_bytes
    )
    await journal.start()
    policy_channel = open_channel(settings.policy_grpc_addr, tls)
    verifier_channel = open_channel(settings.verifier_addr, tls)
    chain_channels = [open_channel(address, tls) for address in chain_addresses(settings.verifier_chain)]
    graph_channel = open_channel(settings.graph_grpc_addr, tls)
    metrics = ProxyMetrics()
    tracing = Tracing.from_env(access_log=settings.access_log)
    shipper = Shipper(
        journal.reader(),
        # Inside the journal directory: a journal wiped or restored takes its cursor with it.
        journal_dir / "shipper.cursor",
        graph_pb2_grpc.GraphServiceStub(graph_channel),
        metadata,
        wake=journal.has_data,
        on_dead_letter=metrics.dead_letter,
        ingest_batch=raw_ingest_batch(graph_channel),
    )
    metrics.watch_journal_lag(lambda: shipper.lag_seconds)
    shipper.start()
    owners = WorkflowOwners(home / "proxy" / "workflow-owners.sqlite3")
    policy_stub = policy_pb2_grpc.PolicyServiceStub(policy_channel)
    # The active versions' verifier and limits settings, learnt as they change.
    verifier_default = VerifierSettings(settings.verifier_timeout_ms / 1000, settings.verifier_fallback)
    policy_watch = PolicyWatch(policy_stub, metadata, metrics.registry, verifier_default=verifier_default)
    policy_watch.start()
    # Pushed within moments of each change (DESIGN §8: a revocation holds everywhere within 30 s).
    identity_watch = IdentityWatch(policy_stub, metadata, metrics.registry, identity)
    identity_watch.start()
    governor = governor_type(
        policy_stub,
        verifier_pb2_grpc.VerifierStub(verifier_channel),
        metadata,
        policy_timeout=settings.policy_timeout_ms / 1000,
        # Each call gets its agent's deadline (policy_watch.verifier_settings, default
        # BASTION_VERIFIER_TIMEOUT_MS).
        verifier_timeout=verifier_default.timeout,
        fallback_allow=settings.verifier_fallback == "allow",
        breaker=CircuitBreaker(settings.verifier_breaker_failures, settings.verifier_breaker_cooldown_ms / 1000),
        verifier_settings=policy_watch.verifier_settings,
        chain=[verifier_pb2_grpc.VerifierStub(channel) for channel in chain_channels],
        chain_metadata=_chain_metadata(settings, bool(chain_channels), verifier_metadata),
        verifier_metadata=verifier_metadata,
    )
    metrics.watch_verifier_circuit(lambda: governor.breaker.state if governor.breaker is not None else "closed")
    metrics.watch_verifier_chain(governor.breakers)
    # Keyed by the service token: replicas give the same secret the same placeholder.
    redactor = Redactor(app.redaction.paths, iban=app.redaction.iban, secret=service_token.encode())
    approvals: Approvals
    if settings.redis_url is None:
        approvals = ApprovalStore(home / "proxy" / "approvals.sqlite3", ttl=settings.approval_ttl_s)
    else:  # replicas share approvals where they share limits
        approvals = RedisApprovalStore(
            settings.redis_url, ttl=settings.approval_ttl_s, timeout_ms=settings.redis_timeout_ms
        )
    limiter = open_limiter(settings.redis_url, timeout_ms=settings.redis_timeout_ms)
    enforcer = Enforcer(
        checks=(),
        decide=DecisionStage(governor),
        recorder=Recorder(journal, checked_depth=settings.max_argument_depth, redactor=redactor),
        metrics=metrics,
        tracing=tracing,
        # Approvals and the verifier's queue first: a released call still counts against its limits.
        # Nothing is forwarded before the revocations are in, released calls included.
        after=(
            ApprovalStage(approvals, redactor=redactor, wait_s=settings.approval_wait_s),
            QueueStage(approvals, redactor=redactor),
            IdentityStage(identity, tokens),
            LimitStage(limiter),
        ),
        provenance=Provenance(policy_watch.taint),
    )
    stdio = [
        StdioUpstream(
            name,
            server,
            report=functools.partial(_report, enforcer, name),
            max_sessions=settings.stdio_max_sessions,
            max_per_owner=settings.sessions_per_principal,
            idle_timeout=settings.session_idle_s,
            max_body=settings.max_body,
            redactor=redactor,
        )
        for name, server in app.servers.items()
        if server.command is not None
    ]
    for bridge in stdio:
        await bridge.start()
    upstreams = {
        name: UpstreamPool(
            server.url,
            timeout=settings.upstream_timeout_s,
            headers=_brokered(server.brokered_headers()),
            max_answer=settings.max_answer_bytes,
        )
        for name, server in app.servers.items()
        if server.url is not None
    }
    upstreams.update(
        {bridge.name: bridge.pool(settings.upstream_timeout_s, settings.max_answer_bytes) for bridge in stdio}
    )
    catalogs = {
        # A stdio server's catalog session starts a child: give it the time that takes.
        name: ToolCatalog(
            name,
            pool,
            ttl=settings.tool_list_ttl_s,
            timeout=min(5.0 if pool.unix_path is None else 15.0, settings.upstream_timeout_s),
        )
        for name, pool in upstreams.items()
    }
    budget = ValueBudget(
        max_values=settings.max_argument_values,
        max_depth=settings.max_argument_depth,
        max_string_bytes=settings.max_argument_string_bytes,
    )
    # One tracker for both protocols: a workflow's history and owner are the same whichever one acts.
    delegations = Delegations(
        service_token, subjects={name: agent.subject for name, agent in app.agents.items() if agent.subject}
    )
    tracker = WorkflowTracker(settings.history_len, owners, delegations=delegations)
    hosts = HostCheck(app.allowed_hosts, parse_addr(settings.proxy_addr)[0])
    adapter_parts: dict[str, Any] = {
        "tokens": tokens,
        "enforcer": enforcer,
        "upstreams": upstreams,
        "catalogs": catalogs,
        "tracker": tracker,
        "metrics": metrics,
        "hosts": hosts,
        "budget": budget,
        "max_body": settings.max_body,
        "body_timeout": settings.body_timeout_s,
        "tracing": tracing,
    }
    mcp = McpHttpAdapter(sessions=SessionOwners(), **adapter_parts)
    aggregated = AggregatedMcpAdapter(
        sessions=SessionOwners(),
        max_sessions=settings.aggregated_max_sessions,
        max_per_owner=settings.sessions_per_principal,
        idle_timeout=settings.session_idle_s,
        **adapter_parts,
    )
    agents = {
        name: A2aAgent(
            url=agent.url,
            pool=UpstreamPool(
                agent.url,
                timeout=settings.upstream_timeout_s,
                headers=_brokered(agent.brokered_headers()),
                max_answer=settings.max_answer_bytes,
            ),
        )
        for name, agent in app.agents.items()
    }
    a2a = A2aHttpAdapter(
        tokens=tokens,
        enforcer=enforcer,
        agents=agents,
        tracker=tracker,
        metrics=metrics,
        hosts=hosts,
        budget=budget,
        max_body=settings.max_body,
        body_timeout=settings.body_timeout_s,
        tracing=tracing,
        pages=PageTokens(service_token.encode()),
    )
    tools = ToolsApi(tokens=tokens, catalogs=catalogs, hosts=hosts, enforcer=enforcer)
    approvals_api = ApprovalsApi(
        tokens=tokens, store=approvals, enforcer=enforcer, hosts=hosts, body_timeout=settings.body_timeout_s
    )
    queue_api = QueueApi(
        tokens=tokens, store=approvals, enforcer=enforcer, hosts=hosts, body_timeout=settings.body_timeout_s
    )
    proxy = ProxyApp(
        mcp=mcp,
        metrics=metrics,
        tools=tools.handle,
        a2a=a2a.handle,
        aggregated=aggregated.handle_aggregated,
        tools_call=aggregated.handle_tools_call,
        approvals=_dashboard(approvals_api.handle, settings.dashboard_origin, hosts),
        queue=_dashboard(queue_api.handle, settings.dashboard_origin, hosts),
        refuse=enforcer.refuse_request,
    )
    if not await identity_watch.first_attempt(IDENTITY_SYNC_S):
        log.warning(
            "serving without API keys and revocations: the policy service's WatchIdentity did not answer; "
            "until it does, operator routes refuse JWTs (503) and no agent call is forwarded"
        )
    web = await start_web_server(
        proxy,
        settings.proxy_addr,
        refused=lambda status, code, message: enforcer.refuse_request("HTTP", "", time.time(), code, message),
    )
    try:
        # Connect the channels now so the first governed call does not pay for it.
        for channel in (policy_channel, verifier_channel, *chain_channels):
            channel.get_state(try_to_connect=True)
        proxy.problem = journal.problem
        proxy.ready = True
        ready({"http": web.address})
        await web.run_until(stop)
    finally:
        proxy.ready = False
        await web.stop()
        await aggregated.close()
        await tracing.shutdown()
        await policy_watch.close()
        await identity_watch.close()
        await tokens.close()
        await governor.close()
        await shipper.stop()
        await journal.close()
        for pool in [*upstreams.values(), *(agent.pool for agent in agents.values())]:
            pool.close()
        for bridge in stdio:
            await bridge.close()
        owners.close()
        approvals.close()
        await limiter.close()
        for channel in (policy_channel, verifier_channel, graph_channel, *chain_channels):
            await channel.close()


def _brokered(headers: dict[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    """Credentials from bastion.yaml (`${VAR}` already read from the environment)."""
    return tuple((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items())


def _report(enforcer: Enforcer, server: str, code: str, reason: str) -> None:
    """A stdio child's crash or garbage on stdout, into the audit trail."""
    action = policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, server=server, method="stdio")
    enforcer.refuse(action, time.time(), code, reason, None)


def main(config: Path | None = None) -> int:
    # The one service that sends the upstreams' credentials, and so reads them.
    return run_service("proxy", ProxySettings(), config, serve, credentials=True)


def _dashboard(handler: Handler, origin: str | None, hosts: HostCheck) -> Handler:
    """`handler`, answering cross-origin requests from the dashboard when its origin is set."""
    return handler if origin is None else allow_dashboard(handler, origin, hosts)


def _verifier_metadata(settings: ProxySettings, service_token: str) -> tuple[tuple[str, str], ...] | None:
    """The verifier's own token (BASTION_VERIFIER_TOKEN), or None: the service token, as
    DESIGN §3 has it. ConfigError when it is short or is the service token."""
    if settings.verifier_token is None:
        return None
    token = settings.verifier_token.get_secret_value()
    return auth_metadata(check_token(token, "BASTION_VERIFIER_TOKEN", service_token))


def _chain_metadata(
    settings: ProxySettings, chained: bool, verifier_metadata: tuple[tuple[str, str], ...] | None
) -> tuple[tuple[str, str], ...] | None:
    """The chained verifiers' own token (BASTION_VERIFIER_CHAIN_TOKEN), or None: the first
    verifier's (BASTION_VERIFIER_TOKEN), or the service token. Either is said once in the
    log, since it is worth more than a chained verifier needs."""
    if settings.verifier_chain_token is not None:
        return auth_metadata(settings.verifier_chain_token.get_secret_value())
    if chained:
        sent = (
            "the service token, which also writes to the graph and reads API key digests"
            if verifier_metadata is None
            else "BASTION_VERIFIER_TOKEN, with which each can call the verifier at BASTION_VERIFIER_ADDR "
            "(and teach its sequence model)"
        )
        log.warning(
            "the chained verifiers (BASTION_VERIFIER_CHAIN) are sent %s; give them a token of their own with "
            "BASTION_VERIFIER_CHAIN_TOKEN",
            sent,
        )
    return None
