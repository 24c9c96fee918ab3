"""Which results the stated task points at: the school's email, the page the user named.

Provenance (`_provenance.py`) says an argument holds data from an untrusted result. Most
of the time that is what an injected instruction looks like; but a user who says "email
Petra's assistant as Petra asked" or "post my question on https://forum.islandhop.example/t/2231"
asks the agent to act on data from one particular result — Petra's email, that forum
page. Telling the two apart needs two things this module computes:

- a result's **identity**: who or where it came from, as *groups*, each the keys that may
  meet the task and the destinations it vouches for. From the call that produced it, the
  locator arguments it read (`url`, `path`, …: a URL's host, a path); from the result
  itself, the first locator and the display name of each top-level field that names the
  source (`sender`, `from`, `author`, `url`, `path`, …). Nothing inside a list (a search's
  ten hits, a listing's files) and nothing from a result of several content blocks: they
  say nothing about *the* result's source, and an injected snippet must not borrow a
  neighbour's.
- the task's **references**: the locators it writes (URLs, hosts, addresses, paths) and its
  proper nouns (capitalised words of four or more letters that do not open a sentence or a
  list item and are not an order: `Fjordlicht`, `Petra`, `Aarhus`; "Pay", "- Forward",
  "Update" are not).

A result is *pointed at* when a group's keys meet the references, and then only the
destinations of the groups that met are vouched for: the page the user named vouches for
its own host, not for the `author` address an attacker left on it. What is compared is
strict: a whole registrable domain (`fjordlicht.example`; on shared hosting and webmail,
`alice.github.io` or the whole address, never `github.io` or `gmail.com`), a whole address,
a whole path, or a proper noun equal to a word of a display name or a domain label.

A result is also *visited* when its call read a URL and no argument of that call held
untrusted data (`identity(chosen=True)`): the agent went to that page on its own, from the
task or its own knowledge, not because a result sent it there. A form or an address that
such a page gives on its own site (the airline's check-in page naming its check-in form)
is the site's, as far as provenance can tell; one on any other site is not. Only the URL
the call asked for counts, never the `url` a result says it came from (a redirect, or an
attacker's page, may claim any).

`stays_within` then fails closed: an argument is vouched for only when every destination
in it is a vouched one, and anything that may lead somewhere it cannot read — a
scheme-relative or scheme-less URL on another host, a URL that is not a plain host name
(an IP address, a bare name, a non-ASCII look-alike), another scheme (`javascript:`), two
URLs in one token, a backslash, an over-long token — leads elsewhere.

Bounded: MAX_GROUPS groups per result, each from at most READ_FROM_CHARS / a field's
MAX_VALUE characters; text is read token by token with str methods (a `[\\w.+-]+@`
regex retried at every position of 8 KiB costs ~300 ms).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bastion._domains import registrable
from bastion._urlsyntax import URL_IGNORED
from bastion._verbs import ACTION_VERBS

#: Words of a name or a domain that many businesses share ("Studio", "Energy", "Roofing",
#: "Payments"): meeting a result by one of them alone is weak pointing (`by_name_only`).
GENERIC_WORDS = frozenset(
    {
        "studio", "studios", "energy", "energie", "power", "roofing", "building", "builders",
        "construction", "bau", "services", "service", "payments", "payment", "billing", "invoice",
        "invoices", "invoicing", "accounts", "account", "accounting", "finance", "financial",
        "group", "company", "holding", "holdings", "partners", "limited", "ltd", "gmbh", "inbox",
        "gmail", "email", "mail", "bank", "banking", "support", "team", "office", "shop", "store",
        "online", "digital", "solutions", "consulting", "design", "media", "international", "global",
        "systems", "tech", "insurance", "versicherung", "property", "properties", "management",
        "logistics", "supplies", "supply", "trading", "print", "printing", "druckerei", "school",
        "club", "clinic", "practice", "agency", "estate", "home", "homes", "water", "utilities",
        "electric", "electrical", "plumbing", "garage", "motors", "cars", "travel", "hotel",
        "hotels", "restaurant", "cafe", "bakery", "kita", "city", "council", "tax", "secure",
        "verify", "notice", "notices", "portal", "desk", "centre", "center", "direct", "express",
    }
)  # fmt: skip
#: Groups one result's identity keeps.
MAX_GROUPS = 16
#: Arguments of a call kept as what it read, and characters of each.
READ_FROM = 4
READ_FROM_CHARS = 512
#: Argument keys (case-insensitive; also any ending in url, uri, path or file) that say what a call read.
READ_KEYS = frozenset({"url", "uri", "link", "href", "path", "file", "filename", "page", "site", "host", "domain"})
#: Characters of the task read for its references.
MAX_TASK_CHARS = 8 * 1024
#: Words of a display name read ("Dr. Saskia Lenz-Hoffmann, Praxis Lenz").
NAME_WORDS = 6
#: Shortest word that counts as a name: shorter ones match by accident.
MIN_NAME = 4
#: Longest token read as a locator; a longer one in an argument leads elsewhere (fail closed).
MAX_TOKEN = 2048
#: Top-level result keys (case-insensitive) that say who or where a result came from.
IDENTITY_KEYS = frozenset(
    {
        "from", "sender", "author", "organizer", "organiser", "owner", "host", "site", "domain",
        "url", "uri", "link", "source", "path", "file", "filename", "reply_to", "replyto",
    }
)  # fmt: skip
#: Keys of display names among them: their words are names too, not only their locators.
_NAME_KEYS = frozenset({"from", "sender", "author", "organizer", "organiser", "owner"})
#: Punctuation around a word or a locator in prose ("(see https://x.example/a)," "<billing@x.example>").
PUNCTUATION = ".,;:!?()[]{}<>\"'`*"
#: How a result path starts before its own fields (an MCP text holding JSON, structured content).
_ROOTS = ("content[0].text.", "structuredContent.", "result.")
_SENTENCE_END = ".!?:;\n"
#: Marks of a list item: a capitalised word after them opens the item, like a sentence.
_BULLETS = "-*>#\u2022\u2013\u2014"  # hyphen, star, quote, heading, bullet, en and em dash
#: Abbreviated titles whose full stop ends no sentence.
_TITLES = frozenset({"dr", "mr", "mrs", "ms", "prof", "st", "herr", "frau", "mme", "sr", "sra"})
#: Capitalised words that name no one: months, days, greetings, and orders.
_NOT_NAMES = ACTION_VERBS | frozenset(
    {
        "january", "february", "march", "april", "june", "july", "august", "september", "october",
        "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
        "sunday", "please", "thanks", "hello", "dear", "then", "also", "today", "tomorrow",
    }
)  # fmt: skip
#: Sites where anyone gets a path of their own, and how many of its first segments name the
#: owner (`github.com/<owner>`, `docs.google.com/document/d/<id>`): there the site compared
#: is the domain with those segments, so a page of one owner vouches for no other owner's
#: (an attacker's probe posted a link to its own repository on an issue the task named).
PATH_TENANTS = {
    "github.com": 1, "gitlab.com": 1, "bitbucket.org": 1, "codeberg.org": 1, "huggingface.co": 1,
    "medium.com": 1, "reddit.com": 2, "x.com": 1, "twitter.com": 1, "facebook.com": 1,
    "instagram.com": 1, "linkedin.com": 2, "youtube.com": 1, "pastebin.com": 1, "notion.so": 1,
    "dropbox.com": 2, "docs.google.com": 3, "drive.google.com": 3, "sites.google.com": 2,
    "script.google.com": 3, "forms.gle": 1, "bit.ly": 1, "t.me": 1, "discord.gg": 1, "linktr.ee": 1,
    "discord.com": 3, "discordapp.com": 3, "hooks.slack.com": 3, "hooks.zapier.com": 3,
    "storage.googleapis.com": 1, "raw.githubusercontent.com": 1, "gist.githubusercontent.com": 1,
    "paypal.me": 1, "webhook.site": 1, "s3.amazonaws.com": 1, "npmjs.com": 2, "pypi.org": 2,
    "jobs.lever.co": 1,
}  # fmt: skip
#: Per platform, leading segments that say what kind of page follows rather than whose, with
#: how many owner segments follow them (a reviewer's probe: `api.github.com/repos/<owner>`
#: read as the owner `repos`, shared by every repository). Matched on the host, first match
#: wins; on other paths the platform's PATH_TENANTS depth applies as written.
#: The prefix stays in the site compared when it starts a namespace of its own (a Google
#: Form's id is no document's), and is dropped when the owner is the same one the plain path
#: names (`api.github.com/repos/acme` is `github.com/acme`).
_PREFIXES: dict[str, tuple[tuple[tuple[str, ...], int, bool], ...]] = {
    "api.github.com": ((("repos",), 1, False), (("users",), 1, False), (("orgs",), 1, False)),
    "github.com": ((("orgs",), 1, False),),
    "gitlab.com": ((("api", "v4", "projects"), 1, True),),
    "huggingface.co": ((("datasets",), 1, False), (("spaces",), 1, False), (("models",), 1, False)),
    "docs.google.com": ((("forms", "d", "e"), 1, True),),
    "dropbox.com": ((("scl", "fi"), 1, True),),
}
#: `docs.google.com/document/u/0/d/<id>`: the account switcher's two segments are read past.
_ACCOUNT_SWITCH = "u"
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:|//")
#: Dot segments, plain or percent-encoded, and encoded slashes: a path holding one does not
#: lead where its first segments say.
_DOT_SEGMENTS = ("/..", "../", "%2e", "%2f", "%5c")
#: Mail domains anyone can have an address at: an address there is compared whole.
WEBMAIL = frozenset(
    {
        "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com", "yahoo.com",
        "icloud.com", "me.com", "aol.com", "proton.me", "protonmail.com", "gmx.de", "gmx.net", "web.de",
        "mail.ru", "yandex.ru", "zoho.com", "fastmail.com", "mailbox.org", "t-online.de", "orange.fr",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Identity:
    """Who or where a result came from: groups of (keys that may meet the task, destinations it vouches for)."""

    groups: tuple[tuple[frozenset[str], frozenset[str]], ...] = ()
    #: Sites of the URLs the call read when no untrusted data chose them (`visited`).
    visited: frozenset[str] = frozenset()
    #: Keys that are words of a sender's display name, which its sender chooses freely.
    names: frozenset[str] = frozenset()

    def vouched(self, references_: frozenset[str]) -> frozenset[str] | None:
        """The destinations vouched for by the groups the task points at; None when it points at none."""
        met = [vouches for keys, vouches in self.groups if not keys.isdisjoint(references_)]
        return frozenset(itertools.chain.from_iterable(met)) if met else None

    def by_name_only(self, references_: frozenset[str]) -> bool:
        """Whether the task meets this result only through display-name words or words any
        business may put in its domain: "Fjordlicht Studio <fjordlicht.billing@gmail.com>" is
        anyone's to write, and so is `studio-payments.example` for a task naming "Fjordlicht
        Studio" (an attacker's probe) (`byname:`)."""
        weak = self.names | GENERIC_WORDS
        return not any(not (keys - weak).isdisjoint(references_) for keys, _ in self.groups)


