"""BASTION_VERIFIER_TOKEN: the verifier holds a credential of its own, not the service token.

DESIGN §3 has the proxy send the verifier the service token, which also writes events and
audit records to the graph and reads API key digests from the policy service; a verifier
is pluggable, so whoever runs one held all of that. With the token set, the proxy sends
it to the verifier (and to the chained ones without BASTION_VERIFIER_CHAIN_TOKEN), the
reference verifier accepts it and nothing else, and no other service accepts it. Real
services on port 0, real gRPC."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixtures import inprocess
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream

from bastion._appconfig import AppConfig
from bastion._errors import ConfigError
from bastion._identity import ensure_service_token
from bastion._rpc import auth_metadata, open_channel
from bastion._settings import check_token
from bastion._verdicts import VERIFIER_UNAVAILABLE
from bastion.v1 import graph_pb2, graph_pb2_grpc, policy_pb2, policy_pb2_grpc, verifier_pb2, verifier_pb2_grpc

ALLOW_ALL = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: verifier-token, version: 1}
spec:
  default: deny
  rules:
    - {id: demo-tools, match: {tools: ["demo__*"]}, effect: allow}
"""
TOKEN = "verifier-only-secret-0123456789"
NAME = "BASTION_VERIFIER_TOKEN"


@contextlib.asynccontextmanager
async def _stack(
    home: Path, upstream: DemoUpstream, *, proxy_token: str | None, verifier_token: str | None, **proxy: Any
) -> AsyncIterator[tuple[ProxyClient, inprocess.Running]]:
    """The in-process stack with each side's BASTION_VERIFIER_TOKEN as given."""
    (home / "policy.yaml").write_text(ALLOW_ALL)
    app = inprocess.app_config(upstream.url, home / "policy.yaml")
    verifier_settings = {} if verifier_token is None else {"verifier_token": verifier_token}
    proxy_settings = {**proxy, **({} if proxy_token is None else {"verifier_token": proxy_token})}
    async with inprocess.stack(home, app, verifier_settings=verifier_settings, **proxy_settings) as running:
        yield ProxyClient(home, running.proxy, running.graph), running


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code()


async def test_the_verifier_gets_its_own_token_which_no_other_service_accepts(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    async with _stack(tmp_path, upstream, proxy_token=TOKEN, verifier_token=TOKEN) as (client, running):
        answer = (await client.post(tool_call("add", {"a": 1, "b": 2}), headers(client.token("agent-tok")))).json()
        assert answer["result"]["structuredContent"] == {"result": 3}, answer
        service = auth_metadata(ensure_service_token(tmp_path, None))
        own = auth_metadata(TOKEN)
        addresses = {"p": running.policy_grpc, "v": running.verifier_grpc, "g": running.graph_grpc}
        channels = {name: open_channel(address) for name, address in addresses.items()}
        try:
            scoring = verifier_pb2_grpc.VerifierStub(channels["v"])
            request = verifier_pb2.ScoreRequest(action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, tool="x"))
            assert (await scoring.Score(request, metadata=own, timeout=10)).scorer.startswith("reference/")
            # The verifier takes its token and no other, not even the service token.
            assert await _code(scoring.Score(request, metadata=service, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
            # What the token is worth elsewhere: nothing.
            decide = policy_pb2_grpc.PolicyServiceStub(channels["p"]).Decide(
                policy_pb2.DecideRequest(), metadata=own, timeout=10
            )
            assert await _code(decide) == grpc.StatusCode.UNAUTHENTICATED
            ingest = graph_pb2_grpc.GraphServiceStub(channels["g"]).IngestBatch(
                graph_pb2.EventBatch(), metadata=own, timeout=10
            )
            assert await _code(ingest) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            for channel in channels.values():
                await channel.close()


async def test_a_second_token_is_accepted_beside_the_first_and_nothing_else(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    new = "the-new-verifier-token-0123456789"
    (tmp_path / "policy.yaml").write_text(ALLOW_ALL)
    app = inprocess.app_config(upstream.url, tmp_path / "policy.yaml")
    rotating = {"verifier_token": new, "verifier_second_token": TOKEN}
    # A proxy not yet moved to the new token still sends the old one.
    async with inprocess.stack(tmp_path, app, verifier_settings=rotating, verifier_token=TOKEN) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        answer = (await client.post(tool_call("add", {"a": 1, "b": 2}), headers(client.token("agent-tok")))).json()
        assert answer["result"]["structuredContent"] == {"result": 3}, answer
        channel = open_channel(running.verifier_grpc)
        try:
            scoring = verifier_pb2_grpc.VerifierStub(channel)
            request = verifier_pb2.ScoreRequest(action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, tool="x"))
            for accepted in (new, TOKEN):
                assert (await scoring.Score(request, metadata=auth_metadata(accepted), timeout=10)).scorer
            service = auth_metadata(ensure_service_token(tmp_path, None))
            for refused in (service, auth_metadata(new + "x"), auth_metadata(TOKEN[:-1])):
                code = await _code(scoring.Score(request, metadata=refused, timeout=10))
                assert code == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await channel.close()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"verifier_second_token": TOKEN}, "BASTION_VERIFIER_SECOND_TOKEN is set without BASTION_VERIFIER_TOKEN"),
        ({"verifier_token": TOKEN, "verifier_second_token": "short"}, "BASTION_VERIFIER_SECOND_TOKEN must be at"),
        ({"verifier_token": TOKEN, "verifier_second_token": "the service"}, "_SECOND_TOKEN must differ from the"),
    ],
)
async def test_a_second_token_is_held_to_the_same_rules(
    tmp_path: Path, upstream: DemoUpstream, settings: dict[str, str], problem: str
) -> None:
    if settings.get("verifier_second_token") == "the service":
        settings = {**settings, "verifier_second_token": ensure_service_token(tmp_path, None)}
    with pytest.raises(ConfigError, match=problem):
        async with inprocess.verifier(tmp_path, AppConfig(), **settings):
            pass


