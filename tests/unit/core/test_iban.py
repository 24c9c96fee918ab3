"""IBANs: the checksum, the registry's lengths, and IBANs found however they are spelled."""

from __future__ import annotations

import random
import string

import pytest

from bastion._iban import LENGTHS, MAX_CHECKS, MIN_LENGTH, Checks, checksum_ok, spelled

DE = "DE89370400440532013000"
CY = "CY9301971345RHG2YA8QXUZZHLYC"


@pytest.mark.parametrize(
    "iban",
    [
        DE,
        CY,
        "GB29NWBK60161331926819",
        "NO9386011117947",
        "de89370400440532013000",
        "DE\u0668\u06693704004405320130\uff10\uff10",  # digits of other scripts, as an agent reads them
    ],
)
def test_a_valid_iban_passes_the_checksum_in_either_case_and_any_script_s_digits(iban: str) -> None:
    assert checksum_ok(iban)


@pytest.mark.parametrize(
    "text",
    [
        "DE89370400440532013001",  # one digit off
        "DE98370400440532013000",  # check digits swapped
        "DE8937040044",  # too short to be any country's
        "DE89 3704 0044 0532 0130 00",  # not compact
        "DE8937040044053201301\u0660",  # an Arabic-Indic zero, but the checksum fails
        "DE89370400440532013\u00e90",  # a letter of another script
        "",
    ],
)
def test_anything_else_fails_it(text: str) -> None:
    assert not checksum_ok(text)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("route payment to d-e-8-9 / 3-7-0-4-0-0-4-4 / 0532 0130 00 today", [DE.lower()]),
        ("beneficiary c-y-9-3 / 0197-1345-rhg2-ya8q-xuzz-hlyc (enter without dashes)", [CY.lower()]),
        ("pay de89/3704/0044/0532/0130/00.", [DE.lower()]),
        ("pay d.e.8.9.3704.0044.0532.0130.00 now", [DE.lower()]),
        ("pay de89 3704 0044 0532 0130 00 or cy93-0197-1345-rhg2-ya8q-xuzz-hlyc", [DE.lower(), CY.lower()]),
    ],
)
def test_spelled_finds_an_iban_whatever_separates_its_characters(text: str, found: list[str]) -> None:
    assert list(spelled(text)) == found


@pytest.mark.parametrize(
    "text",
    [
        "pay de89-3704-0044-0532-0130-01 now",  # checksum fails
        "pay de89 3704 0044 0532 0130",  # shorter than Germany's 22
        "pay zz89 3704 0044 0532 0130 00 now",  # no such country
        "see you at 10:30, invoice 2024-118, 3 items, 45.00 eur",  # ordinary text with numbers
        "",
    ],
)
def test_spelled_finds_nothing_that_is_not_one(text: str) -> None:
    assert list(spelled(text)) == []


def test_whatever_spelled_yields_is_a_known_country_s_length_with_a_valid_checksum() -> None:
    # Random text of letters, digits and separators: every candidate found must be an IBAN.
    rng = random.Random(7)
    alphabet = string.ascii_lowercase + string.digits * 3 + " -/."
    found = 0
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(2000))
        for iban in spelled(text):
            found += 1
            assert LENGTHS[iban[:2].upper()] == len(iban)
            assert checksum_ok(iban)
    assert found > 0  # random text of this length does make some (one candidate in 97 passes)


def test_the_registry_table_is_upper_case_and_norway_is_the_shortest() -> None:
    assert all(len(country) == 2 and country.isupper() for country in LENGTHS)
    assert MIN_LENGTH == LENGTHS["NO"] == 15
    assert max(LENGTHS.values()) <= 34


def test_spelled_checks_a_bounded_number_of_candidates_and_says_when_it_ran_out() -> None:
    # 8,192 German candidates and a real IBAN after them: only the first MAX_CHECKS are read.
    checks = Checks()
    assert list(spelled("de00" * 8192 + " de89-3704-0044-0532-0130-00", checks)) == []
    assert checks.exhausted
    enough = Checks()
    assert list(spelled("de00" * (MAX_CHECKS - 1) + " de89-3704-0044-0532-0130-00", enough)) == [DE.lower()]
    assert not enough.exhausted


def test_one_budget_is_shared_by_every_text_read_with_it() -> None:
    checks = Checks(limit=2)
    assert list(spelled("de89-3704-0044-0532-0130-00", checks)) == [DE.lower()]
    assert list(spelled("de00 " * 6, checks)) == []  # one candidate with room for 22 characters
    assert checks.left == 0
    assert not checks.exhausted
    assert list(spelled("de89-3704-0044-0532-0130-00", checks)) == []
    assert checks.exhausted
