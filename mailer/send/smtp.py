"""SMTP through smtplib: one connection for many messages, and the only place smtplib errors are
translated (4xx and lost connections are transient, 5xx permanent)."""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from mailer.errors import PermanentDeliveryError, TransientDeliveryError

log = logging.getLogger(__name__)


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def classify(code: int, message: bytes | str) -> TransientDeliveryError | PermanentDeliveryError:
    text = f"{code} {_text(message)}"
    if 400 <= code < 500:
        return TransientDeliveryError(text, code)
    return PermanentDeliveryError(text, code)


class SMTPConnection:
    """A session with the relay, opened on first use and again after the server drops it."""

    def __init__(self, transport: SMTPTransport) -> None:
        self.t = transport
        self.client: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        t = self.t
        context = ssl.create_default_context(cafile=t.cafile)
        try:
            client: smtplib.SMTP
            if t.ssl:
                client = smtplib.SMTP_SSL(t.host, t.port, timeout=t.timeout, context=context)
            else:
                client = smtplib.SMTP(t.host, t.port, timeout=t.timeout)
            client.ehlo()
            if t.starttls:
                client.starttls(context=context)
                client.ehlo()
            if t.username:
                client.login(t.username, t.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientDeliveryError(f"smtp: login refused: {exc.smtp_code}", exc.smtp_code) from exc
        except smtplib.SMTPResponseException as exc:
            raise classify(exc.smtp_code, exc.smtp_error) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientDeliveryError(f"smtp: cannot connect to {t.host}:{t.port}: {exc}") from exc
        return client

    def _drop(self) -> None:
        if self.client is not None:
            with suppress(OSError, smtplib.SMTPException):
                self.client.close()
        self.client = None

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        if self.client is None:
            self.client = self._connect()
        client = self.client
        try:
            client.sendmail(sender, [recipient], message)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[recipient]
            self._reset()
            raise classify(code, text) from exc
        except smtplib.SMTPServerDisconnected as exc:
            self._drop()
            raise TransientDeliveryError(f"smtp: connection lost: {exc}") from exc
        except smtplib.SMTPResponseException as exc:
            self._reset()
            raise classify(exc.smtp_code, exc.smtp_error) from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise TransientDeliveryError(f"smtp: {exc}") from exc

    def _reset(self) -> None:
        """RSET after a refusal, so the next MAIL FROM is not "503 sender already specified"."""
        if self.client is None:
            return
        try:
            self.client.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def close(self) -> None:
        if self.client is not None:
            with suppress(OSError, smtplib.SMTPException):
                self.client.quit()
        self._drop()


class SMTPTransport:
    name = "smtp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl: bool = False,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        cafile: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self.starttls = starttls
        self.username = username
        self.password = password
        self.timeout = timeout
        self.cafile = cafile

    @contextmanager
    def session(self) -> Iterator[SMTPConnection]:
        connection = SMTPConnection(self)
        try:
            yield connection
        finally:
            connection.close()
