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
_URL = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s?#:@]+)")
_EMAIL = re.compile(r"[\w.+-]+@([a-z0-9-]+(?:\.[a-z0-9-]+)+)")
_HOST = re.compile(r"(?<![\w@./-])((?:[a-z0-9-]+\.)+[a-z]{2,})(?![\w@-])")
_PATH = re.compile(r"(?<![\w:/.])(~?/[\w.@-]+(?:/[\w.@-]+)*)")
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


def identity(asked: Any, fields: Iterable[tuple[str, str]]) -> frozenset[str]:
    """A result's identity: locators of the call's arguments `asked`, and of the result's
    top-level source fields among `fields` ((path, value) pairs, as provenance reads them)."""
    found: dict[str, None] = {}
    if isinstance(asked, dict):
        for text in _values(asked):
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
            # The display name ("Fjordlicht Studio <billing@…>"): its words, not its address's.
            name = folded.partition("<")[0]
            found.update(dict.fromkeys(w for w in _WORD.findall(name) if len(w) >= MIN_NAME and "@" not in name))
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
    for pattern in (_EMAIL, _URL, _HOST):
        for match in pattern.finditer(folded):
            yield from _domain(match.group(1), False)


def locators(folded: str, *, words: bool, addresses: bool = True) -> Iterator[str]:
    """Registrable domains, addresses and paths in case-folded text; with `words`, also the
    words of each domain's registrable label (`fjordlicht-studio` → fjordlicht, studio),
    which a proper noun of the task may name."""
    if addresses:
        for match in _EMAIL.finditer(folded):
            yield match.group().strip(".")
            yield from _domain(match.group(1), words)
    for match in _URL.finditer(folded):
        yield from _domain(match.group(1), words)
    if addresses or "@" not in folded:
        for match in _HOST.finditer(folded):
            yield from _domain(match.group(1), words)
    for match in _PATH.finditer(folded):
        path = match.group(1).rstrip(".")
        if path.count("/") >= 2 or "." in path:
            yield path


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
    before = text[:start].rstrip(" \t'\"(")
    return not before or before[-1] in _SENTENCE_END
