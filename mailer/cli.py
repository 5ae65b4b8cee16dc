"""The `mailer` command: one function per subcommand, thin over the use cases."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import OperationalError

from mailer import logs
from mailer.config import load_settings
from mailer.db import session_scope, utcnow
from mailer.errors import MailerError, SequenceError
from mailer.runtime import Runtime
from mailer.seminars.checks import check, sample_recipient
from mailer.seminars.sequences import load_catalog_strict

app = typer.Typer(
    name="mailer",
    help="Self-hosted mail-seminar engine: step mails and a mail magazine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
sequences_app = typer.Typer(help="The seminars under sequences/ and their templates.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(sequences_app, name="sequences")

out = Console()
err = Console(stderr=True)
log = logging.getLogger(__name__)

HostOption = Annotated[str, typer.Option(help="Interface to listen on.")]
PortOption = Annotated[int, typer.Option(help="Port to listen on.")]


def _runtime() -> Runtime:
    return Runtime(load_settings())


def _serving_runtime(host: str, port: int) -> Runtime:
    """Links point where this process listens unless MAILER_BASE_URL says otherwise (a proxy)."""
    settings = load_settings()
    if "base_url" not in settings.model_fields_set:
        shown = "localhost" if host in {"127.0.0.1", "0.0.0.0", "::", "::1"} else host  # noqa: S104 (compared, not bound)
        settings.base_url = f"http://{shown}:{port}"
    return Runtime(settings)


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(1)


def _serve(runtime: Runtime, host: str, port: int, workers: int = 1) -> None:
    import uvicorn  # noqa: PLC0415 (only the serving commands need it)

    options: dict[str, Any] = {"host": host, "port": port, "log_level": "info", "access_log": False}
    # uvicorn re-raises SIGTERM after its graceful shutdown; as SystemExit it unwinds our
    # `finally` blocks (worker and beat threads stop) instead of killing the process mid-way.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if workers > 1:
        # Each worker process builds its own runtime from the environment; links must point
        # where this parent listens.
        os.environ["MAILER_BASE_URL"] = runtime.settings.base_url
        uvicorn.run("mailer.web.app:from_environment", factory=True, workers=workers, **options)
        return
    from mailer import tasks  # noqa: PLC0415
    from mailer.web.app import create_app  # noqa: PLC0415

    tasks.configure(runtime)
    uvicorn.run(create_app(runtime, broker_ok=tasks.broker_ok), **options)


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _prepare(runtime: Runtime) -> None:
    """What every serving command checks first: the schema is current, the seminars load."""
    runtime.upgrade_db()
    load_catalog_strict(runtime.settings.home)
    _ = runtime.site


@app.command()
def run(host: HostOption = "127.0.0.1", port: PortOption = 8000) -> None:
    """The whole thing on one machine: web, worker and scheduler (Ctrl-C stops all)."""
    from mailer import tasks  # noqa: PLC0415
    from mailer.embedded import worker_thread  # noqa: PLC0415

    runtime = _serving_runtime(host, port)
    _prepare(runtime)
    celery = tasks.configure(runtime)
    out.print(f"mailer: http://{host}:{port}/  (mail goes to {runtime.settings.smtp_url}; Ctrl-C stops)")
    if runtime.settings.smtp_url.startswith("maildir:"):
        out.print(f"mailer: read the mail written at http://{host}:{port}/outbox")
    try:
        with worker_thread(celery, beat=True):
            _serve(runtime, host, port)
    except KeyboardInterrupt:
        pass  # Ctrl-C: web, worker and scheduler have stopped; that is a normal end
    out.print("mailer: stopped")


@app.command()
def web(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Processes serving requests.")] = 1,
) -> None:
    """The web process alone (production: several workers, behind a proxy)."""
    runtime = _serving_runtime(host, port)
    _prepare(runtime)
    _serve(runtime, host, port, workers)


@app.command()
def worker(concurrency: Annotated[int, typer.Option(help="Threads sending at once.")] = 2) -> None:
    """A Celery worker that sends what the ledger says is due."""
    from mailer import tasks  # noqa: PLC0415

    runtime = Runtime(load_settings(), sending=True)
    _prepare(runtime)
    celery = tasks.configure(runtime)
    celery.worker_main(
        [
            "worker",
            "--loglevel=INFO",
            "-Q",
            "mailer",
            "--pool=threads",
            f"--concurrency={concurrency}",
        ]
    )


@app.command()
def beat() -> None:
    """The scheduler: wakes the tick every few seconds (two at once are harmless)."""
    from mailer import tasks  # noqa: PLC0415

    runtime = _runtime()
    _prepare(runtime)
    celery = tasks.configure(runtime)
    celery.start(["beat", "--loglevel=INFO"])


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema (Alembic)."""
    runtime = _runtime()
    runtime.upgrade_db()
    out.print("database: up to date")


@sequences_app.command("check")
def sequences_check() -> None:
    """Validate every seminar and render every step for a sample subscriber."""
    runtime = _runtime()
    result = check(runtime.settings.home, runtime.site, runtime.renderer)
    if not result.ok:
        for line in result.errors:
            err.print(line, highlight=False, markup=False)
        raise typer.Exit(1)
    out.print(f"ok: {result.seminars} seminars, {result.steps} steps")


