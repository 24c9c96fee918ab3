"""Reading the audit chain out: verifying a store's chain, exporting a piece of it for
auditors (CSV or JSON, SOC 2 or ISO/IEC 42001 framing), and verifying such a file offline.

Both exports stream: the store is read a page at a time, so memory stays constant
however many records a range holds. A range (`from`/`to`, by when a record entered the
chain) is a contiguous piece of the chain, so a file verifies on its own: every row
carries its record exactly as hashed (CSV: the JCS text; JSON: the object, which JCS
turns back into the same bytes), its `prev_hash` and `chain_hash`, and the file ends
with the chain head it reaches. A file cut short lacks that ending and fails.

CSV: a header row, one row per record (`EXPORT_COLUMNS`), then one row of kind
`chain_head` whose `record` holds the file's framing (schema, controls, range, anchor,
head). JSON: `{schema_version, controls, from, to, anchor, records: [...], chain_head}`.

What a file proves alone is that it is internally consistent; that it is *the* chain
needs its head compared with the service's (`GET /audit/verify`) or a head kept from an
earlier export: `bastion audit verify --export FILE --head HASH`. Or the service's
signature the file ends with (`signature`: a JWS by the stack's key over the file's
anchor, chain head, record count, schema and range, bastion.graph._checkpoints): with the
stack's public key (`--key PEM`) a file edited anywhere, every hash after the edit
recomputed, cut short or extended, no longer ends where the service signed, without the
service.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion._json import loads_strict

from . import _checkpoints as checkpoints
from ._audit import GENESIS, AuditEntry, ChainHead, ChainProblem, ChainReport, ChainVerifier, canonical
from ._checkpoints import all_checkpoints
from ._store import GraphStore

#: schema name (the `schema` query parameter) -> (schema_version, controls it evidences)
SCHEMAS: dict[str, tuple[str, tuple[str, ...]]] = {
    # SOC 2: CC6.6 (boundary protection against threats from outside the system),
    # CC7.2 (monitoring system components for anomalies).
    "soc2_v1": ("soc2.audit.v1", ("CC6.6", "CC7.2")),
    # ISO/IEC 42001 Annex A: A.8 (information for interested parties), A.10 (third-party relationships).
    "iso42001_v1": ("iso42001.audit.v1", ("A.8", "A.10")),
}
EXPORT_COLUMNS = (
    "sequence",
    "kind",
    "violation_id",
    "workflow_id",
    "node_id",
    "rule_id",
    "agent_id",
    "timestamp",
    "deviation_score",
    "threshold",
    "policy_version",
    "decision",
    "prev_hash",
    "chain_hash",
    "record",
)
HEAD_KIND = "chain_head"
PAGE = 1000


async def verify_store(store: GraphStore, *, page: int = PAGE, keys: Sequence[Ed25519PublicKey] = ()) -> ChainReport:
    """Recompute the store's whole chain, up to the head it had when the check began, and
    hold it to its signed checkpoints (signatures checked against `keys` when given)."""
    return (await verify_walk(store, page=page, keys=keys)).chain


@dataclass(frozen=True, slots=True)
class WalkReport:
    """What `verify_walk` found of the piece of the chain it walked."""

    chain: ChainReport
    #: The first record it checked: 1, or the one after `after`.
    first: int
    #: "deadline" when it stopped there before the head it set out for; None when it reached
    #: that head or found a problem.
    stopped: str | None = None

    @property
    def ok(self) -> bool:
        """No problem, and every record from `first` to the head checked."""
        return self.chain.ok and self.stopped is None


async def verify_walk(
    store: GraphStore,
    *,
    page: int = PAGE,
    keys: Sequence[Ed25519PublicKey] = (),
    deadline: float | None = None,
    after: int = 0,
    anchor: str = GENESIS,
    clock: Callable[[], float] = time.monotonic,
) -> WalkReport:
    """Recompute the store's chain from the record after `after` up to the head it had when the
    walk began, and hold it to the signed checkpoints past `after`; stop before a page once
    `clock()` reaches `deadline`. A walk that continues an earlier one passes the head that
    one reached: `after` its sequence, `anchor` its hash, which the next record must link to,
    so the pieces verify as one chain (a record changed in between is named `altered`)."""
    first = after + 1
    marks = [mark for mark in await all_checkpoints(store) if mark.sequence > after]
    wanted = {mark.sequence for mark in marks}
    hashes: dict[int, str] = {}
    head = await store.audit_head()
    end = head.sequence if head is not None else 0
    if end < after:
        detail = (
            f"the chain ends at #{end}, but the walk continues after #{after}: "
            f"records #{end + 1}..#{after} were removed"
        )
        return WalkReport(ChainReport(0, head, ChainProblem("removed", end + 1, detail)), first)
    verifier = ChainVerifier(anchor=anchor, first=first)
    stopped: str | None = None
    while after < end and not verifier.done:
        # Checked after a page, never before the first: every walk makes progress.
        if deadline is not None and after >= first and clock() >= deadline:
            stopped = "deadline"
            break
        entries = await store.audit_entries(after=after, limit=page, through=end)
        if not entries:
            break
        for entry in entries:
            verifier.feed(entry)
            if entry.sequence in wanted:
                hashes[entry.sequence] = entry.hash
        after = entries[-1].sequence
    report = verifier.report()
    if stopped is not None:
        # The checkpoints past where it stopped are the next walk's to hold the chain to.
        marks = [mark for mark in marks if report.head is not None and mark.sequence <= report.head.sequence]
    return WalkReport(checkpoints.check(report, marks, hashes, keys), first, stopped)


@dataclass(frozen=True, slots=True)
class ExportRange:
    schema: str
    since: datetime | None = None
    until: datetime | None = None

    @property
    def since_ns(self) -> int | None:
        return _ns(self.since)

    @property
    def until_ns(self) -> int | None:
        return _ns(self.until)


class ChainPages(AsyncIterator[AuditEntry]):
    """The entries of a range in order, up to the head at the start (later appends are not
    chased), read a page at a time; before a page, once `clock()` reaches `deadline`, the
    iteration ends and `stopped` says "deadline" (the export then says so: `_framing`)."""

    def __init__(
        self,
        store: GraphStore,
        span: ExportRange,
        *,
        page: int = PAGE,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._span = span
        self._page = page
        self._deadline = deadline
        self._clock = clock
        self.stopped: str | None = None
        self._pages: AsyncGenerator[AuditEntry, None] | None = None

    async def __anext__(self) -> AuditEntry:
        if self._pages is None:
            self._pages = self._entries()
        return await anext(self._pages)

    async def aclose(self) -> None:
        if self._pages is not None:
            await self._pages.aclose()

    async def _entries(self) -> AsyncGenerator[AuditEntry, None]:
        head = await self._store.audit_head()
        if head is None:
            return
        after = 0
        while True:
            # Checked after a page, never before the first: every export makes progress.
            if self._deadline is not None and after > 0 and self._clock() >= self._deadline:
                self.stopped = "deadline"
                return
            entries = await self._store.audit_entries(
                after=after,
                limit=self._page,
                through=head.sequence,
                since_ns=self._span.since_ns,
                until_ns=self._span.until_ns,
            )
            for entry in entries:
                yield entry
            if len(entries) < self._page:
                return
            after = entries[-1].sequence


def export_row(entry: AuditEntry, record: Mapping[str, Any]) -> dict[str, str]:
    """The CSV columns of one record; also what `verify_export` checks each row's columns against."""
    policy = record.get("policy") or {}
    verifier = record.get("verifier") or {}
    return {
        "sequence": str(entry.sequence),
        "kind": str(record.get("kind", "")),
        "violation_id": str(record.get("violation_id", "")),
        "workflow_id": str(record.get("workflow_id", "")),
        "node_id": str(record.get("node_id", "")),
        "rule_id": str(record.get("rule_id", "")),
        "agent_id": str(record.get("agent_id", "")),
        "timestamp": str(record.get("timestamp", "")),
        "deviation_score": _cell(verifier.get("deviation_score")),
        "threshold": _cell(verifier.get("threshold")),
        "policy_version": _cell(policy.get("version")),
        "decision": str(record.get("decision", "")),
        "prev_hash": entry.prev_hash,
        "chain_hash": entry.hash,
        "record": entry.record.decode(),
    }


