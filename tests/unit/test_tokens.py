"""Signed link tokens: ids only, and those unreadable; unforgeable; confirm links expire, unsubscribe never."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer

from mailer.subscribers.tokens import ConfirmClaim, Tokens, UnsubscribeClaim

KEY = "unit-test-secret"
WEEK = 7 * 24 * 3600

# Made with KEY long ago (the confirm one carries a 2020-01-01 timestamp): links in old mails, in the
# first format, `[id, id]` as base64 JSON.
OLD_UNSUBSCRIBE = "WzQyLDdd.wUOC_c0kXDrMxUuEmUGHzAFoI9U"  # subscriber 42, delivery 7
OLD_CONFIRM = "WzUsOTld.XgvhAA.w8-j_4eeGyKXOKWcHhYUN0gVTS8"  # enrolment 5, nonce 99

ids = st.integers(min_value=1, max_value=2**63 - 1)  # a BIGINT id: 2**62 and beyond included
URL_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# Ids as a list of some size might have them: three digits and more, so that a chance match of a digit
# in the base64 is not taken for a leak.
PAIRS = [(214, 398), (1000, 1001), (123456, 7654321), (2**31 - 1, 2**31), (2**40 + 3, 2**62)]


def tokens(key: str = KEY) -> Tokens:
    return Tokens(key)


def legacy_unsubscribe(subscriber_id: int, delivery_id: int | None) -> str:
    """An unsubscribe token as the first format wrote it, the way it sits in mails already sent."""
    return URLSafeSerializer(KEY, salt="mailer.unsubscribe").dumps([subscriber_id, delivery_id])


def legacy_confirm(enrolment_id: int, nonce: int) -> str:
    """A confirm token as the first format wrote it, signed now."""
    return URLSafeTimedSerializer(KEY, salt="mailer.confirm").dumps([enrolment_id, nonce])


def payload(token: str) -> bytes:
    """The bytes a token carries, as anyone holding the link could decode them."""
    part = token.split(".", maxsplit=1)[0]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def shows(token: str, *numbers: int) -> bool:
    """Whether the token, or its decoded payload, shows any of the numbers in a form one could guess."""
    listed = json.dumps(list(numbers), separators=(",", ":")).encode()
    needles = [listed, listed.replace(b",", b", "), base64.urlsafe_b64encode(listed).rstrip(b"=")]
    for number in numbers:
        digits = str(number).encode()
        needles += [digits, base64.urlsafe_b64encode(digits).rstrip(b"="), f"{number:x}".encode()]
        for size in (4, 8):
            if number < 2 ** (8 * size):
                needles += [number.to_bytes(size, "big"), number.to_bytes(size, "little")]
    # Shorter ones would turn up in any base64 by chance.
    needles = [needle for needle in needles if len(needle) >= 3]
    return any(needle in seen for needle in needles for seen in (token.encode(), payload(token)))


def shared_prefix(a: str, b: str) -> int:
    """How many leading characters two strings have in common."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def tamper(token: str, index: int) -> str:
    """`token` with the character at `index` replaced by another URL-safe one."""
    replacement = "B" if token[index] == "A" else "A"
    return token[:index] + replacement + token[index + 1 :]


def tamperable(token: str) -> list[int]:
    """Positions whose change alters the decoded bytes (the last of a segment may be padding)."""
    return [i for i, char in enumerate(token) if char != "." and i + 1 < len(token) and token[i + 1] != "."]


@st.composite
def tampered(draw: st.DrawFn, token: str) -> str:
    """`token` with one character replaced, dropped or added, anywhere it changes what is signed."""
    how = draw(st.sampled_from(["replace", "drop", "add"]))
    alphabet = st.sampled_from(URL_SAFE + ".")
    if how == "replace":
        # The very last character holds two padding bits of the signature, which base64 ignores.
        index = draw(st.integers(0, len(token) - 2))
        char = draw(alphabet.filter(lambda c: c != token[index]))
        return token[:index] + char + token[index + 1 :]
    if how == "drop":
        index = draw(st.integers(0, len(token) - 1))
        return token[:index] + token[index + 1 :]
    index = draw(st.integers(0, len(token)))
    return token[:index] + draw(alphabet) + token[index:]


# --- Round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize(("enrolment_id", "nonce"), [(1, 0), (5, 99), (2**31, 123456), (10**15, 7)])
def test_confirm_token_round_trips_its_ids(enrolment_id: int, nonce: int) -> None:
    """A confirmation link brings back the enrolment and nonce it was made for."""
    token = tokens().confirm(enrolment_id, nonce)
    assert tokens().read_confirm(token, WEEK) == ConfirmClaim(enrolment_id, nonce)


