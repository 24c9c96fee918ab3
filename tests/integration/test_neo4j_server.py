"""scripts/neo4j-up gives a real Neo4j 5.26 that the official driver can query over Bolt."""

from __future__ import annotations

import neo4j
from fixtures.neo4j import Neo4jServer


def test_neo4j_up_serves_bolt_5_26_without_auth(neo4j_server: Neo4jServer) -> None:
    assert neo4j_server.url.startswith("bolt://127.0.0.1:")
    assert neo4j_server.alive()
    with neo4j.GraphDatabase.driver(neo4j_server.url, auth=None) as driver:
        records, _, _ = driver.execute_query("RETURN 1 AS one")
        assert [record["one"] for record in records] == [1]
        components, _, _ = driver.execute_query("CALL dbms.components() YIELD versions RETURN versions[0] AS v")
        assert str(components[0]["v"]).startswith("5.26.")
