"""Opaque tokens a service hands out and takes back: AES-GCM over the text, with who may
use it as associated data, so a token tells nothing of what it holds and works only for
the caller it was sealed to. Used for A2A ListTasks page tokens (proxy/_a2a_pages.py) and
the graph's workflow-listing cursors for readers confined to one tenant (graph/_api.py).
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12
#: A sealed token longer than this was not made here (what is sealed is short).
MAX_SEALED = 4096


class Sealer:
    def __init__(self, purpose: bytes, secret: bytes | None = None) -> None:
        """`secret`: key material shared by the replicas that must open each other's tokens
        (the service token); None for a random key, whose tokens die with the process.
        `purpose` separates the keys of different uses of one secret."""
        material = secret if secret is not None else os.urandom(32)
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(material)
        self._aead = AESGCM(key)

    def seal(self, text: str, owner: str, prefix: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, text.encode(), owner.encode())
        return prefix + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, sealed: str, owner: str, prefix: str) -> str | None:
        """The text inside `sealed`; None unless it was sealed here, for `owner`, with `prefix`."""
        if not sealed.startswith(prefix) or len(sealed) > MAX_SEALED:
            return None
        text = sealed[len(prefix) :]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], owner.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            return None
