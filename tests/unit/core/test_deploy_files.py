"""docker-compose.yml cannot be run here (no Docker engine), so check what can be checked:
every service runs from the one image with a command the CLI accepts, sets only variables
its settings class reads (with values it accepts), listens where its peers and healthcheck
look for it, waits for what it needs, and publishes nothing beyond loopback."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from bastion._appconfig import load_app_config
from bastion._cli import _parser
from bastion._settings import CommonSettings
from bastion.graph._config import GraphSettings
from bastion.graph._store._neo4j import split_url
from bastion.policy._config import PolicySettings
from bastion.proxy._config import ProxySettings
from bastion.verifier._config import VerifierSettings

ROOT = Path(__file__).resolve().parents[3]
SETTINGS: dict[str, type[BaseSettings]] = {
    "policy": PolicySettings,
    "verifier": VerifierSettings,
    "graph": GraphSettings,
    "proxy": ProxySettings,
}
BACKENDS = {"redis", "opa", "neo4j", "prometheus"}
#: The port each third-party image listens on inside the stack.
BACKEND_PORTS = {"redis": 6379, "opa": 8181, "neo4j": 7687, "prometheus": 9090}
#: `${NAME:-default}` in a compose value: what compose puts there when NAME is unset.
_DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _interpolated(value: str) -> str:
    """A compose value as `docker compose up` sees it with no variables set."""
    assert "$" not in _DEFAULTED.sub("", value.replace("$$", "")), f"{value!r}: a variable without a default"
    return _DEFAULTED.sub(lambda match: match.group(1), value)


def _environment(name: str) -> dict[str, str]:
    return {key: _interpolated(str(value)) for key, value in _services()[name].get("environment", {}).items()}


def _example_agent() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_agent", ROOT / "examples" / "agent.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _agent_options() -> argparse.Namespace:
    """The example agent's options as its compose entrypoint gives them, parsed by its own parser."""
    entry = _services()["agent"]["entrypoint"]
    assert entry[:2] == ["python", "/opt/bastion/examples/agent.py"]
    options: argparse.Namespace = _example_agent().parser().parse_args(entry[2:])
    return options


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _listening(name: str, service: dict[str, Any]) -> set[int]:
    """Ports a service listens on inside the stack: its 0.0.0.0 addresses, else its image's."""
    if name in BACKEND_PORTS:
        return {BACKEND_PORTS[name]}
    if name == "agent":  # a client only
        return set()
    if name == "demo":
        entry = service["entrypoint"]
        return {int(entry[entry.index("--port") + 1])}
    env = service.get("environment", {})
    return {int(value.rsplit(":", 1)[1]) for value in env.values() if str(value).startswith("0.0.0.0:")}


def test_compose_runs_the_four_services_the_demo_the_example_agent_and_the_real_backends() -> None:
    assert set(_services()) == {*SETTINGS, "demo", "agent", *BACKENDS}


def test_bastion_services_run_one_image_from_the_dockerfile_with_a_serve_command_the_cli_accepts() -> None:
    services = _services()
    for name in (*SETTINGS, "demo", "agent"):
        assert services[name]["build"] == ".", name
        assert services[name]["image"] == "bastion:dev", name
    assert (ROOT / "Dockerfile").is_file()
    for name in SETTINGS:
        command = services[name]["command"]
        assert command == [name, "serve"]
        args = _parser().parse_args(command)
        assert (args.command, args.action) == (name, "serve")
    # The demo runs the example from the image (the Dockerfile copies examples/ there).
    assert services["demo"]["entrypoint"][1] == "/opt/bastion/examples/demo_server.py"
    assert (ROOT / "examples" / "demo_server.py").is_file()
    assert "COPY examples /opt/bastion/examples" in (ROOT / "Dockerfile").read_text()


