"""charts/bastion: lint, render with every value set in charts/bastion/ci/, validate each rendered
manifest offline against the Kubernetes schemas (kubernetes-validate, strict) and the CRDs
against the schemas kept in tests/fixtures/crds/, and check that what the chart sets is what
the services read. helm comes from scripts/helm-up; without it these tests fail, not skip."""

from __future__ import annotations

import base64
import functools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from bastion._appconfig import AppConfig
from bastion._settings import CommonSettings
from bastion.graph._config import GraphSettings
from bastion.graph._store._neo4j import split_url
from bastion.policy._config import PolicySettings
from bastion.proxy._config import ProxySettings
from bastion.verifier._config import VerifierSettings

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "bastion"
CRDS = ROOT / "tests" / "fixtures" / "crds"
VALUE_SETS = sorted(path.name for path in (CHART / "ci").glob("*-values.yaml"))
#: The Kubernetes version scripts/helm-up builds helm to assume (client-go v0.36).
KUBE_VERSION = "1.36.0"
SETTINGS: dict[str, type[CommonSettings]] = {
    "proxy": ProxySettings,
    "policy": PolicySettings,
    "graph": GraphSettings,
    "verifier": VerifierSettings,
}
SECRETS = ["--set", "secrets.serviceToken=t", "--set", "secrets.jwtSigningKey=k"]

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> str:
    """The pinned helm, built once into the tools cache (minutes cold, instant cached)."""
    try:
        found = subprocess.run(
            [str(ROOT / "scripts" / "helm-up")], capture_output=True, text=True, timeout=1200, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"scripts/helm-up could not run: {exc}")
    if found.returncode != 0:
        pytest.fail(f"scripts/helm-up failed (exit {found.returncode}):\n{found.stderr[-3000:]}")
    return found.stdout.strip().splitlines()[-1]


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


def _template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _helm(helm, "template", "rel", str(CHART), "--namespace", "agents", *args)


@functools.cache
def _rendered(helm: str, value_set: str) -> tuple[Manifest, ...]:
    done = _template(helm, "-f", str(CHART / "ci" / value_set))
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def _by_kind(manifests: tuple[Manifest, ...], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def _workloads(manifests: tuple[Manifest, ...]) -> Iterator[tuple[str, Manifest]]:
    """(component, pod template) of every Deployment and StatefulSet."""
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "StatefulSet"):
            template = manifest["spec"]["template"]
            yield template["metadata"]["labels"]["app.kubernetes.io/component"], template


