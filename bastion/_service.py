"""Process lifecycle shared by every `bastion <service> serve`: logging, uvloop,
SIGTERM/SIGINT → graceful stop, the run file, and exit codes."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import uvloop

from ._appconfig import AppConfig, find_app_config
from ._errors import BastionError, ConfigError
from ._logging import configure_logging
from ._runfile import remove_runfile, write_runfile
from ._settings import CommonSettings

log = logging.getLogger("bastion")

S = TypeVar("S", bound=CommonSettings)

#: serve(settings, app_config, ready, stop): start listening, call ready(addresses)
#: once bound, return after stop is set and everything is closed.
ServeFn = Callable[[S, AppConfig, Callable[[dict[str, str]], None], asyncio.Event], Awaitable[None]]


#: The young generation's threshold once a service serves (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Keep the garbage collector off what start-up built, and collect less often.

    Measured in `bastion bench stack` (docs/benchmarks.md): with CPython's defaults the
    proxy under load ran a full collection every few seconds, each walking the ≈ 90,000
    objects of its imports and wiring for 25-30 ms while calls waited, and ≈ 850 young
    collections per run. Start-up's objects live as long as the process, so they are moved
    out of the collector's sight (`gc.freeze`) once the service is listening; and most
    per-call objects are freed by their reference count before a young collection would
    see them, so a larger young threshold finds the same cycles with a tenth of the passes.
    Cycles are still collected: only how often the collector looks changes."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_service(
    name: str,
    settings: S,
    config: Path | None,
    serve: ServeFn[S],
    *,
    reads_config: bool = True,
    credentials: bool = False,
) -> int:
    """Run `serve` until SIGTERM or SIGINT; the exit code. A bastion.yaml that is named is
    loaded (and a bad one refused) even by a service that does not read it (`reads_config`
    False: the verifier), which is then not warned about running without one. Upstream
    credentials in it are read only with `credentials` (the proxy: load_app_config)."""
    configure_logging(name, settings.log_level)
    try:
        source, app = find_app_config(config, settings.config, credentials=credentials)
    except BastionError as exc:
        log.error("cannot start %s: %s", name, exc)
        return 2
    if source is None and reads_config:
        log.warning("no bastion.yaml found: running with no upstreams and no policies (default deny)")
    home = settings.home.resolve()

    announced = False

    def ready(addresses: dict[str, str]) -> None:
        nonlocal announced
        write_runfile(home, name, addresses)
        announced = True
        settle_heap()
        log.info("%s ready", name, extra={"fields": addresses})

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(settings, app, ready, stop)
        finally:
            # Only our own: a second instance refused at start (its journal or port taken)
            # must not remove the running one's addresses.
            if announced:
                remove_runfile(home, name)

    try:
        uvloop.run(main())
    except ConfigError as exc:
        # A setting the service cannot start with, found as it starts (a non-loopback
        # address without allowed_hosts): bad configuration, exit 2 like any other.
        log.error("cannot start %s: %s", name, exc)
        return 2
    except BastionError as exc:
        log.error("%s failed: %s", name, exc)
        return 1
    log.info("%s stopped", name)
    return 0
