"""What every admin command of the CLI shares: the operator's token, one request with the
services' error body turned into an exit code, and text-or-JSON output.

Token: `--token`, else $BASTION_TOKEN, else one minted from the stack's dev key under
$BASTION_HOME with role operator for five minutes (issuer and audience from bastion.yaml).
"""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

import httpx
import orjson

from ._appconfig import find_app_config
from ._identity import ensure_dev_key, issue_token
from ._settings import CommonSettings

TIMEOUT_S = 30.0


class CliFailed(Exception):
    """The service refused or failed: exit 1, or `code` (2 for 401/403)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def bearer_from(args: argparse.Namespace) -> dict[str, str]:
    token = args.token or os.environ.get("BASTION_TOKEN")
    if not token:
        settings = CommonSettings()
        _, app = find_app_config(args.config, settings.config, credentials=False)
        token = issue_token(
            ensure_dev_key(settings.home.resolve()),
            subject=cli_user(),
            roles=("operator",),
            ttl_seconds=300,
            auth=app.auth,
        )
    return {"Authorization": f"Bearer {token}"}


def cli_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli"


def call(http: httpx.Client, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
    response = http.request(method, path, json=body, params=params)
    payload = response_json(response)
    if response.status_code < 400:
        return payload
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    message = error.get("message") or response.text[:500] or response.reason_phrase
    code = 2 if response.status_code in (401, 403) else 1
    raise CliFailed(
        f"{method} {path}: {response.status_code} {error.get('code', '')}: {message}".replace(":  ", ": "), code
    )


def response_json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}


def emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    print(orjson.dumps(payload).decode() if args.json else text)
