"""bastion.yaml: the upstreams, policies and auth settings of a stack.

Loaded once per process into frozen models; unknown keys are errors, relative paths
are resolved against the file's directory.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasicAuth(_Frozen):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(max_length=4096)


class UpstreamAuth(_Frozen):
    """The credential Bastion presents to an upstream (values may be `${VAR}` or
    `${file:PATH}`): a bearer token or HTTP basic auth, sent as `Authorization`."""

    bearer: str | None = Field(default=None, min_length=1, max_length=16384)
    basic: BasicAuth | None = None

    @model_validator(mode="after")
    def _one(self) -> UpstreamAuth:
        if (self.bearer is None) == (self.basic is None):
            raise ValueError("'auth' takes exactly one of 'bearer' or 'basic'")
        if self.basic is not None and ":" in self.basic.username:
            raise ValueError("'auth.basic.username' cannot contain ':'")
        return self

    def header(self) -> str:
        if self.bearer is not None:
            return f"Bearer {self.bearer}"
        assert self.basic is not None
        pair = f"{self.basic.username}:{self.basic.password}".encode()
        return f"Basic {base64.b64encode(pair).decode('ascii')}"


def _brokered(headers: dict[str, str], auth: UpstreamAuth | None) -> dict[str, str]:
    if auth is None:
        return dict(headers)
    if any(name.lower() == "authorization" for name in headers):
        raise ValueError("give the upstream's Authorization in 'auth' or in 'headers', not both")
    return {**headers, "Authorization": auth.header()}


class ServerConfig(_Frozen):
    """An upstream MCP server: streamable HTTP at `url`, or a stdio server the proxy runs as
    `command` (argv, no shell) with only `env` added to a minimal environment, in `cwd`."""

    url: str | None = None
    command: tuple[str, ...] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    auth: UpstreamAuth | None = None

    def brokered_headers(self) -> dict[str, str]:
        """`headers` plus the `Authorization` header `auth` describes."""
        return _brokered(self.headers, self.auth)

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if (self.url is None) == (self.command is None):
            raise ValueError("give exactly one of 'url' or 'command'")
        if self.command is not None and (not self.command or not self.command[0]):
            raise ValueError("'command' must name a program: [program, arg, ...]")
        if self.url is not None and (self.env or self.cwd is not None):
            raise ValueError("'env' and 'cwd' are for stdio servers ('command'), not for 'url'")
        if self.command is not None and (self.headers or self.auth is not None):
            raise ValueError(
                "'headers' and 'auth' are for HTTP servers ('url'); give a stdio server its secrets in 'env'"
            )
        _check_headers(self.brokered_headers())
        if self.url is not None and not self.url.startswith("http://"):
            raise ValueError("'url' must be an http:// URL (https upstreams are not supported yet)")
        return self


class AgentConfig(_Frozen):
    """An A2A agent behind `/a2a/{name}`: its base `url` (JSON-RPC is POSTed there, the
    HTTP+JSON routes and the card hang below it) and headers Bastion adds for it."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    #: The JWT subject this agent uses on its own calls through Bastion: when set, only it
    #: may act under a delegation issued for a message to this agent.
    subject: str | None = None
    auth: UpstreamAuth | None = None

    def brokered_headers(self) -> dict[str, str]:
        """`headers` plus the `Authorization` header `auth` describes."""
        return _brokered(self.headers, self.auth)

    @model_validator(mode="after")
    def _http(self) -> AgentConfig:
        _check_headers(self.brokered_headers())
        if not self.url.startswith("http://"):
            raise ValueError("'url' must be an http:// URL (https agents are not supported yet)")
        return self


#: JWS algorithms a verifier may accept: asymmetric only, so no verifier ever holds a
#: secret that could mint tokens (and `none` or an HMAC keyed with a public key cannot pass).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
#: Claims with a fixed meaning, which cannot hold the tenant.
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "roles"})


