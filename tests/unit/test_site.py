"""The site file: one schema, its defaults, and one-line errors naming the file, the key and the problem."""

from __future__ import annotations

import dataclasses
from datetime import time, timedelta
from pathlib import Path

import pytest

from mailer.config import DEFAULT_BLOCKED, QuietHours, load_site, within
from mailer.errors import ConfigError
from mailer.ratelimit import Rate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "mailer.toml").read_text(encoding="utf-8")
MINIMAL = """
default_sequence = "web-business"

[sender]
name = "Example"
from = "seminar@example.jp"
postal_address = "1-2-3 Example, Tokyo"
contact = "support@example.jp"
disclaimer = "No guarantee."
"""


def site_file(folder: Path, text: str) -> Path:
    path = folder / "mailer.toml"
    path.write_text(text, encoding="utf-8")
    return path


def edited(old: str, new: str) -> str:
    assert old in EXAMPLE, f"the example mailer.toml no longer has {old!r}"
    return EXAMPLE.replace(old, new, 1)


def error_of(folder: Path, text: str) -> str:
    """The message load_site raises for this file, checked to be one line that starts with the file."""
    path = site_file(folder, text)
    with pytest.raises(ConfigError) as caught:
        load_site(folder)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_the_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    """A file with only the required keys gets the documented defaults (lease 5 min, batch 200, ...)."""
    site_file(tmp_path, MINIMAL)
    site = load_site(tmp_path)
    delivery = site.delivery
    assert delivery.lease == timedelta(minutes=5)
    assert delivery.batch_size == 200
    assert delivery.commit_every == 20
    assert delivery.max_attempts == 8
    assert (delivery.retry_base, delivery.retry_cap) == (timedelta(minutes=1), timedelta(hours=2))
    assert delivery.tick_seconds == 5.0
    assert delivery.max_lateness == timedelta(hours=6)
    assert site.quiet_hours == QuietHours(time(21), time(8))
    assert site.signup.confirmations_per_day == 3
    assert site.signup.per_client_per_hour == 20
    assert site.signup.confirm_days == 7
    assert site.signup.check_deliverability is False
    assert site.signup.blocked == DEFAULT_BLOCKED
    assert (site.limits.relay, site.limits.domains) == ((), ())
    assert site.locale == "ja"
    assert site.sender.unsubscribe_mailto == site.sender.address == "seminar@example.jp"
    assert site.home == tmp_path


def test_the_example_states_the_defaults(tmp_path: Path) -> None:
    """The repository's mailer.toml writes out the schema's defaults, so its comments cannot drift."""
    site_file(tmp_path, MINIMAL)
    default, example = load_site(tmp_path), load_site(REPO)
    assert example.delivery == default.delivery
    assert example.quiet_hours == default.quiet_hours
    assert example.signup == default.signup


def test_the_site_is_frozen_and_hashable() -> None:
    """The site read once is shared by every request and worker: nobody may change it."""
    site = load_site(REPO)
    assert hash(site) == hash(load_site(REPO))
    with pytest.raises(dataclasses.FrozenInstanceError):
        site.delivery.batch_size = 1  # type: ignore[misc]


def test_values_keep_their_syntax(tmp_path: Path) -> None:
    """Durations in units or seconds, times as text or TOML local times, rates as `n/unit`."""
    text = edited('lease = "5m"', "lease = 90").replace('retry_cap = "2h"', 'retry_cap = "2d"')
    text = text.replace('tick = "5s"', 'tick = "1.5"').replace('start = "21:00"', "start = 22:30:00")
    text = text.replace("relay = []", 'relay = ["14/s", "1/5m"]')
    site_file(tmp_path, text)
    site = load_site(tmp_path)
    assert site.delivery.lease == timedelta(seconds=90)
    assert site.delivery.retry_cap == timedelta(days=2)
    assert site.delivery.tick_seconds == 1.5
    assert site.quiet_hours == QuietHours(time(22, 30), time(8))
    assert site.limits.relay == (Rate(14, timedelta(seconds=1)), Rate(1, timedelta(minutes=5)))


def test_quiet_hours_switched_off_are_none(tmp_path: Path) -> None:
    """`[quiet_hours] enabled = false` leaves the engine no quiet hours at all."""
    site_file(tmp_path, edited("[quiet_hours]\n", "[quiet_hours]\nenabled = false\n"))
    assert load_site(tmp_path).quiet_hours is None


def test_domains_are_lowercased(tmp_path: Path) -> None:
    """Blocked and rate-limited domains match however the operator capitalised them."""
    text = edited('domains = ["docomo.ne.jp"]', 'domains = ["DoCoMo.ne.jp"]')
    site_file(tmp_path, text.replace('domains = ["yahoo.co.jp", "gmail.com"]', 'domains = ["Gmail.COM."]'))
    site = load_site(tmp_path)
    assert ("docomo.ne.jp",) in [b.domains for b in site.signup.blocked]
    assert [b.key for b in site.limits.buckets_for("a@mail.gmail.com")] == ["domain:gmail.com:20/1"]


