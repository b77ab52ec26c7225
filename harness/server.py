"""One server process on a socket this process binds first: the e2e tests' daphnes, the bench's servers.

The socket is bound and listening before the server starts, and handed to it
(daphne's ``--fd``; any server that takes an inherited descriptor): a client
may connect from the first moment and its connection waits in the backlog
until the server accepts, so one health request with a deadline is the whole
start-up wait (no port race, no polling). ``{fd}`` in the command and in the
environment's values stands for the descriptor's number.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
FD = "{fd}"


def daphne_command(application: str, executable: str = sys.executable) -> list[str]:
    """daphne serving ``application`` (``module:attribute``) on the handed socket."""
    return [executable, "-m", "daphne", "--fd", FD, application]


def listening_socket(port: int = 0, backlog: int = 128) -> socket.socket:
    """A socket listening on ``HOST:port`` (0: a free port); SO_REUSEADDR, so a restart gets its port back."""
    listener = socket.socket()
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    return listener


def wait_until(condition: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str) -> Any:
    """Re-check ``condition`` until it is truthy; TimeoutError naming ``what`` after ``timeout``.

    For state only another process holds (its CPU time, say), which announces nothing.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ServerProcess:
    """One server process; ``start`` returns once ``health_path`` answers 200 (or raises with its log).

    Its output (stdout and stderr) goes to ``<log_dir>/<name>-<port>.log``,
    appended to, so a restart on the same port adds to the same log.
    Subclasses may compute ``command()`` and ``environment()`` instead of
    passing ``argv`` and ``env``.
    """

    argv: Sequence[str] = ()
    env: Mapping[str, str] | None = None  # None: this process's environment
    cwd: Path = ROOT
    log_dir: Path | None = None
    name: str = "server"
    health_path: str | None = "/health"
    health_timeout: float = 30
    scheme: str = "http"
    verify: ssl.SSLContext | bool = True  # for the health request over https
    backlog: int = 128
    preexec: Callable[[], None] | None = None  # run in the child before exec (CPU pinning, limits)
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def command(self) -> list[str]:
        """The server's argv, read at each start (``{fd}``: the handed socket)."""
        return list(self.argv)

    def environment(self) -> dict[str, str]:
        """The server's environment, read at each start: ``env``, or this process's own."""
        return dict(os.environ if self.env is None else self.env)

    def start(self, log_dir: Path | None = None, port: int | None = None) -> Self:
        """Start on ``port`` (a restart keeps its address), else on a free one; logs under ``log_dir``."""
        self.log_dir = log_dir or self.log_dir
        if self.log_dir is None:
            raise ValueError("a server needs a log_dir")
        with listening_socket(port or 0, self.backlog) as listener:
            self.port = listener.getsockname()[1]
            self.log_path = self.log_dir / f"{self.name}-{self.port}.log"
            fd = str(listener.fileno())
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [part.replace(FD, fd) for part in self.command()],
                    cwd=self.cwd,
                    env={key: value.replace(FD, fd) for key, value in self.environment().items()},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=[listener.fileno()],
                    preexec_fn=self.preexec,
                )
        problem = self.health_problem()
        if problem:
            self.stop()
            raise RuntimeError(f"{self.name} did not become healthy ({problem}):\n{self.log()[-5000:]}")
        return self

    def health_problem(self) -> str | None:
        """One request to ``health_path`` with a deadline: None if it answers 200, else what went wrong."""
        if self.health_path is None:
            return None
        try:
            response = httpx.get(
                f"{self.http_url}{self.health_path}", timeout=self.health_timeout, verify=self.verify
            )
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        return None if response.status_code == 200 else f"{self.health_path} answered {response.status_code}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if still running 10 s later."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        """Everything the server has written to its log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    # --- what /proc says about it (Linux; no psutil) ---------------------------------------------

    def status(self) -> dict[str, int]:
        """VmRSS (KiB) and thread count of the server."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in {"VmRSS", "Threads"}:
                fields[key] = int(value.split()[0])
        return {"rss_kib": fields["VmRSS"], "threads": fields["Threads"]}

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        parts = stat.rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def wait_quiet(self, *, idle: float = 0.5, timeout: float = 60) -> None:
        """Wait until the server used under 2% CPU during ``idle`` seconds: it has handled its backlog."""
        state = {"cpu": self.cpu_seconds(), "at": time.monotonic()}

        def quiet() -> bool:
            now = time.monotonic()
            if now - state["at"] < idle:
                return False
            cpu = self.cpu_seconds()
            used, state["cpu"], state["at"] = cpu - state["cpu"], cpu, now
            return used < 0.02 * idle

        wait_until(quiet, timeout=timeout, interval=idle / 5, what=f"{self.name} to go quiet")
