"""SMTP replies to outcomes, in one place: transient or permanent, and which ones end an address.

RFC 5321: 4xx is a temporary failure, 5xx a permanent one. RFC 3463: the enhanced code 5.1.x is a
bad address and 5.2.1 a disabled mailbox; without an enhanced code, 550, 551 and 553 say the same
about the mailbox. Either way the address is never written to again.
"""

from __future__ import annotations

import re

from mailer.errors import PermanentDeliveryError, TransientDeliveryError

_SUPPRESS_ENHANCED = re.compile(r"\b5\.(?:1\.\d{1,3}|2\.1)\b")
_ENHANCED = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")
_BAD_MAILBOX = frozenset({550, 551, 553})


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def classify(code: int, message: bytes | str) -> TransientDeliveryError | PermanentDeliveryError:
    """The error a reply that did not accept the mail stands for."""
    text = f"{code} {_text(message)}"
    if 400 <= code < 500:
        return TransientDeliveryError(text, code)
    return PermanentDeliveryError(text, code)


def suppresses(error: PermanentDeliveryError) -> bool:
    """Does this refusal say the mailbox is gone (so the address is suppressed for good)?"""
    text = str(error)
    if _ENHANCED.search(text):
        return bool(_SUPPRESS_ENHANCED.search(text))
    return error.code in _BAD_MAILBOX
