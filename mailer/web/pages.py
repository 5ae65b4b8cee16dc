"""The site's page templates and the engine's words, as the answers every page is built from."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment


class Pages:
    """Renders `templates/pages/`; pages are never cached, for their URLs may carry tokens."""

    def __init__(self, environment: Environment, t: Callable[..., str], folder: Path) -> None:
        self.environment = environment
        self.t = t
        self.folder = folder  # where the templates are: an edit there renders `same` pages anew
        self._same: dict[tuple[object, ...], str] = {}
        self._same_stamp: tuple[tuple[str, int], ...] | None = None

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.environment.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def same(self, name: str, **context: str) -> HTMLResponse:
        """A page that is the same for every request (the answer to a sign-up), rendered once for
        each state of the template files: a rush of sign-ups asks for it hundreds of times a second."""
        stamp = self._stamp()
        if stamp != self._same_stamp:
            self._same, self._same_stamp = {}, stamp
        key = (name, *sorted(context.items()))
        html = self._same.get(key)
        if html is None:
            html = self._same[key] = self.environment.get_template(name).render(**context)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def _stamp(self) -> tuple[tuple[str, int], ...]:
        with os.scandir(self.folder) as entries:
            return tuple(sorted((e.name, e.stat().st_mtime_ns) for e in entries if e.is_file()))

    def message(self, title_key: str, body: str, status: int = 200) -> HTMLResponse:
        return self.page("message.html", status, title=self.t(title_key), body=body)
