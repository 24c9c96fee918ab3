"""Provenance: which earlier result a call's arguments took their data from (DESIGN §1 ⑧, §6).

After a forwarded action completes, the string values of its answer (the JSON-RPC
`result`: MCP `content[].text` and `structuredContent`, an A2A task's parts, …) are
fingerprinted into the workflow's `Fingerprints`, each labelled with a `Source`: the node,
the tool (`server__tool`), the path in the result (`content[0].text`,
`structuredContent.sender`), whether the tool is trusted, and whether the value was a
short structured field or free text. Before a later call is decided, its string
arguments are looked up: a match becomes an INFORMED_BY edge hint on the call's event
and labels in `ctx.taint` for policy and verifier (format below).

Fingerprints, as one would compare two texts by hand, after normalising both sides
(case-folded, runs of whitespace collapsed to one space):
- *shingles*: the hash of every SHINGLE-character window of free text (every STRIDE-th
  window once a result is long, so each result costs at most MAX_RESULT_SHINGLES);
  an argument is matched by every one of its windows, so a copied run of at least
  SHINGLE + STRIDE - 1 characters is always found, and how much of the argument the
  matching windows cover is its tainted fraction;
- *exact values*: each short string field (MIN_VALUE..MAX_VALUE characters) that is not
  a one-word constant (`completed`, `ROLE_USER`: enums any call may repeat), and each
  identifier-like token inside free text or a short field with words (containing a digit,
  `@` or `://`, or a run of digit groups as IBANs and phone numbers are printed),
  compacted (spaces and hyphens dropped when what remains is letters and digits with a
  digit). These find a recipient or an IBAN too short for shingles.

Each untrusted result also keeps its *identity* (who or where it came from: the URL or
path the call read, the sender of an email), so that data from a result the stated task
points at is labelled `named:` (`_pointers.py`).

The workflow's stated task (`ctx.task`) is trusted: data it contains is never tainted,
whatever result also held it. A tool is untrusted unless the active policies declare
`taint.untrusted_sources` and it matches none of them (default: every result is untrusted).

Values under id keys (`id`, `taskId`, `message_id`) are handles the protocol passes
back (an A2A task id to `GetTask`, an email's id to reply to), not fingerprinted.

Bounds, so that no result stalls the event loop and no workflow grows the proxy:
the answer was parsed only when its body fit the result tap's 256 KiB tail
(`_results.py`) — an untrusted answer larger than that is remembered as *unread*
(newest MAX_UNREAD per workflow), and every later call with string arguments carries
`unread:<server__tool>:<bytes>` with `untrusted` and an INFORMED_BY edge to it, because
its data can no longer be traced (padding a result must not launder it); at most
MAX_RESULT_VALUES values, MAX_RESULT_CHARS characters (whitespace runs counted as one) and
MAX_RESULT_KEYS identifiers of each result are read, and one cut by these bounds is
remembered as unread too (`partial`); encoded payloads (a `data`, `blob` or `bytes`
string) and `_meta` are skipped; a
workflow keeps at most MAX_WORKFLOW_PRINTS fingerprints, the oldest result's prose
evicted first, then its identifiers (an untrusted result so forgotten whole is remembered
as unread: pages read after an injected one must not launder it), and all together
MAX_TOTAL_PRINTS. Lookup reads
at most MAX_ARGUMENT_CHARS characters of a call's arguments; a
workflow with no fingerprints costs a length check.

`ctx.taint` labels (documented for verifiers in verifier/INTERFACE.md):
  `untrusted`                      some argument holds data from an untrusted result
  `source:<server__tool>`          a result the arguments hold data from
  `unread:<server__tool>:<bytes>`  an untrusted result too large to fingerprint, or read
                                   only in part (cut by the bounds below), came earlier
  `sink`                           the active policies list this tool in `taint.sinks`
  `named:<path>`                   the argument's data came from an untrusted result the task
                                   points at, and leads to no other site (`_pointers.py`)
  `byname:<path>`                  given with `named:` when the task meets that result only
                                   through words of its sender's display name, which the
                                   sender writes freely (no payment is vouched for by it)
  `visited:<path>`                 the argument's data came from a page whose URL the agent
                                   asked for with no untrusted data in that call, and leads
                                   to no site but that page's or the task's (`_pointers.py`)
  `rerouting:<path>:<cue>`         the argument's data came from an untrusted result, and
                                   that result or another the workflow still holds says
                                   money should now go elsewhere ("our bank details have
                                   changed", an escrow account; bastion/_rerouting.py);
                                   <cue> is the phrase, escaped
  `lookalike:<path>:<domain>:<seen>`
                                   a domain in the argument, or of the source of its data,
                                   or of the sender of the message whose id it passes (a
                                   reply by id), looks like another the workflow's results
                                   or task showed (`_lookalike.py`: `meridian-prints` /
                                   `meridian-print`)
  `unseen:<path>`                   the argument is, or holds, an IBAN that neither the task
                                   nor any result the workflow holds wrote, and none of its
                                   results went unread or held an image or file provenance
                                   cannot read: an account the agent put together itself
  `invoiced:<id>:<amount>`          a string argument names (whole, or as one of its words)
                                   the invoice <id> (lower-case letters and digits), for
                                   which results stated <amount> at least: the least any
                                   stated (proxy/_invoices.py)
  `notice:<path>:<cue>`            the argument, under an id key, passes a message an
                                   result (trusted or not) showed with a security notice's
                                   headline ("New sign-in from Lagos", "Your recovery
                                   codes"; bastion/_notices.py); <cue> is the phrase, escaped
  `arg:<path>:<trust>:<server__tool>:<result path>:<field|text>:<fraction>`
                                   per argument: trust is `trusted` or `untrusted`;
                                   `field` a whole short value of the result, `text`
                                   data inside free text; fraction of the argument
                                   covered, 0.00-1.00. In <path> and <result path>,
                                   `%` and `:` are written `%25` and `%3A`.
"""