class AuthConfig(_Frozen):
    """How agent and operator JWTs are verified: against `jwks` (a JWKS file or URL, keys chosen by
    the token's `kid`), else `public_keys` (PEM files), else the stack's dev key."""

    issuer: str = "bastion-dev"
    audience: str = "bastion"
    public_keys: tuple[Path, ...] = ()
    #: A JWKS file (relative to bastion.yaml) or an https URL (http only on a loopback host).
    jwks: str | None = Field(default=None, min_length=1)
    #: How often the JWKS is fetched again (also, at most every 30 s, when a token names an unknown kid).
    jwks_refresh_s: float = Field(default=300.0, ge=1.0, le=86400.0)
    algorithms: tuple[str, ...] = ("EdDSA",)
    #: Longest `exp` - `iat` a token may have; a longer-lived token is refused even while in force.
    max_token_lifetime_s: int = Field(default=86400, ge=60)
    #: The claim holding the caller's tenant; a token without it is in tenant "default".
    tenant_claim: str = Field(default="tenant", min_length=1, max_length=128)
    #: Clock skew tolerated on `exp`, `nbf` and `iat`.
    leeway_s: int = Field(default=30, ge=0, le=300)

    @model_validator(mode="after")
    def _consistent(self) -> AuthConfig:
        if not self.algorithms:
            raise ValueError("algorithms: name at least one, e.g. [EdDSA]")
        for algorithm in self.algorithms:
            if algorithm not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(
                    f"algorithms: {algorithm!r} is not accepted; use asymmetric ones "
                    f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
                )
        if self.jwks is not None and self.public_keys:
            raise ValueError("give 'jwks' or 'public_keys', not both")
        if self.jwks is not None and is_url(self.jwks):
            check_jwks_url(self.jwks)
        if self.tenant_claim in _RESERVED_CLAIMS:
            raise ValueError(f"tenant_claim: {self.tenant_claim!r} is a registered claim; name another one")
        return self


def is_url(location: str) -> bool:
    return location.lower().startswith(("http://", "https://"))


