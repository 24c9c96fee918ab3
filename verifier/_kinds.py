"""Whether a task asks for an action of a sink's kind: paying, messaging, booking, writing, sharing.

The proxy labels an argument `named:` when its data came from a result the task points at
(proxy/_pointers.py), and the taint signal then weighs that data less: the user asked the
agent to act on that result. But pointing at a result is not asking for every act it
suggests. "Translate /letters/serra-obras-2.txt" points at the letter and asks for a
translation; a `share_file` that follows is not what the user pointed at the letter for.
So the discount holds only when the task asks for an action of the sink's kind.

A sink's kinds come from the verbs of its tool name (`bank__transfer` pays,
`web__post_form` books or messages, `calendar__create_event` writes or schedules); the
task's from the action verbs of its imperative clauses (`_intent.asked`). A task that
delegates ("do the first item of my checklist", "handle what Petra asked") or states a
need without a verb asks for any kind. A tool whose name says no kind of act is vouched
for by no task: what it does is not known.

Moving money is the exception (`vouches`): a sink that pays or changes where money goes
(its name holds a verb or noun of MONEY_WORDS: transfer, pay, payout, send_money, payee,
checkout, …) has its taint lowered for pointing only when the caller has checked the
payment on stricter terms (`_money.py`, `reference/0.11`; never before). Business-email
compromise is exactly the email of the supplier the user names, from a look-alike or a
hijacked mailbox, saying the bank details have changed; a payment cannot be called back.
"""

from __future__ import annotations

from ._intent import DELEGATING_VERBS, STATED_NEED, Asked, tool_verbs

#: Task verbs asking for each kind of act.
_TASK_VERBS: dict[str, frozenset[str]] = {
    "pay": frozenset(
        {
            "pay", "transfer", "wire", "settle", "refund", "reimburse", "deposit", "return", "withdraw",
            "top", "buy", "purchase", "order", "set", "schedule", "renew",
        }
    ),
    "message": frozenset(
        {
            "send", "email", "e-mail", "mail", "reply", "respond", "answer", "forward", "message",
            "contact", "ask", "invite", "notify", "inform", "tell", "text", "ping", "remind",
            "confirm", "decline", "accept", "rsvp", "request", "share", "post",
        }
    ),
    "book": frozenset(
        {
            "book", "reserve", "buy", "purchase", "order", "register", "enrol", "enroll", "sign",
            "apply", "rsvp", "submit", "file", "claim", "lodge", "fill", "request", "subscribe",
            "unsubscribe", "cancel", "leave", "post", "ask", "arrange", "set", "renew", "extend",
            "confirm", "publish", "answer", "reply", "pay",
        }
    ),
    "write": frozenset(
        {
            "write", "save", "update", "edit", "fix", "create", "draft", "make", "translate", "add",
            "change", "record", "store", "copy", "replace", "rename", "move", "sort", "organise",
            "organize", "archive", "back", "mark", "set", "fill", "put", "log", "attach",
        }
    ),
    "share": frozenset({"share", "grant", "give", "invite", "publish", "send", "forward", "upload"}),
    "schedule": frozenset(
        {
            "schedule", "arrange", "book", "put", "add", "create", "set", "invite", "reschedule",
            "accept", "block", "hold", "make",
        }
    ),
}  # fmt: skip
#: Tool-name verbs and the kinds of act they are.
_TOOL_KINDS: dict[str, tuple[str, ...]] = {
    "transfer": ("pay",), "pay": ("pay",), "wire": ("pay",), "refund": ("pay",), "withdraw": ("pay",),
    "payment": ("pay",), "schedule": ("schedule",),
    "send": ("message",), "reply": ("message",), "forward": ("message",), "message": ("message",),
    "notify": ("message",), "mail": ("message",), "email": ("message",), "comment": ("message",),
    "tweet": ("message",), "post": ("book", "message"),
    "book": ("book",), "reserve": ("book",), "purchase": ("book", "pay"), "buy": ("book", "pay"),
    "order": ("book", "pay"), "submit": ("book",), "register": ("book",), "sign": ("book",),
    "cancel": ("book",),
    "write": ("write",), "create": ("write", "schedule"), "update": ("write",), "put": ("write",),
    "patch": ("write",), "upload": ("write", "share"), "insert": ("write",), "commit": ("write",),
    "rename": ("write",), "move": ("write",), "save": ("write",), "edit": ("write",),
    "share": ("share",), "grant": ("share",), "invite": ("share", "message", "schedule"),
    "publish": ("share", "message"), "event": ("schedule",), "add": ("write", "share", "schedule"),
}  # fmt: skip


#: Words of a tool name that say it moves money or changes where money goes.
MONEY_WORDS = frozenset(
    {
        "transfer", "pay", "payment", "payout", "wire", "refund", "withdraw", "money", "funds",
        "payee", "beneficiary", "charge", "checkout", "settle", "deposit", "sepa", "iban",
        "donate", "donation", "remit", "remittance", "purchase", "buy", "order", "tip", "invoice",
        "billing", "wallet", "crypto", "swap", "bank", "banking", "cash", "gift", "giftcard", "bill",
        "transaction", "eth", "ether", "btc", "bitcoin", "usdc", "usdt", "sol", "zelle", "venmo",
        "stripe", "recipient", "autopay",
    }
)  # fmt: skip
#: The kinds of act that reach someone or somewhere: what a task that leaves the
#: destination to the data (`_delegated`) can vouch for.
REACHING_KINDS = frozenset({"message", "share", "book", "schedule"})


def vouches(tool: str, wants: Asked, *, money: bool = False) -> bool:
    """Whether pointing at a result vouches for its data in a call of `tool`: the task asks
    for an act of the tool's kind, and the tool moves no money unless `money` (the caller
    has checked the payment on _money.py's terms)."""
    return (money or not moves_money(tool)) and asks_for(tool, wants)


def moves_money(tool: str) -> bool:
    """Whether `tool`'s name holds a word of MONEY_WORDS (as a word or a word's start)."""
    return any(word in MONEY_WORDS or word.startswith(("pay", "transfer", "refund")) for word in tool_verbs(tool))


def kinds(tool: str) -> frozenset[str]:
    """The kinds of act `tool`'s name says it does (none: unknown)."""
    return frozenset(kind for verb in tool_verbs(tool) for kind in _TOOL_KINDS.get(verb, ()))


def asks_to_reach(tool: str, wants: Asked) -> bool:
    """Whether the task asks, with a verb of its own kind, for the act of `tool` that reaches
    someone (REACHING_KINDS): delegating verbs and stated needs do not count, nor writing."""
    return not moves_money(tool) and any(wants.any_of(_TASK_VERBS[kind]) for kind in kinds(tool) & REACHING_KINDS)


def asks_for(tool: str, wants: Asked) -> bool:
    """Whether the task (`wants`) asks for an act of `tool`'s kind (see the module docstring)."""
    if wants.nothing:
        return False
    if wants.any_of(DELEGATING_VERBS | {STATED_NEED}):
        return True
    return any(wants.any_of(_TASK_VERBS[kind]) for kind in kinds(tool))
