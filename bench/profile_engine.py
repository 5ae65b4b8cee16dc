"""Where an engine worker's time goes: one deliver pass under cProfile, top entries printed.

Not part of `make bench` (profiling slows the run); use it when the send figures need explaining:
    uv run --frozen python -m bench.profile_engine [--count 5000] [--postgresql]
"""

from __future__ import annotations

import argparse
import io
import pstats
import tempfile
from pathlib import Path

from bench.common import (
    console,
    fresh_runtime,
    header,
    ledger_states,
    make_home,
    make_settings,
    run_workers,
    seed_due_deliveries,
    smtp_sink,
    sqlite_url,
)
from mailer.db import utcnow
from tests.services import postgres_server


def profile(folder: Path, database_url: str, count: int, top: int) -> None:
    home = make_home(folder)
    with smtp_sink(folder) as sink:
        runtime = fresh_runtime(make_settings(home, database_url, sink.port))
        seed_due_deliveries(runtime.engine, count, utcnow())
        stats_file = folder / "engine.prof"
        args = ["engine", "--home", str(home), "--smtp-port", str(sink.port), "--database-url", database_url]
        elapsed, results = run_workers(
            "bench.worker", [[*args, "--profile", str(stats_file)]], folder / "log"
        )
        states = ledger_states(runtime.engine)
        runtime.engine.dispose()
    console.print(
        f"{count:,} deliveries on {database_url.split(':', 1)[0]}: {elapsed:.2f} s under the profiler "
        f"({count / elapsed:,.0f} msgs/s), ledger {states}, worker said {results[0]}"
    )
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(str(stats_file), stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(top)
        console.print(f"[bold]top {top} by {order}[/bold]")
        console.print(out.getvalue().split("\n\n", 1)[-1].strip(), markup=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--postgresql", action="store_true")
    args = parser.parse_args()
    header("mailer engine profile")
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp:
        folder = Path(tmp)
        if args.postgresql:
            with postgres_server() as server:
                profile(folder, server.new_database(), args.count, args.top)
        else:
            profile(folder, sqlite_url(folder / "ledger.db"), args.count, args.top)


if __name__ == "__main__":
    main()
