"""Settings of the verifier service, read once from `BASTION_*` env vars and frozen."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from bastion._errors import ConfigError
from bastion._settings import CommonSettings, parse_addr

from ._engine import ScorerConfig

_DEFAULT_SCORER = ScorerConfig()


class VerifierSettings(CommonSettings):
    verifier_addr: str = Field(
        default="127.0.0.1:50052",
        description="host:port the verifier's gRPC server binds (port 0 picks a free port).",
    )
    verifier_metrics_addr: str = Field(
        default="127.0.0.1:9464",
        description="host:port of the verifier's HTTP server for /metrics, /healthz and /readyz "
        "(port 0 picks a free port; no data, no auth: Prometheus and probes only).",
    )
    verifier_threshold: float = Field(
        default=0.8,
        description="Deviation score at or above which the reference scorer answers BLOCK (0 < t <= 1).",
    )
    verifier_novelty_weight: float = Field(
        default=0.4,
        description="Score added when the tool was never used earlier in the workflow (signal tool_novelty).",
    )
    verifier_sequence_weight: float = Field(
        default=0.3,
        description="Score added when the previous-tool -> this-tool transition is new (signal sequence).",
    )
    verifier_argument_weight: float = Field(
        default=0.4,
        description="Score added when an argument names a destination absent from the task (signal argument_novelty).",
    )
    verifier_taint_weight: float = Field(
        default=0.8,
        description="Score added when a sink's argument is wholly data from an untrusted result's free text "
        "(signal taint; half for a structured field, scaled by the tainted fraction).",
    )
    verifier_min_history: int = Field(
        default=3,
        description="Earlier allowed steps a workflow needs before the sequence signal is trusted.",
    )

    @field_validator("verifier_addr", "verifier_metrics_addr")
    @classmethod
    def _is_host_port(cls, value: str) -> str:
        try:
            parse_addr(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator(
        "verifier_threshold",
        "verifier_novelty_weight",
        "verifier_sequence_weight",
        "verifier_argument_weight",
        "verifier_taint_weight",
        "verifier_min_history",
    )
    @classmethod
    def _in_scorer_range(cls, value: float, info: ValidationInfo) -> float:
        # ScorerConfig owns the ranges. Checking each field on its own against it keeps
        # one set of bounds and still names the variable in the error.
        override: dict[str, Any] = {str(info.field_name).removeprefix("verifier_"): value}
        try:
            replace(_DEFAULT_SCORER, **override)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value

    def scorer_config(self) -> ScorerConfig:
        return ScorerConfig(
            threshold=self.verifier_threshold,
            novelty_weight=self.verifier_novelty_weight,
            sequence_weight=self.verifier_sequence_weight,
            argument_weight=self.verifier_argument_weight,
            min_history=self.verifier_min_history,
            taint_weight=self.verifier_taint_weight,
        )


def load_settings() -> VerifierSettings:
    """Read the environment; a bad value is a ConfigError naming the variable."""
    try:
        settings = VerifierSettings()
    except ValidationError as exc:
        problems = "; ".join(f"BASTION_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid verifier settings: {problems}") from exc
    return settings
