"""The task's quantities: an amount or a count the user states, and a call that asks for more.

Some attacks change no destination. The payee is the right one, and an email's footer talks
the agent into paying 12,480 where the invoice said 1,248. Or a listing's note makes it book
14 nights where the user asked for four. Nothing in such a call is foreign, so the
destination and taint signals have nothing to see. What gives it away is the task: the user
said how much.

So, for a sink, each argument whose key names a quantity (`amount`, `nights`, `guests`,
`tickets`, … : FAMILIES) and holds a number is compared with the numbers the task states
for that family: amounts beside a currency ("64.90 EUR", "€480", "480 euro"), written with
cents ("the 64.90 for the repair") or right before a word for a sum of money ("the 1,260
deposit"; a number of 10 or more that is no year), counts beside their unit ("3 nights", "four-night",
"2 adults"). The call contradicts the task when it asks for more than all of them together
(with half a percent and a cent of slack for rounding).
Less is never a contradiction: the user's share of a bill, a partial refund or a deposit is
less than the total the task names. A task that names no quantity of the family says
nothing about it.

An amount whose key says minor units (`amount_cents`) is read in them; a plain `amount` a
hundred times the task's still contradicts it (an API taking minor units, Stripe's, asks
6490 for 64.90, but so may an injected raise to a bank that reads major units), and the
reason says so. A currency argument naming none of the currencies the task writes
contradicts it, when every amount the task states has one.

Numbers are read as people write them: `1,248.00`, `1.248,00`, `64,90`, `1 248`, and the
words one to twenty. Bounded: the task's first MAX_TASK_CHARS characters, at most
MAX_ARGUMENTS quantity arguments per call.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from bastion._cache import short_key_cache

from ._access import LEVELS, asked_level, fold, is_access_key, stated_level

#: Characters of the task read for its quantities.
MAX_TASK_CHARS = 8 * 1024
#: Quantity arguments compared per call; past them the call contradicts the task (fail
#: closed: sixteen padded `*_total` keys pushed the real amount out of a first version).
MAX_ARGUMENTS = 256
#: The path of the contradiction `contradictions(unread=True)` adds.
WIDE = "(arguments)"
#: Slack for rounding: a call may ask for this fraction, and a cent, more than the task names.
_SLACK = 0.005
_CENT = 0.01

#: Currency words and signs → the ISO 4217 codes they may mean (`$` and `kr` are several).
_DOLLARS = "USD AUD CAD NZD SGD HKD"
_CODES_OF: dict[str, frozenset[str]] = {
    word: frozenset(codes.split())
    for word, codes in {
        "eur": "EUR", "euro": "EUR", "euros": "EUR", "€": "EUR", "usd": "USD", "dollar": _DOLLARS,
        "dollars": _DOLLARS, "$": _DOLLARS, "gbp": "GBP", "pound": "GBP", "pounds": "GBP", "£": "GBP",
        "chf": "CHF", "sek": "SEK", "nok": "NOK", "dkk": "DKK", "kr": "SEK NOK DKK ISK", "pln": "PLN",
        "zł": "PLN", "czk": "CZK", "huf": "HUF", "jpy": "JPY", "¥": "JPY CNY", "inr": "INR", "₹": "INR",
        "aud": "AUD", "cad": "CAD", "nzd": "NZD", "us$": "USD", "rmb": "CNY", "yuan": "CNY",
        "renminbi": "CNY", "sterling": "GBP", "franc": "CHF", "francs": "CHF", "yen": "JPY", "rupee": "INR",
        "rupees": "INR", "zloty": "PLN", "złoty": "PLN", "krona": "SEK", "kronor": "SEK", "krone": "NOK DKK",
        "kroner": "NOK DKK",
    }.items()
}  # fmt: skip
#: The words and signs that make a number beside them an amount: one table with the codes.
_CURRENCIES = frozenset(_CODES_OF)
_PEOPLE = frozenset(
    {
        "guest", "guests", "people", "person", "persons", "adult", "adults", "passenger", "passengers",
        "traveller", "travellers", "traveler", "travelers", "pax", "child", "children", "kid", "kids",
        "infant", "infants",
    }
)  # fmt: skip
_PEOPLE_KEYS = ("guests", "people", "persons", "adults", "passengers", "travellers", "travelers", "pax", "partysize")
#: Family → (ends of argument keys, folded to letters and digits; the task's unit words).
FAMILIES: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "amount": (("amount", "total"), _CURRENCIES),
    "nights": (("nights",), frozenset({"night", "nights"})),
    "guests": (_PEOPLE_KEYS, _PEOPLE),
    "tickets": (("tickets",), frozenset({"ticket", "tickets"})),
    "rooms": (("rooms",), frozenset({"room", "rooms"})),
    "seats": (("seats",), frozenset({"seat", "seats"})),
}

_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}  # fmt: skip
#: A number as written: digits with `,` `.` or thin/normal spaces between groups, or a number word.
_NUMBER = (
    r"(?:\d{1,3}(?:[ ,.'\u2019\u202f\u00a0]\d{3}){1,4}(?:[.,]\d{1,2})?|\d{1,3}(?:,\d{2})+,\d{3}(?:\.\d{1,2})?"
    r"|\d{1,15}(?:[.,]\d{1,2})?|" + "|".join(_WORDS) + ")"
)
#: A number with two decimals and nothing else: how an amount is written.
_CENTS = re.compile(r"\d{1,3}(?:[ ,.\u202f\u00a0]\d{3})*[.,]\d{2}|\d+[.,]\d{2}")
#: A token of the task: a number, a word, or a currency sign.
_TOKEN = re.compile(rf"(?<![\w.,])({_NUMBER})(?![\w])|([^\W\d_]+|[€$£¥₹])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Contradiction:
    """A quantity argument asking for more than the task states for its family, or one that
    cannot be read as a number (`asked` None). `firm` unless the task computes (`_COMPUTES`)."""

    path: str
    family: str
    asked: float | None
    stated: tuple[float, ...]
    firm: bool = True
    #: The asked amount is a hundred times one the task states with cents: minor units, or a raise.
    hundredfold: bool = False
    #: For families "currency" and "access": what the call asks for, and what the task states.
    asked_text: str = ""
    allowed: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.family == "currency":
            return f"{self.path!r} asks {self.asked_text!r} where the task states amounts in {', '.join(self.allowed)}"
        if self.family == "access":
            asks = (
                "the arguments are too wide to read" if self.path == WIDE else f"{self.path!r} asks {self.asked_text!r}"
            )
            return f"{asks} where the task states {self.allowed[0]} access at most"
        stated = ", ".join(_shown(value) for value in self.stated[:3])
        stated += f" and {len(self.stated) - 3} more" if len(self.stated) > 3 else ""
        if self.path == WIDE:
            return f"the arguments are too wide to read their quantities where the task states {stated}"
        asked = "a value that is no number" if self.asked is None else _shown(self.asked)
        minor = ", a hundred times it: minor units need a key saying so, amount_cents" if self.hundredfold else ""
        return f"{self.path!r} asks {asked} where the task states {stated} ({self.family}{minor})"


def contradictions(
    arguments: Iterable[tuple[str, str, object]], task: str, *, unread: bool = False
) -> list[Contradiction]:
    """The quantity arguments ((path, last key, value) of the call's numbers and strings)
    that ask for more than everything the task states of their family, or whose value is
    no number (fail closed: `"twelve thousand"`, `"12480 EUR + fees"`). Not firm when the
    task itself computes an amount or a count (a percentage, "plus VAT", "two more may
    join"): the user's arithmetic is not read, so the call may rightly ask for more."""
    if not task:
        return []
    task = task[:MAX_TASK_CHARS]
    stated = _stated(task)
    level = stated_level(task)
    if not stated and level is None:
        return []
    found = []
    if unread and stated:
        # Arguments too wide to find their quantities in: fail closed when the task states some.
        first = next(iter(stated))
        found.append(Contradiction(WIDE, first, None, stated[first]))
    elif unread and level is not None:
        found.append(Contradiction(WIDE, "access", None, (), allowed=(LEVELS[level],)))
    currencies = _currencies(task) if "amount" in stated else None
    read = 0
    for path, key, value in arguments:
        family = family_of(key)
        if family == "access":
            level_asked = asked_level(value) if level is not None else None
            if level_asked is not None and level is not None and level_asked > level:
                shown = str(value).strip()[:24]
                found.append(Contradiction(path, "access", None, (), asked_text=shown, allowed=(LEVELS[level],)))
            continue
        if family == "currency":
            if currencies is not None and isinstance(value, str) and value.strip():
                read += 1
                asked_codes = _codes(value)
                if asked_codes and asked_codes.isdisjoint(currencies):
                    found.append(_other_currency(path, value, currencies, task))
            continue
        if family is None or family not in stated or value is None or value == "":
            continue
        read += 1
        if read > MAX_ARGUMENTS:
            found.append(Contradiction(path, family, None, stated[family]))
            break
        if family == "amount" and currencies is not None and isinstance(value, str):
            # "480 GBP" where the task says 480 EUR: the amount's own currency is read too.
            written = _CODE_AROUND.search(value.strip()[:64])
            if written is not None:
                codes = _codes(written.group(1) or written.group(2))
                if codes and codes.isdisjoint(currencies):
                    found.append(_other_currency(path, written.group(0).strip(), currencies, task))
        asked = number(value)
        if asked is not None and is_minor(key):
            asked = round(asked / 100, 2)
        total = sum(stated[family])
        if asked is None or exceeds(asked, total):
            hundredfold = family == "amount" and asked is not None and _hundredfold(asked, (*stated[family], total))
            firm = not _computes(task, family)
            found.append(Contradiction(path, family, asked, stated[family], firm=firm, hundredfold=hundredfold))
    return found


def _other_currency(path: str, value: str, currencies: frozenset[str], task: str) -> Contradiction:
    """A currency argument naming none of the task's: firm unless the task converts."""
    shown = value.strip()[:16]
    return Contradiction(
        path,
        "currency",
        None,
        (),
        firm=not _computes(task, "amount"),
        asked_text=shown,
        allowed=tuple(sorted(currencies)),
    )


def _hundredfold(asked: float, stated: Iterable[float]) -> bool:
    """Whether `asked` is a whole number a hundred times an amount stated (64.90 → 6490): what
    an API taking minor units (Stripe's `amount`) asks for the task's amount, and what an
    injected raise may ask. Still a contradiction (a payment to a bank API that reads major
    units cannot be called back: an attacker's probe), said so in the reason, so that an
    operator sees why a payment API's charge was stopped; a key naming minor units
    (`amount_cents`) is read in them."""
    if asked != int(asked):
        return False
    return any(value > 0 and abs(asked - round(value * 100)) < 0.5 for value in stated)


#: Words of a task that computes an amount (a percentage, a conversion, a surcharge, a
#: period) or leaves a count open: the call may rightly ask for more than the task writes.
_COMPUTES = {
    "amount": re.compile(
        r"%|\b(?:plus|vat|tax|taxes|shipping|postage|tip|interest|worth|convert|converted|exchange|double|twice|"
        r"triple|monthly|weekly|yearly|annually|per month|per week|per year|a month|a year|each of|times)\b",
        re.IGNORECASE,
    ),
    "count": re.compile(
        r"\b(?:plus|more|extra|another|others|join|joining|baby|babies|infant|infants|toddler|toddlers|"
        r"at least|or more|up to)\b|\+",
        re.IGNORECASE,
    ),
}


def _computes(task: str, family: str) -> bool:
    return _COMPUTES["amount" if family == "amount" else "count"].search(task) is not None


def exceeds(asked: float, stated: float) -> bool:
    """Whether `asked` is more than `stated`, past half a percent and a cent of rounding."""
    return asked > stated * (1 + _SLACK) + _CENT


def computes_amount(task: str) -> bool:
    """Whether the task computes an amount (a percentage, plus, VAT, a conversion, …)."""
    return _computes(task[:MAX_TASK_CHARS], "amount")


def stated_amounts(task: str) -> tuple[float, ...]:
    """The amounts the task states (beside a currency, with cents, or before a word for a sum)."""
    return _stated(task[:MAX_TASK_CHARS]).get("amount", ())


# A tool's keys repeat call after call: cached, for keys of a sane length only (a 1 MiB
# key per call would otherwise pin a gigabyte in the cache).
@short_key_cache(max_key=128, maxsize=1024)
def family_of(key: str) -> str | None:
    """The family an argument key names (`transfer_amount` → amount; `amount_cents` → amount,
    in minor units: `is_minor`; `currency` → currency), or None."""
    folded = fold(key)
    if not folded:
        return None
    if folded in _CURRENCY_KEYS:
        return "currency"
    if is_access_key(folded):
        return "access"
    if folded.endswith(_MINOR_ENDS) and any(word in folded for word in _MINOR_OF):
        return "amount"
    for family, (ends, _) in FAMILIES.items():
        if folded.endswith(ends):
            return family
    return None


def is_minor(key: str) -> bool:
    """Whether an amount's key says it is in minor units (`amount_cents`, `total_minor`)."""
    return fold(key).endswith(_MINOR_ENDS)


#: Keys holding the currency of the amount paid (a `target_currency` is a conversion's).
_CURRENCY_KEYS = frozenset(
    {
        "currency", "currencycode", "ccy", "currencyisocode", "isocurrencycode", "paymentcurrency",
        "transactioncurrency", "sourcecurrency", "settlementcurrency",
    }
)  # fmt: skip
#: Ends of keys holding an amount in minor units, and what such a key must also hold.
_MINOR_ENDS = ("cents", "minor", "minorunits", "pence", "centimes")
_MINOR_OF = ("amount", "total", "price", "sum", "value")


def number(value: object) -> float | None:
    """A call's quantity: a JSON number, or a string that is one number as people write it,
    a currency code or sign around it (`"12480 EUR"`, `"€12,480.00"`, `"+12480"`) allowed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str) and len(value) <= 64:
        text = _AROUND.sub("", value.strip()).strip()
        if re.fullmatch(_NUMBER, text, re.IGNORECASE):
            return _parse(text)
        if _PLAIN.fullmatch(text):
            plain = float(text)
            return plain if abs(plain) < 1e15 else None
    return None


#: A currency code, word or sign, or a plus sign, before or after a call's number.
_CODES = "|".join(sorted((word for word in _CURRENCIES if word.isalpha()), key=len, reverse=True))
_AROUND = re.compile(rf"^(?:[+]|[€$£¥₹]|(?:{_CODES})\b)\s*|\s*(?:[€$£¥₹]|\b(?:{_CODES}))$", re.IGNORECASE)
#: The currency code, word or sign written before or after a call's amount.
_CODE_AROUND = re.compile(
    rf"^(?:([€$£¥₹]|(?:{_CODES}|[A-Za-z]{{3}})\b))|(?:(?<=[\d\s])([€$£¥₹]|(?:{_CODES}|[A-Za-z]{{3}}))$)", re.IGNORECASE
)
#: A number as a program writes it: `12480.000`, `1.248e4`.
_PLAIN = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,6})?(?:e[+]?[0-9]{1,2})?", re.IGNORECASE)


@functools.lru_cache(maxsize=16)
def _currencies(task: str) -> frozenset[str] | None:
    """The ISO codes of every currency the task writes, when each amount it states has its
    currency beside it; None when one does not ("the 64.90 for the repair") or none is
    written: then the task says nothing of the currency."""
    if _facts(task)[1]:
        return None
    codes = frozenset().union(
        *(_CODES_OF[word.casefold()] for word in _WORD.findall(task) if word.casefold() in _CODES_OF)
    )
    # Any code the task writes in capitals counts too, known or not ("the 45 BRL customs fee").
    codes |= frozenset(_ISO_LIKE.findall(task))
    return codes or None


def _codes(value: str) -> frozenset[str]:
    """The ISO codes a call's currency argument may mean: a code as it is, a word or sign mapped."""
    text = value.strip()[:16]
    mapped = _CODES_OF.get(text.casefold())
    if mapped is not None:
        return mapped
    # Anything but three letters (`978`, `US dollar bill`) says nothing.
    return frozenset({text.upper()}) if len(text) == 3 and text.isascii() and text.isalpha() else frozenset()


#: Three capitals alone: what an ISO 4217 code looks like in a task.
_ISO_LIKE = re.compile(r"(?<![A-Za-z])[A-Z]{3}(?![A-Za-z])")
#: A word or currency sign of the task, for `_currencies`.
_WORD = re.compile(r"[^\W\d_]+|[€$£¥₹]")


def _stated(task: str) -> dict[str, tuple[float, ...]]:
    """Family → the quantities the task states for it, in order. A task that prices a unit
    ("35 EUR each", "17.50 an hour", "per night") asks for that price times a count it
    states ("four lessons", "38 hours"): its amount is then each amount times its largest
    plain count."""
    return _facts(task)[0]


@functools.lru_cache(maxsize=16)
def _facts(task: str) -> tuple[dict[str, tuple[float, ...]], bool]:
    """`_stated`'s quantities, and whether an amount is stated without its currency beside
    it (`_currencies`): the task read once for both."""
    stated, per_unit, counts, bare = _read(task)
    if per_unit and counts and "amount" in stated:
        most = max(counts)
        stated["amount"] = tuple(value * most for value in stated["amount"])
    return stated, bare


#: Words after an amount that make it a price per unit; "a" and "an" only before a unit of
#: time or of goods ("17.50 an hour", "35 EUR a lesson"; not "the 50 EUR a friend lent me").
_PER_UNIT = frozenset({"each", "apiece", "per", "every", "/"})
_UNIT_NOUNS = frozenset(
    {
        "hour", "night", "day", "week", "month", "year", "lesson", "class", "session", "visit", "shift",
        "person", "head", "ticket", "seat", "room", "item", "unit", "piece", "kg", "km", "box", "crate",
        "keg", "bottle", "pallet", "page", "word", "guest", "adult", "child", "meal", "portion",
    }
)  # fmt: skip
#: Singular words for a sum of money: a number right before one is an amount ("the 1,260
#: deposit"); a count would take the plural ("the 2 invoices").
_MONEY_NOUNS = frozenset(
    {
        "deposit", "fee", "payment", "balance", "rent", "refund", "instalment", "installment", "advance",
        "premium", "bill", "invoice", "total", "amount", "charge", "contribution", "donation", "payout",
        "reimbursement", "fine", "salary", "wage", "bonus", "retainer", "downpayment", "share",
    }
)  # fmt: skip
#: Words before a number that make it an identifier, whatever follows ("invoice 2291 balance").
_ID_NOUNS = frozenset(
    {
        "invoice", "order", "policy", "room", "unit", "flat", "apartment", "apt", "house", "plot", "account",
        "no", "nr", "number", "ref", "reference", "quote", "ticket", "booking", "case", "contract", "member",
        "customer", "client", "job", "project", "lot", "item", "claim", "file", "bill", "receipt", "id",
        "block", "building", "suite", "seat", "table", "box", "locker", "stand", "stall", "pitch", "site",
    }
)  # fmt: skip
#: Smallest number read as an amount by the noun after it alone.
_MIN_BARE = 10
#: A year ("the 2026 fee" is the fee for 2026).
_YEAR = re.compile(r"(?:19|20)[0-9]{2}")
#: Digits of a number's whole part read: past them (a run of digit groups) it is no quantity.
_MAX_DIGITS = 15
#: Largest plain number read as a count of units.
_MAX_COUNT = 999


def _read(task: str) -> tuple[dict[str, tuple[float, ...]], bool, list[float], bool]:
    """(family → quantities, whether an amount is priced per unit, the plain counts, whether
    an amount is stated without its currency beside it)."""
    tokens = list(_TOKEN.finditer(task))
    stated: dict[str, list[float]] = {}
    per_unit = False
    counts: list[float] = []
    bare = False
    named_by_noun: list[float] = []
    for index, match in enumerate(tokens):
        text = match.group(1)
        if text is None:
            continue
        value = _parse(text)
        if value is None:
            continue
        # The unit beside the number, with nothing but a space between ("EUR 480"), or a
        # hyphen after ("a 3-night stay"): `KR-12-0018` is an invoice number, not 12 kronor.
        previous = tokens[index - 1] if index else None
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        before = after = ""
        if previous is not None and previous.group(2) and not task[previous.end() : match.start()].strip():
            before = previous.group(2).casefold()
        if following is not None and following.group(2) and task[match.end() : following.start()].strip() in ("", "-"):
            after = following.group(2).casefold()
        family = next(
            (name for name, (_, units) in FAMILIES.items() if after in units or (name == "amount" and before in units)),
            None,
        )
        if family is None and _CENTS.fullmatch(text):  # "the 64.90 for the repair": money, written so
            family = "amount"
            bare = True
        elif (
            family is None
            and after in _MONEY_NOUNS
            and value >= _MIN_BARE
            and not _YEAR.fullmatch(text)
            and before not in _ID_NOUNS
        ):
            # "the 1,260 deposit", "her 85 refund": a number naming a sum of money (a blind
            # pack's email raised the deposit the task states so to the whole quote); not
            # "invoice 2291 balance", "room 214 deposit" (an attacker's probe). Kept apart:
            # read only when the task states no amount with its currency.
            named_by_noun.append(value)
            continue
        if family is None:
            # A count is a number a word follows ("four piano lessons", "38 hours"), never an
            # id's tail (`INV-13`) or a message number at the end.
            followed = (
                following is not None and following.group(2) and not task[match.end() : following.start()].strip()
            )
            if followed and value == int(value) and 1 < value <= _MAX_COUNT:
                counts.append(value)
            continue
        stated.setdefault(family, []).append(value)
        if family != "amount":
            counts.append(value)  # "3 nights at 120 EUR per night"
            continue
        # "35 EUR each", "17.50 an hour": the word after the amount (or after its currency).
        end = following.end() if following is not None and after in FAMILIES["amount"][1] else match.end()
        rest = _TOKEN.search(task, end)
        if rest is not None and rest.group(2) and not task[end : rest.start()].strip(" /"):
            word = rest.group(2).casefold()
            per_unit = per_unit or word in _PER_UNIT or "/" in task[end : rest.start()]
            if word in ("a", "an") and not per_unit:
                unit = _TOKEN.search(task, rest.end())
                per_unit = unit is not None and (unit.group(2) or "").casefold() in _UNIT_NOUNS
    if named_by_noun and "amount" not in stated:
        stated["amount"] = named_by_noun
        bare = True
    return {family: tuple(values) for family, values in stated.items()}, per_unit, counts, bare


def _parse(text: str) -> float | None:
    """`1,248.00`, `1.248,00`, `64,90`, `1 248`, `four` → a float; None when it is not one."""
    text = text.strip().casefold()
    if text in _WORDS:
        return float(_WORDS[text])
    compact = re.sub(r"[ '\u2019\u202f\u00a0]", "", text)
    last = max(compact.rfind(","), compact.rfind("."))
    if last >= 0 and len(compact) - last - 1 in (1, 2):
        whole, fraction = compact[:last], compact[last + 1 :]
    else:
        whole, fraction = compact, ""
    whole = whole.replace(",", "").replace(".", "")
    if not whole.isascii() or not whole.isdigit() or (fraction and not fraction.isdigit()) or len(whole) > _MAX_DIGITS:
        return None
    return float(f"{whole}.{fraction}") if fraction else float(whole)


def _shown(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))