def entries_of(store: GraphStore, span: ExportRange, *, page: int = PAGE, deadline: float | None = None) -> ChainPages:
    """The range's entries in order, up to the head at the start, until `deadline` (see `ChainPages`)."""
    return ChainPages(store, span, page=page, deadline=deadline)


def _stopped_of(entries: AsyncIterable[AuditEntry]) -> str | None:
    return entries.stopped if isinstance(entries, ChainPages) else None


async def export_csv(
    entries: AsyncIterable[AuditEntry], span: ExportRange, key: Ed25519PrivateKey | None = None
) -> AsyncIterator[bytes]:
    """The CSV file of `entries`; when they are `ChainPages` that stopped at their deadline, it says so."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    first: AuditEntry | None = None
    last: AuditEntry | None = None
    count = 0
    async for entry in entries:
        first = first or entry
        last, count = entry, count + 1
        writer.writerow(_inert(export_row(entry, orjson.loads(entry.record))))
        if buffer.tell() >= 64 * 1024:
            yield _drain(buffer)
    framing = _framing(span, first, last, count, key, stopped=_stopped_of(entries))
    head = framing["chain_head"] or {}
    writer.writerow(
        _inert({column: "" for column in EXPORT_COLUMNS})
        | {
            "sequence": _cell(head.get("sequence")),
            "kind": HEAD_KIND,
            "prev_hash": first.prev_hash if first else "",
            "chain_hash": head.get("hash", ""),
            "record": canonical(framing).decode(),
        }
    )
    yield _drain(buffer)


async def export_json(
    entries: AsyncIterable[AuditEntry], span: ExportRange, key: Ed25519PrivateKey | None = None
) -> AsyncIterator[bytes]:
    """One record a line inside `records`, so a reader may also take the file line by line; as
    `export_csv`, it says when `entries` stopped at their deadline."""
    first: AuditEntry | None = None
    last: AuditEntry | None = None
    count = 0
    async for entry in entries:
        if first is None:
            first = entry
            opening = _framing(span, first, None, 0)
            opening.pop("chain_head")
            opening.pop("signature")  # written once, at the end
            yield orjson.dumps(opening)[:-1] + b',"records":[\n'
        else:
            yield b",\n"
        last, count = entry, count + 1
        yield orjson.dumps(_json_record(entry))
    if first is None:
        opening = _framing(span, None, None, 0)
        opening.pop("chain_head")
        opening.pop("signature")
        yield orjson.dumps(opening)[:-1] + b',"records":[\n'
    closing = _framing(span, first, last, count, key, stopped=_stopped_of(entries))
    yield (
        b"\n]"
        + (b',"stopped":' + orjson.dumps(closing["stopped"]) if "stopped" in closing else b"")
        + b',"chain_head":'
        + orjson.dumps(closing["chain_head"])
        + b',"signature":'
        + orjson.dumps(closing["signature"])
        + b"}\n"
    )


def _json_record(entry: AuditEntry) -> dict[str, Any]:
    record = orjson.loads(entry.record)
    row: dict[str, Any] = export_row(entry, record)
    # Numbers stay numbers in JSON; verify_export compares them as the CSV cells they make.
    policy = record.get("policy") or {}
    verifier = record.get("verifier") or {}
    row |= {
        "sequence": entry.sequence,
        "deviation_score": verifier.get("deviation_score"),
        "threshold": verifier.get("threshold"),
        "policy_version": policy.get("version"),
        "record": record,
    }
    return row


def _framing(
    span: ExportRange,
    first: AuditEntry | None,
    last: AuditEntry | None,
    count: int,
    key: Ed25519PrivateKey | None = None,
    *,
    stopped: str | None = None,
) -> dict[str, Any]:
    schema_version, controls = SCHEMAS[span.schema]
    framing: dict[str, Any] = {
        "schema_version": schema_version,
        "controls": list(controls),
        "from": _iso(span.since),
        "to": _iso(span.until),
        "anchor": {"sequence": first.sequence - 1, "hash": first.prev_hash} if first else None,
        "chain_head": {"sequence": last.sequence, "hash": last.hash, "records": count} if last else None,
    }
    if stopped is not None:
        # A file cut at the deadline must not pass for the whole range: it says where it
        # stopped (its chain_head), and `verify_export` fails it as `incomplete`. Only then
        # present, so a complete file is what it always was.
        framing["stopped"] = stopped
    framing["signature"] = checkpoints.sign_export(key, _statement(framing)) if key is not None else None
    return framing


def _statement(framing: Mapping[str, Any]) -> dict[str, Any]:
    """What the service signs of a file, and what a verifier holds the file to. `stopped` is
    signed even when absent (null): a file cut at the deadline with the word removed no
    longer holds to its signature."""
    names = ("schema_version", "controls", "from", "to", "anchor", "chain_head", "stopped")
    return {name: framing.get(name) for name in names}


# --- checking a file offline ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportReport:
    schema_version: str | None
    chain: ChainReport
    #: The chain head the file states, when it states one.
    stated_head: ChainHead | None
    #: True when the service's signature was checked (and, with `ok`, held).
    signed: bool = False

    @property
    def ok(self) -> bool:
        return self.chain.ok


def verify_export(path: Path, *, head: str | None = None, keys: Sequence[Ed25519PublicKey] = ()) -> ExportReport:
    """Check an export file: every record against its hash and its predecessor, every
    column against its record, the file's stated chain head (and `head`, when given)
    against the last record, and with `keys` the service's signature against what the
    file holds (a file without one then fails). CSV is read a row at a time; JSON whole."""
    with path.open("rb") as probe:
        start = probe.read(1)
    try:
        report, framing = _verify_json(path) if start == b"{" else _verify_csv(path)
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        # A hand-made file can put anything anywhere: it is malformed, never a traceback.
        problem = ChainProblem("altered", 0, f"not a well-formed Bastion audit export: {type(exc).__name__}: {exc}")
        return ExportReport(None, ChainReport(0, None, problem), None)
    if report.ok and keys:
        report = dataclasses.replace(report, chain=_signed(report, framing, keys), signed=True)
    if report.ok and framing.get("stopped") is not None:
        return dataclasses.replace(report, chain=_with(report.chain, _stopped(report, framing["stopped"])))
    if report.ok and head is not None and (report.stated_head is None or report.stated_head.hash != head):
        found = report.stated_head.hash if report.stated_head else "none"
        problem = ChainProblem(
            "altered",
            report.stated_head.sequence if report.stated_head else 0,
            f"the file's chain head is {found}, not the {head} given with --head",
        )
        return dataclasses.replace(report, chain=_with(report.chain, problem))
    return report


def _stopped(report: ExportReport, why: object) -> ChainProblem:
    """What a file the service stopped writing at its deadline lacks."""
    head = report.stated_head or report.chain.head
    last = head.sequence if head is not None else 0
    detail = (
        f"the export stopped ({str(why)[:40]!r}: BASTION_AUDIT_WALK_DEADLINE_S) after record #{last}: the file holds "
        "the records it has, verified, but not the rest of its range; export the rest with `from` at the "
        "last record's recorded_at, or a narrower range"
    )
    return ChainProblem("incomplete", last + 1, detail)


def _signed(report: ExportReport, framing: Mapping[str, Any], keys: Sequence[Ed25519PublicKey]) -> ChainReport:
    """The chain report, failed unless the service's signature holds and says what the
    file holds: its records, anchor, head and count, schema and range."""
    chain = report.chain
    signature = framing.get("signature")
    if not isinstance(signature, str):
        return _with(chain, ChainProblem("forged", 0, "the file carries no signature of the service"))
    try:
        signed = checkpoints.read_export(signature, keys)
    except ValueError as exc:
        return _with(chain, ChainProblem("forged", 0, f"the file's signature does not hold: {exc}"))
    statement = _statement(framing)
    for name, stated in statement.items():
        if signed.get(name) != stated:
            at = chain.head.sequence if chain.head else 0
            detail = f"the service signed {name} {signed.get(name)!r}, the file says {stated!r}"
            return _with(chain, ChainProblem("altered", at, detail))
    # The records themselves must end where the signed head is (the framing could lie too).
    signed_head = statement["chain_head"]
    held = ChainHead(int(signed_head["sequence"]), str(signed_head["hash"])) if signed_head else None
    if chain.head != held:
        return _with(chain, ChainProblem("altered", 0, f"the records end at {chain.head}, the service signed {held}"))
    if signed_head and chain.records != signed_head.get("records"):
        detail = f"the file holds {chain.records} records, the service signed {signed_head.get('records')}"
        return _with(chain, ChainProblem("removed", 0, detail))
    return chain


_Verified = tuple[ExportReport, dict[str, Any]]


def _verify_csv(path: Path) -> _Verified:
    with path.open(newline="", encoding="utf-8") as file:
        rows = csv.DictReader(file)
        if tuple(rows.fieldnames or ()) != EXPORT_COLUMNS:
            missing = sorted(set(EXPORT_COLUMNS) - set(rows.fieldnames or ()))
            why = f"no column {missing[0]!r}" if missing else "columns other than, or repeated among, its own"
            problem = ChainProblem("altered", 0, f"not a Bastion audit export: {why}")
            return ExportReport(None, ChainReport(0, None, problem), None), {}
        framing: dict[str, Any] = {}
        report = _verify_rows(_csv_rows(rows), framing)
    return report, framing


def _csv_rows(rows: Iterator[dict[str, str]]) -> Iterator[tuple[dict[str, str], bytes]]:
    for read in rows:
        if None in read:  # cells past the header: nothing of the export, and never read
            raise ValueError(f"a row has more cells than the header (sequence {read.get('sequence')!r})")
        row = {name: _live(cell) for name, cell in read.items()}
        if row.get("kind") == HEAD_KIND and any(row[name] for name in _HEAD_EMPTY):
            raise ValueError("the chain_head row fills columns that are not its own")
        yield row, (row.get("record") or "").encode()


#: What a spreadsheet runs as a formula when a cell starts with it (CSV injection): a rule
#: id, an agent id (an IdP's `sub`, an API key's agent name) or a workflow id an agent
#: chose must stay text when an auditor opens the file. Such a cell is written with a
#: leading `'`, as is one that starts with `'` itself, so reading it back is exact.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _inert(row: dict[str, str]) -> dict[str, str]:
    return {name: "'" + cell if cell.startswith(_FORMULA_START) else cell for name, cell in row.items()}


def _live(cell: str) -> str:
    """A cell as it was before `_inert`, which wrote it in the only way it does: a cell that
    a spreadsheet would run, or one holding a quote `_inert` did not add, was edited."""
    if not cell.startswith(_FORMULA_START):
        return cell
    if cell.startswith("'") and cell[1:].startswith(_FORMULA_START):
        return cell[1:]
    raise ValueError(f"the cell {cell[:40]!r} is not as an export writes it (a formula is written after a ')")


#: The columns a CSV file's chain_head row leaves empty.
_HEAD_EMPTY = tuple(
    name for name in EXPORT_COLUMNS if name not in ("sequence", "kind", "prev_hash", "chain_hash", "record")
)


def _verify_json(path: Path) -> _Verified:
    try:
        orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        problem = ChainProblem("removed", 0, f"the file is not complete JSON (cut short?): {exc}")
        return ExportReport(None, ChainReport(0, None, problem), None), {}
    # Read again keeping every key: a key given twice is one value to this check and the
    # other to a reader that keeps the first, so it is refused, never resolved.
    document = loads_strict(path.read_bytes())
    head = document.get("chain_head") if isinstance(document, dict) else None
    records = document.get("records") if isinstance(document, dict) else None
    if not isinstance(records, list) or not isinstance(head, dict | None):
        problem = ChainProblem("altered", 0, "not a Bastion audit export: records or chain_head of the wrong shape")
        return ExportReport(None, ChainReport(0, None, problem), None), {}
    extra = set(document) - _JSON_KEYS or next(
        (set(item) - _ITEM_KEYS for item in records if set(item) - _ITEM_KEYS), set()
    )
    if extra:
        problem = ChainProblem("inserted", 0, f"not a Bastion audit export: unknown key {sorted(extra)[0]!r}")
        return ExportReport(None, ChainReport(0, None, problem), None), {}
    closing = {
        "kind": HEAD_KIND,
        "sequence": _cell(head.get("sequence")) if head else "",
        "chain_hash": head.get("hash", "") if head else "",
        "record": canonical({key: document.get(key) for key in ("schema_version", "controls", "from", "to")}).decode(),
        "_schema": str(document.get("schema_version", "")),
    }
    rows = [
        (_json_columns(item), canonical(item.get("record") or {})) if isinstance(item, dict) else ({}, b"")
        for item in records
    ]
    report = _verify_rows(iter([*rows, (closing, b"")]), {})
    return report, dict(document)


#: The keys an export's JSON holds, at the top and in each record's item.
_JSON_KEYS = frozenset(
    {"schema_version", "controls", "from", "to", "anchor", "records", "stopped", "chain_head", "signature"}
)
#: The keys of a CSV file's chain_head row (its records are the rows above it).
_FRAMING_KEYS = _JSON_KEYS - {"records"}
_ITEM_KEYS = frozenset(EXPORT_COLUMNS)


def _json_columns(item: Mapping[str, Any]) -> dict[str, str]:
    return {key: _cell(value) if key != "record" else "" for key, value in item.items()}


def _verify_rows(rows: Iterator[tuple[dict[str, str], bytes]], framing: dict[str, Any]) -> ExportReport:
    """`framing` gets what a CSV file's chain_head row says of the file (its JSON record)."""
    verifier: ChainVerifier | None = None
    schema: str | None = None
    for columns, record in rows:
        if columns.get("kind") == HEAD_KIND:
            if "_schema" in columns:  # the JSON form's closing row
                schema = columns["_schema"] or None
            else:
                framing.update(_framing_of(columns.get("record", "")))
                _check_head_row(columns, framing)
                stated_schema = framing.get("schema_version")
                schema = stated_schema if isinstance(stated_schema, str) else None
            stated = ChainHead(int(columns["sequence"]), columns["chain_hash"]) if columns.get("sequence") else None
            if next(rows, None) is not None:
                problem = ChainProblem("inserted", stated.sequence if stated else 0, "rows after the chain_head row")
                report = verifier.report() if verifier else ChainReport(0, None, None)
                return ExportReport(schema, _with(report, problem), stated)
            return _close(verifier, schema, stated)
        entry = _entry(columns, record)
        if entry is None:
            problem = ChainProblem("altered", 0, f"a row has no valid sequence number: {columns.get('sequence')!r}")
            return ExportReport(schema, ChainReport(0, None, problem), None)
        if verifier is None:
            verifier = ChainVerifier(anchor=entry.prev_hash, first=entry.sequence)
        verifier.feed(entry)
        if verifier.done:
            return ExportReport(schema, verifier.report(), None)
        wrong = _column_mismatch(columns, entry)
        if wrong is not None:
            return ExportReport(schema, _with(verifier.report(), wrong), None)
    problem = ChainProblem("removed", 0, "the file has no chain_head ending: it was cut short")
    report = verifier.report() if verifier else ChainReport(0, None, None)
    return ExportReport(schema, _with(report, problem), None)


