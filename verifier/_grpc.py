"""The bastion.v1.Verifier gRPC servicer around the reference scorer.

Authentication is not here: the service-token interceptor of bastion._rpc runs before
every handler. Errors are: a request without an action is INVALID_ARGUMENT, a scorer
failure is INTERNAL; either way the proxy applies the policy's verifier fallback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2

from bastion.v1 import verifier_pb2, verifier_pb2_grpc

from ._engine import NAME, SIGNALS, VERSION, ReferenceScorer
from ._metrics import VerifierMetrics

log = logging.getLogger("bastion.verifier")

SERVICE_NAME: str = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, scorer: ReferenceScorer, metrics: VerifierMetrics | None = None) -> None:
        self._scorer = scorer
        self._metrics = metrics or VerifierMetrics()
        # Info never changes for the life of the process, so it is built once.
        self._info = verifier_pb2.VerifierInfo(
            name=NAME,
            version=VERSION,
            signals=SIGNALS,
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
            # scan budgets of _engine (MAX_STRING_BYTES), not scanned in full.
            response = self._scorer.score(request)
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
            yield self._score_one(request)

    async def ScoreBatchStream(
        self,
        request_iterator: AsyncIterator[verifier_pb2.ScoreBatchRequest],
        context: grpc.aio.ServicerContext[verifier_pb2.ScoreBatchRequest, verifier_pb2.ScoreBatchResponse],
    ) -> AsyncIterator[verifier_pb2.ScoreBatchResponse]:
        # The proxy's hot path: as ScoreStream, with every request that waited at the
        # proxy in one message, so one gRPC message serves many calls under load.
        async for batch in request_iterator:
            yield verifier_pb2.ScoreBatchResponse(responses=[self._score_one(request) for request in batch.requests])

    def _score_one(self, request: verifier_pb2.ScoreRequest) -> verifier_pb2.ScoreResponse:
        started = time.perf_counter()
        try:
            if not request.HasField("action"):
                raise ValueError("ScoreRequest.action is required")
            response = self._scorer.score(request)
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
