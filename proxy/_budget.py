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
