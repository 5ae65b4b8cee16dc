"""Transports: where a finished message goes. `transport_from_url()` picks one from MAILER_SMTP_URL.

A transport opens a session (one SMTP connection carries many messages) whose `send_many()` yields
each mail with None (accepted), a TransientDeliveryError (try later) or a PermanentDeliveryError
(never).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from mailer.errors import ConfigError, DeliveryError


class Mail(Protocol):
    @property
    def recipient(self) -> str: ...
    @property
    def message(self) -> bytes: ...


M = TypeVar("M", bound=Mail)


class Connection(Protocol):
    def send_many(self, sender: str, mails: Iterable[M]) -> Iterator[tuple[M, DeliveryError | None]]:
        """Each mail with None once accepted, or its error; `mails` may be read one ahead."""
        ...


class Transport(Protocol):
    def session(self) -> AbstractContextManager[Connection]: ...

    def offers_smtputf8(self) -> bool:
        """Can mail go to an address whose local part is not ASCII (太郎@example.jp, RFC 6531)?"""
        ...

    def close(self) -> None:
        """Let go of what the transport keeps between sessions (pooled SMTP sessions)."""


def transport_from_url(url: str, home: Path) -> Transport:
    from mailer.send.maildir import MaildirTransport  # noqa: PLC0415 (each transport loads what it needs)
    from mailer.send.smtp import SMTPTransport  # noqa: PLC0415

    if url.startswith("maildir:"):
        folder = Path(url.removeprefix("maildir:").removeprefix("//"))
        return MaildirTransport(folder if folder.is_absolute() else home / folder)
    parts = urlsplit(url)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise ConfigError(
            "MAILER_SMTP_URL: expected smtp://user:pass@host:port (smtps://, ?starttls=1, &cafile=PATH) "
            "or maildir:FOLDER"
        )
    query = parse_qs(parts.query)
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
    except ValueError:
        raise ConfigError("MAILER_SMTP_URL: the port is not a number") from None
    return SMTPTransport(
        host=parts.hostname,
        port=port,
        ssl=parts.scheme == "smtps",
        starttls=query.get("starttls", ["0"])[0] in {"1", "true", "yes"},
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        timeout=float(query.get("timeout", ["30"])[0]),
        cafile=query.get("cafile", [None])[0],  # a relay whose certificate a private CA signed
    )
