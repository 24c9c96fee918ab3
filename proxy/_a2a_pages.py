"""ListTasks page tokens, sealed to the caller they were issued to.

An agent's `nextPageToken` is its own opaque cursor, and a common one is the position of
the page's last task: base64 of its id and time. Bastion hides other principals' tasks
from a ListTasks page (`_a2a_tasks.filter_tasks`), so a token handed on as it came would
still tell the caller the id of a task it may not see (found by an attacker's probe).
So every token leaving the proxy is sealed — AES-GCM, the caller's principal as
associated data — and every `pageToken` arriving is opened before the agent sees it: a
token the caller did not get from this stack, or got as someone else, is refused
(-32602) instead of being passed on.

The key is derived from the stack's service token, so replicas that share it accept
each other's tokens, and a token outlives a restart.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion._errors import InvalidParams

_PREFIX = "bst1."
_NONCE = 12
#: A sealed token longer than this was not made here (agents' cursors are short).
_MAX_SEALED = 4096


class PageTokens:
    def __init__(self, secret: bytes | None = None) -> None:
        """`secret`: the service token's bytes; None for a random key (tokens then die with
        the process)."""
        material = secret if secret is not None else os.urandom(32)
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"bastion a2a page token").derive(material)
        self._aead = AESGCM(key)

    def seal(self, token: str, owner: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, token.encode(), owner.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, sealed: str, owner: str) -> str:
        """The agent's token inside `sealed`; InvalidParams unless this stack sealed it for `owner`."""
        if not sealed.startswith(_PREFIX) or len(sealed) > _MAX_SEALED:
            raise InvalidParams("pageToken was not issued by Bastion: use the nextPageToken of your last ListTasks")
        text = sealed[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], owner.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise InvalidParams(
                "pageToken was not issued to this caller by this stack: use the nextPageToken of your last ListTasks"
            ) from exc
