"""The reference scorer: a deterministic, explainable deviation score for one action.

Four signals, each adding its weight to the score when it fires:

- ``sequence``: the transition *previous allowed step -> this tool* is rare for this agent,
  by a Markov model of the agent's own past transitions (``_sequence.py``). An agent with
  too little history is in cold start: the signal abstains, with weight 0, and says so.
- ``argument_novelty``: the workflow states a task (``ctx.task``) and a string argument
  names a destination the task does not: an email address, the host of a URL, an IBAN
  (mod-97 valid), a ``0x`` + 40 hex wallet address, or a chat handle or channel (``@name``,
  ``#name``) given as a whole argument. On a sink, when the task names a destination of the
  same kind and this is another one, it fires with the higher ``contradiction_weight``:
  the user said where this goes, and it goes elsewhere. A host on a site the task names
  (same registrable domain, ``bastion._domains``) is not novel. It also fires, task or not, when
  the arguments are too large to inspect (see the budgets below). Destinations inside the
  content of a file the task asked to write, at a path the task names, are not counted.
- ``taint``: the action is a sink and its arguments hold data from untrusted results, as
  the proxy's provenance labels in ``ctx.taint`` say (``_taint.py``): weighted by how much
  of the argument is tainted and by the structure of the data (a control value picked out
  of free text, prose copied out of it, or a whole structured field). Data from a result
  the task points at, and control values when the task leaves the destination to the data
  (``_delegated.py``: "email the landlord of the best match"), weigh a quarter when the
  task asks for an act of the sink's kind and no money moves; a payment's IBAN from an
  email the task points at, only on ``_money.py``'s terms (no rerouting language, no
  look-alike, not to "the saved payee", no repeat the task did not ask for).
- ``intent``: the action is a sink of a kind the task never asked for (``_intent.py``): a
  destructive one (delete, remove, cancel, …) when the task asks for nothing destructive and
  delegates nothing, any other when the task asks for no action at all.
- ``semantic_drift``, optional and off by default (``ScorerConfig.semantic``,
  BASTION_VERIFIER_SEMANTIC): the action's text is far, by sentence embeddings, from the
  task's (``_semantic.py``, imported only when on).

``deviation_score = min(1, sum of fired weights)``, rounded to 6 places so that weights
adding up to the threshold on paper reach it in floating point. The verdict is BLOCK at
or above the threshold, FLAG above 0, else PASS. Every reason ends with the weight it added.
verifier/INTERFACE.md has the details.

No I/O, no logging, no clock. The only state is the sequence model, which learns from each
request's history before scoring it: the same model state and request always get the same
answer. The semantic model is read-only once loaded, and its task-embedding cache only saves
time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import struct_pb2

from bastion._errors import ConfigError
from bastion.v1 import verifier_pb2

from ._delegated import delegates_destination
from ._destinations import (
    _MONEY,
    MAX_STRING_BYTES,
    _found_destinations,
    _is_destination,
    _kind,
    _novel_destinations,
    _Path,
    _task_kinds,
    _utf8_size,
)
from ._intent import asked, clip, intent_signal, is_payload, writes_where_task_says
from ._kinds import asks_to_reach, kinds, moves_money, vouches
from ._money import money_vouched
from ._notices import notice_signal
from ._overpays import overpays_signal
from ._personal import describe as describe_personal
from ._personal import personal_sent
from ._quantities import contradictions, family_of, number
from ._sequence import START, SequenceModel, precedent, step_key
from ._taint import is_sink, lookalikes, parse, taint_signal
from ._unseen import unseen_signal
from ._urls import carried_own, novel_urls, secrets_sent

if TYPE_CHECKING:
    from ._semantic import SemanticDrift

NAME = "reference"
VERSION = "0.15"
SCORER = f"{NAME}/{VERSION}"
SIGNALS = ("sequence", "argument_novelty", "taint", "intent")
#: The optional signal, on with ScorerConfig.semantic (BASTION_VERIFIER_SEMANTIC).
SEMANTIC_SIGNAL = "semantic_drift"

_SHOWN_DESTINATIONS = 3

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
MAX_ARGUMENT_BYTES = 256 * 1024
MAX_ARGUMENT_VALUES = 10_000


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    """Weights and threshold of the reference scorer (VerifierSettings builds one from env)."""

    threshold: float = 0.8
    #: What a transition that is rare for a warm agent adds (signal sequence).
    sequence_weight: float = 0.3
    #: What a destination the task does not name adds (signal argument_novelty).
    argument_weight: float = 0.4
    #: What it adds instead, on a sink, when the task names another destination of its kind.
    contradiction_weight: float = 0.8
    #: What a sink argument wholly a control value from an untrusted result's free text adds.
    taint_weight: float = 0.8
    #: What a sink adds when the task asks for no action at all (signal intent, _intent.py).
    intent_weight: float = 0.4
    #: What a destructive sink (delete, remove, cancel, …) adds when the task asks for nothing destructive.
    destructive_weight: float = 0.8
    #: Applied to taint whose source is a result the task points at, when the task asks for an
    #: action (the proxy's `named:` labels; 1 ignores them, 0.25 weighs the data as if the
    #: task named it).
    pointed_factor: float = 0.25
    #: Whether the semantic_drift signal runs (its model must be installed: scripts/install-semantic).
    semantic: bool = False

    def __post_init__(self) -> None:
        # NaN fails every comparison, so these checks also reject it.
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"verifier threshold must be in (0, 1], got {self.threshold}")
        for name in (
            "sequence_weight",
            "argument_weight",
            "contradiction_weight",
            "taint_weight",
            "intent_weight",
            "destructive_weight",
            "pointed_factor",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"verifier {name} must be in [0, 1], got {value}")


def load_semantic(path: Path | None = None) -> SemanticDrift:
    """The semantic_drift signal with its model (from the installed model package unless `path`).

    A ConfigError, never a silently absent signal, when a dependency or the model is
    missing: an operator who turned it on is relying on it.
    """
    try:
        from ._semantic import load
    except ImportError as exc:
        raise _semantic_missing(exc) from exc
    return load(path)


def check_semantic() -> None:
    """A ConfigError unless the semantic_drift signal can load; reads no weights (settings check)."""
    try:
        from ._semantic import model_dir
    except ImportError as exc:
        raise _semantic_missing(exc) from exc
    model_dir()


def _semantic_missing(exc: ImportError) -> ConfigError:
    return ConfigError(
        f"BASTION_VERIFIER_SEMANTIC is on but the Python package {exc.name!r} is not installed: "
        "run scripts/install-semantic, or turn the setting off"
    )


@dataclass(frozen=True, slots=True)
class ReferenceScorer:
    """Scores one ScoreRequest. Immutable but for its sequence model, which learns from each
    request's history; safe to share between calls on one event loop (not between threads).

    With `config.semantic`, the semantic_drift model is `drift`, loaded from the installed
    model package when not given (a ConfigError when it is not installed). `semantic_signal`
    is thread-safe, so a caller can compute it off the event loop and hand it to `score`.
    """

    config: ScorerConfig = field(default_factory=ScorerConfig)
    sequence: SequenceModel = field(default_factory=SequenceModel)
    drift: SemanticDrift | None = None

    def __post_init__(self) -> None:
        if self.config.semantic and self.drift is None:
            # Loaded at construction, not at the first call: a missing model stops the
            # verifier at start, and no request pays the ~0.5 s of reading 90 MB.
            object.__setattr__(self, "drift", load_semantic())

    @property
    def signals(self) -> tuple[str, ...]:
        """The names of the signals this scorer runs, as VerifierInfo reports them."""
        return (*SIGNALS, SEMANTIC_SIGNAL) if self.config.semantic else SIGNALS

    def semantic_signal(self, request: verifier_pb2.ScoreRequest) -> tuple[float, str]:
        """(weight, reason) of semantic_drift; (0, "") when it is off or the action is no step.

        Thread-safe and pure (the task cache only saves time). It costs an embedding, tens
        of milliseconds on 2 vCPUs, so an async caller runs it in a worker thread and hands
        the result to `score`.
        """
        action = request.action
        drift = self.drift
        if not self.config.semantic or drift is None:
            return 0.0, ""
        if not step_key(action.kind, action.server, action.tool or action.prompt or action.resource):
            return 0.0, ""
        return drift.signal(request.ctx.task, action)

    def score(
        self, request: verifier_pb2.ScoreRequest, semantic: tuple[float, str] | None = None
    ) -> verifier_pb2.ScoreResponse:
        """The response to `request`. `semantic` is semantic_signal(request) when the caller
        computed it already (off the event loop); otherwise it is computed here, when on."""
        config = self.config
        fired: list[tuple[float, str]] = []
        abstained: list[str] = []
        action = request.action
        ctx = request.ctx
        tool = action.tool or action.prompt or action.resource
        key = step_key(action.kind, action.server, tool)
        if key and config.sequence_weight > 0:
            weight, reason = self._sequence(request, key)
            if weight > 0:
                fired.append((weight, reason))
            elif reason:
                abstained.append(reason)
        strings, too_large = _string_arguments(action.arguments)
        # Destinations are compared with a task's, and read for money; without a task neither,
        # nor quantities.
        stated = bool(ctx.task.strip())
        found, too_many = _found_destinations(strings) if stated else ({}, "")
        too_large = too_large or too_many
        if config.argument_weight > 0 or config.contradiction_weight > 0:
            quantities = _quantity_arguments(action.arguments) if stated else ([], False)
            weight, reason = _argument_signal(strings, quantities, too_large, found, ctx.task, tool, ctx.taint, config)
            if weight > 0:
                fired.append((weight, reason))
        intent, intent_reason = intent_signal(
            tool, ctx.taint, ctx.task, config.intent_weight, config.destructive_weight
        )
        # A result the task points at vouches for its data only when the task asks for an
        # action of this kind (_kinds.py): "read the forum thread at …" points at the thread
        # but asks nothing to be done with what it says; "translate the letter" asks for no share.
        # Read only when the proxy labelled some argument `named:` (most calls have none).
        # Money (by the tool's name, _kinds.moves_money, or an IBAN or a wallet among its
        # arguments: a tool named for something else still pays) only by the task's own
        # pointing, on _money.py's terms: never a page the agent went to itself.
        money = [kind for d in found if (kind := _kind(d)) in _MONEY]
        discount = config.pointed_factor < 1 and intent <= 0
        pointed = discount and any(label.startswith(("named:", "visited:")) for label in ctx.taint)
        # Read only for a pointed call: most calls have no such label.
        moves = pointed and (bool(money) or moves_money(tool))
        vouched = (
            pointed
            and vouches(tool, asked(ctx.task), money=moves)
            and (not moves or money_vouched(money, ctx.taint, ctx.task, tool, action.arguments))
        )
        # A task that leaves the destination to the data ("email the landlord of the best
        # match") vouches for the destinations taken from it, on stricter terms (_delegated.py).
        delegated = (
            discount
            and not money
            and any(label.startswith("arg:") for label in ctx.taint)
            and delegates_destination(ctx.task)
            and asks_to_reach(tool, asked(ctx.task))
        )
        weight, reason, origin = taint_signal(
            action,
            ctx.taint,
            request.history,
            config.taint_weight,
            ctx.task,
            pointed_factor=config.pointed_factor if vouched else 1.0,
            visited_factor=config.pointed_factor if vouched and not moves else 1.0,
            money=vouched and moves,
            delegated_factor=config.pointed_factor if delegated else 1.0,
            is_destination=_is_destination,
            pays="IBAN" in money and moves_money(tool),
        )
        if weight > 0:
            fired.append((weight, reason))
        if intent > 0:
            fired.append((intent, intent_reason))
        # Each read only when the proxy gave its label (most calls have none), the labels'
        # kinds taken in one pass.
        given = {label.partition(":")[0] for label in ctx.taint} if ctx.taint else set()
        labelled: list[tuple[float, str]] = []
        if "notice" in given:
            labelled.append(notice_signal(tool, ctx.taint, ctx.task, config.destructive_weight))
        if "unseen" in given:
            labelled.append(unseen_signal(tool, ctx.taint, ctx.task, config.contradiction_weight))
        if "invoiced" in given:
            paid, wide = _quantity_arguments(action.arguments)
            labelled.append(overpays_signal(ctx.taint, paid, ctx.task, config.contradiction_weight, wide=wide))
        fired.extend(signal for signal in labelled if signal[0] > 0)
        if config.semantic:
            weight, reason = semantic if semantic is not None else self.semantic_signal(request)
            if weight > 0:
                fired.append((weight, reason))
            elif reason:
                abstained.append(reason)
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
            reasons=[reason for _, reason in fired] + abstained,
            drift_origin_node_id=origin,
            scorer=SCORER,
        )

    def _sequence(self, request: verifier_pb2.ScoreRequest, key: str) -> tuple[float, str]:
        """Learn the request's history, then judge its transition: (weight, reason);
        weight 0 with a reason when the signal abstains."""
        ctx = request.ctx
        model = self.sequence
        if not ctx.agent_id:
            return 0.0, "sequence abstains: no agent id to learn from (weight 0.00)"
        agent = f"{ctx.tenant}/{ctx.agent_id}"
        steps = precedent(request.history)
        model.observe(agent, ctx.workflow_id, steps)
        previous = steps[-1][1] if steps else START
        seen = model.assess(agent, previous, key)
        needed = model.config.min_transitions
        if seen.learnt < needed:
            learnt = f"{seen.learnt} of {needed} transitions learnt for this agent"
            return 0.0, f"sequence abstains: cold start, {learnt} (weight 0.00)"
        rare = model.config.rare_probability
        if seen.exits and seen.count >= rare * seen.exits:
            return 0.0, ""
        weight = self.config.sequence_weight
        after = "as a first step" if previous == START else f"after {clip(previous)}"
        return weight, (
            f"rare transition for this agent: {clip(key)} {after}, {seen.count} of {seen.exits} times "
            f"(under {rare * 100:g}%) (weight {weight:.2f})"
        )


def _argument_signal(
    strings: list[tuple[_Path, str]],
    quantities: tuple[list[tuple[str, str, object]], bool],
    too_large: str,
    found: dict[str, _Path],
    task: str,
    tool: str,
    labels: Sequence[str],
    config: ScorerConfig,
) -> tuple[float, str]:
    """(weight, reason) of argument_novelty; (0, "") when it does not fire. `found`: the
    arguments' destinations (`_found_destinations`), read when a task was stated."""
    # Novelty needs a task to compare with (`found` is empty without one); an argument too
    # large to inspect does not.
    novel = _novel_destinations(found, task)
    if novel and is_sink(tool, labels) and writes_where_task_says((value for _, value in strings), task):
        # Destinations inside the content of a file the task asked to write are not where it goes.
        content = {path for path, value in strings if is_payload(value)}
        novel = [(destination, path) for destination, path in novel if path not in content]
    weight = config.argument_weight if novel or too_large else 0.0
    parts = [_describe_destinations(novel)] if novel else []
    if alike := lookalikes(labels):
        # A domain made to be taken for one the workflow saw (the proxy's `lookalike:`
        # labels): on a sink, as strong as the task naming another destination.
        weight = max(weight, config.contradiction_weight if is_sink(tool, labels) else config.argument_weight)
        shown = ", ".join(f"{clip(name)!r} ({clip(path)!r}) like {clip(like)!r}" for path, name, like in alike[:3])
        parts.append(f"look-alike domain{'s' if len(alike) > 1 else ''}: {shown}, seen in this workflow")
    urls = novel_urls(strings, task)
    # The user's own address, account or wallet, as the task gives it, or a parameter that
    # says it sends a document number, a birth date, a card or a secret, inside a URL to a
    # host the task never named: requesting the URL hands it over, whatever the tool does
    # with the answer (a fetch is a send), so as strong as a contradiction. A URL inside
    # text (a confirmation link in a mail's body) is not requested by the call: novelty's weight.
    for sent, own in ((carried_own(urls, task), True), (secrets_sent(urls, _copied(labels)) if urls else [], False)):
        if sent:
            requested = any(whole for *_, whole in sent)
            weight = max(weight, config.contradiction_weight if requested else config.argument_weight)
            shown = ", ".join(
                f"{clip(value)!r} to {clip(host)!r} ({clip(str(path))!r})" for value, host, path, _ in sent[:3]
            )
            what = f"the task's own {'values' if len(sent) > 1 else 'value'} carried" if own else "personal data sent"
            parts.append(f"{what} in a URL: {shown}")
    # Data looked up elsewhere and sent back to whoever asked for it (_personal.py).
    sent_personal = (
        personal_sent(strings, (tainted.path for tainted in parse(labels)), task, tool)
        if config.argument_weight > 0 and is_sink(tool, labels) and "message" in kinds(tool)
        else []
    )
    if sent_personal:
        # The argument weight, not a contradiction's: replying to a colleague with a phone
        # number from the contacts is ordinary work (at 0.8 it cost two false alarms for
        # three attacks, docs/benchmarks.md); beside the copied content's taint it blocks.
        weight = max(weight, config.argument_weight)
        parts.append(describe_personal(sent_personal))
    read, too_wide = quantities
    more = (
        contradictions(read, task, unread=too_wide)
        if (read or too_wide) and config.contradiction_weight > 0 and is_sink(tool, labels)
        else []
    )
    if more:
        # The user said how much; the call asks for more (an amount raised by an email's
        # footer, nights added by a listing's note): as strong as another destination,
        # unless the task computes (a percentage, "plus VAT"), whose arithmetic is not read.
        firm = any(c.firm for c in more)
        weight = max(weight, config.contradiction_weight if firm else config.argument_weight)
        parts.append(f"more than the task states: {'; '.join(c.describe() for c in more[:3])}")
    if novel and config.contradiction_weight > weight and is_sink(tool, labels):
        # The task says where this goes (a destination of the same kind) and it goes elsewhere.
        named = _task_kinds(task)
        against = sorted({kind for destination, _ in novel if (kind := _kind(destination)) in named})
        if against:
            weight = config.contradiction_weight
            parts[0] += f"; the task names another {' and '.join(against)}"
    if too_large:
        parts.append(too_large)
    if weight <= 0:
        return 0.0, ""
    return weight, f"{'; '.join(parts)} (weight {weight:.2f})"


