"""Two proxies pointed at one $BASTION_HOME: the second fails at start, naming the first,
instead of interleaving its records with the first's journal (and corrupting both); the
first's run file (its addresses, which `bastion up` and the CLI read) is left alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from bastion._runfile import run_dir, write_runfile
from bastion.proxy._journal import Journal

ANY_PORT = "127.0.0.1:0"


async def test_a_second_proxy_on_the_same_home_fails_at_start_and_names_the_first(tmp_path: Path) -> None:
    held = Journal.open(tmp_path / "journal")  # the first proxy's journal, open and locked
    held.append(b"first proxy's record")
    write_runfile(tmp_path, "proxy", {"http": "127.0.0.1:7070"})
    config = tmp_path / "bastion.yaml"
    config.write_text("servers: {}\n")
    env = {
        **os.environ,
        "BASTION_HOME": str(tmp_path),
        "BASTION_PROXY_ADDR": ANY_PORT,
        "BASTION_POLICY_GRPC_ADDR": "127.0.0.1:1",
        "BASTION_VERIFIER_ADDR": "127.0.0.1:1",
        "BASTION_GRAPH_GRPC_ADDR": "127.0.0.1:1",
    }
    try:
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bastion", "proxy", "serve", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        await held.close()

    output = second.stdout + second.stderr
    assert second.returncode != 0, output
    assert f"in use by another proxy (pid {os.getpid()})" in output
    assert "give each proxy its own BASTION_HOME" in output
    assert (run_dir(tmp_path) / "proxy.json").exists()  # the first proxy's addresses stay
    reopened = Journal.open(tmp_path / "journal")
    try:
        assert reopened.durable.offset > 0  # nothing of the first's journal was touched
    finally:
        await reopened.close()
