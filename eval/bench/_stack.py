"""The whole stack in the bench's own event loop on port 0: policy, verifier, graph and the
proxy through their real `serve()` functions, the wiring of `bastion <service> serve`
minus the processes. Everything then shares one CPU budget with the bench's client, so a
difference between two paths measured in the same run is the CPU the extra hop costs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from bastion._appconfig import AppConfig
from bastion.graph import GraphSettings
from bastion.graph import serve as graph_serve
from bastion.policy import PolicySettings
from bastion.policy import serve as policy_serve
from bastion.proxy import ProxySettings
from bastion.proxy import serve as proxy_serve
from bastion.verifier import VerifierSettings
from bastion.verifier import serve as verifier_serve

ANY = "127.0.0.1:0"
Serve = Callable[[Any, AppConfig, Callable[[dict[str, str]], None], asyncio.Event], Coroutine[Any, Any, None]]


@contextlib.asynccontextmanager
async def serving(serve: Serve, settings: Any, app: AppConfig) -> AsyncIterator[dict[str, str]]:
    """Run `serve` until the block exits; yield the addresses it reported."""
    stop = asyncio.Event()
    ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, app, ready.set_result, stop))
    either: set[asyncio.Future[Any]] = {task, ready}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        task.result()  # raises the startup error
        raise RuntimeError("a service returned before it was ready")
    try:
        yield ready.result()
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def services(home: Path, app: AppConfig, **proxy_settings: Any) -> AsyncIterator[dict[str, dict[str, str]]]:
    """Policy, verifier, graph and the proxy wired to them; yields the addresses each
    reported, by service (`proxy["http"]`, `graph["http"]`, `policy["grpc"]`, …)."""
    async with (
        serving(policy_serve, PolicySettings(home=home, policy_grpc_addr=ANY, policy_addr=ANY), app) as policy,
        serving(
            verifier_serve, VerifierSettings(home=home, verifier_addr=ANY, verifier_metrics_addr=ANY), app
        ) as verifier,
        serving(
            graph_serve,
            GraphSettings(home=home, graph_addr=ANY, graph_grpc_addr=ANY, policy_grpc_addr=policy["grpc"]),
            app,
        ) as graph,
    ):
        settings = ProxySettings(
            home=home,
            proxy_addr=ANY,
            policy_grpc_addr=policy["grpc"],
            verifier_addr=verifier["grpc"],
            graph_grpc_addr=graph["grpc"],
            **proxy_settings,
        )
        async with serving(proxy_serve, settings, app) as proxy:
            yield {"policy": policy, "verifier": verifier, "graph": graph, "proxy": proxy}


@contextlib.asynccontextmanager
async def stack(home: Path, app: AppConfig, **proxy_settings: Any) -> AsyncIterator[str]:
    """`services`, yielding only the proxy's host:port."""
    async with services(home, app, **proxy_settings) as addresses:
        yield addresses["proxy"]["http"]
