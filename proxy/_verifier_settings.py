"""Which verifier settings (timeout, threshold, fallback) apply to an agent's actions.

A policy's `verifier:` stanza governs the agents its rules name (`match.agents`; a policy
with no rules, or with `default: allow`, can decide any agent's calls and so governs
every agent). When several policies govern an agent, the strictest value of each field
wins, as deny-overrides does for effects (DESIGN §5): the lowest threshold, the shortest
timeout, and fallback block > queue > allow. A field no governing policy sets takes the
proxy's default (BASTION_VERIFIER_TIMEOUT_MS, BASTION_VERIFIER_FALLBACK; no threshold:
the verifier's own verdict).

`name: none` waives scoring: an agent whose every governing policy says so is decided by
policy alone, and the verifier is not asked (a read-only agent, say, where the verifier's
round trip buys nothing). One governing policy without it, or without a stanza at all,
keeps the verifier asked: waiving is the one setting where the strictest is "asked".

The index is rebuilt from scratch on every Watch change (`PolicyWatch`) and never
changes after, so the hot path reads it without a lock: when every policy governs every
agent (the common case) one precomputed answer serves all, otherwise each agent's answer
is computed once and kept in a bounded map until the next change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bastion._globs import compile_patterns
from bastion._verdicts import NO_VERIFIER

from ._lru import Lru

Fallback = Literal["block", "allow", "queue"]
#: Strictest first (`min` by this rank).
_FALLBACK_RANK: dict[str, int] = {"block": 0, "queue": 1, "allow": 2}
#: The longest `timeout_ms` a policy may set (policy/_document.py `Verifier`); a longer
#: one read from a Watch event is held to it.
MAX_TIMEOUT_S = 60.0
#: Agents whose settings are kept between changes; past it the least recent is recomputed.
_CACHED_AGENTS = 65_536


@dataclass(frozen=True, slots=True)
class VerifierSettings:
    """What applies to one action: `timeout` in seconds; `threshold` None: the verifier's verdict."""

    timeout: float
    fallback: Fallback
    threshold: float | None = None
    #: Where the values come from, for block reasons and logs ("proxy defaults", "policy 'x' v3").
    source: str = "proxy defaults"
    #: False when every policy governing the agent waives scoring (`name: none`).
    scored: bool = True


@dataclass(frozen=True, slots=True)
class PolicyVerifier:
    """One active policy version's `verifier:` stanza and the agents it governs."""

    policy: str
    version: int
    #: None: every agent.
    agents: re.Pattern[str] | None
    timeout: float | None
    threshold: float | None
    fallback: Fallback | None
    #: False: `name: none`, the policy waives scoring for its agents.
    scores: bool = True

    @property
    def sets_anything(self) -> bool:
        return not self.scores or any(v is not None for v in (self.timeout, self.threshold, self.fallback))


def policy_verifier(policy: str, version: int, settings: dict[str, Any]) -> PolicyVerifier:
    """The stanza from a Watch event's settings. A version without one, or with one that is
    unreadable, sets nothing (the defaults hold: a malformed stanza must not loosen
    anything) but still governs its agents: it keeps their verifier asked."""
    stanza = settings.get("verifier")
    if not isinstance(stanza, dict):
        stanza = {}
    timeout_ms = _number(stanza.get("timeout_ms"))
    threshold = _number(stanza.get("threshold"))
    fallback = stanza.get("fallback")
    agents = settings.get("agents")
    patterns = [p for p in agents if isinstance(p, str)] if isinstance(agents, list) else ["*"]
    return PolicyVerifier(
        policy=policy,
        version=version,
        # An older policy service sends no `agents`: the stanza then governs everyone.
        agents=compile_agents(patterns or ["*"]),
        timeout=min(timeout_ms, MAX_TIMEOUT_S * 1000) / 1000 if timeout_ms is not None and timeout_ms > 0 else None,
        threshold=threshold if threshold is not None and 0 <= threshold <= 1 else None,
        fallback=fallback if fallback in _FALLBACK_RANK else None,
        scores=stanza.get("name") != NO_VERIFIER,
    )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def compile_agents(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """Agent globs exactly as the policy engine matches them (case-sensitive); None: all."""
    return compile_patterns(patterns)


class VerifierSettingsIndex:
    """Agent id → the settings of its actions; immutable once built (see the module docstring)."""

    def __init__(self, default: VerifierSettings, policies: Iterable[PolicyVerifier] = ()) -> None:
        self._default = default
        self._policies = tuple(policies)
        self._uniform: VerifierSettings | None = None
        if all(policy.agents is None for policy in self._policies):
            self._uniform = _strictest(default, self._policies)
        self._cache: Lru[str, VerifierSettings] = Lru(_CACHED_AGENTS)

    def for_agent(self, agent_id: str) -> VerifierSettings:
        if self._uniform is not None:
            return self._uniform
        found = self._cache.get(agent_id)
        if found is None:
            governing = [p for p in self._policies if p.agents is None or p.agents.fullmatch(agent_id)]
            found = _strictest(self._default, governing)
            self._cache.put(agent_id, found)
        return found


def _strictest(default: VerifierSettings, policies: Sequence[PolicyVerifier]) -> VerifierSettings:
    timeouts = [p.timeout for p in policies if p.timeout is not None]
    thresholds = [p.threshold for p in policies if p.threshold is not None]
    fallbacks = [p.fallback for p in policies if p.fallback is not None]
    setting = [p for p in policies if p.sets_anything]
    if not setting:
        return default
    return VerifierSettings(
        timeout=min(timeouts) if timeouts else default.timeout,
        fallback=min(fallbacks, key=_FALLBACK_RANK.__getitem__) if fallbacks else default.fallback,
        threshold=min(thresholds) if thresholds else default.threshold,
        source=", ".join(f"policy {p.policy!r} v{p.version}" for p in setting),
        # Waived only when it is every governing policy's choice, and at least one governs.
        scored=not policies or any(p.scores for p in policies),
    )


def tightened(
    settings: VerifierSettings, threshold: float | None, fallback: Fallback | None, source: str
) -> VerifierSettings:
    """`settings` made stricter by a deciding policy's own stanza (`source` names it): the
    lower threshold, the stricter fallback; never looser. The proxy learns versions from
    Watch, which announces no canary arm and can lag a new version; the decision carries
    the stanza of the version that actually decided, so its threshold and fallback apply
    at once (its timeout cannot: the verifier was asked before the decision came)."""
    lower = (
        threshold is not None and 0 <= threshold <= 1 and (settings.threshold is None or threshold < settings.threshold)
    )
    stricter = fallback is not None and _FALLBACK_RANK[fallback] < _FALLBACK_RANK[settings.fallback]
    if not (lower or stricter):
        return settings
    return VerifierSettings(
        timeout=settings.timeout,
        fallback=fallback if fallback is not None and stricter else settings.fallback,
        threshold=threshold if lower else settings.threshold,
        source=f"{settings.source}, {source}" if settings.source != "proxy defaults" else source,
        scored=settings.scored,
    )
