"""Signed checkpoints of the audit chain: every N records, the head (sequence and hash)
signed with the stack's key.

Why: the chain alone shows an edited, removed or inserted record, but not a chain cut
short (its last records deleted) nor one rewritten from some record on with every hash
recomputed, by someone who can write the database. A checkpoint is signed with a key the
database does not hold (the stack's Ed25519 key, under $BASTION_HOME or the chart's
Secret), so neither goes unseen past the last checkpoint: `verify_store` names a
checkpoint whose record is gone (`removed`) or hashes differently (`altered`), and one
whose signature does not hold (`forged`).

A checkpoint is a JWS (a JWT, `typ: bastion-audit-checkpoint+jwt`, EdDSA, `kid` the RFC 7638
thumbprint of the key) with claims `{"sequence": n, "hash": hash_n, "count": n, "iat": t}`,
so anyone with the public key can check it with any JWT library. `Checkpointer` writes
the ones due after each ingest; one that a crash skipped is written on the next pass, so
every multiple of N up to the head ends with a checkpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion._errors import StoreError
from bastion._jwks import jwk_thumbprint

from ._audit import ChainProblem, ChainReport, rfc3339
from ._store import MAX_AUDIT_PAGE, GraphStore, StoredCheckpoint

log = logging.getLogger(__name__)

TYPE = "bastion-audit-checkpoint+jwt"
DEFAULT_EVERY = 1000


@dataclass(frozen=True, slots=True)
class CheckpointClaims:
    sequence: int
    hash: str
    signed_at: int


def sign(key: Ed25519PrivateKey, sequence: int, chain_hash: str, *, now: int | None = None) -> str:
    return _sign(key, TYPE, {"sequence": sequence, "hash": chain_hash, "count": sequence}, now)


def read(token: str, keys: Sequence[Ed25519PublicKey]) -> CheckpointClaims:
    """The claims of a checkpoint signed by one of `keys`; ValueError naming why not."""
    claims = _verified(token, keys, TYPE, ["sequence", "hash", "iat"])
    sequence, chain_hash, signed_at = claims["sequence"], claims["hash"], claims["iat"]
    if not isinstance(sequence, int) or not isinstance(chain_hash, str) or not isinstance(signed_at, int):
        raise ValueError("sequence, hash and iat must be an integer, a string and an integer")
    return CheckpointClaims(sequence=sequence, hash=chain_hash, signed_at=signed_at)


EXPORT_TYPE = "bastion-audit-export+jwt"


def sign_export(key: Ed25519PrivateKey, statement: dict[str, Any], *, now: int | None = None) -> str:
    """The service's signature over what an export file holds (`statement`: its anchor,
    chain head, schema and range; bastion.graph._export), as a JWS like a checkpoint's."""
    return _sign(key, EXPORT_TYPE, statement, now)


def read_export(token: str, keys: Sequence[Ed25519PublicKey]) -> dict[str, Any]:
    """The statement of an export signature by one of `keys`; ValueError naming why not."""
    return _verified(token, keys, EXPORT_TYPE, ["iat"])


def _sign(key: Ed25519PrivateKey, typ: str, claims: dict[str, Any], now: int | None) -> str:
    headers = {"kid": jwk_thumbprint(key.public_key()), "typ": typ}
    return jwt.encode({**claims, "iat": now or int(time.time())}, key, algorithm="EdDSA", headers=headers)