def _copied(labels: Sequence[str]) -> frozenset[str]:
    """Argument paths the proxy traced whole to one untrusted result: a link as it was given."""
    return frozenset(tainted.path for tainted in parse(labels) if tainted.fraction >= 1.0)


def _quantity_arguments(arguments: struct_pb2.Struct) -> tuple[list[tuple[str, str, object]], bool]:
    """(path, key, value) of the arguments whose keys name a quantity (`_quantities.family_of`),
    at any depth to _QUANTITY_DEPTH, lists included, in sorted key order: where a tool takes
    how much. Only such keys count towards `_quantities.MAX_ARGUMENTS`, so no padding of
    other keys pushes them out; at most _MAX_QUANTITY_FIELDS fields are looked at."""
    found: list[tuple[str, str, object]] = []
    left = _MAX_QUANTITY_FIELDS
    # Each container with the key it sits under: a list's items are read under its key
    # (`{"amount": [12480]}`, Microsoft Graph's `{"roles": ["write"]}`).
    stack: list[tuple[str, struct_pb2.Struct | struct_pb2.ListValue, int, str]] = [("", arguments, 0, "")]
    while stack:
        prefix, container, depth, under = stack.pop()
        if len(container.fields if isinstance(container, struct_pb2.Struct) else container.values) > left:
            return found, True  # wider than what is left to read: fail closed (`contradictions`)
        if isinstance(container, struct_pb2.Struct):
            items: list[tuple[str, str, struct_pb2.Value]] = [
                (f"{prefix}.{key}" if prefix else key, key, container.fields[key]) for key in sorted(container.fields)
            ]
        else:
            items = [(f"{prefix}[{index}]", under, value) for index, value in enumerate(container.values)]
        left -= len(items)
        for path, key, value in reversed(items):
            kind = value.WhichOneof("kind")
            if kind in ("struct_value", "list_value") and depth < _QUANTITY_DEPTH:
                stack.append((path, getattr(value, kind), depth + 1, key))
                if kind == "struct_value" and key and (family := family_of(key)) is not None:
                    # `{"amount": {"value": 12480, "currency": "EUR"}}`: the value is the amount;
                    # `{"access_level": {".tag": "editor"}}` (Dropbox): the tag is the level.
                    found.extend(
                        (f"{path}.{inner}", key, scalar)
                        for inner in (_LEVEL_KEYS if family == "access" else _VALUE_KEYS)
                        if inner in value.struct_value.fields
                        and (scalar := _scalar(value.struct_value.fields[inner])) is not None
                    )
            elif key and (family := family_of(key)) is not None and (scalar := _scalar(value)) is not None:
                if path.endswith("]") and family != "access" and isinstance(scalar, str) and number(scalar) is None:
                    continue  # `guests: ["Ana", "Ben"]` lists names, not a count
                found.append((path, key, scalar))
    # A value reached twice (`{"permission": {"role": "owner"}}` as the object's level and as
    # a `role` of its own) is compared once.
    unique = {item[0]: item for item in found}
    return sorted(unique.values(), key=lambda item: item[0]), False


