"""`mailer stats`: who is where, what was sent, who left from which mail, what failed."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Annotated, Any

import typer

from mailer.cli.common import load_runtime, out


def stats(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Subscribers by state, deliveries by step and state, unsubscribes by step."""
    from mailer.db import session_scope, utcnow
    from mailer.stats import collect

    runtime = load_runtime()
    runtime.upgrade_db()
    with session_scope(runtime.sessions) as session:
        data = collect(session, since=utcnow() - timedelta(days=7))
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        return
    _print_tables(data)


def _print_tables(data: dict[str, Any]) -> None:
    from rich.table import Table

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
