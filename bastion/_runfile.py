"""Run files: each service writes $BASTION_HOME/run/<name>.json once it is listening.

They carry the bound addresses (a service started on port 0 only knows its port
after binding), so `bastion up` and the tests can find each service without
guessing free ports.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ._errors import ConfigError


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


def wait_runfile(home: Path, name: str, pid: int, timeout: float) -> dict[str, Any]:
    """Wait until `name` written by process `pid` appears; stale files of dead processes are ignored."""
    path = run_dir(home) / f"{name}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
            data: dict[str, Any] = orjson.loads(path.read_bytes())
            if data.get("pid") == pid:
                return data
        time.sleep(0.05)
    raise ConfigError(f"{name} did not report ready within {timeout:.0f}s (no {path})")
