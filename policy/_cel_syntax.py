"""CEL source read into a syntax tree, for bastion.policy._cel_cost to bound the work of:
the `cel` package compiles and runs an expression but gives no tree. Only what the bound
needs is kept (a literal's size and a string's value, names, the shape of calls and
operators); an expression `cel` accepts reads here (tests/unit/policy/test_cel_cost.py reads
a corpus), and what cannot be read raises Unreadable, which refuses the condition.
A `matches` pattern is read here too (`PatternReader`), in the regex crate's syntax.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


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


#: `\X` is a hex escape too (cel-spec ESC_BYTE_SEQ): read as `X`, `'\X5cw{100}x'` hid `\w{100}x`
#: from the pattern's weight and searched 256 KiB for 0.37 s on a bound of 1 ms.
_ESCAPE = re.compile(r"\\(?:[xX]([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([0-7]{3})|(.))", re.DOTALL)
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


_OPERATORS = frozenset().union(*_LEVELS)


def _group(items: list[Node], ops: list[str], level: int) -> Node:
    """`items[0] ops[0] items[1] …` as CEL groups it: operators of `level` and below split
    the run into operands of the next levels, each level left to right."""
    if not ops:
        return items[0]
    runs: list[tuple[list[Node], list[str]]] = [([items[0]], [])]
    here: list[str] = []
    for op, item in zip(ops, items[1:], strict=True):
        if op in _LEVELS[level]:
            here.append(op)
            runs.append(([item], []))
        else:
            runs[-1][0].append(item)
            runs[-1][1].append(op)
    operands = [_group(run_items, run_ops, level + 1) for run_items, run_ops in runs]
    return Operators(tuple(here), tuple(operands)) if here else operands[0]


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
        test = self._binary()
        if not self._accept("?"):
            return test
        then = self._binary()
        self._expect(":")
        return Conditional(test, then, self._expr())

    def _binary(self) -> Node:
        """A run of operands and binary operators, read flat and then grouped by precedence
        (`_group`): a nesting costs a few frames, not one per level of precedence (cel
        accepts 95 levels of brackets, which took more than Python's 1,000 frames)."""
        items = [self._unary()]
        ops: list[str] = []
        while any(self._is(op) for op in _OPERATORS):
            ops.append(self._next().text)
            items.append(self._unary())
        return _group(items, ops, 0)

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


# --- regular expressions -----------------------------------------------------------------
# A `matches` pattern, in the regex crate's syntax, read into a tree for
# bastion.policy._cel_cost to count the states of its search.

#: A character over 127 that the pattern does not write, by the classes it is in.
ELSEWHERE = ("\0d", "\0w", "\0s", "\0")
_ASCII_SPACE = frozenset(" \t\n\v\f\r")


@functools.lru_cache(maxsize=4096)
def _kinds(symbol: str) -> frozenset[str]:
    """The classes (`d`, `w`, `s`; `ad`, `aw`, `as` for their ASCII forms) `symbol` is in."""
    if symbol.startswith("\0"):
        return frozenset({"d": "dw", "w": "w", "s": "s"}.get(symbol[1:], ""))
    if symbol < "\x80":
        kinds = ("d" if symbol.isdigit() else "") + ("w" if symbol.isalnum() or symbol == "_" else "")
        kinds += "s" if symbol in _ASCII_SPACE else ""
        return frozenset(kinds) | {"a" + kind for kind in kinds}
    category = unicodedata.category(symbol)
    word = symbol.isalpha() or category in ("Mn", "Mc", "Me", "Nd", "Nl", "Pc") or symbol in "\u200c\u200d"
    return frozenset(("d" if category == "Nd" else "") + ("w" if word else "") + ("s" if symbol.isspace() else ""))


@dataclass(frozen=True, slots=True)
class CharSet:
    """The characters one position of a pattern matches: `chars`, those of `kinds`
    (`_kinds`, `.` any but a newline, `*` any), or, `negated`, all others."""

    chars: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    negated: bool = False

    def has(self, symbol: str) -> bool:
        inside = symbol in self.chars or bool(self.kinds & _kinds(symbol))
        inside = inside or "*" in self.kinds or ("." in self.kinds and symbol != "\n")
        return inside != self.negated


ANY_CHAR = CharSet(kinds=frozenset("*"))
#: ("set", CharSet) | ("cat", [trees]) | ("alt", [trees]) | ("rep", tree, low, high or None) | ("look",)
PatternTree = tuple[Any, ...]
_REPEAT = re.compile(r"(\d{1,6})(,(\d{0,6}))?\}")
_GROUP = re.compile(r"\?(?:P?<[A-Za-z_][A-Za-z0-9_.\[\]]*>|([imsuxU-]*)([:)]))")
_PROPERTY = re.compile(r"\{[^}]*\}|[A-Za-z]")
_CODE = re.compile(r"[xuU]\{([0-9a-fA-F]{1,8})\}|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})")
_SPECIAL = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}


