"""A bound of the work a `when:` condition can do, read from its source when it is compiled
(bastion.policy._cel checks it before every run: the Rust evaluator holds the GIL and cannot
be interrupted, so whatever a condition does, every other decision waits for).

Why another bound besides `_cel._nesting`: the nesting of loops says how many times a body
runs only while every loop walks a value no bigger than the input, and in this evaluator
values grow. Found by an attacker's probe, each accepted by the nesting check:

* `map` and `filter` build their answer by appending to a copy of the list built so far,
  deep-copying its elements: `args.xs.map(x, x)` over the proxy's 10,000 values took 2.8 s,
  over 500 strings of 40 KB 1.7 s;
* chained stages multiply: `[1].map(x, [x, x]).map(y, y + y).map(y, y + y)…` doubles at
  each stage, 20 stages took 0.7 s on no input at all, and 4096 characters allow 270;
* `+` copies both sides, so `args.xs + args.xs + …` (585 terms fit) is quadratic in the
  number of terms: 300 terms over 1,000 ids took 1.8 s;
* `matches` compiles its pattern on every call, and a pattern's cost is not its length:
  `'\\w{100}\\w{100}'` takes 66 ms to compile, `\\w{100}x` 1.3 s to search a megabyte.

**The model.** The source is parsed (bastion.policy._cel_syntax) and read by abstract
interpretation. Each sub-expression gets a bound on the value it can produce — L, its
elements (or keys); K, how many values it holds (itself, elements, keys, all nested); S,
its size (values plus one per 16 bytes of string, as `_cel._size` counts) — and a bound on
the work of evaluating it, in steps of ≈ 200 ns. Bounds are polynomials with non-negative
coefficients in the input's sizes: V (values), N (size) and W (the most elements of any
one list or map in it), so one reading at compile time serves every decision, which
evaluates the polynomial on its own input. Every variable of the input (`args`, `ctx`, …)
reads as all of it; a part of the input has at most W elements.

A comprehension walks at most L_r elements, and its element x has k ≤ K_r and s ≤ S_r, the
elements' sizes adding up to at most (K_r, S_r). The body's bound f(k, s) is a polynomial
with non-negative coefficients, so f - f(0) is superadditive and over the elements Σ f(xᵢ)
≤ f(0)·L_r + (f(K_r, S_r) - f(0)): the body is read twice, with x empty and with x the
whole list. What `map` builds is bounded the same way, so a chain of stages multiplies as
it does when it runs. A comparison, which costs the smaller of its operands, is charged one
of them, chosen from the source once per node (`_charge_right`), so the body's bound stays
one polynomial.

A pattern's search is read from the pattern itself (`pattern_search`): the regex crate's
lazy DFA gives up on a Unicode `\b` over non-ASCII text and when its states outgrow its
cache, and its fallback costs per byte as many steps as the pattern has positions alive at
once, so the states of the search are counted (sets of positions, Glushkov's construction)
and a pattern that could leave the DFA is charged the fallback's rate. What an expression
gives is charged its conversion to Python (`RESULT_VALUE`), `duration()` its parsing.

The weights (`ITERATION` … `REGEX_BASE`) were measured on this machine class with `cel`
0.10, each rounded up; the bound overestimates ordinary conditions ≈ 1.2-3x, and shapes
built to exhaust it ≈ 1-1.5x (at the `_cel.MAX_WORK` budget of 200,000 steps the slowest
one measured, a wide pattern searched over 4 KB, took 26-42 ms).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ._cel_syntax import (
    ELSEWHERE,
    Call,
    CharSet,
    Collection,
    Conditional,
    Ident,
    Literal,
    Node,
    Operators,
    PatternReader,
    PatternTree,
    Step,
    Unary,
    Unreadable,
    children,
    class_end,
    parse,
)

#: One element of a comprehension: binding the variable and the macro's accumulator step
#: (≈ 175 ns over 250 elements, ≈ 280 ns over 100,000).
ITERATION = 1.0
#: Evaluating any node: a literal, a variable read, an operator, a call (≈ 20-25 ns).
NODE = 0.125
#: Copying or comparing one value (a list element, a map entry: ≈ 30-80 ns), and 16 bytes
#: of string (`+`, `==`, `<`: ≈ 20 ns).
VALUE = 0.25
UNIT = 0.1
#: Reading 16 bytes of string out of a field, an element or a list (strings are shared, but
#: reading a field copies a list and its elements' values), or scanning them (`contains`,
#: `size`): ≈ 1-5 ns.
READ_UNIT = 0.025
#: `map`/`filter` deep-copy the list built so far at every element: per value and 16 bytes.
ACCUMULATED_VALUE = 0.5
ACCUMULATED_UNIT = 0.1
#: Compiling a simple pattern (≈ 7-20 µs); a pattern's own weight (`pattern_weight`) is added.
REGEX_BASE = 100.0
#: Parsing a duration's text, per 16 bytes (`'1h1h…'`, `'-0h0h…'`: 4 MiB in 0.13-0.2 s). An
#: attacker's probe: ten `duration(args.s)` took 1.08 s, on a bound of 26 ms that counted
#: the text as read, not parsed.
DURATION_UNIT = 5.0
#: What an expression gives is converted to Python values: a boolean costs nothing to speak
#: of, a list or a map ≈ 0.2-1 µs a value (a map's entry: ≈ 0.93 µs). An attacker's probe:
#: `[args.m, args.m, …]`, forty 4,500-entry maps, took 0.31 s on a bound of 20 ms.
RESULT_VALUE = 5.0
RESULT_UNIT = 0.1
#: Deeper comprehensions are refused: each level reads its body twice.
MAX_COMPREHENSION_DEPTH = 8
#: A bound of higher degree in the input's sizes is refused: on five values it is over any
#: budget, and multiplying such polynomials is what makes reading an expression slow.
MAX_DEGREE = 8
#: How much reading one expression may take: nodes visited (a body is read twice per level
#: of comprehension around it), terms of a polynomial, and terms multiplied, all told. A
#: 4096-character body eight levels deep took 1.4 s to read, at load and again at compile,
#: in the admin API's request; within these, ≈ 0.2 s at most.
MAX_READS = 10_000
MAX_TERMS = 64
MAX_PRODUCTS = 200_000

_MACROS = {"all": 1, "exists": 1, "exists_one": 1, "existsOne": 1, "filter": 1, "map": 2}
_CONVERSIONS = frozenset({"int", "uint", "double", "bool", "duration", "timestamp", "type"})
_SCANS = frozenset({"contains", "startsWith", "endsWith", "size"})


class Unbounded(ValueError):
    """The expression's work has no bound this model can state (the message says why)."""


