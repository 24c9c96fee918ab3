"""VerifierSettings from the environment, and the package's public surface."""

from __future__ import annotations

import pydantic
import pytest

import bastion.verifier
from bastion import ConfigError
from bastion.verifier import ScorerConfig, VerifierSettings, main
from bastion.verifier._config import load_settings
from bastion.verifier._sequence import SequenceConfig

VERIFIER_VARS = (
    "BASTION_VERIFIER_ADDR",
    "BASTION_VERIFIER_THRESHOLD",
    "BASTION_VERIFIER_SEQUENCE_WEIGHT",
    "BASTION_VERIFIER_ARGUMENT_WEIGHT",
    "BASTION_VERIFIER_CONTRADICTION_WEIGHT",
    "BASTION_VERIFIER_TAINT_WEIGHT",
)
SEQUENCE_VARS = (
    "BASTION_VERIFIER_SEQUENCE_MIN_TRANSITIONS",
    "BASTION_VERIFIER_SEQUENCE_RARE",
    "BASTION_VERIFIER_SEQUENCE_MAX_AGENTS",
    "BASTION_VERIFIER_SEQUENCE_MAX_EDGES",
    "BASTION_VERIFIER_SEQUENCE_MAX_WORKFLOWS",
    "BASTION_VERIFIER_SEQUENCE_FLUSH_S",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VERIFIER_VARS + SEQUENCE_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_serve_on_50052_with_the_documented_weights(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.verifier_addr == "127.0.0.1:50052"
    assert settings.scorer_config() == ScorerConfig(
        threshold=0.8, sequence_weight=0.3, argument_weight=0.4, contradiction_weight=0.8, taint_weight=0.8
    )
    assert settings.sequence_config() == SequenceConfig(
        min_transitions=50, rare_probability=0.05, max_agents=4096, max_edges=256, max_workflows=16384
    )
    assert settings.verifier_sequence_flush_s == 5.0


def test_every_setting_comes_from_its_bastion_verifier_variable(clean_env: pytest.MonkeyPatch) -> None:
    values = dict(zip(VERIFIER_VARS, ["0.0.0.0:6000", "0.5", "0.1", "0.2", "0.3", "0.7"], strict=True))
    values |= dict(zip(SEQUENCE_VARS, ["9", "0.2", "10", "11", "12", "0.5"], strict=True))
    for name, value in values.items():
        clean_env.setenv(name, value)
    settings = load_settings()
    assert settings.verifier_addr == "0.0.0.0:6000"
    assert settings.scorer_config() == ScorerConfig(
        threshold=0.5, sequence_weight=0.1, argument_weight=0.2, contradiction_weight=0.3, taint_weight=0.7
    )
    assert settings.sequence_config() == SequenceConfig(
        min_transitions=9, rare_probability=0.2, max_agents=10, max_edges=11, max_workflows=12
    )
    assert settings.verifier_sequence_flush_s == 0.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BASTION_VERIFIER_THRESHOLD", "0"),
        ("BASTION_VERIFIER_THRESHOLD", "1.2"),
        ("BASTION_VERIFIER_CONTRADICTION_WEIGHT", "-0.1"),
        ("BASTION_VERIFIER_SEQUENCE_WEIGHT", "2"),
        ("BASTION_VERIFIER_ARGUMENT_WEIGHT", "lots"),
        ("BASTION_VERIFIER_TAINT_WEIGHT", "nan"),
        ("BASTION_VERIFIER_POINTED_FACTOR", "1.5"),
        ("BASTION_VERIFIER_POINTED_FACTOR", "-0.25"),
        ("BASTION_VERIFIER_SEQUENCE_MIN_TRANSITIONS", "0"),
        ("BASTION_VERIFIER_SEQUENCE_RARE", "0"),
        ("BASTION_VERIFIER_SEQUENCE_MAX_AGENTS", "0"),
        ("BASTION_VERIFIER_SEQUENCE_MAX_EDGES", "10000000"),
        ("BASTION_VERIFIER_SEQUENCE_FLUSH_S", "0"),
        ("BASTION_VERIFIER_ADDR", "localhost"),
    ],
)
def test_an_invalid_variable_is_a_config_error_naming_it(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_the_bounds_of_the_variables_are_those_of_scorer_config(clean_env: pytest.MonkeyPatch) -> None:
    # VerifierSettings checks each variable against ScorerConfig, so the two cannot drift apart.
    values = dict(zip(VERIFIER_VARS[1:], ["1", "0", "1", "0", "1"], strict=True))
    for name, value in values.items():
        clean_env.setenv(name, value)
    assert load_settings().scorer_config() == ScorerConfig(
        threshold=1.0, sequence_weight=0.0, argument_weight=1.0, contradiction_weight=0.0, taint_weight=1.0
    )
    clean_env.setenv("BASTION_VERIFIER_SEQUENCE_MIN_TRANSITIONS", "0")
    with pytest.raises(ConfigError, match=r"SEQUENCE_MIN_TRANSITIONS: .*min_transitions must be at least 1"):
        load_settings()
    clean_env.setenv("BASTION_VERIFIER_SEQUENCE_MIN_TRANSITIONS", "1")
    clean_env.setenv("BASTION_VERIFIER_SEQUENCE_RARE", "1.5")
    with pytest.raises(ConfigError, match=r"SEQUENCE_RARE: .*rare_probability must be in \(0, 1\]"):
        load_settings()


def test_serve_refuses_to_start_on_bad_settings_with_exit_code_2(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("BASTION_VERIFIER_THRESHOLD", "3")
    assert main() == 2
    assert "BASTION_VERIFIER_THRESHOLD" in capsys.readouterr().err


def test_settings_are_frozen(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError):
        settings.verifier_threshold = 0.1


def test_every_setting_is_documented() -> None:
    for name, field in VerifierSettings.model_fields.items():
        assert field.description, f"{name} has no description (docs/configuration.md is generated from it)"


def test_the_public_surface_is_exactly_what_the_package_documents() -> None:
    assert sorted(bastion.verifier.__all__) == [
        "ReferenceScorer",
        "ScorerConfig",
        "VerifierServicer",
        "VerifierSettings",
        "main",
        "serve",
    ]
    doc = bastion.verifier.__doc__ or ""
    for name in bastion.verifier.__all__:
        assert f"`{name}" in doc, f"{name} is exported but not described in the package docstring"
