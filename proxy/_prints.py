"""One workflow's fingerprints: what its results held, where each came from and who sent
it, bounded. The store behind provenance; how results are read, what the labels mean and
the bounds are in `_provenance.py`'s docstring, which annotates calls with this."""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bastion._iban import Checks, is_iban
from bastion._notices import notice_cue
from bastion._rerouting import result_cue

from ._invoices import MAX_STATED, Groups, named, note_field, note_number, stated
from ._lookalike import MAX_PER_VALUE, SeenDomains, domains_in, first_domains
from ._pointers import IDENTITY_KEYS, PATH_TENANTS, PUNCTUATION, Identity, identity, references, stays_within, top_key
from ._textprints import (
    MIN_VALUE,
    SHINGLE,
    exact_key,
    is_destination,
    is_prose_key,
    normalise,
    shingle_hashes,
    tokens,
)
from ._walk import Walk

#: What `OrderedDict.pop` answers for a key it does not hold (`Fingerprints._keep`).
_ABSENT = object()
#: Whether a text holds a digit (an IBAN spelled in one word needs some).
_DIGIT_IN = re.compile(r"[0-9]").search
#: Shingles one result may add; a longer result is sampled with a stride.
MAX_RESULT_SHINGLES = 1024
#: Exact values one result may add (identifiers in free text, short fields).
MAX_RESULT_KEYS = 512
#: Fingerprints (shingles and exact values) one workflow keeps; oldest results evicted first.
MAX_WORKFLOW_PRINTS = 8192
#: Longest value matched exactly (normalised), shortest is MIN_VALUE (`_textprints.py`).
MAX_VALUE = 256
#: Shortest run of shingle-covered characters reported (unless the whole argument is covered).
MIN_RUN = 20
#: Edges and `arg:` labels one call gets at most.
MAX_REPORTED = 8
#: Domains untrusted results wrote, kept per workflow (`Fingerprints._shown`).
MAX_SHOWN = 1024
#: Message handles kept per workflow (`Fingerprints._handles`), and keys naming a sender.
MAX_HANDLES = 256
#: Security notices one result may add (`Fingerprints._notices`): no one result, which may
#: be an attacker's listing, pushes out all the others.
MAX_NOTICES_PER_RESULT = 64
#: Ids read from one argument ("m-1,m-2,…", a list) and numeric ids read from a call.
_MAX_IDS_IN_ONE = 64
_MAX_NUMERIC_IDS = 256
#: Characters of an argument read for an IBAN inside it (`unseen`): a labelled account.
_MAX_LABELLED = 64
_SENDER_KEYS = frozenset({"sender", "from", "reply_to", "replyTo", "from_address", "fromAddress"})
#: Keys of a message's id that `_is_id_key` does not read as one (an IMAP uid).
_OTHER_ID_KEYS = frozenset({"uid", "UID", "msgid", "msgId", "messageid"})
#: Keys of a message's headline (case-folded), read for a security notice (`Fingerprints._notices`).
_HEADLINE_KEYS = frozenset({"subject", "title", "headline"})
#: Rerouting cues a workflow keeps (its results', newest last; one per result at most).
MAX_CUES = 64
#: Source fields (`sender`, `url`, …) of one result kept for its identity.
MAX_NAMED_BY = 8
#: Characters of identity data (what a call read, its result's source fields) counted as one
#: fingerprint against the budgets, so that it cannot grow a workflow past them.
IDENTITY_CHARS_PER_PRINT = 100
#: Unread results a workflow remembers (the newest).
MAX_UNREAD = 8


@dataclass(frozen=True, slots=True)
class Source:
    """Where fingerprinted data came from."""

    node_id: str
    tool: str
    path: str
    trusted: bool
    #: "field": a whole short value; "text": inside free text.
    kind: str


@dataclass(frozen=True, slots=True)
class Match:
    """One argument holding data from one source."""

    path: str
    source: Source
    fraction: float
    #: The task points at the result the data came from (`_pointers.py`).
    named: bool = False
    #: The data came from a page the agent went to on its own and stays on its site (`_pointers.py`).
    visited: bool = False
    #: `named` only through words of the sender's display name (`Identity.by_name_only`).
    by_name: bool = False


@dataclass(frozen=True, slots=True)
class Unread:
    """An untrusted result not fingerprinted, or not all of it: too large to read, or longer
    or wider than the bounds of one result's reading (`partial`)."""

    node_id: str
    tool: str
    size: int
    partial: bool = False
    #: Its fingerprints were dropped to keep its workflow's or the proxy-wide budget
    #: (`Fingerprints.record`, `Provenance._trim`).
    forgotten: bool = False

    @property
    def why(self) -> str:
        if self.forgotten:
            return "forgotten under memory pressure"
        return "read only in part" if self.partial else "too large to trace"


