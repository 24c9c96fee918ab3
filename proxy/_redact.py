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
- **Secret field names**, always: the value of a key named as in SECRET_KEYS (`password`,
  `token`, `credentials`, `client_secret`, …; any case) at any depth. A secret with no
  pattern of its own — an A2A push config's `token` and `authentication.credentials`, a
  password — was journaled in clear (an attacker's probe).

A secret becomes a typed placeholder with a digest, `[REDACTED:jwt:3f2a…]`, so an auditor
can still tell that two calls carried the same secret without learning it. The digest is
the first 12 hex digits of an HMAC-SHA256 under a key derived from the service token (the
replicas of one deployment agree), not a bare sha256: a bare digest of a low-entropy
secret — a password, a PIN, a short API key — let anyone who reads the audit trail or an
export confirm guesses offline (an attacker's probe). Cost: one cheap search of the raw request body (literal
starts and long digit runs); the arguments are walked only when it matches or paths are
configured, and each string is searched in full only when the cheap search hits it.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import os
import re
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.json_format import MessageToJson
from google.protobuf.struct_pb2 import Struct, Value

from bastion._appconfig import REDACTION_PATH
from bastion._iban import checksum_ok
from bastion.v1 import graph_pb2, policy_pb2

# Token boundaries are "no letter or digit next to it", not `\b`: `key_AKIA…` or
# `AKIA…_old` has a word character beside the key, and `\b` let it through (found by an
# attacker's probe). An auth scheme is case-insensitive (`bearer …`).
#
# Every pattern must cost time linear in the text: redaction runs on the event loop, on
# what an agent sends. A key's body runs to the next `-----` only (a PEM body holds none),
# so `-----BEGIN PRIVATE KEY-----` repeated without an END no longer scans to the end of
# the text from every BEGIN (a probe's 128 KiB argument held the proxy's loop for 8 s).
# JWTs are not in this union: see `_jwts`.
_PATTERNS: dict[str, str] = {
    "private_key": (
        r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[^-]|-(?!----))*+"
        r"-----END [A-Z ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    ),
    "bearer": r"(?<![A-Za-z0-9])(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*",
    "aws_key": r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])",
    "github_token": r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})(?![A-Za-z0-9])",
    "slack_token": r"(?<![A-Za-z0-9])xox[abprs]-[A-Za-z0-9-]{10,}(?![A-Za-z0-9])",
    "api_key": r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{20,}(?![A-Za-z0-9])",
    # Digits with spaces or hyphens anywhere, or groups of four split by one separator of
    # any kind: a dot, a no-break space (not any dot: "3.141592653589793" is no card).
    "card": (
        r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)"
        r"|(?<![\d.])\d{4}(?P<card_sep>[.\s])\d{4}(?:(?P=card_sep)\d{4}){1,2}(?:(?P=card_sep)\d{1,3})?(?![\d.])"
    ),
}
#: Dot-separated runs of base64url, whole (each starts where the previous one ended): the
#: places a JWT can be. A JWT's segments hold `-`, so as one expression (`eyJ[…-]{8,}\.…`)
#: every `eyJ` of `-eyJ-eyJ…` scanned to the end of the run and failed there: quadratic.
_DOTTED = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
#: Shortest JWT segment (after `eyJ` for the first).
_JWT_SEGMENT = 8


def _jwts(text: str) -> list[tuple[int, int]]:
    r"""Spans of what `(?<![A-Za-z0-9])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}`
    matches, leftmost first, in one pass over the text: all the `eyJ` of one segment share
    that segment's end, so only the first of them not preceded by a letter or digit can
    start a match (a later one's first segment is shorter and the same text follows it)."""
    spans: list[tuple[int, int]] = []
    for token in _DOTTED.finditer(text):
        found = token.group()
        if "eyJ" not in found or found.count(".") < 2:
            continue
        pieces = found.split(".")
        offset = token.start()
        index = 0
        while index + 2 < len(pieces):
            piece = pieces[index]
            at = piece.find("eyJ")
            while at > 0 and piece[at - 1] in _ALNUM:
                at = piece.find("eyJ", at + 1)
            if (
                at != -1
                and len(piece) - at - 3 >= _JWT_SEGMENT
                and len(pieces[index + 1]) >= _JWT_SEGMENT
                and len(pieces[index + 2]) >= _JWT_SEGMENT
            ):
                end = offset + len(piece) + len(pieces[index + 1]) + len(pieces[index + 2]) + 2
                spans.append((offset + at, end))
                offset = end + 1
                index += 3
                continue
            offset += len(piece) + 1
            index += 1
    return spans


