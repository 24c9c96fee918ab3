"""The reference scorer's `taint` signal: untrusted data reaching a sink's arguments.

Reads the proxy's provenance labels in `ctx.taint` (format in verifier/INTERFACE.md):
`arg:<path>:<trusted|untrusted>:<server__tool>:<result path>:<field|text>:<fraction>`
per argument holding data from an earlier result, `sink` when policy lists the tool in
`taint.sinks`. The action is a sink when so labelled or when its tool's name holds a
world-changing verb (send, transfer, delete, write, post, share, invite, book, pay, …).

For a sink, each untrusted argument weighs

    taint_weight * origin factor * task factor * fraction

and the signal adds the largest of them. The origin factor is where the structure of the
data and of the call comes in:

- 1 for a *control value* found inside free text: a short value (an IBAN, an address, a
  path, an id) picked out of an email body or a web page. That is what an injected
  instruction looks like when an agent follows it: the body told it where to send, what
  to delete.
- PAYLOAD_FACTOR (0.5) for *prose* found inside free text (an argument of at least
  PROSE_WORDS words and PROSE_CHARS characters): text copied into a message or a file.
  Copying content is what summarising, quoting and backing up do; where the content goes
  is what makes it a leak, and that is argument_novelty's to judge.
- FIELD_FACTOR (0.25) for a whole structured field (an email's `sender`, a payee's
  `iban`, a listing's `path`): a record's own field is what lookups return and tasks act
  on; an attacker who controls a record's field usually controls its free text too, and is
  caught there.
- FIELD_FACTOR too for a *payment's label* (its top-level `reference`, `memo`, … of
  LABEL_KEYS) picked out of free text, holding nothing place-like (no address, link, host
  or account number), when the call moves money to an IBAN (the tool's name says it moves
  money, and an IBAN is among its arguments) and the task says nothing of labels nor
  states an identifier: an invoice's number copied from its email's subject into the
  transfer's reference is what paying an invoice is, and with an IBAN saying where the
  money goes the label moves it nowhere. Not so where a label picks the account (BPAY's
  customer reference, a crypto withdrawal's memo or destination tag: no IBAN). Where the
  money goes (the IBAN) is weighed as before.

The task factor is TASK_FACTOR (0.25) when the argument's value appears in the stated task
(`ctx.task`, trusted): the user named it. The proxy never labels data the task holds, so
this only matters for a proxy that fingerprints differently; it never raises a weight.
The pointed factor (`ScorerConfig.pointed_factor`, 0.25 by default) applies instead when
the proxy labels the argument `named:<path>` (its data came from a result the task points
at: the page at the address the user gave, the email of the sender the user names;
proxy/_pointers.py) and the caller found that the task asks for an act of this kind and the
tool moves no money (verifier/_kinds.py), or moves it on the stricter terms of
verifier/_money.py (then only for `named:`; a payment's label holding none of the
identifiers the task states keeps its full weight). Where that data goes is still argument_novelty's
to judge, so a page the user named that sends the agent to another host is caught there.
An argument whose value cannot be found at its labelled path is weighed as a control value
(the strongest), so a mismatched label cannot lower a score.

`unread:<server__tool>:<bytes>` says an untrusted result earlier in the workflow could not
be fingerprinted whole (too large, read only in part, or forgotten under memory pressure):
whether this sink's arguments hold its data cannot be known, so the sink weighs
`taint_weight * UNREAD_FACTOR` (a flag at the default weights, not a block; a policy that
must block writes `when: "'untrusted' in taint"`). Traced taint that weighs more wins.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from google.protobuf import struct_pb2

from bastion._cache import short_key_cache
from bastion._iban import is_iban
from bastion.v1 import policy_pb2, verifier_pb2

from ._access import fold

#: Weight of a whole structured field relative to a control value inside free text.
FIELD_FACTOR = 0.25
#: Weight of prose copied out of free text relative to a control value inside it.
PAYLOAD_FACTOR = 0.5
#: Weight of an unread (untraceable) untrusted result before a sink, relative to a control value.
UNREAD_FACTOR = 0.5
#: Applied on top when the argument's value appears in the stated task.
TASK_FACTOR = 0.25
#: Top-level arguments of a payment that label it (folded to letters and digits): where the
#: money goes and how much are its other arguments. Copied from an invoice email's subject
#: or body, such a label made most false alarms on payments to saved payees (docs/benchmarks.md).
LABEL_KEYS = frozenset(
    {"reference", "ref", "paymentreference", "memo", "description", "remittance", "remittanceinformation"}
    | {"purpose", "narrative", "note", "notes"}
)
#: A task that speaks of a payment's label, or states an identifier it may be ("our customer
#: reference is VL-20931", "quoting customer ID 5512-0093", "KID 1234567890"), cares what it
#: says: then a label from an untrusted result weighs as any control value (a blind pack's
#: attack swaps the customer reference, so the payment credits another account), unless it
#: is the task's own value (the task factor). Found by an attacker's probe: the words alone
#: missed the identifiers.
#: An identifier: letters and at least three digits ("vl-20931", "qp-2317"), or six digits
#: or more, grouped or not ("5512-0093", "1234567890").
_IDENTIFIER = (
    r"\b(?=[a-z0-9-]*[a-z])(?=(?:[a-z-]*[0-9]){3})[a-z0-9]+(?:-[a-z0-9]+)*\b"
    r"|\b[0-9]{3,}(?:[ -][0-9]{3,})+\b|\b[0-9]{6,}\b"
)
_LABEL_WORDS = re.compile(
    r"\b(?:reference|referenc\w*|ref|memo|description|remittance|purpose|narrative|notes?|customer|kid|crn|"
    r"tag|quot\w*|invoice\s+(?:no|number|#)|account\s+(?:no|number)|referenz|r\u00e9f\u00e9rence|verwendungszweck)\b|"
    + _IDENTIFIER
)
_IDENTIFIERS = re.compile(_IDENTIFIER)
#: Identifiers of the task compared with a payment's label, at most.
_MAX_IDENTIFIERS = 32
#: What no payment's label needs and a destination has: an address, a link or a host, an
#: account number or IBAN (eight digits or more in a run, spaces aside). Such a label is
#: where money or a message may go (an invoice's "pay at https://…", a swapped IBAN in an
#: outgoing invoice's description): it weighs in full (an attacker's probe).
_PLACE_LIKE = re.compile(
    r"[@/\\]|\bwww\.|\b[a-z0-9-]+\.[a-z]{2,}\b|[0-9]{8,}|[a-z]{2}[0-9]{2}[a-z0-9]{10,}", re.IGNORECASE
)
#: Top-level keys (folded) of a payment whose values say who is paid and for what, not where
#: the money goes: its labels, the payee's name, the bank's BIC.
_PAYMENT_NAMED = LABEL_KEYS | {
    "name", "payee", "payeename", "beneficiary", "beneficiaryname", "recipientname", "creditor",
    "creditorname", "accountholder", "accountholdername", "holder", "accountname", "bic", "swift",
    "swiftcode", "biccode", "bank", "bankname",
}  # fmt: skip
#: What makes an argument prose rather than a control value.
PROSE_WORDS = 4
PROSE_CHARS = 32
PROSE_SCAN = 1024
#: Shortest value looked for in the task: shorter ones match by accident.
MIN_TASK_MATCH = 3
#: Longest task read when looking for an argument's value in it (as _engine reads tasks).
MAX_TASK_CHARS = 64 * 1024
#: World-changing verbs: a tool whose name holds one (as a word, or a word's start) is a sink.
SINK_VERBS = frozenset(
    {
        "send", "transfer", "delete", "remove", "write", "post", "share", "invite", "book", "pay",
        "purchase", "buy", "order", "create", "update", "upload", "publish", "forward", "reply",
        "submit", "wire", "refund", "withdraw", "grant", "execute", "exec", "run", "deploy", "move",
        "rename", "notify", "comment", "put", "patch", "drop", "insert", "commit", "push",
        "merge", "approve", "schedule", "cancel", "reserve", "sign", "tweet", "add", "autopay",
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
    return _named_sink(tool)


_LONG_VERBS = tuple(verb for verb in SINK_VERBS if len(verb) >= 4)


@short_key_cache(max_key=256, maxsize=1024)  # an agent calls the same few tools again and again
def _named_sink(tool: str) -> bool:
    for word in _WORDS.findall(tool):
        word = word.lower()
        if word in SINK_VERBS or word.startswith(_LONG_VERBS):
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
        found.append(Tainted(unescape(parts[1]), parts[3], unescape(parts[4]), parts[5], fraction))
    return found


def parse_unread(labels: Iterable[str]) -> list[tuple[str, int]]:
    """(tool, bytes) of every well-formed `unread:` label."""
    found = []
    for label in labels:
        if label.startswith("unread:"):
            parts = label.split(":")
            if len(parts) == 3 and parts[1] and parts[2].isdigit():
                found.append((parts[1], int(parts[2])))
    return found


def taint_signal(
    action: policy_pb2.Action,
    labels: Sequence[str],
    history: Sequence[verifier_pb2.HistoryNode],
    weight: float,
    task: str = "",
    *,
    pointed_factor: float = 1.0,
    visited_factor: float | None = None,
    money: bool = False,
    delegated_factor: float = 1.0,
    is_destination: Callable[[str], bool] = lambda value: False,
    pays: bool = False,
) -> tuple[float, str, str]:
    """(weight fired, reason, drift origin node id); (0, "", "") when it does not fire.

    `pointed_factor` applies to arguments the proxy labels `named:`, and `visited_factor`
    (`pointed_factor` when None) to those it labels `visited:` (1: the labels are ignored;
    the caller has checked that the task asks for an action); `delegated_factor`
    to control values that `is_destination` says are, whole, a destination, when the task
    leaves the destination to the data (`_delegated`; the caller has checked that too);
    `pays` says the call moves money to an IBAN (its tool's name says it moves money and an
    IBAN is among its arguments), so its labels may weigh as fields (above); `money` that the
    caller vouched for a payment on `_money.py`'s terms, so the pointed factor applies to its
    IBANs, labels, names and BIC only."""
    if weight <= 0 or not labels:
        return 0.0, "", ""
    tainted = parse(labels)
    unread = parse_unread(labels)
    if not (tainted or unread) or not is_sink(action.tool or action.prompt or action.resource, labels):
        return 0.0, "", ""
    visited = pointed_factor if visited_factor is None else visited_factor
    factors = (pointed_factor, visited, delegated_factor, is_destination, pays, money)
    traced = _traced(action, tainted, history, weight, task, labels, factors) if tainted else (0.0, "", "")
    if unread and weight * UNREAD_FACTOR > traced[0]:
        tool, size = unread[0]
        fired = round(weight * UNREAD_FACTOR, 6)
        reason = (
            f"untraceable untrusted data before a sink: {tool}'s result of {size} bytes could not be "
            f"fingerprinted whole{f' (and {len(unread) - 1} more)' if len(unread) > 1 else ''}"
        )
        return fired, f"{reason} (weight {fired:.2f})", ""
    return traced


def parse_named(labels: Iterable[str], prefix: str = "named:") -> frozenset[str]:
    """Argument paths of the `named:<path>` labels (data from a result the task points at),
    or of another prefix's (`visited:`: from the site of a page the agent went to itself)."""
    start = len(prefix)
    return frozenset(unescape(label[start:]) for label in labels if label.startswith(prefix) and len(label) > start)


