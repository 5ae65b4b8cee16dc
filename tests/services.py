"""Real PostgreSQL and Redis servers on free loopback ports in temporary folders.

Shared by the test fixtures and the benchmarks. Each server can be stopped and started again on
the same port (the chaos tests take them away mid-run); Redis comes back empty.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg


class ServiceMissingError(RuntimeError):
    """A server binary is not installed (`make test` installs them: scripts/install-test-deps)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class PostgresServer:
    """PostgreSQL as `postgres` (it refuses root) in a folder of its own; fsync off."""

    bindir: Path
    base: Path
    port: int
    host: str = "127.0.0.1"
    counter: Iterator[int] = field(default_factory=itertools.count)

    @property
    def _as_postgres(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._as_postgres, str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), *args],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses={self.host} -c fsync=off "
            "-c max_connections=300"
        )
        self._pg_ctl("-w", "-l", str(self.base / "log"), "-o", options, "start")

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(self.counter)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{name}"


def _pg_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise ServiceMissingError("PostgreSQL is not installed: `make test` installs it")
    return found[-1].parent


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    # Not under pytest's tmp folder: that is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="mailer-pg-"))
    server = PostgresServer(bindir, base, free_port())
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    subprocess.run(
        [
            *server._as_postgres,
            str(bindir / "initdb"),
            "-D",
            str(base / "data"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class RedisServer:
    """redis-server with nothing saved to disk: a restart comes back empty."""

    binary: str
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceMissingError("Redis is not installed: `make test` installs it")
    folder = Path(tempfile.mkdtemp(prefix="mailer-redis-"))
    server = RedisServer(binary, folder, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
