"""The address policy: normalise, refuse blocked providers (before strict syntax), validate."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import idna
from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from publicsuffixlist import PublicSuffixList

from mailer.config import BlockedProvider, within

MAX_LENGTH = 254  # RFC 5321's path limit less the angle brackets

# Full-width ASCII (ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏｍ, typed with a Japanese IME) folds to ASCII;
# email-validator applies NFC only, which leaves these as they are.
_WIDTH_FOLD = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


@dataclass(frozen=True)
class Address:
    email: str  # as stored and written to: the domain lowercased, NFC
    key: str  # folded for uniqueness: one person, one row


@dataclass(frozen=True)
class Refusal:
    """Why an address is refused: `reason` is a message key, `provider` set for blocked ones."""

    reason: str  # empty, too_long, invalid, blocked
    provider: str = ""


@lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList(only_icann=True)


def fold(raw: str) -> str:
    """The typed text with full-width ASCII folded, surrounding space gone, NFC."""
    return unicodedata.normalize("NFC", raw.translate(_WIDTH_FOLD).strip())


def _matches(domain: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        # `hotmail.*`: the registrable domain is the label followed by a public suffix
        # (hotmail.co.jp, outlook.jp), so hotmailer.com and hotmail.example.com pass.
        private = _suffixes().privatesuffix(domain)
        return private is not None and private.split(".", 1)[0] == pattern[:-2]
    return within(domain, pattern)


def blocked_provider(domain: str, blocked: tuple[BlockedProvider, ...]) -> str | None:
    domain = domain.lower().rstrip(".")
    for entry in blocked:
        if any(_matches(domain, pattern) for pattern in entry.domains):
            return entry.provider
    return None


def check_address(
    raw: str,
    blocked: tuple[BlockedProvider, ...],
    *,
    check_deliverability: bool = False,
    smtputf8: Callable[[], bool] = lambda: True,
) -> Address | Refusal:
    """A normalised address, or why not. The provider is checked on the domain part first, so
    an old carrier address like `taro..yamada@docomo.ne.jp` gets the carrier's message.
    `smtputf8` is asked only for a local part that is not ASCII: can such mail go (the relay)?"""
    text = fold(raw)
    if not text:
        return Refusal("empty")
    if len(text) > MAX_LENGTH:
        return Refusal("too_long")
    if "@" in text:
        provider = blocked_provider(text.rpartition("@")[2], blocked)
        if provider:
            return Refusal("blocked", provider)
    try:
        valid = validate_email(text, check_deliverability=check_deliverability)
    except EmailNotValidError:
        return Refusal("invalid")
    # email-validator lowercases the domain and IDNA-decodes it; the local part keeps its case.
    email = valid.normalized
    refusal = _refused(valid, blocked, smtputf8)
    return refusal or Address(email=email, key=email.casefold())


def _refused(
    valid: ValidatedEmail, blocked: tuple[BlockedProvider, ...], smtputf8: Callable[[], bool]
) -> Refusal | None:
    """What refuses an address that is valid: its provider, or a relay that cannot take it."""
    provider = blocked_provider(valid.ascii_domain or valid.domain, blocked)
    if provider:  # an IDN or trailing-dot spelling of a blocked domain
        return Refusal("blocked", provider)
    if not valid.local_part.isascii() and not smtputf8():
        return Refusal("smtputf8")
    return None


def wire_form(email: str) -> str:
    """The address as SMTP and the To: header carry it: an internationalised domain (例え.jp) in
    its ASCII form (xn--r8jz45g.jp), as RFC 5890 writes it outside SMTPUTF8."""
    local, _, domain = email.rpartition("@")
    if domain.isascii():
        return email
    return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
