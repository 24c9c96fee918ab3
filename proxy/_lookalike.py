"""Look-alike domains: `lumen-foto-bookings.example` beside `lumenfoto.example`.

A workflow that read mail from `billing@meridian-print.example` and then pays an invoice
from `billing@meridian-prints.example`, or posts a link to `kittiwake-payroll-verify.example`
after reading `hr@kittiwake-payroll.example`, is acting on a domain made to be taken for
one it has seen. Copy detection cannot tell: the data is copied from a result either way.
What tells is the pair, and both halves are in the workflow.

Two registrable domains (`bastion._domains.registrable`) look alike when they differ and
their first labels, compared as *skeletons* (case-folded, hyphens dropped, the digits and
letter pairs that pass for letters folded: `0`→`o`, `1`→`l`, `rn`→`m`, `vv`→`w`), and each
at least MIN_SKELETON characters:

- are the same (`harbourside-vets` / `harboursidevets`, `paypa1` / `paypal`, the same name
  under another suffix);
- differ by one edit, both at least MIN_EDITED characters (`meridian-prints` /
  `meridian-print`, `holtkanp` / `holtkamp`);
- or the suspect is the other with hyphenated words added before or after
  (`lumen-foto-bookings` / `lumenfoto`, `linguabridge-projects` / `linguabridge`; not the
  other way round: the brand's own domain is no look-alike of its imitation); without the
  hyphen a longer name is another name (`googleusercontent`, `mailchimp`).

Read fail-safe, not fail-closed: this only *adds* a label (`lookalike:`); a pair it misses
is judged by the other signals as before.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bastion._confusables import LATIN_LOOKALIKES
from bastion._domains import registrable
from bastion._urlsyntax import SPECIAL_PREFIX

from ._pointers import PUNCTUATION

#: Shortest skeleton compared: shorter names collide by accident (`mail`, `shop`).
MIN_SKELETON = 5
#: Shortest skeletons compared at one edit apart.
MIN_EDITED = 6
#: Longest label (DNS's bound) and most hyphenated words of a name compared.
MAX_LABEL = 63
MAX_WORDS = 8
#: Longest host read.
MAX_HOST = 253
#: Digits drawn as letters, hyphens dropped, and Cyrillic and Greek letters drawn as Latin
#: ones (`merid\u0456an`, a Cyrillic i; bastion/_confusables.py).
_CONFUSABLE = str.maketrans({"0": "o", "1": "l", "3": "e", "5": "s", "7": "t", "-": None, **LATIN_LOOKALIKES})
#: Last labels that name a file, not a site (`report.pdf`, `notes.txt`).
_FILE_SUFFIXES = frozenset(
    {
        "pdf", "doc", "docx", "xls", "xlsx", "csv", "txt", "png", "jpg", "jpeg", "gif", "svg", "zip",
        "json", "yaml", "yml", "md", "html", "htm", "py", "js", "ts", "ppt", "pptx", "mp3", "mp4",
        "wav", "odt", "ods", "odp", "eml", "ics", "xml", "tar", "gz", "tgz", "rtf", "log", "bak",
    }
)  # fmt: skip
_HOST_PUNCTUATION = frozenset("-.")


@dataclass(frozen=True, slots=True)
class Domain:
    """A registrable domain and what it is compared by."""

    name: str
    skeleton: str
    #: Skeletons of its first label's hyphenated words.
    words: tuple[str, ...]


@functools.lru_cache(maxsize=4096)  # pure; a workflow meets the same few domains again and again
def domain(registered: str) -> Domain | None:
    """`registered` (a registrable domain) as compared; None when its name is too short to compare."""
    label = registered.partition(".")[0]
    if label.startswith("xn--"):  # an internationalised name as DNS carries it
        try:
            label = label.encode("ascii").decode("idna")
        except UnicodeError:
            return None
    words = tuple(word.translate(_CONFUSABLE) for word in label.split("-") if word)
    skeleton = _fold("".join(words))
    # A DNS label holds at most 63 characters; more words than MAX_WORDS are no brand's
    # name, and comparing them is quadratic (a reviewer's probe: 0.38 s per call).
    if not MIN_SKELETON <= len(skeleton) <= MAX_LABEL or len(words) > MAX_WORDS:
        return None
    return Domain(registered, skeleton, tuple(_fold(word) for word in words))


def _fold(text: str) -> str:
    return text.replace("rn", "m").replace("vv", "w")


def looks_like(suspect: Domain, known: Domain) -> bool:
    """Whether `suspect` is a different domain made to be taken for `known` (module docstring).

    Symmetric but for added words: `lumen-foto-bookings` is made to look like `lumenfoto`,
    not the other way round, so a workflow that saw both may still write to the brand's own
    domain. Which of two names one edit apart is the real one cannot be told: both are."""
    if suspect.name == known.name:
        return False
    if suspect.skeleton == known.skeleton:
        return True
    a, b = suspect.skeleton, known.skeleton
    if abs(len(a) - len(b)) <= 1 and min(len(a), len(b)) >= MIN_EDITED and _one_edit(a, b):
        return True
    return len(a) > len(b) and _extends(suspect.words, b)


def _extends(words: tuple[str, ...], skeleton: str) -> bool:
    """Whether a proper run of `words` from either end spells `skeleton`."""
    for count in range(1, len(words)):
        if "".join(words[:count]) == skeleton or "".join(words[-count:]) == skeleton:
            return True
    return False


def _one_edit(a: str, b: str) -> bool:
    """One insertion, deletion, substitution or swap of neighbours apart (a != b)."""
    if len(a) > len(b):
        a, b = b, a
    start = 0
    while start < len(a) and a[start] == b[start]:
        start += 1
    if len(a) == len(b):
        if a[start + 1 :] == b[start + 1 :]:
            return True  # substitution
        return a[start : start + 2] == b[start : start + 2][::-1] and a[start + 2 :] == b[start + 2 :]
    return a[start:] == b[start + 1 :]  # b has one more character


def domains_in(norm: str) -> Iterator[str]:
    """Registrable domains of the addresses, URLs and bare host names in normalised text."""
    if "." not in norm:
        return
    # Recipients are listed with commas and semicolons as often as with spaces.
    for word in norm.replace(",", " ").replace(";", " ").split(" "):
        if "." not in word:
            continue
        word = word.strip(PUNCTUATION)
        if "." not in word:  # a sentence's last word
            continue
        for host in _hosts(word):
            host = host.strip(".")
            if _is_host(host):
                yield registrable(host)


#: A special scheme and any run of slashes and backslashes after it (WHATWG URL).
_SPECIAL_SCHEME = re.compile(SPECIAL_PREFIX, re.IGNORECASE)


def _hosts(word: str) -> tuple[str, ...]:
    """The hosts a word may lead to: a URL's (past any user info, `https://named.example@evil.example`,
    and before a backslash too, which browsers read as a slash and httpx as user info), an
    address's domain, or the word itself as a host name."""
    if "://" not in word and (special := _SPECIAL_SCHEME.match(word)) is not None:
        word = "https://" + word[special.end() :]  # `https:evil.example`, `https:\\evil.example`: a browser's reading
    if "://" in word:
        authority = word.partition("://")[2]
        for stop in "/?#":
            authority = authority.partition(stop)[0]
        after = authority.rpartition("@")[2].partition(":")[0]
        before = authority.partition("\\")[0].rpartition("@")[2].partition(":")[0]
        return (after,) if after == before else (after, before)
    host = word.rpartition("@")[2] if "@" in word else word
    for stop in "/?#:\\@":
        host = host.partition(stop)[0]
    return (host,)


