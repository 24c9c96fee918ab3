"""How text is read for fingerprints (`_provenance.py`): normalised as an agent would read
it, cut into identifier tokens and shingles, and told apart as destinations or prose."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from bastion._iban import MIN_LENGTH as MIN_IBAN
from bastion._iban import Checks, spelled

from ._pointers import PUNCTUATION

#: Characters per shingle: long enough that common words and phrases rarely make one.
SHINGLE = 16
#: Shortest value matched exactly (normalised): shorter is "yes", "inbox"…
MIN_VALUE = 6

#: Groups of a number printed with spaces (an IBAN has at most 9).
_MAX_GROUPS = 12
_MARKS = "0123456789@/"
_DIGIT = re.compile(r"[0-9]")
#: What separates cells glued into one word: CSV's commas, semicolons and quotes, pipes,
#: `key:value` and `key=value`, brackets, bullets and dashes. Not `.` (decimals, hosts) nor
#: `/` (dates, paths), nor `-` (a number's own groups).
_CELL = re.compile(r"""[,;:=|"'()\[\]{}<>\u2022\u2013\u2014]""")


def _folding() -> dict[int, str | None]:
    """`normalise`'s table, in one pass over the code points (≈ 0.2 s, once per process)."""
    table: dict[int, str | None] = {}
    for code in range(0x80, 0x110000):
        category = unicodedata.category(chr(code))
        if category == "Cf":
            table[code] = None
        elif category == "Nd":
            # Digits of every script as ASCII ones: NFKC leaves Arabic-Indic digits as they
            # are, and an agent copying them writes 0-9.
            table[code] = str(unicodedata.decimal(chr(code)))
    # Marks and fillers that show nothing: a grapheme joiner, variation selectors, Mongolian
    # free variation selectors, Hangul fillers, Khmer inherent vowels.
    for code in (0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0, *range(0x180B, 0x1810)):
        table[code] = None
    table.update(dict.fromkeys([*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]))
    # Slashes NFKC keeps apart, which a reader takes for `/` and an agent writes as one: a
    # path spelled with them (U+2044 between "admin" and "hr") must not pass as another value.
    table.update(dict.fromkeys(_SLASHES, "/"))
    return table


#: Fraction slash, division slash, big solidus, the box-drawing diagonal, mathematical rising diagonal.
_SLASHES = (0x2044, 0x2215, 0x29F8, 0x2571, 0x27CB)


#: Format characters and invisible marks dropped, digits of every script made ASCII.
_INVISIBLE = _folding()


#: Keys of text an author writes freely (an email's subject, a post's title): a destination
#: alone there is the author's text, not a field the tool defines.
_PROSE_KEYS = frozenset(
    {"subject", "body", "text", "message", "title", "description", "comment", "comments", "note", "notes"}
    | {"snippet", "summary", "memo", "remarks", "caption", "reason", "details", "bio"}
)
_PARTS = re.compile(r"[\s:;,]+")
#: A phone number as `exact_key` prints it: 7 to 15 digits.
_PHONE = re.compile(r"[0-9]{7,15}")
#: An IBAN as normalised (`exact_key`): country, check digits, 10-30 letters and digits.
_IBAN = re.compile(r"[a-z]{2}[0-9]{2}[a-z0-9]{10,30}")


def is_prose_key(path: str) -> bool:
    """Whether `path` ends in a prose key, or in an item of a list under one (`subject[0]`)."""
    return _without_indexes(path).rpartition(".")[2].casefold() in _PROSE_KEYS


def _without_indexes(path: str) -> str:
    """`path` without its trailing `[n]` groups, in linear time. A regex anchored at the
    end (an index group repeated, then `$`) is retried from every `[` of a long run, and a
    result's keys choose the path: a key of 16,000 `[1]` and an `x` took 5.5 s on the
    event loop."""
    end = len(path)
    while end and path[end - 1] == "]":
        start = path.rfind("[", 0, end - 1)
        if start < 0 or not path[start + 1 : end - 1].isdigit() or not path[start + 1 : end - 1].isascii():
            break
        end = start
    return path[:end]


def is_destination(norm: str) -> bool:
    """Whether a normalised value is, or holds as one of its parts, where money or messages
    go: an address, a URL, a host with a path, an IBAN, a phone number."""
    whole = exact_key(norm)
    if _PHONE.fullmatch(whole) or _IBAN.fullmatch(whole):
        return True
    for part in _PARTS.split(norm):
        if ("@" in part and "." in part) or "://" in part or _IBAN.fullmatch(exact_key(part)):
            return True
        host, _, rest = part.partition("/")
        if rest and "." in host and host.replace(".", "").replace("-", "").isalnum():
            return True
    return False


