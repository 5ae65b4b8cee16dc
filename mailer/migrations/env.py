"""Alembic environment: the URL and connection come from `mailer.db.upgrade()`."""

from __future__ import annotations

from alembic import context

from mailer.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `mailer db upgrade`")
# render_as_batch: SQLite alters a table by copying it; Alembic does that only in batch mode.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
