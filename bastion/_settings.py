"""Settings shared by every service, read once from `BASTION_*` env vars and frozen.

Each service declares its own subclass in `<service>/_config.py`; every field has a
default and a one-line description, and `scripts/gen_config_docs.py` turns them into
docs/configuration.md (a test fails when that file is stale).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._errors import ConfigError


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BASTION_", frozen=True, extra="ignore")

    home: Path = Field(
        default=Path("var"),
        description="State directory: SQLite files, journal, dev keys, service token, run files.",
    )
    config: Path | None = Field(
        default=None,
        description="Path of bastion.yaml when --config is not given (else ./bastion.yaml).",
    )
    service_token: SecretStr | None = Field(
        default=None,
        description="Shared bearer token for service-to-service gRPC; generated into $BASTION_HOME on first start.",
    )
    service_second_token: SecretStr | None = Field(
        default=None,
        description="A second token the gRPC services accept beside the service token, to rotate that one "
        "without a gap (16 to 1024 visible ASCII characters; callers always send BASTION_SERVICE_TOKEN): put "
        "the new token here, then swap the two everywhere, then unset this.",
    )
    grpc_tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate (chain) this service presents on its gRPC links, as server and as client. "
        "With BASTION_GRPC_TLS_KEY and BASTION_GRPC_TLS_CA (all three or none): mutual TLS on every gRPC link; "
        "its names must include the host the other services dial it by.",
    )
    grpc_tls_key: Path | None = Field(default=None, description="Unencrypted PEM private key of BASTION_GRPC_TLS_CERT.")
    grpc_tls_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle a gRPC peer's certificate must chain to: servers refuse clients without one, "
        "clients refuse servers without one.",
    )
    log_level: str = Field(default="INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")


#: Shortest token accepted besides or instead of the service token (the verifier's, a second
#: one while a token is rotated): a bearer secret is as guessable as it is short.
MIN_TOKEN_CHARS = 16
#: Longest: it rides in every call's metadata, and gRPC bounds a call's metadata (8 KiB).
MAX_TOKEN_CHARS = 1024


def verifier_token_field() -> Any:
    """BASTION_VERIFIER_TOKEN, declared once for the two services that read it (the proxy
    sends it, the verifier accepts it); a new FieldInfo per class."""
    return Field(
        default=None,
        description="Bearer token the proxy sends to the verifier at BASTION_VERIFIER_ADDR (and to the chained "
        "verifiers unless BASTION_VERIFIER_CHAIN_TOKEN is set), and the only one `bastion verifier serve` then "
        "accepts, instead of the service token: the verifier then holds no credential that writes to the graph "
        f"or reads from the policy service. Set the same value on both: {MIN_TOKEN_CHARS} to "
        f"{MAX_TOKEN_CHARS} visible ASCII characters, never the service token.",
    )


def check_token(token: str, name: str, service_token: str = "") -> str:
    """`token` (the setting `name`: the verifier's token, or a second token accepted while one
    is rotated) without a trailing newline (a Secret made `--from-file` of `openssl rand … >
    file` ends in one); ConfigError unless it is then long enough, fits a gRPC metadata value
    (visible ASCII: a space, a newline or an accented letter would make every call fail
    later, far from the cause) and is not `service_token`: equal, the verifier would hold
    the very credential its own token keeps from it."""
    token = token.rstrip("\r\n")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{name} must be at least {MIN_TOKEN_CHARS} characters")
    if len(token) > MAX_TOKEN_CHARS:
        raise ConfigError(f"{name} must be at most {MAX_TOKEN_CHARS} characters")
    if not all("!" <= char <= "~" for char in token):
        raise ConfigError(f"{name} must be visible ASCII: no spaces, control characters or non-ASCII")
    if hmac.compare_digest(token.encode(), service_token.encode()):
        raise ConfigError(f"{name} must differ from the service token: equal, it keeps nothing back")
    return token


def second_tokens(second: SecretStr | None, name: str, service_token: str = "") -> tuple[str, ...]:
    """The second token a gRPC server accepts while its first is rotated (`also_accepted`),
    checked by check_token; () unset."""
    return () if second is None else (check_token(second.get_secret_value(), name, service_token),)


def second_service_tokens(settings: CommonSettings) -> tuple[str, ...]:
    """BASTION_SERVICE_SECOND_TOKEN, for the gRPC servers that accept the service token."""
    return second_tokens(settings.service_second_token, "BASTION_SERVICE_SECOND_TOKEN")


def parse_addr(value: str) -> tuple[str, int]:
    """Split a `host:port` address (IPv6 as `[::1]:port`) into its parts."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"address {value!r} is not host:port")
    port_number = int(port)
    if port_number > 65535:
        raise ConfigError(f"address {value!r}: port out of range")
    return host.strip("[]"), port_number


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