def check_jwks_url(url: str) -> None:
    """Refuse a JWKS URL that an attacker on the network could answer: its keys decide who is who."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.hostname:
        raise ValueError(f"jwks: {url!r} names no host")
    if parsed.scheme.lower() == "http" and not _loopback(parsed.hostname):
        raise ValueError(f"jwks: {url!r} must use https (plain http is allowed only on a loopback host)")


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PolicyKeyConfig(_Frozen):
    """A public key (PEM, Ed25519 or P-256) that policy bundles signed under `kid` verify against."""

    kid: str = Field(min_length=1, max_length=128)
    public_key: Path


#: `$.a.b` (`*` for any key or index) or `$..key`.
REDACTION_PATH = re.compile(r"^\$(?:\.\.[A-Za-z0-9_-]+|(?:\.(?:\*|[A-Za-z0-9_-]+))+)$")


class RedactionConfig(_Frozen):
    """What is replaced in arguments before they are journaled (besides known secret patterns)."""

    #: `$.a.b` from the arguments' root (`*` for any key or index), `$..key` at any depth.
    paths: tuple[str, ...] = ()
    #: Also redact IBANs (mod-97 checked); off by default, as payment tools need them shown.
    iban: bool = False

    @model_validator(mode="after")
    def _paths(self) -> RedactionConfig:
        for path in self.paths:
            if not REDACTION_PATH.fullmatch(path):
                raise ValueError(f"redaction path {path!r}: use $.a.b (with * for any key) or $..key")
        return self


class AppConfig(_Frozen):
    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    policies: tuple[Path, ...] = ()
    auth: AuthConfig = Field(default_factory=AuthConfig)
    #: Host header values the proxy, graph and policy REST answer (DNS-rebinding protection). Empty:
    #: loopback names only on a loopback bind, and a refusal to start on any other; "*" allows any.
    allowed_hosts: tuple[str, ...] = ()
    #: Keys that signed policy bundles verify against, by kid. Empty: the stack's dev key under kid "dev".
    policy_keys: tuple[PolicyKeyConfig, ...] = ()
    redaction: RedactionConfig = Field(default_factory=RedactionConfig)

    @model_validator(mode="after")
    def _names(self) -> AppConfig:
        for kind, names, reserved in (
            ("server", self.servers, "/mcp/tools/call"),
            ("agent", self.agents, "/a2a/tasks/send"),
        ):
            for name in names:
                if name == "tools" or name == "tasks" or "__" in name or not _plain(name):
                    raise ValueError(
                        f"{kind} name {name!r}: use ASCII letters, digits, '-' or '_' "
                        f"(no '__'; 'tools' and 'tasks' are reserved, e.g. by {reserved})"
                    )
        return self


def _plain(name: str) -> bool:
    return name.isascii() and name.replace("-", "").replace("_", "").isalnum()


DEFAULT_CONFIG = Path("bastion.yaml")


def resolve_config_path(explicit: Path | None, env_value: Path | None) -> Path:
    """--config, else $BASTION_CONFIG, else ./bastion.yaml (DESIGN §9)."""
    return explicit or env_value or DEFAULT_CONFIG


def find_app_config(
    explicit: Path | None, env_value: Path | None, *, credentials: bool = True
) -> tuple[Path | None, AppConfig]:
    """The config a service runs with, and where it came from.

    A file named by --config or $BASTION_CONFIG must exist. Without either, a missing
    ./bastion.yaml means the embedded defaults: no upstreams and no policies, so the
    proxy serves nothing and every decision is the default deny.
    """
    path = resolve_config_path(explicit, env_value)
    if path == DEFAULT_CONFIG and explicit is None and env_value is None and not path.exists():
        return None, AppConfig()
    return path.resolve(), load_app_config(path, credentials=credentials)


def load_app_config(path: Path, *, credentials: bool = True) -> AppConfig:
    """bastion.yaml at `path`. With `credentials` False, the upstreams' `headers` and `auth`
    are left out, unread: only the proxy sends them, so the other services neither read the
    variables and files they name nor hold them, and their pods need not hold an
    upstream's secret. Left out rather than kept as written, so a caller that sends them
    by mistake sends nothing, never the text of a reference."""
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found (pass --config or set BASTION_CONFIG)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    base = path.resolve().parent
    raw = dict(raw)
    raw["policies"] = [_resolve(base, p) for p in raw.get("policies") or []]
    auth = raw.get("auth")
    if isinstance(auth, dict) and "public_keys" in auth:
        raw["auth"] = auth = {**auth, "public_keys": [_resolve(base, p) for p in auth["public_keys"] or []]}
    if isinstance(auth, dict) and isinstance(auth.get("jwks"), str) and not is_url(auth["jwks"]):
        raw["auth"] = {**auth, "jwks": str(_resolve(base, auth["jwks"]))}
    keys = raw.get("policy_keys")
    if isinstance(keys, list):
        raw["policy_keys"] = [
            {**key, "public_key": _resolve(base, key["public_key"])}
            if isinstance(key, dict) and "public_key" in key
            else key
            for key in keys
        ]
    for section in ("servers", "agents"):
        entries = raw.get(section)
        if isinstance(entries, dict):
            raw[section] = {
                name: _expand_headers(path, f"{section}.{name}", entry) if credentials else _without_credentials(entry)
                for name, entry in entries.items()
            }
    servers = raw.get("servers")
    if isinstance(servers, dict):
        raw["servers"] = {
            name: {**server, "cwd": _resolve(base, server["cwd"])}
            if isinstance(server, dict) and server.get("cwd") is not None
            else server
            for name, server in servers.items()
        }
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"config file {path}: {_describe(exc)}") from exc


_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
#: Headers Bastion itself sets or routes on: brokering them would break the proxy or the protocol.
_UNBROKERABLE = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "mcp-session-id", "mcp-protocol-version"}
)


def _check_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or name.lower() in _UNBROKERABLE or name.lower().startswith("bastion-"):
            raise ValueError(f"header {name!r} cannot be set for an upstream")
        if any(ch in value for ch in "\r\n\x00") or not value.isascii():
            raise ValueError(f"header {name!r}: the value must be one line of ASCII")


_ENV_REF = re.compile(r"\$\{(?:([A-Za-z_][A-Za-z0-9_]*)|file:([^}]+))\}")
#: A secret file is a token or a password, not a document.
_MAX_SECRET_FILE = 64 * 1024


def _expand_headers(path: Path, where: str, entry: object) -> object:
    """`${VAR}` (from the environment) and `${file:PATH}` (a secret file, relative to
    bastion.yaml, e.g. a mounted Kubernetes secret) in `headers` and `auth` values:
    credentials Bastion adds for an upstream stay out of the file (and are never shown
    to the caller)."""
    if not isinstance(entry, dict):
        return entry

    def value(match: re.Match[str], field: str) -> str:
        name, file = match.group(1), match.group(2)
        if name is not None:
            if name not in os.environ:
                raise ConfigError(f"config file {path}: {where}.{field} needs ${{{name}}}, which is not set")
            return os.environ[name]
        secret = (path.parent / file).resolve() if not Path(file).is_absolute() else Path(file)
        try:
            with secret.open("rb") as handle:
                data = handle.read(_MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {where}.{field}: cannot read secret file {file}: {exc}") from exc
        if len(data) > _MAX_SECRET_FILE:
            raise ConfigError(f"config file {path}: {where}.{field}: secret file {file} is over 64 KiB")
        # Files written by editors and `kubectl create secret --from-file` end in a newline.
        return data.decode("utf-8", "replace").rstrip("\r\n")

    def expand(item: object, field: str) -> object:
        if isinstance(item, str):
            return _ENV_REF.sub(lambda match: value(match, field), item)
        if isinstance(item, dict):
            return {key: expand(inner, field) for key, inner in item.items()}
        return item

    expanded = dict(entry)
    for field in ("headers", "auth"):
        if isinstance(entry.get(field), dict):
            expanded[field] = expand(entry[field], field)
    return expanded


def _without_credentials(entry: object) -> object:
    if not isinstance(entry, dict):
        return entry
    return {key: value for key, value in entry.items() if key not in ("headers", "auth")}


def _resolve(base: Path, value: object) -> object:
    if isinstance(value, str):
        expanded = Path(os.path.expandvars(value))
        return expanded if expanded.is_absolute() else base / expanded
    return value


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
