"""`/archive`: the magazine's back numbers, issues sent with `--archive` only, newest first.

Each issue is shown as its content alone (no footer, no unsubscribe link), rendered for a neutral
reader: no reader's name, link or token is ever on these public pages.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from mailer.broadcasts import content
from mailer.broadcasts.issues import IssueState
from mailer.models import Broadcast
from mailer.runtime import Runtime
from mailer.web.pages import Pages


class Archive:
    def __init__(self, runtime: Runtime, pages: Pages) -> None:
        self.runtime = runtime
        self.pages = pages

    def published(self) -> list[Broadcast]:
        with self.runtime.transaction() as session:
            return list(
                session.scalars(
                    select(Broadcast)
                    .where(Broadcast.archive.is_(True), Broadcast.state == IssueState.SENT)
                    .order_by(Broadcast.started_at.desc(), Broadcast.id.desc())
                )
            )

    def index(self) -> HTMLResponse:
        magazine = content.magazine(self.runtime.site, self.runtime.catalog())
        items = []
        for issue in self.published():
            view = content.public_view(self.runtime.renderer, magazine, content.of(issue))
            assert issue.started_at is not None
            items.append(
                {
                    "id": issue.id,
                    "subject": view.subject,
                    "date": issue.started_at.astimezone(magazine.timezone),
                }
            )
        return self.pages.page("archive.html", items=items, magazine=magazine)

    def issue(self, issue_id: int) -> HTMLResponse:
        found = next((issue for issue in self.published() if issue.id == issue_id), None)
        if found is None:  # not sent, not for the archive, or no such issue: all look the same
            return self.pages.message("notfound.title", "", 404)
        magazine = content.magazine(self.runtime.site, self.runtime.catalog())
        view = content.public_view(self.runtime.renderer, magazine, content.of(found))
        assert found.started_at is not None
        return self.pages.page(
            "archive_issue.html",
            view=view,
            magazine=magazine,
            date=found.started_at.astimezone(magazine.timezone),
        )


def router(runtime: Runtime, pages: Pages) -> APIRouter:
    archive = Archive(runtime, pages)
    routes = APIRouter(default_response_class=HTMLResponse)
    routes.add_api_route("/archive", archive.index, methods=["GET"])
    routes.add_api_route("/archive/{issue_id}", archive.issue, methods=["GET"])
    return routes