@sequences_app.command("preview")
def sequences_preview(
    sequence_id: Annotated[str, typer.Argument(metavar="SEQ", help="The seminar (its file name).")],
    step_id: Annotated[str, typer.Argument(metavar="STEP", help="The step's id.")],
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML part to this file.")] = None,
) -> None:
    """Render one step for a sample subscriber: the subject and text, or the HTML to a file."""
    runtime = _runtime()
    catalog = load_catalog_strict(runtime.settings.home)
    sequence = catalog.get(sequence_id)
    if sequence is None:
        _fail(f"no seminar {sequence_id!r} (have: {', '.join(sorted(catalog.sequences))})")
    step = sequence.step(step_id)
    if step is None:
        have = ", ".join(s.id for s in sequence.steps)
        _fail(f"seminar {sequence_id!r} has no step {step_id!r} (have: {have})")
    composed = runtime.renderer.step(sequence, step).compose(sample_recipient(runtime.site.locale))
    if html is not None:
        if composed.html is None:
            _fail(f"step {step_id!r} has no body.html")
        html.write_text(composed.html, encoding="utf-8")
        out.print(f"wrote {html}")
        return
    out.print(f"Subject: {composed.subject}\n", highlight=False, markup=False)
    out.print(composed.text, highlight=False, markup=False)


def _parse_now(value: str | None) -> datetime:
    if value is None:
        return utcnow()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"--now {value!r} is not an ISO-8601 time such as 2026-12-01T09:00:00+09:00")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@app.command()
def tick(
    now: Annotated[
        str | None, typer.Option(help="Act as of this time (ISO-8601; UTC when no offset).")
    ] = None,
) -> None:
    """One scheduler pass, synchronously: plan what is due as of NOW and send it."""
    runtime = _runtime()
    runtime.upgrade_db()
    moment = _parse_now(now)
    planned, report = runtime.tick(lambda: moment if now else utcnow())
    out.print(
        f"planned {planned}, sent {report.sent}, skipped {report.skipped}, deferred {report.deferred}, "
        f"retried {report.retried}, failed {report.failed}"
    )


@app.command()
def stats(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Subscribers by state, deliveries by step and state, unsubscribes by step."""
    from mailer.stats import collect  # noqa: PLC0415

    runtime = _runtime()
    runtime.upgrade_db()
    with session_scope(runtime.sessions) as session:
        data = collect(session, since=utcnow() - timedelta(days=7))
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        return
    table = Table(title="Subscribers")
    table.add_column("state")
    table.add_column("count", justify="right")
    for state, count in sorted(data["subscribers"].items()):
        table.add_row(state, str(count))
    out.print(table)
    table = Table(title="Readers by seminar and next step")
    for column in ("sequence", "state", "next step"):
        table.add_column(column)
    table.add_column("count", justify="right")
    for row in data["enrolments"]:
        table.add_row(row["sequence"], row["state"], row["next_step"] or "(none for now)", str(row["count"]))
    out.print(table)
    table = Table(title="Deliveries")
    for column in ("kind", "sequence", "step", "state"):
        table.add_column(column)
    table.add_column("count", justify="right")
    for row in data["deliveries"]:
        table.add_row(row["kind"], row["sequence"] or "", row["step"] or "", row["state"], str(row["count"]))
    out.print(table)
    table = Table(title="Unsubscribes by the mail they left from")
    for column in ("kind", "sequence", "step"):
        table.add_column(column)
    table.add_column("count", justify="right")
    for row in data["unsubscribes"]:
        table.add_row(row["kind"] or "(no mail)", row["sequence"] or "", row["step"] or "", str(row["count"]))
    out.print(table)
    table = Table(title="Failed delivery attempts, last 7 days")
    for column in ("code", "outcome", "count", "last", "a reply"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for row in data["failed_attempts"]:
        code = str(row["code"] or "-")
        table.add_row(code, row["outcome"], str(row["count"]), row["last_at"][:16], row["reply"][:60])
    out.print(table)


def _first_line(error: BaseException | None) -> str:
    """Drivers write several lines (hints, URLs); the terminal gets the first."""
    lines = str(error or "").strip().splitlines()
    return lines[0] if lines else ""


def main() -> None:
    logs.configure()
    try:
        app()
    except SequenceError as exc:
        for line in str(exc).splitlines():
            err.print(line, highlight=False, markup=False)
        sys.exit(1)
    except MailerError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except OperationalError as exc:
        reason = _first_line(exc.orig) or type(exc).__name__
        err.print(
            f"error: cannot use the database (MAILER_DATABASE_URL): {reason}",
            highlight=False,
            markup=False,
        )
        sys.exit(1)
    except Exception as exc:
        # Never a traceback at the terminal: one line naming the error (debug logging has the rest).
        log.debug("cli.crash", exc_info=True)
        err.print(
            f"error: unexpected {type(exc).__name__}: {_first_line(exc)}", highlight=False, markup=False
        )
        sys.exit(1)
