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
    Call,
    Collection,
    Conditional,
    Ident,
    Literal,
    Node,
    Operators,
    Step,
    Unary,
    Unreadable,
    children,
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
                return _matches(self.read(node.args[0], env), node.args[1], self.read(node.args[1], env))
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
            return _matches(current, step.args[0], self.read(step.args[0], env))
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
    if name in _SCANS or name in _CONVERSIONS or name.startswith("get"):
        return _scalar(work)
    if name == "string":  # bytes that are not UTF-8 become U+FFFD, three bytes each
        return _Bound(ONE, ONE, _total(operand.size * 3.0 for operand in operands), work)
    # `bytes`, `dyn`, and a function this evaluator does not have (it fails when called):
    # no bigger than its operands together.
    values = _total(operand.values for operand in operands)
    return _Bound(values, values, _total(operand.size for operand in operands), work)


def _matches(subject: _Bound, pattern_node: Node, pattern: _Bound) -> _Bound:
    if not isinstance(pattern_node, Literal) or pattern_node.text is None:
        # Its compile time is bounded only by the regex crate's size limit, which `\w{300}`
        # reaches after ≈ 55 ms: on every call.
        raise Unbounded("matches() needs a string literal as its pattern (another compiles in up to ≈ 60 ms a call)")
    weight = pattern_weight(pattern_node.text)
    # Compiled on every call; a search walks the subject once per state it can be in (the
    # lazy DFA gives up on big Unicode programs, and the fallback is O(program x subject)).
    work = subject.work + pattern.work + Poly.constant(REGEX_BASE + weight)
    return _scalar(work + subject.size * (UNIT * (1.0 + weight / 100.0)))


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
            end = _class_end(pattern, index)
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
            count = int(high) if high else int(low) + (1 if comma else 0)
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


def _class_end(pattern: str, start: int) -> int:
    """Where the class opened at `start` closes (nested classes, escapes and `[:alpha:]` read)."""
    depth = 0
    index = start
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":
            depth += 1
        elif char == "]" and index > start + 1 and not (index == start + 2 and pattern[start + 1] == "^"):
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return len(pattern)


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
    return Work(tuple(sorted(bound.work.terms.items())))