def _traced(
    action: policy_pb2.Action,
    tainted: list[Tainted],
    history: Sequence[verifier_pb2.HistoryNode],
    weight: float,
    task: str,
    labels: Sequence[str],
    factors: tuple[float, float, float, Callable[[str], bool], bool, bool],
) -> tuple[float, str, str]:
    """The strongest traced untrusted argument of a sink: (weight, reason, drift origin)."""
    pointed_factor, visited_factor, delegated_factor, is_destination, pays, money = factors
    folded_task = task[:MAX_TASK_CHARS].casefold()
    pointed = parse_named(labels) if pointed_factor < 1 else frozenset()
    visited = parse_named(labels, "visited:") if visited_factor < 1 else frozenset()
    # A payment's label weighs as a field when the task says nothing of labels: it does not
    # change where the money goes nor how much, and invoices' subjects are copied into it.
    labels_are_free = pays and _LABEL_WORDS.search(folded_task) is None
    # The identifiers the task states ("invoice FS-2207", "our customer reference is
    # VL-20931"): a label from a result the task points at that holds none of them is not
    # what it pointed at (a blind pack's email swapped the customer reference; another slipped
    # a second, overdue invoice in beside the one the task names).
    stated = _task_identifiers(folded_task) if pays and pointed else ()
    scored = []
    for t in tainted:
        origin, named, value = _weigh(action.arguments, t, folded_task)
        if labels_are_free and origin in ("control", "prose") and value is not None and _is_label(t.path, value):
            origin = "label"
        factor = _FACTORS[origin]
        why = ""
        if named:
            why, factor = ", named in the task", factor * TASK_FACTOR
        elif (
            t.path in pointed
            and not (stated and value is not None and _other_label(t.path, value, stated))
            and not (money and not _vouched_in_payment(t.path, value))
        ):
            why, factor = ", from a result the task points at", factor * pointed_factor
        elif t.path in visited:
            why, factor = ", on the site of a page the agent went to itself", factor * visited_factor
        elif origin == "control" and delegated_factor < 1 and value is not None and is_destination(value):
            why, factor = ", where the task says to find it", factor * delegated_factor
        scored.append((round(weight * factor * t.fraction, 6), origin, why, t))
    scored.sort(key=lambda item: (-item[0], item[3].path, item[3].source))
    shown = ", ".join(
        f"{t.path!r} {round(t.fraction * 100)}% from {t.source} {t.result_path} ({_DESCRIBED[origin]}{why}, {w:.2f})"
        for w, origin, why, t in scored[:_SHOWN]
    )
    more = len(scored) - _SHOWN
    fired = scored[0][0]
    reason = f"untrusted data in sink arguments: {shown}" + (f" and {more} more" if more > 0 else "")
    return fired, f"{reason} (weight {fired:.2f})", _origin(scored[0][3].source, history)


