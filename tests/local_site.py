"""The embedded default as a newcomer runs it: mail written to a maildir, readable at /outbox."""

from __future__ import annotations

import contextlib
import mailbox
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from mailer.runtime import Runtime
from mailer.send.maildir import MaildirTransport
from mailer.web.app import create_app
from tests.conftest import Clock, make_settings, serve


@dataclass
class LocalSite:
    runtime: Runtime
    url: str  # MAILER_BASE_URL, where it is served

    @property
    def folder(self) -> Path:
        transport = self.runtime.transport
        assert isinstance(transport, MaildirTransport)
        return transport.folder

    def box(self) -> mailbox.Maildir:
        transport = self.runtime.transport
        assert isinstance(transport, MaildirTransport)
        return transport.box()

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=10, follow_redirects=False)

    def sign_up(self, email: str, name: str = "") -> None:
        """Through the form, as a reader does; then the tick that writes the confirmation."""
        response = httpx.post(f"{self.url}/subscribe", data={"email": email, "name": name}, timeout=10)
        assert response.status_code == 200, response.text
        self.runtime.tick(self.runtime.clock)


@contextlib.contextmanager
def local_site(home: Path, database_url: str, clock: Clock, **settings: str) -> Iterator[LocalSite]:
    """The app on the maildir transport (`home/outbox`), served for real at its base URL."""
    runtime = Runtime(make_settings(home, database_url, "maildir:./outbox", **settings), clock=clock)
    runtime.upgrade_db()
    port = int(runtime.settings.base_url.rsplit(":", 1)[1])
    try:
        with serve(create_app(runtime), port) as url:
            yield LocalSite(runtime, url)
    finally:
        runtime.close()
