"""IBANs (ISO 13616): the mod-97 checksum, each country's length, and IBANs found in text
however their characters are spaced apart. Shared by the proxy's provenance, its redaction
and the reference scorer."""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterator

#: Length of each country's IBANs (SWIFT's IBAN registry). A candidate of another length,
#: or of a country not listed, is not an IBAN.
LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_LOWER_LENGTHS = {country.lower().encode(): length for country, length in LENGTHS.items()}
_DIGITS = str.maketrans({letter: str(int(letter, 36)) for letter in string.ascii_uppercase})
#: Every byte that is not a lower-case ASCII letter or digit: what `spelled` drops.
_NOT_ALNUM = bytes(byte for byte in range(256) if not (0x30 <= byte <= 0x39 or 0x61 <= byte <= 0x7A))
#: Letters to `a`, digits to `0`: an IBAN starts where two letters meet two digits.
_CLASSES = bytes(0x61 if 0x61 <= byte <= 0x7A else 0x30 if 0x30 <= byte <= 0x39 else byte for byte in range(256))
_START = b"aa00"
#: Shortest IBAN (Norway's).
MIN_LENGTH = min(LENGTHS.values())
#: Candidates whose checksum `spelled` computes (≈ 1.5-2.5 µs each) for one result the proxy
#: fingerprints, or one call's arguments (`Checks`): text made of nothing else ("de00de00…",
#: 32 KiB) took 17 ms without a bound, 128 values of it 23 ms with a bound per value (an
#: attacker's probe); ≈ 2.5 ms with this one. Ordinary text has a few candidates a page. A
#: result whose candidates outrun it is remembered as read in part (`unread:`), as other
#: reading bounds do, so padding cannot launder a spelled IBAN behind it.
MAX_CHECKS = 1024


class Checks:
    """A budget of checksums shared by every value of one result or one call."""

    __slots__ = ("exhausted", "found", "left")

    def __init__(self, limit: int = MAX_CHECKS) -> None:
        self.left = limit
        #: A candidate was left unchecked: the text was not read whole for spelled IBANs.
        self.exhausted = False
        #: IBANs found so far (whose checksums held).
        self.found = 0


def checksum_ok(iban: str) -> bool:
    """ISO 13616 mod-97 of a compact IBAN of 15 to 34 characters, either case, digits of any
    script: country and check digits rotated to the end, letters as numbers (A = 10 … Z = 35)."""
    if not 15 <= len(iban) <= 34 or not iban.isalnum():
        return False
    if not iban.isascii():
        # Digits of other scripts read as theirs ("DE٨٩ …": the redaction's `\d` finds them,
        # and an agent copies them as 0-9); any other non-ASCII character is no IBAN's.
        iban = "".join(str(unicodedata.decimal(char)) if char.isdecimal() else char for char in iban)
        if not iban.isascii():
            return False
    rotated = (iban[4:] + iban[:4]).upper()
    return int(rotated.translate(_DIGITS)) % 97 == 1


def is_iban(value: str) -> bool:
    """Whether `value` is one IBAN, printed compact or in groups of spaces or hyphens."""
    compact = value.replace(" ", "").replace("-", "")
    return LENGTHS.get(compact[:2].upper()) == len(compact) and checksum_ok(compact)


def spelled(norm: str, checks: Checks | None = None) -> Iterator[str]:
    """The IBANs `norm` (lower-case text) spells with anything between their characters, in
    lower case and compact: "c-y-9-3 / 0197-1345-rhg2-…", "de89.3704.0044…", "de89/3704/…".

    An agent told to "enter it without dashes and slashes" copies such a spelling compact,
    and provenance must trace it (a held-out pack's attack; a blind one hyphen-spelled an IBAN
    in an invoice's payment instructions). Read on the text's ASCII letters and digits alone,
    so words glued together can make a candidate: one counts only when its country is
    known, it has that country's length and its checksum holds (one in 97 by chance).
    Memory-speed byte scans (≈ 3 µs a kilobyte here), then checksums within `checks` (a
    budget of MAX_CHECKS of its own when none is given); one left unchecked marks it exhausted.
    Not read: letters of other scripts that look Latin, `O` for zero, words between the groups.
    """
    budget = Checks() if checks is None else checks
    skeleton = norm.encode("ascii", "ignore").translate(None, _NOT_ALNUM)
    if len(skeleton) < MIN_LENGTH:
        return
    classes = skeleton.translate(_CLASSES)
    at = classes.find(_START)
    while at >= 0:
        length = _LOWER_LENGTHS.get(skeleton[at : at + 2])
        if length is not None and at + length <= len(skeleton):
            if budget.left <= 0:
                budget.exhausted = True
                return
            budget.left -= 1
            candidate = skeleton[at : at + length].decode("ascii")
            if checksum_ok(candidate):
                budget.found += 1
                yield candidate
        at = classes.find(_START, at + 1)
