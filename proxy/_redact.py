"""Redaction before anything is persisted: secrets in an action's arguments are replaced
in the journaled copy, so they never reach the journal, the graph, its REST API or an
export; policy and the verifier have already seen the real values, in memory.

Two kinds of secret are found:

- **Known patterns** in any string: private key blocks, JWTs, `Bearer` credentials, AWS
  access key ids, GitHub / Slack / `sk-…` API keys, card numbers (13 to 19 digits passing
  the Luhn check), and IBANs (mod-97 checked) when `redaction.iban` is on.
- **Configured paths** in `bastion.yaml` (`redaction: {paths: [...]}`): `$.a.b` from the
  arguments' root (`*` for any key or index), `$..name` for a key at any depth. The whole
  value there is replaced, whatever it is.

A secret becomes a typed placeholder with a digest, `[REDACTED:jwt:3f2a…]` (the first 12
hex digits of its sha256), so an auditor can still tell that two calls carried the same
secret without learning it. Cost: one cheap search of the raw request body (literal
starts and long digit runs); the arguments are walked only when it matches or paths are
configured, and each string is searched in full only when the cheap search hits it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToJson
from google.protobuf.struct_pb2 import ListValue, Struct, Value

from bastion._appconfig import REDACTION_PATH

_PATTERNS: dict[str, str] = {
    "private_key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    "bearer": r"\bBearer\s+[A-Za-z0-9._~+/-]{16,}=*",
    "aws_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
    "slack_token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b",
    "api_key": r"\bsk-[A-Za-z0-9_-]{20,}\b",
    "card": r"\b\d(?:[ -]?\d){12,18}\b",
}
#: A cheap first look, one scan of the raw body: each pattern's literal start, or a long
#: digit run. Only a hit pays for the full expression (measured ~150 µs on a small body,
#: against a few µs for this).
_QUICK = r"-----BEGIN|eyJ|Bearer|AKIA|ASIA|gh[pousr]_|xox[abprs]-|sk-|[0-9][0-9 -]{11,}[0-9]"
_QUICK_IBAN = r"|[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4}"
_IBAN = r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"


class Redactor:
    def __init__(self, paths: Sequence[str] = (), *, iban: bool = False) -> None:
        for path in paths:
            if not REDACTION_PATH.fullmatch(path):
                raise ValueError(f"redaction path {path!r}: use $.a.b (with * for any key) or $..key")
        self._deep = frozenset(path[3:] for path in paths if path.startswith("$.."))
        self._rooted = tuple(tuple(path[2:].split(".")) for path in paths if not path.startswith("$.."))
        patterns = dict(_PATTERNS)
        if iban:
            patterns["iban"] = _IBAN
        self._text = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in patterns.items()))
        quick = _QUICK + (_QUICK_IBAN if iban else "")
        self._quick = re.compile(quick)
        self._raw = re.compile(quick.encode())

    @property
    def has_paths(self) -> bool:
        return bool(self._deep or self._rooted)

    def may_hold_secrets(self, raw: bytes) -> bool:
        """False when the arguments need no walk: no configured paths and no pattern in `raw`."""
        return self.has_paths or self._raw.search(raw) is not None

    def struct(self, arguments: Struct) -> int:
        """Redact `arguments` in place; the number of values replaced."""
        return self._fields(arguments, ())

    def json(self, value: Any) -> tuple[Any, int]:
        """A redacted copy of a JSON value (dicts, lists, strings, numbers) as parsed from a
        request, and the number of values replaced; `value` itself when nothing was. The
        same placeholders as `struct` gives the Struct copy of the same arguments."""
        return self._json(value, ())

    def _json(self, value: Any, path: tuple[str, ...]) -> tuple[Any, int]:
        if path and self._configured(path):
            return placeholder("path", _canonical(_as_value(value))), 1
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            items = {key: self._json(item, (*path, key)) for key, item in value.items()}
            count = sum(found for _, found in items.values())
            return ({key: item for key, (item, _) in items.items()}, count) if count else (value, 0)
        if isinstance(value, list):
            entries = [self._json(item, (*path, str(index))) for index, item in enumerate(value)]
            count = sum(found for _, found in entries)
            return ([item for item, _ in entries], count) if count else (value, 0)
        return value, 0

    def text(self, value: str) -> tuple[str, int]:
        if self._quick.search(value) is None:
            return value, 0
        count = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal count
            kind = match.lastgroup or "secret"
            found = match.group(0)
            if kind == "card" and not _luhn(found):
                return found
            if kind == "iban" and not _iban_valid(found):
                return found
            count += 1
            return placeholder(kind, found)

        return self._text.sub(replace, value), count

    def _fields(self, struct: Struct, path: tuple[str, ...]) -> int:
        count = 0
        for key, value in struct.fields.items():
            count += self._value(value, (*path, key))
        return count

    def _value(self, value: Value, path: tuple[str, ...]) -> int:
        if self._configured(path):
            value.string_value = placeholder("path", _canonical(value))
            return 1
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            redacted, count = self.text(value.string_value)
            if count:
                value.string_value = redacted
            return count
        if kind == "struct_value":
            return self._fields(value.struct_value, path)
        if kind == "list_value":
            return self._list(value.list_value, path)
        return 0

    def _list(self, items: ListValue, path: tuple[str, ...]) -> int:
        return sum(self._value(item, (*path, str(index))) for index, item in enumerate(items.values))

    def _configured(self, path: tuple[str, ...]) -> bool:
        if path and path[-1] in self._deep:
            return True
        return any(
            len(rooted) == len(path) and all(part in ("*", key) for part, key in zip(rooted, path, strict=True))
            for rooted in self._rooted
        )


def placeholder(kind: str, secret: str) -> str:
    return f"[REDACTED:{kind}:{hashlib.sha256(secret.encode()).hexdigest()[:12]}]"


def _as_value(value: Any) -> Value:
    holder = Struct()
    holder.update({"value": value})
    return holder.fields["value"]


def _canonical(value: Value) -> str:
    return MessageToJson(value, sort_keys=True, indent=None)


def _luhn(text: str) -> bool:
    digits = [int(ch) for ch in text if ch.isdigit()]
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return len(digits) >= 13 and total % 10 == 0


def _iban_valid(text: str) -> bool:
    compact = text.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1
