"""`bastion keys …` and `bastion token revoke|revocations`: API keys and revocations at the
policy service's admin REST (bastion.policy._identities_api) from a shell.

    bastion keys create --agent ID [--tenant T] [--name N] [--ttl 30d]
    bastion keys list [--agent ID] [--tenant T]
    bastion keys revoke KEY_ID [--reason R]
    bastion token revoke (--jti JTI | --agent ID [--tenant T]) [--reason R]
    bastion token revocations [--kind token|agent] [--tenant T]

`keys create` prints the whole key on stdout (and only there: it is never shown again;
`--json` prints it in the service's answer); `keys list` pages through every key,
without secrets. A revocation reaches every proxy within moments (DESIGN §8: 30 s).
`--tenant` defaults to the operator token's tenant; only role admin may name another.

Each talks to the policy service's admin REST at `--addr`, else $BASTION_POLICY_ADDR,
else 127.0.0.1:8081, with the token from `--token`, else $BASTION_TOKEN, else one minted
from the stack's dev key with role operator (bastion._rest_client, as `bastion policy …`).
Exit codes: 0 done; 1 refused or failed (unknown key 404, already revoked 409, invalid
422, service unreachable); 2 bad usage or credentials (401/403).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ._policy_cli import DEFAULT_ADDR
from ._rest_client import TIMEOUT_S, CliFailed, bearer_from, call, emit


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", help=f"policy admin REST host:port (default: $BASTION_POLICY_ADDR or {DEFAULT_ADDR})")
    common.add_argument("--token", help="operator JWT (default: $BASTION_TOKEN, else minted from the dev key)")
    common.add_argument("--config", type=Path, help="bastion.yaml, for a minted token's issuer and audience")
    common.add_argument("--json", action="store_true", help="print the answer as JSON")
    return common


def add_keys_commands(commands: Any, ttl: Callable[[str], int]) -> None:
    """`bastion keys create|list|revoke` (`ttl` parses --ttl)."""
    common = _common()
    keys = commands.add_parser("keys", help="API keys for agents that cannot use JWTs (at the policy service)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", parents=[common], help="create a key; prints it, once")
    create.add_argument("--agent", required=True, help="the agent id the key authenticates as")
    create.add_argument("--tenant", help="the agent's tenant (default: the operator token's)")
    create.add_argument("--name", default="", help="a label for people, e.g. where the key is used")
    create.add_argument("--ttl", type=ttl, default=None, help="lifetime, e.g. 30d, 12h (default: never expires)")
    listing = actions.add_parser("list", parents=[common], help="every key, without secrets")
    listing.add_argument("--agent", help="only this agent's")
    listing.add_argument("--tenant", help="only this tenant's")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key on every proxy")
    revoke.add_argument("key_id", help="the key's id (bk_<key id>.…), as `keys list` shows it")
    revoke.add_argument("--reason", default="", help="why (recorded in the audit trail)")


def add_token_revoke_commands(token_actions: Any) -> None:
    """`bastion token revoke|revocations`, beside `bastion token issue`."""
    common = _common()
    revoke = token_actions.add_parser(
        "revoke", parents=[common], help="revoke one token (by jti) or every credential of an agent, on every proxy"
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--jti", help="the token's id (its `jti` claim)")
    which.add_argument("--agent", help="the agent: every token issued to it until now, and its API keys")
    revoke.add_argument("--tenant", help="the agent's tenant, with --agent (default: the operator token's)")
    revoke.add_argument("--reason", default="", help="why (recorded in the audit trail)")
    listing = token_actions.add_parser("revocations", parents=[common], help="list revocations, oldest first")
    listing.add_argument("--kind", choices=("token", "agent"))
    listing.add_argument("--tenant", help="only this tenant's")


def run_keys_command(args: argparse.Namespace) -> int:
    """`bastion keys …` or `bastion token revoke|revocations`: the exit code."""
    addr = args.addr or os.environ.get("BASTION_POLICY_ADDR") or DEFAULT_ADDR
    command = _COMMANDS[(args.command, args.action)]
    try:
        with httpx.Client(base_url=f"http://{addr}", headers=bearer_from(args), timeout=TIMEOUT_S) as http:
            command(http, args)
    except CliFailed as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return exc.code
    except httpx.HTTPError as exc:
        print(f"bastion: policy service at {addr} unreachable: {exc}", file=sys.stderr)
        return 1
    return 0


def _create(http: httpx.Client, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"agent": args.agent, "name": args.name}
    if args.tenant is not None:
        body["tenant"] = args.tenant
    if args.ttl is not None:
        body["ttl_s"] = args.ttl
    created = call(http, "POST", "/v1/keys", body)
    if not args.json:
        expires = created["expires_at"] or "never"
        print(
            f"API key {created['key_id']} for agent {created['agent']!r} (tenant {created['tenant']!r}), "
            f"expires {expires}; it is shown only now: store it as a secret",
            file=sys.stderr,
        )
    emit(args, created, created["key"])


def _list(http: httpx.Client, args: argparse.Namespace) -> None:
    params = {key: value for key in ("agent", "tenant") if (value := getattr(args, key))}
    keys = _all_pages(http, "/v1/keys", "keys", params)
    lines = [
        f"{key['key_id']}  {key['state']:<7}  {key['tenant']}/{key['agent']}  {key['name'] or '-'}  "
        f"created {key['created_at']} by {key['created_by']}  expires {key['expires_at'] or 'never'}"
        for key in keys
    ]
    emit(args, {"keys": keys}, "\n".join(lines) or "(no API keys)")


def _revoke_key(http: httpx.Client, args: argparse.Namespace) -> None:
    key_id = args.key_id.removeprefix("bk_").split(".", 1)[0]  # a whole key pasted by mistake names its id
    key = call(http, "POST", f"/v1/keys/{quote(key_id, safe='')}/revoke", {"reason": args.reason})
    emit(args, key, f"API key {key['key_id']} of {key['tenant']}/{key['agent']} revoked")


def _revoke(http: httpx.Client, args: argparse.Namespace) -> None:
    if args.jti is not None:
        body = {"kind": "token", "value": args.jti, "reason": args.reason}
    else:
        body = {"kind": "agent", "value": args.agent, "reason": args.reason}
        if args.tenant is not None:
            body["tenant"] = args.tenant
    revocation = call(http, "POST", "/v1/revocations", body)
    if revocation["kind"] == "token":
        text = f"token {revocation['value']} revoked"
    else:
        text = f"agent {revocation['tenant']}/{revocation['value']} revoked: tokens issued until {revocation['at']}"
        if revocation["keys_revoked"]:
            text += f" and API keys {', '.join(revocation['keys_revoked'])}"
    emit(args, revocation, text)


def _revocations(http: httpx.Client, args: argparse.Namespace) -> None:
    params = {key: value for key in ("kind", "tenant") if (value := getattr(args, key))}
    found = _all_pages(http, "/v1/revocations", "revocations", params)
    lines = [
        f"{item['id']:>6}  {item['kind']:<5}  {item['tenant']}/{item['value']}  {item['at']} by {item['by']}"
        + (f": {item['reason']}" if item["reason"] else "")
        for item in found
    ]
    emit(args, {"revocations": found}, "\n".join(lines) or "(no revocations)")


def _all_pages(http: httpx.Client, path: str, field: str, params: dict[str, str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page = call(http, "GET", path, params={**params, "limit": "1000"})
    found += page[field]
    while page["next"] is not None:
        page = call(http, "GET", path, params={**params, "limit": "1000", "after": str(page["next"])})
        found += page[field]
    return found


_COMMANDS: dict[tuple[str, str], Callable[[httpx.Client, argparse.Namespace], None]] = {
    ("keys", "create"): _create,
    ("keys", "list"): _list,
    ("keys", "revoke"): _revoke_key,
    ("token", "revoke"): _revoke,
    ("token", "revocations"): _revocations,
}
