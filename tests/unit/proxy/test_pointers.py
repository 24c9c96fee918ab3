"""Which results a task points at: identities, references, and the `named:` labels they give."""

from __future__ import annotations

import time

import pytest

from bastion.proxy._pointers import MAX_GROUPS, Identity, identity, read_from, references, stays_within
from bastion.proxy._provenance import Fingerprints, Provenance, TaintSettings

FORUM = "https://forum.islandhop.example/t/2231"
REPLY = "https://forum.islandhop.example/t/2231/reply"
PAGE = {"url": FORUM, "text": f"To answer, post at {REPLY} or verify at https://verify.example/x"}
EMAIL = {
    "sender": "Fjordlicht Studio <billing@fjordlicht-studio.example>",
    "subject": "Invoice 2291",
    "body": "Please pay 640 EUR to NL90 LDRU 7451 1350 04 by Friday, questions to office@fjordlicht-studio.example.",
}
SENDER = [("content[0].text.sender", EMAIL["sender"])]


def _vouched(read: tuple[str, ...], fields: list[tuple[str, str]], task: str) -> frozenset[str] | None:
    return identity(read, fields).vouched(references(task))


# -- references ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        # Proper nouns that do not open a sentence; months, days and orders are not names.
        # Two or three in a row are also joined, as a domain label joins them (fjordlichtstudio.example).
        ("Pay Fjordlicht Studio the 640 EUR for the shoot in June.", {"fjordlicht", "studio", "fjordlichtstudio"}),
        ("Email the organisers. Book a table at Osteria Lume.", {"osteria", "lume", "osterialume"}),
        ("Send the report to Dr. Saskia Lenz-Hoffmann's office.", {"saskia", "lenz", "hoffmann", "saskialenzhoffmann"}),
        # A name opening a sentence is joined with the next, never alone; an order is neither.
        ("Fennick Roofing emailed the invoice. Pay it.", {"roofing", "fennickroofing"}),
        # Orders at the start of a list item, after numbering, or capitalised mid-sentence.
        ("Today:\n- Forward the March invoice\n- Update the onboarding page", set()),
        ("1) Update the page 2) Archive the old one", set()),
        ("Hi, Please check it. Then, Email Lars.", {"lars"}),
        # Locators: a URL's and a bare host's registrable domain, an address, a path.
        (f"Ask on {FORUM} whether it sells out.", {"islandhop.example"}),
        ("Leave a review on stayreviews.example for me.", {"stayreviews.example"}),
        ("Write to legal@tessaly.example about it.", {"legal@tessaly.example", "tessaly.example"}),
        ("The request is in /requests/nda-request.txt, answer it.", {"/requests/nda-request.txt"}),
        ("Pay it from bank.co.uk today.", {"bank.co.uk"}),
        # Shared hosting and webmail: the user's own part, never the provider's.
        ("See https://alice.github.io/notes and mail lars.h@gmail.com.", {"alice.github.io", "lars.h@gmail.com"}),
        ("pay the invoice.", set()),
    ],
)
def test_a_task_references_its_locators_and_proper_nouns(task: str, expected: set[str]) -> None:
    assert references(task) == expected


# -- identities ------------------------------------------------------------------------


def test_a_page_is_identified_by_what_its_call_read_and_vouches_for_that_site() -> None:
    task = f"Ask on {FORUM} whether it sells out."
    assert _vouched(read_from({"url": FORUM}), [], task) == frozenset({"islandhop.example"})
    assert _vouched(read_from({"url": FORUM}), [], "Ask on the forum whether it sells out.") is None


def test_an_email_is_identified_by_its_sender_and_vouches_for_the_senders_domain() -> None:
    vouched = _vouched((), SENDER, "Pay Fjordlicht Studio the 640 EUR.")
    assert vouched == frozenset({"billing@fjordlicht-studio.example", "fjordlicht-studio.example"})