def test_within_matches_the_domain_and_its_subdomains() -> None:
    """example.com holds mail.example.com, but not notexample.com nor example.com.evil."""
    assert within("example.com", "example.com")
    assert within("mail.example.com", "example.com")
    assert not within("notexample.com", "example.com")
    assert not within("example.com.evil", "example.com")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "batch_size = 200",
            'batch_size = "many"',
            "delivery.batch_size: expected a whole number, got 'many'",
        ),
        ("batch_size = 200", 'batch_size = "200"', "delivery.batch_size: expected a whole number, got '200'"),
        (
            "max_attempts = 8",
            "max_attempts = true",
            "delivery.max_attempts: expected a whole number, got True",
        ),
        (
            "commit_every = 20",
            "commit_every = 0",
            "delivery.commit_every: expected a whole number above 0, got 0",
        ),
        ('lease = "5m"', 'lease = "5 minutes"', 'delivery.lease: expected a duration like "90s"'),
        ('lease = "5m"', 'lease = "-5m"', "delivery.lease: expected a duration above zero, got '-5m'"),
        ('tick = "5s"', 'tick = "soon"', "delivery.tick: expected a duration like"),
        (
            'start = "21:00"',
            'start = "9pm"',
            "quiet_hours.start: expected a local time like \"09:00\", got '9pm'",
        ),
        ('start = "21:00"', 'enabled = "no"', "quiet_hours.enabled: expected true or false, got 'no'"),
        ('rates = ["5/s"]', 'rates = ["fast"]', 'limits.domains[0].rates: expected a rate like "20/s"'),
        ("relay = []", 'relay = "20/s"', "limits.relay: expected a list of rates"),
        ("confirm_days = 7", 'confirm_days = "7"', "signup.confirm_days: expected a whole number, got '7'"),
        (
            "check_deliverability = false",
            "check_deliverability = 0",
            "signup.check_deliverability: expected true or false, got 0",
        ),
        ('locale = "ja"', 'locale = "fr"', "locale: must be 'ja' or 'en', got 'fr'"),
        ('from = "seminar@example.jp"', 'from = "seminar"', "sender.from: expected an address like"),
        ('provider = "iCloud"\n', "", "signup.blocked[0]: each [[signup.blocked]] needs provider"),
        ('locale = "ja"', 'home = "/srv"', "home: unknown key (the site's folder is MAILER_HOME)"),
    ],
)
def test_a_bad_value_names_the_file_the_key_and_the_problem(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    """A wrong value is one line: the file, the key's path, what was expected and what was found."""
    assert error_of(tmp_path, edited(old, new)).startswith(expected)


def test_an_unknown_key_in_delivery_is_refused(tmp_path: Path) -> None:
    """A misspelt key is a typo the operator hears about, with the key it was probably meant to be."""
    message = error_of(tmp_path, edited("batch_size = 200", "batch_sise = 200"))
    assert message == "delivery.batch_sise: unknown key (did you mean batch_size?)"
    message = error_of(tmp_path, edited("batch_size = 200", "speed = 200"))
    assert message.startswith("delivery.speed: unknown key (the keys here are batch_size, lease,")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("delivery = 5", "delivery: expected a table, got 5"),
        ('quiet_hours = "off"', "quiet_hours: expected a table, got 'off'"),
        ('signup = { blocked = ["icloud.com"] }', "signup.blocked[0]: expected a table, got 'icloud.com'"),
    ],
)
def test_a_value_where_a_table_belongs_is_refused(tmp_path: Path, line: str, expected: str) -> None:
    """A table given as a plain value is named, with what was found instead."""
    assert error_of(tmp_path, line + "\n" + MINIMAL) == expected


def test_a_missing_sender_key_names_every_one_the_law_requires(tmp_path: Path) -> None:
    """Missing or empty identity keys are named together, as the law requires each in every mail."""
    text = edited('contact = "support@example.jp"\n', "").replace('disclaimer = "', 'disclaimer = ""\nx = "')
    assert error_of(tmp_path, text).startswith(
        "[sender] lacks contact, disclaimer (required in every mail by law) (and 1 more)"
    )
    assert error_of(tmp_path, 'default_sequence = "s"\n') == (
        "[sender] lacks name, from, postal_address, contact, disclaimer (required in every mail by law)"
    )


def test_default_sequence_is_required(tmp_path: Path) -> None:
    """Without default_sequence the form would sign people up to nothing."""
    message = error_of(tmp_path, MINIMAL.replace('default_sequence = "web-business"', ""))
    assert message == "default_sequence is required (the seminar the form signs up to)"


def test_a_missing_or_unreadable_file_is_one_line(tmp_path: Path) -> None:
    """No file, broken TOML or bytes that are not UTF-8 each give one line naming the file."""
    with pytest.raises(ConfigError, match=r"mailer.toml: not found \(set MAILER_HOME"):
        load_site(tmp_path)
    assert error_of(tmp_path, "[sender\n").startswith("Expected ']'")
    (tmp_path / "mailer.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"mailer.toml: not UTF-8 text$"):
        load_site(tmp_path)
