"""`bastion up`: the whole stack as separate processes, started in dependency order.

Policy, verifier and graph start first (in parallel); the proxy starts once their
run files report where they listen. An address given as `host:0` is pinned to a free port
before anything starts (`_pin_ports`): the services also find one another through the
same variables (the policy service ships its audit records to BASTION_GRAPH_GRPC_ADDR and
checks rules against BASTION_PROXY_ADDR), and each would otherwise read `host:0`. Ctrl-C or
SIGTERM stops the proxy first (its journal flushes to a still-running graph),
then the rest. Before printing its URLs, `up` checks every gRPC server's health service
and every HTTP server's `/healthz`.

A service that dies is reported and left down, like a compose service without a
restart policy: the rest keep running, and the proxy blocks every action that
needs the missing service (fail closed), which is what an operator must see.
`up` then exits non-zero when stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ._appconfig import find_app_config
from ._errors import BastionError, ConfigError
from ._identity import ensure_dev_key, ensure_service_token
from ._rpc import check_health
from ._runfile import read_runfile, remove_runfile, write_runfile
from ._settings import CommonSettings, format_addr, parse_addr
from ._tls import GrpcTls, grpc_tls

BACKENDS = ("policy", "verifier", "graph")
START_TIMEOUT = 60.0
STOP_GRACE = 10.0


class _Stack:
    def __init__(self, config: Path | None, home: Path) -> None:
        self.home = home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = _pin_ports({**os.environ, "BASTION_HOME": str(home)})
        self.config_args = ["--config", str(config)] if config is not None else []

    def spawn(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "bastion", name, "serve", *self.config_args]
        self.procs[name] = subprocess.Popen(cmd, env={**self.env, **(extra_env or {})})

    def wait_ready(self, name: str) -> dict[str, Any]:
        proc = self.procs[name]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"{name} exited with code {proc.returncode} during startup (see its log above)")
            info = read_runfile(self.home, name, proc.pid)
            if info is not None:
                return info
            time.sleep(0.05)
        raise ConfigError(f"{name} did not become ready within {START_TIMEOUT:.0f}s")

    def newly_dead(self, known: set[str]) -> list[str]:
        dead = [name for name, proc in self.procs.items() if name not in known and proc.poll() is not None]
        known.update(dead)
        return dead

    def stop(self) -> None:
        for name in ("proxy", *reversed(BACKENDS)):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


#: The address variables the services listen on and find one another by.
ADDRESS_VARS = (
    "BASTION_PROXY_ADDR",
    "BASTION_POLICY_ADDR",
    "BASTION_POLICY_GRPC_ADDR",
    "BASTION_VERIFIER_ADDR",
    "BASTION_VERIFIER_METRICS_ADDR",
    "BASTION_GRAPH_ADDR",
    "BASTION_GRAPH_GRPC_ADDR",
)


#: Where the services listen when their variables are unset (their settings' defaults).
_DEFAULT_ADDRS = {"BASTION_PROXY_ADDR": "127.0.0.1:7070", "BASTION_GRAPH_ADDR": "127.0.0.1:8080"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _dashboard_env(env: dict[str, str]) -> dict[str, str]:
    """The dashboard's two addresses — the proxy's URL for the graph's `/ui`, the graph's
    origin for the proxy's CORS — when both listen on loopback, where the browser on this
    machine reaches them at exactly those addresses. Elsewhere the operator sets them."""
    proxy = parse_addr(env.get("BASTION_PROXY_ADDR") or _DEFAULT_ADDRS["BASTION_PROXY_ADDR"])
    graph = parse_addr(env.get("BASTION_GRAPH_ADDR") or _DEFAULT_ADDRS["BASTION_GRAPH_ADDR"])
    if proxy[0] not in _LOOPBACK or graph[0] not in _LOOPBACK:
        return {}
    return {
        "BASTION_DASHBOARD_PROXY_URL": f"http://{format_addr(*proxy)}",
        "BASTION_DASHBOARD_ORIGIN": f"http://{format_addr(*graph)}",
    }


def _pin_ports(env: dict[str, str]) -> dict[str, str]:
    """`env` with every `host:0` address variable given a port free on that host now.

    Every probe socket stays bound until all ports are chosen, so no two variables get the
    same port (the kernel may hand a just-closed one out again: it did, in CI). A port found
    free may still be taken by another process before its service binds it; the service
    then stops with "cannot listen on …", which `up` reports like any other start failure."""
    with contextlib.ExitStack() as probes:
        for name in ADDRESS_VARS:
            value = env.get(name)
            if not value:
                continue
            host, port = parse_addr(value)
            if port == 0:
                env[name] = format_addr(host, _free_port(host, probes))
    return env


def _free_port(host: str, probes: contextlib.ExitStack) -> int:
    """A port free on `host`, held by a socket `probes` closes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = probes.enter_context(socket.socket(family, socket.SOCK_STREAM))
    try:
        probe.bind((host, 0))
    except OSError as exc:
        raise ConfigError(f"cannot find a free port on {host}: {exc}") from exc
    port: int = probe.getsockname()[1]
    return port


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback URL
            return bool(response.status == 200)
    except OSError:
        return False


