"""Process wiring of `bastion policy serve`: load policies, start gRPC and admin REST, stop cleanly.

Startup order puts the likeliest failures first: a bad policy file is fatal before any
port is bound. Shutdown runs in reverse: readiness drops, the REST server stops, open
Watch streams end, then gRPC drains in-flight decisions within its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, ProcessCollector

from bastion._appconfig import AppConfig
from bastion._errors import ConfigError
from bastion._identity import TokenVerifier, ensure_service_token, load_public_keys
from bastion._rpc import start_grpc_server
from bastion._service import run_service
from bastion._settings import format_addr, parse_addr
from bastion.v1 import policy_pb2_grpc

from ._api import create_app
from ._config import PolicySettings
from ._engine import PolicySet, load_policy_set
from ._grpc import PolicyServicer

log = logging.getLogger("bastion.policy")

SERVICE_NAME = "bastion.v1.PolicyService"
_STARTUP_TIMEOUT = 10.0


class _HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # bastion._service owns SIGTERM/SIGINT and turns them into `stop`; uvicorn would
        # otherwise swap the handlers and re-raise the signal after its own shutdown.
        yield


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

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    servicer = PolicyServicer(policies, registry=registry)
    serving = asyncio.Event()
    api = create_app(policies=policies, verifier=verifier, registry=registry, is_ready=serving.is_set)

    async with contextlib.AsyncExitStack() as stack:
        listener = stack.enter_context(_listen(settings.policy_addr))
        grpc_server = await start_grpc_server(
            settings.policy_grpc_addr,
            token=token,
            register=[partial(policy_pb2_grpc.add_PolicyServiceServicer_to_server, servicer)],
            service_names=[SERVICE_NAME],
        )
        stack.push_async_callback(grpc_server.stop)
        stack.callback(servicer.close)
        http = _HttpServer(_uvicorn_config(api, settings.policy_addr))
        http_task = asyncio.create_task(http.serve(sockets=[listener]))
        stack.push_async_callback(_stop_http, http, http_task)
        await _until_started(http, http_task)
        serving.set()
        stack.callback(serving.clear)
        host, port = listener.getsockname()[:2]
        ready({"grpc": grpc_server.address, "http": format_addr(host, port)})
        await stop.wait()
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


@contextlib.contextmanager
def _listen(addr: str) -> Iterator[socket.socket]:
    # Bound here rather than by uvicorn so that port 0 works and the real port is known
    # before `ready` reports it.
    host, port = parse_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {addr} (BASTION_POLICY_ADDR): {exc.strerror or exc}") from exc
    with listener:
        yield listener


def _uvicorn_config(api: FastAPI, addr: str) -> uvicorn.Config:
    host, port = parse_addr(addr)
    return uvicorn.Config(
        api,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )


async def _until_started(http: uvicorn.Server, task: asyncio.Task[None]) -> None:
    # uvicorn has no "started" event to await; with a pre-bound socket and no lifespan,
    # startup takes one loop iteration or two.
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while not http.started:
        if task.done():
            task.result()
            raise ConfigError("the admin REST server exited during startup")
        if time.monotonic() > deadline:
            raise ConfigError(f"the admin REST server did not start within {_STARTUP_TIMEOUT:.0f}s")
        await asyncio.sleep(0.005)


async def _stop_http(http: uvicorn.Server, task: asyncio.Task[None]) -> None:
    http.should_exit = True
    await task
