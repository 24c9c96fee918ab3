"""Process wiring of `bastion verifier serve`: settings -> sequence model (loaded from its
store) -> scorer -> servicer -> gRPC server, the model's flusher, and the HTTP server of
/metrics, /healthz and /readyz (`_api.py`)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bastion._appconfig import AppConfig
from bastion._errors import ConfigError
from bastion._identity import SERVICE_TOKEN_FILE, ensure_service_token
from bastion._rpc import start_grpc_server
from bastion._service import run_service
from bastion._settings import check_token, second_service_tokens, second_tokens
from bastion._tls import GrpcTls, grpc_tls
from bastion._web import start_web_server
from bastion.v1 import verifier_pb2_grpc

from ._api import OpsApp
from ._config import VerifierSettings, load_settings
from ._engine import ReferenceScorer
from ._grpc import SERVICE_NAME, VerifierServicer
from ._metrics import VerifierMetrics
from ._sequence import SequenceModel
from ._sequence_store import SEQUENCE_STORE, SequenceStore, run_flusher

log = logging.getLogger("bastion.verifier")


async def serve(
    settings: VerifierSettings,
    app: AppConfig,
    ready: Callable[[dict[str, str]], None],
    stop: asyncio.Event,
) -> None:
    """Serve bastion.v1.Verifier on settings.verifier_addr, and its metrics and probes on
    settings.verifier_metrics_addr, until `stop` is set."""
    home = settings.home.resolve()
    tokens = _accepted_tokens(settings, home)
    tls = grpc_tls(settings)  # checked before anything starts
    metrics = VerifierMetrics()
    model = SequenceModel(settings.sequence_config())
    store = SequenceStore(home / SEQUENCE_STORE)
    try:
        loaded = await asyncio.to_thread(store.load, model)
        log.info("sequence models loaded", extra={"fields": {"agents": loaded, "path": str(store.path)}})
        flushing = asyncio.Event()
        flusher = asyncio.create_task(run_flusher(model, store, settings.verifier_sequence_flush_s, flushing))
        try:
            scorer = ReferenceScorer(settings.scorer_config(), model)
            await _serve(settings, VerifierServicer(scorer, metrics), metrics, (tokens, tls), ready, stop)
        finally:
            # The last flush: what was learnt since the previous one survives the restart.
            flushing.set()
            await flusher
    finally:
        store.close()


async def _serve(
    settings: VerifierSettings,
    servicer: VerifierServicer,
    metrics: VerifierMetrics,
    credentials: tuple[tuple[str, ...], GrpcTls | None],
    ready: Callable[[dict[str, str]], None],
    stop: asyncio.Event,
) -> None:
    tokens, tls = credentials
    serving = asyncio.Event()
    http = await start_web_server(OpsApp(metrics, serving.is_set), settings.verifier_metrics_addr)
    try:
        server = await start_grpc_server(
            settings.verifier_addr,
            token=tokens[0],
            also_accepted=tokens[1:],
            tls=tls,
            register=[partial(verifier_pb2_grpc.add_VerifierServicer_to_server, servicer)],
            service_names=[SERVICE_NAME],
        )
        try:
            serving.set()
            ready({"grpc": server.address, "http": http.address})
            await http.run_until(stop)
        finally:
            serving.clear()
            # Health turns NOT_SERVING first, so clients move away before the port closes.
            await server.stop()
    finally:
        await http.stop()


def _accepted_tokens(settings: VerifierSettings, home: Path) -> tuple[str, ...]:
    """The bearer tokens the gRPC server accepts: BASTION_VERIFIER_TOKEN when set, which the
    proxy then sends instead of the service token (so this process needs no service token
    at all), and BASTION_VERIFIER_SECOND_TOKEN while it is rotated; else the service
    token. ConfigError when a verifier token is short, not visible ASCII or the service
    token, or a second one is set without a first."""
    if settings.verifier_token is None:
        if settings.verifier_second_token is not None:
            raise ConfigError("BASTION_VERIFIER_SECOND_TOKEN is set without BASTION_VERIFIER_TOKEN")
        secret = settings.service_token.get_secret_value() if settings.service_token else None
        return (ensure_service_token(home, secret), *second_service_tokens(settings))
    token = settings.verifier_token.get_secret_value()
    # Compared with the service token this stack uses, from the environment or, on a local
    # stack sharing $BASTION_HOME, its file; none is created here.
    stored = home / SERVICE_TOKEN_FILE
    if settings.service_token is not None:
        service_token = settings.service_token.get_secret_value()
    else:
        service_token = stored.read_text().strip() if stored.is_file() else ""
    return (
        check_token(token, "BASTION_VERIFIER_TOKEN", service_token),
        *second_tokens(settings.verifier_second_token, "BASTION_VERIFIER_SECOND_TOKEN", service_token),
    )


def main(config: Path | None = None) -> int:
    """`bastion verifier serve`: exit 0 on a clean stop, 1 on a runtime error, 2 on bad config."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        # Logging is configured from these very settings, so this one goes to stderr directly.
        print(f"cannot start verifier: {exc}", file=sys.stderr)
        return 2
    # The scorer uses nothing of bastion.yaml (a bad one still stops it) and reads none of
    # the credentials it names: its pods need no Secret (charts/bastion mounts none).
    return run_service("verifier", settings, config, serve, reads_config=False)
