"""`bastion eval`'s options, declared once for the CLI and for `python -m bastion.eval.efficacy.runner`
(kept apart from the runner so that building the CLI's parser imports nothing heavy)."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = (
    "Replay labelled scenario packs (legit and malicious tool-call sequences) through the real "
    "stack (policy, verifier, graph, proxy) in front of real MCP SDK upstreams that answer what "
    "each scenario scripts, and report FAR (legit scenarios blocked / legit) and VDR (malicious "
    "scenarios blocked / malicious), per pack and overall. Writes JSON to "
    "eval/results/eval-<UTC time>.json and a PNG chart beside it. Exit codes: 0 done (gates met); "
    "1 a gate was missed, or a scenario could not be replayed; 2 bad usage or a bad pack."
)


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r}: give a fraction between 0 and 1, e.g. 0.05")
    return number


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pack",
        action="append",
        default=[],
        metavar="NAME",
        help="a pack of eval/efficacy/packs/ by name, or a YAML file (repeatable; default: every pack)",
    )
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON instead of the table")
    parser.add_argument("--max-far", type=_fraction, metavar="X", help="gate: fail (exit 1) when FAR > X, e.g. 0.05")
    parser.add_argument("--min-vdr", type=_fraction, metavar="Y", help="gate: fail (exit 1) when VDR < Y, e.g. 0.8")
    parser.add_argument("--out", type=Path, help="JSON file (default eval/results/eval-<UTC time>.json)")
    parser.add_argument("--no-chart", action="store_true", help="do not write the PNG chart")
    parser.add_argument("--list", action="store_true", help="list the packs and their scenario counts, and exit")
