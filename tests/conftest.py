"""Shared fixtures: a site folder, real PostgreSQL and Redis, an aiosmtpd sink, a live server."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from aiosmtpd.controller import Controller

from mailer.config import Settings
from mailer.logs import MaskAddresses
from mailer.runtime import Runtime
from tests.services import (
    PostgresServer,
    RedisServer,
    ServiceMissingError,
    free_port,
    postgres_server,
    redis_server,
)

REPO = Path(__file__).resolve().parents[1]
SECRET = "test-secret-key"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A copy of the repository's site (mailer.toml, sequences, templates) that a test may edit."""
    target = tmp_path / "home"
    target.mkdir()
    shutil.copy(REPO / "mailer.toml", target / "mailer.toml")
    shutil.copytree(REPO / "sequences", target / "sequences")
    shutil.copytree(REPO / "templates", target / "templates")
    return target


# --- PostgreSQL and Redis: one server each per test session, one fresh database per test ----


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        with postgres_server() as server:
            yield server
    except ServiceMissingError as exc:
        pytest.fail(str(exc))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store and delivery test runs on both databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mailer.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    try:
        with redis_server() as server:
            yield server
    except ServiceMissingError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def redis_url(redis: RedisServer) -> str:
    return redis.url


# --- SMTP: a real aiosmtpd server in this process, with faults on demand -----------------------


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    at: float = field(default_factory=time.monotonic)  # when the sink accepted it

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


class SinkHandler:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.connections = 0
        # A fault answers instead of accepting: called with the recipient, returns a reply or None.
        self.rcpt_fault: Callable[[str], str | None] = lambda _rcpt: None
        self.data_fault: Callable[[list[str]], str | None] = lambda _rcpts: None
        # The connection lost after the content came in, before any reply: the mail is not kept.
        self.hang_up: Callable[[list[str]], bool] = lambda _rcpts: False
        self.delay = 0.0  # seconds each DATA takes: a slower relay, so a send lasts long enough
        self.per_session: int | None = None  # mails a session may carry; then MAIL gets 421
        self.pipelining = True  # announce PIPELINING (RFC 2920), as real relays do
        self.lock = threading.Lock()

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.connections += 1
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self.per_session is not None and getattr(session, "carried", 0) >= self.per_session:
            return "421 4.7.0 too many mails in this session"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.rcpt_fault(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = self.data_fault(list(envelope.rcpt_tos))
        if reply:
            return reply
        if self.hang_up(list(envelope.rcpt_tos)):
            server.transport.close()
            return "451 gone"  # never reaches the client
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        session.carried = getattr(session, "carried", 0) + 1
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


class Clock:
    """A settable "now", shared by the engine (its pages and tasks) and the test: no test depends
    on today's date."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """2026-12-01 10:00 in Tokyo, until the test moves it."""
    return Clock(datetime(2026, 12, 1, 1, 0, tzinfo=UTC))


@pytest.fixture
def runtime(home: Path, database_url: str, sink: Sink, clock: Clock) -> Iterator[Runtime]:
    """The engine over a fresh database, sending to the aiosmtpd sink, on the test's clock."""
    rt = Runtime(make_settings(home, database_url, sink.url), clock=clock)
    rt.upgrade_db()
    try:
        yield rt
    finally:
        rt.close()


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


# --- Logs -------------------------------------------------------------------------------------


class LogLines(logging.Handler):
    """A handler like the one `logs.configure` installs (the masking filter, then a formatter),
    keeping what the engine and the server log while a test runs."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(MaskAddresses())
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    def named(self, prefix: str) -> list[str]:
        """The messages that start with `prefix` (an event name such as `web.error`)."""
        return [r.getMessage() for r in self.records if r.getMessage().startswith(prefix)]


@pytest.fixture
def logged() -> Iterator[LogLines]:
    """What the engine (`mailer.*`) and uvicorn's error log write during the test."""
    handler = LogLines()
    loggers = [logging.getLogger("mailer"), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
