"""The garbage collector's settings once a service serves (bastion/_service.py settle_heap)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from bastion._service import GC_YOUNG_THRESHOLD, settle_heap


def test_settle_heap_freezes_what_exists_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        kept = [[index] for index in range(1000)]  # tracked containers, alive across the call
        settle_heap()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        # Cycles made afterwards are still found and freed.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_service_settles_its_heap_once_it_is_listening(tmp_path: Path) -> None:
    # run_service in a child of its own: it installs signal handlers, logging and a loop.
    script = textwrap.dedent(
        """
        import asyncio, gc, json, sys
        from bastion._service import run_service
        from bastion._settings import CommonSettings

        seen = {}

        async def serve(settings, app, ready, stop):
            seen["before"] = [gc.get_threshold()[0], gc.get_freeze_count()]
            ready({"http": "127.0.0.1:1"})
            seen["after"] = [gc.get_threshold()[0], gc.get_freeze_count()]

        code = run_service("probe", CommonSettings(), None, serve, reads_config=False)
        print(json.dumps({"code": code, **seen}))
        """
    )
    env = {"PATH": "/usr/bin:/bin", "BASTION_HOME": str(tmp_path), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0
    assert seen["before"][0] != GC_YOUNG_THRESHOLD
    assert seen["after"][0] == GC_YOUNG_THRESHOLD
    assert seen["after"][1] > seen["before"][1] >= 0
