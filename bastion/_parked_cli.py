"""The shell side of the proxy's parked calls: approval requests (`/v1/approvals`) and
calls a verifier `fallback: queue` parked (`/v1/queue`) are listed, shown and decided
the same way; each kind only names its routes, states and words (`ParkedKind`).

Each command talks to the proxy at `--addr`, else $BASTION_PROXY_ADDR, else
127.0.0.1:7070, with the bearer token from `--token`, else $BASTION_TOKEN, else one
minted from the stack's dev key with role operator (as `bastion policy …` does).
`--json` prints the proxy's answer. Exit codes: 0 done; 1 refused or failed (unknown id
404, already decided 409, proxy unreachable); 2 bad usage or credentials (401/403).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ._rest_client import TIMEOUT_S, CliFailed, bearer_from, call, emit

DEFAULT_ADDR = "127.0.0.1:7070"


@dataclass(frozen=True, slots=True)
class ParkedKind:
    command: str
    help: str
    #: The proxy's route prefix (`/v1/approvals`).
    route: str
    #: The item's id field (`approval_id`).
    id_key: str
    states: tuple[str, ...]
    list_help: str
    show_help: str
    #: (subcommand, help) of the two decisions, e.g. approve / deny.
    steps: tuple[tuple[str, str], tuple[str, str]]
    empty: str
    #: The lines `show` prints about why the call was parked (after its summary line).
    why: Callable[[dict[str, Any]], list[str]]


def add_commands(commands: Any, kind: ParkedKind) -> None:
    parser = commands.add_parser(kind.command, help=kind.help)
    actions = parser.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", help=f"proxy host:port (default: $BASTION_PROXY_ADDR or {DEFAULT_ADDR})")
    common.add_argument("--token", help="operator JWT (default: $BASTION_TOKEN, else minted from the dev key)")
    common.add_argument("--config", type=Path, help="bastion.yaml, for a minted token's issuer and audience")
    common.add_argument("--json", action="store_true", help="print the answer as JSON")

    listing = actions.add_parser("list", parents=[common], help=kind.list_help)
    listing.add_argument("--state", choices=kind.states, default=None)
    listing.add_argument("--agent", help="only this agent's")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (1-500, default 100)")
    show = actions.add_parser("show", parents=[common], help=kind.show_help)
    show.add_argument("id")
    for step, what in kind.steps:
        decide = actions.add_parser(step, parents=[common], help=what)
        decide.add_argument("id")
        decide.add_argument("--reason", default="", help="why (recorded in the audit trail)")


def run_command(args: argparse.Namespace, kind: ParkedKind) -> int:
    addr = args.addr or os.environ.get("BASTION_PROXY_ADDR") or DEFAULT_ADDR
    try:
        with httpx.Client(base_url=f"http://{addr}", headers=bearer_from(args), timeout=TIMEOUT_S) as http:
            if args.action == "list":
                params = {"limit": str(args.limit)}
                params |= {key: value for key in ("state", "agent") if (value := getattr(args, key))}
                page = call(http, "GET", kind.route, params=params)
                emit(args, page, "\n".join(_line(kind, item) for item in page["items"]) or kind.empty)
            elif args.action == "show":
                item = call(http, "GET", f"{kind.route}/{quote(args.id, safe='')}")
                emit(args, item, _detail(kind, item))
            else:
                path = f"{kind.route}/{quote(args.id, safe='')}/{args.action}"
                item = call(http, "POST", path, {"reason": args.reason})
                emit(args, item, f"{item[kind.id_key]}: {item['state']} by {item['decided_by']}")
    except CliFailed as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return exc.code
    except httpx.HTTPError as exc:
        print(f"bastion: proxy at {addr} unreachable: {exc}", file=sys.stderr)
        return 1
    return 0


def _when(seconds: float | None) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if seconds else "-"


def _line(kind: ParkedKind, item: dict[str, Any]) -> str:
    action = item["action"]
    target = action.get("tool") or action.get("prompt") or action.get("resource") or action.get("method")
    return (
        f"{item[kind.id_key]}  {item['state']:<8}  {item['tenant']}/{item['agent_id']}  "
        f"{action.get('server', '')}__{target}  expires {_when(item['expires_at'])}"
    )


def _detail(kind: ParkedKind, item: dict[str, Any]) -> str:
    lines = [_line(kind, item), *kind.why(item)]
    lines.append(f"  workflow {item['workflow_id']}, node {item['node_id']}")
    lines.append(f"  arguments: {item['action'].get('arguments')}")
    if item.get("decided_by"):
        lines.append(f"  decided by {item['decided_by']} at {_when(item['decided_at'])}: {item['decision_reason']}")
    return "\n".join(lines)
