"""How a browser reads a URL (WHATWG URL), in the pieces the proxy and the scorer both need.

The proxy's provenance (`proxy/_pointers.py`, `proxy/_lookalike.py`) and the reference
scorer (`verifier/_destinations.py`) must read `https:evil.example`, `https:\\\\evil.example`
and a URL broken by a tab the same way, or one labels what the other cannot see (an
attacker's probe found each reading differently once).
"""

from __future__ import annotations

#: The special schemes, as a regex alternation: after one and its colon, a browser skips
#: any run of `/` and `\`, none included (`https:evil.example/q` reaches evil.example).
SPECIAL_SCHEMES = r"(?:https?|wss?|ftp)"
#: A special scheme, its colon and the run of `/` and `\` a browser skips after it.
SPECIAL_PREFIX = SPECIAL_SCHEMES + r":[/\\]*"
#: What a browser removes from anywhere in a URL before reading it: tab, LF, CR.
URL_IGNORED = str.maketrans("", "", "\t\n\r")
