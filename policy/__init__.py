"""bastion.policy: the policy service (DESIGN §5).

A policy goes through four phases, one module each:

    parse + validate   parse_policy(text), validate_policy(data), load_policy(path) -> PolicyDocument
    compile            PolicySet.compile(documents), load_policy_set(paths) -> PolicySet,
                       whose .policies are CompiledPolicy objects in evaluation order
    evaluate           PolicySet.evaluate(kind=, agent_id=, server=, tool=) -> Decision (an Effect + why)

The decision semantics are documented in bastion.policy._engine. `main` runs
`bastion policy serve` (`serve` is its bastion._service.ServeFn): gRPC
bastion.v1.PolicyService and the admin REST app, configured by `PolicySettings`.
"""

from ._config import PolicySettings
from ._document import PolicyDocument, load_policy, parse_policy, validate_policy
from ._engine import CompiledPolicy, Decision, Effect, PolicySet, load_policy_set
from ._server import main, serve

__all__ = [
    "CompiledPolicy",
    "Decision",
    "Effect",
    "PolicyDocument",
    "PolicySet",
    "PolicySettings",
    "load_policy",
    "load_policy_set",
    "main",
    "parse_policy",
    "serve",
    "validate_policy",
]
