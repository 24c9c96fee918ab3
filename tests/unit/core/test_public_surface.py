"""The packages' public surfaces are deliberate: exactly what their docstrings document."""

from __future__ import annotations

import re
from pathlib import Path

import bastion
import bastion.proxy
from bastion._errors import BastionError

ROOT = Path(__file__).resolve().parents[3]


def test_core_exports_the_error_tree_and_version() -> None:
    errors = {cls.__name__ for cls in _subclasses(BastionError)} | {"BastionError"}
    assert set(bastion.__all__) == errors | {"__version__"}


def test_proxy_exports_exactly_its_documented_surface() -> None:
    assert sorted(bastion.proxy.__all__) == ["ProxySettings", "main", "serve", "wrap"]
    for name in bastion.proxy.__all__:
        assert f"`{name}" in (bastion.proxy.__doc__ or "")


def test_every_error_class_and_code_is_documented_in_errors_md() -> None:
    text = (ROOT / "docs" / "errors.md").read_text()
    for cls in _subclasses(BastionError):
        assert f"`{cls.__name__}`" in text, f"{cls.__name__} missing from docs/errors.md"
        assert f"`{cls.code}`" in text, f"{cls.code} missing from docs/errors.md"


def test_every_bastion_rule_code_the_proxy_emits_is_documented() -> None:
    text = (ROOT / "docs" / "errors.md").read_text()
    # _tracing.py names spans and attributes (`bastion.node_id`, …) and only echoes codes.
    sources = "".join(p.read_text() for p in (ROOT / "proxy").glob("*.py") if p.name != "_tracing.py")
    emitted = set(re.findall(r'"(bastion\.[a-z_.]+)"', sources)) - {"bastion.proxy", "bastion.dev/task"}
    assert emitted, "no codes found: the pattern no longer matches the source"
    missing = sorted(code for code in emitted if f"`{code}`" not in text)
    assert missing == [], f"undocumented codes: {missing}"


def _subclasses(cls: type[BastionError]) -> list[type[BastionError]]:
    found: list[type[BastionError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found
