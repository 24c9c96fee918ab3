"""bastion.yaml: the upstreams, policies and auth settings of a stack.

Loaded once per process into frozen models; unknown keys are errors, relative paths
are resolved against the file's directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Frozen):
    """An upstream MCP server: streamable HTTP at `url`, or a stdio server the proxy runs as
    `command` (argv, no shell) with only `env` added to a minimal environment, in `cwd`."""

    url: str | None = None
    command: tuple[str, ...] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if (self.url is None) == (self.command is None):
            raise ValueError("give exactly one of 'url' or 'command'")
        if self.command is not None and (not self.command or not self.command[0]):
            raise ValueError("'command' must name a program: [program, arg, ...]")
        if self.url is not None and (self.env or self.cwd is not None):
            raise ValueError("'env' and 'cwd' are for stdio servers ('command'), not for 'url'")
        if self.command is not None and self.headers:
            raise ValueError("'headers' are for HTTP servers ('url'); give a stdio server its secrets in 'env'")
        _check_headers(self.headers)
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

    @model_validator(mode="after")
    def _http(self) -> AgentConfig:
        _check_headers(self.headers)
        if not self.url.startswith("http://"):
            raise ValueError("'url' must be an http:// URL (https agents are not supported yet)")
        return self


class AuthConfig(_Frozen):
    """How agent and operator JWTs are verified. Empty `public_keys` means the stack's dev key."""

    issuer: str = "bastion-dev"
    audience: str = "bastion"
    public_keys: tuple[Path, ...] = ()
    algorithms: tuple[str, ...] = ("EdDSA",)


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


def find_app_config(explicit: Path | None, env_value: Path | None) -> tuple[Path | None, AppConfig]:
    """The config a service runs with, and where it came from.

    A file named by --config or $BASTION_CONFIG must exist. Without either, a missing
    ./bastion.yaml means the embedded defaults: no upstreams and no policies, so the
    proxy serves nothing and every decision is the default deny.
    """
    path = resolve_config_path(explicit, env_value)
    if path == DEFAULT_CONFIG and explicit is None and env_value is None and not path.exists():
        return None, AppConfig()
    return path.resolve(), load_app_config(path)


def load_app_config(path: Path) -> AppConfig:
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
        raw["auth"] = {**auth, "public_keys": [_resolve(base, p) for p in auth["public_keys"] or []]}
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
            raw[section] = {name: _expand_headers(path, f"{section}.{name}", entry) for name, entry in entries.items()}
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


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_headers(path: Path, where: str, entry: object) -> object:
    """`${VAR}` in header values from the environment: credentials Bastion adds for an
    upstream stay out of the file (and are never shown to the caller)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("headers"), dict):
        return entry

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"config file {path}: {where}.headers needs ${{{name}}}, which is not set")
        return os.environ[name]

    headers = {
        key: _ENV_REF.sub(value, item) if isinstance(item, str) else item for key, item in entry["headers"].items()
    }
    return {**entry, "headers": headers}


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