@dataclass(slots=True)
class _Held:
    """What one result added to a workflow's fingerprints, and whose it was."""

    shingles: list[int]
    exact: list[str]
    tool: str
    trusted: bool
    size: int
    #: The domains its source fields and its call's locators name (`_lookalike.py`).
    domains: tuple[str, ...] = ()
    #: The rerouting language an untrusted result holds, if any (bastion/_rerouting.py; at
    #: most 48 characters, kept with the result's prints).
    rerouting: str = ""


@dataclass(slots=True, weakref_slot=True)
class Fingerprints:
    """One workflow's fingerprints, bounded by `capacity` (oldest result evicted first)."""

    capacity: int = MAX_WORKFLOW_PRINTS
    _shingles: dict[int, Source] = field(default_factory=dict)
    _exact: dict[str, Source] = field(default_factory=dict)
    #: node id → the keys its result added, oldest first.
    _results: OrderedDict[str, _Held] = field(default_factory=OrderedDict)
    #: Results whose shingles are still held, oldest first: evicted before any identifier.
    _prose: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _size: int = 0
    #: The most entries the two indexes held since they were last rebuilt (`_shrink`).
    _peak: int = 0
    _task: str = ""
    _task_shingles: frozenset[int] = frozenset()
    _task_exact: frozenset[str] = frozenset()
    _task_refs: frozenset[str] = frozenset()
    #: node id → (its cost in fingerprints, who or where its untrusted result came from).
    #: Kept as read (what the call read, the result's source fields) and worked out into an
    #: `Identity` the first time a later argument matches the result: most never are.
    _identity: dict[str, tuple[int, Identity | tuple[tuple[str, ...], tuple[tuple[str, str], ...], bool]]] = field(
        default_factory=dict
    )
    #: Untrusted results too large to read (over the result tap's tail): their data cannot
    #: be traced, so every later call with string arguments says so (newest MAX_UNREAD).
    unread: deque[Unread] = field(default_factory=lambda: deque(maxlen=MAX_UNREAD))
    #: Domains the results and the task showed, for `lookalike:` labels (one print each).
    _domains: SeenDomains = field(default_factory=SeenDomains)
    #: Registrable domains any untrusted result wrote (newest MAX_SHOWN): a page the agent
    #: then fetches there was not chosen on its own (`add(chosen=)`), however short the name
    #: (a reviewer's probe: `ferry-bikes.example` in a result is too short to trace, and the
    #: fetch of it counted as the agent's own choice). Once more were written than are kept,
    #: no page counts as chosen (`_shown_overflow`).
    _shown: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _shown_overflow: bool = False
    #: An untrusted result's message handles (`id` beside a `sender` or `from`) → the
    #: sender's domain, newest MAX_HANDLES: a reply by id goes to that sender, though no
    #: address is among its arguments (`lookalikes`).
    _handles: OrderedDict[str, str] = field(default_factory=OrderedDict)
    #: Message handles whose headline (`subject`, `title`) reads as a security notice → its
    #: cue, from any result, newest MAX_HANDLES: a call passing one by id acts on a notice an
    #: account takeover wants gone (`notices`, bastion/_notices.py).
    _notices: OrderedDict[str, str] = field(default_factory=OrderedDict)
    #: Invoices' identifiers (`_invoices.id_key`) → the least amount any result stated for
    #: one, newest MAX_STATED (`invoiced`, proxy/_invoices.py).
    _stated: OrderedDict[str, float] = field(default_factory=OrderedDict)
    #: Whether some result held what provenance could not read: an encoded payload (an
    #: image, a PDF), a part cut by the bounds, a trusted result too large or forgotten.
    #: An IBAN the agent read there traces to nothing (`unseen`); untrusted ones are also
    #: remembered in `unread`.
    _blind: bool = False
    #: Untrusted results that said money should now go elsewhere (node id → cue, newest
    #: last): while one is held, every argument from an untrusted result is labelled with
    #: it, since "our account changed, the details follow" and the email with the IBAN are
    #: two results (a blind pack's attack; an attacker's probe).
    _cues: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        node_id: str,
        tool: str,
        result: Any,
        *,
        trusted: bool,
        read: tuple[str, ...] = (),
        size: int = 0,
        chosen: bool = False,
        echoes: Callable[[], Sequence[str]] | None = None,
    ) -> int:
        """Fingerprint `result` (a parsed JSON value, `size` bytes as it came) as `tool`'s
        answer at `node_id`, whose call read `read` (`_pointers.read_from` of its arguments;
        `chosen`: with no untrusted data in them); return how many. An untrusted result the
        bounds cut is also remembered as unread: a source padded past them must not launder
        what follows the padding.

        `echoes`: the call's own string arguments, normalised (`read_arguments`), read only
        when the result has prints. What the
        result only repeats of them ("deleted /loop/same", a search's query in its hits) is
        the agent's data, not the tool's, and is not fingerprinted as this result's: a
        second delete of the same path was traced to the first one's answer and blocked.
        Data the agent took from an earlier result is still traced to that one."""
        shingles: dict[int, Source] = {}
        exact: dict[str, Source] = {}
        named_by: list[tuple[str, str]] = []
        # Several content blocks (a search answering one per hit): no block is *the* source.
        blocks = result.get("content") if isinstance(result, dict) else None
        one_source = not (isinstance(blocks, list) and len(blocks) > 1)
        numbers: list[tuple[str, float]] = []
        invoices: Groups = {}  # an object's path → its identifiers and amounts
        walk = Walk(result, parse_json=True, numbers=numbers, data_keys=_is_iban_key)
        cut = False
        checks = Checks()  # one budget of IBAN checksums for the whole result
        shown: dict[str, None] = {}
        handles: dict[str, list[str]] = {}  # an object's path → [its id, its sender, its headline]
        texts: list[str] = []  # an untrusted result's values, read for rerouting language
        iban_field = False
        # Decided before this result's own domains are noted: what its call read was chosen or not.
        chosen = chosen and not trusted and not self._shown_before(read)
        for path, text in walk:
            norm = normalise(text)
            names: dict[str, None] | None = None
            # Read for every object, bounded by the walk's values alone: a cap here was
            # filled first by an attacker's own objects (an attacker's probe).
            _note_handle(handles, path, text)
            note_field(invoices, path, text)
            if not trusted and "." in norm:
                # Every domain an untrusted value writes, ids included (`thread_id`), and
                # the whole value: the agent may be sent to any of them (`_shown_before`).
                names = dict.fromkeys(domains_in(norm))
                self._note_shown(names)
            if _is_handle(path, norm):
                continue
            if not trusted:
                texts.append(norm)
            if (
                not trusted
                and len(named_by) < MAX_NAMED_BY
                and (one_source or not path.startswith("content"))
                and path.rpartition(".")[2].casefold() in IDENTITY_KEYS
            ):
                named_by.append((path, text[:MAX_VALUE]))
            if "." in norm and len(shown) < MAX_PER_VALUE:
                # The value's first domains, for look-alikes (an untrusted one's read above).
                first = itertools.islice(names, MAX_PER_VALUE) if names is not None else first_domains(norm)
                shown.update(dict.fromkeys(first))
            # Short, or without spaces (a URL): a field; otherwise free text.
            kind = "field" if len(norm) <= MAX_VALUE and (len(norm) <= 64 or " " not in norm) else "text"
            if kind == "field" and is_prose_key(path) and is_destination(norm):
                # A destination alone in what its author writes freely (an email's subject
                # that is just an IBAN): the sender's text, not a field the tool defines.
                kind = "text"
            source = Source(node_id, tool, path, trusted, kind)
            if kind == "text":
                cut |= _add_tokens(exact, norm, source, checks)
            elif len(norm) >= MIN_VALUE and not _is_constant(norm):
                if len(exact) >= MAX_RESULT_KEYS:
                    cut = True
                    continue
                key = exact_key(norm)
                iban_field = iban_field or (not trusted and 15 <= len(key) <= 34 and is_iban(key))
                # A whole field says more than the same token inside free text.
                if (held := exact.get(key)) is None or held.kind == "text":
                    exact[key] = source
                if " " in norm:
                    # A short text with words ("Pay to NL90 LDRU 7451 1350 04 now") is a field as
                    # a whole, but the identifiers inside it are data inside text all the same.
                    cut |= _add_tokens(exact, norm, Source(node_id, tool, path, trusted, "text"), checks)
                elif not key.isalnum() and _DIGIT_IN(norm):
                    # One word with separators ("DE89/3704/0044/…", "(DE89-3704-…)"): an IBAN
                    # it spells, and the identifiers in its cells (an attacker's probe); alone in
                    # what its author writes freely (a body), the sender's text as above.
                    spelt = Source(node_id, tool, path, trusted, "text") if is_prose_key(path) else source
                    cut |= _add_tokens(exact, norm, spelt, checks)
            budget = MAX_RESULT_SHINGLES - len(shingles)
            if budget > 0 and len(norm) >= SHINGLE:
                for value in shingle_hashes(norm, budget):
                    shingles.setdefault(value, source)
        cut |= checks.exhausted
        if len({path for path, _ in named_by}) < len(named_by):
            # A source field given twice (`"from"` repeated): which one the agent read is
            # unknown, so the fields vouch for no source.
            named_by.clear()
        if (cut or walk.cut) and not trusted:
            self.unread.append(Unread(node_id, tool, size, partial=True))
        if cut or walk.cut or walk.opaque:
            # What went unread of a trusted result may hold the account a call pays too.
            self._blind = True
        for path, number in numbers:
            if number.is_integer():
                _note_handle(handles, path, str(int(number)))  # an IMAP uid: only where no string id is
            if invoices:
                note_number(invoices, path, number)
        if echoes is not None and (shingles or exact):
            _drop_echoes(shingles, exact, echoes())
        added = len(shingles) + len(exact)
        if not added:
            self._keep_ids(handles, invoices, trusted)
            return 0
        self._results.pop(node_id, None)
        self._cues.pop(node_id, None)
        self._prose.pop(node_id, None)
        self._forget_identity(node_id)
        read = () if trusted else read
        chars = sum(map(len, read)) + sum(len(path) + len(text) for path, text in named_by)
        cost = 1 + chars // IDENTITY_CHARS_PER_PRINT if read or named_by else 0
        while self._results and self._size + added + cost > self.capacity:
            gone, evicted = self._evict()
            if gone not in self._results:  # the whole result, identifiers too
                self._remember(gone, evicted)
        # After the eviction: a workflow evicted whole forgets what was kept beside its
        # results, and this result's own must survive that.
        self._keep_ids(handles, invoices, trusted)
        # Who sent it or where it is: what the call read and its top-level source fields (a
        # search's ten hits each have a `url`, and none is the result's own).
        named = (*read, *(text for path, text in named_by if top_key(path) is not None))
        entry = _Held([], [], tool, trusted, size, tuple(dict.fromkeys(_domains_of(named))) if named else ())
        if texts:
            # Results that speak of no IBAN nor bank cost three substring searches here; a
            # 1.2 KB email that does, ≈ 50-90 µs (bastion/_rerouting.py).
            entry.rerouting = result_cue(texts, checks.found > 0 or iban_field)
            if entry.rerouting:
                self._cues.pop(node_id, None)
                self._cues[node_id] = entry.rerouting
                if len(self._cues) > MAX_CUES:
                    self._cues.popitem(last=False)
        for value, source in shingles.items():
            if _takes(self._shingles.get(value), source):
                self._shingles[value] = source
                entry.shingles.append(value)
        for key, source in exact.items():
            if _takes(self._exact.get(key), source):
                self._exact[key] = source
                entry.exact.append(key)
        self._results[node_id] = entry
        if entry.shingles:
            self._prose[node_id] = None
        if shown or entry.domains:
            self._size += self._domains.add([*shown, *entry.domains])
        self._size += len(entry.shingles) + len(entry.exact)
        self._peak = max(self._peak, len(self._shingles) + len(self._exact))
        if cost:
            self._identity[node_id] = (cost, (read, tuple(named_by), chosen))
            self._size += cost
        return added

    def _shown_before(self, read: tuple[str, ...]) -> bool:
        """Whether a site `read` names was written by an untrusted result (and not by the
        task), or is on a platform where anyone gets a path: there the task naming the
        platform says nothing of which owner's page the agent opened."""
        if self._shown_overflow:
            return True
        for text in read:
            for name in first_domains(normalise(text)):
                if name in PATH_TENANTS or (name in self._shown and not self._domains.named_by_task(name)):
                    return True
        return False

    def _keep(self, kept: OrderedDict[str, Any], key: str, value: Any, limit: int) -> bool:
        """Put `key` in `kept`, newest last and at most `limit`, as one fingerprint of the
        workflow's budget (and so the proxy's); whether the oldest went to make room."""
        if kept.pop(key, _ABSENT) is _ABSENT:
            self._size += 1
        kept[key] = value
        if len(kept) <= limit:
            return False
        kept.popitem(last=False)
        self._size -= 1
        return True

    def _note_shown(self, names: Iterable[str]) -> None:
        for name in names:
            if self._keep(self._shown, name, None, MAX_SHOWN):
                self._shown_overflow = True

    def _keep_handles(self, handles: dict[str, list[str]], trusted: bool) -> None:
        # Each id kept counts as one fingerprint, like a domain. A trusted result's notices
        # too: the order to hide one may come from any other result.
        notices = 0
        for handle, sender, headline in handles.values():
            if handle and headline and notices < MAX_NOTICES_PER_RESULT and (cue := notice_cue(headline)):
                notices += 1
                self._keep(self._notices, normalise(handle), cue, MAX_HANDLES)
            if trusted or not (handle and sender):
                continue
            domains = first_domains(normalise(sender.rpartition("@")[2]))
            if domains:
                self._keep(self._handles, normalise(handle), domains[0], MAX_HANDLES)

    def unseen(self, values: Sequence[tuple[str, str]]) -> list[str]:
        """Paths of the arguments (`read_arguments`) that are an IBAN neither the task nor any
        result the workflow holds wrote, while none of its results went unread nor held a
        payload provenance cannot read (an image, a PDF): an account the agent put together
        itself (decoded from base64, joined from two emails, spelt out from words)
        (`unseen:`). After `match`, which indexed the task."""
        if self.unread or self._blind or not self._size:
            return []
        found = []
        for path, norm in values:
            if len(norm) < 15 or not _DIGIT_IN(norm):
                continue  # no IBAN fits
            # The whole value, and an IBAN inside a short one ("IBAN IE73 BOFI …", "IE73…
            # (Amberglass)"); not in content (a letter or an invoice the user writes holds
            # their own account, which no result shows).
            short = len(norm) <= _MAX_LABELLED and not norm.startswith(("/", "~"))
            candidates = (exact_key(norm), *tokens(norm)) if short and not norm.isalnum() else (exact_key(norm),)
            for key in candidates:
                if 15 <= len(key) <= 34 and key not in self._exact and key not in self._task_exact and is_iban(key):
                    found.append(path)
                    break
        return found[:MAX_REPORTED]

    def note_blind(self) -> None:
        """A trusted result went unread (too large for the result tap): what it held is not
        known, so no IBAN can be said to be one nothing showed (`unseen`)."""
        self._blind = True

    def _keep_ids(self, handles: dict[str, list[str]], invoices: Groups, trusted: bool) -> None:
        self._keep_handles(handles, trusted)
        if invoices:
            self._keep_stated(invoices)

    def _keep_stated(self, invoices: Groups) -> None:
        # The least amount stated for an invoice wins: a later email, or JSON written into
        # the same one, that states more cannot raise what the invoice is for.
        for identifier, amount in stated(invoices):
            held = self._stated.get(identifier)
            self._keep(self._stated, identifier, amount if held is None else min(held, amount), MAX_STATED)

    def invoiced(self, values: Sequence[tuple[str, str]]) -> list[tuple[str, float]]:
        """(identifier, least amount stated) of each invoice a result stated an amount for that
        the call's string arguments (`read_arguments`) name (proxy/_invoices.py)."""
        if not self._stated:
            return []
        found = {key: held for key in named(norm for _, norm in values) if (held := self._stated.get(key)) is not None}
        return list(itertools.islice(found.items(), MAX_REPORTED))

    def _forget_identity(self, node_id: str) -> None:
        held = self._identity.pop(node_id, None)
        if held is not None:
            self._size -= held[0]

    def evict_oldest(self) -> int:
        """Forget the oldest result's fingerprints (its prose first) to keep the proxy-wide
        budget; how many went (0 when there is none). Unlike the workflow's own capacity,
        this is forced on it by other workflows, which may be an attacker's: an untrusted
        result so forgotten is remembered as unread, so later calls say their data may be
        untraceable rather than come out clean."""
        if not self._results:
            # Ids, notices, invoices and domains kept from results that left no prints of
            # their own: forgotten together (an attacker's probe saw them outlive the budget).
            before = self._size
            self._forget_kept()
            return before - self._size
        before = self._size
        # An entry whose keys were all held by an earlier result frees nothing: go on until
        # something is (a reviewer's probe: the proxy-wide count lost the workflow's prints).
        while self._results and self._size == before:
            self._remember(*self._evict())
        return before - self._size

    def _remember(self, node_id: str, held: _Held) -> None:
        """Remember an untrusted result whose data is (partly) forgotten as unread. Found by
        an attacker's probe: sixteen pages of identifiers read after an injected email pushed
        its IBAN out of its own workflow, and the transfer to it then came out clean."""
        if held.trusted:
            self._blind = True
        elif all(unread.node_id != node_id for unread in self.unread):
            self.unread.append(Unread(node_id, held.tool, held.size, forgotten=True))

    def _evict(self) -> tuple[str, _Held]:
        """Forget the oldest result's shingles; once no result has any left, the oldest
        result. Identifiers (IBANs, addresses, URLs) cost little and are what injected
        instructions most often carry, so they outlive the windows of prose around them: an
        attacker's probe had nine ordinary pages push an injected one out of a workflow."""
        if self._prose:
            node_id, _ = self._prose.popitem(last=False)
            held = self._results[node_id]
            _drop(self._shingles, held.shingles, node_id)
            self._size -= len(held.shingles)
            held.shingles = []
            self._shrink()
            return node_id, held
        node_id, held = self._results.popitem(last=False)
        self._cues.pop(node_id, None)
        self._forget_identity(node_id)
        _drop(self._exact, held.exact, node_id)
        self._size -= len(held.exact)
        if not self._results:  # the domains count against the budget too: a workflow evicted whole holds none
            self._forget_kept()
        self._shrink()
        return node_id, held

    def _forget_kept(self) -> None:
        """Forget the domains, ids, notices and invoice amounts kept beside the results."""
        self._size -= (
            self._domains.clear() + len(self._handles) + len(self._notices) + len(self._stated) + len(self._shown)
        )
        self._handles.clear()
        self._notices.clear()
        self._stated.clear()
        # What untrusted results wrote is forgotten with them: from now on no page counts
        # as chosen (`_shown_before`), rather than every page.
        self._shown_overflow = self._shown_overflow or bool(self._shown)
        self._shown.clear()

    def _shrink(self) -> None:
        """Rebuild the indexes once they hold under a quarter of their peak. A dict never
        gives back the table it grew to: an attacker's probe had workflows the proxy-wide
        budget emptied keep ~400 KB of empty tables each, 900 MB for 2,000 workflows, while
        the print count stayed within the budget. Amortised: a rebuild copies at most a
        quarter of what was removed since the last one."""
        live = len(self._shingles) + len(self._exact)
        if live * 4 >= self._peak:
            return
        self._shingles = dict(self._shingles)
        self._exact = dict(self._exact)
        if not self._results:
            self._results, self._prose, self._identity = OrderedDict(), OrderedDict(), {}
        self._peak = live

    def _trust_task(self, task: str) -> None:
        """Index the stated task (trusted): every window, every word, every identifier."""
        if task == self._task:
            return
        norm = normalise(task)
        self._task = task
        self._task_shingles = frozenset(shingle_hashes(norm, len(norm)))
        words = {exact_key(word.strip(PUNCTUATION)) for word in norm.split(" ")}
        self._task_exact = frozenset({*words, *tokens(norm), exact_key(norm)})
        self._task_refs = references(task)
        self._domains.set_task(norm)

    def match(self, values: Sequence[tuple[str, str]], task: str) -> list[Match]:
        """Arguments (`read_arguments`) holding data from fingerprinted results (and not from the task)."""
        if not self._size:
            return []
        self._trust_task(task)
        found: list[Match] = []
        checks = Checks()  # one budget of IBAN checksums for the call's arguments
        for path, norm in values:
            hit = self._match_value(path, norm, checks)
            if hit is not None:
                found.append(self._pointed(hit, norm))
        return found

    def lookalikes(self, values: Sequence[tuple[str, str]], matches: Iterable[Match]) -> list[tuple[str, str, str]]:
        """(argument path, domain, the domain it looks like) for each domain in the arguments
        (`read_arguments`), each sender a message handle among them answers to, and each
        source of data they hold (`matches`), made to be taken for another the workflow's
        results or task showed (`_lookalike.py`). After `match`."""
        if self._domains.empty:
            return []
        found: dict[tuple[str, str], str] = {}
        for path, norm in values:
            for name in first_domains(norm):
                if (like := self._domains.alike(name)) is not None:
                    found.setdefault((path, name), like)
            # `reply_email(message_id=…)`: the reply goes to that message's sender.
            sender = self._handles.get(norm) if self._handles and _is_id_key(path) else None
            if sender is not None and (like := self._domains.alike(sender)) is not None:
                found.setdefault((path, sender), like)
        for m in matches:
            held = self._results.get(m.source.node_id)
            for name in held.domains if held is not None and not m.source.trusted else ():
                if (like := self._domains.alike(name)) is not None:
                    found.setdefault((m.path, name), like)
        return [(path, name, like) for (path, name), like in itertools.islice(found.items(), MAX_REPORTED)]

    def notices(self, values: Sequence[tuple[str, str]], arguments: Any = None) -> list[tuple[str, str]]:
        """(argument path, cue) for each argument under an id key (`read_arguments`, and the
        numbers of `arguments` as sent) that passes a message a result showed with a
        security notice's headline: one id, a list of them (`message_ids: [...]`, a bulk
        delete), or several in one string ("m-1,m-2")."""
        if not self._notices:
            return []
        found = []
        for path, norm in itertools.chain(values, _numeric_ids(arguments)):
            if not _is_id_key(path, plural=True):
                continue
            for handle in (norm, *norm.replace(",", " ").replace(";", " ").split()[:_MAX_IDS_IN_ONE]):
                if cue := self._notices.get(handle):
                    found.append((path, cue))
                    break
        return found[:MAX_REPORTED]

    def rerouting(self, node_id: str) -> str:
        """The rerouting language the untrusted result at `node_id` holds, else the newest any
        untrusted result of the workflow still held does ("": none, or forgotten)."""
        held = self._results.get(node_id)
        if held is not None and held.rerouting:
            return held.rerouting
        return next(reversed(self._cues.values()), "")

    def _pointed(self, hit: Match, norm: str) -> Match:
        """`hit`, marked `named` when the task points at the untrusted result it came from
        and the argument (`norm`) leads nowhere but to that result's site or the task's; else
        `visited` when the agent went to that result's page on its own and the argument
        leads nowhere but to that page's site or the task's."""
        if hit.source.trusted:
            return hit
        node_id = hit.source.node_id
        held = self._identity.get(node_id)
        if held is None:
            return hit
        cost, known = held
        if not isinstance(known, Identity):
            read, named_by, chosen = known
            known = identity(read, named_by, chosen=chosen)
            self._identity[node_id] = (cost, known)
        vouched = known.vouched(self._task_refs) if self._task_refs else None
        if vouched is not None and stays_within(norm, vouched | self._task_refs):
            by_name = known.by_name_only(self._task_refs)
            return Match(hit.path, hit.source, hit.fraction, named=True, by_name=by_name)
        if known.visited and stays_within(norm, known.visited | self._task_refs):
            return Match(hit.path, hit.source, hit.fraction, visited=True)
        return hit

    def _match_value(self, path: str, norm: str, checks: Checks) -> Match | None:
        if len(norm) < MIN_VALUE:
            return None
        key = exact_key(norm)
        if key in self._task_exact:
            return None
        source = self._exact.get(key)
        if source is not None:
            return Match(path, source, 1.0)
        # Per source: [covered characters, end of the last window, an identifier matched].
        covered: dict[Source, list[int]] = {}
        if len(norm) >= SHINGLE:
            task, shingles = self._task_shingles, self._shingles
            for start in range(len(norm) - SHINGLE + 1):
                value = hash(norm[start : start + SHINGLE])
                if value in task or (source := shingles.get(value)) is None:
                    continue
                span = covered.setdefault(source, [0, 0, 0])
                end = start + SHINGLE
                span[0] += end - max(start, span[1])
                span[1] = end
        # Identifiers inside a longer argument (a recipient named in a message body).
        for token in tokens(norm, checks):
            if token in self._task_exact or (source := self._exact.get(token)) is None:
                continue
            span = covered.setdefault(source, [0, 0, 0])
            span[0] += len(token)
            span[2] = 1
        # The source covering most, but an untrusted one whenever any passes the bar: text of
        # a trusted source around an untrusted link must not hide the link.
        best: tuple[bool, int, Source] | None = None
        for source, (chars, _, identifier) in covered.items():
            chars = min(chars, len(norm))
            if (identifier or chars >= min(MIN_RUN, len(norm))) and (
                best is None or (not source.trusted, chars) > best[:2]
            ):
                best = (not source.trusted, chars, source)
        if best is None:
            return None
        return Match(path, best[2], round(best[1] / len(norm), 2))


