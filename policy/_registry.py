"""The policy model that changes while the service runs: stored versions, the active set, watchers.

* Each (name, version) is parsed, validated and compiled once, then cached; the
  compiled set of active versions is cached by the tuple of versions it holds, so
  switching back and forth compiles nothing twice.
* The active set is one immutable `Snapshot` (the compiled `PolicySet` and the
  versions it holds). A change builds the new snapshot completely, then assigns the
  one reference: a decision reads `registry.policies` once and sees either the whole
  old set or the whole new one, never half a change. Changes are serialised by a lock
  and written to the store before they are swapped in, so what is served is always
  what a restart would load.
* How several active policies combine: their rules are tried in order — every rule of
  the first policy (the order in which policies were first activated, which for
  bastion.yaml is the file's order), then the next — and the first matching rule
  decides; with no match, the default is allow only if every active policy says
  `default: allow` (see bastion.policy._engine). So a deny in any policy's default
  wins over another's allow.
* `policies:` in bastion.yaml are applied at start (`apply_files`): each file is stored
  as a version by author "bastion.yaml" (nothing new when its content is already
  stored), and becomes active when its content was new to the store or its policy has
  no active version. After that the store is the source of truth: an activation made
  through the admin REST survives restarts as long as the files are unchanged. A file
  whose (name, version) is stored with other content stops the start (versions are
  immutable).
* Canary rollouts (bastion.policy._rollouts) ride on the same snapshot: for the running
  rollouts it also holds every combination of arms as a compiled set, so a decision
  reads one reference for its arm's set too (`change_rollouts`).
* An engine outside this process (Rego mode: bastion.policy._rego_mode) is an `Enforcer`:
  a version it cannot decide by exactly is refused when it is created, validated or
  activated (PolicyValidationError), and an activation is put in force there before it
  is written and swapped in here: when the engine does not take it, the activation fails
  (DecisionUnavailable) and the previous version stays active.
* Watchers (gRPC Watch) get a `Change` for every new version and every activation, as
  soon as it is swapped in. A watcher that falls `WATCH_BACKLOG` changes behind is cut
  off (`Watcher.overflowed`) so it reconnects and reads a fresh snapshot, rather than
  holding memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from bastion._errors import ConfigError, PolicyValidationError, StoreError

from ._bundles import bundle_expiry
from ._document import PolicyDocument, parse_policy
from ._engine import PolicySet
from ._store import (
    Activation,
    PolicyStore,
    RolloutConflict,
    Signature,
    VersionExists,
    VersionRecord,
    version_digest,
)

if TYPE_CHECKING:
    from ._rollouts import LiveRollout

CONFIG_AUTHOR = "bastion.yaml"
WATCH_BACKLOG = 1024
_SET_CACHE = 32
#: The spec stanzas the proxy needs before it decides (carried in BundleEvent.settings_json).
SETTINGS_STANZAS = ("verifier", "limits", "taint")


@dataclass(frozen=True, slots=True)
class Compiled:
    """One version, validated and compiled once."""

    document: PolicyDocument
    digest: str
    #: The version alone as a set: proves it compiles, and gives its rule count.
    alone: PolicySet
    settings_json: str


@dataclass(frozen=True, slots=True)
class ActiveVersion:
    name: str
    version: int
    digest: str
    settings_json: str
    rule_count: int
    activated_at: float
    activated_by: str
    #: `exp` (unix s) of the signed bundle the version was submitted in; None when unsigned.
    bundle_expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The active set: what every decision is made against, swapped as one reference."""

    policies: PolicySet
    versions: tuple[ActiveVersion, ...]
    #: Running canary rollouts (bastion.policy._rollouts); bit i of an arm mask is rollout i's CANARY arm.
    rollouts: tuple[LiveRollout, ...] = ()
    #: The set to decide with for each arm mask (index 0 is `policies`); empty without rollouts.
    sets: tuple[PolicySet, ...] = ()


@dataclass(frozen=True, slots=True)
class Change:
    kind: Literal["created", "activated"]
    name: str
    version: int
    digest: str
    settings_json: str
    at: float


