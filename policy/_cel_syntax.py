"""CEL source read into a syntax tree, for bastion.policy._cel_cost to bound the work of:
the `cel` package compiles and runs an expression but gives no tree. Only what the bound
needs is kept (a literal's size and a string's value, names, the shape of calls and
operators); an expression `cel` accepts reads here (tests/unit/policy/test_cel_cost.py reads
a corpus), and what cannot be read raises Unreadable, which refuses the condition.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


class Unreadable(ValueError):
    """The source does not read as CEL here (the message says where)."""


# --- tokens ------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<space>\s+|//[^\n]*)
    |(?P<string>(?:[rR][bB]?|[bB][rR]?)?(?:'''|\"\"\"|'|"))
    |(?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[uU]?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{}])""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # string, number, ident, op, end
    text: str
    #: A string literal's value (escapes decoded), for `matches` patterns.
    value: str = ""


def _tokens(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(source):
        match = _TOKEN.match(source, index)
        if match is None:
            raise Unreadable(f"{source[index : index + 10]!r} at position {index}")
        kind = match.lastgroup or ""
        if kind == "string":
            raw = "r" in match.group().lower()
            quote = match.group().lstrip("rRbB")
            end = _string_end(source, match.end(), quote, raw)
            body = source[match.end() : end]
            tokens.append(_Token("string", body, body if raw else _decode(body)))
            index = end + len(quote)
            continue
        if kind != "space":
            tokens.append(_Token(kind, match.group()))
        index = match.end()
    tokens.append(_Token("end", ""))
    return tokens


def _string_end(source: str, start: int, quote: str, raw: bool) -> int:
    index = start
    while index < len(source):
        if source.startswith(quote, index):
            return index
        index += 2 if source[index] == "\\" and not raw else 1
    raise Unreadable("an unterminated string")


_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([0-7]{3})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _decode(body: str) -> str:
    """A CEL string literal's value: a pattern hidden as `\\x5cw` is still `\\w`."""

    def one(match: re.Match[str]) -> str:
        hex2, hex4, hex8, octal, char = match.groups()
        if char is not None:
            return _SIMPLE_ESCAPES.get(char, char)
        code = int(hex2 or hex4 or hex8, 16) if octal is None else int(octal, 8)
        return chr(code) if code <= 0x10FFFF else "?"

    return _ESCAPE.sub(one, body)


# --- syntax tree -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Literal:
    size: int
    text: str | None = None  # a string literal's value


@dataclass(frozen=True, slots=True, eq=False)
class Ident:
    name: str


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """One step of a member chain: `.field`, `[index]`, `.method(args)` or `{fields}`."""

    kind: str  # select, index, call, struct
    name: str = ""
    args: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Chain:
    base: Node
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Call:
    """A global call `name(args)` (receiver calls are chain steps)."""

    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Collection:
    items: tuple[Node, ...]  # a map's keys and values alternate


@dataclass(frozen=True, slots=True, eq=False)
class Operators:
    """`items[0] ops[0] items[1] ops[1] …`, left to right (chains of one precedence level)."""

    ops: tuple[str, ...]
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Unary:
    """`!x`, `-x` (however many: `!!!x` is still one value)."""

    operand: Node


@dataclass(frozen=True, slots=True, eq=False)
class Conditional:
    test: Node
    then: Node
    otherwise: Node


Node = Literal | Ident | Chain | Call | Collection | Operators | Unary | Conditional
_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"||"}),
    frozenset({"&&"}),
    frozenset({"==", "!=", "<", "<=", ">", ">=", "in"}),
    frozenset({"+", "-"}),
    frozenset({"*", "/", "%"}),
)


