"""The action verbs of English tasks, shared by the verifier, which reads what a task asks
for (verifier/_intent.py), and the proxy, which must not read a capitalised order ("Update
the page", "- Forward the invoice") as a proper noun (proxy/_pointers.py)."""

from __future__ import annotations

#: Verbs that, opening a clause of the task, ask for an action that changes something.
ACTION_VERBS = frozenset(
    {
        "accept", "act", "add", "answer", "apply", "approve", "archive", "arrange", "ask", "assign",
        "attach", "back", "block", "book", "buy", "call", "cancel", "carry", "change", "claim",
        "clean", "clear", "complete", "confirm", "contact", "copy", "create", "deal", "decline",
        "dedupe", "delete", "deposit", "discard", "do", "draft", "drop", "edit", "email", "e-mail", "empty",
        "enrol", "enroll", "erase", "execute", "extend", "file", "fill", "fix", "follow", "forward",
        "free", "give", "grant", "handle", "hold", "inform", "invite", "leave", "let", "lodge", "log", "mail",
        "make", "mark", "message", "move", "notify", "order", "organise", "organize", "pay",
        "perform", "ping", "place", "post", "process", "prune", "publish", "purchase", "purge", "put",
        "record", "refund", "register", "reimburse", "reject", "remind", "remove", "rename",
        "renew", "replace", "reply", "request", "reschedule", "reserve", "respond", "restore", "return", "rid",
        "rsvp", "run", "save", "schedule", "send", "set", "settle", "share", "sign", "sort",
        "store", "submit", "subscribe", "take", "tell", "text", "tidy", "top", "transfer",
        "translate", "trash", "unsubscribe", "update", "upload", "wipe", "wire", "withdraw", "write",
    }
)  # fmt: skip
