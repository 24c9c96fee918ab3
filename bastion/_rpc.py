"""gRPC plumbing shared by every service: servers with health, reflection and the
service-token check; long-lived client channels with the token attached.

The token check is one server interceptor, not code in each handler. Health and
reflection stay open so orchestrators can probe without the secret. A second
interceptor (bastion._rpc_decode) answers INVALID_ARGUMENT to a request that does not
deserialize, where grpc would answer UNKNOWN.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ._errors import ConfigError
from ._rpc_decode import UndecodableRequestInterceptor
from ._settings import format_addr, parse_addr
from ._tls import GrpcTls

_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

#: Requests one batch message (DecideBatch, DecideBatchStream, ScoreBatchStream) may carry.
#: The proxy sends at most 64; 729,000 in one 16 MiB message held the policy service's loop
#: for 16-34 s at 1.5 GB, and every other caller's decision missed its deadline (an
#: attacker's probe with the service token). Over it: INVALID_ARGUMENT.
MAX_BATCH_REQUESTS = 1024


def batch_too_large(count: int) -> str | None:
    """Why a batch message of `count` requests is refused, or None."""
    if count <= MAX_BATCH_REQUESTS:
        return None
    return f"{count} requests in one batch message; at most {MAX_BATCH_REQUESTS}: send smaller batches"


# Keepalive so a long-lived channel notices a dead peer instead of hanging the hot path.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # gRPC's own reconnect backoff grows to 120 s (x1.6 per failed attempt): after a peer's
    # outage of a minute or two, the channel would stay down for up to two more minutes
    # once the peer is back (measured: down 90 s -> first success 39 s after it returned),
    # whatever the caller's retry schedule. Retry the connection at least every 2 s.
    ("grpc.max_reconnect_backoff_ms", 2_000),
)
_SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    # grpc binds with SO_REUSEPORT by default, which lets a second server start
    # silently on a port already in use and steal half its calls.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
)


_DENIED = "missing or invalid service token (send metadata 'authorization: Bearer <token>')"


async def _abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)


# grpc runs a handler according to its streaming shape, so the refusal must have the
# same shape as the method it replaces.
_REFUSALS: dict[tuple[bool, bool], grpc.RpcMethodHandler[Any, Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler(_abort),
    (False, True): grpc.unary_stream_rpc_method_handler(_abort),
    (True, False): grpc.stream_unary_rpc_method_handler(_abort),
    (True, True): grpc.stream_stream_rpc_method_handler(_abort),
}


class ServiceTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls whose `authorization` metadata is not `Bearer <token>` (the service token,
    or the verifier's own) or `Bearer <one of also>` (a second token, while one is rotated)."""

    def __init__(self, token: str, *also: str) -> None:
        self._expected = tuple(f"Bearer {accepted}".encode() for accepted in (token, *also))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_PREFIXES):
            return handler
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                # Every accepted token compared, so the time taken says nothing of which matched.
                matched = [hmac.compare_digest(presented, expected) for expected in self._expected]
                if any(matched):
                    return handler
                break
        return _REFUSALS[(bool(handler.request_streaming), bool(handler.response_streaming))]


@dataclass(slots=True)
class GrpcServer:
    server: grpc.aio.Server
    health: HealthServicer
    address: str

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(
    addr: str,
    *,
    token: str,
    register: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: Iterable[str],
    also_accepted: tuple[str, ...] = (),
    tls: GrpcTls | None = None,
) -> GrpcServer:
    """Bind `addr` (port 0 picks a free port), add health + reflection, start serving.
    Calls must carry `token` (or one of `also_accepted`); with `tls`, only over mutual TLS."""
    # The token check is outermost: its refusal replaces the guarded handler whole, so a
    # caller without the token learns nothing, not even whether its bytes would decode.
    interceptors = [ServiceTokenInterceptor(token, *also_accepted), UndecodableRequestInterceptor()]
    server = grpc.aio.server(interceptors=interceptors, options=_SERVER_OPTIONS)
    for add in register:
        add(server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    host, _ = parse_addr(addr)
    try:
        port = server.add_insecure_port(addr) if tls is None else server.add_secure_port(addr, tls.server_credentials())
    except RuntimeError as exc:  # grpc's way of saying the bind failed
        raise ConfigError(f"cannot listen on {addr}: {exc}") from exc
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcServer(server=server, health=health_servicer, address=format_addr(host, port))


def open_channel(addr: str, tls: GrpcTls | None = None) -> grpc.aio.Channel:
    """A long-lived channel; open once per process and reuse (DESIGN §14). With `tls`, over
    mutual TLS: the server's certificate must chain to the CA and name `addr`'s host."""
    if tls is None:
        return grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(addr, tls.channel_credentials(), options=CHANNEL_OPTIONS)


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def check_health(addr: str, timeout: float = 1.0, tls: GrpcTls | None = None) -> bool:
    """True when the server at `addr` reports SERVING."""
    async with open_channel(addr, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
