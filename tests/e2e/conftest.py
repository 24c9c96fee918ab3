"""Each e2e module gets its own demo MCP server and its own stack from `bastion up`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures.stack import ROOT, Stack, bastion_up, write_config
from fixtures.upstream import DemoUpstream, demo_upstream


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
