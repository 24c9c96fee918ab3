"""Destinations in a call's arguments and in its task: what the reference scorer compares.

Email addresses, URLs (read as a browser reads them) and their hosts, IBANs (checksum
valid), wallets and chat handles, found in text in linear time (each pattern starts
with a look-behind, so a long run is never re-scanned from every offset), canonical, and
compared with what the stated task names: its words, its destinations, their domains,
and the hosts under a domain the task names (unless a shared platform's). Split from
`_engine.py` (the scorer), which reads these for argument_novelty and for money.
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bastion._domains import owns_subdomains
from bastion._iban import checksum_ok
from bastion._urlsyntax import SPECIAL_PREFIX, SPECIAL_SCHEMES, URL_IGNORED

#: Bytes of one argument, and of the task, read (see `_engine`'s budgets).
MAX_STRING_BYTES = 64 * 1024

# Each pattern starts with a look-behind so a match can only begin at the start of a
# run of its characters: without it a long run with no '@' or '://' is re-scanned from
# every offset, which is quadratic on a multi-megabyte argument.
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@((?:[a-z0-9-]+\.)+[a-z]{2,63})(?![\w-])", re.IGNORECASE | re.ASCII)
#: `//evil.example/x`: a scheme-relative URL (a browser and most HTTP clients resolve it as one).
_SCHEME_RELATIVE = re.compile(
    r"(?<![\w:/.\\-])//([a-z0-9-]+(?:\.[a-z0-9-]+)+)(?=[/?#:\s\"'<>]|$)", re.IGNORECASE | re.ASCII
)
# The authority runs on past a backslash: a browser ends it there (`\` is `/` in a web URL),
# but httpx and curl read `https://named.example\@evil.example/` as user info and connect to
# evil.example; `_destinations` yields both readings (an attacker's probe).
# For the special schemes a browser (WHATWG URL) skips any run of `/` and `\` after the
# colon, none included: `https:evil.example/q`, `https:/evil.example`, `https:\\evil.example`
# and `https:///evil.example` all reach evil.example (an attacker's probe scored them 0).
_URL_AUTHORITY = re.compile(
    rf"""(?<![a-z0-9+.-])(?:[a-z][a-z0-9+.-]*://|{SPECIAL_PREFIX})([^\s/?#"'<>]+)""",
    re.IGNORECASE | re.ASCII,
)
#: Without `//` only a host with a dot and a letter after it is one (`_urls_in`).
_DOTTED = re.compile(r"\.[a-z]", re.IGNORECASE | re.ASCII)
#: Where a URL may begin: `://`, or a special scheme's colon (`_URL_AUTHORITY`).
_SPECIAL_SCHEME = re.compile(rf"(?<![a-z0-9+.-]){SPECIAL_SCHEMES}:", re.IGNORECASE | re.ASCII)
# Groups of four with optional single space/hyphen separators, as IBANs are printed.
# Case-insensitive because a bank API may accept lower case; the mod-97 check below
# keeps random identifiers from matching.
_IBAN = re.compile(
    r"(?<![a-z0-9])[a-z]{2}[0-9]{2}(?:[ -]?[a-z0-9]{4}){2,7}(?:[ -]?[a-z0-9]{1,4})?(?![a-z0-9])",
    re.IGNORECASE | re.ASCII,
)
_WALLET = re.compile(r"(?<![a-z0-9])0x[0-9a-f]{40}(?![a-z0-9])", re.IGNORECASE | re.ASCII)
# A chat handle or channel only as a whole value (`@max.external`, `#general`): inside
# text, `@name` is a mention and `#name` a tag far more often than a destination.
_HANDLE = re.compile(r"[@#][a-z0-9][a-z0-9._-]{0,63}", re.IGNORECASE | re.ASCII)
_IBAN_SEPARATORS = re.compile(r"[ -]")
_WORD_PUNCTUATION = ".,;:!?()[]{}<>\"'`"
# ISO 13616 reads each letter as the number 10-35 (A-Z); digits stay as they are.
#: Kinds of destination that move money: a call holding one is never vouched for.
_MONEY = frozenset({"IBAN", "wallet"})
#: Longest value `_is_destination` reads.
_MAX_DESTINATION_CHARS = 2048
#: Destinations (addresses, URLs, IBANs, …, repeats counted) read in one call's arguments:
#: past them the arguments are too large to inspect. A mail to a few hundred people is far
#: below; 256 KiB of nothing but URLs is far above.
MAX_DESTINATIONS = 2000
#: Destinations read in one call's arguments, repeats counted.
MAX_MATCHES = 8000


