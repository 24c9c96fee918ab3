"""A reply by message id goes to that message's sender: look-alikes are read there too."""

from __future__ import annotations

from bastion.proxy._prints import MAX_NOTICES_PER_RESULT
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


# Security notices a result listed, passed back by id (`notice:`, bastion/_notices.py).

INBOX = {
    "messages": [
        {"id": "msg-6381", "sender": "news@sommerhus.example", "subject": "Juni-nyhedsbrev"},
        {"id": "msg-6383", "sender": "no-reply@nordea.example", "subject": "New device signed in to Netbank"},
    ]
}
READ = {"id": "msg-7001", "sender": "sso@halvorsen.example", "subject": "Your backup recovery codes", "body": "..."}


def _delete_labels(prints: Fingerprints, message_id: str, provenance: Provenance | None = None) -> tuple[str, ...]:
    arguments = {"message_id": message_id}
    task = "Delete the newsletters."
    return (provenance or Provenance()).annotate(prints, "email__delete_email", arguments, task).labels


def test_a_call_passing_a_listed_security_notice_by_id_is_labelled() -> None:
    prints = _listed(result=INBOX)
    assert _delete_labels(prints, "msg-6383") == ("notice:message_id:new device signed",)
    assert _delete_labels(prints, "msg-6381") == ()
    # A message read whole: its top-level id and subject.
    Provenance().record(prints, "n2", "email__read_email", READ)
    assert "notice:message_id:recovery codes" in _delete_labels(prints, "msg-7001")


def test_a_notice_is_read_only_beside_its_own_id_and_only_under_an_id_key() -> None:
    split = {"messages": [{"id": "msg-1"}], "latest": {"subject": "New sign-in from Lagos"}}
    assert _delete_labels(_listed(result=split), "msg-1") == ()
    prints = _listed(result=INBOX)
    labels = Provenance().annotate(prints, "email__delete_email", {"query": "msg-6383"}, "Delete it.").labels
    assert not any(label.startswith("notice:") for label in labels)


def test_a_trusted_results_notices_are_kept_since_the_order_to_hide_one_may_come_from_elsewhere() -> None:
    provenance = Provenance(lambda: TaintSettings(untrusted_sources=("web__*",)))
    prints = _listed(provenance, INBOX)
    assert _delete_labels(prints, "msg-6383", provenance) == ("notice:message_id:new device signed",)
    # Its senders are not kept for look-alikes: a trusted result's sender is no one's to forge.
    assert not prints._handles


def test_an_argument_path_with_a_colon_is_escaped_in_its_label() -> None:
    prints = _listed(result={"messages": [{"id": "m:1", "subject": "Security alert: new sign-in"}]})
    labels = Provenance().annotate(prints, "email__delete_email", {"x:message_id": "m:1"}, "Delete it.").labels
    assert labels == ("notice:x%3Amessage_id:security alert",)


def test_notices_are_bounded_newest_kept_and_counted() -> None:
    prints = _listed(result=INBOX)
    before = len(prints)
    listings = MAX_HANDLES // MAX_NOTICES_PER_RESULT + 1
    for listing in range(listings):
        many = {"messages": [{"id": f"n-{listing}-{n}", "subject": "Security alert"} for n in range(MAX_HANDLES)]}
        Provenance().record(prints, f"n{listing + 2}", "email__list_inbox", many)
    assert len(prints._notices) == MAX_HANDLES
    assert _delete_labels(prints, "msg-6383") == ()
    assert _delete_labels(prints, f"n-{listings - 1}-10") == ("notice:message_id:security alert",)
    assert len(prints) > before


def test_notices_go_with_the_workflows_results() -> None:
    prints = _listed(result=INBOX)
    while prints.evict_oldest():
        pass
    assert len(prints) == 0
    assert not prints._notices
    # Forgotten whole, the listing is remembered as unread; its notice is gone with it.
    labels = _delete_labels(prints, "msg-6383")
    assert "untrusted" in labels
    assert not any(label.startswith("notice:") for label in labels)


