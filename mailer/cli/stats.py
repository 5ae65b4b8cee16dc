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
    if data["held_back"]:
        _table(
            "Held back: mail that cannot be prepared (fix the template, then it goes)",
            ("kind", "sequence", "step", "count", "why"),
            [
                (r["kind"], r["sequence"] or "", r["step"] or "", str(r["count"]), r["error"])
                for r in data["held_back"]
            ],
        )
    _table("Subscribers", ("state", "count"), [(s, str(n)) for s, n in sorted(data["subscribers"].items())])
    _table(
        "Readers by seminar and next step",
        ("sequence", "state", "next step", "count"),
        [
            (r["sequence"], r["state"], r["next_step"] or "(none for now)", str(r["count"]))
            for r in data["enrolments"]
        ],
    )
    _table(
        "Deliveries",
        ("kind", "sequence", "step", "state", "count"),
        [
            (r["kind"], r["sequence"] or "", r["step"] or "", r["state"], str(r["count"]))
            for r in data["deliveries"]
        ],
    )
    _table(
        "Unsubscribes by the mail they left from",
        ("kind", "sequence", "step", "count"),
        [
            (r["kind"] or "(no mail)", r["sequence"] or "", r["step"] or "", str(r["count"]))
            for r in data["unsubscribes"]
        ],
    )
    _table(
        "Failed delivery attempts, last 7 days",
        ("code", "outcome", "count", "last", "a reply"),
        [
            (str(r["code"] or "-"), r["outcome"], str(r["count"]), r["last_at"][:16], r["reply"][:60])
            for r in data["failed_attempts"]
        ],
    )


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """One table on the terminal; counts are right-aligned."""
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column == "count" else "left")
    for row in rows:
        table.add_row(*row)
    out.print(table)
