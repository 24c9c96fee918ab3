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


@pytest.mark.parametrize("service", ["proxy", "graph", "policy"])
def test_a_public_address_without_allowed_hosts_is_bad_configuration_exit_2(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # Found as the service starts (DESIGN §4), not when its settings are read: still exit 2,
    # as docs/errors.md says of bad configuration, not 1 as for a service that failed.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    variable = {"proxy": "BASTION_PROXY_ADDR", "graph": "BASTION_GRAPH_ADDR", "policy": "BASTION_POLICY_ADDR"}[service]
    monkeypatch.setenv(variable, "0.0.0.0:0")

    code = main([service, "serve"])

    assert code == 2
    assert f"cannot start {service}: listening on 0.0.0.0 (not loopback) needs allowed_hosts" in capfd.readouterr().err
