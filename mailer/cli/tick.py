"""`mailer tick`: one scheduler pass, synchronously, as of a given time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from mailer.cli.common import fail, load_runtime, out


def _parse_now(value: str | None) -> datetime | None:
    """The time --now names, in UTC (UTC too when it has no offset); None: the clock's."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--now {value!r} is not an ISO-8601 time such as 2026-12-01T09:00:00+09:00")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def tick(
    now: Annotated[
        str | None, typer.Option(help="Act as of this time (ISO-8601; UTC when no offset).")
    ] = None,
) -> None:
    """One scheduler pass, synchronously: plan what is due as of NOW and send it."""
    from mailer.db import utcnow

    runtime = load_runtime()
    runtime.upgrade_db()
    moment = _parse_now(now)
    planned, report = runtime.tick(lambda: moment or utcnow())
    out.print(
        f"planned {planned}, sent {report.sent}, skipped {report.skipped}, deferred {report.deferred}, "
        f"retried {report.retried}, failed {report.failed}"
    )