def read_from(asked: Any) -> tuple[str, ...]:
    """What a call read, from its arguments: the top-level string values of READ_KEYS (or
    keys ending in url, uri, path or file), at most READ_FROM of READ_FROM_CHARS each."""
    if not isinstance(asked, dict):
        return ()
    found = []
    for key, value in asked.items():
        if isinstance(value, str) and isinstance(key, str):
            folded = key.casefold()
            if folded in READ_KEYS or folded.endswith(("url", "uri", "path", "file")):
                found.append(value[:READ_FROM_CHARS])
                if len(found) >= READ_FROM:
                    break
    return tuple(found)


def identity(read: Iterable[str], fields: Iterable[tuple[str, str]], *, chosen: bool = False) -> Identity:
    """A result's identity from what its call read (`read_from`) and its source fields
    ((path, value) pairs as provenance reads them; only top-level IDENTITY_KEYS count).
    `chosen`: no untrusted data was in the call's arguments, so the sites it read are ones
    the agent went to on its own (`Identity.visited`)."""
    groups: list[tuple[frozenset[str], frozenset[str]]] = []
    visited: set[str] = set()
    names: set[str] = set()
    for text in read:
        # What was read: a URL, host or path. An address among the arguments is data the
        # call carries (a passenger's email), not where the result came from.
        located = _first(text.casefold(), addresses=False)
        if located is not None:
            groups.append(located)
            if chosen and "://" in text:
                visited.update(located[1])
    for path, text in fields:
        if len(groups) >= MAX_GROUPS:
            break
        key = top_key(path)
        if key is None or key not in IDENTITY_KEYS:
            continue
        folded = text.casefold()
        keys, vouches = _first(folded, addresses=True) or (frozenset(), frozenset())
        if key in _NAME_KEYS:
            # The display name ("Fjordlicht Studio <billing@…>"): its first words. A sender
            # who stuffs it with every name a task might hold gets no more than NAME_WORDS.
            name = folded.partition("<")[0]
            if "@" not in name:
                words = [word for word in _words(name)[:NAME_WORDS] if len(word) >= MIN_NAME]
                # A word both the name and the address give ("fjordlicht" of fjordlicht.example) is the address's.
                names.update(word for word in words if word not in keys)
                keys = keys | frozenset(words)
        if keys:
            groups.append((keys, vouches))
    return Identity(tuple(groups[:MAX_GROUPS]), frozenset(visited), frozenset(names))


