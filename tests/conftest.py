"""Session-wide fixtures: one real Neo4j per test session, started only when a test asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures.neo4j import Neo4jServer, running_neo4j


@pytest.fixture(scope="session")
def neo4j_server() -> Iterator[Neo4jServer]:
    # A JVM start costs seconds: every test of the Neo4j backend shares this one and
    # empties the database first (fixtures.graphstores.wipe_neo4j).
    with running_neo4j() as server:
        yield server
