"""Names that proxy, policy and graph must spell alike, because one writes what another
reads: the verifier name that waives scoring (a policy's `verifier: {name: none}`, which
the policy engine keeps in a decision, the proxy honours and the graph reads back from the
journal), and the block codes of a verifier's fallback (written by the proxy, documented
in docs/errors.md, read by the graph to keep a failed verifier's VERIFICATION node).
"""

from __future__ import annotations

#: The verifier name that waives scoring (docs/policies.md, "Waiving scoring").
NO_VERIFIER = "none"
#: The verifier did not answer and its fallback blocked (docs/errors.md).
VERIFIER_UNAVAILABLE = "bastion.verifier_unavailable"
#: The verifier did not answer and its fallback parked the call (docs/errors.md).
VERIFIER_QUEUED = "bastion.verifier_queued"
