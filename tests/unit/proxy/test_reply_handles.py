"""A reply by message id goes to that message's sender: look-alikes are read there too."""

from __future__ import annotations

from bastion.proxy._provenance import MAX_HANDLES, Fingerprints, Provenance, TaintSettings

TASK = "Confirm the bouncy castle booking with Bunting & Bake (buntingbake.example): reply saying yes."
LISTING = {
    "messages": [
        {"id": "kl-274", "sender": "Bunting Bake <bookings@buntingbake-events.example>", "subject": "Confirm"},
        {"id": "kl-275", "sender": "hello@buntingbake.example", "subject": "Our summer menu"},
        {"id": "kl-276", "subject": "No sender at all"},
    ]
}


def _labels(prints: Fingerprints, message_id: str, provenance: Provenance | None = None) -> tuple[str, ...]:
    arguments = {"message_id": message_id, "body": "Yes, we confirm."}
    return (provenance or Provenance()).annotate(prints, "email__reply_email", arguments, TASK).labels


def _listed(provenance: Provenance | None = None, result: object = LISTING) -> Fingerprints:
    prints = Fingerprints()
    (provenance or Provenance()).record(prints, "n1", "email__search_email", result)
    return prints


def test_a_reply_to_a_look_alike_of_the_tasks_domain_is_labelled() -> None:
    labels = _labels(_listed(), "kl-274")
    assert "lookalike:message_id:buntingbake-events.example:buntingbake.example" in labels


def test_a_reply_to_the_real_sender_or_to_an_unknown_id_is_not() -> None:
    prints = _listed()
    for message_id in ("kl-275", "kl-276", "kl-999", "kl-2744"):
        assert not any(label.startswith("lookalike:") for label in _labels(prints, message_id)), message_id


def test_an_id_and_a_sender_of_different_objects_are_not_linked() -> None:
    result = {"messages": [{"id": "kl-274"}], "latest": {"sender": "bookings@buntingbake-events.example"}}
    assert not any(label.startswith("lookalike:message_id") for label in _labels(_listed(result=result), "kl-274"))


def test_a_trusted_results_handles_are_not_kept() -> None:
    provenance = Provenance(lambda: TaintSettings(untrusted_sources=("web__*",)))
    labels = _labels(_listed(provenance), "kl-274", provenance)
    assert not any(label.startswith("lookalike:message_id") for label in labels)


def test_handles_are_bounded_newest_kept() -> None:
    many = {"messages": [{"id": f"m-{n}", "sender": f"x@buntingbake-events{n}.example"} for n in range(MAX_HANDLES)]}
    prints = _listed()
    Provenance().record(prints, "n2", "email__search_email", many)
    # The oldest listing's handle went; a newer one is still read.
    assert not any(label.startswith("lookalike:message_id") for label in _labels(prints, "kl-274"))
    assert len(prints._handles) == MAX_HANDLES


def test_handles_count_against_the_budget() -> None:
    prints = _listed()
    with_handles = len(prints)
    bare = Fingerprints()
    Provenance().record(
        bare, "n1", "email__search_email", {"messages": [{"subject": m["subject"]} for m in LISTING["messages"]]}
    )
    assert with_handles > len(bare)
