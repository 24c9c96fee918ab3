"""What one governed `tools/call` costs, attributed by stage, with every service in its
own process.

    bastion bench stack [--quick] [--calls 2000] [--rounds 5] [--load-s 1.0]
                        [--clients 16,64] [--out eval/results/stack-<UTC time>.json] [--no-chart]

Started here, each as a separate process on a free port under a temporary BASTION_HOME:
a fast MCP upstream and a lean hop (eval/bench/_fast_http.py), and Bastion's policy,
verifier, graph and proxy (`bastion <name> serve`, as `bastion up` starts them, with the
defaults: BASTION_* and OTEL_* variables of the caller are not passed on). One run then
measures, alternating the paths in every round so drift hits all of them:

* `direct`: the fast upstream itself;
* `hop`: the upstream through the lean pass-through, without governance (the floor of a hop);
* `bastion`: the upstream through `/mcp/fast` with a policy that allows the call (the
  full pipeline: token, decision, score, limits when a policy sets them, journal, forward);
* `bastion_limits`: the same, as an agent whose policy has `limits:` (rate, budget, loop),
  so the difference from `bastion` is what the limits stage costs;
* `grpc`: a bare gRPC unary round trip (health Check against the policy service), the
  floor of one decision;
* `bastion_policy`: as an agent whose policy waives scoring (`verifier: {name: none}`):
  decided by policy alone;
* `bastion_passthrough`: a second proxy, the same code with a decision stage that asks
  nothing and allows (eval/bench/_passthrough.py, not a mode of the product): Bastion's own
  plumbing — token, bounds, journal, forward, response, shipping — without the decisions.

Latency at concurrency 1 (p50/p95/p99) for every path; throughput and p50/p99 under load
with each number of `--clients` for `direct`, `hop`, `bastion`, `bastion_policy` and
`bastion_passthrough`; CPU seconds per call of
every process (utime + stime deltas from /proc around each timed slice) and RSS. The
client is one lean keep-alive HTTP/1.1 client per path (the proxy's own UpstreamPool) in
this process; its CPU is reported as `client`. Prints a table, writes the figures as JSON
and, when matplotlib is installed, a PNG chart beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import orjson
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion._errors import UpstreamError
from bastion._identity import DEV_KEY_FILE, SERVICE_TOKEN_FILE, ensure_dev_key, ensure_service_token, issue_token
from bastion.eval.bench._fast_http import TOOL
from bastion.eval.bench._hostile import Attacker, attack
from bastion.eval.bench._procs import Processes, processes
from bastion.eval.bench._stack_report import LOAD_PATHS, SERVICES, chart, summarise, table
from bastion.eval.bench._timing import percentile_us, timed_batch
from bastion.proxy._upstream import UpstreamPool

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "eval" / "results"
PATHS = ("direct", "hop", "bastion", "bastion_limits", "grpc", "bastion_policy", "bastion_passthrough")
#: The phase of (c) under load with a hostile client beside the ordinary ones.
HOSTILE = "hostile"
AGENTS = {"bastion": "stack-bench", "bastion_limits": "stack-bench-limits", "bastion_policy": "stack-bench-policy"}
#: The pass-through proxy's calls come from the full pipeline's agent: only the proxy differs.
TOKEN_OF = {**{path: path for path in AGENTS}, "bastion_passthrough": "bastion"}
_ANY = "127.0.0.1:0"
_TIMEOUT_S = 30.0
#: Quiet: all the processes together used at most 2 clock ticks in 100 ms.
_QUIET_WINDOW_S = 0.1
_QUIET_CPU_S = 0.02
_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
_BODY = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": TOOL, "arguments": {"text": "hello"}, "_meta": _META},
    }
)
_MCP_HEADERS = [
    (b"content-type", b"application/json"),
    (b"accept", b"application/json, text/event-stream"),
    (b"mcp-protocol-version", b"2026-07-28"),
    (b"mcp-method", b"tools/call"),
    (b"mcp-name", TOOL.encode()),
]
_RULE = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {{name: {name}, version: 1}}
spec:
  default: deny
  rules:
    - id: bench-echo
      match: {{agents: ["{agent}"], tools: ["fast__{tool}"]}}
      effect: allow
"""
# Limits that are checked on every call and never reached: their cost, not their refusals.
_LIMITS = """\
  limits:
    rate: "100000000/s"
    budget: {calls: 1000000000000, window: 1d}
    loop: {same_call: 10000, window: 1s}
"""
# Scoring waived: what a call costs decided by policy alone (the verifier's round trip saved).
_WAIVED = """\
  verifier: {name: none}
"""
_EXTRA = {"bastion_limits": _LIMITS, "bastion_policy": _WAIVED}