def normalise(text: str) -> str:
    """Compatibility-folded (NFKC: fullwidth digits are digits), invisible format characters
    (zero-width spaces, soft hyphens, bidi marks) dropped, case-folded, whitespace runs
    collapsed to one space, trimmed. An agent reads a fullwidth IBAN, or one with a zero-width
    space inside, as the IBAN and may copy it plainly: the fingerprint must not tell them apart."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    return " ".join(text.casefold().split())


def exact_key(norm: str) -> str:
    """`norm`, compacted when it is a printed number (IBAN, phone): spaces, hyphens, a leading + dropped."""
    compact = norm.replace(" ", "").replace("-", "").removeprefix("+")
    if compact.isalnum() and not compact.isalpha() and compact.isascii():
        return compact
    return norm


def tokens(norm: str, checks: Checks | None = None) -> Iterator[str]:
    """Identifier-like tokens of normalised free text, as exact keys: words with a digit,
    `@` or `://`, absolute file paths (`_is_path`), and numbers printed in space-separated
    groups ("de89 3704 0044 …"); of a word that glues cells with commas or semicolons, its
    cells' too (`_cells`); IBANs however spelled (`bastion._iban.spelled`, within `checks`).

    A loop over the words rather than a regex: Python's `re` costs ~200 ns a character
    on a pattern without a literal prefix, str.split and isalpha a few ns."""
    if not any(mark in norm for mark in _MARKS):
        return  # prose without a digit, `@` or `/`: no word can be one (12 memchr-fast searches)
    words = norm.split(" ")
    for index, word in enumerate(words):
        if word.isalpha():
            continue
        word = word.strip(PUNCTUATION)
        digit = _DIGIT.search(word) is not None
        if len(word) >= MIN_VALUE and (digit or "@" in word or "://" in word or _is_path(word)):
            whole = exact_key(word)
            yield whole
            if not word.isalnum() and "://" not in word and _CELL.search(word):
                yield from _cells(word, words, index, whole)
        elif digit and len(word) <= 5:
            yield from _grouped(word, words, index)
            if not word.isalnum() and _CELL.search(word):  # a bullet or an en dash glued to the first group
                yield from _cells(word, words, index, "")
    if len(norm) >= MIN_IBAN:
        # An IBAN spelled with dashes, dots or slashes anywhere ("c-y-9-3 / 0197-…"), which
        # an agent told to "enter it without separators" copies compact.
        yield from spelled(norm, checks)


def _is_path(word: str) -> bool:
    """Whether a word is an absolute file path ("/admin/hr", "~/backups/mail"): what a note
    tells an agent to share, move or delete. A path with a digit was always a token; one
    without was not, so "also share /admin/hr" in a README reached a share untraced (a blind
    pack's attack). Not "//" (a comment, a scheme-relative URL: `://` words are tokens)."""
    start = 2 if word.startswith("~/") else 1 if word.startswith("/") else 0
    return start > 0 and word[start : start + 1] not in ("", "/")


def _cells(word: str, words: list[str], index: int, whole: str) -> Iterator[str]:
    """Tokens of the cells of a word glued together by separators (`_CELL`: "-2300.00,sk33" of
    a CSV line, `"acme","de89` of a quoted one, "iban:de89", "a@x.example;b@y.example"),
    besides the word's own: a CSV cell glued to the one before it hid a grouped IBAN from the
    grouping, so an instruction in a CSV attachment paid it untraced (a blind pack's attack;
    a prober then found quotes, pipes, `iban:` and `iban=` doing the same). Added, never
    instead: no argument is covered less than before. The last cell may start a grouped
    number that runs on in the words after it."""
    cells = [cell.strip(PUNCTUATION) for cell in _CELL.split(word)]
    for cell in cells:
        if len(cell) >= MIN_VALUE and cell != word and (key := exact_key(cell)) != whole:
            yield key
    last = next((cell for cell in reversed(cells) if cell), "")
    if last and len(last) <= 5 and _DIGIT.search(last) is not None:
        yield from _grouped(last, words, index)


def _grouped(first: str, words: list[str], index: int) -> Iterator[str]:
    """Keys of a printed number starting at `words[index]`: every run of 3+ short groups, and
    two groups of three or more digits.

    Every run, because the groups cannot be told from short words after the number
    ("… 0130 00 to"). A group glued to the next cell by a comma or semicolon ("8302,note")
    is the number's last."""
    groups = [first.removeprefix("+")]
    for word in words[index + 1 : index + _MAX_GROUPS]:
        word = word.strip(PUNCTUATION)
        # Groups of digits, or four letters (a bank code: "gb29 nwbk 6016 …"); "eur", "to" end it.
        if not (0 < len(word) <= 4 and word.isalnum() and (len(word) == 4 or _DIGIT.search(word))):
            # Looked at only where a run ends, so ordinary numbers pay nothing for it.
            if word.isalnum() or not _CELL.search(word):
                break
            word = _CELL.split(word, maxsplit=1)[0].strip(PUNCTUATION)
            if not (0 < len(word) <= 4 and word.isalnum() and (len(word) == 4 or _DIGIT.search(word))):
                break
            words = []  # the last group: the loop ends after it
        groups.append(word)
        if len(groups) >= 3 or (len(groups) == 2 and all(len(group) >= 3 and group.isdigit() for group in groups)):
            # Two groups of digits are a code as sites print them ("sign-in code: 551 908"),
            # which an agent asked for it copies ("551908", or as printed).
            key = "".join(groups)
            if len(key) >= MIN_VALUE and key.isascii():
                yield key
        if not words:
            break


def shingle_hashes(norm: str, budget: int) -> Iterator[int]:
    """Hashes of SHINGLE-character windows of `norm`: every one, or every stride-th within `budget`."""
    windows = len(norm) - SHINGLE + 1
    if windows <= 0 or budget <= 0:
        return
    stride = max(1, -(-windows // budget))
    for start in range(0, windows, stride):
        yield hash(norm[start : start + SHINGLE])