@pytest.mark.parametrize(("proxy_token", "verifier_token"), [(TOKEN, None), (None, TOKEN)])
async def test_a_token_set_on_one_side_only_fails_closed(
    tmp_path: Path, upstream: DemoUpstream, proxy_token: str | None, verifier_token: str | None
) -> None:
    async with _stack(tmp_path, upstream, proxy_token=proxy_token, verifier_token=verifier_token) as running:
        client = running[0]
        answer = (await client.post(tool_call("add", {"a": 1, "b": 2}), headers(client.token("agent-tok")))).json()
    assert answer["error"]["data"]["rule_id"] == VERIFIER_UNAVAILABLE, answer
    assert "UNAUTHENTICATED" in answer["error"]["data"]["reason"], answer


async def test_chained_verifiers_get_the_verifier_token_when_they_have_none_of_their_own(
    tmp_path: Path, upstream: DemoUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    spec = importlib.util.spec_from_file_location("external_verifier_own", ROOT / "examples" / "external_verifier.py")
    assert spec is not None
    assert spec.loader is not None
    example: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    server, port = await example.start(0, TOKEN)  # accepts this token and no other
    try:
        async with _stack(
            tmp_path, upstream, proxy_token=TOKEN, verifier_token=TOKEN, verifier_chain=f"127.0.0.1:{port}"
        ) as running:
            client = running[0]
            answer = (await client.post(tool_call("add", {"a": 1, "b": 2}), headers(client.token("agent-tok")))).json()
    finally:
        await server.stop(None)
    assert answer["result"]["structuredContent"] == {"result": 3}, answer
    # Nobody is sent the service token; that the chain can call the verifier is said.
    assert "are sent the service token" not in caplog.text
    assert "are sent BASTION_VERIFIER_TOKEN" in caplog.text


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("short-token", "at least 16 characters"),
        ("same-as-the-service-token-0123", "must differ from the service token"),
    ],
)
@pytest.mark.parametrize("side", ["proxy", "verifier"])
async def test_a_short_token_or_the_service_token_itself_stops_the_start(
    tmp_path: Path, upstream: DemoUpstream, side: str, token: str, problem: str
) -> None:
    service = ensure_service_token(tmp_path, None)
    token = service if token.startswith("same-as") else token
    with pytest.raises(ConfigError, match=problem):
        async with _stack(
            tmp_path,
            upstream,
            proxy_token=token if side == "proxy" else None,
            verifier_token=token if side == "verifier" else None,
        ):
            pass