def _env(container: Manifest) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def _fails(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0, "helm accepted values it should refuse"
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_passes_helm_lint_strict(helm: str, value_set: str) -> None:
    done = _helm(helm, "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / value_set))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_manifest_is_valid_against_its_schema(helm: str, value_set: str) -> None:
    crds = {
        "ServiceMonitor": json.loads((CRDS / "servicemonitor-monitoring.coreos.com-v1.json").read_text()),
        "PrometheusRule": json.loads((CRDS / "prometheusrule-monitoring.coreos.com-v1.json").read_text()),
    }
    for manifest in _rendered(helm, value_set):
        if manifest["kind"] in crds:
            jsonschema.validate(manifest, crds[manifest["kind"]])
        else:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def test_value_sets_cover_hpa_ingress_redis_monitoring_neo4j_and_an_existing_secret(helm: str) -> None:
    full = _rendered(helm, "full-values.yaml")
    kinds = {m["kind"] for m in full}
    assert {"HorizontalPodAutoscaler", "Ingress", "ServiceMonitor", "PrometheusRule"} <= kinds
    defaults = {m["kind"] for m in _rendered(helm, "default-values.yaml")}
    assert not {"HorizontalPodAutoscaler", "Ingress", "ServiceMonitor", "PrometheusRule"} & defaults
    external = _rendered(helm, "external-neo4j-values.yaml")
    assert not _by_kind(external, "Secret"), "existingSecret must not create a Secret"
    graph = _by_kind(external, "Deployment")["rel-bastion-graph"]["spec"]["template"]["spec"]
    assert _env(graph["containers"][0])["BASTION_GRAPH_URL"] == {
        "secretKeyRef": {"name": "bastion-prod", "key": "graph-url"}
    }
    assert "rel-bastion-graph" not in _by_kind(external, "PersistentVolumeClaim")


def test_the_graph_on_neo4j_reads_a_url_its_store_parses_from_the_secret_and_needs_no_volume(helm: str) -> None:
    url = "neo4j://bastion:s%40cret@graph-db.data:7687/bastion"
    done = _template(helm, *SECRETS, "--set", "graph.store=neo4j", "--set-string", f"graph.neo4j.url={url}")
    assert done.returncode == 0, done.stderr
    manifests = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
    secrets = {name: m for name, m in _by_kind(manifests, "Secret").items() if "graph-url" in m.get("data", {})}
    assert len(secrets) == 1
    ((secret_name, secret),) = secrets.items()
    stored = base64.b64decode(secret["data"]["graph-url"]).decode()
    # What the graph's Neo4j store makes of it: host, credentials (percent-decoded), database.
    assert split_url(stored) == ("neo4j://graph-db.data:7687", ("bastion", "s@cret"), "bastion")
    graph = _by_kind(manifests, "Deployment")["rel-bastion-graph"]["spec"]["template"]["spec"]
    assert _env(graph["containers"][0])["BASTION_GRAPH_URL"] == {
        "secretKeyRef": {"name": secret_name, "key": "graph-url"}
    }
    # The graph's data lives in Neo4j: no claim, and $BASTION_HOME is scratch space.
    assert "rel-bastion-graph" not in _by_kind(manifests, "PersistentVolumeClaim")
    home = next(volume for volume in graph["volumes"] if volume["name"] == "home")
    assert "emptyDir" in home
    for manifest in manifests:
        if manifest["kind"] not in ("ServiceMonitor", "PrometheusRule"):
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_env_var_is_a_setting_of_its_service_and_wires_the_chart_services(helm: str, value_set: str) -> None:
    manifests = _rendered(helm, value_set)
    services = {name: m for name, m in _by_kind(manifests, "Service").items()}
    ports = {
        f"{name}:{port['port']}"
        for name, service in services.items()
        for port in service["spec"]["ports"]
        if service["spec"].get("clusterIP") != "None"
    }
    seen = set()
    for component, template in _workloads(manifests):
        seen.add(component)
        settings = SETTINGS[component]
        known = {f"BASTION_{name.upper()}" for name in settings.model_fields}
        env = _env(template["spec"]["containers"][0])
        assert set(env) <= known, f"{component} sets variables it does not read: {set(env) - known}"
        required = {f"BASTION_{name.upper()}" for name, field in settings.model_fields.items() if field.is_required()}
        assert required <= set(env)
        # Every pod shares one service token, from the Secret (but a verifier with its own
        # token, which holds that one alone); state and config at the image's paths.
        own = component == "verifier" and "BASTION_VERIFIER_TOKEN" in env
        assert "secretKeyRef" in env["BASTION_VERIFIER_TOKEN" if own else "BASTION_SERVICE_TOKEN"]
        assert env["BASTION_HOME"] == "/var/lib/bastion"
        assert env["BASTION_CONFIG"] == "/etc/bastion/config/bastion.yaml"
        for name, value in env.items():
            if not (name.endswith("_ADDR") and isinstance(value, str)):
                continue
            if value.startswith("0.0.0.0:"):  # a listen address: the container port exists
                declared = {p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
                assert int(value.rsplit(":", 1)[1]) in declared, (component, name)
            else:  # a peer: a Service of this release on that port
                assert value in ports, (component, name, value)
        # Each service's settings load from exactly what the chart sets.
        plain = {k: v for k, v in env.items() if isinstance(v, str)}
        loaded = settings.model_validate({k.removeprefix("BASTION_").lower(): v for k, v in plain.items()})
        assert loaded is not None
    assert seen == set(SETTINGS)


def test_proxy_listens_where_its_callers_reach_it_and_every_peer_address_matches_settings(helm: str) -> None:
    manifests = _rendered(helm, "full-values.yaml")
    proxy = _by_kind(manifests, "StatefulSet")["rel-bastion-proxy"]["spec"]["template"]["spec"]["containers"][0]
    env = _env(proxy)
    assert env["BASTION_PROXY_ADDR"] == "0.0.0.0:7070"
    assert env["BASTION_POLICY_GRPC_ADDR"] == "rel-bastion-policy:50051"
    assert env["BASTION_VERIFIER_ADDR"] == "rel-bastion-verifier:50052"
    assert env["BASTION_GRAPH_GRPC_ADDR"] == "rel-bastion-graph:50053"
    assert env["BASTION_REDIS_URL"] == {"secretKeyRef": {"name": "rel-bastion-secrets", "key": "redis-url"}}


def test_the_verifier_can_hold_a_token_of_its_own_and_holds_no_other_secret(helm: str) -> None:
    own = {"secretKeyRef": {"name": "rel-bastion-secrets", "key": "verifier-token"}}
    service = {"secretKeyRef": {"name": "rel-bastion-secrets", "key": "service-token"}}
    for value_set, owned in (("full-values.yaml", True), ("default-values.yaml", False)):
        manifests = _rendered(helm, value_set)
        envs = {component: _env(template["spec"]["containers"][0]) for component, template in _workloads(manifests)}
        assert envs["verifier"].get("BASTION_VERIFIER_TOKEN") == (own if owned else None), value_set
        second = {"secretKeyRef": {"name": "rel-bastion-secrets", "key": "verifier-second-token", "optional": True}}
        assert envs["verifier"].get("BASTION_VERIFIER_SECOND_TOKEN") == (second if owned else None), value_set
        assert "BASTION_VERIFIER_SECOND_TOKEN" not in envs["proxy"], value_set
        assert envs["proxy"].get("BASTION_VERIFIER_TOKEN") == (own if owned else None), value_set
        assert ("BASTION_SERVICE_TOKEN" in envs["verifier"]) is not owned, value_set
        for component in ("proxy", "policy", "graph"):
            assert envs[component]["BASTION_SERVICE_TOKEN"] == service, (value_set, component)
            if component != "proxy":
                assert "BASTION_VERIFIER_TOKEN" not in envs[component], (value_set, component)
        # Nor any file of the Secret (the JWT signing key mints operator tokens); the config
        # it loads, which names credentials it does not read, is a ConfigMap.
        verifier = next(template["spec"] for component, template in _workloads(manifests) if component == "verifier")
        assert {volume["name"] for volume in verifier["volumes"]} == {"home", "tmp", "config", "policies"}, value_set
        assert all("secret" not in volume for volume in verifier["volumes"]), value_set
        secret = _by_kind(manifests, "Secret")["rel-bastion-secrets"]["data"]
        assert ("verifier-token" in secret) is owned, value_set
        assert "verifier-second-token" not in secret, value_set  # only while a rotation is under way
        if owned:
            assert base64.b64decode(secret["verifier-token"]) == b"test-verifier-token-of-its-own"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_only_the_proxy_mounts_the_secret_files_and_the_jwt_key_goes_where_it_is_read(
    helm: str, value_set: str
) -> None:
    # Upstream credentials are read by the proxy alone (bastion._appconfig.load_app_config).
    for component, template in _workloads(_rendered(helm, value_set)):
        mounts = {m["mountPath"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
        secret = next((v["secret"] for v in template["spec"]["volumes"] if "secret" in v), None)
        if component in ("policy", "graph"):  # the kubelet writes only the JWT key to their node
            assert secret is not None
            assert secret["items"] == [{"key": "jwt-signing-key", "path": "jwt-signing-key"}], (value_set, component)
        elif component == "proxy":
            assert secret is not None
            assert "items" not in secret, value_set
        assert ("/etc/bastion/secrets" in mounts) is (component == "proxy"), (value_set, component)
        key = mounts.get("/var/lib/bastion/keys/dev-ed25519.pem")
        if component == "verifier":
            assert key is None, value_set
        else:
            assert key == {
                "name": "secrets",
                "mountPath": "/var/lib/bastion/keys/dev-ed25519.pem",
                "subPath": "jwt-signing-key",
                "readOnly": True,
            }, (value_set, component)


def test_a_changed_secret_restarts_the_pods_that_read_it(helm: str) -> None:
    # Variables from the Secret are read at start: without a new pod a rotated token is not used.
    def annotations(token: str) -> dict[str, str]:
        done = _template(helm, "--set", f"secrets.serviceToken={token}", "--set", "secrets.jwtSigningKey=k")
        assert done.returncode == 0, done.stderr
        manifests = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
        return {c: t["metadata"]["annotations"]["checksum/secret"] for c, t in _workloads(manifests)}

    first, second = annotations("a-token"), annotations("another-token")
    assert set(first) == {"proxy", "policy", "graph", "verifier"}
    assert all(first[component] != second[component] for component in first)


def test_every_service_holding_the_service_token_may_hold_a_second_one(helm: str) -> None:
    second = {"secretKeyRef": {"name": "rel-bastion-secrets", "key": "service-second-token", "optional": True}}
    for value_set, owned in (("full-values.yaml", True), ("default-values.yaml", False)):
        for component, template in _workloads(_rendered(helm, value_set)):
            env = _env(template["spec"]["containers"][0])
            holds = "BASTION_SERVICE_TOKEN" in env
            assert holds is not (owned and component == "verifier"), (value_set, component)
            assert env.get("BASTION_SERVICE_SECOND_TOKEN") == (second if holds else None), (value_set, component)
    done = _template(helm, *SECRETS, "--set", "secrets.serviceSecondToken=the-next-service-token-01")
    assert done.returncode == 0, done.stderr
    data = next(d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Secret")["data"]
    assert base64.b64decode(data["service-second-token"]) == b"the-next-service-token-01"


def test_a_rotation_puts_the_second_verifier_token_in_the_secret(helm: str) -> None:
    args = ["--set", "verifier.ownToken=true", "--set", "secrets.verifierToken=the-new-token-0123456789"]
    done = _template(helm, *SECRETS, *args, "--set", "secrets.verifierSecondToken=the-old-token-0123456789")
    assert done.returncode == 0, done.stderr
    secret = next(d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Secret")["data"]
    assert base64.b64decode(secret["verifier-second-token"]) == b"the-old-token-0123456789"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_pod_is_hardened(helm: str, value_set: str) -> None:
    for component, template in _workloads(_rendered(helm, value_set)):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, component
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, component
        assert pod["automountServiceAccountToken"] is False, component
        container = pod["containers"][0]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, component
        assert context["allowPrivilegeEscalation"] is False, component
        assert context["capabilities"] == {"drop": ["ALL"]}, component
        mounts = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert {"/var/lib/bastion", "/tmp"} <= mounts, component
        assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(container), component
        assert container["resources"]["requests"], component


def test_probes_use_http_health_where_served_and_grpc_health_on_the_verifier(helm: str) -> None:
    probes = {c: t["spec"]["containers"][0] for c, t in _workloads(_rendered(helm, "default-values.yaml"))}
    for component in ("proxy", "graph"):
        assert probes[component]["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert probes[component]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["policy"]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["policy"]["readinessProbe"]["grpc"] == {"port": 50051}
    assert probes["verifier"]["readinessProbe"]["grpc"] == {"port": 50052}


def test_grpc_tls_gives_every_service_the_certificate_and_probes_its_grpc_ports_over_tcp(helm: str) -> None:
    tls_env = {
        "BASTION_GRPC_TLS_CERT": "/etc/bastion/grpc-tls/tls.crt",
        "BASTION_GRPC_TLS_KEY": "/etc/bastion/grpc-tls/tls.key",
        "BASTION_GRPC_TLS_CA": "/etc/bastion/grpc-tls/ca.crt",
    }
    on = dict(_workloads(_rendered(helm, "external-neo4j-values.yaml")))
    assert set(on) == {"proxy", "policy", "graph", "verifier"}
    for component, template in on.items():
        container = template["spec"]["containers"][0]
        env = _env(container)
        assert {name: env.get(name) for name in tls_env} == tls_env, component
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["grpc-tls"] == {"name": "grpc-tls", "mountPath": "/etc/bastion/grpc-tls", "readOnly": True}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["grpc-tls"]["secret"]["secretName"] == "bastion-grpc-tls", component
        # The three files and nothing else of that Secret.
        assert [item["key"] for item in volumes["grpc-tls"]["secret"]["items"]] == ["tls.crt", "tls.key", "ca.crt"]
        # The kubelet's gRPC probe brings no client certificate: a TCP check instead.
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert "grpc" not in container.get(probe, {}), (component, probe)
    assert on["verifier"]["spec"]["containers"][0]["readinessProbe"]["tcpSocket"] == {"port": 50052}
    assert on["policy"]["spec"]["containers"][0]["readinessProbe"]["tcpSocket"] == {"port": 50051}
    for component, template in _workloads(_rendered(helm, "default-values.yaml")):
        container = template["spec"]["containers"][0]
        assert not set(tls_env) & set(_env(container)), component
        assert "grpc-tls" not in {v["name"] for v in template["spec"]["volumes"]}, component
    # Every variable the chart sets is a setting the services read (the env-var test above
    # covers the value set); and the three are read as files, by bastion._tls.
    for name in tls_env:
        assert name.removeprefix("BASTION_").lower() in CommonSettings.model_fields


def test_proxy_journal_lives_on_a_claim_per_replica_kept_on_scale_down(helm: str) -> None:
    proxy = _by_kind(_rendered(helm, "full-values.yaml"), "StatefulSet")["rel-bastion-proxy"]["spec"]
    assert [claim["metadata"]["name"] for claim in proxy["volumeClaimTemplates"]] == ["home"]
    assert proxy["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    volumes = {v["name"] for v in proxy["template"]["spec"]["volumes"]}
    assert "home" not in volumes, "the journal must not be an emptyDir"
    assert "replicas" not in proxy, "the HPA owns the replica count"


def test_network_policies_let_agents_reach_only_the_proxy(helm: str) -> None:
    policies = _by_kind(_rendered(helm, "full-values.yaml"), "NetworkPolicy")

    def callers(name: str, port: str) -> list[str]:
        found = []
        for rule in policies[f"rel-bastion-{name}"]["spec"]["ingress"]:
            if any(p["port"] == port for p in rule["ports"]):
                for peer in rule["from"]:
                    labels = peer.get("podSelector", {}).get("matchLabels", {})
                    found.append(labels.get("app.kubernetes.io/component", "external"))
        return sorted(found)

    assert callers("verifier", "grpc") == ["proxy"]
    assert callers("policy", "grpc") == ["graph", "proxy"]
    assert callers("graph", "grpc") == ["policy", "proxy"]
    assert "agents" not in json.dumps(policies["rel-bastion-graph"]) + json.dumps(policies["rel-bastion-policy"])
    assert "bastion.dev/agents" in json.dumps(policies["rel-bastion-proxy"])


def test_verifier_metrics_are_scraped_on_their_own_port_reachable_only_by_prometheus(helm: str) -> None:
    manifests = _rendered(helm, "full-values.yaml")
    verifier = _by_kind(manifests, "Deployment")["rel-bastion-verifier"]["spec"]["template"]["spec"]["containers"][0]
    assert _env(verifier)["BASTION_VERIFIER_METRICS_ADDR"] == "0.0.0.0:9464"
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in verifier["ports"]
    service = _by_kind(manifests, "Service")["rel-bastion-verifier"]["spec"]["ports"]
    assert {"name": "metrics", "port": 9464, "targetPort": "metrics"} in service
    monitor = next(iter(_by_kind(manifests, "ServiceMonitor").values()))["spec"]
    assert "verifier" in monitor["selector"]["matchExpressions"][0]["values"]
    assert {"port": "metrics", "path": "/metrics", "interval": "30s"} in monitor["endpoints"]
    rules = _by_kind(manifests, "NetworkPolicy")["rel-bastion-verifier"]["spec"]["ingress"]
    metrics_from = [rule["from"] for rule in rules if rule["ports"] == [{"port": "metrics"}]]
    assert metrics_from == [[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]]
    # Without prometheusFrom the port stays closed, like the other services' /metrics.
    default = _by_kind(_rendered(helm, "default-values.yaml"), "NetworkPolicy")["rel-bastion-verifier"]["spec"]
    assert [rule["ports"] for rule in default["ingress"]] == [[{"port": "grpc"}]]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_bastion_yaml_is_a_valid_app_config(helm: str, value_set: str) -> None:
    config_map = _by_kind(_rendered(helm, value_set), "ConfigMap")["rel-bastion-config"]
    raw = yaml.safe_load(config_map["data"]["bastion.yaml"])
    config = AppConfig.model_validate(raw)
    assert "rel-bastion-proxy.agents.svc" in config.allowed_hosts
    for path in config.policies:
        assert path.parent == Path("/etc/bastion/policies")


def test_prometheus_rule_carries_the_ops_rules_with_runbook_links(helm: str) -> None:
    assert (CHART / "files" / "bastion-rules.yaml").read_text() == (
        ROOT / "ops" / "prometheus" / "bastion-rules.yaml"
    ).read_text(), "copy ops/prometheus/bastion-rules.yaml to charts/bastion/files/"
    rule = next(iter(_by_kind(_rendered(helm, "full-values.yaml"), "PrometheusRule").values()))
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    ops = yaml.safe_load((ROOT / "ops" / "prometheus" / "bastion-rules.yaml").read_text())
    assert len(alerts) == sum(len(g["rules"]) for g in ops["groups"])
    for alert in alerts:
        assert alert["annotations"]["runbook_url"].endswith(f"/ops/runbooks/{alert['labels']['runbook']}.md")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--set", "proxy.replica=2"], ["additional properties 'replica' not allowed"]),
        (["--set", "proxy.replicas=two"], ["/proxy/replicas", "integer"]),
        (["--set", "graph.store=postgres"], ["/graph/store"]),
        (["--set", "proxy.settings.MAX_BODY=1"], ["/proxy/settings"]),
        (["--set", "logLevel=verbose"], ["/logLevel"]),
        (["--set", "secrets.verifierToken=too-short"], ["/secrets/verifierToken"]),
        (["--set", "secrets.verifierToken=sixteen characters with spaces"], ["/secrets/verifierToken"]),
        (["--set", "verifier.ownToken=yes"], ["/verifier/ownToken", "boolean"]),
        (["--set", "grpcTls.secretName=Not_A_Name"], ["/grpcTls/secretName"]),
        (["--set", "grpcTls.cert=tls.crt"], ["additional properties 'cert' not allowed"]),
    ],
    ids=[
        "unknown-key",
        "mistyped-int",
        "bad-enum",
        "setting-without-prefix",
        "bad-log-level",
        "short-verifier-token",
        "verifier-token-with-spaces",
        "own-token-not-a-boolean",
        "grpc-tls-secret-not-a-name",
        "grpc-tls-unknown-key",
    ],
)
def test_schema_rejects_unknown_and_mistyped_values(helm: str, args: list[str], needles: list[str]) -> None:
    _fails(_template(helm, *SECRETS, *args), "values don't meet the specifications of the schema", *needles)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([], "secrets.serviceToken is required"),
        (["--set", "secrets.serviceToken=t"], "secrets.jwtSigningKey is required"),
        ([*SECRETS, "--set", "redis.enabled=true"], "redis.url is required"),
        ([*SECRETS, "--set", "graph.store=neo4j"], "graph.neo4j.url is required"),
        ([*SECRETS, "--set", "proxy.replicas=3"], "redis.enabled is required"),
        ([*SECRETS, "--set", "proxy.autoscaling.enabled=true"], "redis.enabled is required"),
        ([*SECRETS, "--set", "policy.engine=opa"], "policy.opaUrl is required"),
        ([*SECRETS, "--set", "verifier.ownToken=true"], "secrets.verifierToken is required"),
        (
            [
                *("--set", "secrets.jwtSigningKey=k", "--set", "verifier.ownToken=true"),
                *("--set", "secrets.verifierToken=tttttttttttttttt", "--set", "secrets.serviceToken=tttttttttttttttt"),
            ],
            "secrets.verifierToken must differ from secrets.serviceToken",
        ),
    ],
    ids=[
        "service-token",
        "signing-key",
        "redis-url",
        "neo4j-url",
        "replicas-without-redis",
        "hpa-without-redis",
        "opa",
        "verifier-token",
        "verifier-token-is-the-service-token",
    ],
)
def test_missing_required_value_fails_naming_it(helm: str, args: list[str], named: str) -> None:
    _fails(_template(helm, *args), named)
