"""The verifier's HTTP side: `/metrics`, `/healthz`, `/readyz` on BASTION_VERIFIER_METRICS_ADDR.

A raw ASGI app rather than FastAPI: three fixed GET routes with no data, no auth and no
body. Like the ops routes of the other services (bastion._rest.OPS_PATHS) they answer any
Host: they show counters, never workflow data. 404 and 405 use the one error body of
bastion._rest.

    GET /healthz   200 {"status": "ok"}: the process is up
    GET /readyz    200 {"status": "ready"} while the gRPC server is serving, else 503
                   {"status": "not serving scores"} (as the policy service's /readyz)
    GET /metrics   Prometheus text exposition
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.types import Receive, Scope, Send

from bastion._rest import error_response

from ._metrics import VerifierMetrics

_JSON = b"application/json"


class OpsApp:
    def __init__(self, metrics: VerifierMetrics, is_ready: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._is_ready = is_ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path not in ("/healthz", "/readyz", "/metrics"):
            await error_response(404, "bastion.not_found", f"no route {path}; try /metrics")(scope, receive, send)
        elif scope["method"] not in ("GET", "HEAD"):
            await error_response(405, "bastion.method_not_allowed", f"{path} answers GET only", {"allow": "GET"})(
                scope, receive, send
            )
        elif path == "/metrics":
            body, content_type = self._metrics.exposition()
            await _send(send, 200, body, content_type.encode())
        elif path == "/healthz":
            await _send(send, 200, orjson.dumps({"status": "ok"}), _JSON)
        elif self._is_ready():
            await _send(send, 200, orjson.dumps({"status": "ready"}), _JSON)
        else:
            await _send(send, 503, orjson.dumps({"status": "not serving scores"}), _JSON)


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