def references(task: str) -> frozenset[str]:
    """What the task points at: its locators and its proper nouns, lower-cased."""
    task = task[:MAX_TASK_CHARS]
    found: set[str] = set()
    for kind, value in _locate(task.casefold()):
        found.update(_keys(kind, value, words=False))
    position = 0
    run: list[str] = []  # consecutive capitalised words: "Fennick Roofing" is fennickroofing.example too
    for word in task.split():
        start = task.find(word, position)
        position = start + len(word)
        stripped = word.strip(PUNCTUATION + _BULLETS).removesuffix("'s").removesuffix("\u2019s")
        if not stripped[:1].isupper() or _opens(task, start):
            _add_joined(found, run)
            # A capitalised word opening a sentence is no name alone ("Pay …"), but may start one
            # ("Fennick Roofing emailed …").
            opener = stripped.casefold()
            starts = stripped[:1].isupper() and stripped == word and opener not in ACTION_VERBS | _NOT_NAMES
            run = [opener] if starts else []
            continue
        if stripped.casefold() in _NOT_NAMES:  # "Then, Email Lars": an order, no part of a name
            _add_joined(found, run)
            run = []
        else:
            run.append(stripped.casefold())
        for name in stripped.split("-"):  # "Lenz-Hoffmann", "Split-Hvar"
            folded = name.casefold()
            if len(name) >= MIN_NAME and name.isalpha() and name[0].isupper() and folded not in _NOT_NAMES:
                found.add(folded)
        if word[-1:] in PUNCTUATION or stripped != word:
            _add_joined(found, run)  # a comma or a possessive ends the name
            run = []
    _add_joined(found, run)
    return frozenset(found)


