"""`bastion queue list|show|release|reject`: calls parked by a verifier `fallback: queue`,
drained from a shell through the proxy's `/v1/queue` routes.

    bastion queue list [--state pending|released|rejected|used|expired] [--agent ID] [--limit N]
    bastion queue show ID
    bastion queue release ID [--reason TEXT]    the identical retry passes once
    bastion queue reject ID [--reason TEXT]     the retry is refused

Address, token, `--json` and exit codes as `bastion approvals` (bastion._parked_cli):
0 done; 1 refused or failed (unknown id 404, already decided 409, proxy unreachable);
2 bad usage or credentials (401/403).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._parked_cli import ParkedKind, add_commands, run_command

QUEUE = ParkedKind(
    command="queue",
    help="calls the verifier could not score, parked for an operator",
    route="/v1/queue",
    id_key="queue_id",
    states=("pending", "released", "rejected", "used", "expired"),
    list_help="parked calls, newest first",
    show_help="one parked call, with its arguments",
    steps=(("release", "let the identical retry through once"), ("reject", "refuse the call")),
    empty="(no queued calls)",
    why=lambda item: [
        f"  policy {item['policy_name']} v{item['policy_version']}",
        f"  why queued: {item['reason']}",
    ],
)


def add_queue_commands(commands: Any) -> None:
    add_commands(commands, QUEUE)


def run_queue_command(args: argparse.Namespace) -> int:
    return run_command(args, QUEUE)
