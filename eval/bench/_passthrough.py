"""Bastion in pass-through mode: `bastion bench stack`'s path (g), and nothing else.

    python -m bastion.eval.bench._passthrough --config bastion.yaml

The real proxy — `bastion proxy serve`'s own code: the token, the body's bounds and parse,
the workflow, the limits, approval and queue stages, the journal appended durably before
forwarding, the forward, the response path and the shipping to the graph — with a
decision stage that asks neither policy nor verifier and allows. What (c), the full
pipeline, costs beyond (g) is the two decisions; what (g) costs beyond (b), the lean hop,
is Bastion's own plumbing. Issue #24 asks for that split.

This is not a mode of the product. DESIGN §1 lets nothing pass without a decision, and no
setting, variable or flag of Bastion reaches this decision stage: only this module, which
the bench starts as its own process under its own BASTION_HOME, passes it to `serve`.
Every call it lets through is still journaled, with the reason below, and reaches the graph.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Iterable, Sequence
from pathlib import Path

from bastion._service import run_service
from bastion._verdicts import NO_VERIFIER
from bastion.proxy._config import ProxySettings
from bastion.proxy._pipeline import Governor, Outcome
from bastion.proxy._server import serve
from bastion.v1 import policy_pb2, verifier_pb2

#: The policy name every event of this process carries, so none is mistaken for a decision.
POLICY_NAME = "bench-passthrough"
REASON = "bench pass-through: allowed without asking policy or verifier (bastion bench stack, path g)"


class PassThroughGovernor(Governor):
    """Allows every action without a round trip. Listing filters (`allowed`) still ask the
    policy service: the bench calls no listing, and a listing is not the path measured."""

    async def decide(
        self,
        action: policy_pb2.Action,
        ctx: policy_pb2.Context,
        history: Iterable[verifier_pb2.HistoryNode],
        node_id: str,
        *,
        body_size: int = 0,
    ) -> Outcome:
        decision = policy_pb2.Decision(
            effect=policy_pb2.ALLOW,
            rule_id="passthrough",
            reason=REASON,
            policy_name=POLICY_NAME,
            request_id=ctx.request_id,
            # No score is asked: the graph derives no VERIFICATION node for the call.
            verifier=policy_pb2.VerifierSettings(name=NO_VERIFIER),
        )
        return Outcome(True, decision, None, block_reason=REASON)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion.eval.bench._passthrough", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    # Its run file is `passthrough.json`: it never answers for a proxy of the same home.
    return run_service(
        "passthrough",
        ProxySettings(),
        args.config,
        functools.partial(serve, governor_type=PassThroughGovernor),
        credentials=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
