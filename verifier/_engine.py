"""The reference scorer: a deterministic, explainable deviation score for one action.

Three signals, each adding its weight to the score when it fires:

- ``tool_novelty``: the action's tool (``server__tool``) was never allowed earlier in the
  workflow.
- ``sequence``: the workflow has at least ``min_history`` allowed steps and the transition
  from the last of them to this tool never happened before.
- ``argument_novelty``: the workflow states a task (``ctx.task``) and a string argument
  names a destination the task does not: an email address, the host of a URL, an IBAN
  (mod-97 valid) or a ``0x`` + 40 hex wallet address.

``deviation_score = min(1, sum of fired weights)``, rounded to 6 places so that weights
adding up to the threshold on paper reach it in floating point. The verdict is BLOCK at
or above the threshold, FLAG above 0, else PASS. verifier/INTERFACE.md has the details.

Pure: no I/O, no logging, no clock, so the same request always gets the same answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from google.protobuf import struct_pb2

from bastion._errors import ConfigError
from bastion.v1 import policy_pb2, verifier_pb2

NAME = "reference"
VERSION = "0.1"
SCORER = f"{NAME}/{VERSION}"
SIGNALS = ("tool_novelty", "sequence", "argument_novelty")

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
_SHOWN_DESTINATIONS = 3
_SHOWN_CHARS = 80


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    """Weights and threshold of the reference scorer (VerifierSettings builds one from env)."""

    threshold: float = 0.8
    novelty_weight: float = 0.4
    sequence_weight: float = 0.3
    argument_weight: float = 0.4
    min_history: int = 3

    def __post_init__(self) -> None:
        # NaN fails every comparison, so these checks also reject it.
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"verifier threshold must be in (0, 1], got {self.threshold}")
        for name in ("novelty_weight", "sequence_weight", "argument_weight"):
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
        key = _step_key(action.kind, action.server, action.tool)
        if key:
            steps = _precedent(request.history)
            if config.novelty_weight > 0 and key not in steps:
                fired.append((config.novelty_weight, f"first use of {key} in this workflow"))
            if config.sequence_weight > 0 and len(steps) >= config.min_history:
                previous = steps[-1]
                if (previous, key) not in pairwise(steps):
                    fired.append((config.sequence_weight, f"first time {key} follows {previous} in this workflow"))
        task = request.ctx.task
        if config.argument_weight > 0 and task.strip():
            novel = _novel_destinations(_string_arguments(action.arguments), task)
            if novel:
                fired.append((config.argument_weight, _describe_destinations(novel)))
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


def _string_arguments(arguments: struct_pb2.Struct) -> Iterator[tuple[str, str]]:
    """(path, value) of every string in the arguments, depth first, keys in sorted order.

    Iterative, so a deeply nested message cannot exhaust the recursion limit; sorted,
    because map order on the wire is not guaranteed and reasons must be deterministic.
    """
    stack: list[tuple[str, struct_pb2.Value]] = [
        (name, arguments.fields[name]) for name in sorted(arguments.fields, reverse=True)
    ]
    while stack:
        path, value = stack.pop()
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            yield path, value.string_value
        elif kind == "struct_value":
            fields = value.struct_value.fields
            stack.extend((f"{path}.{name}", fields[name]) for name in sorted(fields, reverse=True))
        elif kind == "list_value":
            items = value.list_value.values
            stack.extend((f"{path}[{index}]", items[index]) for index in reversed(range(len(items))))


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
    return int("".join(str(int(char, 36)) for char in rotated)) % 97 == 1


def _known_destinations(task: str) -> frozenset[str]:
    """What the task names: its words (so a bare `acme.com` counts), its destinations, their domains."""
    known = {_canonical_host(word.strip(_WORD_PUNCTUATION)) for word in task.split()}
    for destination in _destinations(task):
        known.add(destination.casefold())
        if "@" in destination:
            known.add(destination.rpartition("@")[2])
    return frozenset(known)


def _novel_destinations(arguments: Iterable[tuple[str, str]], task: str) -> list[tuple[str, str]]:
    """(destination, argument path) for each distinct destination the task does not name."""
    found: dict[str, str] = {}
    for path, value in arguments:
        for destination in _destinations(value):
            found.setdefault(destination, path)
    if not found:
        return []
    known = _known_destinations(task)
    return [(destination, path) for destination, path in found.items() if destination.casefold() not in known]


def _describe_destinations(novel: Sequence[tuple[str, str]]) -> str:
    # repr() escapes control and bidi characters: these strings come from the agent and
    # end up in logs, the audit trail and the dashboard.
    shown = ", ".join(
        f"{_clip(destination)!r} (argument {_clip(path)!r})" for destination, path in novel[:_SHOWN_DESTINATIONS]
    )
    more = len(novel) - _SHOWN_DESTINATIONS
    noun = "destination" if len(novel) == 1 else "destinations"
    return f"{noun} not named in the task: {shown}" + (f" and {more} more" if more > 0 else "")


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
