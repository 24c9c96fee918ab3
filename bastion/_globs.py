"""Glob patterns as policies write them (`*` any run, `?` one character, the rest literal),
compiled once into one regex: shared by the policy engine and the proxy, which must
match agents exactly as the engine does (a proxy-side difference would hand an agent
another policy's verifier settings)."""

from __future__ import annotations

import re
from collections.abc import Sequence


def compile_patterns(patterns: Sequence[str], *, ignore_case: bool = False) -> re.Pattern[str] | None:
    """One regex (use `fullmatch`) for a list of globs; None when they match everything."""
    if any(set(pattern) == {"*"} for pattern in patterns):
        return None
    alternatives = "|".join(f"(?:{_glob_regex(pattern)})" for pattern in dict.fromkeys(patterns))
    return re.compile(alternatives, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _glob_regex(pattern: str) -> str:
    # A naive translation (`*` → `.*`) backtracks polynomially on patterns like
    # `*a*a*a*b`, and both the agent id and the tool name come from callers. Taking the
    # leftmost match of every middle segment is always right for globs (it leaves the
    # most room for the rest), so those segments go in atomic groups that never retry;
    # only the last `.*` backtracks, once, to pin the final segment to the end.
    parts = pattern.split("*")
    if len(parts) == 1:
        return _literal(pattern)
    head, *middle, tail = parts
    segments = "".join(f"(?>.*?{_literal(segment)})" for segment in middle if segment)
    return f"{_literal(head)}{segments}.*{_literal(tail)}"


def _literal(text: str) -> str:
    return "".join("." if char == "?" else re.escape(char) for char in text)
