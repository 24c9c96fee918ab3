"""docker-compose.yml cannot be run here (no Docker engine), so check what can be checked:
it runs the four services plus the demo with the names, ports and variables of the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bastion._appconfig import load_app_config

ROOT = Path(__file__).resolve().parents[3]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_runs_each_service_with_its_serve_command() -> None:
    services = _compose()["services"]
    assert set(services) == {"policy", "verifier", "graph", "proxy", "demo"}
    for name in ("policy", "verifier", "graph", "proxy"):
        assert services[name]["command"] == [name, "serve"]


def test_compose_publishes_the_default_ports_and_wires_the_proxy_to_the_services() -> None:
    services = _compose()["services"]
    assert services["proxy"]["ports"] == ["127.0.0.1:7070:7070"]
    assert services["graph"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["policy"]["ports"] == ["127.0.0.1:8081:8081"]
    env = services["proxy"]["environment"]
    assert env["BASTION_POLICY_GRPC_ADDR"] == "policy:50051"
    assert env["BASTION_VERIFIER_ADDR"] == "verifier:50052"
    assert env["BASTION_GRAPH_GRPC_ADDR"] == "graph:50053"


def test_compose_publishes_every_port_on_loopback_only() -> None:
    # "8080:8080" or "0.0.0.0:8080:8080" would publish the graph's audit data and the policy
    # admin API to the host's whole network.
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
                assert str(port).count(":") == 2, (name, port)


def test_every_variable_compose_sets_is_a_documented_setting() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    for service in _compose()["services"].values():
        for variable in service.get("environment", {}):
            assert f"`{variable}`" in documented, variable


def test_the_compose_bastion_yaml_is_valid() -> None:
    config = load_app_config(ROOT / "examples" / "compose" / "bastion.yaml")
    assert config.servers["demo"].url == "http://demo:9001/mcp"
    assert "proxy:7070" in config.allowed_hosts


def test_the_demo_config_is_valid_and_its_policy_exists() -> None:
    config = load_app_config(ROOT / "examples" / "bastion.yaml")
    assert set(config.servers) == {"demo"}
    assert all(path.exists() for path in config.policies)