class Enforcer(Protocol):
    """An engine outside this process that decides by the active set (Rego mode's OPA)."""

    def check(self, document: PolicyDocument) -> None:
        """PolicyValidationError naming what in `document` the engine cannot decide by."""

    def transition(self, documents: tuple[PolicyDocument, ...]) -> AbstractAsyncContextManager[None]:
        """Put `documents` (the whole next active set) in force, then run the body that makes
        them active here; DecisionUnavailable on entry when the engine did not take them."""


@dataclass(eq=False)
class Watcher:
    queue: asyncio.Queue[Change] = field(default_factory=lambda: asyncio.Queue(WATCH_BACKLOG))
    overflowed: bool = False


def settings_json(document: PolicyDocument) -> str:
    """{"verifier": …, "limits": …, "taint": …} of the document's spec, defaults filled in; null when absent.

    Also `agents`: the agent patterns the version governs, so the proxy applies its
    `verifier:` stanza to those agents only (proxy/_verifier_settings.py): every rule's
    `match.agents`, or ["*"] when its default can decide any agent's call (no rules, or
    `default: allow`)."""
    spec: dict[str, Any] = document.model_dump(mode="json", by_alias=True)["spec"]
    settings: dict[str, Any] = {name: spec.get(name) for name in SETTINGS_STANZAS}
    rules = document.spec.rules
    if not rules or document.spec.default == "allow":
        settings["agents"] = ["*"]
    else:
        settings["agents"] = list(dict.fromkeys(pattern for rule in rules for pattern in rule.match.agents))
    return orjson.dumps(settings, option=orjson.OPT_SORT_KEYS).decode()


def compile_version(text: str, *, source: str | None = None) -> Compiled:
    """Parse, validate and compile one document; PolicyValidationError names every problem."""
    document = parse_policy(text, source=source)
    return Compiled(
        document=document,
        digest=version_digest(document),
        alone=PolicySet.compile([document]),
        settings_json=settings_json(document),
    )


