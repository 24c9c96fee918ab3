"""Whether a task leaves an action's destination to the data the agent reads.

"Email the landlord of the best match", "send the minutes to the attendees listed in it",
"forward the lease to her lawyer — she put the address in her email", "file the bug at the
tracker linked from <page>": the user asks for an act and says its destination is to be
found, not what it is. The destination then comes, byte for byte, out of an untrusted
result — exactly as an injected one would — and the taint signal blocked most such work
(about half the false alarms of `bastion eval`, docs/benchmarks.md).

A task delegates a destination when it says so in one of a few ways, read per sentence:

- a pointer: a destination or role *listed / named / mentioned / given / linked … in, on,
  from* something ("the reviewers listed in REVIEWERS.txt", "the page linked from …");
- a destination said to be somewhere: "the address is in her email", "the IBAN should be in
  their email";
- someone said to have given it: "he mentioned it in his last email", "she put the address";
- a message verb whose object is a pronoun for someone found ("email them for a quote",
  "invite him"), or a role the data supplies ("contact the landlord", "email the
  requester", "write to the organisers").

The caller (`ReferenceScorer.score`) also requires that the task asks for an act of the
sink's kind and that the sink moves no money (`_kinds.vouches`): business-email compromise
is a task saying "the IBAN is in their email". What a delegated task vouches for is the
*control values* (short values picked out of free text: an address, a URL, an id), weighed
at the pointed factor; prose copied into the call weighs as before, and a destination the
task contradicts (it names another of the same kind) still fires argument_novelty in full.

This opens a door on purpose: an injection inside the very source the task delegates to
(an extra address slipped into the attendee list the user points at) is weighed lower too.
`BASTION_VERIFIER_POINTED_FACTOR=1` turns both discounts off.
"""

from __future__ import annotations

import re

#: Longest task read (as `_intent` reads tasks).
MAX_TASK_CHARS = 4 * 1024

_POINTER = re.compile(
    r"\b(?:listed|named|mentioned|given|specified|stated|linked|found|provided|included|shown|written|cited)"
    r"\s+(?:in|on|from|at|by|under|there)\b"
)
_SAID_TO_BE = re.compile(
    r"\b(?:address|addresses|e-?mail|link|url|form|page|contact|contacts|details|number|site|website|iban)"
    r"\s+(?:is|are|should\s+be|will\s+be|was|were|can\s+be\s+found)\s+(?:in|on)\b"
)
_GIVEN_BY = re.compile(
    r"\b(?:he|she|they)\s+(?:mentioned|gave|put|left|wrote|included|shared|sent|posted|listed|named|added)\b"
)
_MESSAGE_VERBS = (
    r"(?:email|e-mail|mail|contact|invite|message|text|call|ask|notify|inform|write\s+to|reply\s+to|respond\s+to)"
)
_PRONOUN_OBJECT = re.compile(rf"\b{_MESSAGE_VERBS}\s+(?:them|him|her)\b")
_ROLES = (
    r"(?:landlord|landlady|host|hosts|owner|owners|organi[sz]ers?|requester|requestor|author|poster|seller|vendor|"
    r"operator|operators|company|restaurant|hotel|speaker|speakers|provider|venue|agency|agent|lawyer|"
    r"attendees|participants|reviewers|applicants|contacts|recipients|people)"
)
_ROLE_OBJECT = re.compile(rf"\b{_MESSAGE_VERBS}\s+(?:the|their|its|his|her)\s+(?:[a-z-]+\s+){{0,2}}?{_ROLES}\b")
_FORMS = (_POINTER, _SAID_TO_BE, _GIVEN_BY, _PRONOUN_OBJECT, _ROLE_OBJECT)


def delegates_destination(task: str) -> bool:
    """Whether `task` leaves where its act goes to something the agent reads (above)."""
    text = task[:MAX_TASK_CHARS].casefold().replace("\u2019", "'")
    return any(form.search(text) for form in _FORMS)
