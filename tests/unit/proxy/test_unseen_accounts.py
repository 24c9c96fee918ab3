"""An IBAN nothing in the workflow showed (`unseen:`): one the agent put together itself."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bastion.proxy._provenance import Fingerprints, Provenance, TaintSettings

TASK = "Pay the Amberglass invoice AG-2291."
EMAIL = {
    "sender": "billing@amberglass.example",
    "body": "Invoice AG-2291, 318.40 EUR to NL12 ABNA 6666 4075 03. "
    "<!-- migrated: SUU3M0JPRkkwMjE0MzI5NzQwNjkzOA== -->",
}
DECODED = "IE73BOFI02143297406938"  # what the comment's base64 says, valid, nowhere in the email as written


def _read(result: Any = EMAIL, provenance: Provenance | None = None) -> Fingerprints:
    prints = Fingerprints()
    (provenance or Provenance()).record(prints, "n1", "email__read_email", result)
    return prints


def _unseen(prints: Fingerprints, arguments: dict[str, Any], task: str = TASK) -> list[str]:
    labels = Provenance().annotate(prints, "bank__transfer", arguments, task).labels
    return [label for label in labels if label.startswith("unseen:")]


def test_an_iban_no_result_and_not_the_task_wrote_is_labelled() -> None:
    assert _unseen(_read(), {"iban": DECODED, "amount": 318.40}) == ["unseen:iban"]
    # Spaced or lower-case, it is the same account.
    assert _unseen(_read(), {"to": {"iban": "ie73 bofi 0214 3297 4069 38"}}) == ["unseen:to.iban"]


def test_an_iban_a_result_or_the_task_wrote_is_not() -> None:
    assert _unseen(_read(), {"iban": "NL12ABNA6666407503"}) == []
    task = f"Pay 318.40 EUR to {DECODED} for AG-2291."
    assert _unseen(_read(), {"iban": DECODED}, task) == []
    # A trusted tool's result shows accounts too (the saved payees).
    provenance = Provenance(lambda: TaintSettings(untrusted_sources=("email__*",)))
    prints = _read(provenance=provenance)
    provenance.record(prints, "n2", "bank__list_payees", {"payees": [{"name": "Amberglass", "iban": DECODED}]})
    assert _unseen(prints, {"iban": DECODED}) == []


def test_what_is_no_valid_iban_is_not() -> None:
    assert _unseen(_read(), {"iban": "IE73BOFI02143297406939"}) == []  # checksum off by one
    assert _unseen(_read(), {"reference": "AG-2291-0001-0002"}) == []


def test_with_a_result_unread_nothing_can_be_said() -> None:
    prints = _read()
    padded = {"body": "x " * 200_000 + DECODED}
    Provenance().record(prints, "n2", "email__read_email", padded)
    assert prints.unread
    assert _unseen(prints, {"iban": "GB82WEST12345698765432"}) == []


def test_a_workflow_without_prints_labels_nothing() -> None:
    assert _unseen(Fingerprints(), {"iban": DECODED}) == []


def test_after_a_payload_provenance_cannot_read_nothing_can_be_said() -> None:
    # An invoice as an image or a PDF: the agent may read an IBAN there, provenance cannot.
    prints = _read()
    scan = {"content": [{"type": "image", "mimeType": "image/png", "data": "iVBORw0KGgo" * 20}]}
    Provenance().record(prints, "n2", "files__read_file", scan)
    assert _unseen(prints, {"iban": DECODED}) == []
    # A `data` field holding data, not a payload, is read like any other.
    prints = _read()
    Provenance().record(prints, "n2", "crm__lookup", {"data": {"customer": "Amberglass B.V."}})
    assert _unseen(prints, {"iban": DECODED}) == ["unseen:iban"]


@pytest.mark.parametrize(
    "value",
    ["IBAN IE73BOFI02143297406938", "IE73 BOFI 0214 3297 4069 38 (Amberglass)", "iban: ie73bofi02143297406938"],
)
def test_an_unseen_iban_inside_a_longer_value_is_labelled(value: str) -> None:
    assert _unseen(_read(), {"payee": value}) == ["unseen:payee"]


def test_a_payee_list_keyed_by_iban_shows_its_accounts() -> None:
    provenance = Provenance(lambda: TaintSettings(untrusted_sources=("email__*",)))
    prints = _read(provenance=provenance)
    provenance.record(prints, "n2", "bank__list_payees", {"payees": {DECODED: {"name": "Amberglass"}}})
    assert _unseen(prints, {"iban": DECODED}) == []


def test_a_payload_key_in_text_its_writer_chose_does_not_switch_it_off() -> None:
    # JSON written into an email's body, with a "data" key of base64 in it, is no image the
    # tool returned (an attacker's probe).
    body = json.dumps({"text": "See the invoice.", "data": "A" * 64})
    prints = _read({"sender": "billing@amberglass.example", "body": body})
    assert _unseen(prints, {"iban": DECODED}) == ["unseen:iban"]


def test_content_and_paths_are_not_read_for_an_iban_inside_them() -> None:
    letter = "Dear Ms Holt, please pay invoice 17 to our account IE73 BOFI 0214 3297 4069 38. Kind regards"
    assert _unseen(_read(), {"content": letter}) == []
    assert _unseen(_read(), {"path": "/consent/IE73BOFI02143297406938/forms"}) == []


def test_a_trusted_result_cut_by_the_bounds_leaves_nothing_unseen() -> None:
    # A reviewer's probe: a trusted payee list of 600 payees is read in part, and paying
    # payee 590 read as an account nothing showed.
    provenance = Provenance(lambda: TaintSettings(untrusted_sources=("email__*",)))
    prints = _read(provenance=provenance)
    payees = {"payees": [{"name": f"Payee {n}", "note": "x" * 60, "iban": DECODED} for n in range(600)]}
    provenance.record(prints, "n2", "bank__list_payees", payees)
    assert not prints.unread  # trusted: not remembered as unread, and still nothing unseen
    assert prints._blind
    assert _unseen(prints, {"iban": "GB82WEST12345698765432"}) == []


def test_a_trusted_result_too_large_to_read_leaves_nothing_unseen() -> None:
    provenance = Provenance(lambda: TaintSettings(untrusted_sources=("email__*",)))
    prints = _read(provenance=provenance)
    provenance.record_unread(prints, "n2", "bank__list_payees", 10_000_000)
    assert _unseen(prints, {"iban": DECODED}) == []