def test_only_the_groups_the_task_points_at_vouch() -> None:
    """The page the user named vouches for its own host, not for the `author` address an
    attacker left on it."""
    fields = [("content[0].text.url", FORUM), ("content[0].text.author", "Mallory <m@evil.example>")]
    assert _vouched(read_from({"url": FORUM}), fields, f"Ask on {FORUM}.") == frozenset({"islandhop.example"})
    # One locator per field: a url field listing a second site does not vouch for it.
    two = [("content[0].text.url", f"{FORUM} https://evil2.example/")]
    assert _vouched((), two, f"Ask on {FORUM}.") == frozenset({"islandhop.example"})


def test_webmail_senders_are_compared_by_address_and_shared_hosts_by_the_users_part() -> None:
    gmail = [("content[0].text.from", "Lars <lars.h@gmail.com>")]
    assert _vouched((), gmail, "Reply to lars.h@gmail.com.") == frozenset({"lars.h@gmail.com"})
    assert _vouched((), [("content[0].text.from", "x <travel.desk@gmail.com>")], "Reply to lars.h@gmail.com.") is None
    pages = [("content[0].text.url", "https://mallory.github.io/a")]
    assert _vouched((), pages, "Read https://alice.github.io/notes and post there.") is None


def test_a_display_name_stuffed_with_names_lends_only_its_first_words() -> None:
    stuffed = "Marta Jonas Petra Lukas Tobias Saskia Kalkbrenner Fjordlicht Harbourline <x@evil.example>"
    found = identity((), [("content[0].text.sender", stuffed)])
    assert _vouched((), [("content[0].text.sender", stuffed)], "Reply to Saskia.") is not None
    assert found.vouched(frozenset({"kalkbrenner", "fjordlicht", "harbourline"})) is None


def test_what_a_call_read_comes_from_locator_keys_only_and_is_kept_small() -> None:
    arguments = {
        "url": "https://x.example/" + "a" * 5000,
        "query": "forum.islandhop.example ferry times",  # a search's words are not what it read
        "passenger": "jonas@edlund-home.example",  # data the call carries
        "headers": {"host": "a.example"},
        "file_path": "/p/1.txt",
    }
    read = read_from(arguments)
    assert read == ("https://x.example/" + "a" * 494, "/p/1.txt")
    assert read_from(["not", "a", "dict"]) == ()
    assert read_from({f"mirror{i}_url": f"https://h{i}.example/" for i in range(20)}) == tuple(
        f"https://h{i}.example/" for i in range(4)
    )


def test_fields_inside_lists_nested_records_and_later_content_blocks_are_no_identity() -> None:
    fields = [
        ("content[0].text.results[0].url", "https://stayreviews.example/casa"),
        ("content[0].text.meta.author", "Stay Reviews <a@stayreviews.example>"),
        ("content[1].text.url", "https://stayreviews.example/casa"),
    ]
    assert identity((), fields) == Identity()


def test_an_identity_is_bounded_however_many_source_fields_a_result_has() -> None:
    fields = [("content[0].text.from", f"x{i}@host{i}.example") for i in range(5000)]
    started = time.process_time()
    found = identity(("https://" + "a." * 10_000 + "example",), fields)
    assert len(found.groups) <= MAX_GROUPS
    assert time.process_time() - started < 2.0  # a bound on work, not a performance target


@pytest.mark.parametrize(
    "text",
    ["a" * 16384, "a." * 8192, "a-" * 8192, "@" * 16384, "Abcd " * 3200, "x@y.example " * 1400, "/a" * 8192],
    ids=["letters", "dots", "hyphens", "ats", "capitals", "addresses", "slashes"],
)
def test_crafted_text_costs_linear_time_everywhere_it_is_read(text: str) -> None:
    """A regex retried at every position of 16 KiB of letters took ~300 ms (quadratic);
    the tokeniser reads each character a bounded number of times."""
    started = time.process_time()
    references(text)
    identity(read_from({"url": text}), [("content[0].text.from", text)])
    stays_within(text.casefold() + ".", frozenset({"y.example"}))
    assert time.process_time() - started < 0.25  # a bound on work (was seconds), not a performance target


# -- where an argument leads -----------------------------------------------------------

ALLOWED = frozenset({"islandhop.example", "edlund-home.example", "jonas@gmail.com"})