@dataclass(frozen=True, slots=True)
class _Path:
    """Where a value sits in the arguments, rendered as `message.cc[1]` only when a reason shows it.

    Linked to its parent rather than built as a string for every value: that would copy
    the parent's path into each child, quadratic in depth, and a megabyte-long key would
    be copied once per value under it.
    """

    parent: _Path | None
    key: str | int

    def __str__(self) -> str:
        parts: list[str] = []
        node: _Path | None = self
        while node is not None:
            key = node.key
            if isinstance(key, int):
                parts.append(f"[{key}]")
            else:
                parts.append(key if node.parent is None else f".{key}")
            node = node.parent
        return "".join(reversed(parts))


def _utf8_size(text: str) -> int:
    # isascii() is O(1) on CPython's compact strings; only other text needs encoding.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _utf8_head(text: str, size: int) -> str:
    """The longest prefix of `text` that is at most `size` bytes of UTF-8."""
    if len(text) <= size and _utf8_size(text) <= size:
        return text
    # A character is at least one byte, so `size` characters hold the prefix; a character
    # cut in half at the end is dropped.
    return text[:size].encode("utf-8", "surrogatepass")[:size].decode("utf-8", "ignore")


def _may_hold_url(text: str) -> bool:
    return "://" in text or (":" in text and _SPECIAL_SCHEME.search(text) is not None)


def _as_requested(value: str) -> str:
    """`value` as a client would request it when it is one URL: a browser drops tabs and
    line breaks anywhere in a URL (`https://evil.exa\tmple/?e=a@b.example` goes to
    evil.example); any other value as it is."""
    if ("\t" in value or "\n" in value or "\r" in value) and len(value) <= _MAX_DESTINATION_CHARS:
        requested = value.strip().translate(URL_IGNORED)
        if " " not in requested and _url_at_start(requested):
            return requested
    return value


def urls_in(text: str) -> Iterator[re.Match[str]]:
    """The URLs in `text` (`_URL_AUTHORITY` matches; group 1 the authority). Without `//`
    after the scheme only a host with a dot and a letter after it counts: `HTTP:503`,
    `https:8443` and `ftp:OK` in prose are a status, a port and a word (a reviewer's probe:
    an incident note quoting `HTTP:503` became a block). Checked after the match, in the
    authority it read: a look-ahead read on to the end of a run like `https:@https:@…` from
    every scheme in it (quadratic: 9.8 s on 256 KiB)."""
    for match in _URL_AUTHORITY.finditer(text):
        if _is_url(match):
            yield match


def _url_at_start(value: str) -> bool:
    match = _URL_AUTHORITY.match(value)
    return match is not None and _is_url(match)


def _is_url(match: re.Match[str]) -> bool:
    return "//" in match.string[match.start() : match.start(1)] or _DOTTED.search(match.group(1)) is not None


def _readings(value: str) -> tuple[str, ...]:
    """`value` as written and, when it differs, as requested (`_as_requested`): a line break
    may part a URL from an IBAN after it, and both must be read; and percent-decoded when it
    holds a percent-encoded URL (`?to=https%3A%2F%2Fevil.example`: an open redirect's target)."""
    requested = _as_requested(value)
    readings: tuple[str, ...] = (value,) if requested is value else (requested, value)
    if has_encoded_url(value):
        readings += (unencoded(requested),)
    return readings


def has_encoded_url(text: str) -> bool:
    """Whether `text` holds a percent-encoded `://` (`_ENCODED_URL`); substring tests first,
    which rule out nearly every text at memchr speed."""
    return (
        "%" in text
        and ("3a" in text or "3A" in text or ":" in text)
        and ("2f" in text or "2F" in text)
        and _ENCODED_URL.search(text) is not None
    )


#: A percent-encoded `://` (or one half-encoded), once or more (`%253A`).
_ENCODED_URL = re.compile(r"(?:%(?:25)*3a|:)(?:%(?:25)*2f|/)(?:%(?:25)*2f|/)", re.IGNORECASE)
#: `%25` repeated (`%252525…40` is `@` to a server that decodes until it stops changing).
_PERCENT_RUNS = re.compile(r"%(?:25)+(?=[0-9a-f]{2})", re.IGNORECASE)


def collapse_percent_runs(text: str) -> str:
    """`text` with each run of `%25` before an escape collapsed (`%252540` → `%40`), in one pass."""
    return _PERCENT_RUNS.sub("%", text)


