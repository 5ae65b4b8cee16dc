"""What the benchmarks share: a site folder, the smtp-sink receiver, bulk seeding, tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, func, select, text
from sqlalchemy import Table as SATable

from mailer.config import Settings
from mailer.models import Delivery, Enrolment, SequenceVersion, Subscriber
from mailer.runtime import Runtime
from tests.services import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
SEQUENCE = "web-business"
STEP = "lesson-1"
NEXT_STEP = "lesson-2"
ZONE = "Asia/Tokyo"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
CHUNK = 20_000

console = Console(width=130, highlight=False)  # fixed: the tables read the same in a log file


class CheckFailedError(RuntimeError):
    """A correctness check failed: the figures beside it mean nothing."""


# --- the site ---------------------------------------------------------------------------------


def make_home(folder: Path) -> Path:
    """A copy of the repository's site with quiet hours off, so night-time runs send at once."""
    home = folder / "home"
    home.mkdir(parents=True)
    shutil.copytree(REPO / "sequences", home / "sequences")
    shutil.copytree(REPO / "templates", home / "templates")
    site = (REPO / "mailer.toml").read_text(encoding="utf-8")
    if "[quiet_hours]\n" not in site:
        raise CheckFailedError("mailer.toml has no [quiet_hours] table to switch off")
    site = site.replace("[quiet_hours]\n", "[quiet_hours]\nenabled = false\n", 1)
    (home / "mailer.toml").write_text(site, encoding="utf-8")
    return home


def make_settings(home: Path, database_url: str, smtp_port: int) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init-only argument
        database_url=database_url,
        home=home,
        smtp_url=f"smtp://127.0.0.1:{smtp_port}",
        secret_key="bench",
        base_url="http://localhost:8000",
        broker_url="",  # none of the caller's MAILER_* environment: no Redis rate limits, no broker
        redis_url="",
    )


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def fresh_runtime(settings: Settings) -> Runtime:
    """A runtime on a new, empty schema; quiet hours must be off in its site."""
    runtime = Runtime(settings)
    if runtime.site.quiet_hours is not None:
        raise CheckFailedError("quiet hours are still on in the benchmark's site")
    runtime.upgrade_db()
    return runtime


# --- the receiver -----------------------------------------------------------------------------


