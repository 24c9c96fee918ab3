"""Graph service settings, the store URL they name, and the package's public surface."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import bastion.graph
from bastion import ConfigError
from bastion.graph import GraphSettings
from bastion.graph._store import is_neo4j, sqlite_path

_GRAPH_VARS = ("BASTION_GRAPH_ADDR", "BASTION_GRAPH_GRPC_ADDR", "BASTION_GRAPH_URL")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _GRAPH_VARS:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_designed_ports_and_embedded_sqlite() -> None:
    settings = GraphSettings()

    assert settings.graph_addr == "127.0.0.1:8080"
    assert settings.graph_grpc_addr == "127.0.0.1:50053"
    assert settings.graph_url == ""


def test_settings_are_read_from_bastion_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_GRAPH_ADDR", "0.0.0.0:9080")
    monkeypatch.setenv("BASTION_GRAPH_GRPC_ADDR", "[::1]:9053")
    monkeypatch.setenv("BASTION_GRAPH_URL", "sqlite:///data/graph.db")

    settings = GraphSettings()

    assert (settings.graph_addr, settings.graph_grpc_addr, settings.graph_url) == (
        "0.0.0.0:9080",
        "[::1]:9053",
        "sqlite:///data/graph.db",
    )


def test_settings_are_frozen() -> None:
    settings = GraphSettings()

    with pytest.raises(ValidationError, match="frozen"):
        settings.graph_addr = "127.0.0.1:1"


def test_every_setting_has_a_description_for_the_generated_docs() -> None:
    undocumented = [name for name, field in GraphSettings.model_fields.items() if not field.description]

    assert undocumented == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", Path("/srv/bastion/graph.db")),
        ("sqlite:///data/graph.db", Path("data/graph.db")),
        ("sqlite:////var/lib/bastion/graph.db", Path("/var/lib/bastion/graph.db")),
    ],
)
def test_graph_url_names_the_sqlite_file(url: str, expected: Path) -> None:
    assert sqlite_path(url, Path("/srv/bastion")) == expected


@pytest.mark.parametrize(
    "url", ["neo4j://localhost:7687", "NEO4J+S://db.example.com", "bolt://u:p@localhost:7687/graph", "bolt+ssc://h"]
)
def test_neo4j_and_bolt_urls_choose_the_neo4j_backend(url: str) -> None:
    assert is_neo4j(url)
    with pytest.raises(ConfigError, match="expected empty, sqlite:///path, or neo4j://"):
        sqlite_path(url, Path("var"))


def test_a_refused_graph_url_does_not_echo_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        sqlite_path("postgres://graph:hunter2@db/graph", Path("var"))
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("url", ["postgres://db/graph", "sqlite://", "sqlite:///", "sqlite:///:memory:", "graph.db"])
def test_graph_url_that_names_no_sqlite_file_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="BASTION_GRAPH_URL"):
        sqlite_path(url, Path("var"))


def test_public_surface_is_exactly_the_documented_one() -> None:
    documented = {
        "main",
        "serve",
        "GraphSettings",
        "create_app",
        "GraphServicer",
        "open_store",
        "GraphStore",
        "SqliteGraphStore",
        "Neo4jGraphStore",
        "IngestResult",
        "WorkflowSummary",
        "WorkflowSnapshot",
        "Node",
        "Edge",
        "LineageHop",
        "DriftPath",
        "DecisionStats",
        "ViolationFilter",
        "Page",
    }

    assert set(bastion.graph.__all__) == documented
    assert len(bastion.graph.__all__) == len(documented)
    assert bastion.graph.__doc__ is not None
    for name in documented:
        assert getattr(bastion.graph, name) is not None
        assert name in bastion.graph.__doc__