class PolicyRegistry:
    """Versions (through the store), the compiled cache, the active snapshot and its watchers."""

    def __init__(self, store: PolicyStore, *, enforcer: Enforcer | None = None) -> None:
        """`enforcer`: the engine outside this process that decides (None: the native engine here)."""
        self._store = store
        self._enforcer = enforcer
        self._compiled: dict[tuple[str, int], Compiled] = {}
        self._sets: OrderedDict[tuple[tuple[str, int], ...], PolicySet] = OrderedDict()
        self._snapshot = Snapshot(PolicySet.compile([]), ())
        self._lock = asyncio.Lock()
        self._watchers: set[Watcher] = set()
        self._rollouts: tuple[LiveRollout, ...] = ()

    @property
    def store(self) -> PolicyStore:
        return self._store

    @property
    def policies(self) -> PolicySet:
        """The active set; read it once per decision."""
        return self._snapshot.policies

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def bundle_expiries(self) -> tuple[tuple[str, int, int | None], ...]:
        """(name, version, exp of its signed bundle or None) of each active version."""
        return tuple((active.name, active.version, active.bundle_expires_at) for active in self._snapshot.versions)

    def active_documents(self) -> tuple[PolicyDocument, ...]:
        """The active versions' documents, in evaluation order (for an engine outside this process)."""
        return tuple(self._compiled[(active.name, active.version)].document for active in self._snapshot.versions)

    def check_enforceable(self, document: PolicyDocument) -> None:
        """PolicyValidationError when the engine that decides cannot decide by `document` exactly."""
        if self._enforcer is not None:
            self._enforcer.check(document)

    # --- start ----------------------------------------------------------------------------

    async def apply_files(self, paths: Sequence[Path]) -> None:
        """Apply bastion.yaml `policies:` (see the module docstring), then load the active set."""
        async with self._lock:
            active = {activation.name for activation in await self._store.active()}
            for path in paths:
                text = _read(path)
                compiled = compile_version(text, source=str(path))
                try:
                    self.check_enforceable(compiled.document)
                except PolicyValidationError as exc:
                    raise PolicyValidationError(f"{path}: {exc}") from exc
                name, version = compiled.document.metadata.name, compiled.document.metadata.version
                try:
                    _, created = await self._store.add(compiled.document, text, author=CONFIG_AUTHOR)
                except VersionExists as exc:
                    raise ConfigError(f"{path}: {exc}") from exc
                self._compiled[(name, version)] = compiled
                if created or name not in active:
                    # bastion.yaml is the operator's word at start: applied even while a
                    # rollout of the policy runs (audited with that rollout's id).
                    await self._store.activate(name, version, by=CONFIG_AUTHOR, during_rollout=True)
                    active.add(name)
            await self._reload()

    async def _reload(self) -> None:
        activations = await self._store.active()
        versions = []
        for activation in activations:
            versions.append(await self._active_version(activation))
        self._swap(tuple(versions))

    async def _active_version(self, activation: Activation) -> ActiveVersion:
        compiled = await self._load(activation.name, activation.version)
        # Activations are rare: one more read of the record for its signature costs nothing.
        signature = (await self._store.get(activation.name, activation.version)).signature
        return ActiveVersion(
            name=activation.name,
            version=activation.version,
            digest=compiled.digest,
            settings_json=compiled.settings_json,
            rule_count=len(compiled.alone.rules),
            activated_at=activation.activated_at,
            activated_by=activation.activated_by,
            bundle_expires_at=bundle_expiry(signature.jws) if signature else None,
        )

    async def _load(self, name: str, version: int) -> Compiled:
        key = (name, version)
        compiled = self._compiled.get(key)
        if compiled is None:
            record = await self._store.get(name, version)
            compiled = compile_version(record.document, source=f"stored policy {name!r} v{version}")
            if compiled.digest != record.digest:
                # The text no longer canonicalises to the digest it was stored under:
                # serving it would put a different policy under a trusted version.
                raise StoreError(
                    f"stored policy {name!r} v{version} no longer matches its digest {record.digest}; "
                    "restore the policy store from a backup"
                )
            self._compiled[key] = compiled
        return compiled

    def _swap(self, versions: tuple[ActiveVersion, ...]) -> None:
        key = tuple((version.name, version.version) for version in versions)
        policies = self._set(key)
        sets: tuple[PolicySet, ...] = ()
        if self._rollouts:
            # Every combination of arms, compiled now (from the cache when seen before), so a
            # decision only picks one: the candidate of each CANARY arm replaces its stable version.
            sets = tuple(
                self._set(tuple((name, self._arm_version(name, version, mask)) for name, version in key))
                for mask in range(1 << len(self._rollouts))
            )
        self._snapshot = Snapshot(policies, versions, self._rollouts, sets)  # the one assignment decisions observe

    def _arm_version(self, name: str, version: int, mask: int) -> int:
        for index, live in enumerate(self._rollouts):
            if live.policy == name and mask >> index & 1:
                return live.version
        return version

    def _set(self, key: tuple[tuple[str, int], ...]) -> PolicySet:
        policies = self._sets.get(key)
        if policies is None:
            policies = PolicySet.compile([self._compiled[item].document for item in key])
            self._sets[key] = policies
            if len(self._sets) > _SET_CACHE:
                self._sets.popitem(last=False)
        else:
            self._sets.move_to_end(key)
        return policies

    # --- changes --------------------------------------------------------------------------

    async def create(
        self, text: str, *, author: str, signature: Signature | None = None, expect: tuple[str, int] | None = None
    ) -> tuple[VersionRecord, bool]:
        """Validate, compile and store a version (not activated); (record, whether it is new).

        `expect` is the (name, version) the caller addressed: a document naming another is refused.
        """
        # Parsing and compiling a large document takes a while: not on the event loop.
        compiled = await asyncio.to_thread(compile_version, text)
        self.check_enforceable(compiled.document)
        named = (compiled.document.metadata.name, compiled.document.metadata.version)
        if expect is not None and named != expect:
            raise PolicyValidationError(
                f"the URL names policy {expect[0]!r} v{expect[1]} but the document is {named[0]!r} v{named[1]}; "
                "they must agree"
            )
        async with self._lock:
            record, created = await self._store.add(compiled.document, text, author=author, signature=signature)
            self._compiled.setdefault((record.name, record.version), compiled)
            if created:
                self._publish(
                    Change("created", record.name, record.version, record.digest, compiled.settings_json, time.time())
                )
        return record, created

    async def activate(self, name: str, version: int, *, by: str) -> tuple[ActiveVersion, int | None]:
        """Make a stored version the active one of its policy; (now active, previously active version).

        With an enforcer, the next set is put in force there first; when it is not taken,
        DecisionUnavailable, and nothing changes here."""
        async with self._lock:
            compiled = await self._load(name, version)  # refuses an unknown or corrupt version before anything changes
            self.check_enforceable(compiled.document)
            previous = next((item.version for item in self._snapshot.versions if item.name == name), None)
            running = next((live.id for live in self._rollouts if live.policy == name), None)
            if running is not None and self._enforcer is not None:
                # The store refuses this too, but only after the enforcer has put the version in force.
                raise RolloutConflict(
                    f"policy {name!r} has a running rollout {running}; roll it back before activating a version"
                )
            async with self._in_force(self._next_documents(compiled.document)):
                activation = await self._store.activate(name, version, by=by)
                active = await self._active_version(activation)
                versions = [active if item.name == name else item for item in self._snapshot.versions]
                if previous is None:
                    versions.append(active)
                self._swap(tuple(versions))
                self._publish(
                    Change("activated", name, version, active.digest, active.settings_json, activation.activated_at)
                )
        return active, previous

    def _next_documents(self, document: PolicyDocument) -> tuple[PolicyDocument, ...]:
        """The active set with `document` in place of its policy's version (appended when new)."""
        name = document.metadata.name
        current = self.active_documents()
        if any(item.metadata.name == name for item in current):
            return tuple(document if item.metadata.name == name else item for item in current)
        return (*current, document)

    def _in_force(self, documents: tuple[PolicyDocument, ...]) -> AbstractAsyncContextManager[None]:
        if self._enforcer is None:
            return contextlib.nullcontext()
        return self._enforcer.transition(documents)

    async def load(self, name: str, version: int) -> Compiled:
        """The compiled version (from the cache, else the store); UnknownVersion when not stored."""
        return await self._load(name, version)

    async def change_rollouts(
        self,
        change: Callable[[tuple[LiveRollout, ...]], tuple[LiveRollout, ...]],
        write: Callable[[], Awaitable[Activation | None]] | None = None,
    ) -> None:
        """Replace the running rollouts with `change(running)` after `write()` succeeded (it
        records the step durably; an Activation it returns is swapped in and published as one).

        Every candidate must have been `load`ed. Nothing changes in memory when `write` raises.
        """
        async with self._lock:
            activation = await write() if write is not None else None
            versions = self._snapshot.versions
            if activation is not None:
                active = await self._active_version(activation)
                versions = tuple(active if item.name == activation.name else item for item in versions)
            self._rollouts = change(self._rollouts)
            self._swap(versions)
            if activation is not None:
                self._publish(
                    Change(
                        "activated",
                        activation.name,
                        activation.version,
                        active.digest,
                        active.settings_json,
                        activation.activated_at,
                    )
                )

    async def versions(
        self, name: str, *, after: int = 0, limit: int | None = None, summaries: bool = False
    ) -> list[VersionRecord]:
        return await self._store.versions(name, after=after, limit=limit, summaries=summaries)

    async def get(self, name: str, version: int) -> VersionRecord:
        return await self._store.get(name, version)

    # --- watchers -------------------------------------------------------------------------

    def subscribe(self) -> Watcher:
        watcher = Watcher()
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def _publish(self, change: Change) -> None:
        for watcher in list(self._watchers):
            try:
                watcher.queue.put_nowait(change)
            except asyncio.QueueFull:
                watcher.overflowed = True
                self._watchers.discard(watcher)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"policy file {path} not found (listed under 'policies:' in bastion.yaml)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
