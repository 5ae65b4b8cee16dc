"""Sign-ups written in batches by one thread: a rush is many small transactions made few.

A web process's requests hand their sign-up to `Intake.submit` and wait for its answer. One
thread takes what has queued up meanwhile and writes it all in one transaction (group commit): one
BEGIN, one COMMIT and one wake-up for the batch, and no request thread queueing for SQLite's
write lock. Every answer of a batch comes after its commit, so a reader told "check your mail" has
a confirmation in the ledger. When the batch fails (a new address that another process inserted
meanwhile, the database away), each sign-up of it is tried again alone, so one never fails another.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.background import Background

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

MAX_BATCH = 100  # sign-ups per transaction at most: a batch holds SQLite's write lock for its time


@dataclass
class _Waiting(Generic[Item, Outcome]):
    item: Item
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Outcome]

    def answer(self, outcome: Outcome | None, error: BaseException | None = None) -> None:
        with suppress(RuntimeError):  # its server's loop has closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._set, outcome, error)

    def _set(self, outcome: Outcome | None, error: BaseException | None) -> None:
        if self.future.done():  # the request went away meanwhile
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(outcome)  # type: ignore[arg-type]  # None only with an error


class Intake(Generic[Item, Outcome]):
    """`work(session, item)` for each submitted item, batched into `transaction()`s by one thread."""

    def __init__(
        self,
        transaction: Callable[[], AbstractContextManager[Session]],
        work: Callable[[Session, Item], Outcome],
    ) -> None:
        self.transaction = transaction
        self.work = work
        self._queue: queue.SimpleQueue[_Waiting[Item, Outcome]] = queue.SimpleQueue()
        # At exit, requests still waiting get no answer, and nothing of theirs was committed
        # (their clients see the connection close).
        self._writer = Background(self._run, "mailer-intake")

    async def submit(self, item: Item) -> Outcome:
        """The item's outcome once its batch committed; what its work raised, raised here."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(item, loop, loop.create_future())
        self._queue.put(waiting)
        self._writer.ensure()
        outcome: Outcome = await waiting.future
        return outcome

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _write(self, batch: list[_Waiting[Item, Outcome]]) -> None:
        if len(batch) > 1:
            try:
                with self.transaction() as session:
                    outcomes = [self.work(session, waiting.item) for waiting in batch]
            except Exception as exc:  # each is tried alone below, and answered with its own error
                log.warning("intake.batch_retried size=%d type=%s", len(batch), type(exc).__name__)
            else:
                for waiting, outcome in zip(batch, outcomes, strict=True):
                    waiting.answer(outcome)
                return
        for waiting in batch:
            try:
                waiting.answer(self._alone(waiting.item))
            except Exception as exc:  # handed to the request, whose error page tells
                waiting.answer(None, exc)

    def _alone(self, item: Item) -> Outcome:
        try:
            with self.transaction() as session:
                return self.work(session, item)
        except IntegrityError:
            # The same new address signed up twice at once, the other in another process: its
            # row is there now, and this one answers like any second sign-up.
            with self.transaction() as session:
                return self.work(session, item)