@pytest.mark.parametrize(
    "argument",
    [
        REPLY,
        "alerts to jonas@edlund-home.example",
        "NL90LDRU7451135004",  # no destination at all
        "Departure at 08:30, e.g. the catamaran; 3.5 hours",
        "write to jonas@gmail.com",
        "https://islandhop.example./a",  # a trailing dot is the same host
    ],
)
def test_an_argument_that_leads_only_to_vouched_places_stays_within(argument: str) -> None:
    assert stays_within(argument.casefold(), ALLOWED)


@pytest.mark.parametrize(
    "argument",
    [
        "https://verify.example/x",
        f"{REPLY} and https://verify.example/y",
        "https://islandhop.example.evil.example/x",
        "//evil.example/reply",  # scheme-relative
        "evil.example/x?t=1",  # scheme-less
        "https://evil.example/?q=" + "a" * 2100,  # too long to read: fails closed
        f"{REPLY},https://evil.example/b",  # two URLs in one token
        "https://evil.example\\@forum.islandhop.example/",  # a backslash browsers read as a slash
        "http://10.0.0.1/",
        "http://evil/",
        "http://[::1]/",
        "https://\u0435vil.example/",  # a Cyrillic look-alike
        'javascript:fetch("//evil.example/")',
        "mailto:eve@evil.example",
        "send it to other.person@gmail.com",  # webmail: the whole address, not the domain
        "a@b@evil.example",
    ],
)
def test_anything_that_may_lead_elsewhere_fails_closed(argument: str) -> None:
    assert not stays_within(argument.casefold(), ALLOWED)


# -- the labels provenance gives ---------------------------------------------------------


def _labels(prints: Fingerprints, tool: str, arguments: dict[str, str], task: str) -> tuple[str, ...]:
    return Provenance().annotate(prints, tool, arguments, task).labels


def _named(labels: tuple[str, ...]) -> list[str]:
    return [label for label in labels if label.startswith("named:")]


def _fetched(provenance: Provenance | None = None, result: object = PAGE) -> Fingerprints:
    prints = Fingerprints()
    assert (provenance or Provenance()).record(prints, "n1", "web__fetch", result, read_from({"url": FORUM})) > 0
    return prints


def test_data_from_a_result_the_task_points_at_is_labelled_named() -> None:
    labels = _labels(_fetched(), "web__post_form", {"url": REPLY}, f"Ask on {FORUM} whether it sells out.")
    assert "named:url" in labels
    assert "arg:url:untrusted:web__fetch:text:text:1.00" in labels
    # The same call when the task points at no page: untrusted data, not named.
    unnamed = _labels(_fetched(), "web__post_form", {"url": REPLY}, "Ask on the forum whether it sells out.")
    assert any(label.startswith("arg:url:untrusted:") for label in unnamed)
    assert not _named(unnamed)


def test_a_named_page_does_not_vouch_for_a_link_to_another_site() -> None:
    labels = _labels(_fetched(), "web__post_form", {"url": "https://verify.example/x"}, f"Ask on {FORUM} please.")
    assert any(label.startswith("arg:url:untrusted:") for label in labels)
    assert not _named(labels)


def test_a_result_of_several_content_blocks_has_no_identity_of_its_own() -> None:
    hits = {"content": [{"type": "text", "text": f'{{"url": "{FORUM}", "text": "post at {REPLY}"}}'}] * 2}
    prints = Fingerprints()
    Provenance().record(prints, "n1", "web__search", hits, read_from({"query": "islandhop forum"}))
    assert not _named(_labels(prints, "web__post_form", {"url": REPLY}, f"Ask on {FORUM}."))


def test_a_trusted_source_needs_no_vouching_and_gets_no_named_label() -> None:
    provenance = Provenance(lambda: TaintSettings(untrusted_sources=("email__*",)))
    labels = provenance.annotate(_fetched(provenance), "web__post_form", {"url": REPLY}, f"Ask on {FORUM}.").labels
    assert any(label.startswith("arg:url:trusted:web__fetch:") for label in labels), labels
    assert not _named(labels)


def test_an_argument_path_in_a_named_label_is_escaped() -> None:
    prints = Fingerprints()
    Provenance().record(prints, "n1", "email__read", EMAIL)
    labels = _labels(prints, "email__send", {"to:cc": "office@fjordlicht-studio.example"}, "Write to Fjordlicht.")
    assert "named:to%3Acc" in labels


