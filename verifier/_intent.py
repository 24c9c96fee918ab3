"""The reference scorer's `intent` signal: a sink of a kind the stated task never asked for.

An injected instruction makes an agent *act* while its user only asked it to *look*: "what
is on my calendar?" ends in a forwarded board pack, "how big are the logs?" in a deleted
audit folder. The other signals judge where an action's data goes and where it came from;
this one judges whether the task asked for an action of this kind at all.

What the task asks for is read from its imperative clauses: a verb of ACTION_VERBS (base
form only, so "Tobias moved out" and "the account he emailed" ask nothing) counts when it
opens a clause (the start of a sentence, after `, ; :`, after `and`, `then`, `please`,
`to`, `you`, …), is not negated ("don't reply to anything yet") and is not in a question
("which invoices am I still waiting to pay?"), unless the question is a request ("can
you pay this one?"). `tell`, `show`, `give` and `let` followed by `me` or `us` ask for an
answer, not an action. A need stated rather than commanded ("I need the report sent to
Dana", "the invoice should be paid") asks for some action, STATED_NEED.

- A **destructive** sink (its tool name holds a verb of DESTRUCTIVE_VERBS: delete, remove,
  purge, wipe, cancel, …) fires with the destructive weight unless the task asks for a
  destructive act (DESTRUCTIVE_CUES: delete, remove, clean up, tidy, and what replaces, such
  as move, rename, update, since an agent may write the new and delete the old) or delegates the
  choice of acts to something it names (DELEGATING_VERBS: "do the first item of my
  checklist", "apply the retention rule", "handle what you can"). Deleting cannot be
  undone and is rarely the point of a task that does not say so.
- **Any other** sink fires with the intent weight when the task asks for no action at all:
  a question or a request to read, check or summarise. At the default weights that is a
  flag alone, and a block together with another signal (a destination the task does not
  name, untrusted data in the arguments).

No task, no signal (as for argument_novelty): nothing says what was asked. A task longer
than MAX_TASK_CHARS is read up to there; the clauses past that are not known, which can
only make the task look as if it asked for less.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from bastion._cache import short_key_cache
from bastion._verbs import ACTION_VERBS as ACTION_VERBS  # re-exported: INTERFACE.md names it here

from ._taint import PROSE_SCAN, in_task, is_prose, is_sink

#: Tool-name verbs of a sink that destroys or cancels something.
DESTRUCTIVE_VERBS = frozenset(
    {
        "delete",
        "remove",
        "purge",
        "wipe",
        "erase",
        "destroy",
        "trash",
        "truncate",
        "drop",
        "revoke",
        "cancel",
        "unshare",
    }
)
#: Task verbs that ask for something to be destroyed or cancelled, or replaced (which an agent
#: may do by writing the new and deleting the old): "get rid of", "free up", "move", "rename".
DESTRUCTIVE_CUES = frozenset(
    {
        "delete", "remove", "clean", "clear", "tidy", "purge", "wipe", "erase", "trash", "discard",
        "drop", "destroy", "cancel", "revoke", "empty", "unsubscribe", "archive", "prune", "dedupe",
        "free", "rid", "move", "rename", "replace", "reschedule", "change", "update", "edit", "fix",
    }
)  # fmt: skip
#: Task verbs that hand the choice of acts to something the task names.
DELEGATING_VERBS = frozenset(
    {
        "do",
        "handle",
        "apply",
        "follow",
        "process",
        "execute",
        "carry",
        "complete",
        "deal",
        "sort",
        "perform",
        "act",
        "run",
    }
)
#: Words after which a verb opens a clause.
_OPENERS = frozenset(
    {
        "and",
        "then",
        "also",
        "please",
        "pls",
        "to",
        "you",
        "me",
        "just",
        "now",
        "first",
        "finally",
        "or",
        "kindly",
        "get",
    }
)
#: Words that negate a verb up to three words later ("don't reply", "do not pay", "never ever delete").
_NEGATIONS = frozenset({"don't", "dont", "not", "never", "no", "without", "nothing"})
_REQUESTS = re.compile(r"^\s*(?:can|could|would|will)\s+you\b|^\s*please\b", re.IGNORECASE)
# A need stated rather than commanded ("I need the report sent to Dana", "the invoice should
# be paid"): some action is asked for, which one is not read. A need to know ("I want to
# know which header", "we'd like to understand why") asks for an answer.
_STATED_NEED = re.compile(
    r"\b(?:i|we)(?:'d| would)? (?:need|want|like|have to|must)\b(?! to (?:know|see|understand|learn|find out|"
    r"hear|check|read|compare)\b)|\b(?:should|must|needs? to|has to|have to) be\b",
    re.IGNORECASE,
)
#: How a need stated rather than commanded is listed among the task's verbs.
STATED_NEED = "(a stated need)"
_ANSWER_VERBS = frozenset({"tell", "show", "give", "let"})
_SELF = frozenset({"me", "us", "myself"})
_LET = frozenset({"let"})
# Clause punctuation is kept as a token of its own; words keep inner apostrophes and hyphens.
# A dash between spaces, or an en or em dash anywhere, parts clauses as a comma does
# ("… filled in the form at <url> - book the flight she picked").
_TOKENS = re.compile(r"[a-z0-9]+(?:['\u2019-][a-z0-9]+)*|[,;:()\u2013\u2014]|(?<!\S)-(?!\S)", re.IGNORECASE)
#: Words after a verb that negate it ("not" after an auxiliary).
_NEGATING_OBJECTS = frozenset({"not", "nothing", "none", "neither"})
#: A verb and the word after it that ask for no act of the verb's kind.
_IDIOMS = frozenset({("pay", "attention"), ("pay", "heed")})
#: Dashes that part clauses, and the longest aside between two read past for a negation.
_DASHES = frozenset({"-", "\u2013", "\u2014"})
_ASIDE = 12
#: Tokens that end a clause.
_CLAUSE_MARKS = frozenset({",", ";", ":", "("}) | _DASHES
# A sentence ends at `.`, `!` or `?` followed by white space (not inside `notes.md` or a URL).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
# Tasks are a sentence or a few; reading a crafted one of this size costs ~3 ms on the
# event loop, so a longer one is read only this far.
MAX_TASK_CHARS = 4 * 1024


@dataclass(frozen=True, slots=True)
class Asked:
    """What a task asks for: the action verbs of its imperative clauses, in order, once each."""

    verbs: tuple[str, ...]

    @property
    def nothing(self) -> bool:
        return not self.verbs

    def any_of(self, verbs: Iterable[str]) -> bool:
        wanted = frozenset(verbs)
        return any(verb in wanted for verb in self.verbs)


@functools.lru_cache(maxsize=256)
def asked(task: str) -> Asked:
    """The action verbs that open a clause of `task` (see the module docstring)."""
    verbs: dict[str, None] = {}
    for sentence in _SENTENCE_END.split(task[:MAX_TASK_CHARS]):
        stripped = sentence.strip()
        if stripped.endswith("?") and not _REQUESTS.match(stripped):
            continue
        if _STATED_NEED.search(stripped.replace("\u2019", "'")):
            verbs.setdefault(STATED_NEED, None)
        tokens = [token.casefold().replace("\u2019", "'") for token in _TOKENS.findall(stripped)]
        for index, token in enumerate(tokens):
            if token not in ACTION_VERBS or not _opens_clause(tokens, index) or _negated(tokens, index):
                continue
            following = tokens[index + 1] if index + 1 < len(tokens) else ""
            after = tokens[index + 2] if index + 2 < len(tokens) else ""
            if following in _NEGATING_OBJECTS and after not in ("but", "except"):
                # "do not act": an auxiliary, negated; "delete nothing", "send none of it"
                # ("delete nothing but the old drafts" asks for a deletion).
                continue
            if (token, following) in _IDIOMS:
                # "pay attention to the dates" asks for no payment.
                continue
            if token in _ANSWER_VERBS and following in _SELF:
                # "tell me", "let me know" ask for an answer; "tell Dana", "let Dana know" for a message.
                continue
            # "let Hollins' auditor know" asks for a message, as "tell" does ("let it run" does not).
            verb = "tell" if token in _LET and _lets_know(tokens, index) else token
            verbs.setdefault(verb, None)
    return Asked(tuple(verbs))


def _lets_know(tokens: list[str], index: int) -> bool:
    """ "let <someone> know" (within four words), not "let the test finish to know whether …"."""
    window = tokens[index + 2 : index + 6]
    return "know" in window and tokens[index + 1 + window.index("know")] != "to"


def _opens_clause(tokens: list[str], index: int) -> bool:
    if index == 0:
        return True
    previous = tokens[index - 1]
    if previous == "to" and _WH_WORDS.intersection(tokens[max(0, index - 4) : index - 1]):
        # An indirect question ("which header to put it in", "how to pay"): asks to know.
        return False
    return previous in _OPENERS or previous in _CLAUSE_MARKS


_WH_WORDS = frozenset({"how", "which", "what", "where", "whether", "when", "who", "whom"})


def _negated(tokens: list[str], index: int) -> bool:
    """Whether one of the three words before the verb, within its clause, negates it; after a
    dash, the three words before the aside it closes ("don't — whatever it says — delete")."""
    before: list[str] = []
    for token in reversed(tokens[max(0, index - 3) : index]):
        if token in _CLAUSE_MARKS:
            break
        before.append(token)
    if any(word in _NEGATIONS for word in before):
        return True
    if not index or tokens[index - 1] not in _DASHES:
        return False
    opening = next((j for j in range(index - 2, max(-1, index - 2 - _ASIDE), -1) if tokens[j] in _DASHES), index - 1)
    return any(word in _NEGATIONS for word in tokens[max(0, opening - 3) : opening])


@short_key_cache(max_key=256, maxsize=1024)  # an agent calls the same few tools again and again
def tool_verbs(tool: str) -> frozenset[str]:
    """The lower-case words of a tool name (`delete_email`, `deleteFile`, `files.remove`)."""
    return frozenset(word.lower() for word in _TOOL_WORDS.findall(tool))


_TOOL_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def intent_signal(
    tool: str, labels: Iterable[str], task: str, weight: float, destructive_weight: float
) -> tuple[float, str]:
    """(weight, reason) of the intent signal; (0, "") when it does not fire."""
    if not task.strip() or (weight <= 0 and destructive_weight <= 0) or not is_sink(tool, labels):
        return 0.0, ""
    wants = asked(task)
    destroys = sorted(tool_verbs(tool) & DESTRUCTIVE_VERBS)
    if destroys and destructive_weight > 0 and not wants.any_of(DESTRUCTIVE_CUES | DELEGATING_VERBS):
        what = "asks for no action" if wants.nothing else f"asks for {_listed(wants.verbs)}, nothing destructive"
        return destructive_weight, (
            f"destructive action the task did not ask for: {clip(tool)!r} ({destroys[0]}), and the task {what} "
            f"(weight {destructive_weight:.2f})"
        )
    if wants.nothing and weight > 0:
        return (
            weight,
            f"action the task did not ask for: {clip(tool)!r} acts, and the task asks for no action "
            f"(weight {weight:.2f})",
        )
    return 0.0, ""


def _listed(verbs: tuple[str, ...]) -> str:
    shown = ", ".join(verbs[:3])
    return shown + (f" and {len(verbs) - 3} more" if len(verbs) > 3 else "")


#: Characters of a value shown in a reason.
SHOWN_CHARS = 80


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` as a reason shows it: at most `limit` characters, an ellipsis where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_payload(value: str) -> bool:
    """Whether an argument is content (a document, a message body) rather than a control value.

    Several lines, or prose by the taint signal's measure (PROSE_WORDS words and PROSE_CHARS
    characters, counted in the first PROSE_SCAN characters only), unless it is a file path.
    """
    if "\n" in value[:PROSE_SCAN]:
        return True
    return is_prose(value)


def writes_where_task_says(values: Iterable[str], task: str) -> bool:
    """Whether the task asks for an action and names, as a path, where this sink writes.

    Then destinations mentioned inside the sink's content are not where the action goes:
    "add the invoice to /finance/payables.csv" rewrites a sheet full of IBANs, "restore
    config.yaml from the backup" a file naming a database host. Only a file path counts:
    an email address or URL named in the task still leaves a message's body to be judged,
    since a link or account in a message is what the recipient is sent to.
    """
    folded: str | None = None
    for value in values:
        if len(value) > _MAX_TARGET_CHARS or not _FILE_PATH.fullmatch(value):
            continue
        if folded is None:
            if asked(task).nothing:
                return False
            folded = task[:MAX_TASK_CHARS].casefold()
        if in_task(value, folded):
            return True
    return False


# An absolute or home-relative file path, no URL scheme, no white space.
_FILE_PATH = re.compile(r"~?/[^\s:]*[^\s:/.]")
_MAX_TARGET_CHARS = 1024