def _add_joined(found: set[str], run: list[str]) -> None:
    """Two or three capitalised words in a row, joined as a domain label would join them."""
    if 2 <= len(run) <= 3:
        joined = "".join(run).replace("-", "")
        if joined.isalpha() and joined.isascii():
            found.add(joined)


def stays_within(folded: str, allowed: frozenset[str]) -> bool:
    """Whether every destination a case-folded argument may lead to is `allowed`
    (registrable domains and whole addresses); fails closed on what it cannot read."""
    if not any(mark in folded for mark in "./@:\\"):
        return True  # an IBAN, a name, a sentence without a locator
    # A browser drops tabs and line breaks inside a URL: `victim.com<tab>pany` is
    # victim.company. Arguments arrive normalised (whitespace runs made one space), so a
    # value that starts as a URL is read with its spaces dropped too.
    stripped = folded.strip()
    joined = stripped.translate(URL_IGNORED)
    if _SCHEME.match(joined):
        joined = joined.replace(" ", "")
    if joined != stripped and " " not in joined and not stays_within(joined, allowed):
        return False
    for raw in folded.split():
        token = raw.strip(PUNCTUATION)
        if "\\" in token:
            # A browser reads `\` as `/`, httpx and curl as part of the user info: the two
            # lead to different hosts (`forum.example\@evil.example`), so neither is vouched for.
            return False
        if len(token) > MAX_TOKEN or any(mark in token for mark in _DOT_SEGMENTS):
            # `github.com/acme/../evil/x` leads to evil's path whatever its first segment says.
            return False
        if "://" in token or token.startswith("//"):
            if token.count("//") > 1 or not _allowed_host(_url_host(token), allowed, _url_path(token)):
                return False
        elif "@" in token:
            local, _, host = token.rpartition("@")
            if not local or not (token in allowed or (host not in WEBMAIL and _allowed_host(host, allowed))):
                return False
        elif ":" in token and token.partition(":")[0].isalpha() and len(token.partition(":")[0]) > 1:
            return False  # another scheme: javascript:, data:, mailto: written without an address
        elif "." in token and not token.startswith(("/", "~")):
            host, _, path = token.partition("/")
            host = host.split("?", 1)[0]
            if (_is_host(host) or path) and not _allowed_host(host, allowed, path):
                return False
    return True


