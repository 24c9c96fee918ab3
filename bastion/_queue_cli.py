"""`bastion queue list|show|release|reject`: calls parked by a verifier `fallback: queue`,
drained from a shell through the proxy's `/v1/queue` routes.

    bastion queue list [--state pending|released|rejected|used|expired] [--agent ID] [--limit N]
    bastion queue show ID
    bastion queue release ID [--reason TEXT]    the identical retry passes once
    bastion queue reject ID [--reason TEXT]     the retry is refused

Address, token, `--json` and exit codes as `bastion approvals` (bastion._approvals_cli):
0 done; 1 refused or failed (unknown id 404, already decided 409, proxy unreachable);
2 bad usage or credentials (401/403).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ._rest_client import TIMEOUT_S, CliFailed, bearer_from, call, emit

DEFAULT_ADDR = "127.0.0.1:7070"
_STATES = ("pending", "released", "rejected", "used", "expired")


def add_queue_commands(commands: Any) -> None:
    queue = commands.add_parser("queue", help="calls the verifier could not score, parked for an operator")
    actions = queue.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", help=f"proxy host:port (default: $BASTION_PROXY_ADDR or {DEFAULT_ADDR})")
    common.add_argument("--token", help="operator JWT (default: $BASTION_TOKEN, else minted from the dev key)")
    common.add_argument("--config", type=Path, help="bastion.yaml, for a minted token's issuer and audience")
    common.add_argument("--json", action="store_true", help="print the answer as JSON")

    listing = actions.add_parser("list", parents=[common], help="parked calls, newest first")
    listing.add_argument("--state", choices=_STATES, default=None)
    listing.add_argument("--agent", help="only this agent's")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (1-500, default 100)")
    show = actions.add_parser("show", parents=[common], help="one parked call, with its arguments")
    show.add_argument("id")
    for step, what in (("release", "let the identical retry through once"), ("reject", "refuse the call")):
        decide = actions.add_parser(step, parents=[common], help=what)
        decide.add_argument("id")
        decide.add_argument("--reason", default="", help="why (recorded in the audit trail)")


def run_queue_command(args: argparse.Namespace) -> int:
    addr = args.addr or os.environ.get("BASTION_PROXY_ADDR") or DEFAULT_ADDR
    try:
        with httpx.Client(base_url=f"http://{addr}", headers=bearer_from(args), timeout=TIMEOUT_S) as http:
            if args.action == "list":
                params = {"limit": str(args.limit)}
                params |= {key: value for key in ("state", "agent") if (value := getattr(args, key))}
                page = call(http, "GET", "/v1/queue", params=params)
                emit(args, page, "\n".join(_line(item) for item in page["items"]) or "(no queued calls)")
            elif args.action == "show":
                item = call(http, "GET", f"/v1/queue/{quote(args.id, safe='')}")
                emit(args, item, _detail(item))
            else:
                path = f"/v1/queue/{quote(args.id, safe='')}/{args.action}"
                item = call(http, "POST", path, {"reason": args.reason})
                emit(args, item, f"{item['queue_id']}: {item['state']} by {item['decided_by']}")
    except CliFailed as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return exc.code
    except httpx.HTTPError as exc:
        print(f"bastion: proxy at {addr} unreachable: {exc}", file=sys.stderr)
        return 1
    return 0


def _when(seconds: float | None) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if seconds else "-"


def _line(item: dict[str, Any]) -> str:
    action = item["action"]
    target = action.get("tool") or action.get("prompt") or action.get("resource") or action.get("method")
    return (
        f"{item['queue_id']}  {item['state']:<8}  {item['tenant']}/{item['agent_id']}  "
        f"{action.get('server', '')}__{target}  expires {_when(item['expires_at'])}"
    )


def _detail(item: dict[str, Any]) -> str:
    lines = [_line(item), f"  policy {item['policy_name']} v{item['policy_version']}"]
    lines.append(f"  why queued: {item['reason']}")
    lines.append(f"  workflow {item['workflow_id']}, node {item['node_id']}")
    lines.append(f"  arguments: {item['action'].get('arguments')}")
    if item.get("decided_by"):
        lines.append(f"  decided by {item['decided_by']} at {_when(item['decided_at'])}: {item['decision_reason']}")
    return "\n".join(lines)
