"""`when:` conditions: CEL through the `common-expression-language` package (Rust core).

An expression is compiled when its policy is validated (to refuse it with the CEL error)
and again, once, when the version is compiled into a PolicySet; evaluation only runs the
compiled program. The variables an expression may use:

    args     the action's arguments (a map; whole numbers are ints, others doubles)
    agent    the calling agent's id (a string)
    ctx      {agent_id, tenant, session_id, workflow_id, task, roles (list), labels (map)}
    action   {kind, server, tool, resource, prompt, method} (kind as 'TOOL_CALL', ...)
    taint    the taint labels of the call's inputs (a list of strings)

Converting Python values into CEL values is what costs (≈ 3-6 µs per value, measured;
running a compiled program on a ready context is ≈ 0.6 µs), so one CEL context is built
per decision, lazily, holding only the variables that the reached expressions use, and
shared by every rule the decision tries. Of `args`, only the fields the reached expressions
name (`args.to`, `args["to"]`: `Condition.arg_fields`) are converted, unless one reads it
any other way: an agent padding its arguments with 10,000 keys of its own made every
decision on `args.amount` convert them all (≈ 20 ms of the service's time each).

**Cost.** CEL has no loops or recursion, so an expression runs in time linear in its
input — except inside a comprehension whose body does work in the size of the input:
another comprehension (`args.ids.all(x, args.ids.exists_one(y, y == x))`), a search of a
list (`x in args.cc`), or anything reading the input again (`args.ids == args.ids2`,
`size(args.ids + args.ids)`, `args.ids.map(x, args.ids)`): each level multiplies by the
size of the list. (A second attacker's probe stalled the service for minutes with the
last three, which the first version of this check read as linear.) The Rust evaluator
holds the GIL and cannot be interrupted, so one call with 8,000 ids stalled every
decision of the service for 13 s. Each condition's nesting is read from its source when
it is compiled (`_nesting`), and a decision whose values would make it run more than
`MAX_STEPS` steps is denied with that reason, before it runs.

Nesting counts loops, not what they walk, and values grow as an expression runs: `map`
copies the list it builds at every element, chained stages multiply (`[1].map(x, [x,
x]).map(y, y + y)…` doubles per stage), `+` copies both sides, a pattern's compile time is
not its length. So each condition also gets a finer bound of its work when it is compiled
(bastion.policy._cel_cost: a polynomial in the input's values and size, every value it
builds counted), refused at load when it is over `MAX_WORK` on the smallest input or has
no bound, and checked, before it runs, on every decision where it could be more than
linear.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cel

from ._cel_cost import Unbounded, Work, work_bound
from ._cel_syntax import Chain, Ident, Literal, Node, Unreadable, children, parse

VARIABLES = ("args", "agent", "ctx", "action", "taint")
MAX_EXPRESSION_CHARS = 4096
#: The most steps a condition may take on one decision: ≈ 20 ms of the evaluator's time
#: at the ≈ 200 ns a step measured for `exists_one` inside `all` on this machine class.
#: Decisions run one at a time, so this is also how long one call can hold up everyone
#: else's; at 5e6 (the first bound, from a 40 ns estimate) one call took 1 s and another
#: agent's decision missed the proxy's 1 s deadline behind four of them (an attacker's probe).
MAX_STEPS = 100_000
_MACROS = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(")
#: `matches(` compiles its pattern on every call: ≈ 10-22 µs each, against the ≈ 200 ns of a
#: step, so inside a comprehension each element counts as REGEX_STEPS steps. (An attacker's
#: probe: `args.ids.all(x, x.matches('^[a-z]+$'))` over 10,000 ids held every decision of
#: the service for 0.25 s, and the check, reading nesting alone, let it run.)
_REGEX = re.compile(r"\bmatches\s*\(")
REGEX_STEPS = 100
#: The most work a condition's finer bound (bastion.policy._cel_cost) may come to on one
#: decision: ≈ 40 ms of the evaluator's time at ≈ 200 ns a step. The bound overestimates
#: ordinary conditions ≈ 1.2-3x, so it allows what `MAX_STEPS` allows of plain nested loops
#: (`args.ids.all(x, args.ids.exists_one(y, y == x))` over 250 ids: ≈ 150,000, ≈ 13 ms)
#: and stops what grows unseen by it well before it stalls the service.
MAX_WORK = 200_000
#: The conditions of one decision together (≈ 160 ms here): four conditions at the bound.
MAX_DECISION_WORK = 4 * MAX_WORK
#: A bound at most linear, with at most these steps per input value and per 16 bytes, is
#: not measured on each decision: such a condition costs about what converting its input
#: for CEL already did (≈ 3-6 µs a value), at most ≈ 35 ms on the proxy's largest arguments.
LIGHT_PER_VALUE = 16.0
LIGHT_PER_UNIT = 1.0
_IN = re.compile(r"\bin\b")
_RAW = re.compile(r"(?<![A-Za-z0-9_])[bB]?[rR]\Z")
#: The variables that hold the call's input; read inside a loop, each may cost its size.
_INPUT = re.compile(r"\b(?:args|ctx|taint|action|agent)\b")

# Names bound by comprehension macros (`args.items.all(x, x > 0)`) appear among a
# program's variables; they are not free variables. Reading them from the source text
# can only miss a typo (which then errors, and denies, at evaluation), never refuse a
# correct expression.
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter|bind)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling and in which workflow: policy.proto `Context`, minus the agent id."""

    tenant: str = ""
    session_id: str = ""
    workflow_id: str = ""
    task: str = ""
    roles: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    taint: tuple[str, ...] = ()


