"""Child processes for tests, demo and benchmark: started, awaited, stopped, logged.

Each process writes stdout and stderr to one log file; every failure to start
raises ``StartupError`` with the end of that log, so a test failure shows why
Envoy or the sidecar did not come up. Each child gets its own session, so
stopping it also reaches the processes it started (sidecar workers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

LOG_TAIL_CHARS = 6000


class StartupError(RuntimeError):
    """A process did not become ready; the message ends with its log."""


@dataclass
class ManagedProcess:
    """A started child process and the file its output goes to."""

    name: str
    argv: tuple[str, ...]
    log_path: Path
    popen: subprocess.Popen[bytes]
    _log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        text = self.log_text()
        return text if len(text) <= chars else "…" + text[-chars:]

    def describe(self) -> str:
        """Name, state and the end of the log: what a failing test should print."""
        code = self.popen.poll()
        state = "running" if code is None else f"exited with {code}"
        return (
            f"--- {self.name} (pid {self.pid}, {state}) log {self.log_path} ---\n"
            f"{self.log_tail()}\n--- end of {self.name} log ---"
        )

    def send_signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def stop(self, timeout: float = 10.0, signum: int = signal.SIGTERM) -> int:
        """Ask the process to exit (SIGTERM); SIGKILL its session after ``timeout``.

        Returns the exit code (negative: killed by that signal).
        """
        if self.alive():
            self.send_signal(signum)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_session()
        self._log_file.close()
        return self.popen.wait()

    def kill(self) -> None:
        """SIGKILL the process and everything in its session."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait()

    def _reap_session(self) -> None:
        # Children the process left behind (e.g. workers of a killed parent)
        # are in its session, whose id is the process's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start ``argv`` in its own session with output to ``log_dir/<name>.log``.

    ``env`` is added to this process's environment (not a replacement).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = _unused_path(log_dir, name)
    log_file = log_path.open("wb")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        log_file.close()
        raise StartupError(f"{name}: cannot run {argv[0]}: {exc}") from exc
    return ManagedProcess(name, tuple(argv), log_path, popen, log_file)


def _unused_path(log_dir: Path, name: str) -> Path:
    path = log_dir / f"{name}.log"
    index = 1
    while path.exists():
        index += 1
        path = log_dir / f"{name}-{index}.log"
    return path


def _check_alive(process: ManagedProcess | None, waiting_for: str) -> None:
    if process is not None and not process.alive():
        raise StartupError(
            f"{process.name} exited while waiting for {waiting_for}\n{process.describe()}"
        )


def wait_for_tcp(
    host: str, port: int, *, timeout: float = 20.0, process: ManagedProcess | None = None
) -> None:
    """Wait until ``host:port`` accepts connections; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    what = f"{host}:{port} to accept connections"
    while True:
        _check_alive(process, what)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    detail = f"\n{process.describe()}" if process is not None else ""
    raise StartupError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """Status and body of a GET, any status (no exception for 4xx/5xx)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_for_http(
    url: str,
    *,
    timeout: float = 20.0,
    status: int = 200,
    body_contains: str | None = None,
    process: ManagedProcess | None = None,
) -> str:
    """Wait until GET ``url`` answers ``status`` (and contains ``body_contains``); return the body."""
    deadline = time.monotonic() + timeout
    what = f"GET {url} to answer {status}"
    last = "no answer"
    while True:
        _check_alive(process, what)
        try:
            code, body = http_get(url, timeout=1.0)
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if code == status and (body_contains is None or body_contains in body):
                return body
            last = f"{code} {body[:300]!r}"
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    detail = f"\n{process.describe()}" if process is not None else ""
    raise StartupError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}{detail}")


def wait_for_log(process: ManagedProcess, text: str, *, timeout: float = 20.0) -> None:
    """Wait until ``text`` appears in the process's log; fail early if it exits."""
    deadline = time.monotonic() + timeout
    what = f"{text!r} in its log"
    while text not in process.log_text():
        _check_alive(process, what)
        if time.monotonic() > deadline:
            raise StartupError(
                f"timed out after {timeout:.0f}s waiting for {what}\n{process.describe()}"
            )
        time.sleep(0.05)
