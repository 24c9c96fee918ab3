"""The bastion.v1.Verifier gRPC servicer around the reference scorer.

Authentication is not here: the service-token interceptor of bastion._rpc runs before
every handler. Errors are: a request without an action is INVALID_ARGUMENT, a scorer
failure is INTERNAL; either way the proxy applies the policy's verifier fallback.

With BASTION_VERIFIER_SEMANTIC on, the semantic_drift signal of each request (an embedding:
tens of milliseconds) is computed in a worker thread first, so the event loop keeps serving
other calls meanwhile; the rest of scoring stays on the loop, where the sequence model lives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf import empty_pb2

from bastion._rpc import batch_too_large
from bastion.v1 import verifier_pb2, verifier_pb2_grpc

from ._engine import NAME, VERSION, ReferenceScorer
from ._metrics import VerifierMetrics

log = logging.getLogger("bastion.verifier")

SERVICE_NAME: str = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name
#: A request's semantic_drift, as computed off the loop: (weight, reason), None when off, or
#: the exception computing it raised.
_Semantic = tuple[float, str] | Exception | None


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, scorer: ReferenceScorer, metrics: VerifierMetrics | None = None) -> None:
        self._scorer = scorer
        self._metrics = metrics or VerifierMetrics()
        # Info never changes for the life of the process, so it is built once.
        self._info = verifier_pb2.VerifierInfo(
            name=NAME,
            version=VERSION,
            signals=scorer.signals,
            default_threshold=scorer.config.threshold,
        )

    async def Score(
        self,
        request: verifier_pb2.ScoreRequest,
        context: grpc.aio.ServicerContext[verifier_pb2.ScoreRequest, verifier_pb2.ScoreResponse],
    ) -> verifier_pb2.ScoreResponse:
        if not request.HasField("action"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ScoreRequest.action is required")
        started = time.perf_counter()
        try:
            # Scoring takes tens of microseconds, so it runs on the event loop: handing it
            # to a thread would cost more than it does. A padded request is held to the
            # scan budgets of _engine (MAX_STRING_BYTES), not scanned in full. Only the
            # optional semantic signal, which costs milliseconds, goes to a thread.
            [semantic] = await self._semantic([request])
            if isinstance(semantic, Exception):
                raise semantic
            response = self._scorer.score(request) if semantic is None else self._scorer.score(request, semantic)
        except Exception as exc:
            self._metrics.failed(time.perf_counter() - started)
            log.exception("reference scorer failed", extra={"fields": {"node_id": request.node_id}})
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"reference scorer failed on node {request.node_id or '?'}: {type(exc).__name__}: {exc}; "
                "the caller must apply its verifier fallback",
            )
        self._metrics.scored(response.verdict, time.perf_counter() - started)
        return response

    async def ScoreStream(
        self,
        request_iterator: AsyncIterator[verifier_pb2.ScoreRequest],
        context: grpc.aio.ServicerContext[verifier_pb2.ScoreRequest, verifier_pb2.ScoreResponse],
    ) -> AsyncIterator[verifier_pb2.ScoreResponse]:
        # One long-lived stream, answers matched by request_id. A failure on one request
        # must not end the stream for every other action, so it is answered with no
        # verdict, which the proxy treats as a verifier failure (fallback).
        async for request in request_iterator:
            [semantic] = await self._semantic([request])
            yield self._score_one(request, semantic)

    async def ScoreBatchStream(
        self,
        request_iterator: AsyncIterator[verifier_pb2.ScoreBatchRequest],
        context: grpc.aio.ServicerContext[verifier_pb2.ScoreBatchRequest, verifier_pb2.ScoreBatchResponse],
    ) -> AsyncIterator[verifier_pb2.ScoreBatchResponse]:
        # The proxy's hot path: as ScoreStream, with every request that waited at the
        # proxy in one message, so one gRPC message serves many calls under load.
        async for batch in request_iterator:
            requests = batch.requests
            if (refused := batch_too_large(len(requests))) is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused)
            semantic = await self._semantic(requests)
            yield verifier_pb2.ScoreBatchResponse(
                responses=[self._score_one(request, signal) for request, signal in zip(requests, semantic, strict=True)]
            )

    async def _semantic(self, requests: Sequence[verifier_pb2.ScoreRequest]) -> list[_Semantic]:
        """Each request's semantic_drift (weight, reason), computed in a worker thread; None when
        it is off. A failure is kept for that request alone, and raised when it is scored."""
        if not self._scorer.config.semantic:
            return [None] * len(requests)
        return await asyncio.to_thread(lambda: [self._semantic_one(request) for request in requests])

    def _semantic_one(self, request: verifier_pb2.ScoreRequest) -> _Semantic:
        if not request.HasField("action"):
            return None
        try:
            return self._scorer.semantic_signal(request)
        except Exception as exc:
            return exc

    def _score_one(self, request: verifier_pb2.ScoreRequest, semantic: _Semantic = None) -> verifier_pb2.ScoreResponse:
        started = time.perf_counter()
        try:
            if not request.HasField("action"):
                raise ValueError("ScoreRequest.action is required")
            if isinstance(semantic, Exception):
                raise semantic
            response = self._scorer.score(request) if semantic is None else self._scorer.score(request, semantic)
            self._metrics.scored(response.verdict, time.perf_counter() - started)
        except Exception as exc:
            self._metrics.failed(time.perf_counter() - started)
            log.exception("reference scorer failed", extra={"fields": {"node_id": request.node_id}})
            response = verifier_pb2.ScoreResponse(
                verdict=verifier_pb2.VERDICT_UNSPECIFIED,
                reasons=[f"reference scorer failed: {type(exc).__name__}: {exc}"],
                scorer=f"{NAME}/{VERSION}",
            )
        response.request_id = request.ctx.request_id
        return response

    async def Info(
        self,
        request: empty_pb2.Empty,
        context: grpc.aio.ServicerContext[empty_pb2.Empty, verifier_pb2.VerifierInfo],
    ) -> verifier_pb2.VerifierInfo:
        return self._info