@pytest.mark.parametrize(("subscriber_id", "delivery_id"), [(42, 7), (42, None), (10**15, 1)])
def test_unsubscribe_token_round_trips_its_ids(subscriber_id: int, delivery_id: int | None) -> None:
    """An unsubscribe link brings back the subscriber and the mail it came in."""
    token = tokens().unsubscribe(subscriber_id, delivery_id)
    assert tokens().read_unsubscribe(token) == UnsubscribeClaim(subscriber_id, delivery_id)


@given(enrolment_id=ids, nonce=ids, subscriber_id=ids, delivery_id=st.none() | ids)
def test_tokens_round_trip_any_ids(
    enrolment_id: int, nonce: int, subscriber_id: int, delivery_id: int | None
) -> None:
    """Any database ids survive the trip through a link."""
    t = tokens()
    assert t.read_confirm(t.confirm(enrolment_id, nonce), WEEK) == ConfirmClaim(enrolment_id, nonce)
    assert t.read_unsubscribe(t.unsubscribe(subscriber_id, delivery_id)) == UnsubscribeClaim(
        subscriber_id, delivery_id
    )


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_an_id_beyond_64_bits_is_refused_when_writing(bad: int) -> None:
    """A token is never written for an id its block cannot hold, rather than for a wrong one."""
    with pytest.raises(ValueError, match="ids from 0"):
        tokens().unsubscribe(bad, 1)
    with pytest.raises(ValueError, match="ids from 0"):
        tokens().confirm(1, bad)


# --- What a reader sees ------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_tokens_show_no_id(first: int, second: int) -> None:
    """Neither a token nor its decoded payload shows an id: no digits, no JSON, no binary integer."""
    for token in (tokens().confirm(first, second), tokens().unsubscribe(first, second)):
        assert not shows(token, first, second), token
        assert len(payload(token)) == 16


def test_the_leak_check_finds_ids_in_the_old_format() -> None:
    """The check above would catch the first format, which carried the ids in the clear."""
    assert shows(legacy_unsubscribe(214, 398), 214, 398)
    assert shows(legacy_confirm(214, 398), 214)


def test_tokens_for_consecutive_ids_look_unrelated() -> None:
    """Tokens for the next subscriber, enrolment or mail share no prefix: nobody can count along."""
    t = tokens()
    made = {
        "delivery": [t.unsubscribe(214, n) for n in range(300, 364)],
        "subscriber": [t.unsubscribe(n, 398) for n in range(300, 364)],
        "enrolment": [t.confirm(n, 99) for n in range(300, 364)],
    }
    for kind, series in made.items():
        for before, after in itertools.pairwise(series):
            assert shared_prefix(before, after) < 4, (kind, before, after)
            assert sum(a == b for a, b in zip(payload(before), payload(after), strict=True)) < 6, kind


def test_token_length_does_not_depend_on_the_ids() -> None:
    """Every token has one length, so not even its size says how large an id is."""
    t = tokens()
    assert {len(t.unsubscribe(s, d)) for s, d in [(1, None), (1, 1), (2**63 - 1, 2**63 - 1)]} == {50}
    assert {len(t.confirm(e, n)) for e, n in [(1, 0), (2**63 - 1, 2**31 - 1)]} == {57}


def test_tokens_carry_no_address() -> None:
    """A token holds the ids and nothing else: no address can leak through a link."""
    assert "@" not in tokens().confirm(5, 99) + tokens().unsubscribe(42, 7)


def test_tokens_are_url_safe() -> None:
    """Tokens go in URL paths and in the List-Unsubscribe mailto's subject as they are."""
    for token in (tokens().confirm(2**40, 2**40), tokens().unsubscribe(2**40, None)):
        assert set(token) <= set(URL_SAFE + ".")


# --- Links already mailed ----------------------------------------------------------------------


def test_unsubscribe_link_never_expires() -> None:
    """An unsubscribe link in a mail read years later, in the first format, still works (RFC 8058)."""
    assert tokens().read_unsubscribe(OLD_UNSUBSCRIBE) == UnsubscribeClaim(42, 7)


