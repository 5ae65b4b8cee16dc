"""The sign-up rush: `mailer run` (the embedded default) against a bare FastAPI form on SQLite.

wrk (Debian's package) posts the form over 16 connections, every request a new address, first to
the baseline (`bench.bare_signup`: one INSERT and a short page), then to the engine as a newcomer
runs it, with its worker sending each confirmation to Postfix's smtp-sink. Then the same against
PostgreSQL + Redis with `mailer web --workers 2` and one `mailer worker`. Prints requests/s,
p50/p99, the ratio to the baseline, and how long each confirmation took from sign-up to SMTP.
The per-client limit is lifted in the benchmark's own copy of the site file, nowhere else.
Run from the repository root: `uv run --frozen python -m bench.signup` (`make bench` does).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.common import (
    REPO,
    CheckFailedError,
    SmtpSink,
    bench_main,
    console,
    make_home,
    new_table,
    smtp_sink,
    sqlite_url,
    tail,
    verdict,
)
from tests.services import free_port, postgres_server, redis_server, wait_for_port

WRK = "/usr/bin/wrk"
GOAL_RATIO = 0.5  # of the bare form's requests/s
GOAL_P99_MS = 100.0
GOAL_CONFIRM_S = 2.0  # from sign-up to the confirmation handed to SMTP, during the rush

# Each wrk thread numbers its own addresses; `done` prints the figures as one JSON line.
WRK_SCRIPT = """
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  prefix = args[1]
end
function request()
  counter = counter + 1
  local body = "email=" .. prefix .. "-" .. tid .. "-" .. counter .. "%40rush.example.jp"
    .. "&name=&sequence=&timezone=Asia%2FTokyo"
  return wrk.format("POST", "/subscribe",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "seconds": %f, "non2xx": %d, "errors": %d, "p50": %f, "p99": %f}\\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


@dataclass(frozen=True)
class Rush:
    connections: int = 16
    threads: int = 2
    seconds: int = 15
    warmup: int = 3


QUICK = Rush(seconds=5, warmup=1)


@dataclass(frozen=True)
class Load:
    """What wrk saw."""

    requests: int
    seconds: float
    non2xx: int
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Confirmations:
    """What the ledger holds once the rush is over: one confirmation per new address, and when
    each was handed to SMTP after its sign-up."""

    subscribers: int
    sent: int
    lags: list[float]

    @property
    def within_goal(self) -> int:
        return sum(1 for lag in self.lags if lag <= GOAL_CONFIRM_S)


