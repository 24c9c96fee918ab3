"""Processes a benchmark starts and watches: spawned with their output in a log file,
waited for through a run file or a port file, stopped in order, and read from /proc for
the CPU time and memory each one used (Linux only; psutil is not a dependency).

CPU time is utime + stime of every thread of the process, in clock ticks (10 ms on
Linux): a figure per call is only as good as the number of calls it is divided by.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from bastion._runfile import read_runfile

_T = TypeVar("_T")
_TICK = os.sysconf("SC_CLK_TCK")
_START_TIMEOUT = 60.0
_STOP_GRACE = 10.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far, all threads."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def memory_mb(pid: int) -> dict[str, float]:
    """Resident set size now (`rss`) and its high-water mark (`peak`), in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found["rss" if key == "VmRSS" else "peak"] = round(int(value.split()[0]) / 1024, 1)
    return found


@dataclass
class Processes:
    """The processes of one run, by name, in start order; `workdir` holds their logs."""

    workdir: Path
    env: Mapping[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str] | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, *argv], env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT
        )

    def spawn_service(self, name: str, config: Path, extra_env: Mapping[str, str] | None = None) -> None:
        """`bastion NAME serve`, as `bastion up` starts it."""
        self.spawn(name, ["-m", "bastion", name, "serve", "--config", str(config)], extra_env)

    def wait_service(self, name: str, home: Path) -> dict[str, Any]:
        """The addresses service `name` wrote to its run file under `home`."""
        pid = self.procs[name].pid
        return self._wait(name, lambda: read_runfile(home, name, pid))

    def wait_port(self, name: str, port_file: Path) -> int:
        return int(self._wait(name, lambda: port_file.read_text() if port_file.exists() else None))

    def _wait(self, name: str, probe: Callable[[], _T | None]) -> _T:
        proc = self.procs[name]
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with code {proc.returncode} during startup:\n{self.log_tail(name)}")
            found = probe()
            if found is not None:
                return found
            time.sleep(0.02)
        raise SystemExit(f"{name} did not become ready within {_START_TIMEOUT:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process, and by this one as `client`."""
        found = {name: cpu_seconds(proc.pid) for name, proc in self.procs.items()}
        found["client"] = cpu_seconds(os.getpid())
        return found

    def memory(self) -> dict[str, dict[str, float]]:
        found = {name: memory_mb(proc.pid) for name, proc in self.procs.items()}
        found["client"] = memory_mb(os.getpid())
        return found

    def stop(self, first: Sequence[str]) -> None:
        """SIGTERM to the processes `first`, waited for, then to the rest at once; each killed
        after a grace period. (Proxies go first: each flushes its journal to a graph still
        running.)"""
        self._terminate(list(first))
        self._terminate([name for name in self.procs if name not in first])
        for log in self._logs:
            log.close()

    def _terminate(self, names: list[str]) -> None:
        running = [self.procs[name] for name in names if name in self.procs and self.procs[name].poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def processes(workdir: Path, env: Mapping[str, str], stop_first: Sequence[str]) -> Iterator[Processes]:
    running = Processes(workdir, env)
    try:
        yield running
    finally:
        running.stop(stop_first)
