"""Process wiring of `bastion graph serve`: open the store, serve gRPC and REST, report
the bound addresses, and on stop shut down in reverse order (REST, gRPC, store) so
that no request is left holding a closed store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from bastion._apikeys import IdentityState
from bastion._appconfig import AppConfig
from bastion._errors import ConfigError
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_dev_key, ensure_service_token
from bastion._identity_watch import IdentityWatch
from bastion._rpc import auth_metadata, open_channel, start_grpc_server
from bastion._service import run_service
from bastion._settings import parse_addr, second_service_tokens
from bastion._tls import grpc_tls
from bastion._web import start_web_server
from bastion.v1 import graph_pb2_grpc, policy_pb2_grpc

from ._api import create_app
from ._checkpoints import Checkpointer
from ._config import GraphSettings
from ._grpc import SERVICE_NAME, GraphServicer
from ._metrics import GraphMetrics
from ._retention import Retention
from ._store import open_store

T = TypeVar("T")
log = logging.getLogger("bastion.graph")
#: How long a starting graph waits for the first snapshot of revocations.
IDENTITY_SYNC_S = 5.0


async def serve(
    settings: GraphSettings,
    app: AppConfig,
    ready: Callable[[dict[str, str]], None],
    stop: asyncio.Event,
) -> None:
    """Serve until `stop` is set (see bastion._service.ServeFn); from `app` the graph takes
    `auth` (who may read over REST) and `allowed_hosts`."""
    home = settings.home.resolve()
    configured_token = settings.service_token.get_secret_value() if settings.service_token else None
    second = second_service_tokens(settings)  # checked before anything starts
    tls = grpc_tls(settings)
    # Revocations as the policy service pushes them (IdentityWatch below), as at the proxy.
    identity = IdentityState()
    verifier = TokenVerifier.from_config(app.auth, home, identity=identity)
    try:
        hosts = HostCheck(app.allowed_hosts, parse_addr(settings.graph_addr)[0])
    except ConfigError as exc:
        raise ConfigError(f"{exc} (set BASTION_GRAPH_ADDR)") from exc
    async with contextlib.AsyncExitStack() as stack:
        await verifier.start()  # a JWKS URL is fetched now (a failure stops the start), then refreshed
        stack.push_async_callback(verifier.close)
        store = await open_store(settings.graph_url, home)
        stack.push_async_callback(store.close)
        metrics = GraphMetrics()
        service_token = ensure_service_token(home, configured_token)
        policy_channel = open_channel(settings.policy_grpc_addr, tls)
        stack.push_async_callback(policy_channel.close)
        watch = IdentityWatch(
            policy_pb2_grpc.PolicyServiceStub(policy_channel),
            auth_metadata(service_token),
            metrics.registry,
            identity,
            service="graph",
        )
        watch.start()
        stack.push_async_callback(watch.close)
        # As at the proxy: a REST answered before the revocations arrive refuses every JWT
        # (bastion._identity), so give the first snapshot a moment before listening.
        if not await watch.first_attempt(IDENTITY_SYNC_S):
            log.warning(
                "serving without revocations: the policy service's WatchIdentity did not answer; "
                "until it does, the REST refuses JWTs (503)"
            )
        # Checkpoints are signed with the stack's key (the chart mounts it from its Secret).
        stack_key = ensure_dev_key(home)
        checkpointer = Checkpointer(store, stack_key, settings.audit_checkpoint_every)
        ingested = asyncio.Event()
        ingested.set()  # a first pass at start: checkpoints a crash skipped are written now
        checkpointing = asyncio.create_task(checkpointer.run(ingested, stop), name="graph-checkpoints")
        stack.push_async_callback(_finished, checkpointing)
        retention = asyncio.create_task(
            Retention(store, settings.payload_retention_days).run(stop), name="graph-retention"
        )
        stack.push_async_callback(_finished, retention)
        servicer = GraphServicer(store, metrics=metrics, on_ingest=ingested.set)
        grpc_server = await _naming(
            "BASTION_GRAPH_GRPC_ADDR",
            start_grpc_server(
                settings.graph_grpc_addr,
                token=service_token,
                also_accepted=second,
                tls=tls,
                register=[partial(graph_pb2_grpc.add_GraphServiceServicer_to_server, servicer)],
                service_names=[SERVICE_NAME],
            ),
        )
        stack.push_async_callback(grpc_server.stop)
        api = create_app(
            store,
            verifier=verifier,
            hosts=hosts,
            metrics=metrics,
            checkpoint_keys=[stack_key.public_key()],
            signing_key=stack_key,
            audit_deadline_s=settings.audit_walk_deadline_s,
            dashboard_proxy_url=settings.dashboard_proxy_url,
        )
        http = await _naming("BASTION_GRAPH_ADDR", start_web_server(api, settings.graph_addr))
        stack.push_async_callback(http.stop)
        ready({"grpc": grpc_server.address, "http": http.address})
        await http.run_until(stop)


def main(config: Path | None = None) -> int:
    """`bastion graph serve`: the exit code of the process."""
    return run_service("graph", GraphSettings(), config, serve)


async def _finished(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _naming(variable: str, starting: Awaitable[T]) -> T:
    """Add the variable to change to a failed bind's message: that is what the user must fix."""
    try:
        return await starting
    except ConfigError as exc:
        raise ConfigError(f"{exc} (set {variable})") from exc
