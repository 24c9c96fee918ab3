"""Cyrillic and Greek letters drawn as Latin ones (`merid\u0456an`, a Cyrillic i): folded to
the Latin letter they pass for, wherever Bastion compares what a reader would take for the
same word (look-alike domains, proxy/_lookalike.py; rerouting language, bastion/_rerouting.py)."""

from __future__ import annotations

#: Lower-case look-alike → the Latin letter it is drawn as.
LATIN_LOOKALIKES: dict[str, str] = {
    "\u0430": "a", "\u0432": "b", "\u0435": "e", "\u043a": "k", "\u043c": "m", "\u043d": "h",
    "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0442": "t", "\u0443": "y", "\u0445": "x",
    "\u0456": "i", "\u0458": "j", "\u0455": "s", "\u0501": "d", "\u051b": "q", "\u051d": "w",
    "\u04bb": "h", "\u04cf": "l", "\u0261": "g", "\u03b1": "a", "\u03b2": "b", "\u03b5": "e",
    "\u03b9": "i", "\u03ba": "k", "\u03bd": "v", "\u03bf": "o", "\u03c1": "p", "\u03c4": "t",
    "\u03c5": "u", "\u03c7": "x",
}  # fmt: skip