def test_the_example_agent_calls_the_demo_through_the_proxy_with_a_token_it_issues_itself() -> None:
    services = _services()
    agent = services["agent"]
    options = _agent_options()
    assert (ROOT / "examples" / "agent.py").is_file()
    # It reaches the proxy where the proxy listens, on the demo server's endpoint, and the
    # proxy accepts that Host.
    target = urlsplit(options.url)
    assert (target.hostname, target.path) == ("proxy", "/mcp/demo")
    assert target.port in _listening("proxy", services["proxy"])
    config = load_app_config(ROOT / "examples" / "compose" / "bastion.yaml")
    assert "demo" in config.servers
    assert target.netloc in config.allowed_hosts
    # No token is given, so it runs `bastion token issue --agent example-agent --json`: the CLI
    # accepts that, and the agent has the keys and config the services have (the shared
    # bastion-home volume at the image's BASTION_HOME, bastion.yaml at its BASTION_CONFIG).
    assert options.token is None
    assert "BASTION_AGENT_TOKEN" not in agent.get("environment", {})
    assert options.agent == "example-agent"
    issued = _parser().parse_args(["token", "issue", "--agent", options.agent, "--json"])
    assert (issued.command, issued.action, issued.json) == ("token", "issue", True)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "BASTION_HOME=/var/lib/bastion" in dockerfile
    assert "BASTION_CONFIG=/etc/bastion/bastion.yaml" in dockerfile
    assert agent["volumes"] == services["proxy"]["volumes"]
    assert "bastion-home:/var/lib/bastion" in agent["volumes"]
    assert "./examples/compose/bastion.yaml:/etc/bastion/bastion.yaml:ro" in agent["volumes"]
    # What it sets, if anything, is read by the CLI it runs; it calls the demo's tools.
    common = {f"BASTION_{field.upper()}" for field in CommonSettings.model_fields}
    assert set(agent.get("environment", {})) <= common
    assert options.interval > 0
    assert set(services["agent"]["depends_on"]) == {"proxy", "demo"}
    assert "ports" not in agent, "the agent is a client: it publishes nothing"


def test_backends_use_the_official_images() -> None:
    images = {name: _services()[name]["image"] for name in BACKENDS}
    assert images["redis"].startswith("redis:7")
    assert images["opa"].startswith("openpolicyagent/opa:")
    assert images["neo4j"].startswith("neo4j:5")
    assert images["prometheus"].startswith("prom/prometheus:")
    # The ports the peers' addresses are checked against (BACKEND_PORTS) are the ones they use.
    assert "0.0.0.0:8181" in _services()["opa"]["command"]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_variable_is_a_setting_of_that_service_and_loads(name: str) -> None:
    settings = SETTINGS[name]
    env = _environment(name)
    known = {f"BASTION_{field.upper()}" for field in settings.model_fields}
    assert set(env) <= known, f"{name} sets variables it does not read: {sorted(set(env) - known)}"
    assert set(CommonSettings.model_fields) <= set(settings.model_fields)
    loaded = settings.model_validate({key.removeprefix("BASTION_").lower(): value for key, value in env.items()})
    assert loaded is not None


#: Addresses an operator's browser uses (the published ports on the host), not a peer's.
_BROWSER_FACING = {"BASTION_DASHBOARD_PROXY_URL"}


def test_the_dashboard_is_wired_to_the_published_ports() -> None:
    assert _environment("graph")["BASTION_DASHBOARD_PROXY_URL"] == "http://127.0.0.1:7070"
    assert _environment("proxy")["BASTION_DASHBOARD_ORIGIN"] == "http://127.0.0.1:8080"
    published = {name: service.get("ports", []) for name, service in _services().items()}
    assert "127.0.0.1:7070:7070" in published["proxy"]
    assert "127.0.0.1:8080:8080" in published["graph"]


def test_peer_addresses_name_a_compose_service_on_a_port_it_listens_on() -> None:
    services = _services()
    listening = {name: _listening(name, service) for name, service in services.items()}
    peers = 0
    for name in SETTINGS:
        for variable, value in _environment(name).items():
            if variable in _BROWSER_FACING:
                continue
            if variable.endswith("_URL"):
                target = urlsplit(value)
                host, port = target.hostname, target.port
            elif variable.endswith("_ADDR") and not value.startswith("0.0.0.0:"):
                host, _, raw_port = value.rpartition(":")
                port = int(raw_port)
            else:
                continue
            peers += 1
            assert host in services, (name, variable, value)
            assert port in listening[host], (name, variable, value, listening[host])
    assert peers == 10  # policy 4 (with OPA), graph 2 (with Neo4j), proxy 4 (with Redis)