# --- polynomials in (V, N, W) ----------------------------------------------------------

#: Powers of V (values), N (size) and W (the most elements of any one list or map).
Powers = tuple[int, int, int]


class Poly:
    """A polynomial with non-negative coefficients in the input's sizes: {powers: coefficient}.
    Immutable."""

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[Powers, float]) -> None:
        self.terms = {power: value for power, value in terms.items() if value > 0}

    @staticmethod
    def constant(value: float) -> Poly:
        return Poly({(0, 0, 0): value})

    def __add__(self, other: Poly) -> Poly:
        terms = dict(self.terms)
        for power, value in other.terms.items():
            terms[power] = terms.get(power, 0.0) + value
        return Poly(terms)

    def __mul__(self, other: Poly | float) -> Poly:
        if not isinstance(other, Poly):
            return _checked({power: value * other for power, value in self.terms.items()})
        terms: dict[Powers, float] = {}
        for (v1, n1, w1), a in self.terms.items():
            for (v2, n2, w2), b in other.terms.items():
                power = (v1 + v2, n1 + n2, w1 + w2)
                terms[power] = terms.get(power, 0.0) + a * b
        return _checked(terms)

    __rmul__ = __mul__

    def minus(self, other: Poly) -> Poly:
        """self - other, where other ≤ self term by term (a rounding error reads as zero)."""
        return Poly({power: value - other.terms.get(power, 0.0) for power, value in self.terms.items()})

    def at(self, values: float, size: float, widest: float) -> float:
        return sum(value * values**v * size**n * widest**w for (v, n, w), value in self.terms.items())

    @property
    def degree(self) -> int:
        return max((sum(power) for power in self.terms), default=0)


