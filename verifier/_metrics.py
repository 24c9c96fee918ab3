"""Prometheus metrics of the verifier, on a registry owned by one service instance.

    bastion_verifier_scores_total{verdict}   requests scored: PASS, FLAG, BLOCK, or ERROR when
                                             the scorer failed (the caller applies its fallback)
    bastion_verifier_score_seconds           time to score one request, in the servicer

Children are bound once here so scoring does no label lookups (it takes tens of µs).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bastion.v1 import verifier_pb2

#: Scoring is fast; the top buckets are there to show a verifier that stalls.
_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
VERDICTS = ("PASS", "FLAG", "BLOCK", "ERROR")


class VerifierMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        scores = Counter(
            "bastion_verifier_scores",
            "Score requests answered, by verdict (ERROR: the scorer failed and the caller falls back).",
            ["verdict"],
            registry=self.registry,
        )
        self._verdicts = {verdict: scores.labels(verdict) for verdict in VERDICTS}
        self.seconds = Histogram(
            "bastion_verifier_score_seconds",
            "Time to score one request (unary Score or one ScoreStream message).",
            registry=self.registry,
            buckets=_BUCKETS,
        )

    def scored(self, verdict: verifier_pb2.Verdict.ValueType, seconds: float) -> None:
        name = verifier_pb2.Verdict.Name(verdict)
        self._verdicts.get(name, self._verdicts["ERROR"]).inc()
        self.seconds.observe(seconds)

    def failed(self, seconds: float) -> None:
        self._verdicts["ERROR"].inc()
        self.seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
