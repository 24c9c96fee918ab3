"""Process wiring of `bastion policy serve`: load policies, start gRPC and admin REST, stop cleanly.

Startup order puts the likeliest failures first: a bad policy file is fatal before any
port is bound. Shutdown runs in reverse: readiness drops, the REST server stops, open
Watch streams end, then gRPC drains in-flight decisions within its grace period.
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
from bastion._errors import ConfigError
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_service_token, load_public_keys
from bastion._rpc import start_grpc_server
from bastion._service import run_service
from bastion._settings import parse_addr
from bastion._web import WebServer, start_web_server
from bastion.v1 import policy_pb2_grpc

from ._api import create_app
from ._config import PolicySettings
from ._engine import PolicySet, load_policy_set
from ._grpc import PolicyServicer

log = logging.getLogger("bastion.policy")

SERVICE_NAME = "bastion.v1.PolicyService"


async def serve(
    settings: PolicySettings, app: AppConfig, ready: Callable[[dict[str, str]], None], stop: asyncio.Event
) -> None:
    """Serve until `stop` is set (bastion._service.ServeFn)."""
    home = settings.home.resolve()
    policies = load_policy_set(app.policies)
    _log_loaded(policies, app.policies)
    secret = settings.service_token.get_secret_value() if settings.service_token else None
    token = ensure_service_token(home, secret)
    verifier = TokenVerifier(app.auth, load_public_keys(app.auth, home))
    hosts = HostCheck(app.allowed_hosts, parse_addr(settings.policy_addr)[0])

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    servicer = PolicyServicer(policies, registry=registry)
    serving = asyncio.Event()
    api = create_app(policies=policies, verifier=verifier, hosts=hosts, registry=registry, is_ready=serving.is_set)

    async with contextlib.AsyncExitStack() as stack:
        grpc_server = await start_grpc_server(
            settings.policy_grpc_addr,
            token=token,
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
    failure (a bad policy file, a port in use)."""
    return run_service("policy", PolicySettings(), config, serve)


def _log_loaded(policies: PolicySet, paths: tuple[Path, ...]) -> None:
    if not policies.policies:
        log.warning("no policy in bastion.yaml 'policies:': every action will be denied")
    for policy, path in zip(policies.policies, paths, strict=True):
        log.info(
            "loaded policy %r v%d (%d rules) from %s",
            policy.name,
            policy.version,
            len(policy.rules),
            path,
            extra={"fields": {"policy": policy.name, "version": policy.version, "digest": policy.digest}},
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
