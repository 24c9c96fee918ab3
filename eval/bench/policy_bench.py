"""In-process policy decision latency for a 100-rule bundle with CEL conditions.

    bastion bench policy [--calls 20000]      (or: python -m eval.bench.policy_bench)

Targets (issue 17): p50 <= 10 us, p99 <= 50 us per decision. Cases:

* `one-cel`: the call's tool is named by one rule of the hundred, which has a `when`
  and `args`: one argument check and one CEL evaluation decide it.
* `cel-x100`: all hundred rules match the call, and the `when` of every one but the
  last is false: a hundred CEL evaluations on one shared context (worst case).
* `no-cel`: no rule names the tool; the default decides (the glob scan alone).
* `grpc-decide`: `PolicyServicer._decide` on a DecideRequest: the Struct conversion,
  the evaluation and the Decision message, without the network.
* `grpc-by-name`: the same for a tool no rule names: decided on the name, the arguments
  never converted (they are converted only when a rule reads them).
Also Struct → dict: the servicer's walk vs json_format.MessageToDict.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2
from prometheus_client import CollectorRegistry

from bastion.policy import PolicySet, validate_policy
from bastion.policy._grpc import PolicyServicer, _struct_to_dict
from bastion.policy._registry import Snapshot
from bastion.v1 import policy_pb2

ARGS: dict[str, Any] = {
    "amount": 42,
    "currency": "USD",
    "memo": "refund for order 1234",
    "order": {"id": "o-1", "lines": [1, 2]},
}


def _bundle(*, all_match: bool) -> PolicySet:
    rules: list[dict[str, Any]] = []
    for index in range(99):
        tool = "pay__refund" if all_match else f"svc{index}__tool{index}"
        rules.append(
            {
                "id": f"r{index}",
                "match": {"agents": ["billing-*"], "tools": [tool]},
                "when": f"args.amount > {1000 + index} && ctx.tenant == 'acme'",
                "effect": "deny",
            }
        )
    rules.append(
        {
            "id": "small-refunds",
            "match": {"agents": ["billing-*"], "tools": ["pay__refund"]},
            "when": "args.amount <= 100 && args.currency in ['USD', 'EUR'] && 'ops' in ctx.roles",
            "args": {"amount": {"type": "number", "max": 100}, "currency": {"enum": ["USD", "EUR"]}},
            "effect": "allow",
        }
    )
    document = {
        "apiVersion": "bastion.dev/v1",
        "kind": "AgentPolicy",
        "metadata": {"name": "bench", "version": 1},
        "spec": {"default": "deny", "rules": rules},
    }
    return PolicySet.compile([validate_policy(document)])


def _measure(calls: int, decide: Callable[[], object]) -> tuple[float, float, float]:
    for _ in range(min(calls, 2000)):  # warm up
        decide()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        start = clock()
        decide()
        samples.append(clock() - start)
    samples.sort()
    return samples[len(samples) // 2] / 1e3, samples[int(len(samples) * 0.99)] / 1e3, statistics.fmean(samples) / 1e3


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bastion bench policy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    calls = parser.parse_args(argv).calls
    from bastion.policy._cel import CallContext

    context = CallContext(tenant="acme", roles=("ops",), workflow_id="w-1")
    sparse, dense = _bundle(all_match=False), _bundle(all_match=True)

    def evaluate(policies: PolicySet, tool: str) -> Callable[[], object]:
        return lambda: policies.evaluate(
            kind="TOOL_CALL", agent_id="billing-1", server="pay", tool=tool, arguments=ARGS, context=context
        )

    request = policy_pb2.DecideRequest()
    request.action.kind = policy_pb2.TOOL_CALL
    request.action.server, request.action.tool = "pay", "refund"
    request.action.arguments.update(ARGS)
    request.ctx.agent_id, request.ctx.tenant, request.ctx.request_id = "billing-1", "acme", "req-1"
    request.ctx.roles.append("ops")

    class _Fixed:
        # Just what the servicer reads per decision: the active snapshot (no rollouts).
        policies = sparse
        snapshot = Snapshot(policies=sparse, versions=())

    servicer = PolicyServicer(_Fixed(), registry=CollectorRegistry())  # type: ignore[arg-type]
    assert servicer._decide(request).effect == policy_pb2.ALLOW
    # The same request for a tool no rule names: decided on the name, arguments never converted.
    by_name = policy_pb2.DecideRequest()
    by_name.CopyFrom(request)
    by_name.action.tool = "other"
    struct = struct_pb2.Struct()
    struct.update(ARGS)

    cases: dict[str, Callable[[], object]] = {
        "one-cel": evaluate(sparse, "refund"),
        "cel-x100": evaluate(dense, "refund"),
        "no-cel": evaluate(sparse, "other"),
        "grpc-decide": lambda: servicer._decide(request),
        "grpc-by-name": lambda: servicer._decide(by_name),
        "struct-walk": lambda: _struct_to_dict(struct, 0),
        "MessageToDict": lambda: json_format.MessageToDict(struct),
    }
    print(f"{calls} calls each, 100-rule bundle; microseconds per call")
    print(f"{'case':<14} {'p50':>8} {'p99':>8} {'mean':>8}")
    for name, decide in cases.items():
        p50, p99, mean = _measure(calls, decide)
        print(f"{name:<14} {p50:8.1f} {p99:8.1f} {mean:8.1f}")


if __name__ == "__main__":
    main()
