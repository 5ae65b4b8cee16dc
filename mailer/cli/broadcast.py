"""`mailer broadcast`: the mail magazine's issues, created from folders and sent through the ledger.

Each command is a thin shell over a function of `mailer.broadcasts`: it parses, calls, commits and
prints; what is wrong is one line and a non-zero exit, with nothing changed.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mailer.cli.common import Commands, load_runtime, out

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from mailer.runtime import Runtime

app = typer.Typer(
    help="The mail magazine: create, schedule, send and cancel issues.",
    no_args_is_help=True,
    rich_markup_mode=None,
    cls=Commands,
)

IssueId = Annotated[int, typer.Argument(metavar="ID", help="The issue's id (broadcast list).")]
AT_HELP = "When (ISO-8601, any zone; without an offset: the magazine's zone)."
AtOption = Annotated[str | None, typer.Option("--at", help=AT_HELP)]


def _runtime() -> Runtime:
    runtime = load_runtime()
    runtime.upgrade_db()
    return runtime


def _zone(runtime: Runtime) -> ZoneInfo:
    from mailer.broadcasts import content

    return content.magazine(runtime.site, runtime.catalog()).timezone


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    if moment is None:
        return "-"
    local = moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
    return f"{local} ({moment.strftime('%H:%M')} UTC)"


def _wake(runtime: Runtime) -> None:
    """Ask a worker to look at the ledger now; the next tick does it anyway."""
    from mailer import tasks

    tasks.configure(runtime)
    tasks.wake()


@app.command("create")
def create(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="subject.txt, body.txt, body.html.")],
    to: Annotated[str, typer.Option("--to", help="all, seminar:SEQ or tag:TAG.")] = "all",
    at: AtOption = None,
    archive: Annotated[bool, typer.Option("--archive", help="Publish it on /archive once sent.")] = False,
) -> None:
    """Check an issue's folder (rendered for a sample reader) and store it; prints its id."""
    from mailer.broadcasts import issues
    from mailer.db import utcnow

    runtime = _runtime()
    now = utcnow()
    zone = _zone(runtime)
    moment = issues.parse_at(at, zone) if at is not None else None
    with runtime.transaction() as session:
        issue = issues.create(
            session,
            runtime.site,
            runtime.catalog(),
            runtime.renderer,
            folder,
            to=to,
            at=moment,
            archive=archive,
            now=now,
        )
    out.print(issue.id, highlight=False)
    when = f", at {_when(issue.at, zone)}" if issue.at else " (draft: broadcast send or schedule)"
    out.print(f"issue {issue.id} {issue.state}: to {issue.audience}{when}", highlight=False, markup=False)


@app.command("list")
def list_issues() -> None:
    """Every issue, newest first: state, audience, time and mail counted."""
    from rich.table import Table

    from mailer.broadcasts import report

    runtime = _runtime()
    zone = _zone(runtime)
    table = Table(title="Issues")
    for column in ("id", "state", "name", "to", "at", "sent", "total"):
        table.add_column(column, justify="right" if column in {"id", "sent", "total"} else "left")
    with runtime.transaction() as session:
        for issue, counts in report.listing(session):
            table.add_row(
                str(issue.id),
                issue.state,
                issue.name,
                issue.audience,
                _when(issue.at, zone),
                str(counts.get("sent", 0)),
                str(issue.audience_written),
            )
    out.print(table)


@app.command("show")
def show(issue_id: IssueId) -> None:
    """One issue: state, times, counts by state, failures by code."""
    from mailer.broadcasts import report
    from mailer.db import utcnow

    runtime = _runtime()
    zone = _zone(runtime)
    with runtime.transaction() as session:
        s = report.summary(session, issue_id, utcnow())
    state = s.state + (
        " (later than max_lateness: goes only on `broadcast send`)" if s.state == "held" else ""
    )
    lines = [
        f"issue {s.id}: {s.name}",
        f"subject: {s.subject}",
        f"state: {state}",
        f"to: {s.audience}" + ("  (on /archive once sent)" if s.archive else ""),
        f"at: {_when(s.at, zone)}",
        f"started: {_when(s.started_at, zone)}",
        f"finished: {_when(s.finished_at, zone)}",
        f"mails: {s.total}" + (" so far (the audience is being written)" if s.writing else ""),
    ]
    lines += [f"  {state}: {n}" for state, n in sorted(s.by_state.items())]
    if s.waiting:
        lines.append(f"  waiting (quiet hours or a retry): {s.waiting}")
    if s.failures:
        lines.append("failures by code: " + ", ".join(f"{c}: {n}" for c, n in sorted(s.failures.items())))
    for line in lines:
        out.print(line, highlight=False, markup=False)


