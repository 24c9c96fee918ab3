"""`bastion graph drift-path` and `bastion audit verify|export|slo`: the graph's REST API from a shell.

    bastion graph drift-path WORKFLOW NODE [--max-depth N]
    bastion audit verify                          recompute the service's chain
    bastion audit verify --export FILE [--head H] [--key PEM]
                                                  check an export file offline (no service needed)
    bastion audit export [--format csv|json] [--schema soc2_v1|iso42001_v1] [--from T] [--to T] [-o FILE]
    bastion audit slo [--window 1h]

Each talks to the graph at `--addr`, else $BASTION_GRAPH_ADDR, else 127.0.0.1:8080, with
the bearer token from `--token`, else $BASTION_TOKEN, else one minted from the stack's dev
key (as `bastion approvals …` does). `--json` prints the service's answer. `audit export`
writes the file to stdout or `-o FILE` and its progress to stderr.
Exit codes: 0 done (a chain or file that verifies); 1 a chain or file that does not
verify, or a request refused or failed (unknown workflow or node 404, graph unreachable);
2 bad usage or credentials (401/403).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from ._rest_client import TIMEOUT_S, CliFailed, bearer_from, call, emit, response_json

DEFAULT_ADDR = "127.0.0.1:8080"
_PROGRESS_EVERY_S = 0.5


def add_graph_commands(actions: Any) -> None:
    """`bastion graph drift-path` (under the graph service's own subcommands)."""
    drift = actions.add_parser(
        "drift-path", parents=[_common()], help="where a node's data came from, as a tree (newest first)"
    )
    drift.add_argument("workflow_id")
    drift.add_argument("node_id")
    drift.add_argument("--max-depth", type=int, default=64, help="edges to follow at most (1-1024, default 64)")


def add_audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="the graph's tamper-evident audit chain")
    actions = audit.add_subparsers(dest="action", required=True)
    verify = actions.add_parser(
        "verify", parents=[_common()], help="recompute the chain (or an export file) and name the first broken record"
    )
    verify.add_argument("--export", type=Path, help="check this export file offline instead of the service's chain")
    verify.add_argument("--head", help="with --export: the chain hash the file must end at (from a verify you trust)")
    verify.add_argument(
        "--key",
        type=Path,
        action="append",
        default=[],
        help="with --export: a PEM public key of the stack (repeatable): the file must carry the service's signature",
    )
    export = actions.add_parser("export", parents=[_common()], help="stream a piece of the chain for auditors")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--schema", choices=("soc2_v1", "iso42001_v1"), default="soc2_v1")
    export.add_argument("--from", dest="since", help="RFC 3339: records that entered the chain at or after it")
    export.add_argument("--to", dest="until", help="RFC 3339: records that entered the chain before it")
    export.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    slo = actions.add_parser("slo", parents=[_common()], help="decision latency, fallbacks and block rate by rule")
    slo.add_argument("--window", default="1h", help="how far back, e.g. 15m, 1h, 7d (default 1h)")


def run_graph_command(args: argparse.Namespace) -> int:
    """`bastion graph drift-path` and every `bastion audit` command."""
    if args.command == "audit" and args.action == "verify" and args.export is not None:
        return _verify_file(args)
    addr = args.addr or os.environ.get("BASTION_GRAPH_ADDR") or DEFAULT_ADDR
    try:
        with httpx.Client(base_url=f"http://{addr}", headers=bearer_from(args), timeout=TIMEOUT_S) as http:
            if args.command == "graph":
                path = f"/graphs/{quote(args.workflow_id, safe='')}/drift-path/{quote(args.node_id, safe='')}"
                answer = call(http, "GET", path, params={"max_depth": str(args.max_depth)})
                emit(args, answer, drift_tree(answer))
            elif args.action == "verify":
                answer = _verify_whole(http)
                emit(args, answer, _verify_text(answer))
                return 0 if answer["ok"] else 1
            elif args.action == "slo":
                answer = call(http, "GET", "/audit/slo", params={"window": args.window})
                emit(args, answer, _slo_text(answer))
            else:
                _export(http, args)
    except CliFailed as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return exc.code
    except httpx.HTTPError as exc:
        print(f"bastion: graph at {addr} unreachable: {exc}", file=sys.stderr)
        return 1
    return 0


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", help=f"graph REST host:port (default: $BASTION_GRAPH_ADDR or {DEFAULT_ADDR})")
    common.add_argument("--token", help="operator/auditor JWT (default: $BASTION_TOKEN, else minted from the dev key)")
    common.add_argument("--config", type=Path, help="bastion.yaml, for a minted token's issuer and audience")
    common.add_argument("--json", action="store_true", help="print the answer as JSON")
    return common


def drift_tree(answer: dict[str, Any]) -> str:
    """The drift path as an indented tree, the node asked about first and the origin last."""
    lines: list[str] = []
    hops = answer["hops"]
    for depth, hop in enumerate(hops):
        pad = "   " * depth
        target = "__".join(part for part in (hop["server"], hop["tool"]) if part) or hop["node_type"]
        who = f"  agent {hop['agent_id']}" if hop["agent_id"] else ""
        last = depth == len(hops) - 1
        origin = f"  <- origin: {answer['origin']}" if last else ""
        lines.append(f"{pad}{hop['node_id']}  {target}  {hop['outcome'] or 'not ingested'}{who}{origin}")
        # Coarse labels only (untrusted, source:…, sink); the per-argument ones are in --json.
        labels = [label for label in hop.get("taint", ()) if not label.startswith("arg:")]
        if labels:
            lines.append(f"{pad}   taint: {', '.join(labels)}")
        if not last:
            reason = f": {hop['reason']}" if hop["reason"] else ""
            lines.append(f"{pad}└─ {hop['via']}{reason}")
    return "\n".join(lines)


