"""Typed argument constraints (`args:` of a rule): the model, the checks at load, and the
compiled checker that evaluation runs.

Shape: `args` maps an argument name to a constraint object, or to a keyword: `allow`
(any value, or none) or `deny` (the argument must be absent). The key `"*"` says what
happens to arguments not listed: `allow` (the default), `deny`, or a constraint every
unlisted argument must satisfy. A constraint's `properties` has the same shape, one
level down, for an object argument; `items` constrains every element of an array.
Nesting stops at `MAX_DEPTH` levels.

A listed argument is **required** unless its constraint says `required: false`: a rule
that allows `amount <= 100` must not allow a call that leaves the amount out.

Patterns use Python `re` (`fullmatch`), and a pattern whose backtracking could take
seconds is refused at load rather than bounded at run time with a timeout:

* at most `MAX_PATTERN_CHARS` characters, no backreferences;
* no repeat of variable count (`+`, `*`, `?`, `{0,3}`) or alternation inside a repeat
  that can match more than once (`(a+)+`, `(a?a?)*`, `(a|ab)*`: the shapes of
  exponential backtracking);
* an estimate of the backtracking work, the product of every repeat's choices (a wide
  repeat, `*`, `+` or an upper bound above 16, counts as `MAX_PATTERN_SUBJECT` choices)
  and of every alternation's branches, stays under `MAX_PATTERN_WORK` (two wide repeats
  pass; three do not: `.*a.*a.*b` took 0.5 s on 1 KiB);
* a value longer than `MAX_PATTERN_SUBJECT` characters fails a pattern constraint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from re import _parser as _sre  # type: ignore[attr-defined]
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

TypeName = Literal["string", "number", "integer", "boolean", "array", "object", "null"]
Keyword = Literal["allow", "deny"]
OTHERS = "*"
MAX_DEPTH = 8
MAX_PATTERN_CHARS = 256
MAX_PATTERN_SUBJECT = 1024
MAX_PATTERN_WORK = 1 << 22
_WIDE = 16
#: Tags of the constraint-or-keyword union; they appear in pydantic error locations.
CONSTRAINT_TAG = "(constraint)"
KEYWORD_TAG = "(keyword)"

_NUMBER_TYPES = {"number", "integer"}
_LENGTH_TYPES = {"string", "array"}


def refuse_nulls(data: Any) -> Any:
    """Refuse a field written as null (`when:` with nothing after it, `max: null`).

    Every optional field means "no condition" when omitted, so reading an explicit null
    the same way would turn an unfinished condition into none at all: fail open.
    """
    if isinstance(data, Mapping):
        for key, value in data.items():
            if value is None:
                raise PydanticCustomError(
                    "null_field", "'{name}' is null; write a value or omit the field", {"name": str(key)}
                )
    return data


def _leaves(value: Any) -> Iterator[Any]:
    """Every scalar inside `value` (nested lists and objects walked)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            yield item


def _arg_kind(value: Any) -> str:
    return KEYWORD_TAG if isinstance(value, str) else CONSTRAINT_TAG


