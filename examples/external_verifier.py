"""Blocks every tool named *delete*. Run: BASTION_SERVICE_TOKEN=<t> python examples/external_verifier.py --port N
Implements Score only: ScoreStream, ScoreBatchStream are optional (UNIMPLEMENTED: the proxy then uses Score)."""

import argparse
import asyncio
import hmac
import os
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bastion.v1 import verifier_pb2, verifier_pb2_grpc


class DeleteGuard(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

    async def Score(self, request: verifier_pb2.ScoreRequest, context: Any) -> verifier_pb2.ScoreResponse:
        await self.authenticate(context)
        if "delete" not in request.action.tool.lower():
            return verifier_pb2.ScoreResponse(threshold=0.5, verdict=verifier_pb2.PASS, scorer="delete-guard/1")
        reason = f"{request.action.server}__{request.action.tool} deletes data"
        return verifier_pb2.ScoreResponse(
            deviation_score=1.0, threshold=0.5, verdict=verifier_pb2.BLOCK, reasons=[reason], scorer="delete-guard/1"
        )

    async def Info(self, request: object, context: Any) -> verifier_pb2.VerifierInfo:
        await self.authenticate(context)
        return verifier_pb2.VerifierInfo(name="delete-guard", version="1", signals=["tool_name"], default_threshold=0.5)

    async def authenticate(self, context: Any) -> None:
        presented = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(str(presented).encode(), self.expected):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid service token")


async def start(port: int, token: str) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    verifier_pb2_grpc.add_VerifierServicer_to_server(DeleteGuard(token), server)  # type: ignore[abstract]
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    reflection.enable_server_reflection(["bastion.v1.Verifier", health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def main(port: int) -> None:
    server, _ = await start(port, os.environ["BASTION_SERVICE_TOKEN"])
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=50062)
    asyncio.run(main(parser.parse_args().port))