EMPTY_CONTEXT = CallContext()


@dataclass(frozen=True, slots=True)
class Condition:
    source: str
    program: Any  # cel.Program
    #: The variables of VARIABLES the expression reads.
    needs: tuple[str, ...]
    #: How many list-sized factors its cost has at most (`_nesting`): 0 or 1 is linear.
    nesting: int = 0
    #: An upper bound on the elements of its literal lists (they are iterated too).
    literals: int = 0
    #: A regular expression runs inside a comprehension (each element costs REGEX_STEPS).
    regex_in_loop: bool = False
    #: The finer bound of its work (None: not bounded, for a Condition built by hand).
    work: Work | None = None
    #: Its work is at most linear and light (`LIGHT_PER_VALUE`): no need to measure the input.
    light: bool = True
    #: The fields of `args` it reads, when it reads `args` only by naming fields
    #: (`argument_fields`); None when it reads the whole map.
    arg_fields: frozenset[str] | None = None


def compile_condition(source: str) -> Condition:
    """Compile `source`; raises ValueError with the reason (see `condition_problem`)."""
    problem, work = _examine(source)
    if problem or work is None:
        raise ValueError(problem)
    program = cel.compile(source)
    needs = tuple(name for name in VARIABLES if name in program.variables())
    nesting, regex_in_loop = _nesting(source)
    light = work.linear_within(LIGHT_PER_VALUE, LIGHT_PER_UNIT)
    fields = argument_fields(source)
    return Condition(source, program, needs, nesting, source.count(",") + 1, regex_in_loop, work, light, fields)


def argument_fields(source: str) -> frozenset[str] | None:
    """The top-level fields of `args` that `source` reads, when every `args` in it is
    followed by a field name (`args.to`, `args["to"]`, `has(args.to)`): only those need
    converting. None when it reads `args` any other way — whole, iterated, measured, or
    indexed by a computed key — and the whole map is converted. A comprehension variable
    named `args` reads as `args` too: None, or fields that are converted for nothing."""
    fields: set[str] = set()

    def only_fields(node: Node) -> bool:
        if isinstance(node, Ident):
            return node.name != "args"
        if isinstance(node, Chain) and isinstance(node.base, Ident) and node.base.name == "args":
            first = node.steps[0]
            if first.kind == "select":
                fields.add(first.name)
            elif first.kind == "index" and isinstance(key := first.args[0], Literal) and key.text is not None:
                fields.add(key.text)
            else:
                return False
            return all(only_fields(arg) for step in node.steps[1:] for arg in step.args)
        return all(only_fields(child) for child in children(node))

    try:
        return frozenset(fields) if only_fields(parse(source)) else None
    except Unreadable:  # compiled already: `_examine` refuses what does not read
        return None


def _nesting(source: str) -> tuple[int, bool]:
    """The deepest nesting of comprehensions in `source`, a search of a list (`in` not
    followed by a literal list) or a reading of the input (any variable: `_INPUT`) inside a
    comprehension counting as one more level. (Every variable counts: a fourth probe ran
    `args.ids.all(x, !action.resource.contains(x))` over a megabyte resource for 2 s.)

    Read from the text with string literals blanked out; a bracket the scan cannot match
    counts as a comprehension, so a misreading overestimates the cost, never the reverse.
    Also whether a `matches(` is inside a comprehension (`_REGEX`).
    """
    text = _blank_strings(source)
    macros = {match.end() - 1 for match in _MACROS.finditer(text)}
    searches = {match.start() for match in _IN.finditer(text) if not text[match.end() :].lstrip().startswith("[")}
    searches |= {match.start() for match in _INPUT.finditer(text)}
    regexes = {match.start() for match in _REGEX.finditer(text)}
    regex_in_loop = False
    deepest = 0
    stack: list[bool] = []  # one entry per open bracket: does it open a comprehension?
    for index, char in enumerate(text):
        if index in regexes and any(stack):
            regex_in_loop = True
        if char in "([{":
            stack.append(index in macros)
            deepest = max(deepest, sum(stack))
        elif char in ")]}":
            if stack:
                stack.pop()
        elif index in searches and any(stack):
            deepest = max(deepest, sum(stack) + 1)
    return deepest + (len(stack) > 0), regex_in_loop or (bool(regexes) and len(stack) > 0)


