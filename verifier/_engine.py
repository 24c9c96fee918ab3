"""The reference scorer: a deterministic, explainable deviation score for one action.

Four signals, each adding its weight to the score when it fires:

- ``tool_novelty``: the action's tool (``server__tool``) was never allowed earlier in the
  workflow.
- ``sequence``: the workflow has at least ``min_history`` allowed steps and the transition
  from the last of them to this tool never happened before.
- ``argument_novelty``: the workflow states a task (``ctx.task``) and a string argument
  names a destination the task does not: an email address, the host of a URL, an IBAN
  (mod-97 valid) or a ``0x`` + 40 hex wallet address. It also fires, task or not, when the
  arguments are too large to inspect (see the budgets below).
- ``taint``: the action is a sink and its arguments hold data from untrusted results, as
  the proxy's provenance labels in ``ctx.taint`` say (``_taint.py``): weighted by how much
  of the argument is tainted and whether it came from free text or a structured field.

``deviation_score = min(1, sum of fired weights)``, rounded to 6 places so that weights
adding up to the threshold on paper reach it in floating point. The verdict is BLOCK at
or above the threshold, FLAG above 0, else PASS. verifier/INTERFACE.md has the details.

Pure: no I/O, no logging, no clock, so the same request always gets the same answer.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from google.protobuf import struct_pb2

from bastion._errors import ConfigError
from bastion.v1 import policy_pb2, verifier_pb2

from ._taint import taint_signal

NAME = "reference"
VERSION = "0.1"
SCORER = f"{NAME}/{VERSION}"
SIGNALS = ("tool_novelty", "sequence", "argument_novelty", "taint")

# Protocol traffic and tool listings are what every client does; they are not steps of
# the workflow's behaviour, so they neither count as precedent nor get tool signals.
_NOT_STEPS = frozenset({policy_pb2.MCP_REQUEST, policy_pb2.TOOL_LIST})

# Each pattern starts with a look-behind so a match can only begin at the start of a
# run of its characters: without it a long run with no '@' or '://' is re-scanned from
# every offset, which is quadratic on a multi-megabyte argument.
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@((?:[a-z0-9-]+\.)+[a-z]{2,63})(?![\w-])", re.IGNORECASE | re.ASCII)
_URL_AUTHORITY = re.compile(r"""(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://([^\s/?#\\"'<>]+)""", re.IGNORECASE | re.ASCII)
# Groups of four with optional single space/hyphen separators, as IBANs are printed.
# Case-insensitive because a bank API may accept lower case; the mod-97 check below
# keeps random identifiers from matching.
_IBAN = re.compile(
    r"(?<![a-z0-9])[a-z]{2}[0-9]{2}(?:[ -]?[a-z0-9]{4}){2,7}(?:[ -]?[a-z0-9]{1,4})?(?![a-z0-9])",
    re.IGNORECASE | re.ASCII,
)
_WALLET = re.compile(r"(?<![a-z0-9])0x[0-9a-f]{40}(?![a-z0-9])", re.IGNORECASE | re.ASCII)
_IBAN_SEPARATORS = re.compile(r"[ -]")
_WORD_PUNCTUATION = ".,;:!?()[]{}<>\"'`"
# ISO 13616 reads each letter as the number 10-35 (A-Z); digits stay as they are.
_IBAN_DIGITS = str.maketrans({letter: str(int(letter, 36)) for letter in string.ascii_uppercase})
_SHOWN_DESTINATIONS = 3
_SHOWN_CHARS = 80

# Budgets of the argument scan. Scoring runs on the verifier's event loop, the
# destination passes cost from ~15 ns a byte on plain text to ~230 ns a byte on text
# dense with IBAN-like groups, and a request body may be 4 MiB: unbounded, one padded
# call stalled every other agent's Score for seconds. Within these budgets a request
# takes at most ~75 ms (measured on a 3.9 MiB body with IBAN-like
# text in every string read), well inside the proxy's default 500 ms verifier deadline.
#
# The walk stops at the first string over MAX_STRING_BYTES (UTF-8), which is not read at
# all; once the strings read add up to more than MAX_ARGUMENT_BYTES; or once the
# arguments hold more than MAX_ARGUMENT_VALUES values at any depth (containers included,
# so a wide or deep structure is bounded too). Then argument_novelty fires, whether or
# not a task was stated: padding is how an agent would push a destination past a scan
# with a budget, so arguments too large to inspect are suspicious in themselves. The
# task is read up to MAX_STRING_BYTES, like any one argument.
MAX_STRING_BYTES = 64 * 1024
MAX_ARGUMENT_BYTES = 256 * 1024
MAX_ARGUMENT_VALUES = 10_000


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    """Weights and threshold of the reference scorer (VerifierSettings builds one from env)."""

    threshold: float = 0.8
    novelty_weight: float = 0.4
    sequence_weight: float = 0.3
    argument_weight: float = 0.4
    min_history: int = 3
    #: What a sink argument wholly copied from an untrusted result's free text adds.
    taint_weight: float = 0.8

    def __post_init__(self) -> None:
        # NaN fails every comparison, so these checks also reject it.
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"verifier threshold must be in (0, 1], got {self.threshold}")
        for name in ("novelty_weight", "sequence_weight", "argument_weight", "taint_weight"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"verifier {name} must be in [0, 1], got {value}")
        if self.min_history < 1:
            raise ConfigError(f"verifier min_history must be at least 1, got {self.min_history}")


