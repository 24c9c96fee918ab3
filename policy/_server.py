"""Process wiring of `bastion policy serve`: open the version store, apply bastion.yaml's
policies, start gRPC and admin REST, stop cleanly.

Running canary rollouts are reloaded from the store before gRPC serves, and the audit
shipper (rollout steps, API key and revocation changes → the graph at
BASTION_GRAPH_GRPC_ADDR) runs alongside. API keys and revocations (bastion.policy._identities)
are served to proxies by WatchIdentity and to the admin REST at /v1/keys, /v1/revocations.

Startup order puts the likeliest failures first: a bad policy file (or one whose version
is stored with other content) is fatal before any port is bound. Shutdown runs in
reverse: readiness drops, the REST server stops, open Watch streams end, gRPC drains
in-flight decisions within its grace period, then the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, ProcessCollector

from bastion._appconfig import AppConfig
from bastion._errors import ConfigError, DecisionUnavailable
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_service_token
from bastion._rpc import start_grpc_server
from bastion._service import run_service
from bastion._settings import parse_addr, second_service_tokens
from bastion._tls import grpc_tls
from bastion._web import WebServer, start_web_server
from bastion.v1 import policy_pb2_grpc

from ._api import create_app
from ._audit import AuditShipper
from ._bundles import BundleExpiryCollector, BundleVerifier, load_policy_keys
from ._config import PolicySettings
from ._grpc import PolicyServicer
from ._identities import IdentityStore
from ._opa import OpaEngine
from ._registry import PolicyRegistry, Snapshot
from ._rego_mode import OpaSync, RegoDecider
from ._rollouts import RolloutManager
from ._simulate import Simulator
from ._store import PolicyStore

log = logging.getLogger("bastion.policy")

SERVICE_NAME = "bastion.v1.PolicyService"


async def serve(
    settings: PolicySettings, app: AppConfig, ready: Callable[[dict[str, str]], None], stop: asyncio.Event
) -> None:
    """Serve until `stop` is set (bastion._service.ServeFn)."""
    home = settings.home.resolve()
    secret = settings.service_token.get_secret_value() if settings.service_token else None
    token = ensure_service_token(home, secret)
    second = second_service_tokens(settings)  # checked before anything starts
    tls = grpc_tls(settings)
    hosts = HostCheck(app.allowed_hosts, parse_addr(settings.policy_addr)[0])
    keys = load_policy_keys(app, home)

    async with contextlib.AsyncExitStack() as stack:
        store = PolicyStore.under(home)
        stack.callback(store.close)
        opa = await _opa_sync(settings, stack)
        # In Rego mode OPA decides: the registry refuses what it cannot decide by, and puts
        # every activation in force there before it swaps it in.
        policies = PolicyRegistry(store, enforcer=opa)
        await policies.apply_files(app.policies)
        _log_active(policies.snapshot)

        rego = await _rego_decider(opa, policies, stack) if opa is not None else None
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        registry.register(BundleExpiryCollector(policies.bundle_expiries))
        audit = AuditShipper(store, settings.graph_grpc_addr, token, tls)
        audit.start()
        stack.push_async_callback(audit.stop)
        # API keys and revocations: the same file as the versions, pushed to proxies by WatchIdentity.
        identities = IdentityStore.under(home, on_audit=audit.wake)
        stack.callback(identities.close)
        # The admin REST honours revocations too: the store keeps this state as it commits.
        verifier = TokenVerifier.from_config(app.auth, home, identity=identities.state)
        await verifier.start()  # a JWKS URL is fetched now (a failure stops the start), then refreshed
        stack.push_async_callback(verifier.close)
        bundles = BundleVerifier(keys, registry=registry)
        rollouts = RolloutManager(
            policies, registry=registry, enabled=rego is None, on_audit=audit.wake, bundles=bundles
        )
        await rollouts.load()
        stack.push_async_callback(rollouts.close)
        servicer = PolicyServicer(policies, registry=registry, rego=rego, identities=identities)
        serving = asyncio.Event()
        api = create_app(
            policies=policies,
            rollouts=rollouts,
            identities=identities,
            bundles=bundles,
            verifier=verifier,
            hosts=hosts,
            registry=registry,
            is_ready=_readiness(serving, rego),
            require_signed=settings.policy_require_signed,
            max_body=settings.policy_max_body,
            proxy_addr=settings.proxy_addr,
            simulator=Simulator(policies, settings.graph_addr),
        )
        grpc_server = await start_grpc_server(
            settings.policy_grpc_addr,
            token=token,
            also_accepted=second,
            tls=tls,
            register=[partial(policy_pb2_grpc.add_PolicyServiceServicer_to_server, servicer)],
            service_names=[SERVICE_NAME],
        )
        stack.push_async_callback(grpc_server.stop)
        stack.callback(servicer.close)
        http = await _start_admin_rest(api, settings.policy_addr)
        stack.push_async_callback(http.stop)
        serving.set()
        stack.callback(serving.clear)
        ready({"grpc": grpc_server.address, "http": http.address})
        await http.run_until(stop)
        log.info("policy service stopping")


def main(config: Path | None = None) -> int:
    """`bastion policy serve`: 0 on a clean stop, 2 when bastion.yaml cannot be loaded, 1 on any other
    failure (a bad policy file, a port in use, a version store that cannot be opened)."""
    return run_service("policy", PolicySettings(), config, serve)


async def _opa_sync(settings: PolicySettings, stack: contextlib.AsyncExitStack) -> OpaSync | None:
    """In `BASTION_POLICY_ENGINE=opa` mode, the connection that writes policy sets into OPA; else None."""
    if settings.policy_engine != "opa":
        return None
    if not settings.opa_url:
        raise ConfigError("BASTION_POLICY_ENGINE=opa needs BASTION_OPA_URL (the OPA server's base URL)")
    engine = await stack.enter_async_context(OpaEngine(settings.opa_url, deadline_s=settings.opa_deadline_ms / 1000))
    return OpaSync(engine)


async def _rego_decider(opa: OpaSync, policies: PolicyRegistry, stack: contextlib.AsyncExitStack) -> RegoDecider:
    """OPA loaded with the active set, and kept holding it."""
    rego = RegoDecider(opa, policies)
    try:
        await rego.start()
    except DecisionUnavailable as exc:
        raise ConfigError(f"OPA at BASTION_OPA_URL is not usable: {exc}") from exc
    stack.push_async_callback(rego.close)
    log.info("decisions come from OPA at %s", opa.engine.url)
    return rego


def _readiness(serving: asyncio.Event, rego: RegoDecider | None) -> Callable[[], bool]:
    """/readyz: gRPC serves decisions; in Rego mode also OPA holds the active set (else every decision denies)."""
    if rego is None:
        return serving.is_set
    decider = rego
    return lambda: serving.is_set() and decider.ready


def _log_active(snapshot: Snapshot) -> None:
    if not snapshot.versions:
        log.warning(
            "no active policy (bastion.yaml 'policies:' and the version store are empty): every action is denied"
        )
    for active in snapshot.versions:
        log.info(
            "active policy %r v%d (%d rules), activated by %s",
            active.name,
            active.version,
            active.rule_count,
            active.activated_by,
            extra={"fields": {"policy": active.name, "version": active.version, "digest": active.digest}},
        )


async def _start_admin_rest(api: FastAPI, addr: str) -> WebServer:
    """Start the admin REST server; a failed bind names the variable to change, since that is what
    the user must fix."""
    try:
        return await start_web_server(api, addr)
    except ConfigError as exc:
        reason = exc.__cause__
        if not isinstance(reason, OSError):
            raise
        raise ConfigError(f"cannot listen on {addr} (BASTION_POLICY_ADDR): {reason.strerror or reason}") from exc
