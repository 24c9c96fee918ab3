"""Bastion: runtime governance for AI agents.

The public surface of the shared core is the error tree; each service exposes its own
surface from `bastion.proxy`, `bastion.policy`, `bastion.verifier` and `bastion.graph`.
"""

from ._errors import (
    ArgumentsTooLarge,
    AuthError,
    BastionError,
    BodyTimeout,
    BundleSignatureError,
    ConfigError,
    DecisionUnavailable,
    DelegationRefused,
    ForbiddenError,
    HeaderMismatch,
    InvalidParams,
    InvalidRequest,
    JournalError,
    MethodNotAllowed,
    ParseError,
    PayloadTooLarge,
    PolicyError,
    PolicyValidationError,
    ProtocolError,
    SessionForeign,
    SessionUnknown,
    StoreError,
    TaskForeign,
    UnknownTool,
    UpstreamError,
    UpstreamTimeout,
)

__version__ = "0.1.0"

__all__ = [
    "ArgumentsTooLarge",
    "AuthError",
    "BastionError",
    "BodyTimeout",
    "BundleSignatureError",
    "ConfigError",
    "DecisionUnavailable",
    "DelegationRefused",
    "ForbiddenError",
    "HeaderMismatch",
    "InvalidParams",
    "InvalidRequest",
    "JournalError",
    "MethodNotAllowed",
    "ParseError",
    "PayloadTooLarge",
    "PolicyError",
    "PolicyValidationError",
    "ProtocolError",
    "SessionForeign",
    "SessionUnknown",
    "StoreError",
    "TaskForeign",
    "UnknownTool",
    "UpstreamError",
    "UpstreamTimeout",
    "__version__",
]