def unencoded(text: str) -> str:
    """`text` percent-decoded as a server that decodes until nothing changes reads it."""
    return urllib.parse.unquote(collapse_percent_runs(text))


def _destinations(text: str) -> Iterator[str]:
    """Destination-like tokens in `text`, canonical: lower case, IBANs upper case without spaces."""
    if _may_hold_url(text):
        for match in urls_in(text):
            authority = match.group(1)
            readings = (authority, authority.partition("\\")[0]) if "\\" in authority else (authority,)
            for host in dict.fromkeys(_host(reading) for reading in readings):
                if host:
                    yield host
        # The user info of `scheme://user@host` is part of the URL, not an email address.
        text = _URL_AUTHORITY.sub(" ", text)
    if "//" in text:
        for match in _SCHEME_RELATIVE.finditer(text):
            yield _canonical_host(match.group(1))
    if "@" in text:
        for match in _EMAIL.finditer(text):
            yield match.group(0).casefold()
    for match in _IBAN.finditer(text):
        iban = _valid_iban(match.group(0))
        if iban:
            yield iban
    if "0x" in text or "0X" in text:
        for match in _WALLET.finditer(text):
            yield match.group(0).casefold()


def _host(authority: str) -> str:
    """The host of a URL authority (`user@host:port`), case-folded, without a leading `www.`."""
    host = authority.rpartition("@")[2].partition("\\")[0]
    host = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.partition(":")[0]
    if "%" in host:
        # A browser percent-decodes a host (`evil%2Eexample` is evil.example) and refuses one
        # that then holds a slash: `https:%2F%2Fevil.example` in a query is an encoded URL
        # (`_readings` decodes it), not a host named `%2f%2fevil.example`.
        host = urllib.parse.unquote(host)
        if any(char in host for char in "/\\@?#% "):
            return ""
    return _canonical_host(host)


def _canonical_host(host: str) -> str:
    # `www.` is how people write the same site; treating it as a different destination
    # would flag every task that names a site without it.
    host = host.rstrip(".").lower()
    return host.removeprefix("www.")


def _valid_iban(candidate: str) -> str:
    """The compact IBAN that `candidate` starts with, or "".

    The pattern cannot tell a last group from a short word after the IBAN ("… 1332 to"),
    so trailing groups are dropped until the checksum holds.
    """
    groups = _IBAN_SEPARATORS.split(candidate.upper())
    while groups:
        compact = "".join(groups)
        if checksum_ok(compact):
            return compact
        groups.pop()
    return ""


def _known_destinations(task: str) -> frozenset[str]:
    """What the task names: its words (so a bare `acme.com` counts), its destinations, their domains.

    Only the first MAX_STRING_BYTES of the task are read: what a longer task names past
    that is not known, which can only make arguments look more novel, never less.
    """
    return _known_in(_utf8_head(task, MAX_STRING_BYTES))


def _known_and_owners(task: str) -> tuple[frozenset[str], frozenset[str]]:
    """`_known_destinations`, and the hosts among them whose subdomains are their owner's."""
    return _owners_in(_utf8_head(task, MAX_STRING_BYTES))


@functools.lru_cache(maxsize=16)
def _owners_in(task: str) -> tuple[frozenset[str], frozenset[str]]:
    known = _known_in(task)
    return known, frozenset(name for name in known if "@" not in name and "/" not in name and owns_subdomains(name))


@functools.lru_cache(maxsize=16)
def _known_in(task: str) -> frozenset[str]:
    """`_known_destinations` of a task's head, cached (a workflow's calls share their task).
    The key is at most MAX_STRING_BYTES; a task of that size made of short words holds
    ≈ 1 MB here, so 16 entries keep the worst case near 17 MB (measured, tracemalloc);
    `_owners_in`'s 16 may keep sets this cache has dropped, so at most twice that."""
    known = {_canonical_host(word) for token in task.split() for word in _task_words(token)}
    for destination in _destinations(task):
        known.add(_key(destination))
        if "@" in destination:
            known.add(destination.rpartition("@")[2])
    return frozenset(known)


#: Inside a task's word, what parts the names it holds: a link's brackets, a path's slash,
#: dashes that join clauses (`shop.example/orders`, `[the shop](shop.example)`, `shop.example—`).
_TASK_WORD_PARTS = re.compile(r"[/()\[\]\u2013\u2014]+")


