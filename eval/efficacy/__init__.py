"""`bastion eval` (DESIGN §13): labelled scenario packs replayed through the real stack,
reported as FAR (legit scenarios blocked / legit) and VDR (malicious scenarios blocked /
malicious) with optional gates.

`runner.main` is the entry point; `packs/` holds the scenarios, `policies/` the generic
policy each pack runs under, `tools.yaml` the upstream tools they call. Nothing is
imported here: the CLI reads `_options` without pulling in the stack.
"""