_FACTORS = {"control": 1.0, "prose": PAYLOAD_FACTOR, "field": FIELD_FACTOR, "label": FIELD_FACTOR}
_DESCRIBED = {
    "control": "free text",
    "prose": "prose from free text",
    "field": "field",
    "label": "a payment's label from free text",
}


def _vouched_in_payment(path: str, value: str | None) -> bool:
    """Whether an argument of a payment vouched for on `_money.py`'s terms may have its
    pointed data discounted: an IBAN, or a top-level label, name or BIC holding nothing
    place-like. An account number, a sort code, a routing number or an address from the
    same email keeps its full weight (an attacker's probe paid one beside no IBAN)."""
    if value is None:
        return False
    return is_iban(value) or (_top_level_in(path, _PAYMENT_NAMED) and not _place_like(value))


def _task_identifiers(folded_task: str) -> tuple[str, ...]:
    found = itertools.islice(_IDENTIFIERS.finditer(folded_task), _MAX_IDENTIFIERS)
    return tuple(dict.fromkeys(fold(match.group(0)) for match in found))


def _other_label(path: str, value: str, stated: Sequence[str]) -> bool:
    """Whether `path` is a payment's label at the top of the arguments whose `value` holds none
    of the task's identifiers (`stated`, folded)."""
    if not _top_level_in(path, LABEL_KEYS):
        return False
    folded = fold(value)
    return not any(identifier in folded for identifier in stated)


