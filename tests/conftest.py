"""Shared fixtures: a site folder, real PostgreSQL and Redis, an aiosmtpd sink, a live server."""

from __future__ import annotations

import contextlib
import email
import email.policy
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from aiosmtpd.controller import Controller

from mailer.config import Settings
from mailer.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
SECRET = "test-secret-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A copy of the repository's site (mailer.toml, sequences, templates) that a test may edit."""
    target = tmp_path / "home"
    target.mkdir()
    shutil.copy(REPO / "mailer.toml", target / "mailer.toml")
    shutil.copytree(REPO / "sequences", target / "sequences")
    shutil.copytree(REPO / "templates", target / "templates")
    return target


# --- PostgreSQL: one server per test session, one fresh database per test ---------------------


@dataclass
class PostgresServer:
    host: str
    port: int
    counter: Iterator[int] = field(default_factory=itertools.count)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(self.counter)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{name}"


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: `make test` installs it (scripts/install-test-deps)")
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL on a free loopback port in a temporary folder (as `postgres`: it refuses root)."""
    bindir = _pg_bin()
    # Not under pytest's tmp folder: that is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="mailer-pg-"))
    data = base / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_postgres,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(
        [
            *as_postgres,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            options,
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer("127.0.0.1", port)
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store and delivery test runs on both databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mailer.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis on a free loopback port, nothing saved to disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("Redis is not installed: `make test` installs it (scripts/install-test-deps)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            break
        time.sleep(0.02)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


# --- SMTP: a real aiosmtpd server in this process, with faults on demand -----------------------


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


class SinkHandler:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.connections = 0
        # A fault answers instead of accepting: called with the recipient, returns a reply or None.
        self.rcpt_fault: Callable[[str], str | None] = lambda _rcpt: None
        self.data_fault: Callable[[list[str]], str | None] = lambda _rcpts: None
        self.lock = threading.Lock()

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.connections += 1
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.rcpt_fault(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self.data_fault(list(envelope.rcpt_tos))
        if reply:
            return reply
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 Message accepted"


class Sink:
    """What the relay received, parsed as a mail client would."""

    def __init__(self, handler: SinkHandler, port: int) -> None:
        self.handler = handler
        self.port = port
        self.url = f"smtp://127.0.0.1:{port}"

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def to(self, address: str) -> list[EmailMessage]:
        return [r.message for r in self.received if address in r.recipients]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return self.received
            time.sleep(0.05)
        raise AssertionError(f"expected {count} messages within {timeout} s, got {len(self.received)}")

    def clear(self) -> None:
        with self.handler.lock:
            self.handler.received.clear()


@pytest.fixture
def sink() -> Iterator[Sink]:
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=True)
    controller.start()
    try:
        yield Sink(handler, port)
    finally:
        controller.stop()


# --- The engine -------------------------------------------------------------------------------


def make_settings(home: Path, database_url: str, smtp_url: str, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        home=home,
        smtp_url=smtp_url,
        secret_key=SECRET,
        **({"base_url": f"http://127.0.0.1:{free_port()}"} | overrides),
    )


@pytest.fixture
def runtime(home: Path, database_url: str, sink: Sink) -> Iterator[Runtime]:
    """The engine over a fresh database, sending to the aiosmtpd sink."""
    rt = Runtime(make_settings(home, database_url, sink.url))
    rt.upgrade_db()
    try:
        yield rt
    finally:
        rt.engine.dispose()


@contextlib.contextmanager
def serve(app: Any, port: int) -> Iterator[str]:
    """A real uvicorn on `port`, in a thread: the pages as a browser gets them."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live(runtime: Runtime) -> Iterator[str]:
    """The web app of `runtime`, served for real at its MAILER_BASE_URL; returns that URL."""
    from mailer.web.app import create_app

    port = int(runtime.settings.base_url.rsplit(":", 1)[1])
    with serve(create_app(runtime), port) as url:
        yield url
