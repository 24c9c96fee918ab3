"""Canary rollouts: a slice of callers decided by a candidate version, promoted, rolled back,
or rolled back automatically when the candidate denies noticeably more than the stable one.

Contract
--------
* A rollout is started for a stored version (the *candidate*) of a policy that has an
  active (*stable*) version, with a `percent` (0-100, hundredths honoured) and a
  `stickiness`. Its id is a server-generated uuid7. At most one rollout per policy runs
  at a time (the store enforces it too), and at most `MAX_RUNNING` in all (each running
  rollout doubles the precompiled sets, see below). A start that an activation of the
  policy overtakes is refused (409), so `stable_version` is always the version in force.
* **Arm assignment is a pure function** of (stickiness key, rollout id):
  `int.from_bytes(sha256(key + "\\0" + rollout_id)[:8], "big") % 10_000 < round(percent * 100)`
  means CANARY. The key is `tenant + "\\0" + agent_id` for stickiness `agent`, and
  `tenant + "\\0" + session_id` for `session` — falling back to the agent key when the
  request has no session id. No per-request randomness and no state: a caller stays
  on one arm for the whole rollout, across restarts of the service and across replicas.
* **Decisions**: the registry precompiles, for every combination of arms of the running
  rollouts, the active set with the candidates of the CANARY arms in place of their
  stable versions, and publishes them in the same `Snapshot` as the active set, so a
  decision reads one reference and is consistent. A decision whose deciding policy
  (`Decision.policy_name`) is under a rollout carries that rollout's arm
  (`rollout_arm` STABLE or CANARY) and is counted for it; any other decision carries
  ROLLOUT_ARM_UNSPECIFIED.
* **Counts**: per arm, decisions, denies (effect DENY) and errors (a rule whose `when`
  failed to evaluate and so denied: the engine flags those, `Decision.error`). Totals
  are kept in memory, written to the store every `FLUSH_S` and when the rollout ends,
  and carried over a restart.
* **Auto-rollback** (`rollback_on`): per arm, counters bucketed per second over the
  last `window` (1 s to 1 h): recording a decision is a few integer updates, and a
  background check every `CHECK_S` sums the buckets. When the CANARY arm has at least
  `min_decisions` from at least `min_agents` distinct agents in the window and its deny
  rate minus the STABLE arm's deny rate
  (an absolute difference of rates; a STABLE arm with no decisions counts as rate 0)
  is greater than `deny_rate` — or likewise for `error_rate` — the rollout is ended as
  `auto_rolled_back` with the reason, counted
  (`bastion_policy_rollout_auto_rollbacks_total`) and logged. When the store fails that
  write, nothing changes, the failure is logged and the next check tries again.
* **Promote** activates the candidate (an ordinary activation: Watch subscribers see
  ACTIVATED) and ends the rollout in one store transaction; **rollback** ends it and
  changes nothing else. Every step (started, promoted, rolled_back, auto_rolled_back)
  writes an audit record in the same transaction (bastion.policy._audit ships them).
* Rollouts are served by the native engine only: with `BASTION_POLICY_ENGINE=opa`,
  starting one is refused, and so is promoting one started before the switch (a
  promotion would activate the candidate without OPA being asked to take it, or
  whether it can: roll it back, then activate the version, which does both).
* A candidate whose signed bundle has expired (the signer's approval ran out) is never put
  in force: starting a rollout to it or promoting it is refused with 422
  (`BundleVerifier.check_in_force`); a rollout already running keeps serving it, and
  rollback is always allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import uuid6
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.v1 import policy_pb2

from ._bundles import BundleVerifier
from ._engine import Decision, Effect
from ._outbox import POLICY_WORKFLOW, outbox_event
from ._registry import PolicyRegistry, Snapshot
from ._store import Activation, RolloutConflict, RolloutRow

log = logging.getLogger("bastion.policy.rollouts")

#: Running rollouts at once (all policies): the registry precompiles 2**n sets.
MAX_RUNNING = 4
BUCKETS = 10_000
#: Agents remembered per rollout for `min_agents` (the most recently seen on the canary).
MAX_AGENTS = 1024
CHECK_S = 0.25
FLUSH_S = 2.0
MAX_WINDOW_S = 3600
AUDIT_WORKFLOW = POLICY_WORKFLOW
AUTO_ACTOR = "bastion.policy (auto-rollback)"
ARMS = ("stable", "canary")
_WINDOW = re.compile(r"([1-9][0-9]{0,6})(s|m|h)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}

State = Literal["running", "promoted", "rolled_back", "auto_rolled_back"]


class UnknownRollout(LookupError):
    """No rollout with this id (HTTP 404)."""


# --- the request ---------------------------------------------------------------------------


class RollbackOn(BaseModel):
    """When to roll back automatically: the canary's rate minus the stable's, over `window`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    deny_rate: float | None = Field(
        default=None, ge=0, le=1, description="Roll back when canary deny rate - stable deny rate > this."
    )
    error_rate: float | None = Field(
        default=None, ge=0, le=1, description="Roll back when canary error rate - stable error rate > this."
    )
    window: str = Field(default="5m", description="Sliding window, '<n>s|m|h', 1 s to 1 h.")
    min_decisions: int = Field(default=50, ge=1, le=10**9, description="Canary decisions needed in the window.")
    min_agents: int = Field(
        default=2,
        ge=1,
        le=MAX_AGENTS,
        description="Distinct agents deciding on the canary arm in the window: one agent alone cannot roll it back.",
    )

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        window_seconds(value)
        return value

    @model_validator(mode="after")
    def _some_rate(self) -> RollbackOn:
        if self.deny_rate is None and self.error_rate is None:
            raise ValueError("rollback_on needs deny_rate or error_rate (or both)")
        return self


