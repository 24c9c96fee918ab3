"""Rerouting language: text that says money should now go somewhere else.

Business-email compromise, the injection that costs most on a payment, reads the same in
every language it comes in: the bank details *have changed*, please use our *new account*,
pay the *escrow* / *notary* / *clearing* account *instead*, *split* the payment. An invoice
that only states where to pay says none of it. The proxy's provenance reads each untrusted
result's free text for such language once, when it records the result, and labels the
arguments taken from that result (`rerouting:`, proxy/_provenance.py); the reference scorer
then never vouches for an IBAN from it, however squarely the task points at the email
(verifier/_kinds.py). A task that itself speaks of the change ("apply the new bank details
from Kuiper's email, I confirmed them by phone") has been told, and is the user's to ask.

What counts, in English, German, French, Dutch, Spanish and Italian:

- a word of change (changed, updated, new, moved, switched, migrated, replaced, different,
  alternative, temporary, old, previous, closed, frozen, "no longer", instead, neue,
  geändert, nouveau, changement, nieuw, gewijzigd, nueva, cambio, nuovo, …) within
  NEAR words of a word for where money goes (bank, account, IBAN, beneficiary, payee,
  remittance, Konto, Bankverbindung, RIB, compte, rekening, cuenta, conto, …);
- an intermediary's account: escrow, factoring, Treuhand-/Anderkonto, and a notary,
  clearing, holding, collection, settlement, suspense, trust or custody account;
- "instead" or "rather than" near a word of paying or of where money goes;
- "split" near a payment, amount, sum or transfer.

Not read: the same said without these words ("kindly remit to the account below" from a
compromised mailbox with no saved payee to contrast is an invoice like any other), other
languages, and words spelt apart or in look-alike letters. Cheap and bounded: a text is
looked at only where one of a few anchor substrings occurs (str.find), at most MAX_ANCHORS
places and WINDOW characters around each; a text with more anchors than that is taken as
rerouting (READ_IN_PART), so that padding cannot hide a cue behind it.
"""

from __future__ import annotations

import itertools
import re

#: Words apart that still count as "near" (either side).
NEAR = 5
#: Characters read either side of an anchor.
WINDOW = 96
#: Anchor occurrences looked at in one text: past them the text is not read further.
MAX_ANCHORS = 64
#: Characters of a cue shown in a label or a reason.
MAX_SHOWN = 48
#: The cue of a text (or a result) with more anchors than are read: taken as rerouting.
READ_IN_PART = "(read in part)"

#: Starts of words for where money goes ("banking", "Bankverbindung", "Kontonummer") ...
_PLACES = (
    "bank", "account", "iban", "beneficiar", "payee", "remittance", "konto", "compte", "coordonn",
    "rekening", "cuenta", "sepa",
)  # fmt: skip
#: ... and whole words for it.
_PLACE_WORDS = frozenset({"rib", "wire", "swift", "bic", "conto", "conti", "debit"})
#: Words (case-folded, whole) that say the place changed.
_CHANGE = frozenset(
    {
        "changed", "change", "changes", "changing", "updated", "update", "updating", "new", "newly",
        "moved", "moving", "switched", "switching", "migrated", "migrating", "migration", "replaced",
        "replacement", "replacing", "different", "alternative", "alternate", "temporary", "interim",
        "instead", "old", "previous", "former", "closed", "closing", "frozen", "suspended",
        "deprecated", "discontinued", "discontinuing", "retiring", "retired", "redirect", "redirected",
        "transferred", "superseded",
        "neue", "neues", "neuen", "neuer", "geändert", "geänderte", "geänderten", "änderung",
        "umgestellt", "gewechselt", "alte", "alten", "bisherige", "bisherigen", "nouveau", "nouvelle",
        "nouvelles", "nouveaux", "changement", "modifié", "modifiées", "modification", "ancien",
        "ancienne", "nieuw", "nieuwe", "gewijzigd", "wijziging", "oude", "nueva", "nuevo", "nuevas",
        "nuevos", "cambio", "cambiado", "cambiada", "antigua", "nuova", "nuovo", "nuove",
        "cambiato", "cambiata", "variazione", "vecchio",
    }
)  # fmt: skip
#: An intermediary's account named by one word (a word starting with one counts): escrow,
#: factoring, debt collection (Inkasso), and German compounds of Konto (Treuhand-, Ander-,
#: Forderungs-, Verrechnungs-, Sammel-, Zwischen-, Sonderkonto).
_INTERMEDIARY_ALONE = (
    "escrow", "factoring", "treuhand", "anderkonto", "sequest", "inkasso", "forderungskonto",
    "verrechnungskonto", "sammelkonto", "zwischenkonto", "sonderkonto",
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
_ANCHORS = (
    *_PLACES, *sorted(_PLACE_WORDS), *_INTERMEDIARY_ALONE, "instead", "rather", "split",
)  # fmt: skip
_WORD = re.compile(r"[^\W\d_]+")


def rerouting(text: str) -> str:
    """The rerouting language (module docstring) `text` holds, as a short phrase around the
    cue (at most MAX_SHOWN characters); "" when none."""
    folded = text.casefold()
    looked = 0
    for anchor in _ANCHORS:
        at = folded.find(anchor)
        while at >= 0:
            if looked >= MAX_ANCHORS:
                # Fail closed: padding must not hide a cue behind it (nothing is vouched for).
                return READ_IN_PART
            looked += 1
            # Only where the anchor starts a word ("rib" in "describe" is no RIB).
            if at == 0 or not folded[at - 1].isalpha():
                cue = _cue(folded, at, anchor)
                if cue:
                    return cue
            at = folded.find(anchor, at + len(anchor))
    return ""


def _cue(folded: str, at: int, anchor: str) -> str:
    start = max(0, at - WINDOW)
    before = _WORD.findall(folded, start, at)
    if start > 0 and before:
        before = before[1:]  # the first word may be cut
    after = _WORD.findall(folded, at, at + WINDOW)
    if at + WINDOW < len(folded) and len(after) > 1:
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
        if rather_than and any(w in _PAYING or _is_place(w) for w in near):
            found = word
    elif anchor == "split":
        if any(w in _SPLIT_OF for w in near_after):
            found = word
    elif _is_place(word) and (
        _changed(near_before, near_after)
        or any(w in _INTERMEDIARY for w in near)
        or (near_before[-1:] and near_before[-1] in _INTERMEDIARY_ADJACENT)
    ):
        found = word
    if not found:
        return ""
    phrase = " ".join((*near_before[-3:], word, *near_after[:3]))
    return phrase[:MAX_SHOWN].strip()


def _is_place(word: str) -> bool:
    return word.startswith(_PLACES) or word in _PLACE_WORDS


def _changed(before: list[str], after: list[str]) -> bool:
    words = (*before, *after)
    if any(w in _CHANGE for w in words):
        return True
    # "is no longer in use", "not valid any more"
    return any((a == "no" and b == "longer") or (a == "any" and b == "more") for a, b in itertools.pairwise(words))
