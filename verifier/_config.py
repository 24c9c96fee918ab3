"""Settings of the verifier service, read once from `BASTION_*` env vars and frozen."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator

from bastion._errors import ConfigError
from bastion._settings import CommonSettings, parse_addr, verifier_token_field

from ._engine import ScorerConfig, check_semantic
from ._sequence import SequenceConfig

_DEFAULT_SCORER = ScorerConfig()
_DEFAULT_SEQUENCE = SequenceConfig()
#: Env name (after BASTION_VERIFIER_SEQUENCE_) -> SequenceConfig field, where they differ.
_SEQUENCE_FIELDS = {"rare": "rare_probability"}


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
    verifier_token: SecretStr | None = verifier_token_field()
    verifier_second_token: SecretStr | None = Field(
        default=None,
        description="A second token the verifier accepts beside BASTION_VERIFIER_TOKEN, to rotate that one "
        "without a gap (same rules; only with BASTION_VERIFIER_TOKEN set): put the new token here, then swap "
        "the two and move every proxy to the new one, then unset this.",
    )
    verifier_threshold: float = Field(
        default=0.8,
        description="Deviation score at or above which the reference scorer answers BLOCK (0 < t <= 1).",
    )
    verifier_sequence_weight: float = Field(
        default=0.3,
        description="Score added when the previous-tool -> this-tool transition is rare for the agent, "
        "by its learnt Markov model (signal sequence; 0 while the agent is in cold start).",
    )
    verifier_argument_weight: float = Field(
        default=0.4,
        description="Score added when an argument names a destination absent from the task (signal argument_novelty).",
    )
    verifier_contradiction_weight: float = Field(
        default=0.8,
        description="Score argument_novelty adds instead on a sink when the task names another destination "
        "of the same kind (email address, host, IBAN, wallet, chat handle).",
    )
    verifier_taint_weight: float = Field(
        default=0.8,
        description="Score added when a sink's argument is wholly a control value from an untrusted result's free "
        "text (signal taint; half for copied prose, a quarter for a structured field, scaled by the tainted fraction).",
    )
    verifier_intent_weight: float = Field(
        default=0.4,
        description="Score added when a sink acts and the task asks for no action at all (a question, a summary) "
        "(signal intent; 0 when there is no task).",
    )
    verifier_destructive_weight: float = Field(
        default=0.8,
        description="Score signal intent adds instead when the sink destroys (delete, remove, cancel, wipe...) and "
        "the task asks for nothing destructive.",
    )
    verifier_pointed_factor: float = Field(
        default=0.25,
        description="Factor on signal taint for data from a result the task points at (the proxy's named: labels: "
        "the supplier's email the task names, the page at the address it gives), when the task asks for an "
        "action; 1 ignores the labels.",
    )
    verifier_semantic: bool = Field(
        default=False,
        description="Run the semantic_drift signal: up to 0.3 when the action is far from the task by sentence "
        "embeddings (all-MiniLM-L6-v2 in numpy; tens of ms a call on 2 vCPUs, so raise BASTION_VERIFIER_TIMEOUT_MS "
        "to match). Needs scripts/install-semantic: the verifier refuses to start when it is on and the model "
        "is missing.",
    )
    verifier_sequence_min_transitions: int = Field(
        default=50,
        description="Transitions learnt for an agent before the sequence signal may fire (cold start: it abstains).",
    )
    verifier_sequence_rare: float = Field(
        default=0.05,
        description="A transition seen in fewer than this share of the agent's exits from the previous tool is rare.",
    )
    verifier_sequence_max_agents: int = Field(
        default=4096,
        description="Agents whose sequence models are kept in memory and on disk (least recently used dropped).",
    )
    verifier_sequence_max_edges: int = Field(
        default=256,
        description="Distinct transitions kept per agent (when full, the agent's counts are halved).",
    )
    verifier_sequence_max_workflows: int = Field(
        default=16384,
        description="Workflows whose newest learnt step is remembered, so a history is learnt once.",
    )
    verifier_sequence_flush_s: float = Field(
        default=5.0,
        description="Seconds between writes of the learnt sequence models to $BASTION_HOME/verifier/sequence.sqlite3.",
        gt=0,
        le=3600,
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
        "verifier_sequence_weight",
        "verifier_argument_weight",
        "verifier_contradiction_weight",
        "verifier_taint_weight",
        "verifier_intent_weight",
        "verifier_destructive_weight",
        "verifier_pointed_factor",
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

    @field_validator("verifier_semantic")
    @classmethod
    def _semantic_installed(cls, value: bool) -> bool:
        # Checked here, so that `bastion verifier serve` refuses to start with a clear
        # message (exit 2) rather than once serving; only the files, not the weights.
        if value:
            try:
                check_semantic()
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator(
        "verifier_sequence_min_transitions",
        "verifier_sequence_rare",
        "verifier_sequence_max_agents",
        "verifier_sequence_max_edges",
        "verifier_sequence_max_workflows",
    )
    @classmethod
    def _in_sequence_range(cls, value: float, info: ValidationInfo) -> float:
        name = str(info.field_name).removeprefix("verifier_sequence_")
        override: dict[str, Any] = {_SEQUENCE_FIELDS.get(name, name): value}
        try:
            replace(_DEFAULT_SEQUENCE, **override)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value

    def scorer_config(self) -> ScorerConfig:
        return ScorerConfig(
            threshold=self.verifier_threshold,
            sequence_weight=self.verifier_sequence_weight,
            argument_weight=self.verifier_argument_weight,
            contradiction_weight=self.verifier_contradiction_weight,
            taint_weight=self.verifier_taint_weight,
            intent_weight=self.verifier_intent_weight,
            destructive_weight=self.verifier_destructive_weight,
            pointed_factor=self.verifier_pointed_factor,
            semantic=self.verifier_semantic,
        )

    def sequence_config(self) -> SequenceConfig:
        return SequenceConfig(
            min_transitions=self.verifier_sequence_min_transitions,
            rare_probability=self.verifier_sequence_rare,
            max_agents=self.verifier_sequence_max_agents,
            max_edges=self.verifier_sequence_max_edges,
            max_workflows=self.verifier_sequence_max_workflows,
        )


def load_settings() -> VerifierSettings:
    """Read the environment; a bad value is a ConfigError naming the variable."""
    try:
        settings = VerifierSettings()
    except ValidationError as exc:
        problems = "; ".join(f"BASTION_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid verifier settings: {problems}") from exc
    return settings
