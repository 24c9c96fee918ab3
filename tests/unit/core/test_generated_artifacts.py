"""Committed generated files must match their sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_grpc_stubs_match_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)], check=True, capture_output=True
    )
    generated = sorted(p.name for p in (tmp_path / "bastion" / "v1").iterdir())
    committed = sorted(p.name for p in (ROOT / "bastion" / "v1").glob("*_pb2*.py*"))
    assert generated == committed
    stale = [
        name
        for name in generated
        if (tmp_path / "bastion" / "v1" / name).read_bytes() != (ROOT / "bastion" / "v1" / name).read_bytes()
    ]
    assert stale == [], f"stubs drifted from proto/: {stale} — run `make protos`"


def test_configuration_doc_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