def _checked(terms: dict[Powers, float]) -> Poly:
    poly = Poly(terms)
    if len(poly.terms) > MAX_TERMS:
        raise _too_big()
    if poly.degree > MAX_DEGREE:
        raise Unbounded(f"its work grows with the input's size to a power above {MAX_DEGREE}")
    if not all(math.isfinite(value) for value in poly.terms.values()):
        raise Unbounded("its work grows beyond any bound (values that double at every stage of a chain)")
    return poly


ZERO = Poly({})
ONE = Poly.constant(1.0)


# --- the bound ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bound:
    """What an expression can produce, and the work of producing it."""

    length: Poly  # its elements (or keys), at most: L ≤ K
    values: Poly  # K
    size: Poly  # S
    work: Poly
    #: Read from the input outside any loop's element (`args.items`): it, and every list and
    #: map in it, has at most W elements.
    part: bool = False

    def scan(self, unit: float) -> Poly:
        """Copying (`unit` = UNIT) or reading (`unit` = READ_UNIT) the whole value."""
        return self.values * VALUE + self.size * unit

    def costing(self, work: Poly) -> _Bound:
        return _Bound(self.length, self.values, self.size, work, self.part)


_Env = Mapping[str, _Bound]
_NOTHING = _Bound(ZERO, ZERO, ZERO, ZERO)
#: Every variable of the input, and a name this model does not know, reads as all of it.
_V, _N, _W = Poly({(1, 0, 0): 1.0}), Poly({(0, 1, 0): 1.0}), Poly({(0, 0, 1): 1.0})
_INPUT = _Bound(_W, _V, _N, ZERO, part=True)


def _scalar(work: Poly) -> _Bound:
    return _Bound(ONE, ONE, ONE, work)


