"""The enforcement decision for one action: the policy decision and the verifier score,
asked concurrently (DESIGN §14: two calls in parallel cost ~1.1 ms against ~1.6 ms in
sequence) on long-lived streams (`_streams.py`), combined fail-closed.

Order of precedence, first that applies wins:
  1. policy unreachable / slow / erroring  → block `bastion.policy_unavailable`
  2. policy effect other than ALLOW        → block with the policy's rule id and reason
  3. verifier unreachable / slow / erroring / answering garbage (no verdict, a score
     outside 0..1)                          → the fallback of the agent's settings
     (`_verifier_settings.py`: its policies' `verifier:` stanza, else
     BASTION_VERIFIER_FALLBACK): block `bastion.verifier_unavailable`; queue
     `bastion.verifier_queued` (parked by `_queue.py`'s stage; without it, a block);
     or allow and mark the event `verifier_fallback`. The reason says which and why.
  4. verifier verdict BLOCK, or a score at or above the policy's threshold
                                            → block `bastion.verifier_block`
  5. otherwise                              → allow

The verifier call's deadline is the agent's settings' timeout, applied per request on
the stream. Each verifier of a chain has its own circuit breaker (`_breaker.py`); while
any of them is open the chain is not asked and the fallback applies at once. With a
chain, the outcome also carries every member's own answer (`Outcome.verifications`,
journaled as Event.verifications), a member that did not answer as an entry without a
verdict saying why, so the graph shows each verifier's say as a VERIFICATION node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from bastion._verdicts import NO_VERIFIER, VERIFIER_QUEUED, VERIFIER_UNAVAILABLE
from bastion.v1 import policy_pb2, policy_pb2_grpc, verifier_pb2, verifier_pb2_grpc

from ._batching import BatchCaller
from ._breaker import CircuitBreaker, CircuitOpen
from ._envelope import public_reason
from ._streams import StreamCaller, StreamFailure
from ._verifier_settings import Fallback, VerifierSettings, tightened

POLICY_UNAVAILABLE = "bastion.policy_unavailable"
#: A deciding policy's `verifier.fallback`, as VerifierSettings names it (unset: none).
_FALLBACK_NAMES: dict[int, Fallback] = {
    policy_pb2.VerifierSettings.BLOCK: "block",
    policy_pb2.VerifierSettings.QUEUE: "queue",
    policy_pb2.VerifierSettings.ALLOW: "allow",
}
#: How a waived action's journaled note starts (the graph derives no VERIFICATION node for it).
WAIVED_NOTE = "verifier waived: "
VERIFIER_BLOCK = "bastion.verifier_block"
JOURNAL_UNAVAILABLE = "bastion.journal_unavailable"
_T = TypeVar("_T")
log = logging.getLogger("bastion.proxy")
_KNOWN_VERDICTS = frozenset({verifier_pb2.PASS, verifier_pb2.FLAG, verifier_pb2.BLOCK})


#: Gives back what a stage took (called at most once, off the request's path).
Release = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Outcome:
    allowed: bool
    decision: policy_pb2.Decision | None
    score: verifier_pb2.ScoreResponse | None
    block_code: str = ""
    block_reason: str = ""
    verifier_fallback: bool = False
    #: The JSON-RPC error a block answers with (docs/errors.md): -32003 POLICY_VIOLATION,
    #: -32004 APPROVAL_REQUIRED, -32005 with the limit's kind as message.
    error_code: int = -32003
    error_message: str = "POLICY_VIOLATION"
    #: More `data` fields of that error (approval_id, kind, retry_after_s, …).
    error_data: dict[str, Any] | None = None
    #: Undo what stages took for this action when it is not forwarded after all (another
    #: action of the message blocked, the journal failed): a limit's reservation, a used approval.
    on_not_forwarded: tuple[Release, ...] = ()
    #: Undo when the upstream failed to carry it out (a budget reservation is refunded).
    on_upstream_failure: tuple[Release, ...] = ()
    #: Further graph edges the action's node gets (an approval's VERIFIED_BY).
    edges: tuple[tuple[str, int, str], ...] = ()
    #: The verifier fallback applied ("block", "allow", "queue"); "" when the verifier answered.
    fallback: str = ""
    #: Each chained verifier's own answer, in chain order; empty unless more than one was
    #: asked (`member_answers`).
    verifications: tuple[verifier_pb2.ScoreResponse, ...] = ()


_PLAIN = {
    grpc.StatusCode.UNAVAILABLE: "not reachable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "no answer within the deadline",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the request is too large to ask about",
    grpc.StatusCode.UNAUTHENTICATED: "it refused the proxy's service token",
    grpc.StatusCode.CANCELLED: "the call was cancelled",
}
#: What gRPC's details say when mutual TLS failed (BASTION_GRPC_TLS_*): a peer's certificate
#: refused, not a service down. The details themselves name addresses: never shown.
_TLS_FAILURE = re.compile(r"(?i)tls handshake|ssl_error|certificate|hostname verification")
#: Decide/Score requests larger than this are measured before they are sent (see StreamCaller.call).
_MEASURE_ABOVE = 1 << 20


def _describe(service: str, exc: BaseException, *, logged: bool = True) -> str:
    """A block reason for the agent: the status, never the peer's details.

    gRPC details name internal addresses ("ipv4:10.0.3.7:50051: Connection refused");
    they go to the proxy's log (unless `logged` is False: said once already), and the
    agent learns what failed and why in words.
    """
    if isinstance(exc, CircuitOpen):
        return f"{service} unavailable: {exc}"
    if isinstance(exc, grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details() or ""
    elif isinstance(exc, StreamFailure):
        code, details = exc.code, exc.details
    else:
        if logged:
            log.warning("%s failed: %s: %s", service, type(exc).__name__, exc)
        return f"{service} unavailable: {public_reason(str(exc)) or type(exc).__name__}"
    if logged:
        log.warning("%s failed (%s): %s", service, code.name, details)
    if code == grpc.StatusCode.UNAVAILABLE and _TLS_FAILURE.search(details):
        return (
            f"{service} unavailable ({code.name}): the TLS handshake failed, a certificate was refused "
            "(the proxy's log says which)"
        )
    return f"{service} unavailable ({code.name}): {_PLAIN.get(code, 'it failed')}"


class Governor:
    """Asks policy and verifier about one action, concurrently, over long-lived streams
    (falling back to the unary RPCs for a service that does not offer them)."""

    def __init__(
        self,
        policy: policy_pb2_grpc.PolicyServiceAsyncStub,
        verifier: verifier_pb2_grpc.VerifierAsyncStub,
        metadata: tuple[tuple[str, str], ...],
        *,
        policy_timeout: float,
        verifier_timeout: float,
        fallback_allow: bool,
        breaker: CircuitBreaker | None = None,
        verifier_settings: Callable[[str], VerifierSettings] | None = None,
        chain: Sequence[verifier_pb2_grpc.VerifierAsyncStub] = (),
        chain_metadata: tuple[tuple[str, str], ...] | None = None,
        verifier_metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        """`verifier_settings` gives each agent's verifier timeout, threshold and fallback
        (`PolicyWatch`); without it every agent gets `verifier_timeout` and `fallback_allow`.
        `chain`: further verifiers asked with the first, the strictest answer deciding
        (`strictest`), with `chain_metadata` (BASTION_VERIFIER_CHAIN_TOKEN) if given, else
        the first's. The first gets `verifier_metadata` (BASTION_VERIFIER_TOKEN) if given, else
        `metadata`, the service token the policy service gets. `breaker` watches the first;
        each chained verifier gets a breaker of the same settings (`CircuitBreaker.sibling`)."""
        uniform = VerifierSettings(verifier_timeout, "allow" if fallback_allow else "block")
        self._settings_for = verifier_settings or (lambda agent_id: uniform)
        #: The names the proxy gives its verifiers (in reasons, logs and metric labels), in chain order.
        self.verifier_names = ("verifier", *(f"chained verifier {n}" for n in range(2, len(chain) + 2)))
        #: Stops calling a failing verifier for a while (`_breaker.py`); None calls it always.
        self.breaker = breaker
        #: One breaker per verifier, in chain order (the first is `breaker`); empty without one.
        self.breakers: tuple[CircuitBreaker, ...] = (
            (breaker, *(breaker.sibling(name) for name in self.verifier_names[1:])) if breaker is not None else ()
        )
        self._policy_timeout = policy_timeout
        self._policy = policy
        self._metadata = metadata
        self._decisions: BatchCaller[
            policy_pb2.DecideRequest, policy_pb2.Decision, policy_pb2.DecideBatchRequest, policy_pb2.DecideBatchResponse
        ] = BatchCaller(
            lambda: policy.DecideBatchStream(metadata=metadata),
            lambda requests: policy_pb2.DecideBatchRequest(requests=requests),
            lambda answer: answer.decisions,
            lambda decision: decision.request_id,
            StreamCaller(
                lambda requests: policy.DecideStream(requests, metadata=metadata),
                lambda request, timeout: policy.Decide(request, timeout=timeout, metadata=metadata),
                lambda decision: decision.request_id,
                "policy service",
                policy_timeout,
            ),
            "policy service",
            policy_timeout,
        )
        #: The verifier first, then BASTION_VERIFIER_CHAIN's: all asked about every action.
        first = verifier_metadata if verifier_metadata is not None else metadata
        chained = chain_metadata if chain_metadata is not None else first
        self._scorers = [
            _scorer(stub, chained if position else first, verifier_timeout, name)
            for position, (stub, name) in enumerate(zip((verifier, *chain), self.verifier_names, strict=True))
        ]

    async def decide(
        self,
        action: policy_pb2.Action,
        ctx: policy_pb2.Context,
        history: Iterable[verifier_pb2.HistoryNode],
        node_id: str,
        *,
        body_size: int = 0,
    ) -> Outcome:
        """`ctx.request_id` must be unique per action: it matches answers on the streams.

        `body_size` is the request body's size: above a megabyte both messages are
        measured, so one too large for the streams fails alone instead of breaking them.
        """
        decide = policy_pb2.DecideRequest(action=action, ctx=ctx)
        score = verifier_pb2.ScoreRequest(action=action, ctx=ctx, history=history, node_id=node_id)
        measure = body_size > _MEASURE_ABOVE
        settings = self._settings_for(ctx.agent_id)
        known: policy_pb2.Decision | None = None

        def deciding() -> Coroutine[Any, Any, policy_pb2.Decision]:
            if known is not None:
                return _ready(known)
            size = decide.ByteSize() if measure else 0
            return self._decisions.call(decide, ctx.request_id, size=size, weight=body_size)

        if not settings.scored and len(self._scorers) == 1:
            # Every governing policy waives scoring, as far as Watch told: policy alone,
            # unless its answer says otherwise (`waived`). An operator's chain is never waived.
            alone = await _settled(deciding())
            if (outcome := waived(alone)) is not None:
                return outcome
            assert isinstance(alone, policy_pb2.Decision)
            known = alone  # the verifier is asked after all, once the decision is in

        breakers = self.breakers
        try:
            trials = _check(breakers)
        except CircuitOpen as exc:
            decision: policy_pb2.Decision | BaseException = await _settled(deciding())
            return combine(decision, exc, settings)
        size = score.ByteSize() if measure else 0
        # Each verifier gets the agent's timeout (its policies' `verifier.timeout_ms`, else the proxy's).
        calls = [
            scorer.call(score, ctx.request_id, size=size, weight=body_size, timeout=settings.timeout)
            for scorer in self._scorers
        ]
        scored: verifier_pb2.ScoreResponse | BaseException
        if len(calls) == 1:  # no chain: the score in one task, the decision in this one
            # (a gather of both took two tasks and a future: ≈ 8 µs more of the hot path's CPU).
            scoring = asyncio.ensure_future(calls[0])
            try:
                decision = await _settled(deciding())
                scored = await _settled(scoring)
            except BaseException:
                _hand_back(trials)
                raise
            finally:
                scoring.cancel()  # nothing once it is done; else this task was cancelled
            if breakers:
                breakers[0].record(_sound(scored))
            return combine(decision, scored, settings)
        try:
            decision, answers = await asyncio.gather(
                _settled(deciding()), asyncio.gather(*calls, return_exceptions=True)
            )
        except BaseException:
            _hand_back(trials)
            raise
        for member, answer in zip(breakers, answers, strict=False):
            member.record(_sound(answer))
        # The block reason names the link that failed: an operator must know which to fix.
        failed = next(
            (
                name
                for name, answer in zip(self.verifier_names, answers, strict=False)
                if isinstance(answer, BaseException)
            ),
            "verifier",
        )
        outcome = combine(decision, strictest(answers), settings, service=failed)
        return dataclasses.replace(outcome, verifications=member_answers(answers, self.verifier_names))

    async def allowed(self, actions: Sequence[policy_pb2.Action], ctx: policy_pb2.Context) -> list[bool]:
        """Whether policy allows each action (list filtering: no verifier, no journal).

        All of them in one DecideBatch message: a listing asks about every item at once,
        and one message costs the proxy far less than one stream message per item
        (measured: a 5-tool listing cost ~5x a governed call when asked item by item).
        Anything but an ALLOW answer — a deny, an error, no answer in time, a batch that
        comes back short — is False.
        """
        if not actions:
            return []
        batch = policy_pb2.DecideBatchRequest(
            requests=[policy_pb2.DecideRequest(action=action, ctx=ctx) for action in actions]
        )
        try:
            answer = await self._policy.DecideBatch(batch, timeout=self._policy_timeout, metadata=self._metadata)
        except (grpc.RpcError, OSError) as exc:
            log.warning("policy service failed a list decision batch: %s", exc)
            return [False] * len(actions)
        allowed = [decision.effect == policy_pb2.ALLOW for decision in answer.decisions]
        return allowed if len(allowed) == len(actions) else [False] * len(actions)

    async def close(self) -> None:
        await self._decisions.close()
        for scorer in self._scorers:
            await scorer.close()


_Scorer = BatchCaller[
    verifier_pb2.ScoreRequest,
    verifier_pb2.ScoreResponse,
    verifier_pb2.ScoreBatchRequest,
    verifier_pb2.ScoreBatchResponse,
]


def _scorer(
    verifier: verifier_pb2_grpc.VerifierAsyncStub, metadata: tuple[tuple[str, str], ...], timeout: float, name: str
) -> _Scorer:
    """One verifier's caller: its batch stream, else its per-request stream, else unary Score."""
    return BatchCaller(
        lambda: verifier.ScoreBatchStream(metadata=metadata),
        lambda requests: verifier_pb2.ScoreBatchRequest(requests=requests),
        lambda answer: answer.responses,
        lambda score: score.request_id,
        StreamCaller(
            lambda requests: verifier.ScoreStream(requests, metadata=metadata),
            lambda request, call_timeout: verifier.Score(request, timeout=call_timeout, metadata=metadata),
            lambda score: score.request_id,
            name,
            timeout,
        ),
        name,
        timeout,
    )