from __future__ import annotations

import collections
import fnmatch
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bastion.v1 import graph_pb2

from ._prints import (
    MAX_CUES,
    MAX_HANDLES,
    MAX_REPORTED,
    MAX_RESULT_KEYS,
    MAX_RESULT_SHINGLES,
    MAX_WORKFLOW_PRINTS,
    Fingerprints,
    Match,
    Source,
    Unread,
)
from ._textprints import normalise
from ._walk import strings

__all__ = [
    "MAX_ARGUMENT_CHARS",
    "MAX_CUES",
    "MAX_HANDLES",
    "MAX_RESULT_KEYS",
    "MAX_RESULT_SHINGLES",
    "MAX_TOTAL_PRINTS",
    "MAX_WORKFLOW_PRINTS",
    "NOTHING",
    "Annotation",
    "Fingerprints",
    "Match",
    "Provenance",
    "Source",
    "TaintSettings",
    "Unread",
    "escape",
    "read_arguments",
]

#: Fingerprints all workflows of one proxy keep together (≈ 100 bytes each): past it, the
#: tenant holding most gives back first, its least recently recorded workflow its oldest
#: result, remembered as unread (`Provenance._trim`). Without it, 10,000 workflows of 8,192
#: fingerprints each could take gigabytes.
MAX_TOTAL_PRINTS = 1_000_000
#: Characters of a call's arguments looked up (all strings together).
MAX_ARGUMENT_CHARS = 16 * 1024
#: Values of a call's arguments walked to find its strings: as many as the proxy lets a call
#: hold by default (BASTION_MAX_ARGUMENT_VALUES), so that padding values cannot push a
#: recipient past the walk (at 1,000, 1,200 zeros before `cc` did).
MAX_ARGUMENT_VALUES = 10_000
#: Arguments are walked whole (their values bounded) and read shortest first (`match`).
_UNBOUNDED = 1 << 62


@dataclass(frozen=True, slots=True)
class Annotation:
    """What a call's arguments were found to hold: labels for ctx.taint, edges for its event."""

    labels: tuple[str, ...] = ()
    edges: tuple[tuple[str, int, str], ...] = ()


NOTHING = Annotation()


def _length(item: tuple[str, str]) -> int:
    return len(item[1])


