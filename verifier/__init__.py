"""bastion.verifier: the pluggable verifier service (gRPC bastion.v1.Verifier, default port 50052;
/metrics, /healthz and /readyz on BASTION_VERIFIER_METRICS_ADDR, default port 9464).

The proxy asks the verifier how far an action deviates from what the workflow has been
doing, concurrently with the policy decision. This package ships the reference
implementation; anyone can replace it by serving the same proto (see INTERFACE.md).

Public surface:

- `main(config=None) -> int` runs `bastion verifier serve` until SIGTERM/SIGINT.
- `serve(settings, app, ready, stop)` is the same service inside a running event loop.
- `VerifierSettings` is the frozen settings object (`BASTION_VERIFIER_*` env vars).
- `ScorerConfig` holds the reference scorer's threshold and weights (the sequence
  model's bounds are in `VerifierSettings`).
- `ReferenceScorer(config, sequence_model).score(request)` is the deterministic scorer; its
  only state is the per-agent sequence model it learns from request histories.
- `VerifierServicer(scorer)` is the grpc.aio servicer for Score and Info.
"""

from ._config import VerifierSettings
from ._engine import ReferenceScorer, ScorerConfig
from ._grpc import VerifierServicer
from ._server import main, serve

__all__ = ["ReferenceScorer", "ScorerConfig", "VerifierServicer", "VerifierSettings", "main", "serve"]