def _check(breakers: Sequence[CircuitBreaker]) -> tuple[CircuitBreaker, ...]:
    """The breakers whose half-open trial this call holds, when every verifier may be
    called; else raise the first CircuitOpen, handing back the trials the others granted
    (the call is not made)."""
    trials: tuple[CircuitBreaker, ...] = ()
    for breaker in breakers:
        try:
            if breaker.check():
                trials += (breaker,)
        except CircuitOpen:
            _hand_back(trials)
            raise
    return trials


def _hand_back(trials: Iterable[CircuitBreaker]) -> None:
    """Trials that will have no outcome (a circuit open beside them, or the call cancelled:
    the proxy stopping, a caller gone) go to the next caller. Kept, a trial left the circuit
    half-open for good: the fallback applied to every call and the verifier, back or not,
    was never asked again."""
    for breaker in trials:
        breaker.cancel()


def _sound(answer: verifier_pb2.ScoreResponse | BaseException) -> bool:
    """Whether a verifier answered something that can be trusted (its breaker's success)."""
    return isinstance(answer, verifier_pb2.ScoreResponse) and _unsound(answer) is None


def member_answers(
    answers: Sequence[verifier_pb2.ScoreResponse | BaseException], names: Sequence[str]
) -> tuple[verifier_pb2.ScoreResponse, ...]:
    """Each chained verifier's own answer as journaled (Event.verifications): a sound answer
    as it came, a failure or an unsound answer as an entry without a verdict, naming the
    verifier and saying why (in the words the agent would get, never a peer's address)."""
    members: list[verifier_pb2.ScoreResponse] = []
    for answer, name in zip(answers, names, strict=True):
        if isinstance(answer, BaseException):
            why = _describe(name, answer, logged=False)
            members.append(verifier_pb2.ScoreResponse(scorer=name, reasons=[why]))
        elif (unsound := _unsound(answer)) is not None:
            members.append(
                verifier_pb2.ScoreResponse(
                    scorer=_printable(answer.scorer) or name, reasons=[f"{name} unusable: {unsound}"]
                )
            )
        else:
            members.append(_bounded(answer) if _oversized(answer) else answer)
    return tuple(members)


