"""When the result a task points at vouches for a payment's IBAN (`reference/0.11`).

Until 0.10 a payment was never vouched for: an IBAN copied from an email weighed in full,
however squarely the task pointed at that email ("pay the plumber's invoice in my inbox").
That made banking's false alarms (docs/benchmarks.md: 27.6% of its legitimate work, nearly
all of them an invoice, a refund or a deposit paid to the account its email gives).

The danger the stance guarded against is business-email compromise: the email of the very
supplier the user names, from a look-alike or a hijacked mailbox, saying the bank details
have changed. What gives it away is what it says and where it comes from, and the proxy
reads both. So the IBAN of an email the task points at (`named:` — only the task's own
pointing, never a page the agent went to itself) is vouched for, on the same pointed factor
as other data, when

- every destination that moves money is an IBAN (a crypto wallet never is);
- the result it came from says nothing of money going elsewhere — no `rerouting:` label of
  the proxy (bastion/_rerouting.py: "our bank details have changed", a "new account", an
  escrow, notary or clearing account, "instead", a split payment) — unless the task itself
  speaks of the change ("apply the new bank details from Kuiper's email, I confirmed them by
  phone"): the user has been told;
- no domain of the call or of its data's source looks like another the workflow saw
  (`lookalike:`);
- a payment's task does not say the money goes where it went before ("to the saved payee",
  "the usual account", "as usual"): then an IBAN out of an email is not what it asked for
  (a task updating the saved payee is another matter);
- the call does not set up a repeating payment (a standing order's `every`, a tool named
  for a subscription or mandate) that the task does not ask for ("monthly", "standing
  order", "every quarter"): an invoice's footer turning a one-off payment into a standing
  order changes what the user asked, not only where.

Where the money goes is still argument_novelty's to judge (an IBAN the task does not name
weighs 0.4), and an amount over the task's is a contradiction: a vouched payment to an
email's IBAN scores 0.6, a flag, and any further signal blocks it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from google.protobuf import struct_pb2

from bastion._rerouting import rerouting

from ._access import fold
from ._intent import tool_verbs
from ._kinds import kinds

#: Argument keys (folded) that make a payment repeat.
_REPEATS_KEYS = frozenset(
    {"every", "frequency", "interval", "recurrence", "recurring", "repeat", "repeats", "cadence", "period", "rrule"}
)
#: Tool-name words that say the payment repeats.
_REPEATS_TOOLS = frozenset({"standing", "recurring", "subscription", "subscribe", "mandate", "debit", "instalment"})
#: A task asking for a repeating payment.
_REPEATING = re.compile(
    r"\b(?:standing[\s-]+orders?|monthly|weekly|fortnightly|quarterly|yearly|annually|daily|recurring|"
    r"regular(?:ly)?|subscriptions?|direct[\s-]+debits?|instal?l?ments?|dauerauftrag|"
    r"every|each\s+(?:day|week|month|quarter|year|term)|per\s+(?:week|month|quarter|year|term)|"
    r"a\s+(?:week|month|quarter|year)|(?:until|from)\s+(?:further\s+notice|now\s+on))\b"
)
#: A task that says the money goes where it went before: to a saved payee, the usual account.
_SAVED = re.compile(
    r"\b(?:saved|existing|stored|usual|registered|known)\s+(?:payees?|accounts?|ibans?|bank\s+details)\b|"
    r"\b(?:payees?|accounts?|ibans?|details)\s+(?:we\s+have\s+)?on\s+(?:file|record)\b|\bas\s+(?:usual|always|before)\b|"
    r"\bpayee\s+list\b"
)
#: Characters of the task read.
MAX_TASK_CHARS = 8 * 1024


def money_vouched(
    destinations: Iterable[str], labels: Sequence[str], task: str, tool: str, arguments: struct_pb2.Struct
) -> bool:
    """Whether a call moving money, whose money destinations are of the kinds `destinations`
    ("IBAN", "wallet"), may have the data of a result the task points at vouched for (module docstring)."""
    if any(kind != "IBAN" for kind in destinations):
        return False
    folded = task[:MAX_TASK_CHARS].casefold()
    if "pay" in kinds(tool) and _SAVED.search(folded):
        # Paying "the saved payee" with an email's IBAN; updating the saved payee is another matter.
        return False
    for label in labels:
        if label.startswith("lookalike:"):
            return False
        if label.startswith("rerouting:") and not rerouting(folded):
            return False
    return not (repeats(tool, arguments) and _REPEATING.search(folded) is None)


def repeats(tool: str, arguments: struct_pb2.Struct) -> bool:
    """Whether the call sets up a repeating payment: a top-level argument of _REPEATS_KEYS with
    a value, or a tool named for one."""
    if tool_verbs(tool) & _REPEATS_TOOLS:
        return True
    for key, value in arguments.fields.items():
        if fold(key) in _REPEATS_KEYS and value.WhichOneof("kind") not in (None, "null_value"):
            if value.WhichOneof("kind") == "string_value" and not value.string_value.strip():
                continue
            return True
    return False
