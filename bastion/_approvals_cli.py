"""`bastion approvals list|show|approve|deny`: the proxy's approval routes from a shell.

    bastion approvals list [--state pending|approved|denied|used|expired] [--agent ID] [--limit N]
    bastion approvals show ID
    bastion approvals approve ID [--reason TEXT]
    bastion approvals deny ID [--reason TEXT]

Address, token, `--json` and exit codes: bastion._parked_cli (0 done; 1 refused or failed,
unknown id 404, not pending 409, proxy unreachable; 2 bad usage or credentials, 401/403).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._parked_cli import ParkedKind, add_commands, run_command

APPROVALS = ParkedKind(
    command="approvals",
    help="calls waiting for an operator's approval (at the proxy)",
    route="/v1/approvals",
    id_key="approval_id",
    states=("pending", "approved", "denied", "used", "expired"),
    list_help="approval requests, newest first",
    show_help="one request, with the call's arguments",
    steps=(("approve", "let the identical call through once"), ("deny", "refuse the call")),
    empty="(no approval requests)",
    why=lambda item: [
        f"  rule {item['rule_id']} of {item['policy_name']} v{item['policy_version']}",
        f"  reason: {item['reason']}",
    ],
)


def add_approval_commands(commands: Any) -> None:
    add_commands(commands, APPROVALS)


def run_approval_command(args: argparse.Namespace) -> int:
    return run_command(args, APPROVALS)