_RANK = {verifier_pb2.PASS: 0, verifier_pb2.FLAG: 1, verifier_pb2.BLOCK: 2}


def strictest(
    answers: Sequence[verifier_pb2.ScoreResponse | BaseException],
) -> verifier_pb2.ScoreResponse | BaseException:
    """The chain's one answer: the first failure or unsound answer of any verifier (the
    fallback then applies: a chained verifier cannot be skipped by making it fail), else
    the strictest answer (verdict, then score), with every verifier's reasons. A member
    that said BLOCK is heeded even beside a failure (`combine` heeds an unsound BLOCK)."""
    if len(answers) == 1:
        return answers[0]
    blocked = [a for a in answers if isinstance(a, verifier_pb2.ScoreResponse) and a.verdict == verifier_pb2.BLOCK]
    for n, answer in enumerate(answers, 1):
        if isinstance(answer, BaseException):
            return blocked[0] if blocked else answer
        if (why := _unsound(answer)) is not None:
            if blocked:
                return blocked[0]
            return ValueError(f"verifier {n} of the chain ({_printable(answer.scorer) or 'unnamed'}): {why}")
    scores = [answer for answer in answers if isinstance(answer, verifier_pb2.ScoreResponse)]
    top = max(scores, key=lambda answer: (_RANK[answer.verdict], answer.deviation_score))
    merged = verifier_pb2.ScoreResponse()
    merged.CopyFrom(top)
    ordered = [top, *(a for a in scores if a is not top)]
    names = [_printable(answer.scorer) or "unnamed" for answer in ordered]
    merged.scorer = "+".join(names)
    del merged.reasons[:]
    for answer, name in zip(ordered, names, strict=True):
        merged.reasons.extend(f"{name}: {reason}" for reason in answer.reasons)
    return merged


