"""What an agent id, tenant, token id or name may be: one rule for the verifier and the store.

The policy service's identity store (bastion.policy._identities) refuses to keep a key
or a revocation naming anything else, and the token verifier (bastion._identity) refuses
a JWT whose `sub`, tenant or `jti` breaks the same rule: a credential the verifier
accepts can always be revoked (found by an attacker's probe: a 300-character `sub`, or
one with a newline, was served by the proxy but refused by `POST /v1/revocations`).

    check_identifier(what, value)   value, or InvalidIdentity naming `what` and the problem
"""

from __future__ import annotations

import unicodedata

MAX_ID_CHARS = 256

#: The characters that reorder text (UAX #9: the marks, embeddings, overrides and isolates).
_BIDI_CONTROLS = frozenset({0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)})


class InvalidIdentity(ValueError):
    """An agent id, tenant, token id, name or reason the identity rules refuse (HTTP 422 at the store)."""


def check_identifier(what: str, value: str, *, empty: bool = False, limit: int = MAX_ID_CHARS) -> str:
    """`value` when it is an acceptable agent id, tenant, token id, name or reason; else InvalidIdentity.

    `what` names the value in the message; "reason" also marks free text (see below)."""
    if not isinstance(value, str):
        raise InvalidIdentity(f"{what} must be a string")
    if not value and not empty:
        raise InvalidIdentity(f"{what} must not be empty")
    if len(value) > limit:
        raise InvalidIdentity(f"{what} is longer than {limit} characters")
    # Control characters (newlines, NUL, escapes) would forge lines in logs and terminals;
    # format characters (bidi overrides such as U+202E, zero-width joiners and spaces) make
    # a name read as another in listings, audit views and exports. A free-text reason may
    # hold format characters (an emoji's joiner) but never one that reorders the text.
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc":
            raise InvalidIdentity(f"{what} contains a control character")
        if category == "Cf" and (what != "reason" or ord(char) in _BIDI_CONTROLS):
            raise InvalidIdentity(f"{what} contains an invisible formatting character (U+{ord(char):04X})")
    return value