#: A cheap first look at a string: each pattern's literal start, or a long digit run (in
#: any script: the card pattern reads every script's digits). Only a hit pays for the full
#: expression (measured ~150 µs on a small body, against a few µs for this).
_QUICK = r"-----BEGIN|eyJ|(?i:bearer)|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abprs]-|sk-|\d[\d\s.-]{11,}\d"
_QUICK_IBAN = r"|[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4}"
#: `_QUICK` for counting places (`for_body`): a digit run counts once per card's length, as
#: the card expression reads it, not once for the whole run.
_PLACES = _QUICK.replace(r"\d[\d\s.-]{11,}\d", r"\d[\d\s.-]{11,30}\d")
#: The same look at the raw request body, one scan. A JSON escape (`\u0065yJ…` is `eyJ…`
#: once parsed) or a byte of a multi-byte digit (fullwidth, Arabic-Indic …) sends the
#: arguments to the full walk: the scan cannot read them (a probe's escaped JWT was
#: journaled whole).
_QUICK_RAW = (
    rb"-----BEGIN|eyJ|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abprs]-|sk-"
    rb"|[0-9][0-9 .\t-]{11,}[0-9]|\\u|[\xc2\xd9\xdb\xe0-\xef]"
)
_QUICK_RAW_IBAN = rb"|[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4}"
#: Keys whose value is a secret whatever it looks like (compared case-insensitively).
SECRET_KEYS = frozenset(
    {
        "password", "passwd", "passphrase", "secret", "client_secret", "token", "access_token",
        "refresh_token", "id_token", "api_key", "apikey", "credentials", "private_key", "authorization",
    }
)  # fmt: skip
#: The same keys in a raw JSON body, lowered (an escaped key sends the walk through `\\u`).
#: Case-insensitive matching is searched on the body lowered once, with `bearer`: as
#: `re.IGNORECASE` patterns these two took 5 µs of a 250-byte body's 7.
_RAW_KEYS = re.compile(rb'"(?:' + b"|".join(key.encode() for key in sorted(SECRET_KEYS)) + rb')"')
#: Separates the placeholder key from other keys derived from the same secret.
_PURPOSE = b"bastion redaction placeholder"
_IBAN = r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"

#: Secret-shaped places (first looks of `_QUICK`) in one request's body past which each of
#: its strings with any is redacted whole (`for_body`). Every place the full expression
#: reads costs a Python call (a Luhn or mod-97 check, a placeholder's HMAC), and reasons are
#: scrubbed of every secret found: a 4 MiB argument of 200,000 key-shaped tokens held the
#: proxy's event loop for 1-2 s per call, linear but long. No real request comes near.
BULK_CANDIDATES = 2048

#: Shortest start of a secret recognised when a reason quotes it cut short ('DE8937…').
MIN_QUOTED = 6
#: How services cut a quoted value: the verifier with an ellipsis, policy with three dots.
_CUT_MARKS = ("\u2026", "...")


