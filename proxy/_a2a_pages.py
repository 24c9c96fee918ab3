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

from bastion._errors import InvalidParams
from bastion._sealing import Sealer

_PREFIX = "bst1."


class PageTokens:
    def __init__(self, secret: bytes | None = None) -> None:
        """`secret`: the service token's bytes; None for a random key (tokens then die with
        the process)."""
        self._sealer = Sealer(b"bastion a2a page token", secret)

    def seal(self, token: str, owner: str) -> str:
        return self._sealer.seal(token, owner, _PREFIX)

    def open(self, sealed: str, owner: str) -> str:
        """The agent's token inside `sealed`; InvalidParams unless this stack sealed it for `owner`."""
        if not sealed.startswith(_PREFIX):
            raise InvalidParams("pageToken was not issued by Bastion: use the nextPageToken of your last ListTasks")
        opened = self._sealer.open(sealed, owner, _PREFIX)
        if opened is None:
            raise InvalidParams(
                "pageToken was not issued to this caller by this stack: use the nextPageToken of your last ListTasks"
            )
        return opened
