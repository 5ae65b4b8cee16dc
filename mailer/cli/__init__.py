"""The `mailer` command: the app and its error handling; each command group has its own module.

    common.py     the consoles, fail(), the runtime from the environment
    serve.py      run, web, worker, beat
    db.py         db upgrade
    sequences.py  sequences check, sequences preview
    tick.py       tick
    stats.py      stats
    broadcast.py  broadcast create, list, show, send, schedule, cancel, pause, resume, test

Commands import what they use when they run, so `mailer --help` loads no database, web or Celery code.
"""

from __future__ import annotations

import logging
import sys

import typer

from mailer import logs
from mailer.cli import broadcast, db, sequences, serve
from mailer.cli.common import Commands, err
from mailer.cli.stats import stats
from mailer.cli.tick import tick
from mailer.errors import MailerError, SequenceError

app = typer.Typer(
    name="mailer",
    help="Self-hosted mail-seminar engine: step mails and a mail magazine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    cls=Commands,
)
for command in (serve.run, serve.web, serve.worker, serve.beat, tick, stats):
    app.command()(command)
app.add_typer(db.app, name="db")
app.add_typer(sequences.app, name="sequences")
app.add_typer(broadcast.app, name="broadcast")

log = logging.getLogger(__name__)


def _first_line(error: BaseException | None) -> str:
    """Drivers write several lines (hints, URLs); the terminal gets the first."""
    lines = str(error or "").strip().splitlines()
    return lines[0] if lines else ""


def _unexpected(exc: Exception) -> str:
    """The one line for an error no command expected: the database's own, or its type and first line."""
    from sqlalchemy.exc import OperationalError  # only on this path: sqlalchemy is slow to import

    if isinstance(exc, OperationalError):
        reason = _first_line(exc.orig) or type(exc).__name__
        return f"error: cannot use the database (MAILER_DATABASE_URL): {reason}"
    # Never a traceback at the terminal: one line naming the error (debug logging has the rest).
    log.debug("cli.crash", exc_info=exc)
    return f"error: unexpected {type(exc).__name__}: {_first_line(exc)}"


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
    except Exception as exc:
        err.print(_unexpected(exc), highlight=False, markup=False)
        sys.exit(1)