async def _settled(call: Awaitable[_T]) -> _T | BaseException:
    """The call's answer or its exception, as `asyncio.gather(..., return_exceptions=True)` gives."""
    try:
        return await call
    except Exception as exc:
        return exc


def _refused(decision: policy_pb2.Decision | BaseException, score: verifier_pb2.ScoreResponse | None) -> Outcome | None:
    """The outcome when policy did not allow the action (or did not answer), else None."""
    if not isinstance(decision, policy_pb2.Decision):
        return Outcome(False, None, score, POLICY_UNAVAILABLE, _describe("policy service", decision))
    if decision.effect != policy_pb2.ALLOW:
        effect = policy_pb2.Effect.Name(decision.effect)
        reason = decision.reason or f"policy effect {effect}"
        return Outcome(False, decision, score, decision.rule_id or "default", reason)
    return None


def waived(decision: policy_pb2.Decision | BaseException) -> Outcome | None:
    """The outcome of an action whose policies waive scoring (`verifier: {name: none}`), as
    far as the proxy learnt from Watch; None when the verifier must be asked after all.

    The decision must say so too. Watch can lag a new version, a canary arm's version is
    never announced on it, and in Rego mode a decision carries no stanza: a decision that
    does not name `none` — including one decided by a waiving policy while the engine saw
    another governing policy that does not waive (policy/_engine.py) — is scored like any
    other, never let through unscored — whatever its effect, so that an approval's or a
    queue's record keeps its score as on the usual path."""
    if isinstance(decision, policy_pb2.Decision) and decision.verifier.name != NO_VERIFIER:
        return None
    if (refused := _refused(decision, None)) is not None:
        return refused
    assert isinstance(decision, policy_pb2.Decision)
    # Journaled with the action (as a fallback's note is): why no verifier answer is recorded.
    note = f"{WAIVED_NOTE}policy {decision.policy_name!r} v{decision.policy_version} says verifier none"
    return Outcome(True, decision, None, block_reason=note)


