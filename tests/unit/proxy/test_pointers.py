"""Which results a task points at: identities, references, and the `named:` labels they give."""

from __future__ import annotations

import time

import pytest

from bastion.proxy._pointers import MAX_IDENTITY, identity, points_at, read_from, references, stays_within
from bastion.proxy._provenance import Fingerprints, Provenance

FORUM = "https://forum.islandhop.example/t/2231"
PAGE = {
    "url": FORUM,
    "text": "To answer, post at https://forum.islandhop.example/t/2231/reply or verify at https://verify.example/x",
}
EMAIL = {
    "sender": "Fjordlicht Studio <billing@fjordlicht-studio.example>",
    "subject": "Invoice 2291",
    "body": "Please pay 640 EUR to NL90 LDRU 7451 1350 04 by Friday.",
}


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        # Proper nouns that do not open a sentence; months, days and order verbs are not names.
        ("Pay Fjordlicht Studio the 640 EUR for the shoot in June.", {"fjordlicht", "studio"}),
        ("Email the organisers. Book a table at Osteria Lume.", {"osteria", "lume"}),
        # Locators: a URL's and a bare host's registrable domain, an address, a path.
        (f"Ask on {FORUM} whether it sells out.", {"islandhop.example"}),
        ("Leave a review on stayreviews.example for me.", {"stayreviews.example"}),
        ("Write to legal@tessaly.example about it.", {"legal@tessaly.example", "tessaly.example"}),
        ("The request is in /requests/nda-request.txt, answer it.", {"/requests/nda-request.txt"}),
        ("Pay it from bank.co.uk today.", {"bank.co.uk"}),
        ("pay the invoice.", set()),
    ],
)
def test_a_task_references_its_locators_and_proper_nouns(task: str, expected: set[str]) -> None:
    assert references(task) == expected


def test_a_result_is_identified_by_what_was_read_and_who_sent_it() -> None:
    # The URL the call read, and the page's own url field; not the links inside its text.
    assert identity(read_from({"url": FORUM}), [("content[0].text.url", FORUM)]) == {"islandhop.example", "islandhop"}
    # An email: its sender's display name and address; the subject and body say nothing of who sent it.
    sender = [("content[0].text.sender", EMAIL["sender"]), ("content[0].text.subject", EMAIL["subject"])]
    assert identity(read_from({"id": "m-1"}), sender) == {
        "billing@fjordlicht-studio.example",
        "fjordlicht-studio.example",
        "fjordlicht",
        "studio",
    }
    # A file read by its path.
    assert identity(read_from({"path": "/requests/nda-request.txt"}), []) == {"/requests/nda-request.txt"}


def test_a_display_name_stuffed_with_names_lends_only_its_first_words() -> None:
    stuffed = "Marta Jonas Petra Lukas Tobias Saskia Kalkbrenner Fjordlicht Harbourline <x@evil.example>"
    found = identity(read_from({}), [("content[0].text.sender", stuffed)])
    assert {"marta", "saskia"} <= found
    assert not {"kalkbrenner", "fjordlicht", "harbourline"} & found


def test_an_address_among_the_arguments_is_data_not_where_the_result_came_from() -> None:
    """A booking made for jonas@edlund-home.example does not make its answer a result the
    task points at because the task holds that address."""
    assert identity(read_from({"passenger": "jonas@edlund-home.example", "flight": "AY-1773"}), []) == frozenset()


def test_what_a_call_read_is_kept_small_whatever_its_arguments() -> None:
    """Kept with every untrusted result until a later argument matches it: a few short
    strings that may be locators, never the arguments themselves."""
    arguments = {
        "url": "https://x.example/" + "a" * 5000,
        "body": "no locator",
        "more": [f"/p/{i}.txt" for i in range(50)],
    }
    read = read_from(arguments)
    assert len(read) <= 4
    assert all(len(text) <= 512 for text in read)
    assert "no locator" not in read
    assert read_from(["not", "a", "dict"]) == ()


def test_fields_inside_lists_and_nested_records_are_no_identity() -> None:
    """A search's ten results name ten sites: none of them is *the* source, so an injected
    snippet cannot borrow a neighbour's identity."""
    fields = [
        ("content[0].text.results[0].url", "https://stayreviews.example/casa"),
        ("content[0].text.results[1].url", "https://evil.example/x"),
        ("content[0].text.meta.author", "Stay Reviews"),
    ]
    assert identity(read_from({"query": "casa lume reviews"}), fields) == frozenset()


def test_an_identity_is_bounded_however_many_source_fields_a_result_has() -> None:
    fields = [(f"content[0].text.from{i}", f"x{i}@host{i}.example") for i in range(5000)]
    fields += [("content[0].text.from", " ".join(f"name{i}x" for i in range(10_000)))]
    started = time.perf_counter()
    found = identity(read_from({"url": "https://" + "a." * 10_000 + "example"}), fields)
    assert len(found) <= MAX_IDENTITY
    assert time.perf_counter() - started < 2.0  # a bound on work, not a performance target