@dataclass
class SmtpSink:
    """Postfix's smtp-sink on a loopback port: accepts and discards, counts what it received."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def counter_file(self) -> Path:
        return self.folder / "smtp-sink.out"

    def start(self) -> None:
        if not Path(SMTP_SINK).exists():
            raise CheckFailedError(f"{SMTP_SINK} is missing: scripts/install-bench-deps installs it")
        # -c: running counters on stdout; -u: it refuses to run as root without dropping privileges.
        # PIPELINING and 8BITMIME are announced by default; 4096 is the listen backlog.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        with self.counter_file.open("wb") as out:
            self.process = subprocess.Popen(
                [SMTP_SINK, "-c", *user, "-m", "1024", f"127.0.0.1:{self.port}", "4096"],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        wait_for_port(self.port)

    def received(self) -> int:
        """Messages received since start (the last `mesg=` counter it printed)."""
        with self.counter_file.open("rb") as f:
            f.seek(max(0, self.counter_file.stat().st_size - 256))
            found = re.findall(rb"mesg=(\d+)", f.read())
        return int(found[-1]) if found else 0

    def wait_for(self, total: int, timeout: float = 10.0) -> int:
        """The counter once it reaches `total` (it is written as sessions end), or as it stands."""
        deadline = time.monotonic() + timeout
        count = self.received()
        while count < total and time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.received()
        return count

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@contextmanager
def smtp_sink(folder: Path) -> Iterator[SmtpSink]:
    sink = SmtpSink(folder)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


# --- seeding ----------------------------------------------------------------------------------


def bulk_insert(
    engine: Engine, table: SATable, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """Insert many rows fast: COPY on PostgreSQL, an executemany in chunks on SQLite."""
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for row in rows:
                    copy.write_row(row)
            if "id" in table.c:  # ids given explicitly: move the serial past them for later rows
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"(SELECT COALESCE(MAX(id), 1) FROM {table.name}))"
                )
            raw.commit()
        finally:
            raw.close()
        return
    # SQLite: the driver's executemany in one transaction per chunk, each value converted by its
    # column's type as the ORM would store it (cached: the rows share most of their datetimes).
    processors = [
        (i, lru_cache(maxsize=4096)(processor))
        for i, name in enumerate(columns)
        if (processor := table.c[name].type.bind_processor(engine.dialect)) is not None
    ]
    statement = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    chunk: list[tuple[Any, ...]] = []
    with engine.begin() as conn:
        for row in rows:
            if processors:
                values = list(row)
                for i, processor in processors:
                    values[i] = processor(values[i])
                row = tuple(values)  # noqa: PLW2901 (the converted row replaces the given one)
            chunk.append(row)
            if len(chunk) >= CHUNK:
                conn.exec_driver_sql(statement, chunk)
                chunk = []
        if chunk:
            conn.exec_driver_sql(statement, chunk)


SUBSCRIBER_COLUMNS = ("id", "email", "email_key", "name", "timezone", "state", "created_at", "confirmed_at")
ENROLMENT_COLUMNS = (
    "id",
    "subscriber_id",
    "sequence_id",
    "state",
    "created_at",
    "entered_at",
    "shift_days",
    "next_step_id",
    "next_due_at",
)
DELIVERY_COLUMNS = (
    "id",
    "subscriber_id",
    "kind",
    "enrolment_id",
    "sequence_id",
    "step_id",
    "state",
    "due_at",
    "available_at",
    "attempts",
    "created_at",
)


def seed_subscribers(engine: Engine, n: int, now: datetime) -> None:
    """`n` confirmed readers, ids 1..n, with unique addresses in Tokyo."""
    joined = now - timedelta(days=2)
    bulk_insert(
        engine,
        Subscriber.__table__,  # type: ignore[arg-type]
        SUBSCRIBER_COLUMNS,
        (
            (
                i,
                f"reader{i}@example.com",
                f"reader{i}@example.com",
                f"読者{i}",
                ZONE,
                "confirmed",
                joined,
                joined,
            )
            for i in range(1, n + 1)
        ),
    )


def seed_due_deliveries(engine: Engine, n: int, now: datetime) -> None:
    """`n` readers each with lesson-1 pending in the ledger, due a minute ago.

    The cursor is as enrolment.plan leaves it: it names the step in the ledger, and next_due_at is
    NULL while that row is in flight; sending it moves the cursor on to lesson-2.
    """
    seed_subscribers(engine, n, now)
    entered = now - timedelta(days=1)
    due = now - timedelta(minutes=1)
    bulk_insert(
        engine,
        Enrolment.__table__,  # type: ignore[arg-type]
        ENROLMENT_COLUMNS,
        ((i, i, SEQUENCE, "active", entered, entered, 0, STEP, None) for i in range(1, n + 1)),
    )
    bulk_insert(
        engine,
        Delivery.__table__,  # type: ignore[arg-type]
        DELIVERY_COLUMNS,
        ((i, i, "step", i, SEQUENCE, STEP, "pending", due, due, 0, due) for i in range(1, n + 1)),
    )
    analyze(engine)


def mark_applied(engine: Engine, runtime: Runtime, now: datetime) -> None:
    """Record every seminar's fingerprint as applied, as a running installation has it."""
    bulk_insert(
        engine,
        SequenceVersion.__table__,  # type: ignore[arg-type]
        ("sequence_id", "fingerprint", "applied_at"),
        ((s.id, s.fingerprint, now) for s in runtime.catalog().sequences.values()),
    )


def analyze(engine: Engine) -> None:
    """Fresh planner statistics after a bulk load, as autovacuum or a nightly job would give."""
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()


