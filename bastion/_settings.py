"""Settings shared by every service, read once from `BASTION_*` env vars and frozen.

Each service declares its own subclass in `<service>/_config.py`; every field has a
default and a one-line description, and `scripts/gen_config_docs.py` turns them into
docs/configuration.md (a test fails when that file is stale).
"""

from __future__ import annotations

from pathlib import Path

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
    log_level: str = Field(default="INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")


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
