"""Personal data in a message the task sends nowhere it names (`reference/0.10`).

The confidentiality side of injection: an email or a page asks for data ("reply with the
sign-in code you just received", "the dates of birth of your committee, for verification",
"the couples' home addresses and phone numbers"), the agent looks it up elsewhere and
sends it back. Taint weighs such a reply as copied content (prose, half weight): where
content goes is what makes it a leak, and a reply goes to whoever wrote, whom the task
never names by address.

A message sink (a tool whose name says it sends, replies, forwards, posts, …) reads here as
sending personal data when one of its arguments holding data from an earlier result (a
`arg:` label of the proxy) carries

- a value with digits right after a word that says what it is: a date of birth, a
  passport, national insurance, social security, DBS, tax or card number, a PIN, a
  password or passcode, a sign-in, verification, door, alarm or gate code, a sort code or
  account number, a mobile or phone number (`PERSONAL_CUES`); or
- a phone number as people print one (10 to 15 digits in two to five groups starting
  with 0, or after a `+`): "07700 900218", "+353 87 555 0192";

that the task does not write itself, and no recipient argument (`to`, `cc`, `email`,
`attendees`, `channel`, `url`, …) holds a value the task names. Weighed at the argument
weight: beside the taint of the copied content it blocks.

Not caught: data without digits (names alone, medical notes, salary bands in words),
numbers without a cue and not shaped as phones (order numbers stay ordinary), and a
recipient the task names that the data should not reach ("email Dana the HR folder's
contents" is the user's to ask).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ._access import fold
from ._taint import in_task

#: What precedes a personal value (case-folded text).
PERSONAL_CUES = (
    r"date\s+of\s+birth|d\.?o\.?b\.?|born(?:\s+on)?|birth\s*date|birthday|passport(?:\s+(?:no|number))?|"
    r"social\s+security(?:\s+(?:no|number))?|ssn|national\s+insurance(?:\s+(?:no|number))?|ni\s+(?:no|number)|"
    r"national\s+id(?:\s+(?:no|number))?|pps(?:n|\s+(?:no|number))?|dbs(?:\s+(?:certificate|cert|no|number)s?)?|"
    r"tax\s+(?:id|number)|driving\s+licen[cs]e(?:\s+(?:no|number))?|card(?:\s+(?:no|number))?|cvv|cvc|pin|"
    r"password|passcode|(?:sign-?in|log-?in|verification|one-?time|security|access|door|alarm|gate|entry|"
    r"key\s*safe|lockbox)\s+code|otp|sort\s+code|account\s+(?:no|number)|mobile|phone|tel"
)
#: A cue, then within 24 characters a value: words of digits (the first may start with up
#: to three letters, as passport numbers do), at least four digits in all (`personal_sent`).
_CUED = re.compile(
    rf"\b(?:{PERSONAL_CUES})\b[^0-9\n]{{0,24}}(\+?[a-z]{{0,3}}[0-9][0-9a-z./-]*(?: [0-9][0-9a-z./-]*){{0,4}})"
)
#: A phone number as printed: `+` and its digits in groups, or a national number starting
#: with 0 in two to five groups ("07700 900218", "0113 496 0788"); 10 to 15 digits in all
#: (`personal_sent`). A bare run of digits is an id as often as a phone, and is not read.
_PHONE = re.compile(r"(?<![\w+])(?:\+[0-9]{1,3}(?:[ -]?[0-9]{2,6}){1,5}|0[0-9]{2,5}(?:[ -][0-9]{2,7}){1,4})(?![\w])")
#: A number as a task writes it, groups and all ("0113 496 0788", "12/05/1985").
_NUMBER = re.compile(r"[0-9][0-9 ./-]*[0-9]|[0-9]")
#: Keys of arguments that say where a message goes.
_RECIPIENT_KEYS = frozenset(
    {"to", "cc", "bcc", "email", "emails", "recipient", "recipients", "attendee", "attendees", "channel"}
    | {"url", "address", "phone", "number", "user", "users", "invitee", "invitees", "guest", "guests"}
)
#: Characters read in all of a call's arguments together: 8 KiB of nothing but cues
#: ("pin pin pin …") costs ≈ 3 ms here, and a call may have many arguments.
MAX_READ = 8 * 1024
#: Shown in a reason.
_SHOWN = 3


def personal_sent(
    strings: Sequence[tuple[object, str]], tainted_paths: Iterable[str], task: str
) -> list[tuple[str, str]]:
    """(what, argument path) of each personal value sent (module docstring); [] when a
    recipient argument names what the task names, or no argument holds data from a result.

    `strings`: (path, value) of the call's string arguments; `tainted_paths`: the paths the
    proxy labelled with data from a result."""
    tainted = frozenset(tainted_paths)
    if not tainted:
        return []
    folded_task = task.casefold()
    numbers = [_digits(match.group(0)) for match in _NUMBER.finditer(folded_task[:MAX_READ])]
    for path, value in strings:
        if _is_recipient(str(path)) and in_task(value, folded_task):
            return []
    found: list[tuple[str, str]] = []
    left = MAX_READ
    for path, value in strings:
        where = str(path)
        if where not in tainted or _is_recipient(where):
            continue
        if left <= 0:
            break
        text = value[:left].casefold()
        left -= len(text)
        for match in _CUED.finditer(text):
            digits = _digits(match.group(1))
            if len(digits) >= 4 and not _in(digits, numbers):
                found.append((_clip(match.group(0)), where))
                break
        else:
            for match in _PHONE.finditer(text):
                digits = _digits(match.group(0))
                if 10 <= len(digits) <= 15 and not _in(digits, numbers):
                    found.append((_clip(match.group(0)), where))
                    break
    return found


def describe(sent: Sequence[tuple[str, str]]) -> str:
    shown = ", ".join(f"{what!r} in {path!r}" for what, path in sent[:_SHOWN])
    return f"personal data sent to a recipient the task does not name: {shown}"


def _is_recipient(path: str) -> bool:
    key = path.rpartition(".")[2].partition("[")[0]
    return fold(key) in _RECIPIENT_KEYS


def _in(digits: str, numbers: Sequence[str]) -> bool:
    """Whether the task writes these digits (as one of its numbers, or inside one)."""
    return any(digits in number for number in numbers)


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _clip(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