def ledger_states(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(Delivery.state, func.count()).group_by(Delivery.state))
        return dict(rows.all())


# --- worker processes -------------------------------------------------------------------------


@dataclass
class Worker:
    """A benchmark subprocess: it says `ready`, waits for `go`, works, and prints one JSON line."""

    process: subprocess.Popen[str]

    @classmethod
    def start(cls, module: str, args: Sequence[str], stderr: IO[bytes] | int) -> Worker:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
        )
        return cls(process)

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            raise CheckFailedError(f"a worker did not start (said {line!r}, exit {self.process.wait()})")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        code = self.process.wait()
        if code != 0 or not line:
            raise CheckFailedError(f"a worker failed (exit {code})")
        return dict(json.loads(line))


def run_workers(
    module: str, per_worker_args: Sequence[Sequence[str]], log: Path
) -> tuple[float, list[dict[str, Any]]]:
    """Start the workers, let them all get ready, then time from `go` until every one is done."""
    with log.open("ab") as stderr:
        workers = [Worker.start(module, args, stderr) for args in per_worker_args]
        try:
            for w in workers:
                w.wait_ready()
            started = time.perf_counter()
            for w in workers:
                w.go()
            results = [w.result() for w in workers]
            elapsed = time.perf_counter() - started
        finally:
            for w in workers:
                if w.process.poll() is None:
                    w.process.kill()
                    w.process.wait()
    return elapsed, results


def ready_and_wait() -> None:
    """The worker side of the handshake: startup is done; block until the benchmark says go."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(2)


def process_peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident set size (VmHWM), in MB.

    Not `getrusage().ru_maxrss`: Linux carries the maximum across execve, and a child spawned with
    vfork inherits its parent's peak there, so a small worker would report the benchmark's own size.
    """
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- figures and tables -----------------------------------------------------------------------


@dataclass
class Figure:
    """One row of a table: the rounds measured, and what they agree on."""

    label: str
    rates: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # incidents and shortened rows, printed below

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")

    @property
    def peak_rss(self) -> float:
        return max(self.rss) if self.rss else float("nan")


def bench_main(module: str, doc: str | None, title: str, body: Callable[[bool], None]) -> int:
    """A benchmark's command line: `--quick`, the header, `body(quick)`, a failed check as exit 1,
    then the time it took and the command that gives the same run."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help="small sizes, to work on the benchmark")
    quick = parser.parse_args().quick
    header(title)
    started = time.monotonic()
    try:
        body(quick)
    except CheckFailedError as exc:
        console.print(f"[red]CHECK FAILED:[/red] {exc}")
        return 1
    console.print(f"{module.rsplit('.', 1)[-1]} benchmark: {time.monotonic() - started:.0f} s")
    console.print(f"command: uv run --frozen python -m {module}{' --quick' if quick else ''}")
    return 0


def header(title: str) -> None:
    console.print(f"[bold]{title}[/bold]")
    console.print(
        f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z} · {os.cpu_count()} cores · "
        f"{platform.python_implementation()} {platform.python_version()} · {platform.platform(terse=True)}"
    )
    busy = cpu_busy()
    warning = " [red](other work shares the cores: expect low, noisy figures)[/red]" if busy > 0.2 else ""
    console.print(f"CPU busy before the run: {busy:.0%} of {os.cpu_count()} cores{warning}")


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of the machine's CPU time not idle over a short sample (/proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [
            int(v) for v in Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
        ]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total, idle = sample()
    time.sleep(seconds)
    total2, idle2 = sample()
    return 1 - (idle2 - idle) / max(1, total2 - total)


def new_table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    return table


def verdict(met: bool) -> str:
    return "goal met" if met else "goal missed"


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_mb(value: float) -> str:
    return f"{value:,.1f}"


def fmt_rounds(values: Iterable[float]) -> str:
    return " / ".join(f"{v:,.0f}" for v in values)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, to show beside a failed check."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