def _is_label(path: str, value: str) -> bool:
    """Whether `path` is a payment's label (`reference`, `memo`, `remittance_information`) at
    the top of the arguments (a nested one, `creditor.reference` or `reference.iban`, may be
    anything; a list under such a key too) and `value` holds nothing place-like."""
    return _top_level_in(path, LABEL_KEYS) and not _place_like(value)


def _top_level_in(path: str, keys: frozenset[str]) -> bool:
    """Whether `path` is a top-level argument (no `.` nor `[`) whose key, folded, is one of `keys`."""
    return "." not in path and "[" not in path and fold(path) in keys


def _place_like(value: str) -> bool:
    """Whether `value` holds something place-like (`_PLACE_LIKE`), spaces kept or dropped."""
    return _PLACE_LIKE.search(value) is not None or _PLACE_LIKE.search(value.replace(" ", "")) is not None


def _weigh(arguments: struct_pb2.Struct, tainted: Tainted, folded_task: str) -> tuple[str, bool, str | None]:
    """("control" | "prose" | "field", whether the value appears in the task, the value or
    None when there is none at the label's path) for one tainted argument."""
    origin = "field" if tainted.kind == "field" else "control"
    value = _value_at(arguments, tainted.path)
    if value is None:
        # Not found where the label says: no discount can be justified.
        return origin, False, None
    # Words are counted in the first PROSE_SCAN characters only, so a huge value costs nothing extra.
    if origin == "control" and is_prose(value):
        origin = "prose"
    return origin, in_task(value, folded_task), value


