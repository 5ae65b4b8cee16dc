"""The schema's Alembic migrations; HEAD names the newest, so a process whose database is current
starts without importing Alembic (a test keeps it equal to Alembic's own head)."""

HEAD = "0003"
