"""Steps the magazine's tests share: an issue's folder, readers by the thousand, an issue sent."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import insert, select

from mailer.broadcasts import issues
from mailer.db import session_scope
from mailer.models import Delivery, Enrolment, Subscriber, SubscriberTag
from mailer.runtime import Runtime

SUBJECT = "{{ name }}さんへ　WEBビジネス通信 12月号"
SUBJECT_START = "WEBビジネス通信 12月号"


def issue_folder(home: Path, name: str = "2026-12", *, html: bool = True) -> Path:
    """An issue as an operator writes it: subject, text and (optionally) HTML."""
    folder = home / "issues" / name
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text(SUBJECT + "\n", encoding="utf-8")
    (folder / "body.txt").write_text(
        "{{ name }}さん、こんにちは。\n今月は「読まれるメルマガの書き方」をお届けします。\n", encoding="utf-8"
    )
    if html:
        (folder / "body.html").write_text(
            "<p>{{ name }}さん、こんにちは。</p><p>今月は「読まれるメルマガの書き方」をお届けします。</p>\n",
            encoding="utf-8",
        )
    return folder


def create(rt: Runtime, folder: Path, now: datetime, **options: object) -> int:
    with rt.transaction() as session:
        return issues.create(
            session,
            rt.site,
            rt.catalog(),
            rt.renderer,
            folder,
            now=now,
            **options,  # type: ignore[arg-type]
        ).id


def start(rt: Runtime, issue_id: int, now: datetime) -> int:
    """`broadcast send`: the issue started and its audience written. Rows written."""
    with rt.transaction() as session:
        issues.start(session, issue_id, now)
    return issues.write_audience(rt.sessions, issue_id, now)


def readers(
    rt: Runtime,
    count: int,
    now: datetime,
    *,
    prefix: str = "r",
    timezone: str | None = None,
    tag: str | None = None,
    sequence: str | None = None,
) -> list[int]:
    """`count` confirmed subscribers written straight to the store (as an import would)."""
    with session_scope(rt.sessions) as session:
        first = (session.scalar(select(Subscriber.id).order_by(Subscriber.id.desc()).limit(1)) or 0) + 1
        rows = [
            {
                "email": f"{prefix}{n}@example.com",
                "email_key": f"{prefix}{n}@example.com",
                "name": f"読者{n}",
                "timezone": timezone,
                "state": "confirmed",
                "created_at": now,
                "confirmed_at": now,
            }
            for n in range(count)
        ]
        session.execute(insert(Subscriber), rows)
        ids = list(
            session.scalars(select(Subscriber.id).where(Subscriber.id >= first).order_by(Subscriber.id))
        )
        if tag:
            session.execute(insert(SubscriberTag), [{"subscriber_id": i, "tag": tag} for i in ids])
        if sequence:
            session.execute(
                insert(Enrolment),
                [
                    {
                        "subscriber_id": i,
                        "sequence_id": sequence,
                        "state": "active",
                        "created_at": now,
                        "entered_at": now,
                        "shift_days": 0,
                    }
                    for i in ids
                ],
            )
    return ids


def rows_by_state(rt: Runtime, issue_id: int) -> dict[str, int]:
    with session_scope(rt.sessions) as session:
        return issues.state_counts(session, issue_id)


def issue_state(rt: Runtime, issue_id: int) -> str:
    with session_scope(rt.sessions) as session:
        return issues.get(session, issue_id).state


def issue_rows(rt: Runtime, issue_id: int) -> dict[int, str]:
    """Each reader's row of the issue: subscriber id -> state."""
    with session_scope(rt.sessions) as session:
        return dict(
            session.execute(
                select(Delivery.subscriber_id, Delivery.state).where(Delivery.broadcast_id == issue_id)
            ).all()
        )