class PatternReader:
    """A pattern read into a PatternTree. What it cannot read exactly (`\\p{…}`, class
    operations, look-around but a leading `^` and a trailing `$`) reads as matching more
    than it does, and clears `exact`; what it cannot read at all raises Unreadable."""

    def __init__(self, pattern: str) -> None:
        self.text, self.at = pattern, 0
        self.flags = {"u"}
        #: Read exactly; has a Unicode word boundary; searched from the start only; a match
        #: waits for the end (`$`).
        self.exact, self.boundary, self.anchored, self.ends = True, False, False, False
        self.symbols: set[str] = set()  # the characters over 127 it writes

    def read(self) -> PatternTree:
        if self.text.startswith(("^", "\\A")):
            self.anchored, self.at = True, 1 if self.text[0] == "^" else 2
        tree = self._alternation()
        if self.at < len(self.text):
            raise Unreadable("an unmatched ')'")
        if tree[0] == "alt" and self.anchored:  # `^a|b`: only the first branch is anchored
            self.anchored, self.exact = False, False
        return tree

    def _peek(self, count: int = 1) -> str:
        return self.text[self.at : self.at + count]

    def _alternation(self) -> PatternTree:
        saved = set(self.flags)
        branches = [self._concatenation()]
        while self._peek() == "|":
            self.at += 1
            branches.append(self._concatenation())
        self.flags = saved
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def _concatenation(self) -> PatternTree:
        items: list[PatternTree] = []
        while self.at < len(self.text) and self._peek() not in "|)":
            atom = self._atom()
            while atom is not None and self._peek() and self._peek() in "*+?{":
                atom = ("rep", atom, *self._repetition())
                self.at += self._peek() == "?"  # lazy
            if atom is not None:
                items.append(atom)
        return ("cat", items)

    def _repetition(self) -> tuple[int, int | None]:
        char = self._peek()
        self.at += 1
        if char != "{":
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        found = _REPEAT.match(self.text, self.at)
        if found is None:
            raise Unreadable("a '{' that is no repetition")
        self.at = found.end()
        low, comma, high = found.groups()
        return int(low), ((int(high) if high else None) if comma else int(low))

    def _atom(self) -> PatternTree | None:
        char = self._peek()
        self.at += 1
        if char == "(":
            return self._group()
        if char == "[":
            return ("set", self._class())
        if char == "\\":
            return self._escape(in_class=False)
        if char in "^$":
            return self._look(char == "$" and self.at == len(self.text))
        if char == ".":
            return ("set", ANY_CHAR if "s" in self.flags else CharSet(kinds=frozenset(".")))
        if char in "*+?{":
            raise Unreadable("a repetition of nothing")
        return ("set", self._literal(char))

    def _look(self, at_end: bool) -> PatternTree:
        self.exact = self.exact and at_end and "m" not in self.flags
        self.ends = self.ends or at_end
        return ("look",)

    def _group(self) -> PatternTree | None:
        saved = set(self.flags)
        if self._peek() == "?":
            found = _GROUP.match(self.text, self.at)
            if found is None or "x" in (found.group(1) or ""):  # `x`: whitespace and comments
                raise Unreadable("a group")
            self.at = found.end()
            if found.group(2) is not None:
                on = True
                for flag in found.group(1):
                    on = on and flag != "-"
                    if flag != "-":
                        self.flags = self.flags | {flag} if on else self.flags - {flag}
                if found.group(2) == ")":  # `(?i)`: to the end of the enclosing group
                    return None
        tree = self._alternation()
        if self._peek() != ")":
            raise Unreadable("an unclosed group")
        self.at += 1
        self.flags = saved
        return tree

    def _literal(self, char: str) -> CharSet:
        chars = {char}
        if "i" in self.flags:
            chars |= {char.lower(), char.upper()} | {"s": {"\u017f"}, "k": {"\u212a"}}.get(char.lower(), set())
            chars = {one for one in chars if len(one) == 1}
            self.exact = self.exact and char < "\x80"
        self.symbols |= {one for one in chars if one >= "\x80"}
        return CharSet(chars=frozenset(chars))

    def _escape(self, in_class: bool) -> PatternTree:
        char = self._peek()
        self.at += 1
        if char and char in "dswDSW":
            kind = ("" if "u" in self.flags else "a") + char.lower()
            return ("set", CharSet(kinds=frozenset({kind}), negated=char.isupper()))
        if char and char in "pP":
            found = _PROPERTY.match(self.text, self.at)
            self.at = found.end() if found else len(self.text)
            self.exact = False
            return ("set", ANY_CHAR)
        if not in_class and char and char in "bB<>Az":
            if char in "bB" and self._peek() == "{":  # \b{start}, …
                self.at = self.text.find("}", self.at) + 1 or len(self.text)
            self.boundary = self.boundary or (char in "bB<>" and "u" in self.flags)
            return self._look(char == "z" and self.at == len(self.text))
        if (found := _CODE.match(self.text, self.at - 1)) is not None:
            self.at = found.end()
            code = int(next(group for group in found.groups() if group), 16)
            if code > 0x10FFFF:
                raise Unreadable("an escape past U+10FFFF")
            return ("set", self._literal(chr(code)))
        if char in _SPECIAL or (char and not char.isalnum() and char < "\x80"):
            return ("set", self._literal(_SPECIAL.get(char, char)))
        raise Unreadable(f"the escape \\{char}")

    def _class(self) -> CharSet:
        start = self.at - 1
        negated = self._peek() == "^"
        self.at += negated
        chars: set[str] = set()
        kinds: set[str] = set()
        while (char := self._peek()) != "]" or self.at == start + 1 + negated:
            if not char:
                raise Unreadable("an unclosed class")
            if char == "[" or self._peek(2) in ("&&", "--", "~~"):  # nested, `[:alpha:]`, operations
                self.at = class_end(self.text, start) + 1
                self.exact = False
                return ANY_CHAR
            self.at += 1
            if char == "\\":
                escaped: CharSet = self._escape(in_class=True)[1]
                if escaped.negated:  # `[\D]`: read as any
                    self.exact = False
                    kinds.add("*")
                kinds |= escaped.kinds
                if escaped.kinds or not escaped.chars:
                    continue
                char = min(escaped.chars)
            if self._peek() == "-" and self._peek(2) != "-]" and self.at + 1 < len(self.text):
                self.at += 1
                end = self._peek()
                self.at += 1
                if end == "\\":
                    end = min(self._escape(in_class=True)[1].chars, default="\uffff")
                if char >= "\x80" or end >= "\x80" or len(end) != 1:
                    self.exact = False
                    kinds.add("*")
                    continue
                chars |= {chr(code) for code in range(ord(char), ord(end) + 1)}
            else:
                chars.add(char)
        self.at += 1
        if "i" in self.flags:
            chars = {folded for char in chars for folded in self._literal(char).chars}
        self.symbols |= {char for char in chars if char >= "\x80"}
        return CharSet(frozenset(chars), frozenset(kinds), negated)


def class_end(pattern: str, start: int) -> int:
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