def test_the_proxy_is_wired_to_the_services_and_redis_and_the_graph_to_neo4j() -> None:
    services = _services()
    proxy = services["proxy"]["environment"]
    assert proxy["BASTION_POLICY_GRPC_ADDR"] == "policy:50051"
    assert proxy["BASTION_VERIFIER_ADDR"] == "verifier:50052"
    assert proxy["BASTION_GRAPH_GRPC_ADDR"] == "graph:50053"
    assert proxy["BASTION_REDIS_URL"] == "redis://redis:6379/0"
    assert "BASTION_POLICY_ENGINE" not in services["policy"]["environment"], "native engine by default"
    # The graph's store is the Neo4j service, logged in with the password Neo4j was given.
    uri, auth, database = split_url(_environment("graph")["BASTION_GRAPH_URL"])
    assert (urlsplit(uri).scheme, urlsplit(uri).hostname, urlsplit(uri).port) == ("neo4j", "neo4j", 7687)
    assert database is None  # the community image has the default database only
    user, _, password = _environment("neo4j")["NEO4J_AUTH"].partition("/")
    assert auth == (user, password) == ("neo4j", "bastion-local-only")
    assert services["graph"]["depends_on"]["neo4j"] == {"condition": "service_healthy"}


def test_published_ports_bind_loopback_except_the_proxy() -> None:
    # "8080:8080" or "0.0.0.0:8080:8080" would publish the graph's audit data and the policy
    # admin API to the host's whole network. The proxy is the one agent-facing port.
    published = {}
    for name, service in _services().items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax
                host_ip, target = port.get("host_ip"), port["target"]
            else:
                host_ip, _, target = str(port).partition(":")
                assert str(port).count(":") == 2 or name == "proxy", (name, port)
            published[(name, int(str(target).rsplit(":", 1)[-1]))] = host_ip
            if name != "proxy":
                assert host_ip == "127.0.0.1", (name, port)
    assert published[("graph", 8080)] == published[("policy", 8081)] == "127.0.0.1"
    assert ("proxy", 7070) in published
    assert not any(name in {"verifier", "redis", "opa"} for name, _ in published), "internal services stay internal"


def test_every_service_but_opa_has_a_healthcheck_on_its_own_port() -> None:
    services = _services()
    for name, service in services.items():
        if name in ("opa", "agent"):  # distroless image: nothing in it can probe; a client: nothing to probe
            assert "healthcheck" not in service
            continue
        test = " ".join(service["healthcheck"]["test"])
        if name in SETTINGS:
            http = sorted(_listening(name, service) - {50051, 50052, 50053})
            assert len(http) == 1, (name, http)
            assert f"http://127.0.0.1:{http[0]}/readyz" in test, (name, test)
        elif name == "demo":
            assert "9001" in test


def test_depends_on_waits_on_health_where_the_dependency_has_a_healthcheck() -> None:
    services = _services()
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            expected = "service_healthy" if "healthcheck" in services[dependency] else "service_started"
            assert condition == {"condition": expected}, (name, dependency)
    assert set(services["proxy"]["depends_on"]) == {"policy", "verifier", "graph", "redis", "demo"}
    assert set(services["graph"]["depends_on"]) == {"policy", "neo4j"}
    assert set(services["agent"]["depends_on"]) == {"proxy", "demo"}


def test_prometheus_loads_the_ops_rules_and_scrapes_every_service_metrics_port() -> None:
    prometheus = _services()["prometheus"]
    mounts = dict(volume.split(":")[:2] for volume in prometheus["volumes"] if volume.startswith("./"))
    config_path = next(target for source, target in mounts.items() if source.endswith("prometheus.yml"))
    assert config_path in " ".join(prometheus["command"])
    source = next(source for source, target in mounts.items() if target == config_path)
    config = yaml.safe_load((ROOT / source).read_text())
    rules_target = mounts["./ops/prometheus/bastion-rules.yaml"]
    assert config["rule_files"] == [rules_target]
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for s in job["static_configs"]
        for target in s["targets"]
    }
    services = _services()
    for name in SETTINGS:
        host, _, port = targets[f"bastion-{name}"].partition(":")
        assert host == name
        assert int(port) in _listening(name, services[name]) - {50051, 50052, 50053}, name
    # BastionVerifierDown selects the verifier's scrape job by name.
    assert re.fullmatch(".*verifier.*", "bastion-verifier")


def test_the_compose_bastion_yaml_is_valid() -> None:
    config = load_app_config(ROOT / "examples" / "compose" / "bastion.yaml")
    assert config.servers["demo"].url == "http://demo:9001/mcp"
    assert {"proxy:7070", "graph:8080", "policy:8081"} <= set(config.allowed_hosts)


def test_the_demo_config_is_valid_and_its_policy_exists() -> None:
    config = load_app_config(ROOT / "examples" / "bastion.yaml")
    assert set(config.servers) == {"demo"}
    assert all(path.exists() for path in config.policies)
