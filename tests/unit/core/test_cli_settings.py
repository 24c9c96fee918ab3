"""A service started with a setting it cannot take says which, in one line, and exits 2:
not a Python traceback (an attacker's probe of the dashboard settings found the latter)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion._cli import main


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("proxy", "BASTION_DASHBOARD_ORIGIN", "http://a;b.example"),
        ("proxy", "BASTION_VERIFIER_CHAIN", "bogus"),
        ("graph", "BASTION_DASHBOARD_PROXY_URL", "javascript:alert(1)"),
        ("proxy", "BASTION_MAX_BODY", "12"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    service: str,
    variable: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    monkeypatch.setenv(variable, value)

    code = main([service, "serve"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"bastion {service}: invalid setting {variable}: ")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
