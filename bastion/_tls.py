"""Mutual TLS on the gRPC links between Bastion's services (DESIGN §8: "shared token or mTLS").

Opt-in with three files, the same three settings on every service (BASTION_GRPC_TLS_CERT,
BASTION_GRPC_TLS_KEY, BASTION_GRPC_TLS_CA): a service's certificate and key, which it
presents both as a server and as a client, and the CA bundle it checks its peers against.
With them, every gRPC server Bastion starts accepts only TLS connections whose client
presents a certificate that CA signed, and every channel it opens checks the server's
certificate against the CA and the address's host name. The service token is still
required on top: the two guard against different losses (a copied token is useless
without a certificate; a certificate without its key cannot be presented at all, so,
unlike a token, it cannot be replayed by a verifier it was shown to).

Everything is read and checked once, at start: a missing, unreadable or mismatched file,
a certificate of the chain outside its validity, a chain the CA did not sign or a key for
another certificate stops the service with exit 2 and the setting's name, instead of
failing every handshake later, far from the cause.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ._errors import ConfigError
from ._settings import CommonSettings

#: Largest PEM file read: a chain of a few certificates is a few KiB.
MAX_PEM_BYTES = 1 << 20

_NAMES = ("BASTION_GRPC_TLS_CERT", "BASTION_GRPC_TLS_KEY", "BASTION_GRPC_TLS_CA")


@dataclass(frozen=True, slots=True)
class GrpcTls:
    """One service's side of mutual TLS: PEM bytes, checked by `grpc_tls`."""

    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        # require_client_auth: a caller without a certificate the CA signed is refused in the
        # handshake, before any of its bytes reach a handler.
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def grpc_tls(settings: CommonSettings) -> GrpcTls | None:
    """The service's mutual TLS material, or None when none of the three settings is set;
    ConfigError when only some are, or when what they name cannot serve."""
    paths = (settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_tls_ca)
    if all(path is None for path in paths):
        return None
    missing = [name for name, path in zip(_NAMES, paths, strict=True) if path is None]
    if missing:
        raise ConfigError(f"{', '.join(_NAMES)} go together: {' and '.join(missing)} not set")
    cert_path, key_path, ca_path = (path for path in paths if path is not None)
    chain_pem = _read(cert_path, _NAMES[0])
    key_pem = _read(key_path, _NAMES[1])
    ca_pem = _read(ca_path, _NAMES[2])
    chain = _certificates(chain_pem, _NAMES[0])
    roots = _certificates(ca_pem, _NAMES[2])
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{_NAMES[1]} ({key_path}) is not an unencrypted PEM private key") from exc
    if key.public_key().public_bytes(*_SPKI) != chain[0].public_key().public_bytes(*_SPKI):
        raise ConfigError(f"{_NAMES[1]} ({key_path}) is not the key of the certificate in {_NAMES[0]}")
    now = datetime.datetime.now(datetime.UTC)
    for name, path, certificates in ((_NAMES[0], cert_path, chain), (_NAMES[2], ca_path, roots)):
        for certificate in certificates:
            if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
                raise ConfigError(
                    f"{name} ({path}): the certificate for {certificate.subject.rfc4514_string()!r} is valid "
                    f"from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                    f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
                )
    if not _chains_to(chain, roots):
        raise ConfigError(
            f"{_NAMES[0]} ({cert_path}) does not chain to {_NAMES[2]} ({ca_path}): every peer would refuse it; "
            "give the certificate its intermediates, or the CA that signed it"
        )
    return GrpcTls(certificate_chain=chain_pem, private_key=key_pem, root_certificates=ca_pem)


def _chains_to(chain: list[x509.Certificate], roots: list[x509.Certificate]) -> bool:
    """Whether each certificate of `chain` is signed by the next, and the last by one of
    `roots` (or is one): what a peer checks in the handshake, checked at start instead."""
    for index, certificate in enumerate(chain):
        if certificate in roots:
            return True
        issuers = chain[index + 1 : index + 2] or roots
        if not any(_issued_by(certificate, issuer) for issuer in issuers):
            return False
    return True


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(path: Path, name: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {name} ({path}): {exc.strerror or exc}") from exc
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"{name} ({path}) is over {MAX_PEM_BYTES} bytes: not a PEM certificate or key")
    return data


def _certificates(pem: bytes, name: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(f"{name} holds no PEM certificate that parses: {exc}") from exc
    if not certificates:
        raise ConfigError(f"{name} holds no PEM certificate")
    return certificates