def _entry(columns: Mapping[str, str], record: bytes) -> AuditEntry | None:
    try:
        sequence = int(columns.get("sequence", ""))
    except ValueError:
        return None
    return AuditEntry(sequence, columns.get("prev_hash", ""), columns.get("chain_hash", ""), record)


def _column_mismatch(columns: Mapping[str, str], entry: AuditEntry) -> ChainProblem | None:
    """The record is what was hashed; a column that says otherwise was edited."""
    expected = export_row(entry, orjson.loads(entry.record))
    for name in EXPORT_COLUMNS:
        if name in ("record", "prev_hash", "chain_hash"):
            continue
        if columns.get(name, "") != expected[name]:
            return ChainProblem(
                "altered",
                entry.sequence,
                f"record #{entry.sequence}: column {name} says {columns.get(name)!r}, "
                f"the record says {expected[name]!r}",
            )
    return None


def _close(verifier: ChainVerifier | None, schema: str | None, stated: ChainHead | None) -> ExportReport:
    report = verifier.report() if verifier else ChainReport(0, None, None)
    if report.head != stated:
        found = f"#{report.head.sequence} {report.head.hash}" if report.head else "no records"
        said = f"#{stated.sequence} {stated.hash}" if stated else "none"
        problem = ChainProblem(
            "removed" if stated and report.head and stated.sequence > report.head.sequence else "altered",
            stated.sequence if stated else 0,
            f"the file's chain head says {said}, its records end at {found}",
        )
        return ExportReport(schema, _with(report, problem), stated)
    return ExportReport(schema, report, stated)


