"""`bastion eval`: how often Bastion blocks attacks and how often it blocks legitimate work.

    bastion eval [--pack NAME ...] [--json] [--max-far X] [--min-vdr Y] [--out FILE] [--no-chart]

Started here, in this process's event loop, under a temporary BASTION_HOME: one real
MCP SDK server per upstream the packs use (`_upstream.py`, answering what each scenario
scripts) and Bastion's policy, verifier, graph and proxy through their real `serve()`
functions (`bastion.eval.bench._stack.services`, the wiring of `bastion <service> serve`),
with the policies the scenarios name (eval/efficacy/policies/). The verifier and proxy
read their settings from the environment as `bastion up` would, so
`BASTION_VERIFIER_THRESHOLD=0.6 bastion eval` measures another threshold; the report
records the scorer's configuration.

Every scenario is replayed through the proxy as its own agent in its own workflow
(`_replay.py`); then the policy decision and the verifier's score of each scenario's last
step are read back from the graph. Figures, gates and the chart: `_report.py`. Packs and
their templating: `_pack.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import orjson

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, ensure_service_token, issue_token
from bastion.eval.bench._stack import services
from bastion.verifier import VerifierSettings

from ._options import DESCRIPTION, add_options
from ._pack import Pack, available_packs, catalogue, load_packs, policy_path
from ._replay import Replayer, ScenarioOutcome, agent_id, read_decisions
from ._report import chart, summarise, table
from ._upstream import Script, upstreams

ROOT = Path(__file__).resolve().parents[2]

#: The proxy's decision deadlines here, unless BASTION_POLICY_TIMEOUT_MS or
#: BASTION_VERIFIER_TIMEOUT_MS say otherwise: the eval measures what is decided, and a
#: production deadline missed on a busy machine would count a fallback as the scorer's block.
EVAL_DEADLINE_MS = 10_000


def _deadlines() -> dict[str, int]:
    names = ("policy_timeout_ms", "verifier_timeout_ms")
    return {name: EVAL_DEADLINE_MS for name in names if f"BASTION_{name.upper()}" not in os.environ}


RESULTS = ROOT / "eval" / "results"
#: How long the graph may take to receive the last scenario's nodes from the journal.
_GRAPH_WAIT_S = 30.0


async def replay(packs: Sequence[Pack], home: Path, *, progress: bool = False) -> tuple[list[ScenarioOutcome], int]:
    """Start the upstreams and the stack under `home`, replay every scenario of `packs`,
    read their last steps' decisions back from the graph; return the outcomes and how
    many last steps never reached the graph."""
    tools = catalogue()
    scenarios = [scenario for pack in packs for scenario in pack.scenarios]
    key = ensure_dev_key(home)
    # Created here, once, so the services never race to generate it (as `bastion up` does).
    ensure_service_token(home, None)
    script = Script()
    servers = {step.server for scenario in scenarios for step in scenario.steps}
    async with upstreams(tools, servers, script) as urls:
        app = AppConfig(
            servers={name: ServerConfig(url=url) for name, url in urls.items()},
            policies=tuple(policy_path(name) for name in sorted({s.policy for s in scenarios})),
        )
        async with services(home, app, **_deadlines()) as addresses:
            tokens = {agent_id(s): issue_token(key, subject=agent_id(s)) for s in scenarios}
            outcomes: list[ScenarioOutcome] = []
            async with httpx.AsyncClient(base_url=f"http://{addresses['proxy']['http']}", timeout=30.0) as http:
                replayer = Replayer(http, script, tokens)
                for pack in packs:
                    for scenario in pack.scenarios:
                        outcomes.append(await replayer.run(scenario))
                    if progress:
                        print(f"bastion eval: {pack.name}: {len(pack.scenarios)} scenarios", file=sys.stderr)
            auditor = issue_token(key, subject="eval-auditor", roles=("auditor",))
            async with httpx.AsyncClient(
                base_url=f"http://{addresses['graph']['http']}",
                headers={"Authorization": f"Bearer {auditor}"},
                timeout=30.0,
            ) as graph:
                missing = await read_decisions(graph, outcomes, _GRAPH_WAIT_S)
    return outcomes, missing


def report(
    packs: Sequence[Pack],
    outcomes: Sequence[ScenarioOutcome],
    *,
    home: Path,
    missing: int,
    max_far: float | None = None,
    min_vdr: float | None = None,
    command: str = "bastion eval",
) -> dict[str, Any]:
    """The JSON document: the run's parameters, then `_report.summarise`'s figures."""
    scorer = VerifierSettings(home=home).scorer_config()
    document: dict[str, Any] = {
        "suite": "eval",
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "packs_run": {pack.name: {"description": pack.description, "scenarios": len(pack.scenarios)} for pack in packs},
        "policies": sorted({scenario.policy for pack in packs for scenario in pack.scenarios}),
        "scorer": {"name": "reference", **asdict(scorer)},
        "graph_nodes_missing": missing,
    }
    document.update(summarise(outcomes, max_far=max_far, min_vdr=min_vdr))
    if missing:
        document["passed"] = False
    return document


def _list() -> int:
    for pack in load_packs(available_packs(), catalogue()):
        legit = sum(s.label == "legit" for s in pack.scenarios)
        print(f"{pack.name:12} {len(pack.scenarios):>3} scenarios ({legit} legit)  {pack.description}")
    return 0


def run(args: argparse.Namespace) -> int:
    """`bastion eval` with parsed options; the exit code."""
    if args.list:
        return _list()
    packs = load_packs(args.pack, catalogue())
    command = " ".join(["bastion eval", *(f"--pack {name}" for name in args.pack)])
    for flag, value in (("--max-far", args.max_far), ("--min-vdr", args.min_vdr)):
        if value is not None:
            command += f" {flag} {value}"
    with tempfile.TemporaryDirectory(prefix="bastion-eval-") as tmp:
        home = Path(tmp)
        outcomes, missing = asyncio.run(replay(packs, home, progress=not args.json))
        document = report(
            packs, outcomes, home=home, missing=missing, max_far=args.max_far, min_vdr=args.min_vdr, command=command
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or RESULTS / f"eval-{stamp}.json"
    document["chart"] = None
    if not args.no_chart:
        png, reason = chart(document, out.with_suffix(".png"))
        document["chart"] = str(png) if png else None
        if reason:
            print(f"bastion eval: no chart: {reason}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    if args.json:
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(document))
        if missing:
            print(f"{missing} scenarios' last steps never reached the graph: their signals are unknown")
        print(f"wrote {out}" + (f" and {document['chart']}" if document["chart"] else ""))
    return 0 if document["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bastion eval", description=DESCRIPTION)
    add_options(parser)
    return run(parser.parse_args(argv))


__all__ = ["main", "replay", "report", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