async def _ready(decision: policy_pb2.Decision) -> policy_pb2.Decision:
    return decision


def combine(
    decision: policy_pb2.Decision | BaseException,
    scored: verifier_pb2.ScoreResponse | BaseException,
    settings: VerifierSettings,
    *,
    service: str = "verifier",
) -> Outcome:
    score = scored if isinstance(scored, verifier_pb2.ScoreResponse) else None
    if score is not None and _oversized(score):
        score = _bounded(score)
    if score is not None and (unsound := _unsound(score)) is not None:
        if score.verdict == verifier_pb2.BLOCK:
            # A verifier that says BLOCK is heeded whatever else it got wrong: refusing is
            # never less safe, and a fallback of `allow` must not turn its BLOCK into a pass.
            score = _heeded_block(score, unsound)
        else:
            # A verifier that answers garbage has not vouched for anything.
            scored = ValueError(unsound)
            score = None
    if (refused := _refused(decision, score)) is not None:
        return refused
    assert isinstance(decision, policy_pb2.Decision)
    if decision.HasField("verifier"):
        stanza = decision.verifier
        settings = tightened(
            settings,
            stanza.threshold if stanza.HasField("threshold") else None,
            _FALLBACK_NAMES.get(stanza.fallback),
            f"policy {decision.policy_name!r} v{decision.policy_version}",
        )
    if score is None:
        assert isinstance(scored, BaseException)
        return _fallback(decision, settings, _describe(service, scored))
    if score.verdict == verifier_pb2.BLOCK:
        reasons = "; ".join(score.reasons) or "deviation above threshold"
        reason = f"verifier blocked (score {score.deviation_score:.2f} >= {score.threshold:.2f}): {reasons}"
        return Outcome(False, decision, score, VERIFIER_BLOCK, reason)
    threshold = settings.threshold
    if threshold is not None and score.deviation_score >= threshold:
        # The policy is stricter than the verifier's own threshold: the proxy judges.
        reasons = "; ".join(score.reasons) or "no reasons given"
        reason = (
            f"verifier score {score.deviation_score:.2f} >= threshold {threshold:.2f} of {settings.source} "
            f"(the verifier's own: {score.threshold:.2f}, verdict {verifier_pb2.Verdict.Name(score.verdict)}): "
            f"{reasons}"
        )
        applied = verifier_pb2.ScoreResponse()
        applied.CopyFrom(score)
        applied.threshold = threshold  # the envelope and the journal show the threshold applied
        return Outcome(False, decision, applied, VERIFIER_BLOCK, reason)
    return Outcome(True, decision, score)


