"""A database locked, read-only or away: a 503 "try again" page, /healthz down, nothing lost after."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from mailer.db import session_scope
from mailer.models import Subscriber
from mailer.runtime import PAGE_WAIT, Runtime
from mailer.web.app import create_app
from tests.conftest import Clock, LogLines, Sink, make_settings, serve
from tests.services import PostgresServer

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
postgres_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

BUSY_TITLE = "ただいま混み合っています"
BUSY_BODY = "少し時間をおいてもう一度お試しください。"
HEALTH_DOWN = {"status": "unavailable", "database": "down", "broker": "ok"}
HEALTH_OK = {"status": "ok", "database": "ok", "broker": "ok"}


def sign_up(live: str, email: str) -> httpx.Response:
    return httpx.post(f"{live}/subscribe", data={"email": email}, timeout=60)


def subscribers(rt: Runtime) -> int:
    with session_scope(rt.sessions) as session:
        return session.scalar(select(func.count()).select_from(Subscriber)) or 0


def assert_try_again_page(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Retry-After"] == "10"
    assert BUSY_TITLE in response.text
    assert BUSY_BODY in response.text
    assert "このリンクは使えません" not in response.text
    assert "Traceback" not in response.text


def assert_logged_as_an_outage(logged: LogLines, reason: str) -> None:
    """One warning per failed request naming the route and the error; no traceback, no address."""
    [line] = logged.named("web.unavailable")
    assert "route=/subscribe" in line
    assert f"reason={reason}" in line
    assert "@" not in line
    assert not logged.named("web.error")
    assert not [r for r in logged.records if r.exc_info]


@contextmanager
def sqlite_write_lock(rt: Runtime) -> Iterator[None]:
    """Another process's write transaction, held: what a stuck writer or a long import does."""
    path = rt.engine.url.database
    assert path
    with closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")


@sqlite_only
def test_locked_sqlite_answers_try_again_then_the_same_sign_up_succeeds(
    runtime: Runtime, live: str, logged: LogLines
) -> None:
    """A sign-up on a locked SQLite waits a few seconds, answers the 503 "try again" page, and goes through once the lock is gone."""
    with sqlite_write_lock(runtime):
        started = time.monotonic()
        response = sign_up(live, "taro@example.com")
        waited = time.monotonic() - started
        started = time.monotonic()
        health = httpx.get(f"{live}/healthz", timeout=10)
        health_waited = time.monotonic() - started
    assert_try_again_page(response)
    assert PAGE_WAIT <= waited < PAGE_WAIT + 3  # not the workers' 30 s
    assert (health.status_code, health.json()) == (503, HEALTH_DOWN)
    assert health_waited < 3  # within the compose health check's timeout
    assert_logged_as_an_outage(logged, "SQLITE_BUSY")
    assert subscribers(runtime) == 0

    again = sign_up(live, "taro@example.com")
    assert again.status_code == 200
    assert "確認メールをお送りしました" in again.text
    assert subscribers(runtime) == 1
    health = httpx.get(f"{live}/healthz", timeout=10)
    assert (health.status_code, health.json()) == (200, HEALTH_OK)


@sqlite_only
def test_read_only_sqlite_file_answers_try_again_and_health_says_down(
    runtime: Runtime, home: Path, sink: Sink, clock: Clock, logged: LogLines
) -> None:
    """On a SQLite file that can only be read, a sign-up is the 503 "try again" page and /healthz says the database is down."""
    # Root writes through any file mode (tests run as root), so the file is opened read-only.
    url = f"sqlite:///file:{runtime.engine.url.database}?mode=ro&uri=true"
    reader = Runtime(make_settings(home, url, sink.url), clock=clock)
    try:
        with serve(create_app(reader), int(reader.settings.base_url.rsplit(":", 1)[1])) as live:
            assert httpx.get(f"{live}/", timeout=10).status_code == 200  # reading still works
            response = sign_up(live, "taro@example.com")
            health = httpx.get(f"{live}/healthz", timeout=10)
    finally:
        reader.close()
    assert_try_again_page(response)
    assert (health.status_code, health.json()) == (503, HEALTH_DOWN)
    assert_logged_as_an_outage(logged, "SQLITE_READONLY")
    assert logged.named("healthz.database_down type=OperationalError reason=SQLITE_READONLY")
    assert subscribers(runtime) == 0


