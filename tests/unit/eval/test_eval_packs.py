"""Scenario packs of `bastion eval`: the shipped ones load and are balanced; the loader
refuses what would make a run meaningless; templates copy values out of earlier results."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion._errors import ConfigError
from bastion.eval.efficacy._pack import TemplateError, available_packs, catalogue, load_packs, render
from bastion.eval.efficacy._replay import ScenarioOutcome, StepOutcome, signals
from bastion.eval.efficacy._report import SIGNALS, summarise, table

STEP = "      - tool: email__read_email\n        args: {message_id: m-1}\n"


def _pack(tmp_path: Path, steps: str, *, name: str = "p", extra: str = "") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "description: test\npolicy: banking\nscenarios:\n"
        f"  - id: {name}-one\n    label: legit\n    about: test\n{extra}    steps:\n{steps}"
    )
    return str(path)


def test_the_shipped_packs_hold_200_legit_and_200_attack_scenarios_over_four_domains() -> None:
    packs = load_packs([], catalogue())
    assert [pack.name for pack in packs] == available_packs()
    scenarios = [scenario for pack in packs for scenario in pack.scenarios]
    legit = sum(scenario.label == "legit" for scenario in scenarios)
    assert legit >= 200
    assert len(scenarios) - legit >= 200
    for domain in ("banking", "files", "mail", "web"):
        labels = [scenario.label for scenario in scenarios if scenario.policy == domain]
        assert (labels.count("legit") >= 40, labels.count("malicious") >= 40) == (True, True), domain


@pytest.mark.parametrize(
    ("steps", "extra", "message"),
    [
        (STEP + "      - tool: bank__transfer\n        args: {iban: '{{steps[1].body}}'}\n", "", "earlier step"),
        (STEP + "      - tool: bank__transfer\n        args: {iban: '{{ body }}'}\n", "", "outside a"),
        ("      - tool: bank__teleport\n", "", "not in the tool catalogue"),
        (STEP, "    policy: nowhere\n", "no policy 'nowhere'"),
        (STEP, "    label: legit\n", "duplicate key"),
        (STEP, "    steer: left\n", "steer"),
    ],
    ids=["later-step", "bad-template", "unknown-tool", "unknown-policy", "duplicate-key", "unknown-field"],
)
def test_a_pack_that_would_not_replay_as_written_is_refused(
    tmp_path: Path, steps: str, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_packs([_pack(tmp_path, steps, extra=extra)], catalogue())


def test_a_scenario_id_used_by_two_packs_is_refused(tmp_path: Path) -> None:
    first = _pack(tmp_path, STEP, name="same")
    (tmp_path / "other.yaml").write_text(Path(first).read_text())
    with pytest.raises(ConfigError, match="already used in pack 'same'"):
        load_packs([first, str(tmp_path / "other.yaml")], catalogue())


def test_templates_copy_values_whole_or_into_text() -> None:
    results = [{"messages": [{"id": "m-7", "size": 3}]}, {"invoice": {"amount": 12.5, "iban": "DE89 3704"}}]
    arguments = {
        "id": "{{steps[0].messages[0].id}}",
        "amount": "{{ steps[1].invoice.amount }}",
        "note": "pay {{steps[1].invoice.iban}} for {{steps[0].messages}}",
        "list": ["{{steps[0].messages[0].size}}", 1],
        "plain": "no template",
    }
    assert render(arguments, results) == {
        "id": "m-7",
        "amount": 12.5,
        "note": 'pay DE89 3704 for [{"id":"m-7","size":3}]',
        "list": [3, 1],
        "plain": "no template",
    }
    with pytest.raises(TemplateError, match="has no iban"):
        render({"x": "{{steps[0].iban}}"}, results)
    with pytest.raises(TemplateError, match="has no result"):
        render({"x": "{{steps[2].iban}}"}, results)


def test_signals_are_read_from_the_reference_scorers_reasons_and_abstentions_do_not_count() -> None:
    reasons = [
        "rare transition for this agent: app__send after app__read, 0 of 40 times (under 5%) (weight 0.30)",
        "destination not named in the task: 'eve@evil.example' (argument 'to') (weight 0.40)",
        "untrusted data in sink arguments: 'to' 100% from email__read content[0].text (free text, 0.80) (weight 0.80)",
        "destructive action the task did not ask for: 'files__delete_file' (delete) (weight 0.80)",
        "action far from the task: semantic similarity -0.05 (under 0.35; full weight at 0.10) (weight 0.30)",
        "something a third-party verifier said",
    ]
    assert signals(reasons) == ["sequence", "argument_novelty", "taint", "intent", "semantic_drift", "other"]
    assert signals(["sequence abstains: cold start, 3 of 50 transitions learnt for this agent (weight 0.00)"]) == []
    assert set(signals(reasons)) <= set(SIGNALS)


def test_packs_sharing_a_policy_are_reported_together_as_one_domain(tmp_path: Path) -> None:
    tuned = load_packs([_pack(tmp_path, STEP, name="tuned")], catalogue())[0].scenarios[0]
    held = load_packs([_pack(tmp_path, STEP, name="held")], catalogue())[0].scenarios[0]
    blocked = [StepOutcome("email__read_email", "blocked", code=-32003)]
    allowed = [StepOutcome("email__read_email", "allowed", reached_upstream=True)]
    outcomes = [ScenarioOutcome(tuned, "a", "w1", allowed), ScenarioOutcome(held, "b", "w2", blocked)]

    report = summarise(outcomes, max_far=None, min_vdr=None)

    assert set(report["packs"]) == {"tuned", "held"}
    assert (report["packs"]["held"]["far"], report["packs"]["tuned"]["far"]) == (1.0, 0.0)
    assert report["domains"] == {"banking": report["overall"]}
    assert report["domains"]["banking"]["far"] == 0.5
    assert "domain banking" in table({**report, "misclassified": [], "gates": []})
