"""`mailer db`: the database schema."""

from __future__ import annotations

import typer

from mailer.cli.common import Commands, load_runtime, out

app = typer.Typer(help="The database schema.", no_args_is_help=True, rich_markup_mode=None, cls=Commands)


@app.command("upgrade")
def upgrade() -> None:
    """Create or migrate the schema (Alembic)."""
    runtime = load_runtime()
    runtime.upgrade_db()
    out.print("database: up to date")