def _unsound(score: verifier_pb2.ScoreResponse) -> str | None:
    """Why an answer cannot be trusted, or None."""
    if score.verdict not in _KNOWN_VERDICTS:
        return f"verifier answered without a verdict ({score.verdict})"
    if not 0.0 <= score.deviation_score <= 1.0:  # also NaN
        return f"verifier answered a deviation score outside 0..1 ({score.deviation_score!r})"
    if not 0.0 <= score.threshold <= 1.0:
        return f"verifier answered a threshold outside 0..1 ({score.threshold!r})"
    # The verdict follows from score and threshold (verifier/INTERFACE.md). A PASS or FLAG
    # at or above the verifier's own threshold (PASS at 1.0 >= 0.8) contradicts its numbers:
    # not an answer to act on. (PASS for FLAG below it changes nothing the proxy does; a
    # stricter verdict is the verifier's to give.) Threshold 0 is one it did not set (a
    # third party's PASS at 0 must stay a pass), so the bound is then the highest threshold
    # any verifier can have, 1: a PASS at the maximal deviation 1.0 with threshold 0 went
    # through as a pass (an attacker's probe).
    if score.verdict != verifier_pb2.BLOCK and score.deviation_score >= (score.threshold or 1.0):
        said = f"its threshold {score.threshold:.2f}" if score.threshold else "any threshold (it gave none)"
        return (
            f"verifier answered {verifier_pb2.Verdict.Name(score.verdict)} with score "
            f"{score.deviation_score:.2f} at or above {said}, which implies BLOCK"
        )
    return None


