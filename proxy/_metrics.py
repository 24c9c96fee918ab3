"""Prometheus metrics of the proxy, on a registry owned by one ProxyApp.

Histogram children are bound once here so the hot path does no label lookups.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bastion.v1 import policy_pb2

from ._shipper import DEAD_LETTER_REASONS

_RESULT_OUTCOMES = ("COMPLETED", "UPSTREAM_ERROR", "TIMEOUT", "CLIENT_GONE")
_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Circuit(Protocol):
    """A verifier's circuit breaker as the metrics read it (`_breaker.CircuitBreaker`)."""

    @property
    def state(self) -> str: ...


def _open(circuit: Circuit) -> float:
    return 0.0 if circuit.state == "closed" else 1.0


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        latency = Histogram(
            "bastion_action_latency_seconds",
            "Time spent per action, by pipeline stage.",
            ["stage"],
            registry=self.registry,
            buckets=_BUCKETS,
        )
        self.governance = latency.labels("governance")
        self.journal = latency.labels("journal")
        self.upstream = latency.labels("upstream")
        self.total = latency.labels("total")
        self._actions = Counter(
            "bastion_actions_total", "Requests handled, by outcome.", ["outcome"], registry=self.registry
        )
        self._decisions = Counter(
            "bastion_decisions_total", "Policy decisions seen by the proxy.", ["effect", "rule"], registry=self.registry
        )
        self._dead_letters = Counter(
            "bastion_journal_dead_letters_total",
            "Journal records the graph can never take, set aside in journal/dead-letter.jsonl, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in DEAD_LETTER_REASONS:
            # Present at 0 from the start, so an alert on increase() sees the first one.
            self._dead_letters.labels(reason)
        self._journal_lag = Gauge(
            "bastion_journal_lag_seconds",
            "Upper bound on the age of the oldest journal record not yet acknowledged by the graph; 0 when caught up.",
            registry=self.registry,
        )

        self._circuit_open = Gauge(
            "bastion_verifier_circuit_open",
            "1 while the verifier's circuit is open or half-open (consecutive failures: the fallback applies "
            "without calling it), 0 while closed.",
            registry=self.registry,
        )
        # Per chained verifier (BASTION_VERIFIER_CHAIN): any one open makes the whole chain
        # take the fallback, so an operator needs to see which. `verifier` is the position:
        # 1 is BASTION_VERIFIER_ADDR (the same state as bastion_verifier_circuit_open),
        # 2.. the chain's addresses in order.
        self._chain_circuits = Gauge(
            "bastion_verifier_chain_circuit_open",
            "1 while the circuit of the verifier at this position of the chain (1 = BASTION_VERIFIER_ADDR, "
            "2.. = BASTION_VERIFIER_CHAIN in order) is open or half-open, 0 while closed; while any is open "
            "the chain's fallback applies without asking it.",
            ["verifier"],
            registry=self.registry,
        )

        results = Counter(
            "bastion_action_results_total",
            "How forwarded actions ended (result events), by outcome; 'unjournaled' when the journal refused one.",
            ["outcome"],
            registry=self.registry,
        )
        self._results = {name: results.labels(name) for name in (*_RESULT_OUTCOMES, "unjournaled")}
        fallbacks = Counter(
            "bastion_verifier_fallback_total",
            "Actions the verifier did not score in time (or at all), by the fallback applied (the agent's "
            "policies' verifier.fallback, else BASTION_VERIFIER_FALLBACK): 'block', 'allow' or 'queue'.",
            ["mode"],
            registry=self.registry,
        )
        # Present at 0 from the start, so an alert on increase() sees the first one.
        self._fallbacks = {mode: fallbacks.labels(mode) for mode in ("block", "allow", "queue")}

    def verifier_fallback(self, mode: str) -> None:
        self._fallbacks[mode].inc()

    def result(self, outcome: str) -> None:
        self._results[outcome].inc()

    def result_unjournaled(self) -> None:
        self._results["unjournaled"].inc()

    def count(self, outcome: str, decision: policy_pb2.Decision | None) -> None:
        self._actions.labels(outcome).inc()
        if decision is not None:
            self._decisions.labels(policy_pb2.Effect.Name(decision.effect), decision.rule_id).inc()

    def dead_letter(self, reason: str) -> None:
        self._dead_letters.labels(reason).inc()

    def watch_verifier_circuit(self, state: Callable[[], str]) -> None:
        """Read the verifier circuit's state (`_breaker.py`) at every scrape."""
        self._circuit_open.set_function(lambda: 0.0 if state() == "closed" else 1.0)

    def watch_verifier_chain(self, breakers: Sequence[Circuit]) -> None:
        """Read each chained verifier's circuit (`Governor.breakers`, in chain order) at every scrape."""
        for position, breaker in enumerate(breakers, 1):
            self._chain_circuits.labels(str(position)).set_function(functools.partial(_open, breaker))

    def watch_journal_lag(self, lag_seconds: Callable[[], float]) -> None:
        """Read the journal lag from `lag_seconds` at every scrape (the shipper's `lag_seconds`)."""
        self._journal_lag.set_function(lag_seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
