from __future__ import annotations

from pathlib import Path

import pytest

from bastion import ConfigError
from bastion._appconfig import AppConfig, find_app_config, load_app_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bastion.yaml"
    path.write_text(text)
    return path


def test_servers_and_relative_policy_paths_are_loaded(tmp_path: Path) -> None:
    config = load_app_config(
        _write(tmp_path, "servers:\n  demo: {url: 'http://127.0.0.1:1/mcp'}\npolicies: [p/demo.yaml]\n")
    )
    assert config.servers["demo"].url == "http://127.0.0.1:1/mcp"
    assert config.policies == (tmp_path / "p" / "demo.yaml",)


def test_unknown_field_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"servers\.demo\.urll: unknown field"):
        load_app_config(_write(tmp_path, "servers:\n  demo: {urll: 'http://x/mcp'}\n"))


@pytest.mark.parametrize("name", ["tools", "a__b", "a/b", "a b"])
def test_reserved_or_ambiguous_server_names_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="server name"):
        load_app_config(_write(tmp_path, f"servers:\n  '{name}': {{url: 'http://127.0.0.1:1/mcp'}}\n"))


@pytest.mark.parametrize("name", ["tools", "tasks", "a__b", "a/b", "a b", "caf\u00e9", "\uff41"])
def test_reserved_or_ambiguous_agent_names_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="agent name"):
        load_app_config(_write(tmp_path, f"agents:\n  '{name}': {{url: 'http://127.0.0.1:1'}}\n"))


def test_stdio_servers_take_a_command_env_and_a_cwd_relative_to_the_file(tmp_path: Path) -> None:
    config = load_app_config(_write(tmp_path, "servers:\n  files: {command: [npx, server], env: {A: b}, cwd: work}\n"))
    files = config.servers["files"]
    assert (files.command, files.env, files.cwd) == (("npx", "server"), {"A": "b"}, tmp_path / "work")
    with pytest.raises(ConfigError, match="must name a program"):
        load_app_config(_write(tmp_path, "servers:\n  files: {command: []}\n"))
    with pytest.raises(ConfigError, match="for stdio servers"):
        load_app_config(_write(tmp_path, "servers:\n  web: {url: 'http://x/mcp', env: {A: b}}\n"))


def test_credentials_in_headers_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_KEY", "s3cret")
    text = "agents:\n  billing: {url: 'http://127.0.0.1:1', headers: {Authorization: 'Bearer ${BILLING_KEY}'}}\n"
    assert load_app_config(_write(tmp_path, text)).agents["billing"].headers == {"Authorization": "Bearer s3cret"}
    monkeypatch.delenv("BILLING_KEY")
    with pytest.raises(ConfigError, match=r"agents\.billing\.headers needs \$\{BILLING_KEY\}"):
        load_app_config(_write(tmp_path, text))
    with pytest.raises(ConfigError, match="http://"):
        load_app_config(_write(tmp_path, "agents:\n  billing: {url: 'ftp://x'}\n"))


def test_credentials_come_from_secret_files_and_the_auth_stanza(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "crm").write_text("file-token\n")  # as `kubectl create secret` writes it
    (tmp_path / "secrets" / "pw").write_text("p:ss w0rd")
    monkeypatch.setenv("CRM_USER", "svc")
    text = (
        "servers:\n"
        "  crm: {url: 'http://127.0.0.1:1/mcp', auth: {bearer: '${file:secrets/crm}'}, headers: {X-Team: ops}}\n"
        "  erp: {url: 'http://127.0.0.1:2/mcp',"
        " auth: {basic: {username: '${CRM_USER}', password: '${file:secrets/pw}'}}}\n"
        f"  raw: {{url: 'http://127.0.0.1:3/mcp', headers: {{X-Api-Key: '${{file:{tmp_path}/secrets/crm}}'}}}}\n"
    )
    config = load_app_config(_write(tmp_path, text))

    assert config.servers["crm"].brokered_headers() == {"X-Team": "ops", "Authorization": "Bearer file-token"}
    assert config.servers["erp"].brokered_headers() == {"Authorization": "Basic c3ZjOnA6c3MgdzByZA=="}
    assert config.servers["raw"].brokered_headers() == {"X-Api-Key": "file-token"}


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ("{url: 'http://x/mcp', auth: {bearer: '${file:missing}'}}", "cannot read secret file missing"),
        ("{url: 'http://x/mcp', auth: {bearer: t, basic: {username: u, password: p}}}", "exactly one"),
        ("{url: 'http://x/mcp', auth: {}}", "exactly one"),
        ("{url: 'http://x/mcp', auth: {bearer: t}, headers: {authorization: x}}", "not both"),
        ("{url: 'http://x/mcp', auth: {basic: {username: 'a:b', password: p}}}", "cannot contain ':'"),
        ("{url: 'http://x/mcp', auth: {bearer: \"line\\nbreak\"}}", "one line of ASCII"),
        ("{url: 'http://x/mcp', auth: {token: t}}", "token"),
        ("{command: [srv], auth: {bearer: t}}", "for HTTP servers"),
        ("{url: 'http://x/mcp', auth: {bearer: '${file:big}'}}", "over 64 KiB"),
    ],
)
def test_bad_upstream_credentials_are_config_errors(tmp_path: Path, entry: str, error: str) -> None:
    (tmp_path / "big").write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match=error):
        load_app_config(_write(tmp_path, f"servers:\n  s: {entry}\n"))


def test_server_needs_exactly_one_transport(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        load_app_config(_write(tmp_path, "servers:\n  demo: {}\n"))


def test_missing_and_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_app_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_app_config(_write(tmp_path, "servers: [\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_app_config(_write(tmp_path, "- a\n"))


def test_empty_file_is_an_empty_stack(tmp_path: Path) -> None:
    assert load_app_config(_write(tmp_path, "")).servers == {}


def test_without_any_config_the_embedded_defaults_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_app_config(None, None) == (None, AppConfig())


def test_the_default_file_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "servers:\n  demo: {url: 'http://127.0.0.1:1/mcp'}\n")
    source, config = find_app_config(None, None)
    assert source == path.resolve()
    assert set(config.servers) == {"demo"}


def test_a_named_config_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        find_app_config(tmp_path / "missing.yaml", None)
    with pytest.raises(ConfigError, match="not found"):
        find_app_config(None, tmp_path / "missing-from-env.yaml")
