"""Whether a task leaves an action's destination to the data the agent reads.

"Email the landlord of the best match", "send the minutes to the attendees listed in it",
"forward the lease to her lawyer — she put the address in her email", "file the bug at the
tracker linked from <page>": the user asks for an act and says its destination is to be
found, not what it is. The destination then comes, byte for byte, out of an untrusted
result — exactly as an injected one would — and the taint signal blocked most such work
(about half the false alarms of `bastion eval`, docs/benchmarks.md).

A task delegates a destination when one of its sentences says so in one of a few ways:

- a recipient or place *listed / named / mentioned / given / linked / specified … in, on,
  from* something: "the attendees listed in it", "the reviewers listed in REVIEWERS.txt",
  "the billing contact named in our contract", "the tracker linked from …" — the noun
  before the pointer must be one that names where an act goes (`_RECIPIENTS`), so "the Q3
  numbers listed in the report" or "as mentioned in my notes" delegate nothing;
- such a recipient said to be somewhere: "the address is in her email", "the form is on
  their page", and after a verb that uses it, "use the address from their letter", "use the
  email on her intake form";
- such a recipient, or a contact, said to be in a document, "our" ones too:
  "their address is in our engagement letter", "the auditor's contact is in the engagement
  letter", "the finance contact (it's on their client sheet)";
- a document said to say who: "Hannah's email lists who's coming … invite them", "a note
  about who else should get access", "whoever the note names";
- recipients a document names, nothing after its verb (`reference/0.15`): "share the
  folder with the client contact it names", "invite the volunteers the rota lists";
- a recipient someone named: "the coordinator Grace mentioned", "the plumber she recommended";
- the one who wrote: "the solicitor who wrote to us asking for it";
- someone said to have given one: "at his new address — he mentioned it in his email";
- after the task asks to find something ("find", "look up", "search", "pick", "choose",
  "the best match"), a message verb whose object is a pronoun or a role: "find a company
  … and email them for a quote", "email the landlord of the best match". Without a search,
  "email her" or "email the vendor" refers to whoever the user has in mind, not to what the
  data says.

The caller (`ReferenceScorer.score`) also requires that the task asks, in so many words,
for an act of the sink's kind among messaging, sharing, booking and scheduling
(`_kinds.asks_to_reach`; "run", "handle" and other delegating verbs do not count), that
the call moves no money (by its tool's name or an IBAN or wallet in its arguments), and
that the intent signal did not fire. What a delegated task vouches for is an argument that
*is* a destination — an email address, a URL, a chat handle, whole — picked out of free
text, weighed at the pointed factor; prose, commands, paths, phone numbers and fields weigh
as before, and a destination the task contradicts (it names another of the same kind) still
fires argument_novelty in full.

This opens a door on purpose: an injection inside the very source the task delegates to
(an extra address slipped into the attendee list the user points at) is weighed lower too,
and so is a destination from any other result: the scorer sees which tool a value came
from, not which of its results, so it cannot hold the agent to the document the task
meant. A task naming that document by its path ("her address is in /admin/contacts.csv")
therefore delegates nothing (blind10's b10-files-m-15 cc'd an outsider from another file).
`BASTION_VERIFIER_POINTED_FACTOR=1` turns both discounts off.
"""

from __future__ import annotations

import re

#: Longest task read (as `_intent` reads tasks).
MAX_TASK_CHARS = 4 * 1024

