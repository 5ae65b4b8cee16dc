"""The sign-up benchmark's baseline: the least a FastAPI sign-up form can do on SQLite.

One POST with the form's fields, one INSERT of a new address, one commit, a short page. No
validation, no template, no mail: what any engine's sign-up costs at the very least on the same
server stack. `uvicorn bench.bare_signup:app` with BARE_SIGNUP_DB naming the database file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Annotated

from fastapi import FastAPI, Form
from fastapi.responses import HTMLResponse

DATABASE = os.environ.get("BARE_SIGNUP_DB", "bare-signup.db")
_local = threading.local()


def connection() -> sqlite3.Connection:
    """One connection per server thread, WAL as the engine uses it."""
    db: sqlite3.Connection | None = getattr(_local, "db", None)
    if db is None:
        db = sqlite3.connect(DATABASE, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS subscribers"
            " (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, name TEXT, created_at REAL)"
        )
        _local.db = db
    return db


app = FastAPI()


@app.post("/subscribe", response_class=HTMLResponse)
def subscribe(email: Annotated[str, Form()], name: Annotated[str, Form()] = "") -> str:
    db = connection()
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        "INSERT OR IGNORE INTO subscribers (email, name, created_at) VALUES (?, ?, ?)",
        (email, name, time.time()),
    )
    db.execute("COMMIT")
    return "<!doctype html><p>ご登録ありがとうございます。</p>"