@pytest.mark.parametrize("variant", ["", " ", "x" * 15, "é" * 8])
def test_the_token_check_counts_characters_and_refuses_what_is_too_short(variant: str) -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        check_token(variant, NAME, "some-service-token")


@pytest.mark.parametrize(
    ("variant", "problem"),
    [
        ("a" * 1025, "at most 1024"),
        ("sixteen-chars-and one space", "visible ASCII"),
        ("sixteen-chars\nand-a-newline-inside", "visible ASCII"),
        ("sixteen-chars-and-a-tab\t-too", "visible ASCII"),
        ("sixteen-chars-and-\x00-nul", "visible ASCII"),
        ("sixteen-chars-and-é-accent", "visible ASCII"),
        ("sixteen-chars-and-\u200b-zero-width", "visible ASCII"),
        ("".join(chr(0xFF00 + ord(c) - 0x20) for c in "fullwidth-token-xx"), "visible ASCII"),
    ],
)
def test_the_token_check_refuses_what_grpc_metadata_cannot_carry(variant: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        check_token(variant, NAME, "some-service-token")


def test_the_token_check_refuses_the_service_token_and_accepts_another() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        check_token("a-service-token-of-length", NAME, "a-service-token-of-length")
    assert check_token("a-verifier-token-of-length", NAME, "a-service-token") == "a-verifier-token-of-length"
    # A Secret made --from-file of `openssl rand -base64 32 > file` ends in a newline.
    assert check_token("a-verifier-token-of-length\r\n", NAME, "a-service-token") == "a-verifier-token-of-length"
    with pytest.raises(ConfigError, match="must differ"):
        check_token("a-service-token-of-length\n", NAME, "a-service-token-of-length")
    check_token("x" * 1024, NAME, "a-service-token-of-length")
    check_token("Base64+/Token=~!#$%&'()*,-.:;<>?@[]^_`{|}", NAME, "a-service-token-of-length")


SECOND = "the-second-service-token-0123456789"


@pytest.mark.parametrize("service", ["policy", "graph", "verifier"])
async def test_a_second_service_token_is_accepted_beside_the_service_token(tmp_path: Path, service: str) -> None:
    # BASTION_SERVICE_SECOND_TOKEN: the service token rotated without a gap, as the verifier's.
    started = {"policy": inprocess.policy, "graph": inprocess.graph, "verifier": inprocess.verifier}[service]
    async with started(tmp_path, AppConfig(), service_second_token=SECOND) as addresses:
        channel = open_channel(addresses["grpc"])
        try:

            def call(metadata: tuple[tuple[str, str], ...]) -> Any:
                return _guarded_call(service, channel, metadata)

            for accepted in (ensure_service_token(tmp_path, None), SECOND):
                await call(auth_metadata(accepted))  # answered: not UNAUTHENTICATED
            for refused in (SECOND[:-1], SECOND + "x", TOKEN):
                assert await _code(call(auth_metadata(refused))) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await channel.close()


@pytest.mark.parametrize("service", ["policy", "graph", "verifier"])
async def test_a_short_second_service_token_stops_the_start(tmp_path: Path, service: str) -> None:
    started = {"policy": inprocess.policy, "graph": inprocess.graph, "verifier": inprocess.verifier}[service]
    with pytest.raises(ConfigError, match="BASTION_SERVICE_SECOND_TOKEN must be at least 16"):
        async with started(tmp_path, AppConfig(), service_second_token="short"):
            pass


def _guarded_call(service: str, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Any:
    """One call to a guarded method of `service`, which answers anyone holding its token."""
    if service == "policy":
        decide = policy_pb2_grpc.PolicyServiceStub(channel).Decide
        return decide(policy_pb2.DecideRequest(), metadata=metadata, timeout=10)
    if service == "graph":
        ingest = graph_pb2_grpc.GraphServiceStub(channel).IngestBatch
        return ingest(graph_pb2.EventBatch(), metadata=metadata, timeout=10)
    request = verifier_pb2.ScoreRequest(action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, tool="x"))
    return verifier_pb2_grpc.VerifierStub(channel).Score(request, metadata=metadata, timeout=10)
