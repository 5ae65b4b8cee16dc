"""A benchmark worker process: the engine's deliver pass, or the smtplib limit, timed from `go`.

Run by bench/send.py as `python -m bench.worker engine|limit ...`; it prints `ready` once startup is
done, waits for `go` on stdin, works, and prints one JSON line with what it did and its peak RSS.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import smtplib
from pathlib import Path

from bench.common import SEQUENCE, STEP, make_settings, process_peak_rss_mb, ready_and_wait
from mailer import logs
from mailer.db import utcnow
from mailer.deliver.jobs import Report
from mailer.mail.compose import Recipient
from mailer.runtime import Runtime

MAX_FAILURES = 20  # failed deliver passes before a worker gives up (the benchmark then fails its check)


def sample_message(runtime: Runtime) -> bytes:
    """One real mail as the engine renders it: lesson-1 for reader 1 (also compiles the templates)."""
    sequence = runtime.catalog().get(SEQUENCE)
    assert sequence is not None
    step = sequence.step(STEP)
    assert step is not None
    recipient = Recipient(1, 1, "reader1@example.com", "読者1")
    return runtime.renderer.step(sequence, step).render(recipient, utcnow())


def engine(args: argparse.Namespace) -> dict[str, object]:
    """What the Celery task `mailer.deliver` does: claim, render, send, mark until nothing is due."""
    # As `mailer worker` runs: INFO lines (one per mail sent) to stderr, here the benchmark's log.
    logs.configure(logging.INFO)
    # As `mailer worker` builds it: a sending process (no pre-ping round trip per transaction).
    runtime = Runtime(make_settings(args.home, args.database_url, args.smtp_port), sending=True)
    sample_message(runtime)
    with runtime.engine.connect():  # the pool holds a connection, as in a long-running worker
        pass
    deliverer = runtime.deliverer()
    ready_and_wait()
    profiler = cProfile.Profile() if args.profile else None
    report, errors = Report(), []
    while True:
        # The task boundary: a failed `mailer.deliver` is logged and the next wake-up (the tick sends
        # one every few seconds) runs it again; here at once. Rows it held wait for their lease.
        try:
            report += profiler.runcall(deliverer.run, utcnow) if profiler else deliverer.run(utcnow)
            break
        except Exception as exc:
            logging.getLogger("bench.worker").exception("deliver failed")
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            if len(errors) >= MAX_FAILURES:
                break
    if profiler:
        profiler.dump_stats(args.profile)
    return {
        "sent": report.sent,
        "skipped": report.skipped,
        "deferred": report.deferred,
        "retried": report.retried,
        "failed": report.failed,
        "errors": errors,
        "rss_mb": process_peak_rss_mb(),
    }


def limit(args: argparse.Namespace) -> dict[str, object]:
    """The ceiling: the same mail, prebuilt once, `sendmail`-ed `count` times over one connection."""
    runtime = Runtime(make_settings(args.home, "sqlite://", args.smtp_port))
    message = args.message.read_bytes() if args.message else sample_message(runtime)
    sender = runtime.site.sender.address
    ready_and_wait()
    client = smtplib.SMTP("127.0.0.1", args.smtp_port)
    client.ehlo()
    for i in range(args.offset, args.offset + args.count):
        client.sendmail(sender, [f"reader{i}@example.com"], message)
    client.quit()
    return {"sent": args.count, "size": len(message), "rss_mb": process_peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["engine", "limit"])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--database-url", default="sqlite://")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--message", type=Path, default=None, help="limit: send these bytes (a mail)")
    parser.add_argument("--profile", type=Path, default=None, help="engine: write cProfile stats here")
    args = parser.parse_args()
    result = engine(args) if args.mode == "engine" else limit(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
