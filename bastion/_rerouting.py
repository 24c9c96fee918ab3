"""Rerouting language: text that says money should now go somewhere else.

Business-email compromise, the injection that costs most on a payment, reads the same in
every language it comes in: the bank details *have changed*, please use our *new account*,
pay the *escrow* / *notary* / *clearing* account *instead*, *split* the payment. An invoice
that only states where to pay says none of it. The proxy's provenance reads each untrusted
result's text for such language once, when it records the result, and labels the
arguments taken from any result of the workflow while one said so (`rerouting:`,
proxy/_provenance.py); the reference scorer then never vouches for an IBAN, however
squarely the task points at the email (verifier/_money.py). A task that itself speaks of
the payee's change ("apply the new bank details from Kuiper's email, I confirmed them by
phone") has been told, and is the user's to ask.

What counts, in English, German, French, Dutch, Spanish and Italian:

- a word of change (changed, updated, amended, revised, new, moved, switched, migrated,
  replaced, different, alternative, another, second, temporary, old, previous, outdated,
  closed, frozen, "no longer", instead, ignore, disregard, neue, geändert, nouveau, changé,
  nieuw, gewijzigd, aangepast, nueva, actualizado, nuovo, aggiornato, …) within NEAR words
  of a word for where money goes (bank, banking, account, IBAN, beneficiary, payee,
  payment or remittance details, SEPA, Konto, Bankverbindung, RIB, bancaire, compte,
  rekening, cuenta, conto, …);
- an intermediary's account: escrow, factoring, Inkasso, Treuhand-/Anderkonto, and a
  notary, clearing, collections or recoveries account;
- "instead" or "rather than" near a word of paying or of where money goes;
- "split" near a payment, amount, sum or transfer.

Read as a person reads it: HTML tags, character entities and markdown link targets are
taken out first (they stood between the words), and Cyrillic and Greek letters drawn as
Latin ones are read as those (bastion/_confusables.py).

Not read: the same said without these words ("kindly remit to the account below" from a
compromised mailbox), other languages, words glued together. Bounded: a text is looked at
only where one of a few anchors starts a word (str.find), at most MAX_ANCHORS places and
WINDOW characters around each; a text with more anchors than that is taken as rerouting
(READ_IN_PART), so that padding cannot hide a cue behind it.
"""

from __future__ import annotations

import html
import itertools
import re
import unicodedata
from collections.abc import Sequence

from bastion._confusables import LATIN_LOOKALIKES

#: Words apart that still count as "near" (either side).
NEAR = 6
#: Characters read either side of an anchor.
WINDOW = 80
#: Anchors (starting a word) looked at in one text: past them it is taken as rerouting.
MAX_ANCHORS = 256
#: Characters of text read.
MAX_CHARS = 64 * 1024
#: Characters of one result's texts read together (`result_cue`).
MAX_RESULT_CHARS = 16 * 1024
#: Characters of a cue shown in a label or a reason.
MAX_SHOWN = 48
#: The cue of a text with more anchors than are read: taken as rerouting.
READ_IN_PART = "(read in part)"

