"""`bastion graph drift-path` and `bastion audit verify|export` run as an operator would,
against the graph REST app on a real server (port 0), with a token minted from the dev
key under the test's BASTION_HOME."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bastion._appconfig import AuthConfig
from bastion._cli import main
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_dev_key, load_public_keys
from bastion._web import start_web_server
from bastion.graph import SqliteGraphStore, create_app
from bastion.v1 import graph_pb2, policy_pb2


def _event(name: str, tool: str, *, informed_by: str = "", reason: str = "") -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=f"e-{name}",
        workflow_id="wf-1",
        node_id=f"node-{name}",
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="web", tool=tool, method="tools/call"),
        decision=policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="r1", policy_name="p", policy_version=1),
        outcome=graph_pb2.FORWARDED,
    )
    if informed_by:
        event.edges.append(graph_pb2.EdgeHint(target_node_id=informed_by, type=graph_pb2.INFORMED_BY, reason=reason))
    return event


@pytest.fixture
async def graph_addr(tmp_path: Path) -> AsyncIterator[str]:
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    await store.ingest(
        [
            _event("fetch", "fetch"),
            _event("summary", "summarize", informed_by="node-fetch", reason="text of fetch"),
            _event("send", "send", informed_by="node-summary", reason="recipient from summarize"),
        ]
    )
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), tmp_path))
    # Exports signed with the stack's dev key, as `bastion graph serve` signs them.
    app = create_app(store, verifier=verifier, hosts=HostCheck((), "127.0.0.1"), signing_key=ensure_dev_key(tmp_path))
    server = await start_web_server(app, "127.0.0.1:0")
    try:
        yield server.address
    finally:
        await server.stop()
        await store.close()


async def _bastion(home: Path, addr: str, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `bastion ARGS`, run in a thread of this process: a
    subprocess would cost seconds of imports per call."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BASTION_HOME", str(home))
        patch.setenv("BASTION_GRAPH_ADDR", addr)
        patch.delenv("BASTION_TOKEN", raising=False)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = await asyncio.to_thread(main, list(args))
    return code, out.getvalue(), err.getvalue()


async def test_drift_path_prints_the_path_as_a_tree(graph_addr: str, tmp_path: Path) -> None:
    code, out, err = await _bastion(tmp_path, graph_addr, "graph", "drift-path", "wf-1", "node-send")
    missing = await _bastion(tmp_path, graph_addr, "graph", "drift-path", "wf-1", "node-nope")

    assert code == 0, err
    assert out.splitlines() == [
        "node-send  web__send  FORWARDED  agent agent-a",
        "└─ INFORMED_BY: recipient from summarize",
        "   node-summary  web__summarize  FORWARDED  agent agent-a",
        "   └─ INFORMED_BY: text of fetch",
        "      node-fetch  web__fetch  FORWARDED  agent agent-a  <- origin: untrusted_data",
    ]
    assert missing[0] == 1
    assert "node 'node-nope' not found in workflow 'wf-1'" in missing[2]


async def test_audit_export_then_verify_the_file_offline_and_against_the_service(
    graph_addr: str, tmp_path: Path
) -> None:
    export = tmp_path / "audit.csv"
    exported = await _bastion(tmp_path, graph_addr, "audit", "export", "-o", str(export))
    verified = await _bastion(tmp_path, graph_addr, "audit", "verify", "--json")
    head = orjson.loads(verified[1])["head"]["hash"]
    offline = await _bastion(tmp_path, graph_addr, "audit", "verify", "--export", str(export), "--head", head)
    key = tmp_path / "keys" / "dev-ed25519.pem"  # the private key's public half is what is used
    signed = await _bastion(tmp_path, graph_addr, "audit", "verify", "--export", str(export), "--key", str(key))
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    wrong = await _bastion(tmp_path, graph_addr, "audit", "verify", "--export", str(export), "--key", str(other))
    export.write_text(export.read_text().replace("summarize", "summarise", 1), newline="")
    tampered = await _bastion(tmp_path, graph_addr, "audit", "verify", "--export", str(export))

    assert exported[0] == 0, exported[2]
    assert "exported 3 records" in exported[2]
    assert verified[0] == 0, verified[2]
    assert offline[0] == 0, offline
    assert offline[1].endswith(f"ok: 3 records verified (head #3 {head})\n")
    assert signed[0] == 0, signed
    assert signed[1].endswith(f"ok: 3 records verified (head #3 {head}), signed by the service\n")
    assert "is a private key; an auditor needs only its public half" in signed[2]
    assert wrong[0] == 1
    assert "(forged)" in wrong[1]
    not_a_key = await _bastion(tmp_path, graph_addr, "audit", "verify", "--export", str(export), "--key", str(export))
    assert not_a_key[0] == 2
    assert f"--key: {export} is not a PEM public key" in not_a_key[2]
    assert tampered[0] == 1
    assert "BROKEN at record #2 (altered)" in tampered[1]