def run_wrk(port: int, script: Path, prefix: str, rush: Rush, seconds: int) -> Load:
    if not Path(WRK).exists():
        raise CheckFailedError(f"{WRK} is missing: scripts/install-bench-deps installs it")
    done = subprocess.run(
        [
            WRK,
            f"-t{rush.threads}",
            f"-c{rush.connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
            "--",
            prefix,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return Load(
        requests=figures["requests"],
        seconds=figures["seconds"],
        non2xx=figures["non2xx"],
        errors=figures["errors"],
        p50_ms=figures["p50"],
        p99_ms=figures["p99"],
    )


def rush_on(port: int, script: Path, rush: Rush) -> Load:
    """A short warm-up (imports, caches, the first connections), then the measured rush."""
    run_wrk(port, script, "warm", rush, rush.warmup)
    load = run_wrk(port, script, "rush", rush, rush.seconds)
    if load.non2xx or load.errors:
        raise CheckFailedError(f"{load.non2xx} answers were not 2xx and {load.errors} failed")
    return load


@contextmanager
def server(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[None]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        try:
            wait_for_port(port, timeout=60)
        except TimeoutError as exc:
            raise CheckFailedError(f"{command[2:4]} did not start:\n{tail(log)}") from exc
        yield
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bare_round(folder: Path, script: Path, rush: Rush) -> Load:
    port = free_port()
    env = {**os.environ, "BARE_SIGNUP_DB": str(folder / "bare.db")}
    command = [sys.executable, "-m", "uvicorn", "bench.bare_signup:app", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    with server(command, env, port, folder / "bare.log"):
        return rush_on(port, script, rush)


def rush_home(folder: Path) -> Path:
    """The benchmark's site: quiet hours off, and the per-client limit lifted (one client here)."""
    home = make_home(folder)
    site = home / "mailer.toml"
    text_ = site.read_text(encoding="utf-8")
    if "per_client_per_hour = " not in text_:
        raise CheckFailedError("mailer.toml has no per_client_per_hour to lift")
    lifted = "per_client_per_hour = 100000000 #"
    site.write_text(text_.replace("per_client_per_hour = ", lifted, 1), encoding="utf-8")
    return home


def mailer_env(home: Path, database_url: str, sink: SmtpSink, broker_url: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(
        MAILER_HOME=str(home),
        MAILER_DATABASE_URL=database_url,
        MAILER_SMTP_URL=f"smtp://127.0.0.1:{sink.port}",
        MAILER_SECRET_KEY="bench",
        MAILER_BROKER_URL=broker_url,
    )
    return env


def confirmations(database_url: str, timeout: float = 60.0) -> Confirmations:
    """Wait until every sign-up's confirmation went (or the timeout), then read the lags."""
    engine = create_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as db:
                subscribers = db.scalar(text("SELECT count(*) FROM subscribers")) or 0
                rows = db.execute(
                    text("SELECT created_at, sent_at FROM deliveries WHERE kind = 'confirm'")
                ).all()
            sent = [row for row in rows if row.sent_at is not None]
            if len(sent) >= subscribers or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        engine.dispose()
    lags = [_seconds(row.sent_at, row.created_at) for row in sent]
    return Confirmations(subscribers, len(sent), lags)


def _seconds(later: object, earlier: object) -> float:
    return (_naive(later) - _naive(earlier)).total_seconds()


def _naive(value: object) -> datetime:
    # SQLite hands back text, PostgreSQL datetimes; both are UTC.
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)


def embedded_round(folder: Path, script: Path, rush: Rush, sink: SmtpSink) -> tuple[Load, Confirmations]:
    """`mailer run` as the README starts it: SQLite, the embedded broker, one process."""
    home = rush_home(folder / "embedded")
    url = sqlite_url(home / "mailer.db")
    port = free_port()
    command = [sys.executable, "-m", "mailer", "run", "--port", str(port)]
    with server(command, mailer_env(home, url, sink), port, folder / "embedded.log"):
        load = rush_on(port, script, rush)
        return load, confirmations(url)


def postgres_round(folder: Path, script: Path, rush: Rush, sink: SmtpSink) -> tuple[Load, Confirmations]:
    """Production's shape: PostgreSQL and Redis, `mailer web --workers 2` and one worker."""
    home = rush_home(folder / "postgres")
    with postgres_server() as pg, redis_server() as redis, ExitStack() as stack:
        url = pg.new_database()
        env = mailer_env(home, url, sink, broker_url=redis.url)
        port = free_port()
        web = [sys.executable, "-m", "mailer", "web", "--port", str(port), "--workers", "2"]
        stack.enter_context(server(web, env, port, folder / "postgres-web.log"))
        worker = subprocess.Popen(
            [sys.executable, "-m", "mailer", "worker"],
            cwd=REPO,
            env=env,
            stdout=(folder / "postgres-worker.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(worker.wait, 20)
        stack.callback(worker.terminate)
        load = rush_on(port, script, rush)
        return load, confirmations(url)


def report(bare: Load, rows: list[tuple[str, Load, Confirmations]]) -> None:
    table = new_table(
        "Sign-up rush (wrk, 16 connections, every request a new address)",
        "server",
        "requests/s",
        "× bare",
        "p50 ms",
        "p99 ms",
        "confirmations sent",
        f"within {GOAL_CONFIRM_S:.0f} s",
        "lag p99 s",
    )
    table.add_row(
        "bare FastAPI + SQLite (baseline)",
        f"{bare.rate:,.0f}",
        "",
        f"{bare.p50_ms:.1f}",
        f"{bare.p99_ms:.1f}",
    )
    for label, load, sent in rows:
        lag99 = statistics.quantiles(sent.lags, n=100)[98] if len(sent.lags) > 1 else float("nan")
        table.add_row(
            label,
            f"{load.rate:,.0f}",
            f"{load.rate / bare.rate:.2f}",
            f"{load.p50_ms:.1f}",
            f"{load.p99_ms:.1f}",
            f"{sent.sent:,} / {sent.subscribers:,}",
            f"{sent.within_goal / max(1, sent.sent):.1%}",
            f"{lag99:.2f}",
        )
    console.print(table)
    _, embedded, sent = rows[0]
    ratio_ok = embedded.rate >= GOAL_RATIO * bare.rate
    p99_ok = embedded.p99_ms < GOAL_P99_MS
    confirm_ok = sent.within_goal == sent.sent == sent.subscribers
    console.print(
        f"embedded: ≥ {GOAL_RATIO} × bare: {verdict(ratio_ok)}; p99 < {GOAL_P99_MS:.0f} ms: "
        f"{verdict(p99_ok)}; every confirmation within {GOAL_CONFIRM_S:.0f} s: {verdict(confirm_ok)}"
    )
    for label, _, sent in rows:
        if sent.sent != sent.subscribers:
            raise CheckFailedError(f"{label}: {sent.subscribers - sent.sent} confirmations never went")


def signup_benchmark(quick: bool) -> None:
    rush = QUICK if quick else Rush()
    folder = Path(tempfile.mkdtemp(prefix="mailer-bench-signup-"))
    try:
        script = folder / "rush.lua"
        script.write_text(WRK_SCRIPT, encoding="ascii")
        with smtp_sink(folder) as sink:
            bare = bare_round(folder, script, rush)
            rows = [("mailer run (SQLite, embedded)", *embedded_round(folder, script, rush, sink))]
            rows.append(("PostgreSQL, web --workers 2", *postgres_round(folder, script, rush, sink)))
        report(bare, rows)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    return bench_main("bench.signup", __doc__, "mailer sign-up benchmark", signup_benchmark)


if __name__ == "__main__":
    sys.exit(main())