class RolloutRequest(BaseModel):
    """POST /v1/rollouts."""

    model_config = ConfigDict(extra="forbid", strict=True)

    policy: str = Field(max_length=63, description="The policy (metadata.name); it must have an active version.")
    version: int = Field(ge=1, le=2**63 - 1, description="The stored candidate version.")
    percent: float = Field(ge=0, le=100, description="Share of callers on the candidate, 0-100 (hundredths count).")
    stickiness: Literal["agent", "session"] = Field(
        default="agent",
        description=(
            "What keeps a caller on one arm: its agent, or its session (else its agent). With session, an agent "
            "that opens sessions or names workflows chooses its arm: use it only for a candidate every caller may have."
        ),
    )
    rollback_on: RollbackOn | None = None

    @field_validator("percent")
    @classmethod
    def _in_hundredths(cls, percent: float) -> float:
        # Callers are assigned in hundredths of a percent: 1e-9 was accepted and put no one
        # on the candidate while saying it did; -0.0 was echoed as it came.
        if abs(percent * 100 - round(percent * 100)) > 1e-9:
            raise ValueError(f"percent {percent!r} must be given in hundredths (0.01 steps), e.g. 5 or 12.5")
        return round(percent, 2) + 0.0


def window_seconds(window: str) -> int:
    match = _WINDOW.fullmatch(window)
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise ValueError(f"window {window[:32]!r} must be '<n>s', '<n>m' or '<n>h' between 1s and 1h, e.g. '5m'")
    return seconds


# --- assignment ----------------------------------------------------------------------------