def test_a_path_two_arguments_share_is_never_named() -> None:
    """`{"form.url": …, "form": {"url": …}}` render the same path: a label on it could not
    say which of the two was vouched for."""
    prints = _fetched()
    arguments = {"form.url": REPLY, "form": {"url": "https://verify.example/x"}}
    labels = Provenance().annotate(prints, "web__post_form", arguments, f"Ask on {FORUM}.").labels
    assert not _named(labels)


def test_an_evicted_result_takes_its_identity_with_it() -> None:
    prints = Fingerprints(capacity=60)
    provenance = Provenance()
    provenance.record(prints, "n1", "email__read", EMAIL)
    # A later result pushes the email out: its data, and what it was, are forgotten together.
    # (Distinct words: a page of one phrase repeated has few distinct windows, and pushing
    # out prose alone leaves the email's identifiers, which outlive it.)
    page = {"text": " ".join(f"unrelated{n} words" for n in range(200))}
    provenance.record(prints, "n2", "web__fetch", page, ("https://x.example/",))
    labels = _labels(prints, "email__send", {"to": "office@fjordlicht-studio.example"}, "Write to Fjordlicht.")
    assert not [label for label in labels if label.startswith(("named:", "arg:to"))]


def test_identity_data_counts_against_the_fingerprint_budget() -> None:
    """Kept raw until needed, it is counted at one fingerprint per 100 characters, so
    results heavy with sender fields cannot grow a workflow past its budget."""
    heavy = {f"from{i}": "x" * 250 for i in range(8)} | {"from": "A <a@b.example>", "body": "tiny"}
    light, weighed = Fingerprints(), Fingerprints()
    Provenance().record(light, "n1", "email__read", {"body": "tiny text here"})
    Provenance().record(weighed, "n1", "email__read", {**heavy, "body": "tiny text here"}, ("/a/b.txt",))
    assert len(weighed) >= len(light) + 2
    capped = Fingerprints(capacity=200)
    for n in range(100):
        Provenance().record(capped, f"n{n}", "email__read", {"from": f"P{n} <p{n}@x{n}.example>" + "y" * 240})
    assert len(capped) <= 200


ISSUE = "https://github.com/acme/app/issues/12"


@pytest.mark.parametrize(
    ("link", "named"),
    [
        ("https://github.com/acme/app/pull/3", True),  # the same owner's repository
        ("https://github.com/evil/app/issues/1", False),  # another owner on the same platform
        ("github.com/evil/x", False),
        ("https://docs.google.com/forms/d/evil-form/viewform", False),
        ("https://github.com/acme/../evil/payload/raw/x.sh", False),  # dot segments lead elsewhere
        ("https://github.com/acme/%2e%2e/evil/x", False),
        ("https://discord.com/api/webhooks/9999/tok3n", False),
        ("https://raw.githubusercontent.com/evil/x/main/run.sh", False),
    ],
)
def test_on_a_shared_platform_a_named_page_vouches_for_its_owners_pages_only(link: str, named: bool) -> None:
    """Naming one GitHub issue vouched for every github.com link a comment on it carried
    (an attacker's probe); the owner's path is now part of the site compared."""
    prints = Fingerprints()
    page = {"url": ISSUE, "text": f"Thanks! See {link} for the fix."}
    Provenance().record(prints, "n1", "web__fetch", page, read_from({"url": ISSUE}))
    labels = _labels(prints, "web__post_form", {"url": link}, f"Reply on {ISSUE} with a summary.")
    assert bool(_named(labels)) is named, labels


def test_sites_on_path_tenanted_platforms_keep_the_owner_path() -> None:
    assert stays_within("https://github.com/acme/other", frozenset({"github.com/acme"}))
    assert not stays_within("https://github.com/acmeevil/x", frozenset({"github.com/acme"}))
    assert not stays_within("https://github.com/", frozenset({"github.com/acme"}))
    assert stays_within("https://docs.google.com/document/d/abc/edit", frozenset({"docs.google.com/document/d/abc"}))
    assert stays_within("https://forum.islandhop.example/t/1", frozenset({"islandhop.example"}))


