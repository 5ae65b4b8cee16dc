"""Sign-ups written in batches: one that fails never fails the others, and every answer follows
its commit."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.db import session_scope
from mailer.models import Delivery, Subscriber
from mailer.runtime import Runtime
from mailer.subscribers import signup
from mailer.subscribers.intake import Intake
from tests.conftest import LogLines


class BrokenError(Exception):
    """What one sign-up's work raises."""


def test_a_sign_up_that_fails_in_its_batch_fails_alone(runtime: Runtime, logged: LogLines) -> None:
    """The first sign-up holds the writer until 19 more have queued; they go as one batch, whose
    one bad sign-up fails it; each is then written alone: 19 answered, 1 error, 19 stored."""
    queued = threading.Event()

    def work(session: Session, email: str) -> signup.Accepted | object:
        if email == "first@example.com":
            assert queued.wait(5)
        if email == "bad@example.com":
            raise BrokenError(email)
        request = signup.SignupRequest(email=email)
        return signup.subscribe(session, runtime.site, runtime.catalog(), request, runtime.clock())

    intake: Intake[str, object] = Intake(runtime.transaction, work)
    emails = ["first@example.com", *(f"r{n}@example.com" for n in range(9)), "bad@example.com"]
    emails += [f"s{n}@example.com" for n in range(9)]

    async def rush() -> list[object]:
        first = asyncio.ensure_future(intake.submit(emails[0]))
        await asyncio.sleep(0.05)  # the writer has taken the first and waits in its work
        rest = [asyncio.ensure_future(intake.submit(email)) for email in emails[1:]]
        await asyncio.sleep(0.05)
        queued.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(rush())
    assert [type(o) for o in outcomes].count(signup.Accepted) == 19
    assert isinstance(outcomes[emails.index("bad@example.com")], BrokenError)
    assert logged.named("intake.batch_retried") == ["intake.batch_retried size=19 type=BrokenError"]
    with session_scope(runtime.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 19
        assert session.scalar(select(func.count()).select_from(Delivery)) == 19


@pytest.mark.parametrize("size", [1, 30])
def test_every_answer_comes_after_its_commit(runtime: Runtime, size: int) -> None:
    """When a sign-up is answered, its subscriber and its confirmation are in the database."""

    def work(session: Session, email: str) -> signup.Accepted | object:
        request = signup.SignupRequest(email=email)
        return signup.subscribe(session, runtime.site, runtime.catalog(), request, runtime.clock())

    intake: Intake[str, object] = Intake(runtime.transaction, work)

    async def one(email: str) -> bool:
        await intake.submit(email)
        with session_scope(runtime.sessions) as session:
            found = session.scalars(select(Subscriber.id).where(Subscriber.email == email)).first()
            return found is not None and bool(
                session.scalars(select(Delivery.id).where(Delivery.subscriber_id == found)).first()
            )

    async def rush() -> list[bool]:
        return await asyncio.gather(*(one(f"c{n}@example.com") for n in range(size)))

    assert asyncio.run(rush()) == [True] * size