def _verified(token: str, keys: Sequence[Ed25519PublicKey], typ: str, require: list[str]) -> dict[str, Any]:
    """The claims of a JWS of type `typ` signed by one of `keys`; ValueError naming why not.
    The `typ` keeps a checkpoint from passing for an export's signature and back."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise ValueError(f"not a JWS: {exc}") from exc
    if header.get("typ") != typ:
        raise ValueError(f"typ is {header.get('typ')!r}, not {typ!r}")
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=["EdDSA"], options={"require": require})
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidTokenError as exc:
            raise ValueError(str(exc)) from exc
        return claims
    raise ValueError(f"the signature is not by the stack's key (kid {header.get('kid')!r})")


class Checkpointer:
    """Writes the checkpoints due (every `every` records) as the chain grows."""

    def __init__(self, store: GraphStore, key: Ed25519PrivateKey, every: int = DEFAULT_EVERY) -> None:
        if every < 1:
            raise ValueError(f"a checkpoint every {every} records: give at least 1")
        self._store = store
        self._key = key
        self._every = every
        self._lock = asyncio.Lock()

    async def catch_up(self) -> int:
        """Sign and store every checkpoint due up to the chain's head; the number written."""
        async with self._lock:  # two passes at once would sign the same records twice
            head = await self._store.audit_head()
            if head is None:
                return 0
            last = await self._store.last_checkpoint()
            due = range((last.sequence if last else 0) + self._every, head.sequence + 1, self._every)
            written = 0
            for sequence in due:
                entries = await self._store.audit_entries(after=sequence - 1, limit=1)
                if not entries or entries[0].sequence != sequence:
                    raise StoreError(f"audit record #{sequence} is missing: no checkpoint can be signed for it")
                token = sign(self._key, sequence, entries[0].hash)
                written += await self._store.add_checkpoint(StoredCheckpoint(sequence, entries[0].hash, token))
            return written

    async def run(self, wake: asyncio.Event, stop: asyncio.Event) -> None:
        """Catch up whenever `wake` is set, until `stop`; a failed pass is retried on the next wake."""
        while not stop.is_set():
            waiting = asyncio.ensure_future(wake.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            stopping.cancel()
            wake.clear()
            try:
                await self.catch_up()
            except StoreError as exc:
                log.error("audit checkpoint failed", extra={"fields": {"error": str(exc)}})


async def all_checkpoints(store: GraphStore) -> list[StoredCheckpoint]:
    """Every stored checkpoint, in order (one per N records: few)."""
    found: list[StoredCheckpoint] = []
    while page := await store.checkpoints(after=found[-1].sequence if found else 0, limit=MAX_AUDIT_PAGE):
        found.extend(page)
    return found


def check(
    report: ChainReport, marks: Sequence[StoredCheckpoint], hashes: dict[int, str], keys: Sequence[Ed25519PublicKey]
) -> ChainReport:
    """`report` (the chain walked, with the hashes it had at the checkpoints' sequences) with
    the first checkpoint that does not hold as its problem, and the count of those that do.

    With `keys`, each checkpoint's signature is checked and its signed claims are what the
    chain is held to; without, its stored sequence and hash (which someone able to rewrite
    the chain could have rewritten too)."""
    if not report.ok:
        return report
    held = 0
    last = report.head.sequence if report.head is not None else 0
    for mark in marks:
        sequence, expected, signed = mark.sequence, mark.hash, ""
        if keys:
            try:
                claims = read(mark.token, keys)
            except ValueError as exc:
                return _failed(report, held, "forged", sequence, f"checkpoint #{sequence} does not hold: {exc}")
            if (claims.sequence, claims.hash) != (mark.sequence, mark.hash):
                detail = f"checkpoint #{sequence} signed #{claims.sequence} with hash {claims.hash[:16]}…, not its row"
                return _failed(report, held, "forged", sequence, detail)
            signed = f", signed {rfc3339(claims.signed_at * 10**9)}"
        if sequence > last:
            detail = (
                f"the chain ends at #{last}, but checkpoint #{sequence}{signed} says it had {sequence} records: "
                f"records #{last + 1} to #{sequence} were removed"
            )
            return _failed(report, held, "removed", last + 1, detail)
        if hashes.get(sequence) != expected:
            detail = (
                f"record #{sequence} hashes to {hashes.get(sequence, '?')[:16]}…, but checkpoint #{sequence}{signed} "
                f"says {expected[:16]}…: the chain was rewritten up to here and its hashes recomputed"
            )
            return _failed(report, held, "altered", sequence, detail)
        held += 1
    return dataclasses.replace(report, checkpoints=held)


def _failed(report: ChainReport, held: int, kind: str, sequence: int, detail: str) -> ChainReport:
    return dataclasses.replace(report, problem=ChainProblem(kind, sequence, detail), checkpoints=held)
