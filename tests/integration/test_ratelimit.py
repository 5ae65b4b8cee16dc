"""Rate limits: paced evenly, shared by every process through Redis, honoured while sending."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from mailer.config import load_site
from mailer.errors import ConfigError
from mailer.ratelimit import Bucket, LimiterUnavailableError, LocalLimiter, Rate, RedisLimiter
from mailer.runtime import Runtime
from tests.conftest import Sink, make_settings
from tests.helpers import at, join, ledger_row
from tests.services import RedisServer, free_port

TEN_A_SECOND = Bucket("relay", Rate(10, timedelta(seconds=1)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "count", "seconds"),
    [("20/s", 20, 1), ("3000/h", 3000, 3600), ("1/5m", 1, 300), (" 7 / d", 7, 86400)],
)
def test_rates_parse(text: str, count: int, seconds: int) -> None:
    assert Rate.parse(text, "here") == Rate(count, timedelta(seconds=seconds))


@pytest.mark.parametrize("text", ["20", "0/s", "20/0s", "20/w", "fast", "-1/s"])
def test_a_bad_rate_names_where_and_what(text: str) -> None:
    with pytest.raises(ConfigError, match=r"here: expected a rate like"):
        Rate.parse(text, "here")


def test_a_rate_paces_evenly_without_a_burst() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    assert limiter.take([TEN_A_SECOND]) == 0
    assert limiter.take([TEN_A_SECOND]) == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.take([TEN_A_SECOND]) == 0


def test_a_burst_is_allowed_then_the_pace_applies() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    bucket = Bucket("signup", Rate(3, timedelta(hours=1)), burst=3)
    assert [limiter.take([bucket]) for _ in range(3)] == [0, 0, 0]
    assert limiter.take([bucket]) == pytest.approx(1200)


def test_all_buckets_or_none() -> None:
    """A refusal by one bucket takes nothing from the others."""
    clock = Clock()
    limiter = LocalLimiter(clock)
    domain = Bucket("domain:slow.example", Rate(1, timedelta(minutes=1)))
    assert limiter.take([TEN_A_SECOND, domain]) == 0
    clock.now += 0.1
    assert limiter.take([TEN_A_SECOND, domain]) == pytest.approx(59.9)
    assert limiter.take([TEN_A_SECOND]) == 0  # the relay bucket was not spent by the refusal


def test_redis_buckets_are_shared_by_every_process(redis: RedisServer) -> None:
    """Two limiters (two workers) on one Redis draw from one budget."""
    one = RedisLimiter(redis.url, prefix="test:shared:")
    two = RedisLimiter(redis.url, prefix="test:shared:")
    slow = Bucket("domain:x", Rate(1, timedelta(seconds=30)))
    assert one.take([slow]) == 0
    assert 29 < two.take([slow]) <= 30
    burst = Bucket("signup:x", Rate(2, timedelta(hours=1)), burst=2)
    assert [one.take([burst]), two.take([burst])] == [0, 0]
    assert two.take([burst]) > 1700


def test_redis_unreachable_is_said_not_guessed() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(LimiterUnavailableError):
        limiter.take([TEN_A_SECOND])


def limited_runtime(home: Path, database_url: str, sink: Sink, redis_url: str, limits: str) -> Runtime:
    site = home / "mailer.toml"
    text = site.read_text(encoding="utf-8")
    text = text[: text.index("[limits]")] if "[limits]" in text else text
    text += limits
    site.write_text(text.replace("batch_size = 200", "batch_size = 10"), encoding="utf-8")
    runtime = Runtime(make_settings(home, database_url, sink.url, redis_url=redis_url))
    runtime.upgrade_db()
    return runtime


def test_two_workers_share_a_domain_limit_while_sending(
    home: Path, database_url: str, sink: Sink, redis: RedisServer
) -> None:
    """20 mails to a domain limited to 10/s, sent by two workers at once, arrive at 10/s."""
    limits = f'[limits]\nrelay = []\n[[limits.domains]]\ndomains = ["slow{free_port()}.example"]\nrates = ["10/s"]\n'
    runtime = limited_runtime(home, database_url, sink, redis.url, limits)
    domain = limits.split('"')[1]
    for n in range(20):
        join(runtime, sink, f"r{n}@{domain}", at("2026-12-01 10:00"))
    runtime.plan(at("2026-12-02 09:00"))
    sink.clear()
    workers = [
        threading.Thread(target=runtime.deliverer().run, args=(lambda: at("2026-12-02 09:00"),))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    times = sorted(r.at for r in sink.received)
    assert len(times) == 20
    # evenly paced: any ten in a row span about a second (two unshared buckets: half that)
    assert min(later - first for first, later in zip(times, times[10:], strict=False)) > 0.8
    runtime.close()


def test_a_long_wait_puts_the_mail_off_without_an_attempt(
    home: Path, database_url: str, sink: Sink, redis: RedisServer
) -> None:
    """A domain allowed one mail a minute: the second is put back in the ledger for later."""
    domain = f"minute{free_port()}.example"
    unlimited = limited_runtime(home, database_url, sink, redis.url, "")
    ids = [join(unlimited, sink, f"{name}@{domain}", at("2026-12-01 10:00")) for name in ("a", "b")]
    unlimited.close()
    sink.clear()
    limits = f'[limits]\n[[limits.domains]]\ndomains = ["{domain}"]\nrates = ["1/m"]\n'
    runtime = limited_runtime(home, database_url, sink, redis.url, limits)
    _, report = runtime.tick(lambda: at("2026-12-02 09:00"))
    assert (report.sent, report.deferred) == (1, 1)
    assert len(sink.received) == 1
    [late] = [row for row in (ledger_row(runtime, i, "lesson-1") for i in ids) if row.state == "pending"]
    assert late.attempts == 0
    assert late.available_at is not None
    assert timedelta(seconds=30) < late.available_at - at("2026-12-02 09:00") <= timedelta(minutes=1)
    runtime.close()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ('[limits]\nrelay = ["fast"]\n', r"mailer.toml: limits.relay: expected a rate like .* got 'fast'"),
        ('[limits]\nrelay = "20/s"\n', r"mailer.toml: limits.relay: expected a list of rates"),
        ("[limits]\n[[limits.domains]]\nrates = []\n", r"each \[\[limits.domains\]\] needs domains"),
    ],
)
def test_a_bad_limit_in_the_site_file_names_the_key(home: Path, limits: str, message: str) -> None:
    site = home / "mailer.toml"
    text = site.read_text(encoding="utf-8")
    site.write_text(text[: text.index("[limits]")] + limits, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_site(home)
