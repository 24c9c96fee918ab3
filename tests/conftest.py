"""Fixtures shared across test layers.

- `neo4j_server`: one real Neo4j per test session, started only when a test asks for it.
- `upstream`, `stack`: for the e2e modules, each module its own demo MCP server and its own
  stack from `bastion up` (a module defining a fixture of the same name uses its own).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures.neo4j import Neo4jServer, running_neo4j
from fixtures.stack import ROOT, Stack, bastion_up, write_config
from fixtures.upstream import DemoUpstream, demo_upstream
from hypothesis import settings

# No per-example deadline: hypothesis's 200 ms turns one stall of a loaded CI machine into a
# failure ("Flaky"); what a property bounds is asserted by the property itself.
settings.register_profile("bastion", deadline=None)
settings.load_profile("bastion")


@pytest.fixture(scope="session")
def neo4j_server() -> Iterator[Neo4jServer]:
    # A JVM start costs seconds: every test of the Neo4j backend shares this one and
    # empties the database first (fixtures.graphstores.wipe_neo4j).
    with running_neo4j() as server:
        yield server


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: DemoUpstream) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    config = write_config(workdir / "bastion.yaml", upstream.url, [ROOT / "examples" / "policies" / "demo.yaml"])
    with bastion_up(workdir, config) as running:
        yield running
