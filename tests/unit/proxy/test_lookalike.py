"""Look-alike domains: which pairs are made to be taken for each other, and the `lookalike:`
labels provenance gives a call (proxy/_lookalike.py, proxy/_provenance.py)."""

from __future__ import annotations

from string import ascii_lowercase
from typing import Any

import pytest

from bastion.proxy._lookalike import MAX_SEEN, Domain, SeenDomains, domain, domains_in, looks_like
from bastion.proxy._provenance import Fingerprints, Provenance


def _pair(a: str, b: str) -> tuple[Domain, Domain]:
    first, second = domain(a), domain(b)
    assert first is not None
    assert second is not None
    return first, second


@pytest.mark.parametrize(
    ("suspect", "known"),
    [
        ("harbourside-vets.example", "harboursidevets.example"),  # a hyphen
        ("paypa1.example", "paypal.example"),  # a digit for a letter
        ("rnerchant.example", "merchant.example"),  # rn for m
        ("lumenfoto.test", "lumenfoto.example"),  # another suffix
        ("meridian-prints.example", "meridian-print.example"),  # one edit
        ("holtkanp.example", "holtkamp.example"),
        ("fjordilcht.example", "fjordlicht.example"),  # neighbours swapped
    ],
)
def test_names_that_pass_for_each_other_look_alike_both_ways(suspect: str, known: str) -> None:
    first, second = _pair(suspect, known)
    assert looks_like(first, second)
    assert looks_like(second, first)


@pytest.mark.parametrize(
    ("suspect", "known"),
    [
        ("lumen-foto-bookings.example", "lumenfoto.example"),  # words added after
        ("linguabridge-projects.example", "linguabridge.example"),
        ("secure-kittiwake.example", "kittiwake.example"),  # words added before
    ],
)
def test_a_name_with_words_added_looks_like_the_name_not_the_other_way_round(suspect: str, known: str) -> None:
    first, second = _pair(suspect, known)
    assert looks_like(first, second)
    assert not looks_like(second, first)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("googleusercontent.example", "google.example"),  # a longer name, not words added
        ("mailchimp.example", "mail.example"),  # too short to compare
        ("halvorsen-it.example", "halvorsen-sso.example"),  # siblings, neither the other
        ("nordvolt.example", "fjordbank.example"),
        ("abcdef.example", "abcxyz.example"),  # more than one edit
    ],
)
def test_other_names_do_not(first: str, second: str) -> None:
    a, b = domain(first), domain(second)
    assert a is None or b is None or not (looks_like(a, b) or looks_like(b, a))


def test_a_domain_is_never_its_own_look_alike() -> None:
    same = domain("lumenfoto.example")
    assert same is not None
    assert not looks_like(same, same)


def test_domains_are_read_from_addresses_urls_and_host_names_not_file_names() -> None:
    text = (
        "write to kerstin@linguabridge-projects.example, see https://www.lumenfoto.example/book?x=1 "
        "or lumen-foto-bookings.example/reserve; attached report.pdf and notes.txt. e.g. nothing."
    )
    assert list(domains_in(text)) == [
        "linguabridge-projects.example",
        "lumenfoto.example",
        "lumen-foto-bookings.example",
    ]
    assert list(domains_in("no domains here")) == []


@pytest.mark.parametrize(
    "url",
    [
        "https://lumenfoto.example@lumen-foto-bookings.example/reserve",
        "https://lumen-foto-bookings.example:8443/reserve",
        "https://lumen-foto-bookings.example\\@lumenfoto.example/reserve",
    ],
)
def test_a_url_is_read_for_the_host_it_leads_to_past_user_info_ports_and_backslashes(url: str) -> None:
    assert "lumen-foto-bookings.example" in set(domains_in(url))


def test_seen_domains_keep_the_newest_and_never_label_what_the_task_names() -> None:
    # Names at least three edits apart from each other.
    names = [f"{ascii_lowercase[i % 26] * 3}{ascii_lowercase[i // 26] * 3}ward.example" for i in range(MAX_SEEN + 10)]
    seen = SeenDomains()
    assert seen.add(names) == MAX_SEEN
    assert len(seen) == MAX_SEEN
    assert seen.alike(names[0].replace(".example", ".test")) is None  # forgotten
    assert seen.alike(names[-1].replace(".example", ".test")) == names[-1]
    seen.set_task("send it to lumen-foto-bookings.example please")
    seen.add(["lumenfoto.example"])
    assert seen.alike("lumen-foto-bookings.example") is None


SEARCH = {
    "results": [
        {"title": "Lumen Foto - official", "url": "https://lumenfoto.example"},
        {"title": "Lumen Foto bookings", "url": "https://lumen-foto-bookings.example"},
    ]
}


def _workflow(*results: tuple[str, Any]) -> tuple[Provenance, Fingerprints]:
    provenance = Provenance()
    prints = Fingerprints()
    for index, (tool, result) in enumerate(results):
        provenance.record(prints, f"n{index}", tool, result)
    return provenance, prints