def _scalar(value: struct_pb2.Value) -> float | str | None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value" and len(value.string_value) <= 64:
        return value.string_value
    if kind == "string_value":
        return "(too long to be a number)"  # read as no number: fail closed
    return None


#: Keys under a quantity's key that hold its number.
_VALUE_KEYS = ("value", "units", "number", "amount", "quantity", "count")
#: Keys under an access key's object that hold its level.
_LEVEL_KEYS = (".tag", "level", "role", "value")
#: Fields `_quantity_arguments` looks at, and how deep.
_MAX_QUANTITY_FIELDS = 4096
_QUANTITY_DEPTH = 4


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
                return strings, f"argument {clip(str(path))!r} too large to inspect ({size} bytes)"
            read += size
            if read > MAX_ARGUMENT_BYTES:
                return strings, (
                    f"arguments too large to inspect (strings exceed {MAX_ARGUMENT_BYTES} bytes in total "
                    f"at argument {clip(str(path))!r})"
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


def _describe_destinations(novel: Sequence[tuple[str, _Path]]) -> str:
    # repr() escapes control and bidi characters: these strings come from the agent and
    # end up in logs, the audit trail and the dashboard.
    shown = ", ".join(
        f"{clip(destination)!r} (argument {clip(str(path))!r})" for destination, path in novel[:_SHOWN_DESTINATIONS]
    )
    more = len(novel) - _SHOWN_DESTINATIONS
    noun = "destination" if len(novel) == 1 else "destinations"
    return f"{noun} not named in the task: {shown}" + (f" and {more} more" if more > 0 else "")
