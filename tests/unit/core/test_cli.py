from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bastion._appconfig import AuthConfig
from bastion._cli import _parser, main
from bastion._identity import TokenVerifier, load_public_keys
from bastion._policy_cli import DEFAULT_SIGN_TTL_S, _sign
from bastion.policy._bundles import DEFAULT_TTL_S


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "var"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "var"


def test_token_issue_prints_a_jwt_the_stack_accepts(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "issue", "--agent", "ops-1", "--role", "operator", "--ttl", "30m"]) == 0
    token = capsys.readouterr().out.strip()
    principal = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), home)).verify(token)
    assert (principal.subject, principal.roles, principal.is_operator) == ("ops-1", ("operator",), True)


def test_token_issue_json_output(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "issue", "--agent", "a", "--json"]) == 0
    payload = orjson.loads(capsys.readouterr().out)
    assert (payload["agent"], payload["roles"], payload["expires_in"]) == ("a", [], 3600)


@pytest.mark.parametrize("ttl", ["0", "-1h", "1y", "abc"])
def test_invalid_ttl_is_a_usage_error(home: Path, ttl: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["token", "issue", "--agent", "a", "--ttl", ttl])
    assert exited.value.code == 2


def _bastion(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BASTION_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "bastion", *args], env=env, capture_output=True, text=True, timeout=60)


def test_up_with_an_invalid_config_exits_2_and_names_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text("servers:\n  demo: {urll: http://127.0.0.1:1/mcp}\n")
    done = _bastion("up", "--config", str(config), home=tmp_path / "var")
    assert done.returncode == 2
    assert "servers.demo.urll: unknown field" in done.stderr


def test_policy_serve_with_a_bad_policy_fails_with_a_clear_message(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "apiVersion: bastion.dev/v1\nkind: AgentPolicy\nmetadata: {name: p, version: 1}\n"
        "spec:\n  rules:\n    - {id: r1, match: {tools: ['demo__add']}, efect: allow}\n"
    )
    config = tmp_path / "bastion.yaml"
    config.write_text(f"policies: [{policy}]\n")
    env_addr = {"BASTION_POLICY_GRPC_ADDR": "127.0.0.1:0", "BASTION_POLICY_ADDR": "127.0.0.1:0"}
    env = {**os.environ, "BASTION_HOME": str(tmp_path / "var"), **env_addr}
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "policy", "serve", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "efect" in done.stderr
    assert "did you mean 'effect'" in done.stderr


def test_policy_admin_commands_exit_1_when_the_service_is_unreachable(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_POLICY_ADDR", "127.0.0.1:1")
    assert main(["policy", "versions", "demo"]) == 1
    assert "policy service at 127.0.0.1:1 unreachable" in capsys.readouterr().err


def test_policy_apply_of_a_missing_file_is_a_usage_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "apply", "nowhere.yaml", "--addr", "127.0.0.1:1"]) == 2
    assert "cannot read nowhere.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["policy", "diff", "demo", "1"],
        ["policy", "activate", "demo", "one"],
        ["policy", "apply"],
        ["policy", "versions"],
    ],
)
def test_policy_admin_commands_with_bad_arguments_exit_2(home: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2


def test_policy_apply_with_a_kid_but_no_key_is_a_usage_error(home: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("apiVersion: bastion.dev/v1\n")
    assert main(["policy", "apply", str(policy), "--kid", "prod", "--addr", "127.0.0.1:1"]) == 2


@pytest.mark.parametrize(("ttl", "seconds"), [([], 30 * 86400), (["--ttl", "7d"], 7 * 86400)])
def test_policy_apply_signs_for_thirty_days_unless_told_otherwise(home: Path, ttl: list[str], seconds: int) -> None:
    # The bundle's exp is the signer's approval lifetime: an hour would make the expiry alerts
    # fire for every active version (ops/prometheus/bastion-rules.yaml).
    args = _parser().parse_args(["policy", "apply", "p.yaml", *ttl])
    header = orjson.loads(base64.urlsafe_b64decode(_sign("spec: {}\n", args).split(".")[0] + "=="))
    assert header["exp"] - header["iat"] == seconds
    assert DEFAULT_SIGN_TTL_S == DEFAULT_TTL_S  # the CLI's copy of the library default
