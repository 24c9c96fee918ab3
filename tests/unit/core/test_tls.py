"""BASTION_GRPC_TLS_*: what a service refuses to start with, and says why (bastion/_tls.py)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from fixtures.certs import Files, issue, new_ca
from fixtures.stack import ADDRESS_VARS, ANY_PORT

from bastion._errors import ConfigError
from bastion._settings import CommonSettings
from bastion._tls import MAX_PEM_BYTES, grpc_tls


def _settings(files: Files, **override: Path | None) -> CommonSettings:
    chosen: dict[str, Any] = {**files.settings(), **override}
    return CommonSettings(**chosen)


def _refused(settings: CommonSettings) -> str:
    with pytest.raises(ConfigError) as refused:
        grpc_tls(settings)
    return str(refused.value)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return issue(new_ca(), tmp_path_factory.mktemp("pki"), "svc")


def test_unset_is_plaintext_and_all_three_load(files: Files) -> None:
    assert grpc_tls(CommonSettings()) is None
    loaded = grpc_tls(_settings(files))
    assert loaded is not None
    assert loaded.certificate_chain == files.cert.read_bytes()
    assert loaded.private_key == files.key.read_bytes()
    assert loaded.root_certificates == files.ca.read_bytes()


@pytest.mark.parametrize("unset", ["grpc_tls_cert", "grpc_tls_key", "grpc_tls_ca"])
def test_the_three_go_together(files: Files, unset: str) -> None:
    message = _refused(_settings(files, **{unset: None}))
    assert f"BASTION_{unset.upper()} not set" in message


def test_unreadable_and_oversized_files_are_named(files: Files, tmp_path: Path) -> None:
    assert "cannot read BASTION_GRPC_TLS_KEY" in _refused(_settings(files, grpc_tls_key=tmp_path / "absent.key"))
    assert "cannot read BASTION_GRPC_TLS_CA" in _refused(_settings(files, grpc_tls_ca=tmp_path))  # a directory
    huge = tmp_path / "huge.crt"
    huge.write_bytes(files.cert.read_bytes() + b"\n" * MAX_PEM_BYTES)
    assert "is over" in _refused(_settings(files, grpc_tls_cert=huge))


@pytest.mark.parametrize("content", [b"", b"not a certificate\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_what_is_no_certificate_is_refused(files: Files, tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    assert "BASTION_GRPC_TLS_CERT holds no PEM certificate" in _refused(_settings(files, grpc_tls_cert=bad))
    assert "BASTION_GRPC_TLS_CA holds no PEM certificate" in _refused(_settings(files, grpc_tls_ca=bad))


def test_a_key_that_is_not_the_certificates_or_is_encrypted(files: Files, tmp_path: Path) -> None:
    other = issue(new_ca("another-ca"), tmp_path, "other")
    assert "is not the key of the certificate" in _refused(_settings(files, grpc_tls_key=other.key))
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert "not an unencrypted PEM private key" in _refused(_settings(files, grpc_tls_key=locked))
    assert "not an unencrypted PEM private key" in _refused(_settings(files, grpc_tls_key=files.cert))


def test_a_certificate_outside_its_validity_is_refused_at_start(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    expired = issue(new_ca(), tmp_path, "old", valid_from=now - datetime.timedelta(days=9), valid_to=now)
    message = _refused(CommonSettings(**expired.settings()))
    assert "BASTION_GRPC_TLS_CERT" in message
    assert "not now" in message
    early = issue(new_ca(), tmp_path, "early", valid_from=now + datetime.timedelta(days=1))
    assert "not now" in _refused(CommonSettings(**early.settings()))


@pytest.mark.parametrize("service", ["policy", "verifier", "graph", "proxy"])
def test_a_service_with_a_partial_setting_exits_2_naming_it(files: Files, tmp_path: Path, service: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BASTION_")},
        "BASTION_HOME": str(tmp_path),
        "BASTION_GRPC_TLS_CERT": str(files.cert),
        **dict.fromkeys(ADDRESS_VARS, ANY_PORT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bastion", service, "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "BASTION_GRPC_TLS_KEY and BASTION_GRPC_TLS_CA not set" in done.stderr


def test_a_certificate_the_ca_did_not_sign_is_refused_at_start(files: Files, tmp_path: Path) -> None:
    # An attacker's probe of the running stack: such a service started, and every handshake
    # with it then failed far from the cause.
    stranger = issue(new_ca("another-ca"), tmp_path, "stranger")
    message = _refused(CommonSettings(**{**stranger.settings(), "grpc_tls_ca": files.ca}))
    assert "does not chain to BASTION_GRPC_TLS_CA" in message


def test_a_chain_through_an_intermediate_loads_unless_the_intermediate_expired(tmp_path: Path) -> None:
    root = new_ca("root")
    intermediate = new_ca("intermediate", signer=root)
    chained = issue(intermediate, tmp_path, "chained", root=root)
    assert grpc_tls(CommonSettings(**chained.settings())) is not None
    now = datetime.datetime.now(datetime.UTC)
    stale = new_ca("stale-intermediate", signer=root, valid_to=now - datetime.timedelta(hours=1))
    expired = issue(stale, tmp_path, "behind-stale", root=root)
    message = _refused(CommonSettings(**expired.settings()))
    assert "stale-intermediate" in message
    assert "not now" in message
    # The leaf without its intermediate does not chain to the root.
    alone = Files(cert=tmp_path / "alone.crt", key=chained.key, ca=chained.ca)
    alone.cert.write_bytes(
        chained.cert.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    )
    assert "does not chain" in _refused(CommonSettings(**alone.settings()))