def _is_host(host: str) -> bool:
    # Letters of any script: an internationalised name is a host to its reader too.
    if not 3 < len(host) <= MAX_HOST or not all(c.isalnum() or c in _HOST_PUNCTUATION for c in host):
        return False
    labels = host.split(".")
    last = labels[-1]
    return len(labels) >= 2 and all(labels) and last.isalpha() and len(last) >= 2 and last not in _FILE_SUFFIXES


#: Domains one workflow remembers (the newest): each costs one fingerprint of its budget.
MAX_SEEN = 64
#: Domains read from one result, and from one call's arguments.
MAX_PER_VALUE = 16


class SeenDomains:
    """The registrable domains a workflow's results showed, newest MAX_SEEN, each with
    when it was first seen, and the task's; `alike` names the one a domain is made to be
    taken for.

    Only a domain seen no earlier than the one it resembles is labelled: an imitation
    arrives after the real name has been met (or with it, in one result), and a page that
    merely mentions an imitation must not turn mail to the real one into a block (a
    reviewer's probe planted `meridian-prints` after mail from `meridian-print`)."""

    __slots__ = ("_results", "_seen", "_task", "_task_names")

    def __init__(self) -> None:
        #: name → (compared as, the result it was first seen in).
        self._seen: dict[str, tuple[Domain | None, int]] = {}
        self._results = 0
        self._task: tuple[Domain, ...] = ()
        self._task_names: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def empty(self) -> bool:
        """Nothing to compare with: no domain seen, none in the task."""
        return not self._seen and not self._task

    def add(self, names: Iterable[str]) -> int:
        """Remember `names` (of one result) as the newest; the change in how many are held."""
        before = len(self._seen)
        self._results += 1
        for name in names:
            held = self._seen.pop(name, None)
            self._seen[name] = held if held is not None else (domain(name), self._results)
            if len(self._seen) > MAX_SEEN:
                del self._seen[next(iter(self._seen))]
        return len(self._seen) - before

    def clear(self) -> int:
        """Forget every seen domain (not the task's); how many went."""
        count = len(self._seen)
        self._seen.clear()
        return count

    def set_task(self, norm: str) -> None:
        names = first_domains(norm)  # in the task's order: labels must not depend on hashing
        self._task_names = frozenset(names)
        self._task = tuple(found for name in names if (found := domain(name)) is not None)

    def named_by_task(self, name: str) -> bool:
        return name in self._task_names

    def alike(self, name: str) -> str | None:
        """The task domain, or the domain seen no later than `name`, that `name` looks like;
        None when none, or when the task names `name`."""
        if name in self._task_names or (suspect := domain(name)) is None:
            return None
        for told in self._task:
            if looks_like(suspect, told):
                return told.name
        _, first = self._seen.get(name, (None, self._results + 1))
        for known, seen in self._seen.values():
            if known is not None and seen <= first and looks_like(suspect, known):
                return known.name
        return None


def first_domains(norm: str) -> list[str]:
    """The first MAX_PER_VALUE distinct domains of normalised text (`domains_in`)."""
    found: list[str] = []
    for name in domains_in(norm):
        if name not in found:
            found.append(name)
            if len(found) >= MAX_PER_VALUE:
                break
    return found
