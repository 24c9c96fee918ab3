"""Who owns a host name: the part of it its owner registered (`registrable`), shared by the
proxy's provenance (which results a task points at, proxy/_pointers.py) and the reference
scorer (whether a destination is on a site the task names, verifier/_destinations.py).

The Public Suffix List, as the `publicsuffixlist` package ships it (a snapshot inside the
wheel: nothing is downloaded at run time), with its private section: `alice.github.io`,
`x.herokuapp.com`, `shop.uk.com`, `a.b.tokyo.jp` are each their own owner's. On top of it,
`SHARED_HOSTS`: platforms the list does not name where anyone still gets a name or a page
(`alice.ghost.io`, `x.medium.com`, Google's and Slack's hosts), under which a host is its
own whole name; and a host the list calls a suffix itself is its own whole name too. A
reviewer's probe joined tenants of platforms an earlier heuristic missed or read one label
short (`*.blob.core.windows.net`, `*.tokyo.jp`, `*.uk.com`). Reading a name as *longer* than
its owner's can only make two hosts look unrelated, never join an attacker's host to the
user's. `owns_subdomains` says when the names under a host are its owner's (the scorer's
same-site rule: never siblings, never on a shared platform).
"""

from __future__ import annotations

from publicsuffixlist import PublicSuffixList

from bastion._cache import short_key_cache

#: The list as the package ships it, private section included (loaded once, ~20 ms).
_PSL = PublicSuffixList(only_icann=False)

#: Domains under which anyone gets a name (`alice.github.io`): a host under one is its own whole name.
SHARED_HOSTS = frozenset(
    {
        "github.io", "gitlab.io", "netlify.app", "vercel.app", "pages.dev", "web.app", "firebaseapp.com",
        "herokuapp.com", "azurewebsites.net", "cloudfront.net", "appspot.com", "blogspot.com",
        "wordpress.com", "sharepoint.com", "google.com", "notion.site", "substack.com", "medium.com",
        "amazonaws.com", "s3.amazonaws.com", "workers.dev", "glitch.me", "onrender.com", "fly.dev",
        "googleapis.com", "githubusercontent.com", "slack.com", "ngrok.io", "ngrok-free.app",
        "ngrok.app", "pipedream.net", "requestcatcher.com", "repl.co", "replit.app", "trycloudflare.com",
        "myshopify.com", "wixsite.com", "squarespace.com", "webflow.io", "carrd.co", "neocities.org",
        "surge.sh", "azurestaticapps.net", "blob.core.windows.net", "web.core.windows.net",
        "cloudfunctions.net", "run.app", "hf.space", "streamlit.app", "bubbleapps.io", "weebly.com",
        "tumblr.com", "gitbook.io", "readthedocs.io", "atlassian.net", "zendesk.com", "freshdesk.com",
        "godaddysites.com", "jimdosite.com", "framer.website", "webhook.site", "beeceptor.com",
        "windows.net", "azurefd.net", "azure.com", "elasticbeanstalk.com", "amplifyapp.com",
        "firebaseio.com", "deno.dev", "pythonanywhere.com", "typeform.com", "list-manage.com",
        "salesforce.com", "site.com", "force.com", "okta.com", "zoom.us", "us.com", "eu.org", "js.org",
        "duckdns.org", "bitbucket.io", "r2.dev", "ngrok-free.dev", "loca.lt", "on.aws", "cloudflare.com",
        "herokudns.com", "fastly.net", "akamaized.net", "b-cdn.net", "digitaloceanspaces.com",
        "ondigitalocean.app", "railway.app", "up.railway.app", "koyeb.app", "modal.run", "supabase.co",
        "fly.io", "pantheonsite.io", "wpengine.com", "myftp.org", "no-ip.org", "ddns.net",
        "ghost.io", "hashnode.dev", "replit.dev", "github.dev", "azureedge.net", "cloudapp.net",
        "000webhostapp.com", "codeberg.page", "itch.io", "mooo.com", "lever.co", "zapier.com",
        "discordapp.com", "discord.com",
    }
)  # fmt: skip


# Hosts repeat across results and calls: the list lookup is cached, for host names only
# (at most 253 characters), so no argument can fill the cache with megabytes.
@short_key_cache(max_key=253, maxsize=8192)
def registrable(host: str) -> str:
    """The part of a host name its owner registered: `forum.islandhop.example` →
    islandhop.example, `bank.co.uk` stays; under a platform of SHARED_HOSTS, and for an IP
    address, the whole host (`x.alice.github.io`, `bucket.s3.eu-west-1.amazonaws.com`:
    which label a platform hands out varies, and the whole name never joins two tenants)."""
    labels = host.split(".")
    if all(label.isdigit() for label in labels) or ":" in host or host.startswith("[") or _shared(labels):
        return host  # an IP address (its last labels are no domain), or a platform's tenant
    # None: the host is a public suffix itself (`co.uk`, `x.replit.dev` under `*.replit.dev`).
    return _PSL.privatesuffix(host) or host


def owns_subdomains(host: str) -> bool:
    """Whether every name under `host` is its owner's: a registered name (two labels or more,
    a top-level label of letters, no `co.uk`-style suffix), neither an IP address nor on a
    shared platform (where the names under a tenant's, or beside it, are another's)."""
    labels = host.split(".")
    if len(labels) < 2 or not labels[-1].isalpha() or len(labels[-1]) < 2 or not all(labels):
        return False
    return _PSL.privatesuffix(host) is not None and not _shared(labels)


def _shared(labels: list[str]) -> bool:
    """Whether the host of `labels`, or a domain above it, is a platform of SHARED_HOSTS."""
    # `blogspot.co.uk`, `blogspot.de`, …: every country's Blogger host.
    return any(".".join(labels[start:]) in SHARED_HOSTS for start in range(len(labels) - 1)) or (
        "blogspot" in labels[:-1]
    )
