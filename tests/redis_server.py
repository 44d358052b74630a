"""A real ``redis-server`` for tests: started on a free loopback port, stoppable and
restartable on the same port (to test outages and recovery), and a helper that
builds a three-node Redis Cluster on loopback.

    with RedisServer(log_dir) as server:
        url = server.url            # redis://127.0.0.1:<port>/0
        server.stop()               # Redis goes away mid-test
        server.start()              # and comes back, empty, on the same port
        server.pause(); server.resume()   # a frozen server (SIGSTOP/SIGCONT)
        server.command_calls("evalsha")   # from INFO commandstats
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.harness.ports import LOOPBACK, free_port
from tests.harness.processes import ManagedProcess, StartupError, start_process, wait_for_tcp

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
CLUSTER_BUS_OFFSET = 10_000  # Redis Cluster nodes also listen on port + 10000


def redis_available() -> bool:
    return Path(REDIS_SERVER).exists() and Path(REDIS_CLI).exists()


class RedisServer:
    """One ``redis-server --save '' --appendonly no`` on 127.0.0.1."""

    def __init__(
        self,
        log_dir: Path | None = None,
        *,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        name: str = "redis",
    ) -> None:
        self.port = port or free_port()
        self.host = LOOPBACK
        self.name = name
        self._extra_args = extra_args
        self._own_dir = log_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="redis-")) if log_dir is None else log_dir
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.alive():
            return
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            *self._extra_args,
        ]  # fmt: skip
        self.process = start_process(self.name, argv, log_dir=self.dir)
        wait_for_tcp(self.host, self.port, timeout=timeout, process=self.process)
        # Accepting connections is not yet answering commands (loading, cluster init).
        deadline = time.monotonic() + timeout
        while self.command("PING") != "PONG":
            if time.monotonic() > deadline:
                raise StartupError(f"redis on {self.port} does not answer PING\n{self.describe()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server at once (like a crash): clients see the connection drop."""
        if self.process is not None:
            self.process.kill()
            self.process.stop()
            self.process = None
        # The port must be free again before a restart binds it.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((self.host, self.port)) != 0:
                    return
            time.sleep(0.02)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def command(self, *args: str) -> str:
        """Run one command with redis-cli; its raw output, stripped."""
        done = subprocess.run(
            [REDIS_CLI, "-h", self.host, "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.strip()

    def command_calls(self, command: str) -> int:
        """How many times ``command`` ran since start or ``CONFIG RESETSTAT``."""
        stats = self.command("INFO", "commandstats")
        prefix = f"cmdstat_{command.lower()}:calls="
        for line in stats.splitlines():
            if line.startswith(prefix):
                return int(line[len(prefix) :].split(",", 1)[0])
        return 0

    def describe(self) -> str:
        return self.process.describe() if self.process is not None else f"{self.name}: not running"

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise StartupError("no free port with a free cluster bus port")


def _cluster_args(node_dir: Path) -> tuple[str, ...]:
    config = str(node_dir / "nodes.conf")
    return (
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        config,
        "--cluster-node-timeout",
        "2000",
    )


class RedisClusterServers:
    """Three cluster-enabled masters on loopback, joined by ``redis-cli --cluster create``."""

    def __init__(self, log_dir: Path | None = None, size: int = 3) -> None:
        self._own_dir = log_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="redis-cluster-")) if log_dir is None else log_dir
        self.nodes: list[RedisServer] = []
        for index in range(size):
            node_dir = self.dir / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(
                RedisServer(
                    node_dir,
                    port=_cluster_port(),
                    extra_args=_cluster_args(node_dir),
                    name=f"redis-cluster-{index}",
                )
            )

    @property
    def url(self) -> str:
        hosts = ",".join(f"{node.host}:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"{node.host}:{node.port}" for node in self.nodes]
        done = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise StartupError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        deadline = time.monotonic() + timeout
        while any("cluster_state:ok" not in node.command("CLUSTER", "INFO") for node in self.nodes):
            if time.monotonic() > deadline:
                raise StartupError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def command_calls(self, command: str) -> int:
        return sum(node.command_calls(command) for node in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServers:
        try:
            self.start()
        except BaseException:
            self.close()  # nodes already started must not outlive a failed start
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
