"""The production stack as real processes: docker-compose.yml's commands, started natively.

`mailer web`, three `mailer worker` and two `mailer beat` over PostgreSQL and Redis, sending to the
aiosmtpd sink of the test process. A three-step seminar whose steps are all due on the day of
entry lets a reader go through it in seconds; what arrived is counted per reader and step.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import httpx
from sqlalchemy import func, insert, select

from mailer.db import session_scope
from mailer.models import Delivery, Enrolment, Subscriber
from mailer.runtime import Runtime
from tests.compose import compose_commands
from tests.conftest import SECRET, Sink, make_settings
from tests.services import PostgresServer, RedisServer, free_port

STEPS = ("welcome", "second", "third")

CHAOS_SEMINAR = """\
title = "Chaos"
timezone = "UTC"
send_at = "00:00"

[[steps]]
id = "welcome"
day = 0

[[steps]]
id = "second"
day = 0
at = "00:00"

[[steps]]
id = "third"
day = 0
at = "00:00"
"""

# Fast clocks so faults resolve within a test: ticks every second, a lapsed claim after 15 s,
# retries after 1-3 s. No quiet hours: the test runs at any hour.
CHAOS_DELIVERY = """
[delivery]
batch_size = 100
commit_every = 10
lease = "15s"
max_attempts = 8
retry_base = "1s"
retry_cap = "3s"
tick = "1s"
max_lateness = "6h"

[quiet_hours]
enabled = false

[limits]
relay = []
"""


def write_chaos_site(home: Path) -> None:
    site = home / "mailer.toml"
    kept, keep = [], True
    for line in site.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):  # a table header: keep the tables CHAOS_DELIVERY does not replace
            keep = not line.strip("[] ").startswith(("quiet_hours", "delivery", "limits"))
        if keep:
            kept.append(line)
    site.write_text("\n".join(kept) + CHAOS_DELIVERY, encoding="utf-8")
    (home / "sequences" / "chaos.toml").write_text(CHAOS_SEMINAR, encoding="utf-8")
    for step in STEPS:
        folder = home / "templates" / "mail" / "chaos" / step
        folder.mkdir(parents=True)
        (folder / "subject.txt").write_text(f"chaos-{step}", encoding="utf-8")
        (folder / "body.txt").write_text(f"{{{{ name }}}}さん、{step} です。", encoding="utf-8")


def seed_readers(runtime: Runtime, count: int, prefix: str = "r") -> list[int]:
    """Confirmed readers whose welcome is due now; the running scheduler plans it. Their ids."""
    now = datetime.now(UTC)
    keys = [f"{prefix}{n}@example.com" for n in range(count)]
    with session_scope(runtime.sessions) as session:
        session.execute(
            insert(Subscriber),
            [
                {
                    "email": k,
                    "email_key": k,
                    "name": "",
                    "state": "confirmed",
                    "created_at": now,
                    "confirmed_at": now,
                }
                for k in keys
            ],
        )
        ids = dict(
            session.execute(
                select(Subscriber.email_key, Subscriber.id).where(Subscriber.email_key.in_(keys))
            ).all()
        )
        session.execute(
            insert(Enrolment),
            [
                {
                    "subscriber_id": ids[k],
                    "sequence_id": "chaos",
                    "state": "active",
                    "created_at": now,
                    "entered_at": now,
                    "shift_days": 0,
                    "next_step_id": STEPS[0],
                    "next_due_at": now,
                }
                for k in keys
            ],
        )
    return [ids[k] for k in keys]


@dataclass
class Tally:
    """What the sink received, per (recipient, step)."""

    counts: collections.Counter[tuple[str, str]]

    @classmethod
    def of(cls, sink: Sink) -> Tally:
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        for received in sink.received:
            start = received.data.index(b"Subject: chaos-") + len(b"Subject: chaos-")
            step = received.data[start : received.data.index(b"\r\n", start)].decode()
            for rcpt in received.recipients:
                counts[rcpt, step] += 1
        return cls(counts)

    def lost(self, addresses: list[str], steps: tuple[str, ...] = STEPS) -> int:
        return sum(1 for a in addresses for s in steps if self.counts[a, s] == 0)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values() if n > 1)


@dataclass
class Stack:
    home: Path
    postgres: PostgresServer
    database_url: str
    redis: RedisServer
    sink: Sink
    logs: Path
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)  # after SIGTERM, by process
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
        return clean | {
            "MAILER_HOME": str(self.home),
            "MAILER_DATABASE_URL": self.database_url,
            "MAILER_BROKER_URL": self.redis.url,
            "MAILER_SMTP_URL": self.sink.url,
            "MAILER_BASE_URL": self.url,
            "MAILER_SECRET_KEY": SECRET,
        }

    @functools.cached_property
    def runtime(self) -> Runtime:
        """The engine as the test process sees it: to seed readers and read the ledger."""
        return Runtime(make_settings(self.home, self.database_url, self.sink.url, base_url=self.url))

    def command(self, service: str) -> list[str]:
        argv = compose_commands()[service]
        if service == "web":  # the compose file listens on 0.0.0.0:8000; here, a free loopback port
            argv = [*argv[: argv.index("--host")], *argv[argv.index("--port") + 2 :]]
            argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        return argv

    def start(self, name: str, service: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self._files.append(log)
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "mailer", *self.command(service)],
            cwd=self.home,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "mailer", *self.command("migrate")],
            cwd=self.home,
            env=self.env,
            check=True,
            capture_output=True,
        )

    def up(self, workers: int = 3, beats: int = 2) -> None:
        self.migrate()
        self.start("web", "web")
        for n in range(workers):
            self.start(f"worker{n}", "worker")
        for n in range(beats):
            self.start(f"beat{n}", "beat")
        wait_until(lambda: self.health()[0] == 200, 60, "the web process to answer /healthz")

    def health(self) -> tuple[int, dict[str, str]]:
        try:
            response = httpx.get(f"{self.url}/healthz", timeout=5)
        except httpx.TransportError:
            return 0, {}
        return response.status_code, response.json()

    def exited(self) -> dict[str, int]:
        """The processes that have ended on their own, with their exit codes."""
        return {
            name: code for name, process in self.processes.items() if (code := process.poll()) is not None
        }

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait(10)

    def down(self) -> dict[str, int | None]:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait(5)
        for file in self._files:
            file.close()
        return codes

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


def ledger_states(runtime: Runtime) -> dict[str, int]:
    with session_scope(runtime.sessions) as session:
        rows = session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
    return {str(state): int(count) for state, count in rows}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took; fails the test naming `what` if it never happened."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


@contextlib.contextmanager
def running(stack: Stack, **sizes: int) -> Iterator[Stack]:
    stack.up(**sizes)
    try:
        yield stack
    finally:
        stack.exit_codes = stack.down()