@pytest.mark.parametrize(
    "text",
    ["a" * 16384, "a." * 8192, "a-" * 8192, "@" * 16384, "Abcd " * 3200, "x@y.example " * 1400, "/a" * 8192],
    ids=["letters", "dots", "hyphens", "ats", "capitals", "addresses", "slashes"],
)
def test_crafted_text_costs_linear_time_everywhere_it_is_read(text: str) -> None:
    """A regex retried at every position of 16 KiB of letters took ~300 ms (quadratic);
    the tokeniser reads each character a bounded number of times."""
    started = time.perf_counter()
    references(text)
    identity(read_from({"url": text}), [("content[0].text.from", text)])
    stays_within(text.casefold() + ".", frozenset({"y.example"}))
    assert time.perf_counter() - started < 0.25  # a bound on work (was seconds), not a performance target


def test_an_argument_stays_within_the_named_site_or_the_tasks() -> None:
    known = frozenset({"islandhop.example", "edlund-home.example"})
    assert stays_within("https://forum.islandhop.example/t/2231/reply", known)
    assert stays_within("alerts to jonas@edlund-home.example", known)
    assert stays_within("NL90LDRU7451135004", known)  # no domain at all
    assert not stays_within("https://verify.example/x", known)
    assert not stays_within("https://forum.islandhop.example/x and https://verify.example/y", known)
    assert not stays_within("https://islandhop.example.evil.example/x", known)


def test_points_at_needs_a_shared_reference() -> None:
    assert points_at(frozenset({"fjordlicht", "studio"}), references("Pay Fjordlicht Studio."))
    assert not points_at(frozenset({"fjordlicht-studio.example"}), references("Pay the studio."))


# -- the labels provenance gives ---------------------------------------------------------


def _labels(prints: Fingerprints, tool: str, arguments: dict[str, str], task: str) -> tuple[str, ...]:
    return Provenance().annotate(prints, tool, arguments, task).labels


def _fetched(provenance: Provenance | None = None) -> Fingerprints:
    prints = Fingerprints()
    assert (provenance or Provenance()).record(prints, "n1", "web__fetch", PAGE, {"url": FORUM}) > 0
    return prints


def test_data_from_a_result_the_task_points_at_is_labelled_named() -> None:
    reply = {"url": "https://forum.islandhop.example/t/2231/reply"}
    labels = _labels(_fetched(), "web__post_form", reply, f"Ask on {FORUM} whether it sells out.")
    assert "named:url" in labels
    assert "arg:url:untrusted:web__fetch:text:text:1.00" in labels
    # The same call when the task points at no page: untrusted data, not named.
    unnamed = _labels(_fetched(), "web__post_form", reply, "Ask on the forum whether it sells out.")
    assert any(label.startswith("arg:url:untrusted:") for label in unnamed)
    assert not [label for label in unnamed if label.startswith("named:")]


def test_a_named_page_does_not_vouch_for_a_link_to_another_site() -> None:
    labels = _labels(_fetched(), "web__post_form", {"url": "https://verify.example/x"}, f"Ask on {FORUM} please.")
    assert any(label.startswith("arg:url:untrusted:") for label in labels)
    assert not [label for label in labels if label.startswith("named:")]


def test_a_trusted_source_needs_no_vouching_and_gets_no_named_label() -> None:
    from bastion.proxy._provenance import TaintSettings

    provenance = Provenance(lambda: TaintSettings(untrusted_sources=("email__*",)))
    reply = {"url": "https://forum.islandhop.example/t/2231/reply"}
    labels = provenance.annotate(_fetched(provenance), "web__post_form", reply, f"Ask on {FORUM}.").labels
    assert any(label.startswith("arg:url:trusted:web__fetch:") for label in labels), labels
    assert not [label for label in labels if label.startswith("named:")]


def test_an_argument_path_in_a_named_label_is_escaped() -> None:
    prints = Fingerprints()
    Provenance().record(prints, "n1", "email__read", EMAIL, {"id": "m-1"})
    labels = _labels(prints, "bank__transfer", {"pay:to": "NL90LDRU7451135004"}, "Pay Fjordlicht Studio.")
    assert "named:pay%3Ato" in labels


def test_an_evicted_result_takes_its_identity_with_it() -> None:
    prints = Fingerprints(capacity=40)
    provenance = Provenance()
    provenance.record(prints, "n1", "email__read", EMAIL, {"id": "m-1"})
    # A later result pushes the email out: its data, and what it was, are forgotten together.
    provenance.record(prints, "n2", "web__fetch", {"text": "unrelated words " * 200}, {"url": "https://x.example/"})
    labels = _labels(prints, "bank__transfer", {"iban": "NL90LDRU7451135004"}, "Pay Fjordlicht Studio.")
    assert not [label for label in labels if label.startswith(("named:", "arg:iban"))]