def _task_words(token: str) -> Iterator[str]:
    """The names a whitespace-separated token of the task may hold, as a user writes them:
    each part, without punctuation or a possessive, and an internationalised host in both
    its spellings (`bücher.example`, `xn--bcher-kva.example`)."""
    for part in _TASK_WORD_PARTS.split(token) if _TASK_WORD_PARTS.search(token) else (token,):
        word = part.strip(_WORD_PUNCTUATION).removesuffix("'s").removesuffix("\u2019s").strip(_WORD_PUNCTUATION)
        if not word:
            continue
        yield word
        if "." in word and len(word) <= 253 and (not word.isascii() or "xn--" in word.casefold()):
            try:
                other = word.encode("idna").decode("ascii") if not word.isascii() else word.encode().decode("idna")
            except UnicodeError:
                continue
            yield other


def _found_destinations(arguments: Iterable[tuple[_Path, str]]) -> tuple[dict[str, _Path], str]:
    """Each distinct destination in the arguments, canonical, with the first argument holding
    it; and, when they hold more than MAX_DESTINATIONS distinct ones or MAX_MATCHES in all
    (each URL costs a parse, and 256 KiB of glued `a://b/` took 190 ms), why the rest was
    not read. Shortest arguments first: a `cc` must not wait behind a body padded with
    2,000 copies of the task's own URL (a reviewer's probe)."""
    found: dict[str, _Path] = {}
    seen = 0
    for path, value in sorted(arguments, key=lambda item: len(item[1])):
        for reading in _readings(value):
            for destination in _destinations(reading):
                found.setdefault(destination, path)
                seen += 1
                if len(found) > MAX_DESTINATIONS or seen > MAX_MATCHES:
                    return found, f"arguments too large to inspect (more than {MAX_DESTINATIONS} destinations)"
        if len(value) <= 66 and _HANDLE.fullmatch(handle := value.strip()):
            found.setdefault(handle.casefold(), path)
    return found, ""


def _novel_destinations(found: dict[str, _Path], task: str) -> list[tuple[str, _Path]]:
    """(destination, argument path) for each distinct destination the task does not name."""
    if not found:
        return []
    known, owners = _known_and_owners(task)
    # A host under one the task names (`lists.urbanbikes-journal.example` when it names
    # urbanbikes-journal.example) is that host's owner's — unless the named host is a
    # shared platform's or an IP address (`owns_subdomains`): a sibling never counts.
    return [
        (destination, path)
        for destination, path in found.items()
        if _key(destination) not in known and not (_kind(destination) == "host" and _under(destination, owners))
    ]


def _under(host: str, owners: frozenset[str]) -> bool:
    """Whether a domain above `host` is one of `owners`: a set lookup per label, so the cost
    is the host's labels, not the task's names times the arguments' hosts (an attacker's
    probe: 15,000 hosts against an 8 KiB task of names took 150 ms)."""
    if not owners:
        return False
    dot = host.find(".")
    while dot >= 0:
        if host[dot + 1 :] in owners:
            return True
        dot = host.find(".", dot + 1)
    return False


def _key(destination: str) -> str:
    """How a destination is compared with the task's: a host as it is (lower case, `ß` kept,
    as a browser keeps it), anything else case-folded."""
    return destination if _kind(destination) == "host" else destination.casefold()


def _is_destination(value: str) -> bool:
    """Whether `value` is, whole, an email address, a URL or a chat handle: what a task
    leaving the destination to the data vouches for (never an IBAN or a wallet: money)."""
    value = value.strip()
    if not value or len(value) > _MAX_DESTINATION_CHARS or any(char.isspace() for char in value):
        return False
    if _HANDLE.fullmatch(value) or _EMAIL.fullmatch(value):
        return True
    return _url_at_start(value)


def _kind(destination: str) -> str:
    """What kind of destination a canonical one from _destinations or _HANDLE is."""
    if destination[0] in "@#":
        return "chat handle"
    if "@" in destination:
        return "email address"
    if _WALLET.fullmatch(destination):
        return "wallet"
    if destination[:2].isalpha() and destination.isalnum() and destination.isupper():
        return "IBAN"
    return "host"


def _task_kinds(task: str) -> frozenset[str]:
    task = _utf8_head(task, MAX_STRING_BYTES)
    kinds = {_kind(destination) for destination in _destinations(task)}
    if any(_HANDLE.fullmatch(word.strip(_WORD_PUNCTUATION)) for word in task.split()):
        kinds.add("chat handle")
    return frozenset(kinds)