class _Reader:
    def __init__(self) -> None:
        #: The names each node reads (`_names`).
        self._seen: dict[int, frozenset[str]] = {}
        self._depth = 0
        self._reads = 0
        self._products = 0
        #: The steps left to read patterns' searches with (`pattern_search`), and those read.
        self._regex_budget = MAX_REGEX_WORK
        self._searches: dict[str, tuple[float, float]] = {}

    def read(self, node: Node, env: _Env) -> _Bound:
        self._reads += 1
        if self._reads > MAX_READS:
            raise _too_big()
        if isinstance(node, Literal):
            return _Bound(ONE, ONE, Poly.constant(node.size), Poly.constant(NODE))
        if isinstance(node, Ident):
            return (env.get(node.name) or _INPUT).costing(Poly.constant(NODE))
        if isinstance(node, Collection):
            parts = [self.read(item, env) for item in node.items]
            work = Poly.constant(NODE)
            for part in parts:  # each item is copied into the new list or map
                work = work + part.work + part.scan(READ_UNIT)
            return _Bound(
                Poly.constant(len(parts)),
                _total(part.values for part in parts),
                _total(part.size for part in parts),
                work,
            )
        if isinstance(node, Conditional):
            test, then, otherwise = (self.read(item, env) for item in (node.test, node.then, node.otherwise))
            work = test.work + then.work + otherwise.work
            return _Bound(
                then.length + otherwise.length, then.values + otherwise.values, then.size + otherwise.size, work
            )
        if isinstance(node, Operators):
            return self._operators(node, env)
        if isinstance(node, Unary):
            return _scalar(self.read(node.operand, env).work + Poly.constant(NODE))
        if isinstance(node, Call):
            if node.name == "has" and len(node.args) == 1:
                return _scalar(self.read(node.args[0], env).work)
            if node.name == "matches" and len(node.args) == 2:
                return self._matches(self.read(node.args[0], env), node.args[1], self.read(node.args[1], env))
            return _function(node.name, None, [self.read(item, env) for item in node.args])
        current = self.read(node.base, env)
        for step in node.steps:
            current = self._step(current, step, env)
        return current

    def _operators(self, node: Operators, env: _Env) -> _Bound:
        parts = [self.read(item, env) for item in node.items]
        current = parts[0]
        work = current.work
        for position, (op, part) in enumerate(zip(node.ops, parts[1:], strict=False), start=1):
            work = work + part.work + Poly.constant(NODE)
            if op == "+":  # a list, string or bytes: both sides copied
                work = work + current.scan(UNIT) + part.scan(UNIT)
                current = _Bound(
                    current.length + part.length, current.values + part.values, current.size + part.size, ZERO
                )
                continue
            if op in ("==", "!=", "<", "<=", ">", ">="):
                charged = part if self._charge_right(node, position, env) else current
                work = work + charged.scan(UNIT)
            elif op == "in":  # a search of the list, or of the map's keys
                work = work + current.scan(UNIT) + part.scan(UNIT)
            current = _scalar(ZERO)
        return current.costing(work)

    def _charge_right(self, node: Operators, position: int, env: _Env) -> bool:
        """Whether a comparison, which costs the smaller of its operands, is charged its right
        one: a literal, else the one that reads a loop's variable (over the loop it costs the
        list's size once, where the other could cost its size per element), else the left.
        Read from the source, so every reading of the node agrees (a polynomial's sum over
        the elements needs the same polynomial at every element)."""
        if position > 1:
            return False  # the left is the comparison before it: a boolean
        left, right = (self._names(item) for item in node.items[:2])
        if not left or not right:
            return not right
        return bool(right & env.keys()) and not left & env.keys()

    def _names(self, node: Node) -> frozenset[str]:
        """The names `node` reads (memoized: bodies are read many times)."""
        key = id(node)
        if key not in self._seen:
            if isinstance(node, Ident):
                names = frozenset({node.name})
            else:
                names = frozenset().union(*(self._names(child) for child in children(node)))
            self._seen[key] = names
        return self._seen[key]

    def _step(self, current: _Bound, step: Step, env: _Env) -> _Bound:
        if step.kind in ("select", "index"):
            # The field's or element's value is copied out; it could be anything inside.
            work = current.work + Poly.constant(NODE) + current.scan(READ_UNIT)
            if step.kind == "index":
                index = self.read(step.args[0], env)
                work = work + index.work + index.scan(UNIT)
            return _Bound(_W if current.part else current.values, current.values, current.size, work, current.part)
        if step.kind == "struct":
            return self.read(Collection(step.args), env)
        arity = _MACROS.get(step.name)
        if arity is not None and len(step.args) in (2, arity + 1) and isinstance(step.args[0], Ident):
            return self._comprehension(step.name, current, step.args[0].name, step.args[1:], env)
        if step.name == "matches" and len(step.args) == 1:
            return self._matches(current, step.args[0], self.read(step.args[0], env))
        return _function(step.name, current, [self.read(item, env) for item in step.args])

    def _comprehension(self, macro: str, over: _Bound, name: str, bodies: tuple[Node, ...], env: _Env) -> _Bound:
        if self._depth >= MAX_COMPREHENSION_DEPTH:
            raise Unbounded(f"its comprehensions nest more than {MAX_COMPREHENSION_DEPTH} deep")
        # Not a `part` even when the list is: its own lists are bounded by its values, which
        # add up over the elements (W per element would count the widest list once per element).
        whole_element = _Bound(over.values, over.values, over.size, ZERO)
        self._depth += 1
        try:
            empty = [self.read(body, {**env, name: _NOTHING}) for body in bodies]
            whole = [self.read(body, {**env, name: whole_element}) for body in bodies]
        finally:
            self._depth -= 1
        count = over.length
        once, every = _sum(empty), _sum(whole)
        # Σ f(xᵢ) ≤ f(0)·count + (f(whole) - f(0)); each element is also copied when bound.
        work = over.work + Poly.constant(NODE) + over.scan(READ_UNIT)
        work = work + self._times(once + Poly.constant(ITERATION), count) + every.minus(once)
        if macro not in ("map", "filter"):
            return _scalar(work)
        built = over
        if macro == "map":
            first, last = empty[-1], whole[-1]
            values = ONE + self._times(first.values, count) + last.values.minus(first.values)
            size = ONE + self._times(first.size, count) + last.size.minus(first.size)
            built = _Bound(count, values, size, ZERO)
        # The answer is built by copying the list so far at every element.
        work = work + self._times(count, built.values * ACCUMULATED_VALUE + built.size * ACCUMULATED_UNIT)
        return built.costing(work)

    def _matches(self, subject: _Bound, pattern_node: Node, pattern: _Bound) -> _Bound:
        if not isinstance(pattern_node, Literal) or pattern_node.text is None:
            # Its compile time is bounded only by the regex crate's size limit, which `\w{300}`
            # reaches after ≈ 55 ms: on every call.
            raise Unbounded(
                "matches() needs a string literal as its pattern (another compiles in up to ≈ 60 ms a call)"
            )
        text = pattern_node.text
        if text not in self._searches:  # a body is read many times; each pattern once
            per_call, per_unit, spent = pattern_search(text, max(self._regex_budget, 0))
            self._regex_budget -= spent
            self._searches[text] = (per_call, per_unit)
        per_call, per_unit = self._searches[text]
        # Compiled on every call (`pattern_weight`), then searched (`pattern_search`).
        work = subject.work + pattern.work + Poly.constant(REGEX_BASE + pattern_weight(text) + per_call)
        return _scalar(work + subject.size * per_unit)

    def _times(self, left: Poly, right: Poly) -> Poly:
        self._products += len(left.terms) * len(right.terms)
        if self._products > MAX_PRODUCTS:
            raise _too_big()
        return left * right