class Parser:
    """CEL's grammar (cel-spec langdef), chains and operator runs read by loops so that a
    long chain does not recurse once per link."""

    def __init__(self, source: str) -> None:
        self._tokens = _tokens(source)
        self._at = 0

    def parse(self) -> Node:
        node = self._expr()
        self._expect("end")
        return node

    def _peek(self) -> _Token:
        return self._tokens[min(self._at, len(self._tokens) - 1)]  # the last is "end"

    def _next(self) -> _Token:
        token = self._peek()
        self._at += 1
        return token

    def _is(self, text: str) -> bool:
        token = self._peek()
        return token.kind in ("op", "ident") and token.text == text

    def _accept(self, text: str) -> bool:
        if self._is(text):
            self._at += 1
            return True
        return False

    def _expect(self, text: str) -> _Token:
        """The next token: the operator `text`, or any token of the kind `text` (ident, end)."""
        token = self._next()
        if token.kind != text and not (token.kind in ("op", "ident") and token.text == text):
            raise Unreadable(f"expected {text!r}, found {token.text or 'the end'!r}")
        return token

    def _expr(self) -> Node:
        test = self._level(0)
        if not self._accept("?"):
            return test
        then = self._level(0)
        self._expect(":")
        return Conditional(test, then, self._expr())

    def _level(self, level: int) -> Node:
        if level == len(_LEVELS):
            return self._unary()
        items = [self._level(level + 1)]
        ops: list[str] = []
        while any(self._is(op) for op in _LEVELS[level]):
            ops.append(self._next().text)
            items.append(self._level(level + 1))
        return items[0] if not ops else Operators(tuple(ops), tuple(items))

    def _unary(self) -> Node:
        negated = False
        while self._accept("!") or self._accept("-"):
            negated = True
        node = self._member()
        return Unary(node) if negated else node

    def _member(self) -> Node:
        base = self._primary()
        steps: list[Step] = []
        while True:
            if self._accept("."):
                name = self._expect("ident").text
                if self._accept("("):
                    steps.append(Step("call", name, self._list(")")))
                else:
                    steps.append(Step("select", name))
            elif self._accept("["):
                steps.append(Step("index", args=(self._expr(),)))
                self._expect("]")
            elif self._is("{") and isinstance(base, Ident | Chain):
                self._next()  # a message construction, Foo{a: 1}
                steps.append(Step("struct", args=self._fields("}")))
            else:
                break
        return Chain(base, tuple(steps)) if steps else base

    def _primary(self) -> Node:
        token = self._next()
        if token.kind == "op" and token.text == ".":
            token = self._expect("ident")
        if token.kind == "ident" and token.text != "in":
            if token.text in ("true", "false", "null"):
                return Literal(1)
            if self._accept("("):
                return Call(token.text, self._list(")"))
            return Ident(token.text)
        if token.kind == "number":
            return Literal(1)
        if token.kind == "string":
            return Literal(1 + len(token.text.encode("utf-8", "surrogatepass")) // 16, token.value)
        if token.text == "(":
            node = self._expr()
            self._expect(")")
            return node
        if token.text == "[":
            return Collection(self._list("]"))
        if token.text == "{":
            return Collection(self._fields("}"))
        raise Unreadable(f"unexpected {token.text or 'end'!r}")

    def _list(self, close: str) -> tuple[Node, ...]:
        items: list[Node] = []
        while not self._accept(close):
            items.append(self._expr())
            if not self._accept(","):
                self._expect(close)
                break
        return tuple(items)

    def _fields(self, close: str) -> tuple[Node, ...]:
        items: list[Node] = []
        while not self._accept(close):
            items.append(self._expr())
            self._expect(":")
            items.append(self._expr())
            if not self._accept(","):
                self._expect(close)
                break
        return tuple(items)


def children(node: Node) -> Iterator[Node]:
    if isinstance(node, Chain):
        yield node.base
        for step in node.steps:
            yield from step.args
    elif isinstance(node, Call):
        yield from node.args
    elif isinstance(node, Collection | Operators):
        yield from node.items
    elif isinstance(node, Unary):
        yield node.operand
    elif isinstance(node, Conditional):
        yield from (node.test, node.then, node.otherwise)


def parse(source: str) -> Node:
    return Parser(source).parse()