#: Starts of words for where money goes ("banking", "Bankverbindung", "bancaires") ...
_PLACES = (
    "bank", "account", "iban", "beneficiar", "payee", "remittance", "konto", "compte", "coordonn",
    "rekening", "cuenta", "sepa", "banc",
)  # fmt: skip
#: ... and whole words for it ("payment" with "details" beside it: `_cue`).
_PLACE_WORDS = frozenset({"rib", "wire", "swift", "bic", "conto", "conti", "debit"})
#: Words (case-folded, whole) that say the place changed.
_CHANGE = frozenset(
    {
        "changed", "change", "changes", "changing", "updated", "update", "updating", "new", "newly",
        "moved", "moving", "switched", "switching", "migrated", "migrating", "migration", "replaced",
        "replacement", "replacing", "different", "alternative", "alternate", "temporary", "interim",
        "instead", "old", "previous", "former", "closed", "closing", "frozen", "suspended",
        "deprecated", "discontinued", "discontinuing", "retiring", "retired", "redirect", "redirected",
        "transferred", "superseded", "amended", "amend", "amendment", "revised", "revise", "modified",
        "modify", "outdated", "obsolete", "invalid", "wrong", "incorrect", "ignore", "disregard",
        "another", "second", "separate", "subsidiary", "henceforth", "blocked", "altered", "alter",
        "relocated", "relocate",
        "neue", "neues", "neuen", "neuer", "geändert", "geänderte", "geänderten", "änderung",
        "umgestellt", "gewechselt", "alte", "alten", "bisherige", "bisherigen", "fortan", "nouveau",
        "nouvelle", "nouvelles", "nouveaux", "changement", "changé", "changée", "changés", "changées",
        "modifié", "modifiée", "modifiés", "modifiées", "modification", "ancien", "ancienne",
        "désormais", "dorénavant", "nieuw", "nieuwe", "gewijzigd", "gewijzigde", "wijziging",
        "aangepast", "veranderd", "oude", "voortaan", "nueva", "nuevo", "nuevas", "nuevos", "cambio",
        "cambiado", "cambiada", "cambiados", "actualizado", "actualizada", "actualizados",
        "actualizadas", "modificado", "modificada", "modificados", "antigua", "nuova", "nuovo",
        "nuove", "nuovi", "cambiato", "cambiata", "variazione", "aggiornato", "aggiornata",
        "aggiornati", "aggiornate", "modificato", "modificati", "modifiche", "vecchio",
    }
)  # fmt: skip
#: An intermediary's account named by one word (a word starting with one counts): escrow,
#: factoring, debt collection (Inkasso), and German compounds of Konto and Bank.
_INTERMEDIARY_ALONE: tuple[str, ...] = (
    "escrow", "factoring", "treuhand", "anderkonto", "sequest", "inkasso", "forderungskonto",
    "verrechnungskonto", "sammelkonto", "zwischenkonto", "sonderkonto", "kontoänderung",
    "kontowechsel", "bankwechsel", "bankwissel",
)  # fmt: skip
#: An intermediary near a word for where money goes ("our collections partner …, IBAN").
_INTERMEDIARY = frozenset(
    {
        "notary", "notarial", "notar", "notaire", "notaris", "notario", "clearing", "collection",
        "collections", "suspense", "fiduciary", "receivership", "recoveries", "recovery",
    }
)  # fmt: skip
#: An intermediary right before the account word only ("a bank you can trust" is none).
_INTERMEDIARY_ADJACENT = frozenset(
    {"trust", "holding", "settlement", "custody", "custodial", "safeguarding", "safekeeping"}
)
#: Words of paying: with "instead" or "rather than" near them, a payment goes elsewhere.
_PAYING = frozenset(
    {
        "pay", "paid", "paying", "payment", "payments", "transfer", "transfers", "transferred",
        "remit", "send", "sent", "wire", "wired", "deposit", "funds", "money", "amount",
    }
)  # fmt: skip
#: What a split divides.
_SPLIT_OF = frozenset({"payment", "payments", "amount", "sum", "total", "transfer", "transfers", "invoice", "balance"})
#: "payment details", "remittance information": a place when a word of these follows.
_DETAILS = frozenset({"details", "detail", "information", "info", "instructions", "data", "coordinates"})


def _ascii(word: str) -> str:
    return unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode("ascii")


# The word lists as `_plain` reads text: accents dropped ("geändert" is "geandert").
_CHANGE = frozenset(map(_ascii, _CHANGE))
_INTERMEDIARY_ALONE = tuple(map(_ascii, _INTERMEDIARY_ALONE))
_ANCHORS = (
    *_PLACES, *sorted(_PLACE_WORDS), "payment", *_INTERMEDIARY_ALONE, "notar", "clearing",
    "collection", "recover", "instead", "rather", "split",
)  # fmt: skip
#: Second words of the pairs `_changed` reads ("no longer", "any more", "now on").
_PAIR_ENDS = frozenset({"longer", "more", "on"})
#: ASCII characters that are no letter, as spaces (`_cue`).
_BYTE_SEPARATORS = bytes(code if chr(code).isalpha() else 0x20 for code in range(256))
#: What stands between the words a reader sees: HTML tags, character entities, markdown link targets.
#: (One pattern each, so that each starts with a literal the engine scans for.)
#: A tag that starts a block (a space between words); any other, a comment's markers and
#: markdown emphasis stand inside words too (`chan<b></b>ged`, `chan**ged**`: an attacker's
#: probe), so they are taken out with nothing in their place. A comment's text is read (an
#: agent reads it, a person does not see it); character entities are decoded.
_BLOCK_TAG = re.compile(
    r"</?(?:p|div|br|li|ul|ol|tr|td|th|table|h[1-6]|section|article|header|footer|blockquote|pre|hr)\b[^<>]{0,512}>"
)
_MARKUP = (
    ("<", re.compile(r"</?[a-z][^<>]{0,512}>")),
    ("](", re.compile(r"\]\([^()\s]{0,512}\)")),
)
_COMMENT = re.compile(r"<!--.{0,4096}?-->", re.DOTALL)
_EMPHASIS = str.maketrans({"*": None, "~": None, "\u00ad": None})
_LATIN = str.maketrans(LATIN_LOOKALIKES)


def result_cue(texts: Sequence[str], holds_iban: bool) -> str:
    """The rerouting language of one untrusted result, its texts (normalised, in order) read
    together, so that a cue split across its subject and body is one. A result that holds
    an IBAN (`holds_iban`, or the word) is read whole, or taken as rerouting past
    MAX_RESULT_CHARS; any other only when it speaks of a bank ("bank", "konto"), in its first
    MAX_RESULT_CHARS: an email saying the account changed and "the details follow" reroutes
    the payment its next email asks for (a blind pack's attack)."""
    joined = "\n".join(texts)
    iban = holds_iban or "iban" in joined
    if not iban and "bank" not in joined and "konto" not in joined:
        return ""
    if len(joined) > MAX_RESULT_CHARS:
        if iban:
            return READ_IN_PART
        joined = joined[:MAX_RESULT_CHARS]
    return rerouting(joined)