def _blank_strings(source: str) -> str:
    """`source` with the inside of every string literal replaced by spaces. (A raw string
    has no escapes: read with them, `r'\\' != '' && args.ids.all(x, …)` hid its loops.)"""
    out: list[str] = []
    quote = ""
    raw = False
    index = 0
    while index < len(source):
        char = source[index]
        if quote:
            if char == "\\" and not raw:
                out.append("  ")
                index += 2
                continue
            if source.startswith(quote, index):
                out.append(quote)
                index += len(quote)
                quote = ""
                continue
            out.append(" ")
        elif char in "'\"":
            quote = source[index : index + 3] if source.startswith(char * 3, index) else char
            raw = _RAW.search(source, 0, index) is not None
            out.append(quote)
            index += len(quote)
            continue
        else:
            out.append(char)
        index += 1
    return "".join(out)


def _size(value: Any) -> int:
    """How many values `value` holds, itself included, a string counting one more per 16
    bytes (a loop that copies a megabyte string costs as much as one over 65,536 values)."""
    return _measure(value)[1]


def _measure(value: Any) -> tuple[int, int, int]:
    """(how many values `value` holds, itself included; its `_size`; the most elements or
    keys of any one list or map in it): the sizes a condition's work bound reads."""
    if isinstance(value, Mapping):
        values, size, widest = 1, 1, len(value)
        for key, item in value.items():
            item_values, item_size, item_widest = _measure(item)
            values += item_values
            size += _measure(key)[1] - 1 + item_size
            widest = max(widest, item_widest)
        return values, size, widest
    if isinstance(value, list | tuple):
        values, size, widest = 1, 1, len(value)
        for item in value:
            item_values, item_size, item_widest = _measure(item)
            values += item_values
            size += item_size
            widest = max(widest, item_widest)
        return values, size, widest
    if isinstance(value, str | bytes):
        return 1, 1 + len(value) // 16, 0
    return 1, 1, 0


def condition_problem(source: str) -> str | None:
    """Why `source` is not a usable condition, or None."""
    return _examine(source)[0]


def _examine(source: str) -> tuple[str | None, Work | None]:
    """(why `source` is not a usable condition or None, the bound of its work)."""
    if not source.strip():
        return "empty expression; write a CEL expression or omit the field", None
    if len(source) > MAX_EXPRESSION_CHARS:
        return f"expression is {len(source)} characters long; the limit is {MAX_EXPRESSION_CHARS}", None
    try:
        program = cel.compile(source)
    except BaseException as exc:  # a Rust panic is a BaseException: refuse, never crash
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return f"not valid CEL: {_first_lines(str(exc))}", None
    bound = set(_BOUND.findall(source))
    for name in program.variables():
        if name not in VARIABLES and name not in bound:
            close = difflib.get_close_matches(name, VARIABLES, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (the variables are {', '.join(VARIABLES)})"
            return f"unknown variable '{name}'{hint}", None
    try:
        work = work_bound(source)
    except Unbounded as exc:
        return f"its cost cannot be bounded: {exc}", None
    # The smallest input: each variable it reads holds at least one value, no list an element.
    smallest = max(1, sum(name in program.variables() for name in VARIABLES))
    if (steps := work.at(smallest, smallest, 0)) > MAX_WORK:
        return (
            f"it could take {steps:.1e} steps even on the smallest input, more than the {MAX_WORK:.0e} a "
            "decision may take (values that grow at every stage of a chain, a long run of '+', or a costly "
            "regular expression)"
        ), None
    return None, work


def _first_lines(text: str) -> str:
    # The CEL error carries a caret diagram over the source; keep it, bounded.
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:4])


