"""The value budget: how much structure a governed call's arguments may carry.

Arguments become `google.protobuf.Struct` messages for policy and verifier, at about a
microsecond and 5.5 times the wire size per value (DESIGN §14). Unbounded, a 4 MiB
`[0,0,…]` stalled the event loop for seconds, peaked the proxy at 690 MB and produced
a message over the shared gRPC streams' limit, breaking other agents' calls. So the
arguments are measured *before* anything converts them, and the measurement stops at
the first value over the budget: its cost is bounded by the budget, not by the input.

A cheap gate on the raw body skips the walk for ordinary messages: the number of
values cannot exceed the number of `,` plus one, nesting cannot exceed the number of
`[` and `{`, and string bytes cannot exceed the body's length (strings may contain
those characters, so these are upper bounds, never an undercount).

Parsing is itself a cost the sender controls: orjson takes ~37 ms of event-loop time for
4 MB of `[0,0,…]` before the walk can refuse it, and a client sending such bodies back to
back took ordinary callers of the same proxy from ~1,400 to ~150 calls/s. So a body that
provably holds more than twice the budget's values (the envelope and `_meta` get the other
half) is refused unparsed (`refuse_unparsed`), from a lower bound made of byte scans that
run at memory speed: commas outside strings each separate two values, every bracket
outside strings opens a value (2 million `[[…[0]…]]` took orjson 0.5 to 0.8 s), and at least
half of the strings are values (every key has a value of its own). Both hold for any valid
JSON, so the bound never refuses a message that fits; invalid JSON it refuses is refused
either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion._errors import ArgumentsTooLarge


@dataclass(frozen=True, slots=True)
class ValueBudget:
    #: Scalars, arrays and objects together (keys are not values; they count as string bytes).
    max_values: int = 10_000
    #: Nesting of arrays and objects; protobuf stops at 100 levels, no real tool nears 32.
    max_depth: int = 32
    #: UTF-8 bytes of every key and string value together.
    max_string_bytes: int = 4 << 20

    def fits_raw(self, body: bytes) -> bool:
        """True when `body` cannot exceed the budget whatever it holds (no walk needed)."""
        return (
            len(body) <= self.max_string_bytes
            and body.count(b",") < self.max_values
            and body.count(b"[") + body.count(b"{") <= self.max_depth
        )

    def refuse_unparsed(self, raw: bytes, what: str) -> None:
        """Raise ArgumentsTooLarge when `raw`, not yet parsed, provably holds more than
        twice `max_values` values; costs one `count` for a body with fewer commas."""
        cap = 2 * self.max_values
        if raw.count(b",") < cap and raw.count(b"[") + raw.count(b"{") <= cap:
            return
        least = values_at_least(raw, cap)
        if least > cap:
            raise ArgumentsTooLarge(
                f"{what} holds at least {least} JSON values, more than twice what arguments may hold "
                f"({self.max_values}, BASTION_MAX_ARGUMENT_VALUES): refused before parsing"
            )

    def check(self, value: object, what: str) -> None:
        """Raise ArgumentsTooLarge when `value` exceeds the budget; stop at the first excess."""
        values = 0
        string_bytes = 0
        stack: list[tuple[object, int]] = [(value, 0)]
        while stack:
            item, depth = stack.pop()
            values += 1
            if isinstance(item, str):
                string_bytes += len(item) if item.isascii() else len(item.encode("utf-8", "surrogatepass"))
            elif isinstance(item, dict | list):
                depth += 1
                if depth > self.max_depth:
                    raise ArgumentsTooLarge(f"{what} nest deeper than {self.max_depth} levels")
                if values + len(item) > self.max_values:
                    raise ArgumentsTooLarge(
                        f"{what} hold more than {self.max_values} values (BASTION_MAX_ARGUMENT_VALUES)"
                    )
                if isinstance(item, dict):
                    for key, child in item.items():
                        string_bytes += len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass"))
                        stack.append((child, depth))
                else:
                    stack.extend((child, depth) for child in item)
            if string_bytes > self.max_string_bytes:
                raise ArgumentsTooLarge(
                    f"{what} hold more than {self.max_string_bytes} bytes of strings "
                    "(BASTION_MAX_ARGUMENT_STRING_BYTES)"
                )


def values_at_least(raw: bytes, enough: int) -> int:
    """A lower bound on the values of the JSON text `raw` (exact for `[0,0,…]`), from
    byte scans only, never more than a valid JSON text holds; it stops early once the
    strings alone put it above `enough` (splitting a million strings apart would cost
    what parsing them does)."""
    text = raw
    if b"\\" in text:
        # Escapes out first, so that no escaped quote is taken for a string's end. A run of
        # backslashes starts with an escape, so removing backslash pairs left to right
        # removes exactly the escaped backslashes, and a backslash-quote left is an escaped quote.
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Each key has a value of its own, and every string that is no key is a value.
    by_strings = text.count(b'"') // 4
    if by_strings > enough:
        return by_strings
    # Commas outside strings each separate two values of an array or object; every `[` or
    # `{` outside strings is a value of its own (nesting adds values without commas).
    outside = text.split(b'"')[0::2]
    commas = sum(part.count(b",") for part in outside)
    containers = sum(part.count(b"[") + part.count(b"{") for part in outside)
    return max(by_strings, commas + 1, containers)