def rerouting(text: str) -> str:
    """The rerouting language (module docstring) `text` holds, as a short phrase around the
    cue (at most MAX_SHOWN characters); "" when none."""
    folded = text[:MAX_CHARS].casefold()
    if "&" in folded:
        folded = html.unescape(folded).casefold()
    if "<" in folded:
        folded = _BLOCK_TAG.sub(" ", folded)
    for mark, markup in _MARKUP:
        if mark in folded:
            folded = markup.sub("" if mark == "<" else " ", folded)
    if "*" in folded or "~" in folded or "\u00ad" in folded:
        folded = folded.translate(_EMPHASIS)
    if not folded.isascii():
        # Read as ASCII: look-alike letters as the Latin ones they pass for, accents dropped
        # however written ("geändert" is "geandert", a combining accent inside "changed" is
        # nothing: an attacker's probe), other scripts' letters dropped. The word lists are
        # kept so too (`_plain`), and ASCII windows read four times faster.
        folded = _plain(folded)
    if "<!--" in text:
        # A comment inside a word ("chan<!-- x -->ged") is nothing to a reader; a comment's
        # text is what an agent reads. Both readings.
        return _read(_COMMENT.sub("", folded)) or _read(folded.replace("<!--", " ").replace("-->", " "))
    return _read(folded)


def _read(folded: str) -> str:
    looked = 0
    for anchor in _ANCHORS:
        at = folded.find(anchor)
        while at >= 0:
            # Only where the anchor starts a word ("rib" in "describe" is no RIB): only those count.
            if at == 0 or not folded[at - 1].isalpha():
                looked += 1
                if looked > MAX_ANCHORS:
                    # Fail closed: padding must not hide a cue behind it (nothing is vouched for).
                    return READ_IN_PART
                cue = _cue(folded, at, anchor)
                if cue:
                    return cue
            at = folded.find(anchor, at + len(anchor))
    return ""


def _cue(folded: str, at: int, anchor: str) -> str:
    start = max(0, at - WINDOW)
    # Words as str.split gives them once every ASCII character that is no letter is a space
    # (a regex's findall cost five times as much, and a page may have a few hundred anchors).
    before = _words(folded[start:at])
    if start > 0 and before and folded[start - 1].isalpha():
        before = before[1:]  # the first word is cut
    after = _words(folded[at : at + WINDOW])
    if at + WINDOW < len(folded) and len(after) > 1 and folded[at + WINDOW].isalpha():
        after = after[:-1]
    if not after:
        return ""
    word, near_before, near_after = after[0], before[-NEAR:], after[1 : NEAR + 1]
    near = (*near_before, *near_after)
    found = ""
    if word.startswith(_INTERMEDIARY_ALONE):
        found = word
    elif anchor in ("instead", "rather"):
        rather_than = anchor == "instead" or (near_after[:1] == ["than"])
        if rather_than and (not _PAYING.isdisjoint(near) or any(_is_place(w) for w in near)):
            found = word
    elif anchor == "split":
        if not _SPLIT_OF.isdisjoint(near_after):
            found = word
    elif word in _INTERMEDIARY or word.startswith("recover"):
        if any(_is_place(w) for w in near):
            found = word
    elif (_is_place(word) or (word in ("payment", "payments") and near_after[:1] and near_after[0] in _DETAILS)) and (
        _changed(near_before, near_after)
        or not _INTERMEDIARY.isdisjoint(near)
        or (near_before[-1:] and near_before[-1] in _INTERMEDIARY_ADJACENT)
    ):
        found = word
    if not found:
        return ""
    phrase = " ".join((*near_before[-3:], word, *near_after[:3]))
    return phrase[:MAX_SHOWN].strip()


def _plain(text: str) -> str:
    """`text` (case-folded) as ASCII: look-alike letters folded, accents dropped, other
    scripts' characters dropped."""
    return _ascii(text.translate(_LATIN))


def _words(window: str) -> list[str]:
    # ASCII (`_plain`): bytes.translate is C-speed; str.translate looks each character up in a dict.
    return window.encode("ascii").translate(_BYTE_SEPARATORS).decode("ascii").split()


def _is_place(word: str) -> bool:
    return word.startswith(_PLACES) or word in _PLACE_WORDS


def _changed(before: Sequence[str], after: Sequence[str]) -> bool:
    words = (*before, *after)
    if not _CHANGE.isdisjoint(words):
        return True
    if _PAIR_ENDS.isdisjoint(words):
        return False
    # "is no longer in use", "not valid any more", "from now on"
    return any(
        (a == "no" and b == "longer") or (a == "any" and b == "more") or (a == "now" and b == "on")
        for a, b in itertools.pairwise(words)
    )