def _allowed_host(host: str, allowed: frozenset[str], path: str = "") -> bool:
    return _is_host(host) and (site := _site(host, path)) != "" and site in allowed


def _url_host(token: str) -> str:
    rest = token.partition("//")[2]
    for end in "/?#":
        rest = rest.split(end, 1)[0]
    return rest.rpartition("@")[2].partition(":")[0].rstrip(".")


def _url_path(token: str) -> str:
    """The path of a URL token, without its query or fragment."""
    path = token.partition("//")[2].partition("/")[2]
    for end in "?#":
        path = path.split(end, 1)[0]
    return path


def _site(host: str, path: str = "") -> str:
    """Where a locator leads, as destinations are compared: the host's registrable domain,
    with the owner's first path segments on a site where anyone gets a path (PATH_TENANTS;
    a platform's kind-of-page prefixes read past, `_PREFIXES`); "" (nowhere anything is
    allowed) when such a path names no owner (`drive.google.com/open?id=…`, the root)."""
    host = host.removeprefix("www.")
    domain = registrable(host)
    depth = PATH_TENANTS.get(domain)
    if depth is None:
        return domain
    segments = [segment for segment in path.split("?", 1)[0].split("#", 1)[0].split("/") if segment]
    if domain in ("docs.google.com", "drive.google.com") and _ACCOUNT_SWITCH in segments[:-1]:
        at = segments.index(_ACCOUNT_SWITCH)
        if segments[at + 1].isdigit():
            del segments[at : at + 2]
    for prefix, owners, keep in _PREFIXES.get(host, _PREFIXES.get(domain, ())):
        if tuple(segments[: len(prefix)]) == prefix:
            kept = segments[len(prefix) : len(prefix) + owners]
            return "/".join((domain, *(prefix if keep else ()), *kept)) if len(kept) == owners else ""
    if len(segments) < depth:
        return ""
    return "/".join((domain, *segments[:depth]))