@app.command("send")
def send(
    issue_id: IssueId,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the issue is out.")] = False,
) -> None:
    """Send the issue now (a held one too): its audience is fixed at this moment."""
    from mailer.broadcasts import issues
    from mailer.db import utcnow

    runtime = _runtime()
    with runtime.transaction() as session:
        issues.start(session, issue_id, utcnow())
    started = time.monotonic()
    written = issues.write_audience(runtime.sessions, issue_id, utcnow())
    out.print(
        f"issue {issue_id} sending: {written} mails queued in {time.monotonic() - started:.1f} s",
        highlight=False,
    )
    _wake(runtime)
    if wait:
        _wait(runtime, issue_id)


def _wait(runtime: Runtime, issue_id: int) -> None:
    """A progress bar on a terminal, plain lines when piped, until the issue is out."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mailer.broadcasts import issues
    from mailer.db import utcnow

    last = [-1.0]
    if out.is_terminal:
        columns = (
            TextColumn("sending"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} mails/s"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=out) as progress:
            task = progress.add_task("issue", total=None, rate="-")

            def bar(done: int, total: int) -> None:
                speed = progress.tasks[0].speed
                progress.update(task, completed=done, total=total, rate=f"{speed:.0f}" if speed else "-")

            issue = issues.wait_until_sent(runtime.sessions, issue_id, utcnow, bar, time.sleep)
    else:

        def line(done: int, total: int) -> None:
            if time.monotonic() - last[0] >= 5 or done == total:
                last[0] = time.monotonic()
                out.print(f"sent {done}/{total}", highlight=False)

        issue = issues.wait_until_sent(runtime.sessions, issue_id, utcnow, line, time.sleep)
    out.print(f"issue {issue_id} {issue.state}", highlight=False)


@app.command("schedule")
def schedule(
    issue_id: IssueId,
    at: Annotated[
        str, typer.Option("--at", help="When (ISO-8601, any zone; no offset: the magazine's zone).")
    ],
) -> None:
    """Send the issue at a time (a draft, a scheduled or a held one)."""
    from mailer.broadcasts import issues
    from mailer.db import utcnow

    runtime = _runtime()
    zone = _zone(runtime)
    moment = issues.parse_at(at, zone)
    with runtime.transaction() as session:
        issue = issues.schedule(session, issue_id, moment, utcnow())
    out.print(f"issue {issue.id} scheduled at {_when(issue.at, zone)}", highlight=False, markup=False)


@app.command("cancel")
def cancel(issue_id: IssueId) -> None:
    """Stop the issue for good: nothing not yet handed to SMTP goes."""
    from mailer.broadcasts import issues

    runtime = _runtime()
    with runtime.transaction() as session:
        skipped = issues.cancel(session, issue_id)
    out.print(f"issue {issue_id} cancelled: {skipped} mails not sent", highlight=False)


@app.command("pause")
def pause(issue_id: IssueId) -> None:
    """Stop handing the issue to SMTP, keeping its place."""
    from mailer.broadcasts import issues

    runtime = _runtime()
    with runtime.transaction() as session:
        parked = issues.pause(session, issue_id)
    out.print(
        f"issue {issue_id} paused: {parked} mails waiting (broadcast resume {issue_id})", highlight=False
    )


@app.command("resume")
def resume(issue_id: IssueId) -> None:
    """Go on sending a paused issue from where it stopped."""
    from mailer.broadcasts import issues
    from mailer.db import utcnow

    runtime = _runtime()
    with runtime.transaction() as session:
        resumed = issues.resume(session, issue_id, utcnow())
    _wake(runtime)
    out.print(f"issue {issue_id} sending again: {resumed} mails to go", highlight=False)


@app.command("test")
def test(
    issue_id: IssueId,
    to: Annotated[str, typer.Option("--to", metavar="ADDR", help="Any address the form would take.")],
) -> None:
    """Send the issue as a reader gets it to ADDR, subject prefixed [テスト], outside the ledger."""
    from mailer.broadcasts.trial import send_test
    from mailer.db import utcnow

    runtime = _runtime()
    send_test(runtime, issue_id, to, utcnow())
    out.print(f"issue {issue_id}: test mail sent", highlight=False)
