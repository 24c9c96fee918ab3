"""The wheel is built from the package-dir mapping and carries every module and data file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MAPPING = {
    "bastion": "bastion",
    "bastion/proxy": "proxy",
    "bastion/policy": "policy",
    "bastion/graph": "graph",
    "bastion/verifier": "verifier",
    "bastion/eval": "eval",
    "bastion/dashboard": "dashboard",
}


def test_wheel_contains_every_service_module_and_the_generated_stubs(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv",
            "var",
            ".git",
            "tests",
            "__pycache__",
            "*.egg-info",
            "build",
            ".mypy_cache",
            ".ruff_cache",
            ".hypothesis",
        ),
    )
    for link in (source / "bastion").iterdir():
        if link.is_symlink():
            link.unlink()  # as the Dockerfile does: the mapping alone must produce the layout
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "w"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "w").glob("bastion-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for package, folder in MAPPING.items():
        for module in (ROOT / folder).rglob("*.py"):
            relative = module.relative_to(ROOT / folder)
            if "__pycache__" in relative.parts or (folder == "bastion" and relative.parts[0] in MAPPING_DIRS):
                continue
            expected.add(f"{package}/{relative.as_posix()}")
    assert expected - names == set()
    assert {"bastion/py.typed", "bastion/policy/schema.json", "bastion/v1/policy_pb2.pyi"} <= names
    assert {f"bastion/dashboard/static/{name}" for name in ("index.html", "app.js", "style.css")} <= names


MAPPING_DIRS = {"proxy", "policy", "graph", "verifier", "eval", "dashboard"}