def read_only(postgres: PostgresServer, rt: Runtime, *, on: bool) -> None:
    """Set the test database read-only (or back), and end its sessions so that each new one
    takes the setting, as after a failover to a standby: the web pool reconnects (pre-ping)."""
    name = rt.engine.url.database
    with postgres.admin() as admin:
        setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
        admin.execute(f'ALTER DATABASE "{name}" {setting}')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


@postgres_only
def test_read_only_postgresql_answers_try_again_and_health_says_down(
    runtime: Runtime, live: str, postgres: PostgresServer, logged: LogLines
) -> None:
    """With default_transaction_read_only on, a sign-up is the 503 "try again" page and /healthz says the database is down."""
    read_only(postgres, runtime, on=True)
    try:
        response = sign_up(live, "taro@example.com")
        health = httpx.get(f"{live}/healthz", timeout=10)
    finally:
        read_only(postgres, runtime, on=False)
    assert_try_again_page(response)
    assert (health.status_code, health.json()) == (503, HEALTH_DOWN)
    assert_logged_as_an_outage(logged, "sqlstate:25006")
    assert logged.named("healthz.database_down reason=read_only")

    assert sign_up(live, "taro@example.com").status_code == 200
    assert subscribers(runtime) == 1
    assert httpx.get(f"{live}/healthz", timeout=10).status_code == 200


@postgres_only
def test_api_answers_json_503_unavailable_when_postgresql_is_read_only(
    runtime: Runtime, postgres: PostgresServer
) -> None:
    """Under /api/ a write the database refuses is a JSON 503 `unavailable` with Retry-After."""
    app = create_app(runtime)

    def probe() -> dict[str, bool]:
        with runtime.transaction() as session:  # PostgreSQL refuses even an UPDATE of no rows
            session.execute(text("UPDATE subscribers SET name = name"))
        return {"written": True}

    app.add_api_route("/api/probe", probe, methods=["POST"])  # the API's routes are not written yet
    with serve(app, int(runtime.settings.base_url.rsplit(":", 1)[1])) as url:
        read_only(postgres, runtime, on=True)
        try:
            refused = httpx.post(f"{url}/api/probe", timeout=10)
        finally:
            read_only(postgres, runtime, on=False)
        accepted = httpx.post(f"{url}/api/probe", timeout=10)
    assert refused.status_code == 503
    assert refused.headers["Content-Type"] == "application/json"
    assert refused.headers["Retry-After"] == "10"
    assert refused.json()["error"]["code"] == "unavailable"
    assert (accepted.status_code, accepted.json()) == (200, {"written": True})


@postgres_only
def test_stopped_postgresql_answers_try_again_and_health_says_down(
    runtime: Runtime, live: str, postgres: PostgresServer, logged: LogLines
) -> None:
    """With PostgreSQL stopped, a sign-up is the 503 "try again" page and /healthz says down; after a restart it goes through."""
    postgres.stop()
    try:
        response = sign_up(live, "taro@example.com")
        health = httpx.get(f"{live}/healthz", timeout=10)
    finally:
        postgres.start()
    assert_try_again_page(response)
    assert (health.status_code, health.json()) == (503, HEALTH_DOWN)
    [line] = logged.named("web.unavailable")
    assert "route=/subscribe" in line
    assert not [r for r in logged.records if r.exc_info]

    assert sign_up(live, "taro@example.com").status_code == 200
    assert subscribers(runtime) == 1
