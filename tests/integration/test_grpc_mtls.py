"""Mutual TLS on every gRPC link (BASTION_GRPC_TLS_CERT / _KEY / _CA, bastion/_tls.py).

Real services on port 0, real gRPC over TLS with certificates made for the test: a governed
call goes through the proxy and is recorded by the graph, all four links over mutual TLS;
each server refuses plaintext, a caller without a certificate and one whose certificate
another CA signed, and still wants the service token from a caller with a good one; a proxy
without the certificates cannot reach the services and blocks (fail closed)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixtures import inprocess
from fixtures.certs import Files, issue, new_ca
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import DemoUpstream
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion._identity import ensure_service_token
from bastion._rpc import auth_metadata, check_health, open_channel, start_grpc_server
from bastion._settings import CommonSettings
from bastion._tls import GrpcTls, grpc_tls
from bastion.v1 import policy_pb2, verifier_pb2, verifier_pb2_grpc

ALLOW_DEMO = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: mtls, version: 1}
spec:
  default: deny
  rules:
    - {id: demo-tools, match: {tools: ["demo__*"]}, effect: allow}
"""


def _tls(files: Files) -> GrpcTls:
    loaded = grpc_tls(CommonSettings(**files.settings()))
    assert loaded is not None
    return loaded


@contextlib.asynccontextmanager
async def _stack(
    home: Path, upstream: DemoUpstream, services: Files, proxy: Files | None
) -> AsyncIterator[tuple[ProxyClient, inprocess.Running]]:
    """The four services, policy, verifier and graph with `services`' certificate, the proxy
    with `proxy`'s (None: none, plaintext)."""
    (home / "policy.yaml").write_text(ALLOW_DEMO)
    app = inprocess.app_config(upstream.url, home / "policy.yaml")
    tls = {} if proxy is None else proxy.settings()
    async with inprocess.stack(home, app, backend_settings=services.settings(), **tls) as running:
        yield ProxyClient(home, running.proxy, running.graph), running


async def _score(channel: grpc.aio.Channel, metadata: Any) -> str:
    request = verifier_pb2.ScoreRequest(action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, tool="x"))
    reply = await verifier_pb2_grpc.VerifierStub(channel).Score(request, metadata=metadata, timeout=5)
    return str(reply.scorer)


async def _refused(channel: grpc.aio.Channel, metadata: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _score(channel, metadata)
    return refused.value.code()


async def test_every_link_over_mutual_tls_governs_records_and_refuses_strangers(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    ca = new_ca()
    services = issue(ca, tmp_path / "pki", "service")
    proxy = issue(ca, tmp_path / "pki", "proxy")
    async with _stack(tmp_path, upstream, services, proxy) as (client, running):
        answer = await client.post(
            tool_call("add", {"a": 2, "b": 3}), headers(client.token("agent-mtls"), workflow="wf-mtls")
        )
        assert answer.json()["result"]["structuredContent"] == {"result": 5}, answer.text
        # Shipped to the graph over its TLS link, decided over the policy's and verifier's.
        (node,) = await client.nodes("wf-mtls", 1, where=lambda node: node["node_type"] == "ACTION")
        assert node["outcome"] == "FORWARDED"
        assert node["decision"]["effect"] == "ALLOW"

        token = auth_metadata(ensure_service_token(tmp_path, None))
        stranger = issue(new_ca("another-ca"), tmp_path / "pki", "stranger")
        good = _tls(proxy)
        # A certificate from another CA, trusting ours: the server refuses it in the handshake.
        foreign = GrpcTls(_tls(stranger).certificate_chain, _tls(stranger).private_key, good.root_certificates)
        # No client certificate at all.
        anonymous = grpc.ssl_channel_credentials(root_certificates=good.root_certificates)
        for address in (running.policy_grpc, running.verifier_grpc, running.graph_grpc):
            assert await check_health(address, timeout=5, tls=good)
            assert not await check_health(address, timeout=2)  # plaintext
            assert not await check_health(address, timeout=2, tls=foreign)
            async with grpc.aio.secure_channel(address, anonymous) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        async with open_channel(running.verifier_grpc, good) as channel:
            assert (await _score(channel, token)).startswith("reference/")
            # The certificate does not stand in for the token.
            assert await _refused(channel, ()) == grpc.StatusCode.UNAUTHENTICATED
            assert await _refused(channel, auth_metadata("x" * 32)) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_proxy_without_the_certificates_blocks_every_call(tmp_path: Path, upstream: DemoUpstream) -> None:
    ca = new_ca()
    services = issue(ca, tmp_path / "pki", "service")
    async with _stack(tmp_path, upstream, services, proxy=None) as (client, _):
        answer = await client.post(tool_call("add", {"a": 2, "b": 3}), headers(client.token("agent-plain")))
    error = answer.json()["error"]
    assert error["code"] == -32003, answer.text
    assert error["data"]["rule_id"] == "bastion.policy_unavailable"


async def test_a_client_refuses_a_server_whose_certificate_does_not_name_its_host(tmp_path: Path) -> None:
    ca = new_ca()
    elsewhere = issue(ca, tmp_path / "pki", "elsewhere", hosts=("policy.other.example",))
    client = _tls(issue(ca, tmp_path / "pki", "client"))
    server = await start_grpc_server("127.0.0.1:0", token="t" * 32, register=[], service_names=[], tls=_tls(elsewhere))
    try:
        assert not await check_health(server.address, timeout=2, tls=client)
    finally:
        await server.stop(0)


async def test_a_refused_certificate_is_named_in_the_block_reason(tmp_path: Path, upstream: DemoUpstream) -> None:
    # A third probe's note: with the peers' certificates wrong the proxy blocked as if the
    # policy service were down ("not reachable"), and nothing pointed at the certificates.
    services = issue(new_ca(), tmp_path / "pki", "service")
    # The proxy trusts another CA: it refuses the services' certificates in the handshake.
    stranger = issue(new_ca("another-ca"), tmp_path / "pki", "stranger")
    async with _stack(tmp_path, upstream, services, proxy=stranger) as (client, _):
        answer = await client.post(tool_call("add", {"a": 2, "b": 3}), headers(client.token("agent-stranger")))
    error = answer.json()["error"]
    assert error["code"] == -32003, answer.text
    assert error["data"]["rule_id"] == "bastion.policy_unavailable"
    assert "TLS handshake failed" in error["data"]["reason"]
    assert "127.0.0.1" not in error["data"]["reason"]
