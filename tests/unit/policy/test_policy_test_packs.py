"""`bastion policy test`: regression packs decided locally, exit 0 / 1 / 2."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bastion._cli import main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "policies" / "demo.test.yaml"
DEMO = ROOT / "examples" / "policies" / "demo.yaml"


def _pack(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pack.yaml"
    path.write_text(text)
    return path


def test_the_example_pack_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.strip() == "6 cases: 6 passed, 0 failed"


def test_a_wrong_expectation_exits_1_naming_the_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pack = _pack(
        tmp_path,
        f"""policies: [{DEMO}]
cases:
  - {{name: add is allowed, agent: a, action: {{server: demo, tool: add}}, expect: {{effect: allow}}}}
  - {{name: deletes are fine, agent: a, action: {{server: demo, tool: delete_file}}, expect: {{effect: allow}}}}
""",
    )
    assert main(["policy", "test", str(pack)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL deletes are fine: expected allow, got deny by rule 'no-file-deletes'")
    assert out[-1] == "2 cases: 1 passed, 1 failed"

    assert main(["policy", "test", str(pack), "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert (report["passed"], report["failed"]) == (1, 1)
    assert [case["name"] for case in report["cases"] if not case["passed"]] == ["deletes are fine"]


def test_a_wrong_rule_fails_even_with_the_right_effect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pack = _pack(
        tmp_path,
        "cases:\n  - {name: echo, agent: a, action: {server: demo, tool: echo},"
        " expect: {effect: deny, rule: no-file-deletes}}\n",
    )
    assert main(["policy", "test", str(pack), "--policy", str(DEMO)]) == 1
    assert "got deny by rule 'default'" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cases: []\n", "'cases' must be a non-empty list"),
        ("polices: [x]\ncases: []\n", "unknown key 'polices' (did you mean 'policies'?)"),
        (
            "cases:\n  - {name: n, agent: a, action: {server: demo, tool: add}, expct: {effect: allow}}\n",
            "unknown key 'expct' (did you mean 'expect'?)",
        ),
        (
            "cases:\n  - {name: n, agent: a, action: {server: demo, tol: add}, expect: {effect: allow}}\n",
            "unknown key 'tol' (did you mean 'tool'?)",
        ),
        (
            "cases:\n  - {name: n, agent: a, action: {server: demo, tool: add}, expect: {effect: permit}}\n",
            "not one of",
        ),
        ("cases:\n  - {name: n, agent: a, action: {server: demo}, expect: {effect: allow}}\n", "'tool', 'resource'"),
        ("cases:\n  - {name: n, agent: a, action: {kind: NUKE, server: d, tool: t}, expect: {effect: deny}}\n", "NUKE"),
        ("cases: &x [1]\nmore: *x\n", "aliases"),
        ("cases: [1]\ncases: [2]\n", "duplicate key"),
    ],
)
def test_a_bad_pack_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    assert main(["policy", "test", str(_pack(tmp_path, text)), "--policy", str(DEMO)]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_policy_or_pack_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", str(tmp_path / "absent.yaml")]) == 2
    pack = _pack(tmp_path, "cases:\n  - {name: n, agent: a, action: {server: d, tool: t}, expect: {effect: deny}}\n")
    assert main(["policy", "test", str(pack)]) == 2
    assert "no policies" in capsys.readouterr().err
    assert main(["policy", "test", str(pack), "--policy", str(tmp_path / "nope.yaml")]) == 2