class Redactor:
    def __init__(self, paths: Sequence[str] = (), *, iban: bool = False, secret: bytes | None = None) -> None:
        """`secret`: key material for the placeholders' digests, shared by the replicas whose
        placeholders must compare (the service token); None for a random key, whose digests
        compare only within this process."""
        for path in paths:
            if not REDACTION_PATH.fullmatch(path):
                raise ValueError(f"redaction path {path!r}: use $.a.b (with * for any key) or $..key")
        # Keys compare case-insensitively: `$..password` also covers `Password` and
        # `PASSWORD` (a probe's capitalised key was journaled in clear).
        self._deep = frozenset(path[3:].casefold() for path in paths if path.startswith("$.."))
        self._rooted = tuple(tuple(path[2:].casefold().split(".")) for path in paths if not path.startswith("$.."))
        patterns = dict(_PATTERNS)
        if iban:
            patterns["iban"] = _IBAN
        self._text = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in patterns.items()))
        self._quick = re.compile(_QUICK + (_QUICK_IBAN if iban else ""))
        self._places = re.compile(_PLACES + (_QUICK_IBAN if iban else ""))
        self._raw = re.compile(_QUICK_RAW + (_QUICK_RAW_IBAN if iban else b""))
        #: Whole strings, not the secrets in them (`for_body`), and the view that does so.
        self._whole = False
        self._whole_view: Redactor | None = None
        material = secret if secret is not None else os.urandom(32)
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(material)

    def placeholder(self, kind: str, secret: str) -> str:
        digest = hmac.new(self._key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"[REDACTED:{kind}:{digest[:12]}]"

    @property
    def has_paths(self) -> bool:
        return bool(self._deep or self._rooted)

    def may_hold_secrets(self, raw: bytes) -> bool:
        """False when the arguments need no walk: no configured paths, no pattern and no
        secret field name in `raw`."""
        if self.has_paths or self._raw.search(raw) is not None:
            return True
        lowered = raw.lower()
        return b"bearer" in lowered or _RAW_KEYS.search(lowered) is not None

    def for_body(self, raw: bytes) -> Redactor | None:
        """The redactor for the arguments of a request whose body is `raw`: None when the
        body shows nothing to redact (`may_hold_secrets`); this one; or, when the body holds
        more than BULK_CANDIDATES secret-shaped places, one that replaces every string
        holding any by a single placeholder (`bulk`) without reading the places one by one.
        Decided once per body, so the Struct and JSON copies get the same placeholders."""
        if not self.may_hold_secrets(raw):
            return None
        if len(raw) < 3 * BULK_CANDIDATES:  # no first look is shorter than three characters
            return self
        places = self._places.finditer(raw.decode("utf-8", "replace"))
        if next(itertools.islice(places, BULK_CANDIDATES, None), None) is None:
            return self
        if self._whole_view is None:
            view = copy.copy(self)
            view._whole = True
            view._whole_view = view
            self._whole_view = view
        return self._whole_view

    def struct(self, arguments: Struct, found: list[str] | None = None) -> int:
        """Redact `arguments` in place; the number of values replaced. `found` collects
        what was replaced (`Scrubber`: reasons that quote it)."""
        return self._fields(arguments, (), found)

    def json(self, value: Any) -> tuple[Any, int]:
        """A redacted copy of a JSON value (dicts, lists, strings, numbers) as parsed from a
        request, and the number of values replaced; `value` itself when nothing was. The
        same placeholders as `struct` gives the Struct copy of the same arguments."""
        return self._json(value, ())

    def _json(self, value: Any, path: tuple[str, ...]) -> tuple[Any, int]:
        if path and (kind := self._configured(path)):
            return self.placeholder(kind, _canonical(_as_value(value))), 1
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            # Keys too: `{"AKIA…": "v"}` holds its secret in a key (an attacker's re-probe).
            items = {self.text(key): self._json(item, (*path, key)) for key, item in value.items()}
            count = sum(found + named for (_, named), (_, found) in items.items())
            return ({key: item for (key, _), (item, _) in items.items()}, count) if count else (value, 0)
        if isinstance(value, list):
            entries = [self._json(item, (*path, str(index))) for index, item in enumerate(value)]
            count = sum(found for _, found in entries)
            return ([item for item, _ in entries], count) if count else (value, 0)
        return value, 0

    def text(self, value: str, found: list[str] | None = None) -> tuple[str, int]:
        if self._quick.search(value) is None:
            return value, 0
        if self._whole:
            if found is not None:
                found.append(value)
            return self.placeholder("bulk", value), 1
        count = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal count
            kind = match.lastgroup or "secret"
            secret = match.group(0)
            if kind == "card" and not _luhn(secret):
                return secret
            if kind == "iban" and not checksum_ok(secret.replace(" ", "")):
                return secret
            count += 1
            if found is not None:
                found.append(secret)
            return self.placeholder(kind, secret)

        # JWTs first, on the text as it came: a token holding `-sk-…` or `_AKIA…` in a segment
        # was journaled as a header and a signature around an API key's placeholder when the
        # other patterns went first (an attacker's probe). The rest is read between them.
        spans = _jwts(value) if "eyJ" in value else []
        if not spans:
            return self._text.sub(replace, value), count
        parts: list[str] = []
        last = 0
        for start, end in spans:
            secret = value[start:end]
            parts += (self._text.sub(replace, value[last:start]), self.placeholder("jwt", secret))
            count += 1
            if found is not None:
                found.append(secret)
            last = end
        parts.append(self._text.sub(replace, value[last:]))
        redacted = "".join(parts)
        return redacted, count

    def _fields(self, struct: Struct, path: tuple[str, ...], found: list[str] | None) -> int:
        count = 0
        renamed: list[tuple[str, str]] = []
        for key, value in struct.fields.items():
            count += self._value(value, (*path, key), found)
            new_key, named = self.text(key, found)
            if named:
                renamed.append((key, new_key))
                count += named
        for key, new_key in renamed:  # keys too, as in `json`
            struct.fields[new_key].CopyFrom(struct.fields[key])
            del struct.fields[key]
        return count

    def _value(self, value: Value, path: tuple[str, ...], found: list[str] | None) -> int:
        if kind := self._configured(path):
            if found is not None:
                found.extend(_strings_of(value))
            value.string_value = self.placeholder(kind, _canonical(value))
            return 1
        held = value.WhichOneof("kind")
        if held == "string_value":
            redacted, count = self.text(value.string_value, found)
            if count:
                value.string_value = redacted
            return count
        if held == "struct_value":
            return self._fields(value.struct_value, path, found)
        if held == "list_value":
            return sum(
                self._value(item, (*path, str(index)), found) for index, item in enumerate(value.list_value.values)
            )
        return 0

    def _configured(self, path: tuple[str, ...]) -> str:
        """The placeholder kind when the value at `path` is redacted whole: 'path' (a
        configured path), 'field' (a secret field name); '' when it is not."""
        if not path:
            return ""
        last = path[-1].casefold()
        if last in self._deep:
            return "path"
        if self._rooted:
            folded = tuple(key.casefold() for key in path)
            if any(
                len(rooted) == len(folded) and all(part in ("*", key) for part, key in zip(rooted, folded, strict=True))
                for rooted in self._rooted
            ):
                return "path"
        return "field" if last in SECRET_KEYS else ""

    def names(self, action: policy_pb2.Action, found: list[str] | None = None) -> None:
        """Redact the action's names in place: a resource URI may carry a token
        (`https://ghp_…@host/x`), a tool name is whatever the agent wrote, and so are the
        server of a refused `/mcp/{server}` and the path a refused REST request stands as
        in `method` (an attacker's probe found `POST /mcp/ghp_…` journaled in clear)."""
        for name in ("tool", "prompt", "resource", "server", "method"):
            text = getattr(action, name)
            if text:
                redacted, count = self.text(text, found)
                if count:
                    setattr(action, name, redacted)

    def scrub(self, text: str, secrets: Sequence[str]) -> str:
        """`text` (a decision's or verifier's reason) with every secret of `secrets` replaced by
        a placeholder: whole, or cut short as reasons quote values (its first MIN_QUOTED or more
        characters followed by an ellipsis). Policy and the verifier saw the real arguments, and
        their reasons quote them; the journaled copy must not undo the arguments' redaction
        (found by an attacker's probe: an IBAN and an address redacted in the arguments stood in
        the verifier's reason)."""
        for secret in sorted(set(secrets), key=len, reverse=True):
            if not secret:
                continue
            shown = self.placeholder("quoted", secret)
            # A short one only where quoted whole: "pin" must not blank every word holding it.
            text = text.replace(secret if len(secret) >= 4 else repr(secret), shown)
            if len(secret) > MIN_QUOTED:
                text = _scrub_cut(text, secret, shown)
        return text

    def scrub_event(self, event: graph_pb2.Event, secrets: Sequence[str]) -> None:
        """Scrub every reason of a journaled event (`scrub`): its block reason, its decision's,
        its verifiers' and its edges'."""
        if not secrets:
            return
        if event.block_reason:
            event.block_reason = self.scrub(event.block_reason, secrets)
        if event.HasField("decision") and event.decision.reason:
            event.decision.reason = self.scrub(event.decision.reason, secrets)
        # Read through HasField: touching an unset submessage would set it.
        for answer in ([event.verifier] if event.HasField("verifier") else []) + list(event.verifications):
            if answer.reasons:
                answer.reasons[:] = [self.scrub(reason, secrets) for reason in answer.reasons]
        for edge in event.edges:
            edge.reason = self.scrub(edge.reason, secrets)


def _strings_of(value: Value) -> list[str]:
    """The strings and numbers a value replaced by a configured path held, as text."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return [value.string_value]
    if kind == "number_value":
        number = value.number_value
        return [str(int(number)) if number.is_integer() else str(number)]
    if kind == "struct_value":
        return [text for item in value.struct_value.fields.values() for text in _strings_of(item)]
    if kind == "list_value":
        return [text for item in value.list_value.values for text in _strings_of(item)]
    return []


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


def _scrub_cut(text: str, secret: str, shown: str) -> str:
    """`text` with every quote of `secret` cut short (its first MIN_QUOTED or more characters
    and a cut mark) replaced by `shown`. Each place the first MIN_QUOTED characters occur is
    read once, as far as it agrees with the secret: trying every cut length of the secret
    instead cost the square of its length (a 400 KB secret whose first six characters a
    reason quoted held the proxy's loop for 10 s, an attacker's probe)."""
    head = secret[:MIN_QUOTED]
    start = text.find(head)
    while start != -1:
        end = start + MIN_QUOTED
        limit = min(len(text), start + len(secret) - 1)  # a cut: shorter than the secret
        while end < limit and text[end] == secret[end - start]:
            end += 1
        # The longest cut followed by a mark (a secret holding dots may have one inside the
        # part that agrees): every cut up to `end` agrees with the secret.
        cut = next(
            (
                (at, mark)
                for at in range(end, start + MIN_QUOTED - 1, -1)
                for mark in _CUT_MARKS
                if text.startswith(mark, at)
            ),
            None,
        )
        if cut is None:
            start = text.find(head, start + 1)
            continue
        at, mark = cut
        text = text[:start] + shown + text[at + len(mark) :]
        start = text.find(head, start + len(shown))
    return text