def _with(report: ChainReport, problem: ChainProblem) -> ChainReport:
    return ChainReport(records=report.records, head=report.head, problem=report.problem or problem)


def _framing_of(record: str) -> dict[str, Any]:
    """A CSV chain_head row's JSON, held to what the JSON form's top level is held to: a key
    given twice or one the export does not write is refused, never resolved (an attacker's
    probe put a false `from`/`to` before the real ones, and a note of its own, and the file
    still verified as signed)."""
    try:
        orjson.loads(record)
    except orjson.JSONDecodeError:
        return {}
    found = loads_strict(record)
    if not isinstance(found, dict):
        return {}
    if unknown := set(found) - _FRAMING_KEYS:
        raise ValueError(f"the chain_head row names {sorted(unknown)[0]!r}, which an export does not write")
    return found


def _check_head_row(columns: Mapping[str, str], framing: Mapping[str, Any]) -> None:
    """The chain_head row's own cells, as the export writes them: its sequence in plain
    digits (int() also reads full-width digits, '+28' and ' 2_8 '), its prev_hash the anchor's."""
    sequence = columns.get("sequence", "")
    if not (sequence == "" or (sequence.isascii() and sequence.isdigit())):
        raise ValueError(f"the chain_head row's sequence {sequence[:20]!r} is not as an export writes it")
    anchor = framing.get("anchor")
    expected = anchor.get("hash", "") if isinstance(anchor, dict) else ""
    if columns.get("prev_hash", "") != expected:
        raise ValueError("the chain_head row's prev_hash is not the anchor's hash")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _drain(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    return data


#: Nanosecond times the stores hold (SQLite INTEGER, Neo4j Integer): 64-bit, so years
#: 1677 to 2262. A bound outside is clamped: no record lies beyond it, so "to 9999-12-31"
#: means what it says instead of overflowing the query after the 200 was sent.
_NS_MIN, _NS_MAX = -(1 << 63), (1 << 63) - 1


def _ns(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    return min(_NS_MAX, max(_NS_MIN, (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000))


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