def _too_big() -> Unbounded:
    return Unbounded("it is too big to bound its work (loops nested around long bodies): split it into rules")


def _total(parts: Iterator[Poly]) -> Poly:
    total = ONE
    for part in parts:
        total = total + part
    return total


def _sum(parts: list[_Bound]) -> Poly:
    work = ZERO
    for part in parts:
        work = work + part.work
    return work


def _function(name: str, target: _Bound | None, args: list[_Bound]) -> _Bound:
    operands = ([target] if target is not None else []) + args
    work = _sum(operands) + Poly.constant(NODE)
    for operand in operands:
        work = work + operand.scan(READ_UNIT)
    if name == "duration":
        work = work + _total(operand.size for operand in operands) * DURATION_UNIT
    if name in _SCANS or name in _CONVERSIONS or name.startswith("get"):
        return _scalar(work)
    if name == "string":  # bytes that are not UTF-8 become U+FFFD, three bytes each
        return _Bound(ONE, ONE, _total(operand.size * 3.0 for operand in operands), work)
    # `bytes`, `dyn`, and a function this evaluator does not have (it fails when called):
    # no bigger than its operands together.
    values = _total(operand.values for operand in operands)
    return _Bound(values, values, _total(operand.size for operand in operands), work)


# --- regular expressions -----------------------------------------------------------------

#: Compile cost of one atom, in steps, measured (`\w`: ≈ 300 µs, `\p{L}`: ≈ 260 µs, `\d`,
#: `\S`: ≈ 10-18 µs, `.`, `\s` and a negated class: ≈ 4 µs, a literal or an ASCII class:
#: ≈ 0.2 µs, ≈ 1.5 µs ignoring case).
_WIDE_CLASS = 1500.0
_DIGIT_CLASS = 100.0
_ANY = 25.0
_CLASS_ESCAPE = re.compile(r"\\[wWpP]|\[:")
_ESCAPES = {
    **dict.fromkeys("wWpP", _WIDE_CLASS),
    **dict.fromkeys("dDS", _DIGIT_CLASS),
    **dict.fromkeys("sbB", _ANY),
}


