"""The site's page templates and the engine's words, as the answers every page is built from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment


class Pages:
    """Renders `templates/pages/`; pages are never cached, for their URLs may carry tokens."""

    def __init__(self, environment: Environment, t: Callable[..., str]) -> None:
        self.environment = environment
        self.t = t

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.environment.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def message(self, title_key: str, body: str, status: int = 200) -> HTMLResponse:
        return self.page("message.html", status, title=self.t(title_key), body=body)