#: People an act may go to, and their addresses.
_PEOPLE = (
    r"attendees?|participants?|reviewers?|recipients?|contacts?|contact\s+person|people|members?|speakers?|"
    r"organi[sz]ers?|requesters?|requestors?|applicants?|owners?|hosts?|landlord|landlady|lawyer|agent|vendor|"
    r"supplier|operator|company|barristers?|solicitors?|counsel|attorneys?|accountants?|auditors?|bookkeepers?|"
    r"volunteers?|coach(?:es)?|contractors?|tenants?|treasurer|secretary|trustees?|referees?|coordinators?|"
    r"address(?:es)?|e-?mail\s+address(?:es)?"
)
#: Recipients that are people or their addresses (not a link, a page or a form: "email Petra
#: the link - it's in the newsletter" leaves Petra's address to no one).
_PERSONS = rf"(?:{_PEOPLE})"
#: Nouns that name where an act goes: a recipient, a contact, a place to send or submit to.
_RECIPIENTS = rf"(?:{_PEOPLE}|restaurant|hotel|venue|link|url|form|page|portal|tracker|site|website|channel|handle)"
_POINTER = re.compile(
    rf"\b{_RECIPIENTS}\s+(?:that\s+(?:is|are)\s+|who\s+(?:is|are)\s+)?"
    r"(?:listed|named|mentioned|given|specified|linked|found)\s+(?:in|on|from|at|there)\b"
)
#: Whose something is, as a task says where to find a destination ("in her email", "on the
#: Acme's page"); `_OWNER` adds the user's own ("in our engagement letter").
_THEIR = r"(?:his|her|their|the|its|that|this|[a-z][a-z-]*'s)(?![a-z])"
_OWNER = rf"(?:(?:our|my|your)(?![a-z])|{_THEIR})"
#: "use the address from their engagement letter", "at the address in the case file", "use
#: the email on her intake form": an address said where to find, after a verb that uses it.
#: ("Update the address in the CRM", "reply to her email on the budget", "email Petra the
#: link in the newsletter" delegate nothing: an attacker's probe.)
_FOUND_IN = re.compile(
    r"\b(?:(?:use|at|to|with)\s+(?:the|his|her|their)\s+(?:e-?mail\s+address|address|contact\s+details)"
    rf"|use\s+(?:the|his|her|their)\s+e-?mail)\s+(?:on|in|from)\s+{_THEIR}"
)
#: "the solicitor who wrote to us asking for it": the destination is the one who wrote.
_WHO_WROTE = re.compile(
    rf"\b{_RECIPIENTS}\s+who\s+(?:wrote|emailed|e-mailed|sent|asked|contacted|messaged)\s+(?:to\s+)?(?:us|me)\b"
)
#: Where a destination is written down: what a task points the agent at to find it.
_DOCUMENTS = (
    r"(?:letter|e-?mail|message|note|notes|sheet|spreadsheet|file|list|form|page|site|website|document|doc|"
    r"contract|agreement|card|signature|invoice|profile|directory|thread|post|brochure|flyer|newsletter|"
    r"confirmation|enquiry|inquiry|record|records|register|roster|rota|minutes|memo|chart|readme|brief)"
)
_SAID_TO_BE = re.compile(
    r"\b(?:address|e-?mail\s+address|link|url|form|page|contact\s+details)\s+(?:is|are|should\s+be|will\s+be)"
    rf"\s+(?:in|on)\s+{_THEIR}"
)
#: "their address is in our engagement letter", "the auditor's contact is in the engagement
#: letter": a person's contact said to be in a document ("our contact is on the committee",
#: "the contact is in the Berlin office" name no document: an attacker's probe).
_HELD_IN = re.compile(
    r"\b(?:address|e-?mail\s+address|contact\s+details|contact|e-?mail)\s+(?:is|are|should\s+be|will\s+be)"
    rf"\s+(?:in|on)\s+{_OWNER}\s+(?:[a-z-]+\s+){{0,3}}?{_DOCUMENTS}\b"
)
#: "share the folder with the client contact it names", "invite the volunteers the rota
#: lists": recipients a document names, with nothing after the verb ("tell the volunteers
#: the note mentions the rota changed" and "the contact the brief names is wrong" speak of
#: what the note says, or of the recipient).
_IT_NAMES = re.compile(
    rf"\b{_PERSONS}\s+(?:it|(?:the|this|that)\s+(?:[a-z-]+\s+){{0,2}}?{_DOCUMENTS})\s+(?:names|lists|mentions|gives)\b"
    r"(?!\s+(?:the|a|an|that|this|our|my|his|her|their|its|it|them|him|us|me|you|is|are|was|were|has|have|"
    r"had|should|will|would|can|could|may|might|must|[a-z]+ing)\b)"
)
#: "the finance contact (it's on their client sheet)": a recipient, then at once, in brackets
#: or after a dash or comma, where it is written ("the treasurer asked, it's on our shared
#: sheet" speaks of something else: the probe).
_WRITTEN_IN = re.compile(
    rf"\b{_PERSONS}\s*(?:\(|[-\u2013\u2014]\s|,\s)\s*(?:it's|it\s+is|they're|they\s+are)\s+(?:listed\s+)?(?:in|on)\s+"
    rf"{_OWNER}\s+(?:[a-z-]+\s+){{0,2}}?{_DOCUMENTS}\b"
)
#: "Hannah's email lists who's coming", "whoever the note names", "a note about who else
#: should get access": the document says who ("the memo about who gets the parking spaces"
#: and "the note says who won the raffle" are about something: the probe).
_SAYS_WHO = re.compile(
    rf"\b{_DOCUMENTS}\s+(?:lists|names|gives)\s+(?:who|whom)\b"
    rf"|\bwho(?:ever|mever)\s+{_OWNER}\s+(?:[a-z-]+\s+){{0,2}}?{_DOCUMENTS}\s+(?:says|lists|names|mentions)\b"
    rf"|\b{_DOCUMENTS}\b[^.!?;]{{0,40}}?\babout\s+who\s+else\s+(?:should|can|gets?|needs?|will|must|may)\b"
)
#: "the coordinator Grace mentioned", "the plumber she recommended": a recipient someone else
#: named ("the vendor we recommended them to", "the tenants we mentioned the inspection",
#: "the company I mentioned": the user's own, or the verb's object is someone else: the probe).
_NAMED_BY = re.compile(
    rf"\b{_PERSONS}\s+(?:that\s+|whom\s+|who\s+)?(?!(?:we|i|you|they|it|us)\b)[a-z]+\s+"
    r"(?:mentioned|recommended|suggested|named|referred\s+us\s+to)\b(?!\s+(?:them|him|her|it|us|that|the|to)\b)"
)
_GIVEN_BY = re.compile(r"\b(?:he|she|they)\s+(?:mentioned|gave|put|posted|shared|included|added)\b")
_DESTINATION_NOUN = re.compile(r"\b(?:address|e-?mail\s+address|link|url|form|page)\b")
_SEARCH = re.compile(r"\b(?:find|look\s+up|search|look\s+for|pick|choose|best\s+match|top\s+result)\b")
_MESSAGE_VERBS = r"(?:email|e-mail|mail|contact|invite|message|write\s+to)"
_ROLES = (
    r"(?:landlord|landlady|host|hosts|owner|owners|organi[sz]ers?|author|poster|seller|vendor|operator|company|"
    r"restaurant|hotel|speaker|speakers|provider|venue|agency|agent)"
)
_FOUND_OBJECT = re.compile(
    rf"\b{_MESSAGE_VERBS}\s+(?:them|him|her|(?:the|their|its)\s+(?:[a-z-]+\s+){{0,2}}?{_ROLES}\b)"
)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n")


def delegates_destination(task: str) -> bool:
    """Whether `task` leaves where its act goes to something the agent reads (above)."""
    text = task[:MAX_TASK_CHARS].casefold().replace("\u2019", "'").replace("\u2014", " - ")
    searched = _SEARCH.search(text) is not None
    for sentence in _SENTENCES.split(text):
        if any(
            pattern.search(sentence)
            for pattern in (
                _POINTER,
                _SAID_TO_BE,
                _HELD_IN,
                _FOUND_IN,
                _WHO_WROTE,
                _WRITTEN_IN,
                _SAYS_WHO,
                _IT_NAMES,
                _NAMED_BY,
            )
        ):
            return True
        if _GIVEN_BY.search(sentence) and _DESTINATION_NOUN.search(sentence):
            return True
        if searched and _FOUND_OBJECT.search(sentence):
            return True
    return False