@dataclass(frozen=True, slots=True)
class ReferenceScorer:
    """Scores one ScoreRequest; immutable and safe to share between concurrent calls."""

    config: ScorerConfig = field(default_factory=ScorerConfig)

    def score(self, request: verifier_pb2.ScoreRequest) -> verifier_pb2.ScoreResponse:
        config = self.config
        fired: list[tuple[float, str]] = []
        action = request.action
        key = _step_key(action.kind, action.server, action.tool or action.prompt or action.resource)
        if key:
            steps = _precedent(request.history)
            if config.novelty_weight > 0 and key not in steps:
                fired.append((config.novelty_weight, f"first use of {key} in this workflow"))
            if config.sequence_weight > 0 and len(steps) >= config.min_history:
                previous = steps[-1]
                if (previous, key) not in pairwise(steps):
                    fired.append((config.sequence_weight, f"first time {key} follows {previous} in this workflow"))
        if config.argument_weight > 0:
            reason = _argument_reason(action.arguments, request.ctx.task)
            if reason:
                fired.append((config.argument_weight, reason))
        weight, reason, origin = taint_signal(action, request.ctx.taint, request.history, config.taint_weight)
        if weight > 0:
            fired.append((weight, reason))
        score = round(min(1.0, math.fsum(weight for weight, _ in fired)), 6)
        if score >= config.threshold:
            verdict = verifier_pb2.BLOCK
        elif score > 0:
            verdict = verifier_pb2.FLAG
        else:
            verdict = verifier_pb2.PASS
        return verifier_pb2.ScoreResponse(
            deviation_score=score,
            threshold=config.threshold,
            verdict=verdict,
            reasons=[reason for _, reason in fired],
            drift_origin_node_id=origin,
            scorer=SCORER,
        )


def _step_key(kind: int, server: str, tool: str) -> str:
    """`server__tool` as policies name it; an A2A call without a tool is named by its server."""
    if kind in _NOT_STEPS:
        return ""
    return f"{server}__{tool}" if tool else server


def _precedent(history: Iterable[verifier_pb2.HistoryNode]) -> list[str]:
    """The workflow's earlier steps that were allowed, oldest first.

    Only ALLOW counts: a call that was denied, queued or left unanswered never ran, and
    retrying a blocked call must not make it look familiar.
    """
    return [
        key
        for node in history
        if node.effect == policy_pb2.ALLOW and (key := _step_key(node.kind, node.server, node.tool))
    ]