def _verify_whole(http: httpx.Client) -> dict[str, Any]:
    """GET /audit/verify, continuing from where each answer stopped at the service's deadline
    (`next`, each part linked to the last) until the head or a problem: one answer for the
    whole chain, its `records` and `checkpoints` summed over the parts."""
    answer: dict[str, Any] = call(http, "GET", "/audit/verify")
    records, checkpoints = answer["records"], answer.get("checkpoints", 0)
    while answer.get("stopped") and answer.get("next") and answer.get("problem") is None:
        following = answer["next"]
        answer = call(
            http, "GET", "/audit/verify", params={"after": str(following["after"]), "anchor": following["anchor"]}
        )
        records += answer["records"]
        checkpoints += answer.get("checkpoints", 0)
    return {**answer, "first": 1, "records": records, "checkpoints": checkpoints}


def _verify_text(answer: dict[str, Any]) -> str:
    head = answer.get("head")
    at = f" (head #{head['sequence']} {head['hash']})" if head else ""
    problem = answer.get("problem")
    if problem is None:
        marks = answer.get("checkpoints")
        held = f", {marks} signed checkpoint{'s' if marks != 1 else ''} held" if marks is not None else ""
        return f"ok: {answer['records']} records verified{at}{held}"
    return f"BROKEN at record #{problem['sequence']} ({problem['kind']}): {problem['detail']}"


def _verify_file(args: argparse.Namespace) -> int:
    from bastion.graph._export import verify_export  # the graph package only when checking a file

    try:
        keys = [_public_key(path) for path in args.key]
    except (OSError, ValueError, TypeError) as exc:
        print(f"bastion: --key: {exc}", file=sys.stderr)
        return 2
    try:
        report = verify_export(args.export, head=args.head, keys=keys)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        print(f"bastion: cannot read {args.export}: {exc}", file=sys.stderr)
        return 1
    chain = report.chain
    head = report.stated_head or chain.head
    problem = chain.problem
    payload = {
        "ok": report.ok,
        "schema_version": report.schema_version,
        "records": chain.records,
        "head": {"sequence": head.sequence, "hash": head.hash} if head else None,
        "problem": {"kind": problem.kind, "sequence": problem.sequence, "detail": problem.detail} if problem else None,
    }
    if args.key:
        payload["signed"] = report.signed and report.ok
    text = _verify_text(payload) + (", signed by the service" if args.key and report.ok else "")
    emit(args, payload, f"{args.export}: {text}")
    return 0 if report.ok else 1


def _public_key(path: Path) -> Any:
    """An Ed25519 public key from a PEM file (a private key's public half is taken too)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    data = path.read_bytes()
    try:
        key: Any = load_pem_public_key(data)
    except ValueError:
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path} is not a PEM public key (nor an unencrypted private key): {exc}") from exc
        print(f"bastion: {path} is a private key; an auditor needs only its public half", file=sys.stderr)
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 key (the audit chain is signed with EdDSA)")
    return key


def _export(http: httpx.Client, args: argparse.Namespace) -> None:
    params = {"format": args.format, "schema": args.schema}
    params |= {name: value for name, value in (("from", args.since), ("to", args.until)) if value}
    with http.stream("GET", "/audit/export", params=params) as response:
        if response.status_code >= 400:
            response.read()
            _call_failed(response)
        out: IO[bytes] = args.output.open("wb") if args.output else sys.stdout.buffer
        try:
            lines = _copy(response, out)
        finally:
            if args.output:
                out.close()
    # Rows are one a line in both formats; minus the CSV header and closing row, or the JSON frame.
    print(f"exported {max(0, lines - 2)} records{f' to {args.output}' if args.output else ''}", file=sys.stderr)


def _copy(response: httpx.Response, out: IO[bytes]) -> int:
    lines, size, shown = 0, 0, time.monotonic()
    for chunk in response.iter_bytes():
        out.write(chunk)
        lines += chunk.count(b"\n")
        size += len(chunk)
        if time.monotonic() - shown >= _PROGRESS_EVERY_S and sys.stderr.isatty():
            print(f"\r{lines} rows, {size / 1e6:.1f} MB", end="", file=sys.stderr)
            shown = time.monotonic()
    if sys.stderr.isatty():
        print("\r", end="", file=sys.stderr)
    return lines


def _call_failed(response: httpx.Response) -> None:
    payload = response_json(response)
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    message = error.get("message") or response.text[:500] or response.reason_phrase
    raise CliFailed(
        f"GET /audit/export: {response.status_code} {error.get('code', '')}: {message}",
        2 if response.status_code in (401, 403) else 1,
    )


def _slo_text(answer: dict[str, Any]) -> str:
    latency = ", ".join(f"{name} {value} ms" for name, value in answer["latency_ms"].items()) or "no timed decisions"
    lines = [
        f"last {answer['window_s']}s: {answer['decisions']} decisions, {answer['blocked']} blocked "
        f"({answer['block_rate']:.1%}), {answer['verifier_fallbacks']} verifier fallbacks",
        f"decision latency: {latency}",
    ]
    lines += [
        f"  {rule['rule_id']}: {rule['decisions']} decisions, {rule['blocked']} blocked ({rule['block_rate']:.1%})"
        for rule in answer["rules"]
    ]
    return "\n".join(lines)
