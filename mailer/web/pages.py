"""The site's page templates and the engine's words, as the answers every page is built from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment

from mailer.stamps import FolderStamp, Stamp


class Pages:
    """Renders `templates/pages/`; pages are never cached, for their URLs may carry tokens."""

    def __init__(self, environment: Environment, t: Callable[..., str], folder: Path) -> None:
        self.environment = environment
        self.t = t
        self._files = FolderStamp(folder)  # an edit of the templates renders `same` pages anew
        self._same: dict[tuple[object, ...], str] = {}
        self._same_stamp: Stamp | None = None

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.environment.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def same(self, name: str, **context: str) -> HTMLResponse:
        """A page that is the same for every request (the answer to a sign-up), rendered once for
        each state of the template files: a rush of sign-ups asks for it hundreds of times a second."""
        stamp = self._files.current()
        if stamp != self._same_stamp:
            self._same, self._same_stamp = {}, stamp
        key = (name, *sorted(context.items()))
        html = self._same.get(key)
        if html is None:
            html = self._same[key] = self.environment.get_template(name).render(**context)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def message(self, title_key: str, body: str, status: int = 200) -> HTMLResponse:
        return self.page("message.html", status, title=self.t(title_key), body=body)