class Activation:
    """The CEL variables of one decision, converted on first use."""

    __slots__ = (
        "_action",
        "_added",
        "_agent_id",
        "_arg_fields",
        "_arguments",
        "_cel",
        "_context",
        "_measured",
        "_spent",
    )

    def __init__(
        self, arguments: Mapping[str, Any], agent_id: str, action: Mapping[str, str], context: CallContext
    ) -> None:
        self._arguments = arguments
        self._agent_id = agent_id
        self._action = action
        self._context = context
        self._cel = cel.Context()
        self._added: set[str] = set()
        #: The fields of `args` in the CEL context once it is added (None: all of them).
        self._arg_fields: frozenset[str] | None = frozenset()
        #: The sizes of each variable (and `args` by the fields read) measured so far.
        self._measured: dict[tuple[str, frozenset[str] | None], tuple[int, int, int]] = {}
        #: Steps the bounds of the conditions run so far allow: live rules', shadow rules'.
        self._spent = [0.0, 0.0]

    def evaluate(self, condition: Condition, *, shadow: bool = False) -> bool | str:
        """True or False, or the error (a string) that makes the rule deny.

        Each condition is held to its own bound, and the conditions of one decision together
        to MAX_DECISION_WORK: a hundred rules each just under the bound took 1.4 s a
        decision (an attacker's probe). Shadow rules (`shadow`) count apart, so that what
        they cost never turns a live decision into a deny."""
        steps = 0.0
        if condition.nesting >= 2 or condition.regex_in_loop:
            steps, costly = self._costly(condition)
            if costly is not None:
                return costly
        if not condition.light:
            work, heavy = self._heavy(condition)
            if heavy is not None:
                return heavy
            steps = max(steps, work)
        if steps:
            self._spent[shadow] += steps
            if self._spent[shadow] > MAX_DECISION_WORK:
                return (
                    f"with the conditions evaluated before it, this decision could take {self._spent[shadow]:.1e} "
                    f"steps, more than the {MAX_DECISION_WORK:.0e} allowed for one decision"
                )
        try:
            for name in condition.needs:
                if name == "args":
                    self._add_arguments(condition.arg_fields)
                elif name not in self._added:
                    self._cel.add_variable(name, self._value(name))
                    self._added.add(name)
            result = condition.program.execute(self._cel)
        except BaseException as exc:  # fail closed on anything the Rust side raises
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return f"{type(exc).__name__}: {_first_lines(str(exc))[:200]}"
        if result is True or result is False:
            return result
        return f"the condition gave {type(result).__name__} {str(result)[:40]!r}, not a boolean"

    def _costly(self, condition: Condition) -> tuple[float, str | None]:
        """The steps nesting allows `condition` on these arguments, and why that is too long, or None."""
        context = self._context
        size = condition.literals + _size(self._arguments) + _size(self._agent_id) + _size(self._action)
        size += _size((context.tenant, context.session_id, context.workflow_id, context.task))
        size += _size(context.taint) + _size(context.roles) + _size(context.labels)
        steps = size**condition.nesting * (REGEX_STEPS if condition.regex_in_loop else 1)
        if steps <= MAX_STEPS:
            return float(steps), None
        regex = f", a regular expression in a loop counting {REGEX_STEPS}" if condition.regex_in_loop else ""
        return float(steps), (
            f"the condition nests {condition.nesting} list-sized loops{regex}; on {size} argument values it could "
            f"take {steps:.1e} steps, more than the {MAX_STEPS:.0e} allowed"
        )

    def _heavy(self, condition: Condition) -> tuple[float, str | None]:
        """`condition`'s finer bound (bastion.policy._cel_cost) on these variables, and why it
        is over MAX_WORK, or None."""
        if condition.work is None:
            return 0.0, None
        values = size = widest = 0
        for name in condition.needs:
            key = (name, condition.arg_fields if name == "args" else None)
            if key not in self._measured:
                self._measured[key] = _measure(self._value(*key))
            values += self._measured[key][0]
            size += self._measured[key][1]
            widest = max(widest, self._measured[key][2])
        steps = condition.work.at(max(values, 1), max(size, 1), widest)
        if steps <= MAX_WORK:
            return float(steps), None
        return float(steps), (
            f"on {values} input values of size {size}, the condition could take {steps:.1e} steps (counting the "
            f"values it builds and copies), more than the {MAX_WORK:.0e} allowed"
        )

    def _add_arguments(self, fields: frozenset[str] | None) -> None:
        """`args` in the CEL context with at least `fields` (None: every field), added again
        with the union when a condition names fields the context does not hold yet."""
        have = self._arg_fields
        if "args" in self._added and (have is None or (fields is not None and fields <= have)):
            return
        wanted = None if fields is None or have is None else fields | have
        self._cel.add_variable("args", self._value("args", wanted))
        self._added.add("args")
        self._arg_fields = wanted

    def _value(self, name: str, fields: frozenset[str] | None = None) -> Any:
        context = self._context
        if name == "args":
            arguments = self._arguments
            if fields is None:
                return dict(arguments)
            return {key: arguments[key] for key in fields if key in arguments}
        if name == "agent":
            return self._agent_id
        if name == "action":
            return dict(self._action)
        if name == "taint":
            return list(context.taint)
        return {
            "agent_id": self._agent_id,
            "tenant": context.tenant,
            "session_id": context.session_id,
            "workflow_id": context.workflow_id,
            "task": context.task,
            "roles": list(context.roles),
            "labels": dict(context.labels),
        }
