"""Requests that do not deserialize are INVALID_ARGUMENT, on every method of every server.

grpc deserializes a request before (unary) or while (streaming) the servicer runs, and
turns a protobuf `DecodeError` into UNKNOWN "Unexpected <class ...>", which callers
retry as a server fault. One server interceptor wraps each method handler instead:

- a unary request that does not decode reaches the handler as an `_Undecodable` value,
  and the wrapped behavior aborts with INVALID_ARGUMENT before the servicer runs;
- a streamed request that does not decode raises `_Undecodable` out of the request
  iterator (or `context.read()`), through the servicer, to the wrapped behavior, which
  aborts. Raising rather than yielding a sentinel costs nothing per message: no
  iterator wrapper, no extra await. It asks one thing of servicers, which every
  Bastion servicer does: let exceptions of the request stream propagate.

Response streams are driven with `context.write`, exactly as grpc drives them, so
wrapping adds no await per response either. Wrapped handlers are built once per
method and reused.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Never, TypeAlias

import grpc
from google.protobuf.message import DecodeError

_Context = grpc.aio.ServicerContext[Any, Any]
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs
# Protobuf's own messages are short; the bound keeps any other deserializer's from
# filling the status trailer.
_MAX_CAUSE = 200


class _Undecodable(Exception):
    """A request whose bytes are not the method's message: returned for a unary
    request, raised for a streamed one."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


class UndecodableRequestInterceptor(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT, naming the request type, to a request that does not decode."""

    def __init__(self) -> None:
        # method -> (handler as resolved, its wrapped form). Only resolved methods are
        # kept, so the map is bounded by the services registered, not by callers.
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = guard(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def guard(handler: _Handler, method: str) -> _Handler:
    """`handler` with a request that does not decode answered INVALID_ARGUMENT.

    Handlers that take raw bytes (no deserializer) cannot fail to decode, and a sync
    behavior runs in grpc's thread pool, where these async wrappers do not belong:
    both are returned as they are."""
    decode = handler.request_deserializer
    behavior = _behavior(handler)
    if decode is None or not _is_async(behavior):
        return handler
    what = f"the request to {method} is not a valid {_type_name(decode, method)} message"
    if not handler.request_streaming:
        unary = _returning(decode, what)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_unary_stream(behavior), unary, handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(_unary_unary(behavior), unary, handler.response_serializer)
    streamed = _raising(decode, what)
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_stream_stream(behavior), streamed, handler.response_serializer)
    return grpc.stream_unary_rpc_method_handler(_stream_unary(behavior), streamed, handler.response_serializer)


def _behavior(handler: _Handler) -> Callable[..., Any]:
    behavior = {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    assert behavior is not None, "grpc method handler without a behavior for its shape"
    return behavior


def _is_async(behavior: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def _type_name(decode: Callable[[bytes], Any], method: str) -> str:
    # Generated stubs pass `Message.FromString`, bound to the message class.
    descriptor = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", f"request of {method}"))


def _because(what: str, exc: DecodeError) -> str:
    return f"{what} ({str(exc)[:_MAX_CAUSE]}); check that the client sends bastion.v1 messages"


def _returning(decode: Callable[[bytes], Any], what: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as exc:
            return _Undecodable(_because(what, exc))

    return deserialize


def _raising(decode: Callable[[bytes], Any], what: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as exc:
            raise _Undecodable(_because(what, exc)) from exc

    return deserialize


async def _refuse(context: _Context, undecodable: _Undecodable) -> Never:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, undecodable.details)


def _unary_unary(behavior: Callable[..., Any]) -> Callable[[Any, _Context], Awaitable[Any]]:
    async def unary_unary(request: Any, context: _Context) -> Any:
        if type(request) is _Undecodable:
            await _refuse(context, request)
        return await behavior(request, context)

    return unary_unary


def _unary_stream(behavior: Callable[..., Any]) -> Callable[[Any, _Context], Awaitable[None]]:
    respond = _responder(behavior)

    async def unary_stream(request: Any, context: _Context) -> None:
        if type(request) is _Undecodable:
            await _refuse(context, request)
        await respond(request, context)

    return unary_stream


def _stream_unary(behavior: Callable[..., Any]) -> Callable[[AsyncIterator[Any], _Context], Awaitable[Any]]:
    async def stream_unary(requests: AsyncIterator[Any], context: _Context) -> Any:
        try:
            return await behavior(requests, context)
        except _Undecodable as undecodable:
            await _refuse(context, undecodable)

    return stream_unary


def _stream_stream(behavior: Callable[..., Any]) -> Callable[[AsyncIterator[Any], _Context], Awaitable[None]]:
    respond = _responder(behavior)

    async def stream_stream(requests: AsyncIterator[Any], context: _Context) -> None:
        try:
            await respond(requests, context)
        except _Undecodable as undecodable:
            await _refuse(context, undecodable)

    return stream_stream


def _responder(behavior: Callable[..., Any]) -> Callable[[Any, _Context], Awaitable[None]]:
    """Run a response-streaming behavior as grpc does: await a reader/writer coroutine;
    write each answer of an async generator."""
    if inspect.iscoroutinefunction(behavior):
        return behavior

    async def respond(request: Any, context: _Context) -> None:
        async with aclosing(behavior(request, context)) as responses:
            async for response in responses:
                await context.write(response)

    return respond