def _first(folded: str, *, addresses: bool) -> tuple[frozenset[str], frozenset[str]] | None:
    """(keys, vouched destinations) of the first locator in `folded`, or None."""
    for kind, value in _locate(folded):
        if kind == "address" and not addresses:
            continue
        keys = frozenset(_keys(kind, value, words=True))
        if kind == "path":
            return keys, frozenset()
        if kind == "address":
            host = value.rpartition("@")[2]
            site = "" if host in WEBMAIL else _site(host)  # "": the address alone
            return keys, frozenset({value, site} if site else {value})
        return keys, frozenset({value})
    return None


def _keys(kind: str, value: str, *, words: bool) -> Iterator[str]:
    """The strings a locator may be met by: the address, its registrable domain (never a
    webmail one), and with `words` the words of the domain's own label."""
    if kind == "path":
        yield value
        return
    site = value
    if kind == "address":
        yield value
        host = value.rpartition("@")[2]
        if host in WEBMAIL:
            return
        site = _site(host)
        if not site:  # an address on a platform where anyone gets a path: the address alone
            return
    yield site
    if words and "/" not in site:  # a site's own name; not the platform's, on an owner's path
        yield from (word for word in _words(site.split(".")[0]) if len(word) >= MIN_NAME)


def _locate(folded: str) -> Iterator[tuple[str, str]]:
    """("address" | "host" | "path", value) for each whitespace-separated token that is one."""
    for raw in folded.split():
        token = raw.strip(PUNCTUATION)
        if not 3 <= len(token) <= MAX_TOKEN:
            continue
        if "://" in token:
            host = _url_host(token)
            if _is_host(host) and (site := _site(host, _url_path(token))):
                yield "host", site
        elif "@" in token:
            local, _, host = token.rpartition("@")
            if local and _is_host(host):
                yield "address", token
        elif token[0] in "/~":
            if token.startswith(("/", "~/")) and (token.count("/") >= 2 or "." in token):
                yield "path", token
        elif "." in token and _is_host(token) and (site := _site(token)):
            yield "host", site


def _is_host(host: str) -> bool:
    """`a.b.example`: two or more ASCII labels of letters, digits and hyphens, the last letters."""
    labels = host.split(".")
    return (
        len(labels) >= 2
        and len(host) <= 253
        and host.isascii()
        and len(labels[-1]) >= 2
        and labels[-1].isalpha()
        and all(0 < len(label) <= 63 and label.replace("-", "").isalnum() for label in labels)
    )


def _words(text: str) -> list[str]:
    """Runs of letters (`fjordlicht-studio` → fjordlicht, studio)."""
    out: list[str] = []
    current: list[str] = []
    for char in text:
        if char.isalpha():
            current.append(char)
        elif current:
            out.append("".join(current))
            current = []
    if current:
        out.append("".join(current))
    return out


def top_key(path: str) -> str | None:
    """The key of a top-level field of the result (`content[0].text.sender` → sender), or
    None for anything nested, inside a list, or in another content block than the first."""
    for root in _ROOTS:
        if path.startswith(root):
            rest = path[len(root) :]
            break
    else:
        rest = path
    if not rest or "." in rest or "[" in rest:
        return None
    return rest.casefold()


def _opens(text: str, start: int) -> bool:
    """Whether the word at `start` opens a sentence or a list item ("- Forward", "2) Update")."""
    # A few characters back are enough; never the whole prefix, which would make a task of
    # many capitalised words cost quadratic time.
    before = text[max(0, start - 8) : start].rstrip(" \t'\"(" + _BULLETS)
    if before.endswith(".") and before[:-1].rpartition(" ")[2].casefold().lstrip("(") in _TITLES:
        return False  # "Dr. Saskia": a title's full stop ends no sentence
    if not before or before[-1] in _SENTENCE_END:
        # Nothing but blanks and bullets within reach: read as an opening (no name), the
        # side that vouches for less.
        return True
    # "1) Update", "2. Pay": numbering opens an item too.
    return before[-1] == ")" and before[:-1][-1:].isdigit()