def read_arguments(arguments: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, normalised text) of a call's strings, shortest first, within MAX_ARGUMENT_CHARS:
    read once per call, for matching, look-alikes, and whether it holds any string at all
    (data read elsewhere can only arrive as one). Shortest first: destinations are short,
    and a long body before them must not use up the budget they would have been read in
    (an attacker's probe hid `cc`)."""
    read: list[tuple[str, str]] = []
    left = MAX_ARGUMENT_CHARS
    for path, text in sorted(strings(arguments, MAX_ARGUMENT_VALUES, _UNBOUNDED, skip=frozenset()), key=_length):
        if left <= 0:
            break
        norm = normalise(text[:left])
        left -= len(norm)
        read.append((path, norm))
    return read


def escape(text: str) -> str:
    """A label component: `%` and `:` percent-encoded, so labels split on `:` unambiguously."""
    return text.replace("%", "%25").replace(":", "%3A")


def _glob(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """Policy tool patterns (`*`, `?`, case-insensitive) as one regex; None when there are none."""
    # fnmatch's translation keeps `*a*a*b` from backtracking polynomially (as the policy
    # engine's does); policy tool patterns hold no `[`, so its classes never apply.
    parts = [fnmatch.translate(pattern) for pattern in patterns]
    return re.compile("|".join(f"(?:{part})" for part in parts), re.IGNORECASE) if parts else None


@dataclass(frozen=True, slots=True)
class TaintSettings:
    """What the active policies say in `taint:` (the union over policies)."""

    untrusted_sources: tuple[str, ...] = ()
    sinks: tuple[str, ...] = ()


_NO_SETTINGS = TaintSettings()


def _no_settings() -> TaintSettings:
    return _NO_SETTINGS


class Provenance:
    """Fingerprints results and annotates calls; `settings` gives the active policies' `taint:`."""

    def __init__(
        self, settings: Callable[[], TaintSettings] | None = None, *, max_total: int = MAX_TOTAL_PRINTS
    ) -> None:
        self._settings = settings or _no_settings
        self._seen: TaintSettings | None = None
        self._untrusted: re.Pattern[str] | None = None
        self._sinks: re.Pattern[str] | None = None
        self._max_total = max_total
        #: Per tenant, every live workflow's fingerprints, least recently recorded first, with
        #: the size counted for it; an entry leaves when its workflow is forgotten (weakly held).
        self._holders: dict[str, OrderedDict[int, tuple[weakref.ref[Fingerprints], int]]] = {}
        #: Fingerprints held per tenant: the budget is taken back from the largest first.
        self._tenants: dict[str, int] = {}
        self.total = 0

    def _refresh(self) -> None:
        settings = self._settings()
        if settings is not self._seen:
            self._seen = settings
            self._untrusted = _glob(settings.untrusted_sources)
            self._sinks = _glob(settings.sinks)

    def trusted(self, tool: str) -> bool:
        """Untrusted unless policies name their untrusted sources and `tool` is none of them."""
        self._refresh()
        return self._seen is not None and bool(self._seen.untrusted_sources) and not self._untrusted_match(tool)

    def _untrusted_match(self, tool: str) -> bool:
        return self._untrusted is not None and self._untrusted.fullmatch(tool) is not None

    def record(
        self,
        prints: Fingerprints,
        node_id: str,
        tool: str,
        result: Any,
        read: tuple[str, ...] = (),
        size: int = 0,
        *,
        tenant: str = "",
        chosen: bool = False,
        arguments: Any = None,
    ) -> int:
        """Fingerprint a completed action's parsed result (`size` bytes), its call having read
        `read` (`_pointers.read_from` of its arguments; `chosen`: with no untrusted data in
        them), within the proxy-wide budget, the workflow being `tenant`'s. What the result
        repeats of the call's own `arguments` is not its data (`Fingerprints.add`)."""
        if result is None:
            return 0
        # Read only when the result has something to fingerprint (most answers of the hot path do not).
        echoes = (lambda: [norm for _, norm in read_arguments(arguments)]) if isinstance(arguments, dict) else None
        added = prints.add(
            node_id, tool, result, trusted=self.trusted(tool), read=read, size=size, chosen=chosen, echoes=echoes
        )
        key = id(prints)
        holders = self._holders.setdefault(tenant, OrderedDict())
        held = holders.pop(key, None)
        counted = 0
        if held is None:
            ref = weakref.ref(prints, lambda _, key=key, tenant=tenant: self._forget(tenant, key))  # type: ignore[misc]
        else:
            ref, counted = held
        holders[key] = (ref, len(prints))  # now the most recently recorded
        self._count(tenant, len(prints) - counted)
        self._trim()
        return added

    def record_unread(self, prints: Fingerprints, node_id: str, tool: str, size: int, *, partial: bool = False) -> None:
        """Remember that `tool`'s result at `node_id` (`size` bytes) was too large to fingerprint.

        Skipping it silently would let anyone who controls an untrusted source (a web page,
        an email) launder data past provenance by padding it over the tail: its data is
        then untraceable, and later calls are labelled so (`unread:`), not left clean."""
        if not self.trusted(tool):
            prints.unread.append(Unread(node_id, tool, size, partial))
        else:
            prints.note_blind()

    def _forget(self, tenant: str, key: int) -> None:
        holders = self._holders.get(tenant)
        held = holders.pop(key, None) if holders is not None else None
        if held is not None:
            self._count(tenant, -held[1])

    def _count(self, tenant: str, delta: int) -> None:
        self.total += delta
        left = self._tenants.get(tenant, 0) + delta
        if left > 0 or self._holders.get(tenant):
            self._tenants[tenant] = left
        else:
            self._tenants.pop(tenant, None)
            self._holders.pop(tenant, None)

    def _trim(self) -> None:
        """Take the budget back from the tenant holding most, its least recently recorded
        workflow first: a tenant that floods the proxy with results evicts its own
        fingerprints before another tenant's (an attacker's co-tenant could otherwise push a
        victim's injected IBAN out and pay it untraced). Every tenant keeps at least an
        even share of the budget."""
        while self.total > self._max_total and self._tenants:
            tenant = max(self._tenants, key=self._tenants.__getitem__)
            holders = self._holders.get(tenant)
            if not holders:
                self._count(tenant, -self._tenants[tenant])
                continue
            key, (ref, counted) = next(iter(holders.items()))
            prints = ref()
            gone = prints.evict_oldest() if prints is not None else 0
            if not gone or gone >= counted:
                holders.pop(key)
                self._count(tenant, -counted)
            else:
                holders[key] = (ref, counted - gone)
                self._count(tenant, -gone)

    def annotate(self, prints: Fingerprints | None, tool: str, arguments: dict[str, Any], task: str) -> Annotation:
        """Labels and INFORMED_BY edges for a call with `arguments`, given the workflow's prints."""
        if prints is None or not arguments or not (len(prints) or prints.unread):
            return self._sink_only(tool)
        values = read_arguments(arguments)
        matches = prints.match(values, task)
        matches.sort(key=lambda m: (m.source.trusted, -m.fraction, m.path))
        unread = list(prints.unread) if prints.unread and values else []
        # With or without traced data: a look-alike the agent wrote out itself ("meridian-prints
        # dot example") traces to no result, and is still one (a reviewer's probe).
        alike = tuple(
            f"lookalike:{escape(path)}:{name}:{like}" for path, name, like in prints.lookalikes(values, matches)
        )
        # A message passed by id is no data the call carries, so it traces to nothing; what
        # it acts on may still be a security notice (`notices`).
        alike += tuple(f"notice:{escape(path)}:{escape(cue)}" for path, cue in prints.notices(values, arguments))
        # An IBAN nothing showed: not traced, and not in the task either.
        alike += tuple(f"unseen:{escape(path)}" for path in prints.unseen(values))
        # The invoices the call names, with what their results stated (proxy/_invoices.py).
        alike += tuple(f"invoiced:{identifier}:{amount:.2f}" for identifier, amount in prints.invoiced(values))
        if not matches and not unread:
            return Annotation(alike + self._sink_only(tool).labels) if alike else self._sink_only(tool)
        labels: dict[str, None] = {}
        if unread or any(not m.source.trusted for m in matches):
            labels["untrusted"] = None
        for m in matches:
            labels[f"source:{m.source.tool}"] = None
        for result in unread:
            labels[f"source:{result.tool}"] = None
        if self._is_sink(tool):
            labels["sink"] = None
        edges: dict[tuple[str, str], tuple[str, int, str]] = {}
        for result in unread:
            labels[f"unread:{result.tool}:{result.size}"] = None
            reason = f"may hold data from {result.tool}'s result of {result.size} bytes, {result.why}"
            edges.setdefault((result.node_id, "$"), (result.node_id, graph_pb2.INFORMED_BY, reason))
        # A path two arguments share (a key holding `.`) cannot say which one was vouched for.
        paths = collections.Counter(m.path for m in matches)
        for m in matches[:MAX_REPORTED]:
            source = m.source
            trust = "trusted" if source.trusted else "untrusted"
            labels[
                f"arg:{escape(m.path)}:{trust}:{source.tool}:{escape(source.path)}:{source.kind}:{m.fraction:.2f}"
            ] = None
            named = m.named and paths[m.path] == 1
            visited = m.visited and paths[m.path] == 1
            if named:
                labels[f"named:{escape(m.path)}"] = None
                if m.by_name:
                    labels[f"byname:{escape(m.path)}"] = None
            elif visited:
                labels[f"visited:{escape(m.path)}"] = None
            if not source.trusted and (cue := prints.rerouting(source.node_id)):
                labels[f"rerouting:{escape(m.path)}:{escape(cue)}"] = None
            reason = f"argument {m.path!r} ({round(m.fraction * 100)}%) from {source.tool} {source.path}"
            if named:
                reason += " (a result the task points at)"
            elif visited:
                reason += " (the site of a page the agent went to on its own)"
            edges.setdefault((source.node_id, m.path), (source.node_id, graph_pb2.INFORMED_BY, reason))
        labels.update(dict.fromkeys(alike))
        return Annotation(tuple(labels), tuple(edges.values()))

    def _sink_only(self, tool: str) -> Annotation:
        return Annotation(("sink",)) if self._is_sink(tool) else NOTHING

    def _is_sink(self, tool: str) -> bool:
        self._refresh()
        return self._sinks is not None and self._sinks.fullmatch(tool) is not None
