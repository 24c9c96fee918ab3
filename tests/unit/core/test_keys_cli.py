"""`bastion keys …` and `bastion token revoke|revocations` without a service: usage errors exit 2,
an unreachable service exits 1 (against a running service: tests/integration/test_api_keys.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion._cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "var"))
    monkeypatch.delenv("BASTION_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "var"


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "create"],
        ["keys", "create", "--agent", "a", "--ttl", "1y"],
        ["keys", "create", "--agent", "a", "--ttl", "0"],
        ["keys", "revoke"],
        ["keys", "rotate", "abc"],
        ["token", "revoke"],
        ["token", "revoke", "--jti", "j", "--agent", "a"],
        ["token", "revocations", "--kind", "session"],
    ],
)
def test_keys_and_revocation_commands_with_bad_arguments_exit_2(home: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "create", "--agent", "a"],
        ["keys", "list"],
        ["keys", "revoke", "0123456789abcdef"],
        ["token", "revoke", "--agent", "a"],
        ["token", "revocations"],
    ],
)
def test_keys_and_revocation_commands_exit_1_when_the_policy_service_is_unreachable(
    home: Path, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_POLICY_ADDR", "127.0.0.1:1")
    assert main(argv) == 1
    assert "policy service at 127.0.0.1:1 unreachable" in capsys.readouterr().err


def test_token_issue_still_prints_a_token(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "issue", "--agent", "a"]) == 0
    assert capsys.readouterr().out.count(".") == 2