def _check_health(info: dict[str, dict[str, Any]], tls: GrpcTls | None) -> None:
    """Every gRPC server reports SERVING and every HTTP server answers /healthz."""
    for name, addresses in info.items():
        grpc_addr = addresses.get("grpc")
        if grpc_addr is not None and not asyncio.run(check_health(grpc_addr, timeout=5.0, tls=tls)):
            raise ConfigError(f"{name} does not report SERVING on gRPC health at {grpc_addr}")
        http_addr = addresses.get("http")
        if http_addr is not None and not _http_ok(f"http://{http_addr}/healthz"):
            raise ConfigError(f"{name} is not answering on http://{http_addr}/healthz")


def up(config: Path | None) -> int:
    settings = CommonSettings()
    try:
        config_path, app = find_app_config(config, settings.config)
        home = settings.home.resolve()
        # Created here, once, so the services never race to generate them.
        ensure_dev_key(home)
        ensure_service_token(home, settings.service_token.get_secret_value() if settings.service_token else None)
        tls = grpc_tls(settings)  # the services would refuse to start: say so once, here
        stack = _Stack(config_path, home)
        stack.env = {**_dashboard_env(stack.env), **stack.env}  # what the caller set wins
    except BastionError as exc:
        print(f"bastion up: {exc}", file=sys.stderr)
        return 2
    if config_path is None:
        print("bastion up: no bastion.yaml here: no upstreams, no policies (everything denied)", file=sys.stderr)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        for name in BACKENDS:
            stack.spawn(name)
        info = {name: stack.wait_ready(name) for name in BACKENDS}
        stack.spawn(
            "proxy",
            {
                "BASTION_POLICY_GRPC_ADDR": info["policy"]["grpc"],
                "BASTION_VERIFIER_ADDR": info["verifier"]["grpc"],
                "BASTION_GRAPH_GRPC_ADDR": info["graph"]["grpc"],
            },
        )
        info["proxy"] = stack.wait_ready("proxy")
        _check_health(info, tls)
        write_runfile(home, "stack", info)
        _print_urls(info, sorted(app.servers))
        dead: set[str] = set()
        while not stopping and len(dead) < len(stack.procs):
            for name in stack.newly_dead(dead):
                code = stack.procs[name].returncode
                print(
                    f"bastion up: {name} exited with code {code}; the rest keep running "
                    "and actions that need it are blocked (fail closed)",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.2)
        return 1 if dead else 0
    except BastionError as exc:
        print(f"bastion up: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        remove_runfile(home, "stack")


def _print_urls(info: dict[str, dict[str, Any]], servers: list[str]) -> None:
    proxy = info["proxy"]["http"]
    lines = [
        "Bastion is up.",
        f"  MCP proxy      http://{proxy}/mcp/{{server}}   servers: {', '.join(servers) or '(none configured)'}",
        f"  graph REST     http://{info['graph']['http']}/graphs   (OpenAPI: /docs)",
        f"  dashboard      http://{info['graph']['http']}/ui   (sign in with an operator or auditor token)",
        f"  policy admin   http://{info['policy']['http']}/v1/policies",
        f"  gRPC           policy {info['policy']['grpc']}  verifier {info['verifier']['grpc']}  "
        f"graph {info['graph']['grpc']}",
        "Get an agent token:  bastion token issue --agent my-agent",
        "Read the graph:      bastion token issue --agent me --role auditor  (then Authorization: Bearer …)",
        "Ctrl-C stops the stack.",
    ]
    print("\n".join(lines), flush=True)
