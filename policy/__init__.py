"""bastion.policy: the policy service (DESIGN §5).

A policy goes through four phases, one module each:

    parse + validate   parse_policy(text), validate_policy(data), load_policy(path) -> PolicyDocument
    compile            PolicySet.compile(documents), load_policy_set(paths) -> PolicySet,
                       whose .policies are CompiledPolicy objects in evaluation order
    evaluate           PolicySet.evaluate(kind=, agent_id=, server=, tool=) -> Decision (an Effect + why)

Versions and the model that changes while running, one module each:

    store      PolicyStore: immutable versions keyed (name, version), content-addressed by
               version_digest(document) (sha256 of the submitted document's canonical form),
               and the active version of each policy, in SQLite under $BASTION_HOME/policy/
    registry   PolicyRegistry: compiles each version once, swaps the active set atomically
               (`.policies` is what decisions read), `.activate(name, version, by=)`, watchers
    bundles    BundleVerifier verifies signed bundles (JWS, EdDSA/ES256, kid, iat, exp);
               sign_bundle(text, key, kid=) makes one

The decision semantics are documented in bastion.policy._engine. `main` runs
`bastion policy serve` (`serve` is its bastion._service.ServeFn): gRPC
bastion.v1.PolicyService and the admin REST app, configured by `PolicySettings`.
"""

from ._bundles import BundleVerifier, sign_bundle
from ._config import PolicySettings
from ._document import PolicyDocument, load_policy, parse_policy, validate_policy
from ._engine import CompiledPolicy, Decision, Effect, PolicySet, load_policy_set
from ._registry import PolicyRegistry
from ._server import main, serve
from ._store import PolicyStore, version_digest

__all__ = [
    "BundleVerifier",
    "CompiledPolicy",
    "Decision",
    "Effect",
    "PolicyDocument",
    "PolicyRegistry",
    "PolicySet",
    "PolicySettings",
    "PolicyStore",
    "load_policy",
    "load_policy_set",
    "main",
    "parse_policy",
    "serve",
    "sign_bundle",
    "validate_policy",
    "version_digest",
]
