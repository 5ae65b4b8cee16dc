"""A Celery worker and beat inside this process, in threads: the embedded `mailer run`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from celery.beat import EmbeddedService
from celery.worker import WorkController

log = logging.getLogger(__name__)


@contextmanager
def worker_thread(app: Celery, *, beat: bool = True) -> Iterator[WorkController]:
    """Start a worker (and beat) in threads; stop both when the block ends."""
    app.finalize()
    app.set_default()
    app.set_current()
    started = threading.Event()

    class _Worker(WorkController):  # type: ignore[misc]  # Celery ships no types
        def on_consumer_ready(self, consumer: object) -> None:
            super().on_consumer_ready(consumer)
            started.set()

    worker = _Worker(
        app=app,
        pool="threads",
        concurrency=2,
        hostname="mailer-embedded@%h",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        queues=["mailer"],
    )
    thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the embedded worker did not start within 30 s")
    # Celery's Service defaults to the PersistentScheduler whatever beat_scheduler says: name it, or
    # a celerybeat-schedule file appears in the working folder.
    service = EmbeddedService(app, thread=True, scheduler_cls=app.conf.beat_scheduler) if beat else None
    if service is not None:
        service.start()
    try:
        yield worker
    finally:
        if service is not None:
            service.stop()
        worker.stop(in_sighandler=False)
        thread.join(15)
        if thread.is_alive():
            log.warning("embedded.worker_still_running")
