"""The magazine benchmark: one issue to 100,000 confirmed readers, one worker, to Postfix's smtp-sink.

It measures what an operator sees after `mailer broadcast send`: the time to write the audience to
the ledger, the worker's rate against the smtplib limit (prebuilt bytes over one connection,
measured in the same run), the seconds from `send` to the last mail, the worker's peak RSS; and two
workers on PostgreSQL. Run from the repository root: `uv run --frozen python -m bench.broadcast`
(`make bench` does; `--quick` is a small run). Exits 1 when a correctness check fails.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    CheckFailedError,
    SmtpSink,
    analyze,
    bench_main,
    console,
    fmt_mb,
    fmt_rate,
    fresh_runtime,
    make_home,
    make_settings,
    new_table,
    run_workers,
    seed_subscribers,
    smtp_sink,
    sqlite_url,
    tail,
    verdict,
)
from mailer.broadcasts import content, issues
from mailer.db import session_scope, utcnow
from mailer.mail.compose import Recipient
from mailer.runtime import Runtime
from tests.services import PostgresServer, postgres_server

GOAL_LIMIT, GOAL_MB = 0.85, 150.0
LINE = "今月は、読まれるメルマガの書き方を、例を挙げてお話しします。"
# Text and HTML parts that make a mail of about 11 KB, as bench.send's lesson does.
ISSUE_TEXT = "{{ name }}さん、こんにちは。\n" + f"{LINE}\n" * 28
ISSUE_HTML = "<p>{{ name }}さん、こんにちは。</p>\n" + f"<p>{LINE}</p>\n" * 28


@dataclass(frozen=True)
class Run:
    """Where one issue is sent: the site, the sink, the database, and the workers' log."""

    home: Path
    sink: SmtpSink
    url: str
    database: str
    log: Path


@dataclass(frozen=True)
class Result:
    database: str
    workers: int
    readers: int
    audience_s: float  # `send`: the issue started and its audience written to the ledger
    send_s: float  # the worker processes, from `go` to the last mail handed over
    rss_mb: float

    @property
    def rate(self) -> float:
        return self.readers / self.send_s


def write_issue(home: Path) -> Path:
    folder = home / "issues" / "bench"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("{{ name }}さんへ WEBビジネス通信 ベンチマーク号\n", encoding="utf-8")
    (folder / "body.txt").write_text(ISSUE_TEXT, encoding="utf-8")
    (folder / "body.html").write_text(ISSUE_HTML, encoding="utf-8")
    return folder


def one_issue(run: Run, readers: int, workers: int) -> Result:
    """Seed the readers, create the issue, `send` it (timed), then the workers send it all."""
    home, sink, url, database, log = run.home, run.sink, run.url, run.database, run.log
    runtime: Runtime = fresh_runtime(make_settings(home, url, sink.port))
    seed_subscribers(runtime.engine, readers, utcnow())
    analyze(runtime.engine)
    with session_scope(runtime.sessions) as session:
        issue = issues.create(
            session,
            runtime.site,
            runtime.catalog(),
            runtime.renderer,
            home / "issues" / "bench",
            now=utcnow(),
        ).id
    before = sink.received()
    started = time.perf_counter()
    with session_scope(runtime.sessions) as session:
        issues.start(session, issue, utcnow())
    written = issues.write_audience(runtime.sessions, issue, utcnow())
    audience_s = time.perf_counter() - started
    if written != readers:
        raise CheckFailedError(f"{database}: {written:,} rows written for {readers:,} readers")
    args = ["engine", "--home", str(home), "--smtp-port", str(sink.port), "--database-url", url]
    elapsed, results = run_workers("bench.worker", [args] * workers, log)
    errors = [str(e) for r in results for e in r["errors"]]
    with session_scope(runtime.sessions) as session:
        states = issues.state_counts(session, issue)
    issues.advance(runtime.sessions, runtime.site, utcnow())
    with session_scope(runtime.sessions) as session:
        state = issues.get(session, issue).state
    runtime.close()
    received = sink.wait_for(before + readers) - before
    if errors or states != {"sent": readers} or received != readers or state != "sent":
        raise CheckFailedError(
            f"{database}: ledger {states}, issue {state}, sink received {received:,}, errors {errors[:1]}"
        )
    rss = max(float(r["rss_mb"]) for r in results)
    return Result(database, workers, readers, audience_s, elapsed, rss)