def pattern_weight(pattern: str) -> float:
    """What compiling `pattern` costs, in steps, over-estimated: each atom's cost times every
    counted repetition around it (`{m,n}` repeats its atom n times in the compiled program)."""
    folded = 8.0 if re.search(r"\(\?[a-zA-Z]*i", pattern) else 1.0
    stack: list[float] = [0.0]  # the weight of each open group
    last = 0.0  # the atom or group a repetition applies to
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            escape = pattern[index + 1 : index + 2]
            if escape in ("p", "P"):
                end = pattern.find("}", index) if pattern[index + 2 : index + 3] == "{" else index + 2
                index = (end if end > 0 else len(pattern)) + 1
                atom = _WIDE_CLASS
            else:
                index += 2
                atom = _ESCAPES.get(escape, folded)
        elif char == "[":
            end = class_end(pattern, index)
            inside = pattern[index + 1 : end]
            if _CLASS_ESCAPE.search(inside):
                atom = _WIDE_CLASS
            elif inside.startswith("^") or "\\d" in inside or "\\D" in inside:
                atom = _DIGIT_CLASS
            else:
                atom = folded * (1.0 + len(inside) / 4.0)
            index = end + 1
        elif char == "(":
            stack.append(0.0)
            index += 1
            continue
        elif char == ")":
            last = stack.pop() if len(stack) > 1 else 0.0
            stack[-1] += last
            index += 1
            continue
        elif char in "*?":
            index += 1
            continue
        elif char == "+":  # `a+` compiles as `aa*`
            stack[-1] += last
            index += 1
            continue
        elif char == "{" and (repeat := re.match(r"\{(\d+)(,(\d*))?\}", pattern[index:])):
            low, comma, high = repeat.groups()
            # Capped: a count of 400 digits overflowed the float (OverflowError, a 500 for a 422).
            count = min(_count(high) if high else _count(low) + (1 if comma else 0), 10**9)
            stack[-1] += last * (count - 1)
            last *= count
            index += repeat.end()
            continue
        elif char == ".":
            atom = _ANY
            index += 1
        else:
            atom = folded
            index += 1
        stack[-1] += atom
        last = atom
    return sum(stack)


def _count(digits: str) -> int:
    return int(digits) if len(digits) <= 10 else 10**9


# --- regular expressions: the search -----------------------------------------------------

#: The regex crate searches with a lazy DFA and, where that gives up, with its PikeVM:
#: ≈ 50 ns a byte plus ≈ 25 ns a byte for each position of the pattern alive at once. The
#: DFA gives up on a Unicode word boundary (`\b`, `\B`, `\<`, `\>`) as soon as the subject
#: holds a byte over 127, and when the states it builds outgrow its cache (`a[ab]{14}c` has
#: 2^15: 204 ns a byte, where `a[ab]{13}c` took 19). An attacker's probe: the card number
#: `\b(?:[0-9][ -]?){13,16}\b` took 1.4 s over 4 MiB, `a[ab]{40}c` 1.3 s and `[a-z]{1,30}\b`
#: 2.6 s, each read as ≈ 10 ms when a search was charged the DFA's rate alone. Measured,
#: `[a-z]{1,n}\b` after an 'é' costs ≈ 4 + 1.7·n steps per 16 bytes. Per 16 bytes:
PIKE_UNIT = 5.0
PIKE_THREAD = 2.0
#: The DFA's own rate, per 16 bytes, times 1 + `pattern_weight` / 100: ≈ 1 ns a byte behind a
#: literal prefilter, 4-10 ns where there is none (`(?:[0-9]){8}`, an anchor mid-pattern).
DFA_UNIT = 0.3
#: The DFA's cache holds 2 MiB of states (`a[ab]{13}c`'s 16,384 were searched at 19 ns a
#: byte, `a[ab]{14}c`'s 32,768 at 204): a pattern whose states take at most half of it is
#: read as searched by the DFA, each state built at most once a call (≈ 0.15-0.2 µs:
#: `AKIA[0-9A-Z]{16}`'s 2,469 over 16 KiB took 0.41 ms). A state takes 4 bytes per class
#: of bytes, rounded up to a power of two, and ≈ 64 more; where a character of several
#: bytes can match, 256 classes and 8 states for each one counted here, per character.
DFA_CACHE = 1 << 20
DFA_STATE = 1.0
#: Past these positions (counted repetitions unrolled), or steps of counting its states
#: (for one pattern, for all of an expression's), a pattern is charged the PikeVM's rate
#: with every position alive.
MAX_POSITIONS = 256
MAX_SUBSETS = 50_000
MAX_REGEX_WORK = 200_000