@dataclass(frozen=True, slots=True)
class _Path:
    """Where a value sits in the arguments, rendered as `message.cc[1]` only when a reason shows it.

    Linked to its parent rather than built as a string for every value: that would copy
    the parent's path into each child, quadratic in depth, and a megabyte-long key would
    be copied once per value under it.
    """

    parent: _Path | None
    key: str | int

    def __str__(self) -> str:
        parts: list[str] = []
        node: _Path | None = self
        while node is not None:
            key = node.key
            if isinstance(key, int):
                parts.append(f"[{key}]")
            else:
                parts.append(key if node.parent is None else f".{key}")
            node = node.parent
        return "".join(reversed(parts))


def _argument_reason(arguments: struct_pb2.Struct, task: str) -> str:
    """The argument_novelty reason, or "" when the signal does not fire."""
    strings, too_large = _string_arguments(arguments)
    # Novelty needs a task to compare with; an argument too large to inspect does not.
    novel = _novel_destinations(strings, task) if task.strip() else []
    parts = [_describe_destinations(novel)] if novel else []
    if too_large:
        parts.append(too_large)
    return "; ".join(parts)


def _string_arguments(arguments: struct_pb2.Struct) -> tuple[list[tuple[_Path, str]], str]:
    """(path, value) of the strings in the arguments within budget, and why the walk stopped early.

    Depth first, keys in sorted order, iterative so that deep nesting cannot exhaust the
    recursion limit; sorted, because map order on the wire is not guaranteed and reasons
    must be deterministic. The second item is "" when every string was read, else the
    reason naming the budget exceeded (see MAX_STRING_BYTES).
    """
    strings: list[tuple[_Path, str]] = []
    visited = read = 0
    stack: list[tuple[_Path, struct_pb2.Value]] = []
    # The struct or list just reached, whose values go on the stack next, and its path.
    container: struct_pb2.Struct | struct_pb2.ListValue | None = arguments
    path: _Path | None = None
    while True:
        if container is not None:
            # Counted before the keys are sorted, so a huge map is refused without sorting it.
            visited += len(container.fields if isinstance(container, struct_pb2.Struct) else container.values)
            if visited > MAX_ARGUMENT_VALUES:
                return strings, f"arguments too large to inspect (more than {MAX_ARGUMENT_VALUES} values)"
            stack.extend(_children(path, container))
        if not stack:
            return strings, ""
        path, value = stack.pop()
        kind = value.WhichOneof("kind")
        container = None
        if kind == "struct_value":
            container = value.struct_value
        elif kind == "list_value":
            container = value.list_value
        elif kind == "string_value":
            text = value.string_value
            size = _utf8_size(text)
            if size > MAX_STRING_BYTES:
                return strings, f"argument {_clip(str(path))!r} too large to inspect ({size} bytes)"
            read += size
            if read > MAX_ARGUMENT_BYTES:
                return strings, (
                    f"arguments too large to inspect (strings exceed {MAX_ARGUMENT_BYTES} bytes in total "
                    f"at argument {_clip(str(path))!r})"
                )
            strings.append((path, text))


def _children(
    parent: _Path | None, container: struct_pb2.Struct | struct_pb2.ListValue
) -> list[tuple[_Path, struct_pb2.Value]]:
    """The values directly in `container`, last first, so that popping them visits the first first."""
    if isinstance(container, struct_pb2.Struct):
        fields = container.fields
        return [(_Path(parent, name), fields[name]) for name in sorted(fields, reverse=True)]
    items = container.values
    return [(_Path(parent, index), items[index]) for index in reversed(range(len(items)))]


def _utf8_size(text: str) -> int:
    # isascii() is O(1) on CPython's compact strings; only other text needs encoding.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _utf8_head(text: str, size: int) -> str:
    """The longest prefix of `text` that is at most `size` bytes of UTF-8."""
    if len(text) <= size and _utf8_size(text) <= size:
        return text
    # A character is at least one byte, so `size` characters hold the prefix; a character
    # cut in half at the end is dropped.
    return text[:size].encode("utf-8", "surrogatepass")[:size].decode("utf-8", "ignore")


