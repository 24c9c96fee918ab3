"""The reference scorer's `taint` signal: untrusted data reaching a sink's arguments.

Reads the proxy's provenance labels in `ctx.taint` (format in verifier/INTERFACE.md):
`arg:<path>:<trusted|untrusted>:<server__tool>:<result path>:<field|text>:<fraction>`
per argument holding data from an earlier result, `sink` when policy lists the tool in
`taint.sinks`. The action is a sink when so labelled or when its tool's name holds a
world-changing verb (send, transfer, delete, write, post, share, invite, book, pay, …).

For a sink, each untrusted argument weighs

    taint_weight * (1 for `text`, FIELD_FACTOR for `field`) * fraction

and the signal adds the largest of them. Data found inside free text (an email body, a
web page) is where injected instructions live, so it weighs most; a whole structured
field (an email's `sender`) is what a legitimate task acts on more often, so half; a
value the stated task holds never arrives here as untrusted (the proxy trusts it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bastion.v1 import policy_pb2, verifier_pb2

#: Weight of a whole structured field relative to data inside free text.
FIELD_FACTOR = 0.5
#: World-changing verbs: a tool whose name holds one (as a word, or a word's start) is a sink.
SINK_VERBS = frozenset(
    {
        "send", "transfer", "delete", "remove", "write", "post", "share", "invite", "book", "pay",
        "purchase", "buy", "order", "create", "update", "upload", "publish", "forward", "reply",
        "submit", "wire", "refund", "withdraw", "grant", "execute", "exec", "run", "deploy", "move",
        "rename", "notify", "comment", "put", "patch", "drop", "insert", "commit", "push",
        "merge", "approve", "schedule", "cancel", "reserve", "sign", "tweet",
    }
)  # fmt: skip
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_SHOWN = 3


@dataclass(frozen=True, slots=True)
class Tainted:
    """One untrusted argument of a sink, as the proxy labelled it."""

    path: str
    source: str
    result_path: str
    kind: str
    fraction: float


def is_sink(tool: str, labels: Iterable[str]) -> bool:
    """Policy says so (`sink` label), or the tool's name holds a world-changing verb."""
    if "sink" in labels:
        return True
    for word in _WORDS.findall(tool):
        word = word.lower()
        if word in SINK_VERBS or any(word.startswith(verb) for verb in SINK_VERBS if len(verb) >= 4):
            return True
    return False


def parse(labels: Iterable[str]) -> list[Tainted]:
    """The untrusted `arg:` labels; malformed ones are ignored (they cannot lower a score)."""
    found = []
    for label in labels:
        if not label.startswith("arg:"):
            continue
        parts = label.split(":")
        if len(parts) != 7 or parts[2] != "untrusted" or parts[5] not in ("field", "text"):
            continue
        try:
            fraction = float(parts[6])
        except ValueError:
            continue
        if not 0.0 < fraction <= 1.0:
            continue
        found.append(Tainted(_unescape(parts[1]), parts[3], _unescape(parts[4]), parts[5], fraction))
    return found


def taint_signal(
    action: policy_pb2.Action,
    labels: Sequence[str],
    history: Sequence[verifier_pb2.HistoryNode],
    weight: float,
) -> tuple[float, str, str]:
    """(weight fired, reason, drift origin node id); (0, "", "") when it does not fire."""
    if weight <= 0 or not labels:
        return 0.0, "", ""
    tainted = parse(labels)
    if not tainted or not is_sink(action.tool or action.prompt or action.resource, labels):
        return 0.0, "", ""
    scored = sorted(
        ((round(weight * (1.0 if t.kind == "text" else FIELD_FACTOR) * t.fraction, 6), t) for t in tainted),
        key=lambda item: (-item[0], item[1].path, item[1].source),
    )
    shown = ", ".join(
        f"{t.path!r} {round(t.fraction * 100)}% from {t.source} {t.result_path} "
        f"({'free text' if t.kind == 'text' else 'field'}, {w:.2f})"
        for w, t in scored[:_SHOWN]
    )
    more = len(scored) - _SHOWN
    fired = scored[0][0]
    reason = f"untrusted data in sink arguments: {shown}" + (f" and {more} more" if more > 0 else "")
    return fired, reason, _origin(scored[0][1].source, history)


def _origin(source: str, history: Sequence[verifier_pb2.HistoryNode]) -> str:
    """The newest earlier node of the tool the data came from."""
    for node in reversed(history):
        name = f"{node.server}__{node.tool}" if node.tool else node.server
        if name == source:
            return node.node_id
    return ""


def _unescape(text: str) -> str:
    return text.replace("%3A", ":").replace("%25", "%")