class ArgConstraint(BaseModel):
    """What one argument (or object property, or array element) must be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: TypeName | None = None
    enum: tuple[Any, ...] | None = None
    min: Annotated[float, Field(allow_inf_nan=False)] | None = None
    max: Annotated[float, Field(allow_inf_nan=False)] | None = None
    min_length: Annotated[int, Field(ge=0, strict=True)] | None = None
    max_length: Annotated[int, Field(ge=0, strict=True)] | None = None
    pattern: Annotated[str, Field(strict=True)] | None = None
    properties: ArgMap | None = None
    items: ArgConstraint | None = None
    required: StrictBool = True

    _nulls = model_validator(mode="before")(refuse_nulls)

    @field_validator("enum")
    @classmethod
    def _sixty_four_bits(cls, values: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        # A version is stored and signed in canonical JSON, whose integers are 64-bit: a
        # larger one would pass here and then break the digest (found by a property test).
        for value in _leaves(values or ()):
            if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < (1 << 64):
                raise PydanticCustomError(
                    "int_64", "enum value {value} is beyond 64 bits; write it as a string", {"value": str(value)[:40]}
                )
        return values

    @model_validator(mode="after")
    def _can_match(self) -> ArgConstraint:
        problem = _never_matches(self)
        if problem:
            raise PydanticCustomError("never_matches", "{message}", {"message": problem})
        return self


ArgSpec = Annotated[
    Annotated[ArgConstraint, Tag(CONSTRAINT_TAG)] | Annotated[Keyword, Tag(KEYWORD_TAG)],
    Discriminator(_arg_kind),
]
ArgMap = dict[Annotated[str, Field(min_length=1, max_length=128)], ArgSpec]
ArgConstraint.model_rebuild()


def _never_matches(c: ArgConstraint) -> str | None:
    kind = c.type
    if c.enum is not None:
        if not c.enum:
            return "an empty 'enum' matches nothing; list at least one value"
        wrong = [value for value in c.enum if kind and not _is_type(value, kind)]
        if wrong:
            return f"'enum' value {wrong[0]!r} is not of type '{kind}', so it can never match"
    if c.min is not None and c.max is not None and c.min > c.max:
        return f"'min' {c.min:g} is above 'max' {c.max:g}, so nothing matches"
    if c.min_length is not None and c.max_length is not None and c.min_length > c.max_length:
        return f"'min_length' {c.min_length} is above 'max_length' {c.max_length}, so nothing matches"
    checks: list[tuple[str, bool, set[str]]] = [
        ("min", c.min is not None, _NUMBER_TYPES),
        ("max", c.max is not None, _NUMBER_TYPES),
        ("min_length", c.min_length is not None, _LENGTH_TYPES),
        ("max_length", c.max_length is not None, _LENGTH_TYPES),
        ("pattern", c.pattern is not None, {"string"}),
        ("properties", c.properties is not None, {"object"}),
        ("items", c.items is not None, {"array"}),
    ]
    for field, used, types in checks:
        if used and kind is not None and kind not in types:
            return f"'{field}' applies to {' or '.join(sorted(types))} values, but 'type' is '{kind}'"
    if c.pattern is not None:
        return pattern_problem(c.pattern)
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is refused (see the module docstring), or None."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"'pattern' is {len(pattern)} characters long; the limit is {MAX_PATTERN_CHARS}"
    try:
        parsed = _sre.parse(pattern)
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"'pattern' {pattern!r} is not a valid regular expression: {exc}"
    try:
        work = _work(parsed, inside_repeat=False)
    except ValueError as exc:
        return f"'pattern' {pattern!r} {exc}"
    if work > MAX_PATTERN_WORK:
        return (
            f"'pattern' {pattern!r} could backtrack for too long (more than two unbounded repeats such as "
            "'*' or '+'); simplify it, or check the value with enum or max_length"
        )
    return None


def _work(parsed: Any, *, inside_repeat: bool) -> float:
    work = 1.0
    for op, av in parsed:
        if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT):
            low, high, sub = av
            # Any repeat of variable count, `?` included: `(?:a?a?)*c` splits a run of a's
            # in exponentially many ways as surely as `(a+)+` does (an attacker's probe
            # held every decision for 6 s with 21 characters).
            if inside_repeat and high != low:
                raise ValueError(
                    "nests a repeat of variable count inside a repeat (as in '(a+)+' or '(a?a?)*'), "
                    "which can backtrack exponentially"
                )
            wide = high == _sre.MAXREPEAT or high > _WIDE
            work *= (MAX_PATTERN_SUBJECT if wide else high - low + 1) * _work(sub, inside_repeat=high > 1)
        elif op is _sre.BRANCH:
            if inside_repeat:
                raise ValueError("repeats an alternation (as in '(a|ab)*'); use a character class or enum instead")
            work *= sum(_work(branch, inside_repeat=False) for branch in av[1])
        elif op is _sre.SUBPATTERN:
            work *= _work(av[3], inside_repeat=inside_repeat)
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            work *= _work(av[1], inside_repeat=inside_repeat)
        elif op is _sre.ATOMIC_GROUP:
            work *= _work(av, inside_repeat=inside_repeat)
        elif op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
            raise ValueError("uses a backreference, which is not allowed")
    return work


def depth_problem(args: Mapping[str, ArgConstraint | str], depth: int = 1) -> str | None:
    """A message when `properties`/`items` nest deeper than MAX_DEPTH levels."""
    if depth > MAX_DEPTH:
        return f"'args' nests properties/items more than {MAX_DEPTH} levels deep"
    for spec in args.values():
        while isinstance(spec, ArgConstraint):
            if spec.properties is not None:
                problem = depth_problem(spec.properties, depth + 1)
                if problem:
                    return problem
            spec, depth = spec.items, depth + 1  # type: ignore[assignment]
            if spec is not None and depth > MAX_DEPTH:
                return f"'args' nests properties/items more than {MAX_DEPTH} levels deep"
    return None


# --- compiled checks -----------------------------------------------------------------------

#: A compiled check: the value at `path` → a violation, or None.
Check = Callable[[Any, str], "str | None"]


def _is_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "array":
        return isinstance(value, list | tuple)
    if kind == "object":
        return isinstance(value, Mapping)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return kind == "number" or isinstance(value, int) or value.is_integer()


def _same(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1, but 1 is 1.0.
    if a != b:
        return False
    return type(a) is type(b) or (_is_type(a, "number") and _is_type(b, "number"))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, slots=True)
class CompiledArgs:
    """The `args` of one rule (or `properties` of one constraint), ready to check."""

    named: tuple[tuple[str, Check | None, bool], ...]  # name, check (None: any), required
    denied: frozenset[str]
    others: Check | None
    others_denied: bool

    def violation(self, args: Mapping[str, Any], prefix: str = "") -> str | None:
        """The first violation in `args` (a plain dict of JSON values), or None."""
        for name, check, required in self.named:
            if name not in args:
                if required:
                    return f"argument '{prefix}{name}' is required"
                continue
            if check is not None and (problem := check(args[name], f"{prefix}{name}")):
                return problem
        for name in self.denied:
            if name in args:
                return f"argument '{prefix}{name}' is not allowed"
        if self.others is None and not self.others_denied:
            return None
        listed = {name for name, _, _ in self.named}
        for name, value in args.items():
            if name in listed or name in self.denied:
                continue
            if self.others_denied:
                return f"argument '{prefix}{name}' is not allowed (not listed, and '*' is deny)"
            assert self.others is not None
            if problem := self.others(value, f"{prefix}{name}"):
                return problem
        return None


def compile_args(args: Mapping[str, ArgConstraint | str]) -> CompiledArgs:
    named: list[tuple[str, Check | None, bool]] = []
    denied: set[str] = set()
    others: Check | None = None
    others_denied = False
    for name, spec in args.items():
        if name == OTHERS:
            others_denied = spec == "deny"
            others = _compile(spec) if isinstance(spec, ArgConstraint) else None
        elif spec == "deny":
            denied.add(name)
        elif spec == "allow":
            named.append((name, None, False))
        else:
            assert isinstance(spec, ArgConstraint)
            named.append((name, _compile(spec), spec.required))
    return CompiledArgs(tuple(named), frozenset(denied), others, others_denied)


def _compile(c: ArgConstraint) -> Check:
    steps: list[Check] = []
    if c.type is not None:
        kind = c.type
        steps.append(
            lambda v, p: None if _is_type(v, kind) else f"argument '{p}' must be of type {kind}, not {_show(v)}"
        )
    if c.enum is not None:
        choices = c.enum
        listed = ", ".join(_show(choice) for choice in choices)
        steps.append(
            lambda v, p: (
                None
                if any(_same(v, choice) for choice in choices)
                else f"argument '{p}' is {_show(v)}, not one of {listed}"
            )
        )
    if c.min is not None or c.max is not None:
        steps.append(_range(c.min, c.max))
    if c.min_length is not None or c.max_length is not None:
        steps.append(_length(c.min_length, c.max_length))
    if c.pattern is not None:
        steps.append(_pattern(c.pattern))
    if c.properties is not None:
        inner = compile_args(c.properties)
        steps.append(
            lambda v, p: (
                f"argument '{p}' must be an object" if not isinstance(v, Mapping) else inner.violation(v, f"{p}.")
            )
        )
    if c.items is not None:
        item = _compile(c.items)
        steps.append(_items(item))

    def check(value: Any, path: str) -> str | None:
        for step in steps:
            if problem := step(value, path):
                return problem
        return None

    return check


def _range(low: float | None, high: float | None) -> Check:
    def check(value: Any, path: str) -> str | None:
        if not _is_type(value, "number"):
            return f"argument '{path}' must be a number, not {_show(value)}"
        # Written as `not (a <= b)` so anything incomparable fails too.
        if low is not None and not low <= value:
            return f"argument '{path}' is {value:g}, below min {low:g}"
        if high is not None and not value <= high:
            return f"argument '{path}' is {value:g}, above max {high:g}"
        return None

    return check


def _length(low: int | None, high: int | None) -> Check:
    def check(value: Any, path: str) -> str | None:
        if not isinstance(value, str | list | tuple):
            return f"argument '{path}' must be a string or an array to have a length, not {_show(value)}"
        if low is not None and len(value) < low:
            return f"argument '{path}' has length {len(value)}, below min_length {low}"
        if high is not None and len(value) > high:
            return f"argument '{path}' has length {len(value)}, above max_length {high}"
        return None

    return check


def _pattern(pattern: str) -> Check:
    compiled = re.compile(pattern)

    def check(value: Any, path: str) -> str | None:
        if not isinstance(value, str):
            return f"argument '{path}' must be a string to match a pattern, not {_show(value)}"
        if len(value) > MAX_PATTERN_SUBJECT:
            return f"argument '{path}' is longer than {MAX_PATTERN_SUBJECT} characters, too long to match a pattern"
        return None if compiled.fullmatch(value) else f"argument '{path}' does not match pattern {pattern!r}"

    return check


def _items(item: Check) -> Check:
    def check(value: Any, path: str) -> str | None:
        if not isinstance(value, list | tuple):
            return f"argument '{path}' must be an array, not {_show(value)}"
        for index, element in enumerate(value):
            if problem := item(element, f"{path}[{index}]"):
                return problem
        return None

    return check