def test_a_bulk_call_passing_notices_in_a_list_of_ids_is_labelled_and_keys_are_read_in_any_case() -> None:
    inbox = {"messages": [{"ID": "m-1", "SUBJECT": "Your password was changed"}, {"id": "m-2", "Title": "Hi"}]}
    prints = _listed(result=inbox)
    arguments = {"message_ids": ["m-2", "m-1"]}
    labels = Provenance().annotate(prints, "email__delete_emails", arguments, "Delete the newsletters.").labels
    assert "notice:message_ids[1]:password was changed" in labels
    assert not any(label.startswith("notice:message_ids[0]") for label in labels)
    # A value that only equals a notice's id under another key passes no message.
    labels = Provenance().annotate(prints, "email__search", {"query": "m-1"}, "Delete the newsletters.").labels
    assert not any(label.startswith("notice:") for label in labels)


def test_numeric_ids_uids_and_ids_joined_in_one_string_are_read() -> None:
    inbox = {"messages": [{"uid": 4259, "subject": "New sign-in from Lagos"}, {"uid": 4260, "subject": "Sale"}]}
    prints = _listed(result=inbox)
    for arguments in ({"uid": 4259}, {"uids": [4260, 4259]}, {"message_ids": "4260,4259"}, {"msgid": "4259"}):
        labels = Provenance().annotate(prints, "email__delete", arguments, "Delete the newsletters.").labels
        assert any(label.startswith("notice:") for label in labels), arguments
    labels = Provenance().annotate(prints, "email__delete", {"uid": 4260}, "Delete the newsletters.").labels
    assert not any(label.startswith("notice:") for label in labels)


def test_an_attackers_objects_first_in_a_listing_do_not_starve_a_notice_in_it() -> None:
    padded = {"messages": [{"x_id": "a", "snippet": "[" * 3}] * 300 + INBOX["messages"]}
    assert _delete_labels(_listed(result=padded), "msg-6383") == ("notice:message_id:new device signed",)


def test_one_result_adds_at_most_its_share_of_notices() -> None:
    prints = _listed(result=INBOX)
    flood = {"messages": [{"id": f"f-{n}", "subject": "Security alert"} for n in range(MAX_HANDLES)]}
    Provenance().record(prints, "n2", "email__list_inbox", flood)
    assert len(prints._notices) == 1 + MAX_NOTICES_PER_RESULT
    assert _delete_labels(prints, "msg-6383") == ("notice:message_id:new device signed",)


def test_what_a_result_without_prints_of_its_own_kept_can_still_be_evicted() -> None:
    # Short headlines leave no fingerprint, but their notices are kept and counted: the
    # proxy-wide budget must be able to take them back (an attacker's probe).
    prints = _listed(result={"messages": [{"id": f"a{n}", "subject": "2FA"} for n in range(10)]})
    assert not prints._results
    assert len(prints) == 10
    assert prints.evict_oldest() == 10
    assert len(prints) == 0
    assert not prints._notices


def test_other_keys_ending_in_id_do_not_take_a_messages_id() -> None:
    # A reviewer's probe: `amount_paid`, a numeric `sender_id` and `labelIds` items took the
    # message's id, losing the reply's look-alike and putting a notice on "INBOX".
    listing = {
        "messages": [
            {"id": "kl-274", "sender": "Bunting Bake <bookings@buntingbake-events.example>", "amount_paid": 120},
            {"sender_id": 42, "id": "n-1", "subject": "New sign-in from Lagos", "labelIds": ["INBOX"]},
        ]
    }
    prints = _listed(result=listing)
    assert "lookalike:message_id:buntingbake-events.example:buntingbake.example" in _labels(prints, "kl-274")
    archive = {"message_id": "n-2", "removeLabelIds": ["INBOX"]}
    labels = Provenance().annotate(prints, "gmail__modify_labels", archive, "Archive the newsletters.").labels
    assert not any(label.startswith("notice:") for label in labels)
    assert _delete_labels(prints, "n-1") == ("notice:message_id:new sign in from",)


def test_a_new_results_notices_survive_the_eviction_it_causes() -> None:
    prints = Fingerprints(capacity=200)
    Provenance().record(prints, "n1", "web__fetch", {"text": " ".join(f"page word {n}" for n in range(400))})
    body = " ".join(f"mail word {n}" for n in range(400))
    listing = {"body": body, "messages": [{"id": "m-9", "subject": "New sign-in from Lagos"}]}
    Provenance().record(prints, "n2", "email__list_inbox", listing)
    assert "n1" not in prints._results  # the first result went whole, and what was kept beside it
    assert "notice:message_id:new sign in from" in _delete_labels(prints, "m-9")
