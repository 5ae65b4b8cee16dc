"""The send benchmark: the smtplib limit, the naive Celery way and the engine, against one smtp-sink.

Run from the repository root: `uv run --frozen python -m bench.send` (`make bench` does; `--quick`
is a smaller run for working on the benchmark itself). Exits 1 when a correctness check fails (a
mail not sent, or not received); a missed performance goal is printed, not an error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from itertools import count
from pathlib import Path

import redis
from rich.markup import escape

from bench import naive
from bench.common import (
    REPO,
    SMTP_SOURCE,
    CheckFailedError,
    Figure,
    SmtpSink,
    bench_main,
    console,
    fmt_mb,
    fmt_rate,
    fmt_rounds,
    fresh_runtime,
    ledger_states,
    make_home,
    make_settings,
    mark_applied,
    new_table,
    process_peak_rss_mb,
    run_workers,
    seed_due_deliveries,
    smtp_sink,
    sqlite_url,
    tail,
    verdict,
)
from bench.tick import make_due, seed_enrolments
from bench.worker import sample_message
from mailer.db import utcnow
from mailer.runtime import Runtime
from tests.services import PostgresServer, postgres_server, redis_server

GOAL_LIMIT, GOAL_NAIVE, GOAL_MB = 0.85, 6.0, 150.0


@dataclass(frozen=True)
class Measured:
    """One round: its rate, the peak RSS of its busiest worker process, and what else happened."""

    rate: float
    rss: float | None = None
    detail: str = ""  # shown in the progress line
    incident: str = ""  # shown under the table


Round = Callable[[], Measured]


@dataclass(frozen=True)
class Sizes:
    rounds: int = 3  # per figure; the median is shown
    source: int = 10_000  # smtp-source, the C client: only to show the sink is not the bottleneck
    limit: int = 20_000
    naive: int = 1_000  # a rate: fewer suffice
    engine: int = 20_000  # due deliveries in the ledger, as the issue asks
    memory: int = 100_000
    # An engine row adds rounds only while it has used less than this, so that a slow engine (a
    # regression, a loaded machine) cannot stretch `make bench` much past its usual 6 minutes.
    engine_budget: float = 45.0
    tick: int = 4_000  # due steps one `mailer tick` plans and sends, timed from process start


QUICK = Sizes(
    rounds=2, source=2_000, limit=2_000, naive=300, engine=2_000, memory=5_000, engine_budget=30.0, tick=1_000
)


@dataclass
class Bench:
    """The services and site every round uses; one smtp-sink receives everything."""

    folder: Path
    home: Path
    sink: SmtpSink
    postgres: PostgresServer
    redis_url: str
    sizes: Sizes
    log: Path
    databases: count[int] = field(default_factory=count)

    def expect_received(self, before: int, n: int) -> None:
        received = self.sink.wait_for(before + n) - before
        if received != n:
            raise CheckFailedError(f"smtp-sink received {received:,} mails, expected {n:,}")


def measure(figure: Figure, one_round: Round, rounds: int, budget: float | None) -> Figure:
    """`rounds` rounds of `one_round`, or fewer once `budget` seconds are used (one at least)."""
    started = time.monotonic()
    for _ in range(rounds):
        m = one_round()
        figure.rates.append(m.rate)
        if m.rss is not None:
            figure.rss.append(m.rss)
        number = len(figure.rates)
        if m.incident:
            figure.notes.append(f"round {number}: {m.incident}")
        memory = f", peak RSS {fmt_mb(m.rss)} MB" if m.rss is not None else ""
        detail = f" ({m.detail})" if m.detail else ""
        console.print(
            f"  {figure.label}: round {number}: {fmt_rate(m.rate)} msgs/s{memory}{detail}", style="dim"
        )
        if m.incident:
            console.print(f"  {figure.label}: round {number}: [red]{escape(m.incident)}[/red]")
        if budget is not None and number < rounds and time.monotonic() - started > budget:
            figure.notes.append(f"{number} of {rounds} rounds: the row's {budget:.0f} s budget was used up")
            break
    return figure


# --- the rounds -------------------------------------------------------------------------------


def source_round(bench: Bench, sessions: int, size: int) -> Measured:
    """Postfix's C client over reused sessions: the ceiling of this sink on this machine."""
    n = bench.sizes.source
    before = bench.sink.received()
    started = time.perf_counter()
    subprocess.run(
        [
            SMTP_SOURCE,
            "-d",
            "-s",
            str(sessions),
            "-m",
            str(n),
            "-l",
            str(size),
            f"127.0.0.1:{bench.sink.port}",
        ],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    bench.expect_received(before, n)
    return Measured(n / elapsed)


def limit_round(bench: Bench, processes: int) -> Measured:
    """Prebuilt bytes, `sendmail` over one connection per process: the limit of Python + smtplib."""
    per = bench.sizes.limit // processes
    base = ["limit", "--home", str(bench.home), "--smtp-port", str(bench.sink.port), "--count", str(per)]
    before = bench.sink.received()
    elapsed, results = run_workers(
        "bench.worker", [[*base, "--offset", str(k * per)] for k in range(processes)], bench.log
    )
    bench.expect_received(before, per * processes)
    return Measured(per * processes / elapsed, max(float(r["rss_mb"]) for r in results))


def naive_round(bench: Bench, processes: int) -> Measured:
    """Celery workers (solo pool: one process each) idle until the queue is full, then switched on."""
    n = bench.sizes.naive
    store = redis.Redis.from_url(bench.redis_url)
    store.flushdb()
    env = {
        **os.environ,
        "BENCH_REDIS_URL": bench.redis_url,
        "BENCH_HOME": str(bench.home),
        "BENCH_SMTP_PORT": str(bench.sink.port),
    }
    names = [f"naive{k}@bench" for k in range(processes)]
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.naive",
        "worker",
        "--pool=solo",
        "--loglevel=WARNING",
    ]
    command += ["-Q", naive.IDLE_QUEUE, "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with bench.log.open("ab") as log:
        workers = [
            subprocess.Popen([*command, "-n", name], cwd=REPO, env=env, stdout=log, stderr=log)
            for name in names
        ]
    try:
        deadline = time.monotonic() + 60
        # Ready, and listening for remote control: a broadcast sent before a worker subscribed to
        # it is lost, and that worker would sit out the round.
        listening: set[str] = set()
        while int(store.get(naive.READY) or 0) < processes or listening != set(names):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise CheckFailedError("the naive Celery workers did not start (see the log)")
            replies = naive.app.control.ping(destination=names, timeout=0.2)
            listening = {name for reply in replies for name in reply}
        with naive.app.producer_or_acquire() as producer:
            for i in range(1, n + 1):
                naive.send.apply_async((i,), queue=naive.WORK_QUEUE, producer=producer)
        before = bench.sink.received()
        started = time.perf_counter()
        replies = naive.app.control.add_consumer(
            naive.WORK_QUEUE, destination=names, reply=True, limit=processes, timeout=5
        )
        if {name for reply in replies for name in reply} != set(names):
            raise CheckFailedError(f"not every naive worker started on the queue: {replies}")
        deadline = time.monotonic() + 600
        while int(store.get(naive.DONE) or 0) < n:
            if time.monotonic() > deadline:
                raise CheckFailedError(
                    f"the naive workers finished {int(store.get(naive.DONE) or 0)} of {n:,}"
                )
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        rss = max(process_peak_rss_mb(w.pid) for w in workers)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
        store.close()
    bench.expect_received(before, n)
    return Measured(n / elapsed, rss)


def engine_round(bench: Bench, database: str, processes: int, n: int) -> Measured:
    """`n` due deliveries in a fresh ledger; the worker processes send them all, timed from `go`.

    A worker whose deliver pass raised (as a Celery task would) runs it again at once; rows that
    pass held stay leased, so the benchmark then recovers them as production would once the lease
    lapses, and checks the engine's promise: nothing lost, at most a commit group re-sent.
    """
    path = bench.folder / f"ledger-{next(bench.databases)}.db"
    url = sqlite_url(path) if database == "sqlite" else bench.postgres.new_database()
    runtime = fresh_runtime(make_settings(bench.home, url, bench.sink.port))
    seed_due_deliveries(runtime.engine, n, utcnow())
    args = ["engine", "--home", str(bench.home), "--smtp-port", str(bench.sink.port), "--database-url", url]
    before = bench.sink.received()
    elapsed, results = run_workers("bench.worker", [args] * processes, bench.log)
    errors = [str(e) for r in results for e in r["errors"]]
    states = ledger_states(runtime.engine)
    in_round = states.get("sent", 0)
    incident = ""
    if errors:
        lease = runtime.site.delivery.lease
        recovered = runtime.deliverer().run(lambda: utcnow() + lease + timedelta(seconds=1))
        incident = (
            f"{len(errors)} deliver pass(es) failed: {errors[0]}; the ledger then held {states}, "
            f"{recovered.sent:,} sent after their lease lapsed (not in the rate)"
        )
        states = ledger_states(runtime.engine)
    runtime.engine.dispose()
    if states != {"sent": n}:
        raise CheckFailedError(f"engine on {database}: the ledger holds {states}, expected {n:,} sent")
    received = bench.sink.wait_for(before + n) - before
    twice = received - n
    allowed = runtime.site.delivery.commit_every * len(errors)
    if received < n or twice > allowed:
        raise CheckFailedError(f"engine on {database}: smtp-sink received {received:,} mails for {n:,}")
    if twice:
        incident += f"; {twice:,} mails sent twice (a group in flight)"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    split = " + ".join(f"{int(r['sent']):,}" for r in results)
    return Measured(
        in_round / elapsed,
        max(float(r["rss_mb"]) for r in results),
        detail=f"per worker: {split}" if processes > 1 else "",
        incident=incident,
    )


def tick_round(bench: Bench, n: int) -> Measured:
    """`mailer tick` as an operator runs it, `n` steps due: from process start to exit, less the
    same command with nothing due (Python, imports, the schema check): what planning and sending
    the steps cost."""
    path = bench.folder / f"tick-{next(bench.databases)}.db"
    url = sqlite_url(path)
    runtime = fresh_runtime(make_settings(bench.home, url, bench.sink.port))
    now = utcnow()
    seed_enrolments(runtime.engine, n, now)
    make_due(runtime.engine, list(range(1, n + 1)), now)
    mark_applied(runtime.engine, runtime, now)
    runtime.engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env |= {"MAILER_HOME": str(bench.home), "MAILER_DATABASE_URL": url, "MAILER_SECRET_KEY": "bench"}
    env |= {"MAILER_SMTP_URL": f"smtp://127.0.0.1:{bench.sink.port}"}

    def timed() -> tuple[float, str]:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "mailer", "tick"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise CheckFailedError(f"mailer tick failed: {done.stderr.strip()[-500:]}")
        return time.perf_counter() - started, done.stdout.strip()

    before = bench.sink.received()
    full, said = timed()
    bench.expect_received(before, n)
    empty, _ = timed()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return Measured(n / (full - empty), detail=f"{full:.2f} s − {empty:.2f} s empty; {said}")


# --- the run and its report -------------------------------------------------------------------


@dataclass
class Row:
    what: str
    processes: int
    mails: int
    figure: Figure


def run(bench: Bench) -> tuple[list[Row], list[tuple[str, str, str, bool | None]]]:
    sizes = bench.sizes
    message = sample_message(Runtime(make_settings(bench.home, "sqlite://", bench.sink.port)))
    console.print(
        f"the mail: lesson-1 of web-business, text + HTML, Japanese, {len(message):,} bytes as rendered; "
        f"receiver: smtp-sink on 127.0.0.1:{bench.sink.port}; worker log: INFO, as `mailer worker`"
    )
    rows: list[Row] = []

    def row(
        what: str, processes: int, mails: int, one: Round, rounds: int, budget: float | None = None
    ) -> Figure:
        figure = measure(Figure(f"{what} ×{processes}"), one, rounds, budget)
        rows.append(Row(what, processes, mails, figure))
        return figure

    for s in (1, 2):
        row(
            "C ceiling: smtp-source → smtp-sink, reused sessions",
            s,
            sizes.source,
            partial(source_round, bench, s, len(message)),
            sizes.rounds,
        )
    limit = {
        p: row(
            "1. limit: smtplib.sendmail, prebuilt bytes, 1 connection",
            p,
            sizes.limit,
            partial(limit_round, bench, p),
            sizes.rounds,
        )
        for p in (1, 2)
    }
    naive_way = {
        p: row(
            "2. naive: Celery task per mail, new connection each",
            p,
            sizes.naive,
            partial(naive_round, bench, p),
            sizes.rounds,
        )
        for p in (1, 2)
    }
    engine: dict[tuple[str, int], Figure] = {}
    for database, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        for p in (1, 2):
            engine[database, p] = row(
                f"{3 if p == 1 else 4}. engine: claim, render, send, mark ({name})",
                p,
                sizes.engine,
                partial(engine_round, bench, database, p, sizes.engine),
                sizes.rounds,
                sizes.engine_budget,
            )
    tick = row(
        "5. mailer tick from process start, less an empty tick (SQLite)",
        1,
        sizes.tick,
        partial(tick_round, bench, sizes.tick),
        sizes.rounds,
    )
    memory = row(
        "memory: engine, larger ledger (SQLite)",
        1,
        sizes.memory,
        partial(engine_round, bench, "sqlite", 1, sizes.memory),
        1,
    )

    goals: list[tuple[str, str, str, bool | None]] = []
    names = (("sqlite", "SQLite"), ("postgresql", "PostgreSQL"))
    for database, name in names:
        ratio = engine[database, 1].rate / limit[1].rate
        goals.append(
            (f"engine/limit, 1 process, {name}", f"{ratio:.2f} ×", f"≥ {GOAL_LIMIT} ×", ratio >= GOAL_LIMIT)
        )
    ratio = tick.rate / limit[1].rate
    goals.append(
        ("mailer tick/limit, from process start", f"{ratio:.2f} ×", f"≥ {GOAL_LIMIT} ×", ratio >= GOAL_LIMIT)
    )
    for database, name in names:
        ratio = engine[database, 1].rate / naive_way[1].rate
        goals.append(
            (
                f"engine/naive, 1 process, {name}",
                f"{ratio:.2f} ×",
                f"≥ {GOAL_NAIVE:.0f} ×",
                ratio >= GOAL_NAIVE,
            )
        )
    for database, name in names:
        ratio = engine[database, 2].rate / limit[2].rate
        goals.append((f"engine/limit, 2 processes, {name}", f"{ratio:.2f} ×", "(shown)", None))
    for database, name in names:
        ratio = engine[database, 2].rate / naive_way[2].rate
        goals.append((f"engine/naive, 2 processes, {name}", f"{ratio:.2f} ×", "(shown)", None))
    base = engine["sqlite", 1].peak_rss
    goals.append(
        (
            f"peak RSS at {sizes.memory:,} deliveries, 1 process",
            f"{fmt_mb(memory.peak_rss)} MB ({memory.peak_rss - base:+.1f} vs {sizes.engine:,})",
            f"< {GOAL_MB:.0f} MB",
            memory.peak_rss < GOAL_MB,
        )
    )
    return rows, goals


def report(rows: list[Row], goals: list[tuple[str, str, str, bool | None]]) -> None:
    table = new_table(
        "Sending: messages per second (median of the rounds), peak RSS of one worker process",
        "what",
        "procs",
        "mails",
        "msgs/s",
        "each round",
        "peak RSS MB",
    )
    for r in rows:
        rss = fmt_mb(r.figure.peak_rss) if r.figure.rss else "-"
        table.add_row(
            r.what, str(r.processes), f"{r.mails:,}", fmt_rate(r.figure.rate), fmt_rounds(r.figure.rates), rss
        )
    console.print(table)
    for r in rows:
        for note in r.figure.notes:
            console.print(f"note: {r.what} ×{r.processes}: {note}", markup=False)
    checks = new_table("Ratios and goals (medians)", "what", "figure", "goal", "verdict")
    for what, figure, goal, met in goals:
        checks.add_row(what, figure, goal, "" if met is None else verdict(met))
    console.print(checks)


def send_benchmark(quick: bool) -> None:
    sizes = QUICK if quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp:
        folder = Path(tmp)
        home = make_home(folder)
        with smtp_sink(folder) as sink, postgres_server() as pg, redis_server() as rs:
            naive.app.conf.broker_url = rs.url
            bench = Bench(folder, home, sink, pg, rs.url, sizes, folder / "workers.log")
            try:
                rows, goals = run(bench)
            except CheckFailedError:
                console.print(f"worker log, last lines:\n{tail(bench.log)}", markup=False)
                raise
        report(rows, goals)


if __name__ == "__main__":
    title = "mailer send benchmark: the limit, the naive way, the engine"
    sys.exit(bench_main("bench.send", __doc__, title, send_benchmark))
