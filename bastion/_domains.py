"""Who owns a host name: the part of it its owner registered (`registrable`), shared by the
proxy's provenance (which results a task points at, proxy/_pointers.py) and the reference
scorer (whether a destination is on a site the task names, verifier/_engine.py).

No public-suffix list is shipped (nothing is downloaded at run time), so the rule is a
heuristic that errs towards the longer name: a short label before a two-letter top-level
label is a suffix of its own (`co.uk`, `com.au`), and under the platforms of
`SHARED_HOSTS` anyone gets a name (`alice.github.io`), so a host there is its own whole
name. An attacker's probe joined tenants of platforms the first version missed or read
one label short (`*.blob.core.windows.net`, `*.execute-api.<region>.amazonaws.com`).
Reading a name as *longer* than its owner's can only make two hosts look unrelated, never
join an attacker's host to the user's. `owns_subdomains` says when the names under a host
are its owner's (the scorer's same-site rule: never siblings, never on a shared platform).
"""

from __future__ import annotations

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
    }
)  # fmt: skip


def registrable(host: str) -> str:
    """The part of a host name its owner registered: `forum.islandhop.example` →
    islandhop.example, `bank.co.uk` stays; under a platform of SHARED_HOSTS, and for an IP
    address, the whole host (`x.alice.github.io`, `bucket.s3.eu-west-1.amazonaws.com`:
    which label a platform hands out varies, and the whole name never joins two tenants)."""
    labels = host.split(".")
    if all(label.isdigit() for label in labels) or ":" in host or host.startswith("[") or _shared(labels):
        return host  # an IP address (its last labels are no domain), or a platform's tenant
    keep = 3 if len(labels) >= 3 and _public_suffix(labels[-2:]) else 2
    return ".".join(labels[-keep:])


def owns_subdomains(host: str) -> bool:
    """Whether every name under `host` is its owner's: a registered name (two labels or more,
    a top-level label of letters, no `co.uk`-style suffix), neither an IP address nor on a
    shared platform (where the names under a tenant's, or beside it, are another's)."""
    labels = host.split(".")
    if len(labels) < 2 or not labels[-1].isalpha() or len(labels[-1]) < 2 or not all(labels):
        return False
    return not (len(labels) == 2 and _public_suffix(labels)) and not _shared(labels)


def _public_suffix(last_two: list[str]) -> bool:
    """`co.uk`-style: a short label before a two-letter one is a suffix of its own."""
    return len(last_two[0]) <= 3 and len(last_two[1]) == 2


def _shared(labels: list[str]) -> bool:
    """Whether the host of `labels`, or a domain above it, is a platform of SHARED_HOSTS."""
    return any(".".join(labels[start:]) in SHARED_HOSTS for start in range(len(labels) - 1))
