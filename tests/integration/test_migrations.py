"""The migrations build exactly the schema the models describe, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from mailer.db import alembic_config, make_engine, upgrade
from mailer.migrations import HEAD
from mailer.models import Base


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_head_names_alembics_newest_revision() -> None:
    """`mailer.migrations.HEAD` lets a current database skip Alembic at start: it must be the head."""
    script = ScriptDirectory.from_config(alembic_config(make_engine("sqlite://")))
    assert script.get_current_head() == HEAD