#: What of a verifier's answer reaches the agent's block envelope and the journal: a verifier
#: answered 15.7 MB of reasons and a 100 KB drift origin, and both went out whole.
MAX_REASONS = 32
MAX_REASON_CHARS = 512
MAX_ORIGIN_CHARS = 128
#: A scorer names itself `name/version`; a chain's joins at most 8 of them.
MAX_SCORER_CHARS = 128


def _oversized(score: verifier_pb2.ScoreResponse) -> bool:
    """Whether the verifier's text needs `_bounded`: too long, or holding characters that are
    not printable (an attacker's probe: a verifier's ANSI escapes, CR/LF and bidi overrides
    went whole into block reasons, the journal and operators' terminals via `bastion queue`).
    `isprintable` is one C pass over a few short strings: nothing on the hot path."""
    return (
        len(score.reasons) > MAX_REASONS
        or len(score.drift_origin_node_id) > MAX_ORIGIN_CHARS
        or len(score.scorer) > MAX_SCORER_CHARS
        or not score.scorer.isprintable()
        or not score.drift_origin_node_id.isprintable()
        or any(len(reason) > MAX_REASON_CHARS or not reason.isprintable() for reason in score.reasons)
    )


def _printable(text: str, limit: int = MAX_SCORER_CHARS) -> str:
    """`text` cut to `limit` characters, each one that is not printable written as its escape."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    if cut.isprintable():
        return cut
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in cut)


def _bounded(score: verifier_pb2.ScoreResponse) -> verifier_pb2.ScoreResponse:
    """`score` with at most MAX_REASONS printable reasons of MAX_REASON_CHARS, saying what was
    cut, a printable scorer of MAX_SCORER_CHARS and no drift origin a node id cannot be."""
    bounded = verifier_pb2.ScoreResponse()
    bounded.CopyFrom(score)
    del bounded.reasons[:]
    bounded.reasons.extend(_printable(reason, MAX_REASON_CHARS) for reason in score.reasons[:MAX_REASONS])
    if len(score.reasons) > MAX_REASONS:
        bounded.reasons.append(f"… and {len(score.reasons) - MAX_REASONS} more reasons, not shown")
    bounded.scorer = _printable(score.scorer)
    origin = score.drift_origin_node_id
    if len(origin) > MAX_ORIGIN_CHARS or not origin.isprintable():
        bounded.drift_origin_node_id = ""
    return bounded


def _heeded_block(score: verifier_pb2.ScoreResponse, unsound: str) -> verifier_pb2.ScoreResponse:
    """A BLOCK whose numbers are unsound, recorded as a block at full deviation (a NaN or
    out-of-range score would not render in the audit trail) with what was wrong."""
    heeded = verifier_pb2.ScoreResponse()
    heeded.CopyFrom(score)
    heeded.deviation_score = 1.0
    if not 0.0 <= heeded.threshold <= 1.0:
        heeded.threshold = 1.0
    heeded.reasons.append(f"{unsound}; its BLOCK is heeded")
    return heeded


def _fallback(decision: policy_pb2.Decision, settings: VerifierSettings, why: str) -> Outcome:
    """The agent's fallback when the verifier did not score: never an unexplained allow."""
    mode = settings.fallback
    reason = f"{why}; fallback {mode} ({settings.source})"
    if mode == "allow":
        return Outcome(True, decision, None, verifier_fallback=True, block_reason=reason, fallback=mode)
    if mode == "queue":
        return Outcome(False, decision, None, VERIFIER_QUEUED, reason, fallback=mode)
    return Outcome(False, decision, None, VERIFIER_UNAVAILABLE, reason, fallback="block")
