"""The `bastion` command line.

Exit codes: 0 success; 1 the command ran and failed (a service died, a check
failed, a service refused the request); 2 bad usage, configuration or credentials.
`bastion policy apply|validate|versions|diff|activate` live in bastion._policy_cli.
`bastion keys create|list|revoke` and `bastion token revoke|revocations` in bastion._keys_cli.
`bastion approvals list|show|approve|deny` in bastion._approvals_cli.
`bastion queue list|show|release|reject` in bastion._queue_cli.
`bastion graph drift-path` and `bastion audit verify|export|slo` in bastion._graph_cli.
`bastion eval` in bastion.eval.efficacy (options in its _options, the run in its runner).
`bastion verifier learn` in bastion.verifier._learn.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
from pydantic import ValidationError

from bastion.eval.efficacy._options import DESCRIPTION as EVAL_DESCRIPTION
from bastion.eval.efficacy._options import add_options as add_eval_options

from ._appconfig import find_app_config
from ._approvals_cli import add_approval_commands, run_approval_command
from ._errors import BastionError, ConfigError
from ._graph_cli import add_audit_commands, add_graph_commands, run_graph_command
from ._identity import ensure_dev_key, issue_token
from ._keys_cli import add_keys_commands, add_token_revoke_commands, run_keys_command
from ._policy_cli import add_policy_commands, run_policy_command
from ._queue_cli import add_queue_commands, run_queue_command
from ._settings import CommonSettings

SERVICES = ("proxy", "policy", "verifier", "graph")
#: `bastion bench SUITE`: eval/bench/<suite>_bench.py.
BENCH_SUITES = ("policy", "tracing", "a2a", "stack", "graph")
_TTL = re.compile(r"(\d+)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _ttl(value: str) -> int:
    match = _TTL.fullmatch(value.strip())
    if match is None or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid ttl {value!r}: use e.g. 90s, 30m, 1h, 7d")
    return int(match.group(1)) * _UNIT[match.group(2)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bastion", description="Runtime governance for AI agents.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the whole stack (policy, verifier, graph, proxy)")
    up.add_argument("--config", type=Path, help="bastion.yaml (default: $BASTION_CONFIG or ./bastion.yaml)")

    for name in SERVICES:
        service = commands.add_parser(name, help=f"the {name} service")
        actions = service.add_subparsers(dest="action", required=True)
        serve = actions.add_parser("serve", help=f"run the {name} service in the foreground")
        serve.add_argument("--config", type=Path, help="bastion.yaml (default: $BASTION_CONFIG or ./bastion.yaml)")
        if name == "policy":
            add_policy_commands(actions, _ttl)
        if name == "graph":
            add_graph_commands(actions)
        if name == "verifier":
            # Run by bastion.verifier._learn (imported on demand: the verifier pulls in grpc).
            learn = actions.add_parser("learn", help="seed the sequence models from recorded graph data")
            learn.add_argument("--from", dest="files", action="append", type=Path, default=[], metavar="FILE",
                               help="a JSON export of graph nodes (repeatable)")  # fmt: skip
            learn.add_argument("--graph", action="store_true", help="read the nodes from the graph's REST API")
            learn.add_argument("--addr", help="graph REST host:port (default: $BASTION_GRAPH_ADDR or 127.0.0.1:8080)")
            learn.add_argument("--token", help="auditor/operator JWT (default: $BASTION_TOKEN, else minted)")
            learn.add_argument("--config", type=Path, help="bastion.yaml, for a minted token's issuer and audience")
            learn.add_argument("--max-workflows", type=int, default=1000, help="with --graph: at most this many")

    bench = commands.add_parser("bench", help="benchmarks (figures, never pass/fail)")
    bench.add_argument("suite", choices=BENCH_SUITES, help="what to measure (none given: stack)")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the suite's own options (see its --help)")

    efficacy = commands.add_parser(
        "eval", help="FAR / VDR of labelled scenario packs replayed through the stack", description=EVAL_DESCRIPTION
    )
    add_eval_options(efficacy)

    wrap = commands.add_parser(
        "wrap",
        help="run a stdio MCP server behind Bastion, speaking stdio to the client",
        description="Run a stdio MCP server behind the enforcer of the running stack: "
        "bastion wrap [--name NAME] [--agent ID] -- COMMAND [ARG ...]. The agent's token comes "
        "from BASTION_AGENT_TOKEN, else is signed with the stack's dev key for --agent.",
    )
    wrap.add_argument("--name", help="the server's name in policies (default: the command's file name)")
    wrap.add_argument("--agent", default="wrap", help="agent id when no BASTION_AGENT_TOKEN is set (default: wrap)")
    wrap.add_argument("--config", type=Path, help="bastion.yaml, for auth settings (default: $BASTION_CONFIG)")
    wrap.add_argument("server_command", nargs=argparse.REMAINDER, help="-- then the stdio server's command")

    token = commands.add_parser("token", help="agent and operator tokens")
    token_actions = token.add_subparsers(dest="action", required=True)
    issue = token_actions.add_parser("issue", help="print a JWT signed with the stack's dev key")
    issue.add_argument("--agent", required=True, help="agent id (the token's subject)")
    issue.add_argument("--role", action="append", default=[], help="role to grant, e.g. operator (repeatable)")
    issue.add_argument("--tenant", default="default")
    issue.add_argument("--ttl", type=_ttl, default=3600, help="lifetime, e.g. 30m, 1h (default), 7d")
    issue.add_argument("--config", type=Path, help="bastion.yaml, for the token's issuer and audience")
    issue.add_argument("--json", action="store_true", help="print {token, agent, roles, expires_in} as JSON")
    add_token_revoke_commands(token_actions)
    add_keys_commands(commands, _ttl)
    add_approval_commands(commands)
    add_queue_commands(commands)
    add_audit_commands(commands)
    return parser


def _serve(name: str, config: Path | None) -> int:
    """`bastion <name> serve`; a setting no service could start with is one line on stderr and
    exit code 2, not a traceback (each service reads its settings before it starts)."""
    try:
        return _serve_checked(name, config)
    except ValidationError as exc:
        for error in exc.errors():
            variable = "BASTION_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"bastion {name}: invalid setting {variable}: {error['msg']}", file=sys.stderr)
        return 2


def _serve_checked(name: str, config: Path | None) -> int:
    if name == "proxy":
        from bastion.proxy import main as proxy_main

        return proxy_main(config)
    if name == "policy":
        from bastion.policy import main as policy_main

        return policy_main(config)
    if name == "verifier":
        from bastion.verifier import main as verifier_main

        return verifier_main(config)
    from bastion.graph import main as graph_main

    return graph_main(config)


def _bench(suite: str, options: Sequence[str]) -> int:
    # Imported on demand: the suites pull in the whole stack and are not needed elsewhere.
    if suite == "policy":
        from bastion.eval.bench.policy_bench import main as policy_bench
    elif suite == "a2a":
        from bastion.eval.bench.a2a_bench import main as policy_bench
    elif suite == "stack":
        from bastion.eval.bench.stack_bench import main as policy_bench
    elif suite == "graph":
        from bastion.eval.bench.graph_bench import main as policy_bench
    else:
        from bastion.eval.bench.tracing_bench import main as policy_bench
    policy_bench(list(options))
    return 0


def _wrap(args: argparse.Namespace) -> int:
    from bastion.proxy import wrap

    command = list(args.server_command)
    if command[:1] == ["--"]:
        command = command[1:]
    name = args.name or (_server_name(command[0]) if command else "")
    return wrap(command, name=name, agent=args.agent, config=args.config)


def _server_name(program: str) -> str:
    """A server name from a program path: `/usr/bin/mcp-server-git` → `mcp-server-git`."""
    stem = Path(program).name.split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_").replace("__", "_")
    return cleaned or "server"


def _token(args: argparse.Namespace) -> int:
    settings = CommonSettings()
    _, app = find_app_config(args.config, settings.config, credentials=False)
    if args.ttl > app.auth.max_token_lifetime_s:
        # Verifiers refuse a longer-lived token; better said now than at the first call.
        raise ConfigError(
            f"--ttl {args.ttl}s is above auth.max_token_lifetime_s ({app.auth.max_token_lifetime_s}s) of bastion.yaml"
        )
    token = issue_token(
        ensure_dev_key(settings.home.resolve()),
        subject=args.agent,
        roles=tuple(args.role),
        tenant=args.tenant,
        ttl_seconds=args.ttl,
        auth=app.auth,
    )
    if args.json:
        print(orjson.dumps({"token": token, "agent": args.agent, "roles": args.role, "expires_in": args.ttl}).decode())
    else:
        print(token)
    return 0


def _default_bench_suite(argv: Sequence[str]) -> list[str]:
    """`bastion bench [OPTIONS]` is `bastion bench stack [OPTIONS]`: DESIGN §13's `bastion bench`
    (direct against through Bastion) is the stack suite."""
    words = list(argv)
    if words[:1] == ["bench"] and (len(words) == 1 or (words[1].startswith("-") and words[1] not in ("-h", "--help"))):
        words.insert(1, "stack")
    return words


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(_default_bench_suite(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "up":
            from ._up import up

            return up(args.config)
        if args.command == "policy" and args.action != "serve":
            return run_policy_command(args)
        if args.command == "audit" or (args.command == "graph" and args.action != "serve"):
            return run_graph_command(args)
        if args.command == "bench":
            return _bench(args.suite, args.options)
        if args.command == "eval":
            # Imported on demand, as the bench suites: it pulls in the whole stack.
            from bastion.eval.efficacy.runner import run as run_eval

            return run_eval(args)
        if args.command == "verifier" and args.action == "learn":
            from bastion.verifier._learn import run_learn

            return run_learn(args)
        if args.command in SERVICES:
            return _serve(args.command, args.config)
        if args.command == "wrap":
            return _wrap(args)
        if args.command == "approvals":
            return run_approval_command(args)
        if args.command == "queue":
            return run_queue_command(args)
        if args.command == "keys" or (args.command == "token" and args.action != "issue"):
            return run_keys_command(args)
        return _token(args)
    except BastionError as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return 2