def _domains_of(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        yield from first_domains(normalise(text))


def _drop(index: dict[Any, Source], keys: Iterable[Any], node_id: str) -> None:
    """Remove `keys` from `index` where they still name `node_id`'s result."""
    for key in keys:
        if (source := index.get(key)) is not None and source.node_id == node_id:
            del index[key]


def _drop_echoes(shingles: dict[int, Source], exact: dict[str, Source], echoes: Sequence[str]) -> None:
    """Take out of a result's prints the keys and windows of its call's own arguments
    (normalised; `read_arguments` bounds them to MAX_ARGUMENT_CHARS altogether)."""
    checks = Checks()
    for norm in echoes:
        exact.pop(exact_key(norm), None)
        for token in tokens(norm, checks):
            exact.pop(token, None)
        if shingles:
            for value in shingle_hashes(norm, len(norm)):
                shingles.pop(value, None)


def _add_tokens(exact: dict[str, Source], norm: str, source: Source, checks: Checks) -> bool:
    """The identifier-like tokens of `norm` as exact keys from `source`, within MAX_RESULT_KEYS
    and the result's budget of IBAN checksums (`checks`); a key already held (the whole
    field's own) keeps its source. True when the budget left some out."""
    found = tokens(norm, checks)
    for token in itertools.islice(found, max(0, MAX_RESULT_KEYS - len(exact))):
        exact.setdefault(token, source)
    return next(found, None) is not None


def _is_id_key(path: str, *, plural: bool = False) -> bool:
    """Whether `path` ends in an id key (`id`, `message_id`, `taskId`); with `plural`, any key
    whose letters end in id, ids or idlist too (`uid`, `msgid`, `message_ids`, `idList`)."""
    key = path.rpartition(".")[2].partition("[")[0]
    if key == "id" or key.endswith(("Id", "_id", "ID")):
        return True
    return plural and key.casefold().replace("_", "").replace("-", "").endswith(("id", "ids", "idlist"))


def _note_handle(handles: dict[str, list[str]], path: str, text: str) -> None:
    """Note an object's id, sender or headline (`messages[0].id`, `messages[0].sender`,
    `messages[0].subject`) under its path. The id is the object's `id` when it has one, else
    the first other id key it holds (`message_id`, `uid`); never an item of a list under
    one (`labelIds: ["INBOX"]`) nor a key that only ends in the letters (`amount_paid`)."""
    parent, _, key = path.rpartition(".")
    if key in _SENDER_KEYS:
        handles.setdefault(parent, ["", "", ""])[1] = text[:MAX_VALUE]
    elif key.casefold() in _HEADLINE_KEYS:
        handles.setdefault(parent, ["", "", ""])[2] = text[:MAX_VALUE]
    elif len(text) <= MAX_VALUE and (key in _OTHER_ID_KEYS or _is_id_key(path)) and "[" not in key:
        noted = handles.setdefault(parent, ["", "", ""])
        if key == "id" or not noted[0]:
            noted[0] = text


def _numeric_ids(arguments: Any) -> Iterator[tuple[str, str]]:
    """(path, digits) of the integers under id keys of a call's arguments (`{"uid": 4259}`,
    `{"uids": [4259, 4260]}`), at most _MAX_NUMERIC_IDS of them, three objects deep."""
    if not isinstance(arguments, dict):
        return
    given = 0
    stack: list[tuple[str, Any, int]] = [("", arguments, 0)]
    while stack:
        prefix, item, depth = stack.pop()
        for key, value in itertools.islice(item.items(), _MAX_IDS_IN_ONE):
            name = str(key)[:MAX_VALUE]  # a key may be megabytes long; its path is not
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(value, dict) and depth < 3:
                stack.append((path, value, depth + 1))
                continue
            numbers = value if isinstance(value, list) else (value,)
            for number in itertools.islice(numbers, _MAX_IDS_IN_ONE):
                if isinstance(number, int) and not isinstance(number, bool) and abs(number) < 10**15:
                    given += 1
                    if given > _MAX_NUMERIC_IDS:
                        return
                    yield path, str(number)


def _is_iban_key(key: str) -> bool:
    """An object key that is an IBAN (a payee list keyed by account): data as well as a name."""
    return 15 <= len(key) <= 42 and key[:2].isalpha() and is_iban(key)


def _is_handle(path: str, norm: str) -> bool:
    """A value (normalised) under an id key (`id`, `taskId`, `message_id`): a protocol handle
    the next call is meant to pass back (an A2A task id, an email's id to reply to), not data
    a source could inject — unless it is a destination (an attacker's probe put an IBAN
    under `account_id` and an address under `payeeId`)."""
    if not _is_id_key(path):
        return False
    return norm.startswith("<") or not is_destination(norm)


def _is_constant(norm: str) -> bool:
    """One word of letters (`completed`, `role_user`, `archive`): an enum or a name the
    protocol or the tool defines, which any call may repeat; data has a digit, `@`, `.`,
    `/` or a space (addresses, IBANs, URLs, file names, people's names)."""
    return norm.replace("_", "").replace("-", "").isalpha()


def _takes(current: Source | None, new: Source) -> bool:
    """Whether `new` replaces `current` for a key: newest wins, but never trusted over untrusted."""
    return current is None or not (new.trusted and not current.trusted)
