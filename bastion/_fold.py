"""Text folded to its lower-case letters and digits: how keys, levels and identifiers are
compared across spellings (`Access-Level`, `access_level` → `accesslevel`; `AG-2291`,
`ag/2291` → `ag2291`). One rule for the proxy (invoice identifiers, proxy/_invoices.py) and
the verifier (argument keys, access levels, verifier/_access.py)."""

from __future__ import annotations


def fold(text: str) -> str:
    """`text` case-folded to its letters and digits."""
    return "".join(char for char in text.casefold() if char.isalnum())
