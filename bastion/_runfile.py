"""Run files: each service writes $BASTION_HOME/run/<name>.json once it is listening.

They carry the bound addresses (a service started on port 0 only knows its port
after binding), so `bastion up` and the tests can find each service without
guessing free ports.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson


def run_dir(home: Path) -> Path:
    return home / "run"


def write_runfile(home: Path, name: str, addresses: Mapping[str, object]) -> Path:
    directory = run_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(orjson.dumps({"pid": os.getpid(), **addresses}))
    os.replace(tmp, path)
    return path


def remove_runfile(home: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run_dir(home) / f"{name}.json").unlink()


def read_runfile(home: Path, name: str, pid: int) -> dict[str, Any] | None:
    """What `name` reported, if the process `pid` wrote it (stale files of dead processes
    are ignored); None while it has not."""
    with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
        info: dict[str, Any] = orjson.loads((run_dir(home) / f"{name}.json").read_bytes())
        if info.get("pid") == pid:
            return info
    return None
