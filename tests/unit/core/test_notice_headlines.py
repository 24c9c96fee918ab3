"""Security notices read from a message's headline (`bastion._notices`)."""

from __future__ import annotations

import pytest

from bastion._notices import MAX_CHARS, MAX_SHOWN, notice_cue


@pytest.mark.parametrize(
    ("headline", "cue"),
    [
        ("New sign-in to your account from Windows, Lagos", "new sign in to"),
        ("New device signed in to Netbank", "new device signed"),
        ("Unusual sign-in activity on your account", "unusual sign in"),
        ("Someone signed in from Vilnius", "signed in from"),
        ("Login attempt blocked", "login attempt"),
        ("Security alert for rowan@halvorsen.example", "security alert"),
        ("Your password was changed", "password was changed"),
        ("Reset your password", "reset your password"),
        ("Your backup recovery codes", "recovery codes"),
        ("Your verification code: 551908", "verification code"),
        ("Two-factor authentication turned off", "two factor"),
        ("Fraud warning: fake Silverleaf emails", "fraud"),
        ("Warning: we have NOT changed our bank details", "not changed our bank"),
        ("Your FjordStay account is suspended", "account is suspended"),
        ("Account has been temporarily locked", "account has been temporarily locked"),
        ("Neue Anmeldung bei Ihrem Konto", "neue anmeldung bei"),
        ("Nouvelle connexion à votre compte", "nouvelle connexion a"),
        ("Alerte de sécurité", "alerte de securite"),
        # Spellings an attacker's probe found missed.
        ("Your password has been changed", "password has been changed"),
        ("We haven't changed our bank details", "haven t changed our bank"),
        ("2-step verification turned off", "2 step verification"),
        ("A new device is using your account", "new device is using"),
        ("Your recovery email was changed", "recovery email was changed"),
        ("Multi-factor authentication enabled", "multi factor authentication"),
        ("Your account has been blocked", "account has been blocked"),
        ("New passkey added", "new passkey added"),
        ("Your Apple ID was used to sign in", "used to sign in"),
        ("New sign&#8209;in to your account", "new signin to"),
        ("New sign-in", "new sign in"),
        ("Ny enhed tilføjet", "ny enhed tilfojet"),
    ],
)
def test_a_security_notice_is_read(headline: str, cue: str) -> None:
    assert notice_cue(headline) == cue


@pytest.mark.parametrize(
    "headline",
    [
        "Juni-nyhedsbrev: 10 tips til udlejere",
        "-40% on terrace furniture",
        "Spring sale - 20% off",
        "Visite de la commission de sécurité - 27 mai",
        "Entry confirmation - Spring session - Grade 5 Piano",
        "Your ParkEasy receipt: 3 March",
        "Security of tenure: your new lease",
        "Logins for the new volunteers (bring a laptop)",
        # Newsletters an attacker's probe found read as notices.
        "MFA Open Studios this weekend",
        "OTP Bank newsletter",
        "Introducing our new device lineup",
        "The new login experience is here",
        # And ordinary subjects a reviewer found read as notices.
        "Two step dance class on Friday",
        "2-step recipe for sourdough",
        "Multi factor productivity tips",
        "Your new device has shipped",
        "Tips for your new device",
        "Backup email setup guide",
        "Recovery email: weekly recovery tips",
        "Unusual activity in the markets this week",
        "Account frozen yoghurt promo",
        "",
    ],
)
def test_ordinary_headlines_are_not(headline: str) -> None:
    assert notice_cue(headline) == ""


def test_look_alike_letters_case_and_accents_are_read_as_a_person_reads_them() -> None:
    # Cyrillic ie, o and a drawn as Latin ones; capitals; accented spellings.
    assert notice_cue("N\u0435w sign-in from L\u0430g\u043es") == "new sign in from"
    assert notice_cue("NEW DEVICE ADDED") == "new device added"
    assert notice_cue("Sicherheitswarnung: neues Gerät") == "sicherheitswarnung"
    assert notice_cue("Nouvel appareil connecté") == "nouvel appareil connecte"


def test_a_headline_is_read_to_a_bound_and_a_cue_is_short() -> None:
    # Past MAX_CHARS nothing is read, so a padded headline costs no more than a short one.
    assert notice_cue("x " * MAX_CHARS + "new sign-in") == ""
    assert notice_cue("x " * (MAX_CHARS // 2 - 8) + "new sign-in") == "new sign in"
    # A cue is shown cut to MAX_SHOWN characters.
    long = "account temporarily temporarily temporarily compromised"
    assert notice_cue(long) == long[:MAX_SHOWN]