def is_prose(value: str) -> bool:
    """PROSE_WORDS words and PROSE_CHARS characters, counted in the first PROSE_SCAN only,
    and no file path (`is_path`: its folders' names may hold words)."""
    wordy = len(value) >= PROSE_CHARS and len(value[:PROSE_SCAN].split(None, PROSE_WORDS)) >= PROSE_WORDS
    return wordy and not is_path(value)


#: How a file path starts: absolute, in a home directory, on a drive, on a share.
_PATH_START = re.compile(r"(?:/|~/|[A-Za-z]:[\\/]|\\\\)[^/\\\s]")


def is_path(value: str) -> bool:
    """Whether a one-line value is a file path ("/Clients/Rowan Joinery Ltd/YE 2024"): where
    a file act goes, however many words its folder names hold. Counted as prose, such a path
    picked out of a notice's text weighed half a control value, and a planted "retention
    notice" got a client's year deleted under the threshold (a blind pack's attack)."""
    return _PATH_START.match(value) is not None and len(value) <= MAX_PATH_CHARS and "\n" not in value


#: Longest value read as a path (PATH_MAX of Linux).
MAX_PATH_CHARS = 4096


def in_task(value: str, folded_task: str) -> bool:
    """Whether the task holds `value` as whole words (`eve@evil.example` is not in `steve@evil.example`).

    Checked on the length first, so a value longer than the task is never case-folded.
    """
    if not MIN_TASK_MATCH <= len(value) <= len(folded_task):
        return False
    folded = value.strip().casefold()
    if len(folded) < MIN_TASK_MATCH or folded not in folded_task:
        return False
    return re.search(rf"(?<!\w){re.escape(folded)}(?!\w)", folded_task) is not None


_PATH_PART = re.compile(r"\[([0-9]+)\]|([^.\[\]]+)")


def _value_at(arguments: struct_pb2.Struct, path: str) -> str | None:
    """The string at a label's path (`message.cc[1]`), or None when there is none.

    Keys holding `.` or `[` make a rendered path ambiguous; such a path resolves to None
    (weighed as the strongest kind) rather than to a guess. Bounded by the path's length.
    """
    node: struct_pb2.Value | struct_pb2.Struct | struct_pb2.ListValue = arguments
    position = 0
    for match in _PATH_PART.finditer(path):
        if match.start() != position and path[position : match.start()] != ".":
            return None
        position = match.end()
        index, key = match.group(1), match.group(2)
        if isinstance(node, struct_pb2.Value):
            kind = node.WhichOneof("kind")
            if kind == "struct_value":
                node = node.struct_value
            elif kind == "list_value":
                node = node.list_value
            else:
                return None
        if key is not None and isinstance(node, struct_pb2.Struct) and key in node.fields:
            node = node.fields[key]
        elif index is not None and isinstance(node, struct_pb2.ListValue) and int(index) < len(node.values):
            node = node.values[int(index)]
        else:
            return None
    if position != len(path) or not isinstance(node, struct_pb2.Value) or node.WhichOneof("kind") != "string_value":
        return None
    return node.string_value


def _origin(source: str, history: Sequence[verifier_pb2.HistoryNode]) -> str:
    """The newest earlier node of the tool the data came from."""
    for node in reversed(history):
        name = f"{node.server}__{node.tool}" if node.tool else node.server
        if name == source:
            return node.node_id
    return ""


def fields(labels: Iterable[str], prefix: str, count: int) -> Iterator[list[str]]:
    """The `count` fields after `prefix` (`"notice:"`) of each of the proxy's labels with that
    prefix, still escaped; a label with another number of fields or an empty one is ignored."""
    for label in labels:
        if label.startswith(prefix):
            parts = label.split(":")
            if len(parts) == count + 1 and all(parts[1:]):
                yield parts[1:]


def lookalikes(labels: Iterable[str]) -> list[tuple[str, str, str]]:
    """(argument path, domain, the domain it looks like) of the proxy's `lookalike:` labels;
    malformed ones are ignored."""
    return [(unescape(path), name, like) for path, name, like in fields(labels, "lookalike:", 3)]


def notices(labels: Iterable[str]) -> list[tuple[str, str]]:
    """(argument path, cue) of the proxy's `notice:` labels; malformed ones are ignored."""
    return [(unescape(path), unescape(cue)) for path, cue in fields(labels, "notice:", 2)]


def unescape(text: str) -> str:
    return text.replace("%3A", ":").replace("%25", "%")