@pytest.mark.parametrize(
    ("named", "link"),
    [
        ("https://storage.googleapis.com/acme-reports/q3.csv", "https://storage.googleapis.com/evil-drop/in"),
        ("https://hooks.slack.com/services/T1/B1/aaa", "https://hooks.slack.com/services/T9/B9/zzz"),
        ("https://acme.s3.amazonaws.com/report.csv", "https://evil.s3.amazonaws.com/drop"),
        ("https://s3.amazonaws.com/acme/report.csv", "https://s3.amazonaws.com/evil/drop"),
    ],
)
def test_storage_and_webhook_platforms_vouch_for_the_named_owner_only(named: str, link: str) -> None:
    sites = frozenset(read_from_sites(named))
    assert not stays_within(link.casefold(), sites)  # arguments are compared case-folded
    assert stays_within(named.casefold(), sites)


def read_from_sites(url: str) -> set[str]:
    """The sites a result read from `url` vouches for."""
    groups = identity((url,), ()).groups
    return {site for _, vouches in groups for site in vouches}


@pytest.mark.parametrize(
    ("vouched_by", "link", "stays"),
    [
        # The owner is read past the segments every tenant's URLs share (a reviewer's probe).
        ("https://github.com/acme/app", "https://api.github.com/repos/acme/app/issues", True),
        ("https://github.com/acme/app", "https://api.github.com/repos/mallory/loot/issues", False),
        ("https://github.com/acme/app", "https://github.com/orgs/mallory/people", False),
        ("https://huggingface.co/acme/model", "https://huggingface.co/datasets/mallory/x", False),
        (
            "https://docs.google.com/forms/d/e/1FAIpQLacme/viewform",
            "https://docs.google.com/forms/d/e/1FAIpQLevil/viewform",
            False,
        ),
        ("https://docs.google.com/document/d/abc/edit", "https://docs.google.com/document/u/0/d/abc/edit", True),
        ("https://docs.google.com/document/d/abc/edit", "https://drive.google.com/open?id=evil", False),
        ("https://www.medium.com/@alice/post", "https://www.medium.com/@mallory/post", False),
        ("https://www.reddit.com/r/bikes/", "https://www.reddit.com/u/mallory", False),
        # A namespace is part of the owner: a subreddit is not the user of the same name.
        ("https://www.reddit.com/r/acme/", "https://www.reddit.com/u/acme", False),
        ("https://www.linkedin.com/company/acme", "https://www.linkedin.com/in/acme", False),
        ("https://pypi.org/project/acme/", "https://pypi.org/user/acme/", False),
        ("https://drive.google.com/drive/folders/1Acme", "https://drive.google.com/drive/folders/1Evil", False),
        ("https://discord.com/channels/111/222", "https://discord.com/channels/999/222", False),
        ("https://github.com/acme/app", "https://github.com/p/acme", False),  # `p` is just another account
        ("https://github.com/acme/app", "https://github.com/orgs/acme/people", True),
        ("https://gitlab.com/api/v4/projects/123", "https://gitlab.com/api/v4/projects/999", False),
        # Platforms where anyone gets a host: one tenant vouches for no other.
        ("https://alice.ghost.io/post", "https://mallory.ghost.io/post", False),
        ("https://a.b.tokyo.jp/x", "https://evil.b2.tokyo.jp/x", False),
        ("https://shop.uk.com/", "https://evil.uk.com/", False),
        ("https://alice.blogspot.co.uk/", "https://mallory.blogspot.co.uk/", False),
    ],
)
def test_a_platform_vouches_for_the_tenant_it_names_only(vouched_by: str, link: str, stays: bool) -> None:
    sites = frozenset(read_from_sites(vouched_by))
    assert stays_within(link.casefold(), sites) is stays, (sites, link)


def test_an_address_on_a_platform_where_anyone_gets_a_path_is_met_by_itself_only() -> None:
    # Its site was read as "" (nowhere), and "" became a reference every such address met.
    refs = references("Write to support@github.com about the outage")
    assert "" not in refs
    assert identity((), [("content[0].text.sender", "billing@linkedin.com")]).vouched(refs) is None
    assert identity((), [("content[0].text.sender", "support@github.com")]).vouched(refs) is not None