@dataclass(frozen=True, slots=True)
class Params:
    calls: int = 2000
    rounds: int = 5
    load_s: float = 1.0
    clients: tuple[int, ...] = (16, 64)
    #: Calls per load slice at most (0: as many as fit in load_s).
    load_calls: int = 0
    warmup: int = 20
    #: After each timed slice, wait up to this long for the processes to go quiet.
    settle_s: float = 3.0
    quick: bool = False


QUICK = Params(calls=50, rounds=1, load_s=0.2, load_calls=2, warmup=5, settle_s=0.5, quick=True)


class Progress:
    """A bar on stderr when it is a terminal, else one line per round."""

    def __init__(self, total: int, rounds: int) -> None:
        self._total, self._rounds, self._done = total, rounds, 0
        self._tty = sys.stderr.isatty()

    def step(self, round_no: int, what: str) -> None:
        self._done += 1
        if self._tty:
            filled = 30 * self._done // self._total
            bar = "#" * filled + "." * (30 - filled)
            line = f"\rstack bench [{bar}] {self._done}/{self._total} round {round_no + 1}: {what:24}"
            print(line, file=sys.stderr, end="", flush=True)
        elif self._done % (self._total // self._rounds) == 0:
            print(f"stack bench: round {round_no + 1}/{self._rounds} done", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self._tty:
            print(file=sys.stderr)


@dataclass
class _Tally:
    """Samples and CPU time of one path in one phase (`c1` or `c<clients>`), over all rounds."""

    samples: list[float]
    cpu: dict[str, float]
    calls: int = 0
    errors: int = 0
    #: What the first refused or failed call answered, to tell a fail-closed refusal from a bug.
    first_error: str | None = None
    seconds: float = 0.0

    def add_cpu(self, before: dict[str, float], after: dict[str, float]) -> None:
        for name, used in after.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + used - before[name]


def _configs(home: Path) -> tuple[Path, Path]:
    """The policies, and bastion.yaml for the backends (policies only: they do not read
    `servers:`, so they can start before the upstream's port is known) and for the proxy."""
    for path, agent in AGENTS.items():
        text = _RULE.format(name=agent, agent=agent, tool=TOOL)
        (home / f"policy-{path}.yaml").write_text(text + _EXTRA.get(path, ""))
    policies = "policies:\n" + "".join(f"  - policy-{path}.yaml\n" for path in AGENTS)
    backends = home / "backends.yaml"
    backends.write_text(policies)
    return backends, home / "bastion.yaml"


def _start(procs: Processes, home: Path) -> dict[str, str]:
    """Every process, each as soon as what it needs is listening; returns the addresses
    the bench talks to."""
    here = "bastion.eval.bench._fast_http"
    backends, config = _configs(home)
    upstream_port = home / "upstream.port"
    procs.spawn("upstream", ["-m", here, "upstream", "--port-file", str(upstream_port)])
    procs.spawn_service("policy", backends, {"BASTION_POLICY_GRPC_ADDR": _ANY, "BASTION_POLICY_ADDR": _ANY})
    procs.spawn_service("verifier", backends, {"BASTION_VERIFIER_ADDR": _ANY, "BASTION_VERIFIER_METRICS_ADDR": _ANY})
    upstream_url = f"http://127.0.0.1:{procs.wait_port('upstream', upstream_port)}/mcp"
    config.write_text(f"servers:\n  fast:\n    url: {upstream_url}\n" + backends.read_text())
    hop_port = home / "hop.port"
    procs.spawn("hop", ["-m", here, "hop", "--upstream", upstream_url, "--port-file", str(hop_port)])
    policy = procs.wait_service("policy", home)
    procs.spawn_service(
        "graph",
        backends,
        {"BASTION_GRAPH_ADDR": _ANY, "BASTION_GRAPH_GRPC_ADDR": _ANY, "BASTION_POLICY_GRPC_ADDR": policy["grpc"]},
    )
    verifier = procs.wait_service("verifier", home)
    graph = procs.wait_service("graph", home)
    procs.spawn_service(
        "proxy",
        config,
        {
            "BASTION_PROXY_ADDR": _ANY,
            "BASTION_POLICY_GRPC_ADDR": policy["grpc"],
            "BASTION_VERIFIER_ADDR": verifier["grpc"],
            "BASTION_GRAPH_GRPC_ADDR": graph["grpc"],
        },
    )
    # Its own home (journal, workflow owners, approvals), the stack's key and service token.
    passthrough_home = home / "passthrough"
    passthrough_home.mkdir()
    for name in (DEV_KEY_FILE, SERVICE_TOKEN_FILE):
        (passthrough_home / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(home / name, passthrough_home / name)
    procs.spawn(
        "passthrough",
        ["-m", "bastion.eval.bench._passthrough", "--config", str(config)],
        {
            "BASTION_HOME": str(passthrough_home),
            "BASTION_PROXY_ADDR": _ANY,
            "BASTION_POLICY_GRPC_ADDR": policy["grpc"],
            "BASTION_VERIFIER_ADDR": verifier["grpc"],
            "BASTION_GRAPH_GRPC_ADDR": graph["grpc"],
        },
    )
    proxy = procs.wait_service("proxy", home)
    passthrough = procs.wait_service("passthrough", passthrough_home)
    return {
        "direct": upstream_url,
        "hop": f"http://127.0.0.1:{procs.wait_port('hop', hop_port)}/mcp",
        "bastion": f"http://{proxy['http']}/mcp/fast",
        "bastion_passthrough": f"http://{passthrough['http']}/mcp/fast",
        "policy_grpc": policy["grpc"],
    }


class _Paths:
    """The keep-alive clients of every path, and the headers each sends."""

    def __init__(self, addresses: dict[str, str], home: Path) -> None:
        self.pools = {
            "direct": UpstreamPool(addresses["direct"], timeout=_TIMEOUT_S, max_idle=256),
            "hop": UpstreamPool(addresses["hop"], timeout=_TIMEOUT_S, max_idle=256),
            "bastion": UpstreamPool(addresses["bastion"], timeout=_TIMEOUT_S, max_idle=256),
            "bastion_limits": UpstreamPool(addresses["bastion"], timeout=_TIMEOUT_S, max_idle=256),
            "bastion_policy": UpstreamPool(addresses["bastion"], timeout=_TIMEOUT_S, max_idle=256),
            "bastion_passthrough": UpstreamPool(addresses["bastion_passthrough"], timeout=_TIMEOUT_S, max_idle=256),
        }
        key = ensure_dev_key(home)
        tokens = {path: f"Bearer {issue_token(key, subject=agent)}".encode() for path, agent in AGENTS.items()}
        self._tokens = {path: tokens[of] for path, of in TOKEN_OF.items()}
        self.channel = grpc.aio.insecure_channel(addresses["policy_grpc"])
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def headers(self, path: str, workflow: str) -> list[tuple[bytes, bytes]]:
        """A governed path's calls carry the agent's token and a workflow id: one workflow
        per path, client and slice, so no workflow graph grows for the whole run."""
        token = self._tokens.get(path)
        if token is None:
            return _MCP_HEADERS
        return [*_MCP_HEADERS, (b"authorization", token), (b"bastion-workflow-id", f"{path}-{workflow}".encode())]

    async def grpc_batch(self, n: int) -> list[float]:
        request = health_pb2.HealthCheckRequest(service="")
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await self.health.Check(request, timeout=_TIMEOUT_S)
            samples.append(time.perf_counter() - started)
        return samples

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        await self.channel.close()


async def _load(
    pool: UpstreamPool, headers: list[list[tuple[bytes, bytes]]], seconds: float, max_calls: int, tally: _Tally
) -> None:
    """One client per element of `headers`, each calling back to back until `seconds` have
    passed or `max_calls` calls have been started (0: no cap)."""
    path = pool.path.encode()
    budget = [max_calls or sys.maxsize]
    started = time.perf_counter()
    deadline = started + seconds

    async def client(client_headers: list[tuple[bytes, bytes]]) -> None:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            sent = time.perf_counter()
            failure = await _call(pool, path, client_headers)
            if failure is not None:
                tally.errors += 1
                tally.first_error = tally.first_error or failure
                continue
            tally.samples.append(time.perf_counter() - sent)
            tally.calls += 1

    await asyncio.gather(*(client(h) for h in headers))
    tally.seconds += time.perf_counter() - started


async def _call(pool: UpstreamPool, path: bytes, headers: list[tuple[bytes, bytes]]) -> str | None:
    """One call answered whole; None when it succeeded, else what went wrong."""
    try:
        response = await pool.request(b"POST", path, headers, _BODY)
        payload = await response.read(_TIMEOUT_S)
    except UpstreamError as exc:
        return f"no answer: {exc}"
    if response.status != 200 or b'"error"' in payload:
        return f"HTTP {response.status} {payload[:300].decode(errors='replace')}"
    return None


async def _warm(pool: UpstreamPool, headers: list[list[tuple[bytes, bytes]]]) -> None:
    """One untimed call per client, at once: the connections the timed slice will use
    (idle ones expire after 2 s, so every slice starts by reopening them). A failure here
    is counted by the slice itself, should it persist."""
    path = pool.path.encode()
    await asyncio.gather(*(_call(pool, path, h) for h in headers))


@dataclass
class _Settling:
    """How long the processes took to go quiet after the timed slices, and how often they
    did not within the limit (then some of a slice's work is charged to the next one)."""

    seconds: float = 0.0
    not_quiet: int = 0

    async def settle(self, procs: Processes, limit_s: float) -> dict[str, float]:
        """CPU seconds of every process once the services are quiet again (at most `limit_s`).

        Some work of a call is done after its answer (the proxy ships its journal, the graph
        ingests it): counted up to here, it is charged to the path that caused it rather than
        to whichever path runs next, and the next path starts on an idle stack."""
        started = time.monotonic()
        now = procs.cpu()
        quiet = False
        while not quiet and time.monotonic() - started < limit_s:
            await asyncio.sleep(_QUIET_WINDOW_S)
            then, now = now, procs.cpu()
            quiet = sum(now[name] - then[name] for name in now if name != "client") <= _QUIET_CPU_S
        self.seconds += time.monotonic() - started
        self.not_quiet += not quiet
        return now


async def _measure(
    procs: Processes, paths: _Paths, params: Params, progress: Progress, settling: _Settling, attacker: Attacker
) -> dict[str, dict[str, _Tally]]:
    phases = ["c1", *(f"c{n}" for n in params.clients), HOSTILE]
    tallies = {path: {phase: _Tally([], {}) for phase in phases} for path in PATHS}
    per_round = max(1, params.calls // params.rounds)
    for round_no in range(params.rounds):
        # The order rotates each round, so no path always runs first (or after the load).
        order = PATHS[round_no % len(PATHS) :] + PATHS[: round_no % len(PATHS)]
        for path in order:
            tally = tallies[path]["c1"]
            if path == "grpc":
                await paths.grpc_batch(params.warmup)
                before = procs.cpu()
                tally.samples += await paths.grpc_batch(per_round)
            else:
                pool, headers = paths.pools[path], paths.headers(path, f"c1-{round_no}")
                await timed_batch(pool, headers, _BODY, params.warmup)
                before = procs.cpu()
                tally.samples += await timed_batch(pool, headers, _BODY, per_round)
            tally.add_cpu(before, await settling.settle(procs, params.settle_s))
            tally.calls += per_round
            progress.step(round_no, f"{path} c=1")
        for clients in params.clients:
            for path in LOAD_PATHS:
                pool, tally = paths.pools[path], tallies[path][f"c{clients}"]
                per_client = [paths.headers(path, f"c{clients}-{round_no}-{i}") for i in range(clients)]
                await _warm(pool, per_client)
                before = procs.cpu()
                await _load(pool, per_client, params.load_s, params.load_calls * clients, tally)
                tally.add_cpu(before, await settling.settle(procs, params.settle_s))
                progress.step(round_no, f"{path} c={clients}")
        await _hostile_slice(procs, paths, params, tallies["bastion"][HOSTILE], attacker, settling, round_no)
        progress.step(round_no, "bastion + hostile client")
        procs.check_alive()
    return tallies


async def _hostile_slice(
    procs: Processes,
    paths: _Paths,
    params: Params,
    tally: _Tally,
    attacker: Attacker,
    settling: _Settling,
    round_no: int,
) -> None:
    """The load slice of (c) at the first client count, with one more client sending wide
    and deep arguments back to back as another agent (`eval/bench/_hostile.py`)."""
    clients = params.clients[0]
    pool = paths.pools["bastion"]
    per_client = [paths.headers("bastion", f"hostile-{round_no}-{i}") for i in range(clients)]
    await _warm(pool, per_client)
    stop = asyncio.Event()
    hostile_headers = paths.headers("bastion_limits", f"hostile-{round_no}-attacker")
    before = procs.cpu()
    sending = asyncio.create_task(attack(paths.pools["bastion_limits"], hostile_headers, stop, attacker))
    try:
        await _load(pool, per_client, params.load_s, params.load_calls * clients, tally)
    finally:
        stop.set()
        await sending
    tally.add_cpu(before, await settling.settle(procs, params.settle_s))


def _latency(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_us": round(percentile_us(samples, 0.5), 1),
        "p95_us": round(percentile_us(samples, 0.95), 1),
        "p99_us": round(percentile_us(samples, 0.99), 1),
        "mean_us": round(sum(samples) / len(samples) * 1e6, 1) if samples else 0.0,
    }


def _cpu_per_call(tally: _Tally) -> dict[str, float]:
    calls = max(1, tally.calls)
    found = {name: round(used / calls * 1e6, 1) for name, used in tally.cpu.items()}
    found["bastion_total"] = round(sum(found.get(name, 0.0) for name in SERVICES), 1)
    return found


def _path_figures(path: str, tallies: dict[str, _Tally], params: Params) -> dict[str, Any]:
    figures: dict[str, Any] = {"c1": _latency(tallies["c1"].samples), "cpu_us_per_call": {}}
    figures["cpu_us_per_call"]["c1"] = _cpu_per_call(tallies["c1"])
    if path in LOAD_PATHS:
        figures["load"] = {}
        for clients in params.clients:
            tally = tallies[f"c{clients}"]
            figures["load"][str(clients)] = _load_figures(tally)
            figures["cpu_us_per_call"][str(clients)] = _cpu_per_call(tally)
    return figures


def _load_figures(tally: _Tally) -> dict[str, Any]:
    return {
        "calls": tally.calls,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "seconds": round(tally.seconds, 3),
        "calls_per_s": round(tally.calls / tally.seconds, 1) if tally.seconds else 0.0,
        **{key: value for key, value in _latency(tally.samples).items() if key != "n"},
    }


async def bench(params: Params, workdir: Path) -> dict[str, Any]:
    """Start everything under `workdir`, measure, stop; the JSON document `main` writes."""
    load_before = os.getloadavg()[0]
    home = workdir / "home"
    home.mkdir()
    # Created here, once, so the services never race to generate them (as `bastion up` does).
    ensure_dev_key(home)
    ensure_service_token(home, None)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_", "OTEL_"))}
    env["BASTION_HOME"] = str(home)
    started = time.perf_counter()
    with processes(workdir, env, stop_first=("proxy", "passthrough")) as procs:
        addresses = await asyncio.to_thread(_start, procs, home)
        seconds = {"startup": time.perf_counter() - started}
        idle = procs.memory()
        paths = _Paths(addresses, home)
        steps = params.rounds * (len(PATHS) + len(LOAD_PATHS) * len(params.clients) + 1)
        progress = Progress(steps, params.rounds)
        settling = _Settling()
        attacker = Attacker()
        try:
            tallies = await _measure(procs, paths, params, progress, settling, attacker)
        finally:
            progress.finish()
            await paths.close()
        memory = procs.memory()
        pids = {name: proc.pid for name, proc in procs.procs.items()}
        seconds["measure"] = time.perf_counter() - started - seconds["startup"]
        stopping = time.perf_counter()
    seconds["stop"] = time.perf_counter() - stopping
    result: dict[str, Any] = {
        "suite": "stack",
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_1m": {"before": load_before, "after": os.getloadavg()[0]},
        },
        "params": {**asdict(params), "clients": list(params.clients)},
        "seconds": {phase: round(value, 2) for phase, value in seconds.items()},
        "settle": {"seconds": round(settling.seconds, 2), "not_quiet": settling.not_quiet},
        "processes": {
            name: {
                "pid": pids.get(name, os.getpid()),
                "rss_mb": {"idle": idle[name]["rss"], "end": memory[name]["rss"], "peak": memory[name]["peak"]},
            }
            for name in memory
        },
        "paths": {path: _path_figures(path, tallies[path], params) for path in PATHS},
    }
    result["paths"]["bastion"]["hostile"] = {
        "clients": params.clients[0],
        "ordinary": _load_figures(tallies["bastion"][HOSTILE]),
        "cpu_us_per_call": _cpu_per_call(tallies["bastion"][HOSTILE]),
        "attacker": attacker.figures(),
    }
    result.update(summarise(result))
    return result


def _parse(argv: Sequence[str] | None) -> tuple[Params, Path, bool]:
    parser = argparse.ArgumentParser(
        prog="bastion bench stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Params()
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few hundred calls, well under 40 s")
    parser.add_argument(
        "--calls", type=int, help=f"calls per path at concurrency 1, over all rounds ({defaults.calls})"
    )
    parser.add_argument("--rounds", type=int, help=f"rounds the paths alternate in ({defaults.rounds})")
    parser.add_argument("--load-s", type=float, help=f"seconds per path, client count and round ({defaults.load_s})")
    parser.add_argument("--clients", help="concurrent clients under load, comma-separated (16,64)")
    parser.add_argument("--out", type=Path, help="JSON file (default eval/results/stack-<UTC time>.json)")
    parser.add_argument("--no-chart", action="store_true", help="do not write the PNG chart")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else defaults
    if args.calls is not None:
        params = replace(params, calls=args.calls)
    if args.rounds is not None:
        params = replace(params, rounds=max(1, args.rounds))
    if args.load_s is not None:
        params = replace(params, load_s=args.load_s)
    if args.clients:
        params = replace(params, clients=tuple(int(n) for n in args.clients.split(",")))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return params, args.out or RESULTS / f"stack-{stamp}.json", not args.no_chart


def main(argv: Sequence[str] | None = None) -> None:
    params, out, want_chart = _parse(argv)
    with tempfile.TemporaryDirectory(prefix="bastion-stack-bench-") as tmp:
        result = uvloop.run(bench(params, Path(tmp)))
    result["chart"] = None
    if want_chart:
        png, reason = chart(result, out.with_suffix(".png"))
        result["chart"] = str(png) if png else None
        if reason:
            print(f"stack bench: no chart: {reason}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(result))
    print(f"wrote {out}" + (f" and {result['chart']}" if result["chart"] else ""))


if __name__ == "__main__":
    main()
