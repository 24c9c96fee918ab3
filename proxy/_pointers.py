"""Which results the stated task points at: the school's email, the page the user named.

Provenance (`_provenance.py`) says an argument holds data from an untrusted result. Most
of the time that is what an injected instruction looks like; but a user who says "pay
Fjordlicht Studio for the shoot" or "post my question on https://forum.islandhop.example/t/2231"
asks the agent to act on data from one particular result — Fjordlicht's email, that forum
page. Telling the two apart needs two things this module computes, both small sets of
lower-case strings compared by intersection:

- a result's **identity**: who or where it came from. From the call that produced it, its
  locator arguments (a URL's registrable domain and its words, an email address and its
  domain, a file path); from the result itself, only top-level fields that name the source
  (`sender`, `from`, `author`, `organizer`, `url`, `path`, …: their locators and the words
  of a display name). Fields inside lists (a search's ten results, a listing's files) say
  nothing about *the* result's source and are not read: a search result list is never an
  identity, so an injected snippet cannot borrow one from a neighbour.
- the task's **references**: the locators it writes (URLs, hosts, addresses, paths) and its
  proper nouns (capitalised words of four or more letters that do not start a sentence:
  `Fjordlicht`, `Petra`, `Aarhus`; "Pay" or "Email" at the start of an order are not).

A result is *pointed at* when the two meet. What is compared is deliberately strict: a
whole registrable domain (`fjordlicht.example`, not any domain holding the word), a whole
address, a whole path, or a proper noun equal to a word of a display name or domain
label. The proxy then adds `named:<argument path>` to `ctx.taint` for an argument whose
data came from such a result; the reference scorer weighs that data as it weighs data the
task itself names (verifier/_taint.py). Novelty of the destination is judged separately,
so a page the user named that sends the agent to another host is still caught there.

Bounded: at most MAX_IDENTITY strings per result, read from at most IDENTITY_VALUES
values and IDENTITY_CHARS characters of the call and of the result.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Any

#: Identity strings one result keeps.
MAX_IDENTITY = 64
#: Values and characters of a call's arguments, and of a result, read for its identity.
IDENTITY_VALUES = 200
IDENTITY_CHARS = 8 * 1024
#: Characters of the task read for its references.
MAX_TASK_CHARS = 8 * 1024
#: Arguments of a call kept as what it read, and characters of each.
READ_FROM = 4
READ_FROM_CHARS = 512
#: Words of a display name read ("Dr. Saskia Lenz-Hoffmann, Praxis Lenz").
NAME_WORDS = 6
#: Shortest word that counts as a name: shorter ones ("Dr", "Ltd", "GmbH"?) match by accident.
MIN_NAME = 4
#: Top-level result keys (case-insensitive) that say who or where a result came from.
IDENTITY_KEYS = frozenset(
    {
        "from", "sender", "author", "organizer", "organiser", "owner", "host", "site", "domain",
        "url", "uri", "link", "source", "path", "file", "filename", "reply_to", "replyto",
    }
)  # fmt: skip
#: Keys of display names among them: their words are names too, not only their locators.
_NAME_KEYS = frozenset({"from", "sender", "author", "organizer", "organiser", "owner"})
#: Longest token read as a locator (a URL with its query can be long; its host is not).
MAX_TOKEN = 2048
#: Punctuation around a locator in prose ("(see https://x.example/a)," "<billing@x.example>").
_TOKEN_STRIP = "()[]{}<>\"'`,;:!?*."  # noqa: S105 (punctuation, not a secret)
_WORD = re.compile(r"[^\W\d_]+")
#: How a result path starts before its own fields (an MCP text holding JSON, structured content).
_ROOTS = re.compile(r"^(?:content\[\d+\]\.text\.?|structuredContent\.?|result\.?)")
_SENTENCE_END = ".!?:;\n"
#: Capitalised words that name no one: months and days.
_CALENDAR = frozenset(
    {
        "january", "february", "march", "april", "june", "july", "august", "september", "october",
        "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
        "sunday",
    }
)  # fmt: skip


def read_from(asked: Any) -> tuple[str, ...]:
    """The call's arguments that may say what it read (a URL, a host, a path): at most
    READ_FROM strings of READ_FROM_CHARS, kept with the result until its identity is needed."""
    if not isinstance(asked, dict):
        return ()
    found = (text[:READ_FROM_CHARS] for text in _values(asked) if "." in text or "/" in text)
    return tuple(itertools.islice(found, READ_FROM))


def identity(read: Iterable[str], fields: Iterable[tuple[str, str]]) -> frozenset[str]:
    """A result's identity: locators of what the call read (`read_from` of its arguments),
    and of the result's top-level source fields among `fields` ((path, value) pairs, as
    provenance reads them)."""
    found: dict[str, None] = {}
    for text in read:
        # What was read: a URL or a path. An address among the arguments is data the
        # call carries (a passenger's email), not where the result came from.
        found.update(dict.fromkeys(locators(text.casefold(), words=True, addresses=False)))
    for path, text in fields:
        key = _top_key(path)
        if key is None or key not in IDENTITY_KEYS:
            continue
        folded = text[:IDENTITY_CHARS].casefold()
        found.update(dict.fromkeys(locators(folded, words=True)))
        if key in _NAME_KEYS:
            # The display name ("Fjordlicht Studio <billing@…>"): its first few words. A bare
            # address has none; a sender who stuffs a display name with every name a task
            # might hold gets no more than NAME_WORDS of them.
            name = folded.partition("<")[0]
            if "@" not in name:
                words = _WORD.findall(name[:IDENTITY_CHARS])[:NAME_WORDS]
                found.update(dict.fromkeys(word for word in words if len(word) >= MIN_NAME))
        if len(found) >= MAX_IDENTITY:
            break
    return frozenset(list(found)[:MAX_IDENTITY])


def references(task: str) -> frozenset[str]:
    """What the task points at: its locators and its proper nouns, lower-cased."""
    task = task[:MAX_TASK_CHARS]
    found = set(locators(task.casefold(), words=False))
    for match in _WORD.finditer(task):
        word = match.group()
        if len(word) < MIN_NAME or not word[0].isupper() or _starts_sentence(task, match.start()):
            continue
        if (folded := word.casefold()) not in _CALENDAR:
            found.add(folded)
    return frozenset(found)


def points_at(identity_: frozenset[str], references_: frozenset[str]) -> bool:
    return not identity_.isdisjoint(references_)


def stays_within(folded: str, known: frozenset[str]) -> bool:
    """Whether every domain an argument leads to (a URL's, an address's) is one of `known`:
    the page the user named vouches for a form on its own site, not for the third-party
    "verification" URL its text sends the agent to."""
    if "." not in folded:
        return True
    return all(domain in known for domain in domains(folded))


def domains(folded: str) -> Iterator[str]:
    """Registrable domains of the URLs, addresses and host names in case-folded text."""
    for kind, value in _locate(folded):
        if kind != "path":
            yield from _domain(value.rpartition("@")[2], False)


def locators(folded: str, *, words: bool, addresses: bool = True) -> Iterator[str]:
    """Registrable domains, addresses and paths in case-folded text; with `words`, also the
    words of each domain's registrable label (`fjordlicht-studio` → fjordlicht, studio),
    which a proper noun of the task may name."""
    for kind, value in _locate(folded):
        if kind == "address":
            if addresses:
                yield value
                yield from _domain(value.rpartition("@")[2], words)
        elif kind == "host":
            yield from _domain(value, words)
        else:
            yield value


def _locate(folded: str) -> Iterator[tuple[str, str]]:
    """("address" | "host" | "path", value) for each whitespace-separated token that is one.

    Token by token with str methods, not regexes over the whole text: a pattern like
    `[\\w.+-]+@` retried at every position of 8 KiB of letters costs ~300 ms."""
    for raw in folded.split():
        token = raw.strip(_TOKEN_STRIP)
        if not 3 <= len(token) <= MAX_TOKEN:
            continue
        if "://" in token:
            rest = token.partition("://")[2]
            host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2].partition(":")[0]
            if _is_host(host):
                yield "host", host
        elif "@" in token:
            local, _, host = token.rpartition("@")
            if local and _is_host(host):
                yield "address", token
        elif token[0] in "/~":
            if token.startswith(("/", "~/")) and (token.count("/") >= 2 or "." in token):
                yield "path", token
        elif "." in token and _is_host(token):
            yield "host", token


def _is_host(host: str) -> bool:
    """`a.b.example`: two or more labels of letters, digits and hyphens, the last letters."""
    labels = host.split(".")
    return (
        len(labels) >= 2
        and len(host) <= 253
        and len(labels[-1]) >= 2
        and labels[-1].isalpha()
        and all(0 < len(label) <= 63 and label.replace("-", "").isalnum() for label in labels)
        and host.isascii()
    )


def _domain(host: str, words: bool) -> Iterator[str]:
    labels = host.strip(".").split(".")
    if len(labels) < 2:
        return
    # `bank.co.uk`-style public suffixes: a short label before a two-letter one.
    keep = 3 if len(labels) >= 3 and len(labels[-2]) <= 3 and len(labels[-1]) == 2 else 2
    yield ".".join(labels[-keep:])
    if words:
        yield from (w for w in _WORD.findall(labels[-keep]) if len(w) >= MIN_NAME)


def _values(value: dict[str, Any]) -> Iterator[str]:
    """The call's string arguments, breadth first, within IDENTITY_VALUES / IDENTITY_CHARS."""
    queue: list[Any] = [value]
    seen = 0
    left = IDENTITY_CHARS
    while queue and seen < IDENTITY_VALUES and left > 0:
        item = queue.pop()
        seen += 1
        if isinstance(item, str):
            text = item[:left]
            left -= len(text)
            yield text
        elif isinstance(item, dict):
            queue.extend(item.values())
        elif isinstance(item, list):
            queue.extend(item)


def _top_key(path: str) -> str | None:
    """The key of a top-level field of the result (`content[0].text.sender` → sender), or
    None for anything nested or inside a list."""
    rest = _ROOTS.sub("", path, count=1)
    if not rest or "." in rest or "[" in rest:
        return None
    return rest.casefold()


def _starts_sentence(text: str, start: int) -> bool:
    # A few characters back are enough to see `. ` or `! "`; never the whole prefix, which
    # would make a task of many capitalised words cost quadratic time.
    before = text[max(0, start - 8) : start].rstrip(" \t'\"(")
    if not before:
        return start <= 8
    return before[-1] in _SENTENCE_END