class _Automaton:
    """The positions of a pattern (Glushkov's construction, counted repetitions unrolled)
    and which follows which: the states of the search are sets of them."""

    def __init__(self, budget: int) -> None:
        self.sets: list[CharSet] = []
        self.follow: list[int] = []
        #: Steps of building it (nodes, links), at most `budget` (else Unreadable).
        self.spent, self._budget = 0, budget
        self.nullable, self.first, self.last = True, 0, 0

    def build(self, tree: PatternTree) -> _Automaton:
        self.nullable, self.first, self.last = self._build(tree)
        return self

    def _build(self, tree: PatternTree) -> tuple[bool, int, int]:
        """(whether it matches the empty string, its first positions, its last), as bits."""
        self.spent += 1
        if self.spent > self._budget:
            raise Unreadable("too big to count its states")
        if tree[0] == "set":
            if len(self.sets) >= MAX_POSITIONS:
                raise Unreadable
            self.sets.append(tree[1])
            self.follow.append(0)
            return False, 1 << (len(self.sets) - 1), 1 << (len(self.sets) - 1)
        if tree[0] == "look":
            return True, 0, 0
        if tree[0] == "alt":
            parts = [self._build(branch) for branch in tree[1]]
            return any(part[0] for part in parts), _union(part[1] for part in parts), _union(part[2] for part in parts)
        if tree[0] == "cat":
            result = (True, 0, 0)
            for item in tree[1]:
                result = self._then(result, self._build(item))
            return result
        _, inner, low, high = tree
        if max(low, high or 0) > MAX_POSITIONS:
            raise Unreadable
        result = (True, 0, 0)
        for _ in range(low):
            result = self._then(result, self._build(inner))
        if high is None:  # x*: the last positions lead back to the first
            _, first, last = self._build(inner)
            self._link(last, first)
            return self._then(result, (True, first, last))
        tail = (True, 0, 0)
        for _ in range(high - low):  # x{0,2} as (x(x)?)?, as the regex crate compiles it
            _, first, last = self._then(self._build(inner), tail)
            tail = (True, first, last)
        return self._then(result, tail)

    def _then(self, left: tuple[bool, int, int], right: tuple[bool, int, int]) -> tuple[bool, int, int]:
        self._link(left[2], right[1])
        first = left[1] | (right[1] if left[0] else 0)
        return left[0] and right[0], first, right[2] | (left[2] if right[0] else 0)

    def _link(self, last: int, first: int) -> None:
        self.spent += last.bit_count()
        for position in _bits(last):
            self.follow[position] |= first


def _union(parts: Iterator[int]) -> int:
    total = 0
    for part in parts:
        total |= part
    return total


def _bits(value: int) -> Iterator[int]:
    while value:
        low = value & -value
        yield low.bit_length() - 1
        value ^= low