def issue_bytes(home: Path, folder: Path) -> Path:
    """The issue's mail as the engine renders it for reader 1: the bytes the limit sends."""
    runtime = Runtime(make_settings(home, "sqlite://", 25))
    magazine = content.magazine(runtime.site, runtime.catalog())
    issue = content.read(home / "issues" / "bench")
    mail = content.template(runtime.renderer, magazine, issue)
    path = folder / "issue.eml"
    path.write_bytes(mail.render(Recipient(1, 1, "reader1@example.com", "読者1"), utcnow()))
    return path


def limit_rate(home: Path, sink: SmtpSink, mails: int, log: Path) -> float:
    """smtplib `sendmail` of the issue's prebuilt bytes over one connection: the limit of one
    Python process, for the same mail the engine sends."""
    message = issue_bytes(home, log.parent)
    args = ["limit", "--home", str(home), "--smtp-port", str(sink.port), "--count", str(mails)]
    args += ["--message", str(message)]
    before = sink.received()
    elapsed, _ = run_workers("bench.worker", [args], log)
    if sink.wait_for(before + mails) - before != mails:
        raise CheckFailedError("the limit's mails did not all arrive")
    return mails / elapsed


def broadcast_benchmark(quick: bool) -> None:
    readers = 5_000 if quick else 100_000
    limit_mails = 5_000 if quick else 20_000
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp:
        folder = Path(tmp)
        home = make_home(folder)
        write_issue(home)
        log = folder / "workers.log"
        with smtp_sink(folder) as sink, postgres_server() as pg:
            try:
                results = run(home, sink, pg, folder, readers)
                limit = limit_rate(home, sink, limit_mails, log)
            except CheckFailedError:
                console.print(f"worker log, last lines:\n{tail(log)}", markup=False)
                raise
    report(results, limit)


def run(home: Path, sink: SmtpSink, pg: PostgresServer, folder: Path, readers: int) -> list[Result]:
    results = []
    log = folder / "workers.log"
    for n, (database, workers) in enumerate((("sqlite", 1), ("postgresql", 1), ("postgresql", 2))):
        url = sqlite_url(folder / f"m{n}.db") if database == "sqlite" else pg.new_database()
        console.print(f"{database}, {workers} worker(s), {readers:,} readers ...")
        results.append(one_issue(Run(home, sink, url, database, log), readers, workers))
    return results


def report(results: list[Result], limit: float) -> None:
    table = new_table(
        "One issue: the audience written at `send`, then sent by the workers",
        "database",
        "workers",
        "readers",
        "audience s",
        "msgs/s",
        "× limit",
        "send → last mail s",
        "peak RSS MB",
    )
    for r in results:
        table.add_row(
            r.database,
            str(r.workers),
            f"{r.readers:,}",
            f"{r.audience_s:.2f}",
            fmt_rate(r.rate),
            f"{r.rate / limit:.2f}",
            f"{r.audience_s + r.send_s:.1f}",
            fmt_mb(r.rss_mb),
        )
    console.print(table)
    console.print(f"limit: smtplib sendmail of prebuilt bytes over one connection: {fmt_rate(limit)} msgs/s")
    one = results[0]
    console.print(
        f"goal: one worker ≥ {GOAL_LIMIT} × limit on SQLite: {verdict(one.rate / limit >= GOAL_LIMIT)}"
    )
    console.print(f"goal: peak RSS < {GOAL_MB:.0f} MB: {verdict(max(r.rss_mb for r in results) < GOAL_MB)}")


if __name__ == "__main__":
    sys.exit(bench_main("bench.broadcast", __doc__, "mailer broadcast benchmark", broadcast_benchmark))