@given(subscriber_id=ids, delivery_id=st.none() | ids)
def test_any_unsubscribe_link_in_the_first_format_still_reads(
    subscriber_id: int, delivery_id: int | None
) -> None:
    """Whatever ids an unsubscribe link mailed before the ids were encrypted carries, it still works."""
    token = legacy_unsubscribe(subscriber_id, delivery_id)
    assert tokens().read_unsubscribe(token) == UnsubscribeClaim(subscriber_id, delivery_id)


def test_confirm_link_mailed_before_the_change_still_confirms_within_its_week() -> None:
    """A confirmation link in the first format, from a mail of the last few days, still works."""
    assert tokens().read_confirm(legacy_confirm(5, 99), WEEK) == ConfirmClaim(5, 99)


def test_old_confirm_link_has_expired_after_a_week() -> None:
    """A confirmation link from a mail sent years ago is refused with the usual week's limit."""
    assert tokens().read_confirm(OLD_CONFIRM, WEEK) is None
    assert tokens().read_confirm(OLD_CONFIRM, 100 * 365 * 24 * 3600) == ConfirmClaim(5, 99)


def test_first_format_tokens_are_not_interchangeable_either() -> None:
    """An old confirmation token cannot unsubscribe anyone, nor an old unsubscribe token confirm."""
    assert tokens().read_unsubscribe(legacy_confirm(42, 7)) is None
    assert tokens().read_confirm(legacy_unsubscribe(5, 99), WEEK) is None


# --- Forgery -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["new", "first format"])
def test_tampered_confirm_token_reads_as_none(kind: str) -> None:
    """Changing any one character of a confirmation link makes it worthless."""
    token = tokens().confirm(5, 99) if kind == "new" else legacy_confirm(5, 99)
    for index in tamperable(token):
        assert tokens().read_confirm(tamper(token, index), WEEK) is None, index


@pytest.mark.parametrize("token", [tokens().unsubscribe(42, 7), OLD_UNSUBSCRIBE])
def test_tampered_unsubscribe_token_reads_as_none(token: str) -> None:
    """Changing any one character of an unsubscribe link makes it worthless."""
    for index in tamperable(token):
        assert tokens().read_unsubscribe(tamper(token, index)) is None, index


@given(enrolment_id=ids, nonce=ids, subscriber_id=ids, delivery_id=st.none() | ids, data=st.data())
def test_any_tampered_token_is_refused(
    enrolment_id: int, nonce: int, subscriber_id: int, delivery_id: int | None, data: st.DataObject
) -> None:
    """A token with a character replaced, dropped or added, whatever its ids, reads as nothing."""
    t = tokens()
    readers: list[tuple[str, Callable[[str], object]]] = [
        (t.confirm(enrolment_id, nonce), lambda token: t.read_confirm(token, WEEK)),
        (t.unsubscribe(subscriber_id, delivery_id), t.read_unsubscribe),
    ]
    for token, read in readers:
        assert read(data.draw(tampered(token))) is None


def test_token_signed_with_another_key_reads_as_none() -> None:
    """A link made by another installation (another secret key) is refused."""
    other = tokens("another-secret")
    assert tokens().read_confirm(other.confirm(5, 99), WEEK) is None
    assert tokens().read_unsubscribe(other.unsubscribe(42, 7)) is None


def test_confirm_and_unsubscribe_tokens_are_not_interchangeable() -> None:
    """A confirmation token cannot unsubscribe anyone, nor the other way round."""
    assert tokens().read_unsubscribe(tokens().confirm(42, 7)) is None
    assert tokens().read_confirm(tokens().unsubscribe(5, 99), WEEK) is None


@pytest.mark.parametrize("garbage", ["", ".", "..", "a.b", "a.b.c", "WzUsOTld", "%00", "x" * 500])
def test_garbage_reads_as_none(garbage: str) -> None:
    """A mangled link is refused quietly."""
    assert tokens().read_confirm(garbage, WEEK) is None
    assert tokens().read_unsubscribe(garbage) is None


@given(st.text(max_size=200))
def test_reading_any_text_never_raises(text: str) -> None:
    """Whatever a link scanner or a user puts in the URL, reading it never crashes."""
    assert tokens().read_confirm(text, WEEK) is None
    assert tokens().read_unsubscribe(text) is None


# --- Expiry ------------------------------------------------------------------------------------


def test_expired_confirm_token_reads_as_none() -> None:
    """A confirmation link older than its allowed age no longer works."""
    token = tokens().confirm(5, 99)
    assert tokens().read_confirm(token, WEEK) == ConfirmClaim(5, 99)
    assert tokens().read_confirm(token, -1) is None