def bucket(key: str, rollout_id: str) -> int:
    """The caller's bucket 0..9999 for this rollout (see the module docstring)."""
    digest = hashlib.sha256(f"{key}\0{rollout_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def stickiness_key(stickiness: str, ctx: policy_pb2.Context) -> str:
    if stickiness == "session" and ctx.session_id:
        return f"{ctx.tenant}\0{ctx.session_id}"
    return f"{ctx.tenant}\0{ctx.agent_id}"


# --- what a decision touches ---------------------------------------------------------------


class _Window:
    """Per-second buckets over the last `seconds`: [second, decisions, denies, errors] each."""

    __slots__ = ("_slots", "seconds")

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self._slots = [[-1, 0, 0, 0] for _ in range(seconds)]

    def add(self, now: int, denied: bool, error: bool) -> None:
        slot = self._slots[now % self.seconds]
        if slot[0] != now:
            slot[0], slot[1], slot[2], slot[3] = now, 0, 0, 0
        slot[1] += 1
        slot[2] += denied
        slot[3] += error

    def totals(self, now: int) -> tuple[int, int, int]:
        oldest = now - self.seconds
        decisions = denies = errors = 0
        for second, d, n, e in self._slots:
            if second > oldest:
                decisions, denies, errors = decisions + d, denies + n, errors + e
        return decisions, denies, errors


@dataclass(eq=False, slots=True)
class LiveRollout:
    """A running rollout as decisions see it (held in the registry's Snapshot)."""

    id: str
    policy: str
    version: int
    threshold: int
    session: bool
    rollback_on: RollbackOn | None
    window_s: int
    #: [decisions, denies, errors] per arm (0 stable, 1 canary), since start (restarts included).
    totals: tuple[list[int], list[int]]
    windows: tuple[_Window, _Window] | None
    counter: Callable[[str, str, str], Any]
    _children: dict[tuple[int, Effect], Any] = field(default_factory=dict)
    #: Agents (tenant and id) decided on the canary arm, with the second last seen, oldest
    #: first: an auto-rollback needs `min_agents` of them in the window, so one agent —
    #: which can make the canary deny at will — cannot end a tightening (an attacker's probe
    #: rolled one back alone with 25 calls).
    _agents: dict[str, int] = field(default_factory=dict)

    def canary(self, ctx: policy_pb2.Context) -> bool:
        return bucket(stickiness_key("session" if self.session else "agent", ctx), self.id) < self.threshold

    def record(self, arm: int, decision: Decision, now: int, agent: str = "") -> None:
        if arm and self.windows is not None:
            self._agents.pop(agent, None)
            self._agents[agent] = now
            if len(self._agents) > MAX_AGENTS:
                del self._agents[next(iter(self._agents))]
        denied = decision.effect is Effect.DENY
        totals = self.totals[arm]
        totals[0] += 1
        totals[1] += denied
        totals[2] += decision.error
        if self.windows is not None:
            self.windows[arm].add(now, denied, decision.error)
        child = self._children.get((arm, decision.effect))
        if child is None:
            child = self._children[(arm, decision.effect)] = self.counter(self.policy, ARMS[arm], decision.effect.value)
        child.inc()

    def breach(self, now: int) -> str | None:
        """Why the canary must be rolled back now, or None (see the module docstring)."""
        if self.windows is None or self.rollback_on is None:
            return None
        canary, stable = self.windows[1].totals(now), self.windows[0].totals(now)
        rule = self.rollback_on
        if canary[0] < rule.min_decisions:
            return None
        oldest = now - self.window_s
        if sum(seen > oldest for seen in reversed(self._agents.values())) < rule.min_agents:
            return None
        window = _format_window(self.window_s)
        for what, index, limit in (("deny", 1, rule.deny_rate), ("error", 2, rule.error_rate)):
            if limit is None:
                continue
            ours = canary[index] / canary[0]
            theirs = stable[index] / stable[0] if stable[0] else 0.0
            if ours - theirs > limit:
                return (
                    f"canary {what} rate {ours:.2f} vs stable {theirs:.2f} over {window} exceeds {limit:g} "
                    f"({canary[0]} canary, {stable[0]} stable decisions)"
                )
        return None


def arm_mask(snapshot: Snapshot, ctx: policy_pb2.Context) -> int:
    """Bit i set: the caller is on rollout i's CANARY arm (index into snapshot.sets)."""
    mask = 0
    for index, live in enumerate(snapshot.rollouts):
        if live.canary(ctx):
            mask |= 1 << index
    return mask


def observe(
    snapshot: Snapshot, mask: int, decision: Decision, ctx: policy_pb2.Context | None = None
) -> policy_pb2.RolloutArm.ValueType:
    """Count `decision` (for the caller of `ctx`) for the rollout of its deciding policy; the arm it carries."""
    for index, live in enumerate(snapshot.rollouts):
        if live.policy == decision.policy_name:
            arm = (mask >> index) & 1
            agent = f"{ctx.tenant}\0{ctx.agent_id}" if ctx is not None else ""
            live.record(arm, decision, int(time.monotonic()), agent)
            return policy_pb2.CANARY if arm else policy_pb2.STABLE
    return policy_pb2.ROLLOUT_ARM_UNSPECIFIED


# --- the durable record --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rollout:
    id: str
    policy: str
    version: int
    stable_version: int
    percent: float
    stickiness: str
    rollback_on: dict[str, Any] | None
    started_at: float
    started_by: str
    state: State
    #: Per arm: {"decisions", "denies", "errors"}.
    counts: dict[str, dict[str, int]]
    reason: str
    ended_at: float | None
    ended_by: str | None
    audit_node: str

    def spec_json(self) -> str:
        spec = {
            "version": self.version,
            "stable_version": self.stable_version,
            "percent": self.percent,
            "stickiness": self.stickiness,
            "rollback_on": self.rollback_on,
            "started_at": self.started_at,
            "started_by": self.started_by,
            "audit_node": self.audit_node,
        }
        return orjson.dumps(spec).decode()

    def row(self) -> RolloutRow:
        counts = orjson.dumps(self.counts).decode()
        return RolloutRow(
            self.id, self.policy, self.state, self.spec_json(), counts, self.reason, self.ended_at, self.ended_by
        )

    @classmethod
    def from_row(cls, row: RolloutRow) -> Rollout:
        spec = orjson.loads(row.spec)
        return cls(
            id=row.id,
            policy=row.policy,
            version=int(spec["version"]),
            stable_version=int(spec["stable_version"]),
            percent=float(spec["percent"]),
            stickiness=str(spec["stickiness"]),
            rollback_on=spec["rollback_on"],
            started_at=float(spec["started_at"]),
            started_by=str(spec["started_by"]),
            state=row.state,  # type: ignore[arg-type]
            counts=orjson.loads(row.counts),
            reason=row.reason,
            ended_at=row.ended_at,
            ended_by=row.ended_by,
            audit_node=str(spec["audit_node"]),
        )


def _zero_counts() -> dict[str, dict[str, int]]:
    return {arm: {"decisions": 0, "denies": 0, "errors": 0} for arm in ARMS}


def _counts(live: LiveRollout) -> dict[str, dict[str, int]]:
    return {
        arm: {"decisions": totals[0], "denies": totals[1], "errors": totals[2]}
        for arm, totals in zip(ARMS, live.totals, strict=True)
    }


# --- the manager ---------------------------------------------------------------------------


class RolloutManager:
    """Starts, ends and reports rollouts; runs the auto-rollback check and the count flush."""

    def __init__(
        self,
        policies: PolicyRegistry,
        *,
        registry: CollectorRegistry,
        enabled: bool = True,
        on_audit: Callable[[], None] = lambda: None,
        bundles: BundleVerifier | None = None,
    ) -> None:
        """`bundles` refuses expired candidates and counts the refusal (None: one that counts nowhere)."""
        self._policies = policies
        self._bundles = bundles if bundles is not None else BundleVerifier({})
        self._on_audit = on_audit
        self._store = policies.store
        self._enabled = enabled
        self._lock = asyncio.Lock()
        self._decisions = Counter(
            "bastion_policy_rollout_decisions",
            "Decisions made by a policy under a canary rollout, by arm and effect.",
            ["policy", "arm", "effect"],
            registry=registry,
        )
        self._auto = Counter(
            "bastion_policy_rollout_auto_rollbacks",
            "Canary rollouts rolled back automatically (rollback_on).",
            ["policy"],
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None
        self._flushed: dict[str, str] = {}

    # --- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        """Reload the running rollouts from the store (at start); then run the background check."""
        rows = await self._store.rollouts(running=True)
        lives = []
        for row in rows:
            rollout = Rollout.from_row(row)
            await self._policies.load(rollout.policy, rollout.version)
            lives.append(self._live(rollout))
        await self._policies.change_rollouts(lambda _: tuple(lives))
        for rollout in map(Rollout.from_row, rows):
            log.info(
                "canary rollout %s of %r v%d at %g%% resumed",
                rollout.id,
                rollout.policy,
                rollout.version,
                rollout.percent,
            )
        self._task = asyncio.create_task(self._watch(), name="bastion-policy-rollouts")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush()

    # --- steps -----------------------------------------------------------------------------

    async def start(self, request: RolloutRequest, *, by: str) -> Rollout:
        if not self._enabled:
            raise RolloutConflict(
                "canary rollouts are decided by the native engine; this service decides through OPA "
                "(BASTION_POLICY_ENGINE=opa)"
            )
        async with self._lock:
            stable = next((item for item in self._policies.snapshot.versions if item.name == request.policy), None)
            record = await self._policies.get(request.policy, request.version)  # UnknownVersion (404) first
            if stable is None:
                raise RolloutConflict(
                    f"policy {request.policy!r} has no active version: activate one before a canary rollout"
                )
            if stable.version == request.version:
                raise RolloutConflict(f"policy {request.policy!r} v{request.version} is already the active version")
            if len(self._policies.snapshot.rollouts) >= MAX_RUNNING:
                raise RolloutConflict(f"{MAX_RUNNING} rollouts are running; end one before starting another")
            self._bundles.check_in_force(record)
            await self._policies.load(request.policy, request.version)
            rollout_id = str(uuid6.uuid7())
            rollout = Rollout(
                id=rollout_id,
                policy=request.policy,
                version=request.version,
                stable_version=stable.version,
                percent=request.percent,
                stickiness=request.stickiness,
                rollback_on=request.rollback_on.model_dump() if request.rollback_on else None,
                started_at=time.time(),
                started_by=by,
                state="running",
                counts=_zero_counts(),
                reason="",
                ended_at=None,
                ended_by=None,
                audit_node=rollout_id,
            )
            live = self._live(rollout)
            audit = audit_event(rollout, "started", rollout.started_at, by)

            async def write() -> None:
                # Runs under the registry's lock, which every activation takes: an activation that
                # landed while this request read the store (found by an attacker's probe) would leave
                # the rollout naming a stable arm no longer in force, or a candidate that is active.
                versions = self._policies.snapshot.versions
                now = next((item.version for item in versions if item.name == rollout.policy), None)
                if now != rollout.stable_version:
                    raise RolloutConflict(
                        f"policy {rollout.policy!r} v{now} was activated while this rollout was starting "
                        f"(it read v{rollout.stable_version}); nothing was started: start it again"
                    )
                await self._store.start_rollout(rollout.row(), audit)

            await self._policies.change_rollouts(lambda running: (*running, live), write)
        self._on_audit()
        log.info(
            "canary rollout %s of %r v%d (stable v%d) at %g%% by %s started",
            rollout.id,
            rollout.policy,
            rollout.version,
            rollout.stable_version,
            rollout.percent,
            by,
            extra={"fields": {"rollout": rollout.id, "policy": rollout.policy, "step": "started"}},
        )
        return rollout

    async def promote(self, rollout_id: str, *, by: str) -> Rollout:
        return await self._end(rollout_id, "promoted", "promoted by an operator", by)

    async def rollback(self, rollout_id: str, *, by: str) -> Rollout:
        return await self._end(rollout_id, "rolled_back", "rolled back by an operator", by)

    async def get(self, rollout_id: str) -> Rollout:
        row = await self._store.rollout(rollout_id)
        if row is None:
            raise UnknownRollout(f"no rollout {rollout_id[:64]!r}")
        return self._current(Rollout.from_row(row))

    async def page(
        self, policy: str | None = None, *, after: str | None = None, limit: int = 100
    ) -> tuple[list[Rollout], str | None]:
        """Rollouts oldest first, optionally of one policy, from after the rollout id `after`:
        (at most `limit` of them, the id to continue after or None). Rollouts are the
        deployment's, not a tenant's (each puts a version in force for every tenant), so any
        reader's cursor is as good as another's; but a cursor must name a rollout of the listing,
        or a client's mistake would read as a silently shorter list."""
        if after is not None:
            cursor = await self._store.rollout(after)
            if cursor is None or (policy is not None and cursor.policy != policy):
                of = f" of policy {policy!r}" if policy is not None else ""
                raise UnknownRollout(f"no rollout {after[:64]!r}{of} to continue after")
        rows = await self._store.rollouts(policy=policy, after=after, limit=limit + 1)
        found = [self._current(Rollout.from_row(row)) for row in rows[:limit]]
        return found, found[-1].id if len(rows) > limit else None

    async def _end(self, rollout_id: str, state: State, reason: str, by: str) -> Rollout:
        async with self._lock:
            current = await self.get(rollout_id)
            if current.state != "running":
                raise RolloutConflict(
                    f"rollout {rollout_id} is already {current.state.replace('_', ' ')}"
                    f"{' (' + current.reason + ')' if current.reason else ''}: only a running rollout can be "
                    "promoted or rolled back"
                )
            if state == "promoted" and not self._enabled:
                raise RolloutConflict(
                    f"rollout {rollout_id} cannot be promoted while this service decides through OPA "
                    f"(BASTION_POLICY_ENGINE=opa): roll it back, then activate v{current.version} "
                    f"(POST /v1/policies/{current.policy}/versions/{current.version}/activate)"
                )
            if state == "promoted":
                self._bundles.check_in_force(await self._policies.get(current.policy, current.version))
            now = time.time()
            ended = _replace(current, state=state, reason=reason, ended_at=now, ended_by=by)
            step = state
            audit = audit_event(ended, step, now, by)
            activate = (ended.policy, ended.version) if state == "promoted" else None

            async def write() -> Activation | None:
                return await self._store.end_rollout(ended.row(), audit, activate)

            await self._policies.change_rollouts(
                lambda running: tuple(item for item in running if item.id != rollout_id), write
            )
        self._on_audit()
        log.log(
            logging.WARNING if state == "auto_rolled_back" else logging.INFO,
            "canary rollout %s of %r v%d %s by %s: %s",
            ended.id,
            ended.policy,
            ended.version,
            state.replace("_", " "),
            by,
            reason,
            extra={"fields": {"rollout": ended.id, "policy": ended.policy, "step": state, "reason": reason}},
        )
        return ended

    # --- state in memory -------------------------------------------------------------------

    def _live(self, rollout: Rollout) -> LiveRollout:
        rule = RollbackOn.model_validate(rollout.rollback_on) if rollout.rollback_on else None
        seconds = window_seconds(rule.window) if rule else 0
        totals = tuple([rollout.counts[arm][key] for key in ("decisions", "denies", "errors")] for arm in ARMS)
        return LiveRollout(
            id=rollout.id,
            policy=rollout.policy,
            version=rollout.version,
            threshold=round(rollout.percent * 100),
            session=rollout.stickiness == "session",
            rollback_on=rule,
            window_s=seconds,
            totals=(totals[0], totals[1]),
            windows=(_Window(seconds), _Window(seconds)) if rule else None,
            counter=lambda policy, arm, effect: self._decisions.labels(policy=policy, arm=arm, effect=effect),
        )

    def _current(self, rollout: Rollout) -> Rollout:
        """The rollout with the live counts when it is running here."""
        live = self._running(rollout.id)
        return _replace(rollout, counts=_counts(live)) if live is not None and rollout.state == "running" else rollout

    def _running(self, rollout_id: str) -> LiveRollout | None:
        return next((live for live in self._policies.snapshot.rollouts if live.id == rollout_id), None)

    async def _watch(self) -> None:
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(CHECK_S)
            now = int(time.monotonic())
            for live in self._policies.snapshot.rollouts:
                reason = live.breach(now)
                if reason is None:
                    continue
                try:
                    await self._end(live.id, "auto_rolled_back", reason, AUTO_ACTOR)
                except RolloutConflict:
                    continue  # ended by an operator meanwhile
                except Exception:
                    # The store failed (locked, disk full): nothing changed, so the next check tries
                    # again. Letting it end this task stopped every later auto-rollback and count
                    # flush, silently, for as long as the service ran (an attacker's probe).
                    log.exception("could not roll back canary rollout %s of %r; retrying", live.id, live.policy)
                    continue
                self._auto.labels(policy=live.policy).inc()
            if time.monotonic() - last_flush >= FLUSH_S:
                last_flush = time.monotonic()
                try:
                    await self._flush()
                except Exception:  # a failed flush loses only counts, which the next flush writes again
                    log.exception("could not write rollout counts")

    async def _flush(self) -> None:
        counts = {live.id: orjson.dumps(_counts(live)).decode() for live in self._policies.snapshot.rollouts}
        changed = {key: value for key, value in counts.items() if self._flushed.get(key) != value}
        if changed:
            await self._store.save_rollout_counts(changed)
            self._flushed.update(changed)


def _replace(rollout: Rollout, **changes: Any) -> Rollout:
    return dataclasses.replace(rollout, **changes)


def _format_window(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- audit records -------------------------------------------------------------------------


def audit_event(rollout: Rollout, step: str, at: float, by: str) -> bytes:
    """The graph Event recording one rollout step (serialised, for the outbox)."""
    event_id = rollout.audit_node if step == "started" else str(uuid6.uuid7())
    details: dict[str, Any] = {
        "rollout_id": rollout.id,
        "step": step,
        "policy": rollout.policy,
        "version": rollout.version,
        "stable_version": rollout.stable_version,
        "percent": rollout.percent,
        "stickiness": rollout.stickiness,
        "by": by,
    }
    if rollout.rollback_on is not None:
        details["rollback_on"] = {key: value for key, value in rollout.rollback_on.items() if value is not None}
    if step != "started":
        details["reason"] = rollout.reason
        details["counts"] = rollout.counts
    node = event_id
    parent = None if step == "started" else rollout.audit_node
    return outbox_event(AUDIT_WORKFLOW, f"rollout.{step}", at, by, details, node=node, parent=parent)