def pattern_search(pattern: str, budget: int = MAX_SUBSETS) -> tuple[float, float, int]:
    """(steps a call, steps per 16 bytes of the subject, the part of `budget` spent) of
    searching with `pattern`: the DFA's rate (`pattern_weight`) where it keeps to the DFA,
    else the PikeVM's, with as many positions alive as the search can have at once."""
    weight = pattern_weight(pattern)
    dfa = DFA_UNIT * (1.0 + weight / 100.0)
    reader, automaton = PatternReader(pattern), _Automaton(budget - len(pattern))
    try:
        automaton.build(reader.read())
    except (Unreadable, RecursionError):  # not read, or too big to count: every atom alive
        return 0.0, max(dfa, PIKE_UNIT + PIKE_THREAD * weight), len(pattern) + automaton.spent
    pike = max(dfa, PIKE_UNIT + PIKE_THREAD * len(automaton.sets))
    symbols = [chr(code) for code in range(128)] + sorted(reader.symbols) + list(ELSEWHERE)
    spent = len(pattern) + automaton.spent + len(symbols) * len(set(automaton.sets))
    if spent > budget:
        return 0.0, pike, budget
    members = {one: [one.has(symbol) for symbol in symbols] for one in set(automaton.sets)}
    masks = [0] * len(symbols)
    for position, one in enumerate(automaton.sets):
        for index, inside in enumerate(members[one]):
            masks[index] |= inside << position
    several_bytes = any(masks[128:])
    ascii_classes = 1 + sum(masks[code] != masks[code - 1] for code in range(1, 128))
    stride = 256 if several_bytes else 1 << ascii_classes.bit_length()
    most = DFA_CACHE // (4 * stride + 64) // (8 if several_bytes else 1)
    classes = sorted(set(masks))
    # Breadth first over the sets of positions the search can be in (-1: before the start).
    # `matches` stops at the first match: a state past one is never reached (where the
    # reading is exact, and no `$` makes the match wait for the end).
    final = automaton.last if reader.exact and not reader.ends else 0
    seen, todo, alive = {-1}, [] if automaton.nullable else [-1], 0
    while todo and spent <= budget and len(seen) <= most:
        state = todo.pop()
        if state > 0 and state & final:
            continue
        reach = _union(automaton.follow[position] for position in _bits(max(state, 0)))
        reach |= automaton.first if state == -1 or not reader.anchored else 0
        for mask in classes:
            if (step := reach & mask) not in seen:
                seen.add(step)
                todo.append(step)
                alive = max(alive, step.bit_count())
        spent += max(state, 0).bit_count() + len(classes)
    if todo:  # not counted to the end: any number of states, every position alive
        return 0.0, pike, min(spent, budget)
    # Read inexactly, each state the DFA can be in is some subset of one counted.
    states = len(seen) if reader.exact else sum(2 ** min(state.bit_count(), 30) for state in seen)
    if reader.boundary or states > most:
        return 0.0, max(dfa, PIKE_UNIT + PIKE_THREAD * alive), spent
    return DFA_STATE * states, dfa, spent


# --- entry point -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Work:
    """A condition's bound, in steps: a polynomial in the input's sizes (`Poly`)."""

    terms: tuple[tuple[Powers, float], ...]

    def at(self, values: float, size: float, widest: float) -> float:
        return sum(value * values**v * size**n * widest**w for (v, n, w), value in self.terms)

    def linear_within(self, per_value: float, per_unit: float) -> bool:
        """Whether it is at most linear, with at most these steps per value and per 16 bytes."""
        coefficients = dict(self.terms)
        return all(sum(power) <= 1 for power, _ in self.terms) and (
            coefficients.get((1, 0, 0), 0.0) + coefficients.get((0, 0, 1), 0.0) <= per_value
            and coefficients.get((0, 1, 0), 0.0) <= per_unit
        )


def work_bound(source: str) -> Work:
    """The bound of `source`'s work; Unbounded (a ValueError) when it has none."""
    try:
        bound = _Reader().read(parse(source), {})
    except Unreadable as exc:
        raise Unbounded(f"cannot read it: {exc}") from exc
    except RecursionError as exc:
        raise Unbounded("it nests too deeply to bound its work") from exc
    work = bound.work + bound.values * RESULT_VALUE + bound.size * RESULT_UNIT
    return Work(tuple(sorted(work.terms.items())))
