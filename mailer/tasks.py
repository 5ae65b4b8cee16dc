"""The Celery app and its thin tasks: wake-ups over the ledger, never the truth themselves.

A lost, duplicated or retried message changes nothing: `mailer.tick` plans what the cursors say is
due and `mailer.deliver` sends what the ledger says is due. No task carries an ETA (with Redis a
long ETA is redelivered after the visibility timeout); delays live in the ledger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import Celery, signals
from sqlalchemy.exc import OperationalError

from mailer.background import Background
from mailer.config import Settings
from mailer.runtime import Runtime

log = logging.getLogger(__name__)

app = Celery("mailer")
VISIBILITY_TIMEOUT = 3600
WAKE_EXPIRES = 300  # a wake-up nobody took within this is stale: the next tick sends another
WAKE_COALESCE = 0.2  # seconds: a burst of wake-ups becomes one (a pass over the ledger costs ms)
_runtime: Runtime | None = None


def configure(runtime: Runtime, *, worker_here: bool = False) -> Celery:
    """Point the app at this process's runtime and broker; returns the app. `worker_here`: this
    process runs its own worker (`mailer run`), so a wake-up sends on its own thread at once
    instead of going through the broker to the worker next door."""
    global _runtime  # noqa: PLW0603 (a worker process has exactly one runtime; tasks reach it here)
    _runtime = runtime
    settings = runtime.settings
    broker = settings.effective_broker_url
    transport_options: dict[str, object] = {}
    if broker.startswith("sqla+"):
        settings.instance_dir.mkdir(parents=True, exist_ok=True)
    elif broker.startswith(("redis://", "rediss://")):
        # A message unacknowledged this long goes to another worker. Tasks carry no ETA and
        # expire after minutes, so this only matters for a worker that vanished mid-task.
        transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
    app.conf.update(
        broker_url=broker,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # Redis restarted or away: keep trying, never exit
        broker_transport_options=transport_options,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,  # a worker that dies mid-task leaves the message for another
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_default_queue="mailer",
        timezone="UTC",
        beat_schedule={
            "tick": {
                "task": "mailer.tick",
                "schedule": runtime.site.delivery.tick_seconds,
                "options": {"expires": max(30.0, runtime.site.delivery.tick_seconds * 6)},
            }
        },
        # Kept in memory, no schedule file: a missed tick is harmless and several beat processes
        # (on one host or many) have nothing to share or corrupt.
        beat_scheduler="celery.beat:Scheduler",
    )
    runtime.wake = Coalesced(deliver if worker_here else wake)
    signals.worker_shutdown.connect(_close_runtime, weak=False, dispatch_uid="mailer.close_runtime")
    return app


def _close_runtime(**_: object) -> None:
    if _runtime is not None:
        _runtime.close()


def runtime() -> Runtime:
    if _runtime is None:  # a worker started by the `celery` command rather than `mailer worker`
        configure(Runtime(Settings(), sending=True))
    assert _runtime is not None
    return _runtime


class Coalesced:
    """Wake-ups are hints: a burst of them (a rush of sign-ups) becomes one broker message, sent
    `delay` after the first of them, off the request's thread. Each wake-up is called after its
    transaction committed, so the one message, published later, covers every row of the burst.

    One long-lived thread publishes: Celery keeps its producer and result backend per thread, and
    building them again on a new thread for every message cost about 30 ms of CPU each time."""

    def __init__(self, publish: Callable[[], None], delay: float = WAKE_COALESCE) -> None:
        self.publish = publish
        self.delay = delay
        self._wanted = threading.Event()
        # What it had not yet published at exit is lost: the next tick finds those rows anyway.
        self._publisher = Background(self._run, "mailer-wake")

    def __call__(self) -> None:
        self._wanted.set()
        self._publisher.ensure()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            time.sleep(self.delay)
            # Cleared before publishing: a wake-up from here on asks for the next message.
            self._wanted.clear()
            try:
                self.publish()
            except Exception:
                # Its thread must outlive a failure (the tick sends what a wake-up did not).
                log.exception("wake.failed")


def wake() -> None:
    """Ask a worker to look at the ledger now (after a sign-up or confirmation commits)."""
    try:
        deliver.apply_async(expires=WAKE_EXPIRES)
    except Exception:
        # The tick finds the row within seconds anyway; a broker hiccup must not fail the request.
        log.warning("wake.failed", exc_info=True)


@app.task(name="mailer.tick", ignore_result=True)  # type: ignore[untyped-decorator]  # Celery ships no types
def tick() -> int:
    """Plan what is due, then wake the workers if anything is there to send."""
    try:
        planned = runtime().plan(runtime().clock())
    except OperationalError as exc:
        log.warning("tick.database_unavailable error=%s", type(exc.orig).__name__)
        return 0
    deliver.apply_async(expires=WAKE_EXPIRES)
    return planned


@app.task(name="mailer.deliver", ignore_result=True)  # type: ignore[untyped-decorator]  # Celery ships no types
def deliver() -> int:
    """Send everything due now; duplicate wake-ups find nothing left to claim and return."""
    try:
        report = runtime().deliverer().run(runtime().clock)
    except OperationalError as exc:
        # Claimed rows wait for their lease to lapse; the next tick after the database is back
        # wakes a worker for them. Nothing is lost, nothing to retry here.
        log.warning("deliver.database_unavailable error=%s", type(exc.orig).__name__)
        return 0
    if report.sent or report.failed:
        log.info(
            "deliver.done sent=%s skipped=%s deferred=%s retried=%s failed=%s",
            report.sent,
            report.skipped,
            report.deferred,
            report.retried,
            report.failed,
        )
    return report.sent


def broker_ok() -> bool:
    """Can this process reach the broker now? For /healthz."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception:
        return False
    return True
