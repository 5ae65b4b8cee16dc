"""The tick benchmark: does a scheduler pass cost what is due, or what the list holds?

With 100,000 and 1,000,000 enrolments (SQLite, then PostgreSQL), time `Runtime.plan(now)`: a pass
that finds nothing due, and one that plans 10,000 due cursors into the ledger. Run from the
repository root: `uv run --frozen python -m bench.tick` (`make bench` does). Exits 1 when a pass
plans the wrong number of rows; a cost that follows the list size is printed as a missed goal.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, bindparam, delete, func, select, text, update

from bench.common import (
    ENROLMENT_COLUMNS,
    NEXT_STEP,
    SEQUENCE,
    STEP,
    CheckFailedError,
    analyze,
    bench_main,
    bulk_insert,
    console,
    fresh_runtime,
    make_home,
    make_settings,
    mark_applied,
    new_table,
    seed_subscribers,
    sqlite_url,
    verdict,
)
from mailer.db import UTCDateTime, utcnow
from mailer.models import Delivery, Enrolment
from mailer.runtime import Runtime
from tests.services import PostgresServer, postgres_server

GOAL_RATIO = 2.0  # 10 × the enrolments may cost at most this much more: an index, not a scan


@dataclass(frozen=True)
class Sizes:
    lists: tuple[int, ...] = (100_000, 1_000_000)
    due: int = 10_000
    idle_rounds: int = 5
    due_rounds: int = 3


QUICK = Sizes(lists=(10_000, 100_000), due=1_000, idle_rounds=3, due_rounds=2)


@dataclass
class Result:
    database: str
    enrolments: int
    due: int
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def seed_enrolments(engine: Engine, n: int, now: datetime) -> None:
    """`n` readers in the seminar, none due: each cursor waits for a later step within two weeks.

    As in a running installation, the cursor index holds every reader between steps; one in ten
    has finished (no next step), which the index leaves out (NULL).
    """
    seed_subscribers(engine, n, now)
    entered = now - timedelta(days=2)
    bulk_insert(
        engine,
        Enrolment.__table__,  # type: ignore[arg-type]
        ENROLMENT_COLUMNS,
        (
            (i, i, SEQUENCE, "active", entered, entered, 0, None, None)
            if i % 10 == 0
            else (
                i,
                i,
                SEQUENCE,
                "active",
                entered,
                entered,
                0,
                NEXT_STEP,
                now + timedelta(minutes=1 + i % 20_000),
            )
            for i in range(1, n + 1)
        ),
    )


def due_ids(n: int, due: int) -> list[int]:
    """`due` enrolments spread over the whole list (never a finished one), not a contiguous block."""
    stride = n // due
    return [i * stride + 1 for i in range(due)]


def make_due(engine: Engine, ids: list[int], now: datetime) -> None:
    """Those cursors now point at lesson-1, due five minutes ago; the ledger is emptied."""
    with engine.begin() as conn:
        conn.execute(delete(Delivery))
        conn.execute(
            update(Enrolment)
            .where(Enrolment.id.in_(bindparam("ids", expanding=True)))
            .values(next_step_id=STEP, next_due_at=now - timedelta(minutes=5)),
            {"ids": ids},
        )


def timed_plan(runtime: Runtime, now: datetime, expected: int) -> float:
    started = time.perf_counter()
    planned = runtime.plan(now)
    elapsed = time.perf_counter() - started
    if planned != expected:
        raise CheckFailedError(f"a tick planned {planned:,} rows, expected {expected:,}")
    return elapsed


def explain(engine: Engine, now: datetime) -> str:
    """The plan of the tick's claim (store.claim_due_enrolments' inner select)."""
    claim = "SELECT id FROM enrolments WHERE next_due_at <= :now ORDER BY next_due_at LIMIT 500"
    if engine.dialect.name == "postgresql":
        query = f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {claim} FOR UPDATE SKIP LOCKED"
    else:
        query = f"EXPLAIN QUERY PLAN {claim}"
    statement = text(query).bindparams(bindparam("now", type_=UTCDateTime()))
    with engine.connect() as conn:
        rows = conn.execute(statement, {"now": now}).all()
        conn.rollback()
    return "\n".join(f"    {row[-1]}" for row in rows)


def measure(
    folder: Path, home: Path, database: str, n: int, sizes: Sizes, postgres: PostgresServer
) -> tuple[Result, Result, str]:
    url = sqlite_url(folder / f"tick-{n}.db") if database == "sqlite" else postgres.new_database()
    runtime = fresh_runtime(make_settings(home, url, 25))
    now = utcnow()
    started = time.perf_counter()
    seed_enrolments(runtime.engine, n, now)
    mark_applied(runtime.engine, runtime, now)
    analyze(runtime.engine)
    console.print(
        f"  {database}: {n:,} enrolments seeded in {time.perf_counter() - started:.1f} s", style="dim"
    )
    timed_plan(runtime, now, 0)  # warm: the catalog read, the pool, the database's caches
    idle = Result(database, n, 0, [timed_plan(runtime, now, 0) for _ in range(sizes.idle_rounds)])
    ids = due_ids(n, sizes.due)
    busy = Result(database, n, sizes.due, [])
    for _ in range(sizes.due_rounds):
        make_due(runtime.engine, ids, now)
        busy.seconds.append(timed_plan(runtime, now, sizes.due))
        with runtime.engine.connect() as conn:
            planned = conn.scalar(select(func.count()).select_from(Delivery))
        if planned != sizes.due:
            raise CheckFailedError(
                f"the ledger holds {planned:,} rows after the tick, expected {sizes.due:,}"
            )
    console.print(
        f"  {database}: {n:,} enrolments: nothing due {idle.median * 1000:.1f} ms, "
        f"{sizes.due:,} due {busy.median:.2f} s",
        style="dim",
    )
    make_due(runtime.engine, ids, now)  # explained with work waiting, as the timed pass found it
    plan = explain(runtime.engine, now)
    runtime.engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{folder / f'tick-{n}.db'}{suffix}").unlink(missing_ok=True)
    return idle, busy, plan


def report(results: list[Result], plans: dict[str, str], sizes: Sizes) -> bool:
    small, large = sizes.lists
    table = new_table(
        "The tick: Runtime.plan(now), median seconds",
        "database",
        "enrolments",
        "due",
        "seconds",
        "each round, ms",
        f"ratio {large // 1000:,}k/{small // 1000:,}k",
    )
    by_key = {(r.database, r.enrolments, r.due): r for r in results}
    follows_due = True
    for r in results:
        ratio = ""
        if r.enrolments == large:
            base = by_key[r.database, small, r.due]
            value = r.median / base.median
            follows_due &= value <= GOAL_RATIO
            ratio = f"{value:.2f} ×"
        table.add_row(
            r.database,
            f"{r.enrolments:,}",
            f"{r.due:,}",
            f"{r.median:.4f}",
            " / ".join(f"{s * 1000:,.1f}" for s in r.seconds),
            ratio,
        )
    console.print(table)
    for database, plan in plans.items():
        console.print(f"the claim's plan on {database} at {large:,} enrolments:\n{plan}", markup=False)
    console.print(
        f"cost follows what is due, not the list size (10 × the list costs ≤ {GOAL_RATIO:.0f} ×): "
        f"{verdict(follows_due)}"
    )
    return follows_due


def tick_benchmark(quick: bool) -> None:
    sizes = QUICK if quick else Sizes()
    results: list[Result] = []
    plans: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp, postgres_server() as pg:
        folder = Path(tmp)
        home = make_home(folder)
        for database in ("sqlite", "postgresql"):
            for n in sizes.lists:
                idle, busy, plans[database] = measure(folder, home, database, n, sizes, pg)
                results += [idle, busy]
    results.sort(key=lambda r: (r.database != "sqlite", r.due, r.enrolments))
    report(results, plans, sizes)


if __name__ == "__main__":
    title = "mailer tick benchmark: the cost of a scheduler pass"
    sys.exit(bench_main("bench.tick", __doc__, title, tick_benchmark))