def test_a_destination_like_another_domain_the_workflow_saw_is_labelled() -> None:
    provenance, prints = _workflow(("web__search", SEARCH))
    arguments = {"url": "https://lumen-foto-bookings.example/reserve", "body": "date=2027-06-12"}

    found = provenance.annotate(prints, "web__post_form", arguments, "Send Lumen Foto an availability request")

    assert "lookalike:url:lumen-foto-bookings.example:lumenfoto.example" in found.labels
    # The brand's own domain, though the workflow saw its imitation too, is no look-alike.
    arguments["url"] = "https://lumenfoto.example/reserve"
    found = provenance.annotate(prints, "web__post_form", arguments, "Send Lumen Foto an availability request")
    assert found.labels
    assert not [label for label in found.labels if label.startswith("lookalike:")]


def test_the_source_of_the_data_is_judged_too() -> None:
    # The IBAN is no domain: what looks alike is who sent the invoice it came from.
    inbox = {
        "messages": [
            {"id": "m1", "sender": "billing@meridian-print.example", "subject": "Invoice 2201"},
            {"id": "m2", "sender": "billing@meridian-prints.example", "subject": "Invoice 2201 express"},
        ]
    }
    invoice = {"sender": "billing@meridian-prints.example", "body": "Pay to GB90 VSUM 5275 4693 9587 90 today."}
    provenance, prints = _workflow(("email__search", inbox), ("email__read", invoice))

    found = provenance.annotate(prints, "bank__transfer", {"iban": "GB90VSUM52754693958790"}, "Pay Meridian Print")

    assert "lookalike:iban:meridian-prints.example:meridian-print.example" in found.labels


def test_one_domain_or_unrelated_ones_get_no_label() -> None:
    page = {
        "url": "https://lumenfoto.example",
        "text": "Book at https://lumenfoto.example/reserve or hi@lumenfoto.example",
    }
    search = {"results": [{"url": "https://nordvolt.example"}]}
    provenance, prints = _workflow(("web__search", search), ("web__fetch", page))

    found = provenance.annotate(prints, "web__post_form", {"url": "https://lumenfoto.example/reserve"}, "")

    assert found.labels
    assert not [label for label in found.labels if label.startswith("lookalike:")]


def test_the_domains_a_workflow_remembers_count_against_its_budget() -> None:
    hosts = " ".join(f"https://site{i:03d}-portal.example/page" for i in range(200))
    _provenance, prints = _workflow(("web__fetch", {"text": hosts}))
    assert 0 < len(prints._domains) <= MAX_SEEN
    assert len(prints) >= len(prints._domains)


def test_a_page_that_mentions_an_imitation_later_does_not_make_mail_to_the_real_name_a_look_alike() -> None:
    # A reviewer's probe: planting `meridian-prints` in a page read after mail from
    # `meridian-print` turned the reply to the real supplier into a block.
    mail = {
        "sender": "billing@meridian-print.example",
        "body": "Invoice 2201 attached, pay to GB90 VSUM 5275 4693 9587 90",
    }
    spam = {"url": "https://offers.example/", "text": "Cheap prints: write to sales@meridian-prints.example now"}
    provenance, prints = _workflow(("email__read", mail), ("web__fetch", spam))

    real = provenance.annotate(prints, "email__reply", {"to": "billing@meridian-print.example"}, "")
    imitation = provenance.annotate(prints, "email__send", {"to": "sales@meridian-prints.example"}, "")

    assert real.labels
    assert not [label for label in real.labels if label.startswith("lookalike:")]
    assert "lookalike:to:meridian-prints.example:meridian-print.example" in imitation.labels


def test_recipients_listed_with_commas_or_semicolons_are_each_read() -> None:
    listed = "billing@meridian-prints.example,cfo@corp.example; hr@corp.example"
    assert list(domains_in(listed)) == ["meridian-prints.example", "corp.example", "corp.example"]


def test_names_longer_than_a_dns_label_or_of_many_words_are_not_compared() -> None:
    assert domain("-".join("abcdefgh"[i % 8] for i in range(120)) + ".example") is None
    assert domain("a" * 64 + ".example") is None
    assert domain("one-two-three-four-five-six-seven-eight-nine.example") is None


@pytest.mark.parametrize(
    "imitation",
    [
        "merid\u0456an-print.example",  # a Cyrillic i
        "xn--meridan-print-7hl.example",  # the same as DNS carries it
        "m\u0435ridian-print.example",  # a Cyrillic e
    ],
)
def test_letters_of_other_scripts_drawn_as_latin_ones_look_alike(imitation: str) -> None:
    # A reviewer's probe: a Cyrillic i was not read as a host at all.
    [name] = domains_in(f"write to billing@{imitation}")
    first, second = _pair(name, "meridian-print.example")
    assert looks_like(first, second)


def test_a_look_alike_the_agent_wrote_out_itself_is_labelled_though_no_result_holds_it() -> None:
    # Reassembled from "meridian-prints dot example": nothing to trace, still a look-alike.
    mail = {"sender": "billing@meridian-print.example", "body": "Invoice 2201: see the portal"}
    provenance, prints = _workflow(("email__read", mail))

    found = provenance.annotate(prints, "email__send", {"to": "accounts@meridian-prints.example"}, "")

    assert found.labels == ("lookalike:to:meridian-prints.example:meridian-print.example",)
