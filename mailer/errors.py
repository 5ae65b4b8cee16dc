"""The exceptions the engine raises on purpose.

    MailerError                 anything the user should see as one clear line (CLI exit 1)
    ├── ConfigError             the environment or mailer.toml is wrong
    ├── SequenceError           a seminar file or one of its templates is wrong (file, step, what)
    ├── BroadcastError          a magazine issue, its files or a command on it is wrong (one line)
    └── DeliveryError           the transport could not hand a message over
        ├── TransientDeliveryError   4xx, connection lost: try again later
        └── PermanentDeliveryError   5xx: never retry this recipient

Expected outcomes of a use case (a refused address, an already used token) are values, not exceptions.
"""

from __future__ import annotations


class MailerError(Exception):
    """An error whose message is meant for the person at the terminal or page."""


class ConfigError(MailerError):
    pass


class SequenceError(MailerError):
    pass


class DeliveryError(MailerError):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientDeliveryError(DeliveryError):
    pass


class PermanentDeliveryError(DeliveryError):
    pass


class BroadcastError(MailerError):
    """A mail-magazine command cannot do what was asked: the issue, its files or the input."""
