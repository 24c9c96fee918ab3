"""Only the proxy reads the upstreams' credentials.

bastion.yaml names them (`${VAR}`, `${file:/etc/bastion/secrets/stripe-token}`), and every
service used to read them as it loaded the file, so the policy, graph and verifier pods
had to hold every upstream's secret (the chart mounted the whole Secret into each). Now
the proxy alone reads them; the others start on a file whose credentials they cannot
read, never open it and hold none of it. So do the CLI's commands that read the file for
its `auth` (`bastion token issue` in a policy or graph pod). Real `bastion <service> serve` processes, ports 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bastion._appconfig import load_app_config
from bastion._errors import ConfigError
from bastion._runfile import read_runfile

CONFIG = """\
servers:
  stripe:
    url: http://127.0.0.1:9/mcp
    auth: {{bearer: "${{file:{missing}}}"}}
    headers: {{X-Api-Key: "${{BASTION_TEST_CREDENTIAL}}"}}
"""
ADDRESSES = {
    "BASTION_POLICY_GRPC_ADDR": "127.0.0.1:0",
    "BASTION_POLICY_ADDR": "127.0.0.1:0",
    "BASTION_VERIFIER_ADDR": "127.0.0.1:0",
    "BASTION_VERIFIER_METRICS_ADDR": "127.0.0.1:0",
    "BASTION_GRAPH_ADDR": "127.0.0.1:0",
    "BASTION_GRAPH_GRPC_ADDR": "127.0.0.1:0",
    "BASTION_PROXY_ADDR": "127.0.0.1:0",
}


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "bastion.yaml"
    config.write_text(CONFIG.format(missing=tmp_path / "secrets" / "stripe-token"))
    return config


def _env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BASTION_")}
    return {**env, **ADDRESSES, "BASTION_HOME": str(tmp_path / "var")}


def test_the_credentials_are_read_only_when_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_TEST_CREDENTIAL", raising=False)
    config = _config(tmp_path)
    # Left out, not kept as written: sent by mistake, a reference would go out as text.
    kept = load_app_config(config, credentials=False).servers["stripe"]
    assert kept.auth is None
    assert not kept.headers
    assert kept.url == "http://127.0.0.1:9/mcp"
    with pytest.raises(ConfigError, match="needs \\$\\{BASTION_TEST_CREDENTIAL\\}, which is not set"):
        load_app_config(config)
    monkeypatch.setenv("BASTION_TEST_CREDENTIAL", "k")
    with pytest.raises(ConfigError, match="cannot read secret file"):
        load_app_config(config)


@pytest.mark.parametrize("service", ["policy", "verifier", "graph"])
def test_a_service_that_sends_no_credentials_starts_without_them(tmp_path: Path, service: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "bastion", service, "serve", "--config", str(_config(tmp_path))],
        # The graph's BASTION_POLICY_GRPC_ADDR is its peer: nowhere (port 9 refuses).
        env={**_env(tmp_path), "BASTION_POLICY_GRPC_ADDR": "127.0.0.1:9"} if service == "graph" else _env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while read_runfile(tmp_path / "var", service, process.pid) is None:
            assert process.poll() is None, f"{service} exited {process.returncode}: {process.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"{service} did not report ready in 60 s"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-2000:]


def test_token_issue_in_a_pod_without_the_credentials_works(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "token", "issue", "--agent", "me", "--config", str(_config(tmp_path))],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(".") == 2  # a JWT


def test_the_proxy_reads_them_and_will_not_start_without_them(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "proxy", "serve", "--config", str(_config(tmp_path))],
        env={**_env(tmp_path), "BASTION_TEST_CREDENTIAL": "k"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot read secret file" in done.stderr
