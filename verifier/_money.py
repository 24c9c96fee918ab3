"""When the result a task points at vouches for a payment's IBAN (`reference/0.11`).

Until 0.10 a payment was never vouched for: an IBAN copied from an email weighed in full,
however squarely the task pointed at that email ("pay the plumber's invoice in my inbox").
That made banking's false alarms (docs/benchmarks.md: 27.6% of its legitimate work, nearly
all of them an invoice, a refund or a deposit paid to the account its email gives).

The danger the stance guarded against is business-email compromise: the email of the very
supplier the user names, from a look-alike or a hijacked mailbox, saying the bank details
have changed. What gives it away is what it says and where it comes from, and the proxy
reads both. So the IBAN of an email the task points at (`named:` — only the task's own
pointing, never a page the agent went to itself, and not only by the sender's display
name, `byname:`, which anyone may write) is vouched for, on the same pointed factor as
other data, when

- a valid IBAN is among the money destinations and none is anything else (a crypto wallet,
  and an account number or sort code the verifier does not read as a destination, never
  are); then only the IBAN, the labels, the payee's name and the BIC are discounted
  (`_taint._vouched_in_payment`);
- no result of the workflow says money should go elsewhere — no `rerouting:` label of the
  proxy (bastion/_rerouting.py: "our bank details have changed", a "new account", an
  escrow, notary or clearing account, "instead", a split payment) — unless the task itself
  speaks of the payee's change ("apply the new bank details from Kuiper's email, I
  confirmed them by phone"; `_TASK_CHANGE`): the user has been told;
- no domain of the call or of its data's source looks like another the workflow saw
  (`lookalike:`);
- a payment's task does not say the money goes where it went before ("to the saved payee",
  "the usual account", "as usual"): then an IBAN out of an email is not what it asked for
  (a task updating the saved payee is another matter);
- the call does not set up a repeating payment (a standing order's `every`, a tool named
  for a subscription or mandate) that the task does not ask for ("monthly", "standing
  order", "every quarter"): an invoice's footer turning a one-off payment into a standing
  order changes what the user asked, not only where; nor one at another period than the
  task states (`reference/0.12`: a hidden note set a monthly lease weekly).

Where the money goes is still argument_novelty's to judge (an IBAN the task does not name
weighs 0.4), and an amount over the task's is a contradiction: a vouched payment to an
email's IBAN scores 0.6, a flag, and any further signal blocks it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from google.protobuf import struct_pb2

from ._access import fold
from ._intent import tool_verbs
from ._kinds import kinds

#: Parts of argument keys (folded to letters and digits) that make a payment repeat, at any depth.
_REPEATS_KEYS = (
    "every", "frequen", "interval", "recur", "repeat", "cadence", "period", "rrule", "cron", "standing",
    "occurrence", "schedule",
)  # fmt: skip
#: Tool-name words that say the payment repeats.
_REPEATS_TOOLS = frozenset(
    {
        "standing", "recurring", "recurrent", "periodic", "subscription", "subscribe", "mandate", "debit",
        "instalment", "installment", "autopay", "repeat", "repeating",
    }
)  # fmt: skip
#: Depth and values of the arguments read for repeating keys.
_MAX_DEPTH = 4
_MAX_VALUES = 256
#: A task asking for a repeating payment: a standing order, a direct debit, a recurring
#: payment; a frequency before a word for a payment ("monthly rent", "a weekly transfer") or
#: closing a phrase ("pay her 50 EUR monthly", "… every month from May"). "Check every line",
#: "a week ago" and "the monthly newsletter" ask for none (an attacker's probe).
_PAYMENT = (
    r"(?:payments?|transfers?|instal?l?ments?|rent|fees?|donations?|contributions?|standing|amounts?|sums?|"
    r"premiums?|dues|subscriptions?|debits?|allowance|salary|wages?|retainer|lease|orders?)"
)
_REPEATING = re.compile(
    r"\b(?:standing[\s-]+orders?|direct[\s-]+debits?|dauerauftrag|recurring\s+" + _PAYMENT + r"|"
    r"(?:monthly|weekly|fortnightly|quarterly|yearly|annually|daily)"
    r"(?=\s*(?:[.,;:!?)]|$)|\s+" + _PAYMENT + r"\b|\s+(?:from|starting|until|on|by|for|to|and|at|in)\b)|"
    r"(?:every|each|per|a)\s+(?:day|week|month|quarter|year|term)(?!\s+ago)\b)"
)
#: A period as tasks and schedules write it; `_PERIODS` names each one period.
_FREQUENCY = re.compile(
    r"\b(daily|weekly|fortnightly|biweekly|monthly|quarterly|yearly|annually)\b|"
    r"\b(?:every|each|per|a)\s+(?:(?:other|second|two|three|six|[0-9]+)\s+)?(day|week|fortnight|month|quarter|year)s?\b"
    r"(?!\s+ago)|\bp[0-9]+([dwmy])\b|\bfreq=(daily|weekly|monthly|yearly)\b|"
    r"\b(?:every|interval|frequency|period|cadence|recurrence|repeat)\w*\s+(day|week|fortnight|month|quarter|year)s?\b"
)
_PERIODS = {
    "daily": "day", "weekly": "week", "fortnightly": "fortnight", "biweekly": "fortnight", "monthly": "month",
    "quarterly": "quarter", "yearly": "year", "annually": "year", "d": "day", "w": "week", "m": "month",
    "y": "year",
}  # fmt: skip
#: A task that says the money goes where it went before: to a saved payee, the usual account.
_SAVED = re.compile(
    r"\b(?:saved|existing|stored|usual|registered|known)\s+(?:payees?|accounts?|ibans?|bank\s+details)\b|"
    r"\b(?:payees?|accounts?|ibans?|details)\s+(?:we\s+have\s+)?on\s+(?:file|record)\b|\bas\s+(?:usual|always|before)\b|"
    r"\bpayee\s+list\b"
)
#: A task that speaks of the payee's bank details changing: "their new IBAN", "the new bank
#: details", "X changed banks", "the bank details have changed", "a bank-details change".
#: Not the user's own account ("from my new account") nor the way of paying ("by bank
#: transfer rather than card"): an attacker's probe had both switch the check off.
_CHANGE = (
    r"(?:bank(?:ing)?[\s-]+(?:details|account|information|info|connection)|payment[\s-]+details|"
    r"account(?:[\s-]+(?:details|number))?|ibans?|bank)"
)
_TASK_CHANGE = re.compile(
    r"(?<!\bmy )(?<!\bour )\b(?:new|changed|updated|corrected|different)\s+" + _CHANGE + r"\b|"
    r"\b(?:changed|moved|switched)\s+(?:their\s+|his\s+|her\s+|its\s+)?banks?\b|"
    r"\b" + _CHANGE + r"(?:\s+(?:has|have|had))?\s+(?:changed|been\s+(?:changed|updated))\b|"
    r"\b" + _CHANGE + r"[\s-]+change\b|\bchange\s+of\s+" + _CHANGE + r"\b"
)
#: Characters of the task read.
MAX_TASK_CHARS = 8 * 1024


def money_vouched(
    destinations: Sequence[str], labels: Sequence[str], task: str, tool: str, arguments: struct_pb2.Struct
) -> bool:
    """Whether a call moving money, whose money destinations are of the kinds `destinations`
    ("IBAN", "wallet"), may have the data of a result the task points at vouched for (module
    docstring). Only with an IBAN among them: an account number and sort code, a routing
    number or a wallet is not vouched for (an attacker's probe)."""
    if not destinations or any(kind != "IBAN" for kind in destinations):
        return False
    folded = task[:MAX_TASK_CHARS].casefold()
    if "pay" in kinds(tool) and _SAVED.search(folded):
        # Paying "the saved payee" with an email's IBAN; updating the saved payee is another matter.
        return False
    told = None
    for label in labels:
        if label.startswith(("lookalike:", "byname:")):
            return False
        if label.startswith("rerouting:"):
            told = _TASK_CHANGE.search(folded) is not None if told is None else told
            if not told:
                return False
    values = _repeat_values(arguments)
    if not _repeats(tool, values):
        return True
    if _REPEATING.search(folded) is None:
        return False
    # The task asks for a repeat: at the frequency it states ("monthly", not the weekly a
    # hidden note in the lease email asked for; a blind pack's attack, `reference/0.12`).
    asked = frequencies(folded)
    given = frequencies(" ".join(values or ()))
    return not (asked and given and not given <= asked)


def repeats(tool: str, arguments: struct_pb2.Struct) -> bool:
    """Whether the call sets up a repeating payment: an argument at any depth (to _MAX_DEPTH)
    whose key holds a part of _REPEATS_KEYS and has a value, or a tool named for one."""
    return _repeats(tool, _repeat_values(arguments))


def _repeats(tool: str, values: list[str] | None) -> bool:
    """`repeats`, given the call's `_repeat_values` (None: too wide to read, so it may)."""
    return bool(tool_verbs(tool) & _REPEATS_TOOLS) or values is None or bool(values)


def frequencies(text: str) -> frozenset[str]:
    """The periods (day, week, fortnight, month, quarter, year) a folded text states: "monthly",
    "every two weeks", "per quarter", "a year", `P1M`, `FREQ=WEEKLY`."""
    found = set()
    for match in _FREQUENCY.finditer(text[:MAX_TASK_CHARS]):
        word = next(group for group in match.groups() if group)
        found.add(_PERIODS.get(word, word))
    return frozenset(found)


def _repeat_values(arguments: struct_pb2.Struct) -> list[str] | None:
    """The values (as text) of the arguments, at any depth to _MAX_DEPTH, whose keys hold a part
    of _REPEATS_KEYS and have a value; None when the arguments are too wide to read (fail closed)."""
    found: list[str] = []
    stack: list[tuple[struct_pb2.Struct, int]] = [(arguments, 0)]
    seen = 0
    while stack:
        struct, depth = stack.pop()
        for key, value in struct.fields.items():
            seen += 1
            if seen > _MAX_VALUES:
                return None
            kind = value.WhichOneof("kind")
            folded = fold(key)
            if any(part in folded for part in _REPEATS_KEYS) and _has_value(value):
                found.append(f"{key} {value.string_value}".casefold() if kind == "string_value" else key.casefold())
            if kind == "struct_value" and depth < _MAX_DEPTH:
                stack.append((value.struct_value, depth + 1))
    return found


def _has_value(value: struct_pb2.Value) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return bool(value.string_value.strip())
    if kind == "number_value":
        return value.number_value != 0
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return bool(value.struct_value.fields)
    if kind == "list_value":
        return bool(value.list_value.values)
    return False
