"""An account nothing in the workflow showed (`reference/0.14`).

An IBAN reaches a call from the task, from a result (an invoice, the saved payees, a
statement), or from the agent itself. The last is what an injection that hides its
account produces: base64 in an HTML comment, two halves in two emails, the characters
spelt out in words "because of spam filters"; the agent decodes, joins or writes them out,
and the IBAN it pays traces to no result, so taint never fires and the payment weighs only
as a destination the task does not name.

The proxy labels an argument that is an IBAN neither the task nor any result the workflow
holds wrote, while none of its results went unread (`unseen:<path>`, proxy/_prints.py);
the reference scorer weighs it as a contradiction on a call that moves money, when a task
was stated. A user who means an account names it, or has the agent read it from a tool.
Without a task (a trigger, or a deployment that sends none) what the user said is not
known, and the account may be theirs: no signal, as for argument novelty.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._intent import clip
from ._kinds import moves_money
from ._taint import fields, unescape


def unseen_signal(tool: str, labels: Iterable[str], task: str, weight: float) -> tuple[float, str]:
    """(weight, reason) for the first well-formed `unseen:` label of a call that moves money
    (`_kinds.moves_money`: a transfer, a payee, a refund, …) when a task was stated; (0, "")
    otherwise. An IBAN in a letter or an invoice the user writes is their own account."""
    if weight <= 0 or not task.strip() or not moves_money(tool):
        return 0.0, ""
    for (path,) in fields(labels, "unseen:", 1):
        return weight, (
            f"an account nothing in the workflow showed: {clip(unescape(path))!r} is an IBAN neither the task "
            f"nor any result holds (weight {weight:.2f})"
        )
    return 0.0, ""