def _destinations(text: str) -> Iterator[str]:
    """Destination-like tokens in `text`, canonical: lower case, IBANs upper case without spaces."""
    if "://" in text:
        for match in _URL_AUTHORITY.finditer(text):
            host = _host(match.group(1))
            if host:
                yield host
        # The user info of `scheme://user@host` is part of the URL, not an email address.
        text = _URL_AUTHORITY.sub(" ", text)
    if "@" in text:
        for match in _EMAIL.finditer(text):
            yield match.group(0).casefold()
    for match in _IBAN.finditer(text):
        iban = _valid_iban(match.group(0))
        if iban:
            yield iban
    if "0x" in text or "0X" in text:
        for match in _WALLET.finditer(text):
            yield match.group(0).casefold()


def _host(authority: str) -> str:
    """The host of a URL authority (`user@host:port`), case-folded, without a leading `www.`."""
    host = authority.rpartition("@")[2]
    host = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.partition(":")[0]
    return _canonical_host(host)


def _canonical_host(host: str) -> str:
    # `www.` is how people write the same site; treating it as a different destination
    # would flag every task that names a site without it.
    host = host.rstrip(".").casefold()
    return host.removeprefix("www.")


def _valid_iban(candidate: str) -> str:
    """The compact IBAN that `candidate` starts with, or "".

    The pattern cannot tell a last group from a short word after the IBAN ("… 1332 to"),
    so trailing groups are dropped until the checksum holds.
    """
    groups = _IBAN_SEPARATORS.split(candidate.upper())
    while groups:
        compact = "".join(groups)
        if _iban_checksum_ok(compact):
            return compact
        groups.pop()
    return ""


def _iban_checksum_ok(iban: str) -> bool:
    """ISO 13616 mod-97: rotate the country code and check digits to the end, letters to numbers."""
    if not 15 <= len(iban) <= 34:
        return False
    rotated = iban[4:] + iban[:4]
    return int(rotated.translate(_IBAN_DIGITS)) % 97 == 1


def _known_destinations(task: str) -> frozenset[str]:
    """What the task names: its words (so a bare `acme.com` counts), its destinations, their domains.

    Only the first MAX_STRING_BYTES of the task are read: what a longer task names past
    that is not known, which can only make arguments look more novel, never less.
    """
    task = _utf8_head(task, MAX_STRING_BYTES)
    known = {_canonical_host(word.strip(_WORD_PUNCTUATION)) for word in task.split()}
    for destination in _destinations(task):
        known.add(destination.casefold())
        if "@" in destination:
            known.add(destination.rpartition("@")[2])
    return frozenset(known)


def _novel_destinations(arguments: Iterable[tuple[_Path, str]], task: str) -> list[tuple[str, _Path]]:
    """(destination, argument path) for each distinct destination the task does not name."""
    found: dict[str, _Path] = {}
    for path, value in arguments:
        for destination in _destinations(value):
            found.setdefault(destination, path)
    if not found:
        return []
    known = _known_destinations(task)
    return [(destination, path) for destination, path in found.items() if destination.casefold() not in known]


def _describe_destinations(novel: Sequence[tuple[str, _Path]]) -> str:
    # repr() escapes control and bidi characters: these strings come from the agent and
    # end up in logs, the audit trail and the dashboard.
    shown = ", ".join(
        f"{_clip(destination)!r} (argument {_clip(str(path))!r})" for destination, path in novel[:_SHOWN_DESTINATIONS]
    )
    more = len(novel) - _SHOWN_DESTINATIONS
    noun = "destination" if len(novel) == 1 else "destinations"
    return f"{noun} not named in the task: {shown}" + (f" and {more} more" if more > 0 else "")


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
