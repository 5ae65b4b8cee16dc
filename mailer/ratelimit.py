"""Rate limits shared by every process: the relay's, each recipient domain's, the sign-up form's.

A rate `20/s` paces evenly: one every 50 ms, never a burst, so any window of one second holds at
most 20 (relays and carriers throttle on bursts). The algorithm is GCRA: per bucket one stored
time, the earliest moment the next action conforms. With Redis the buckets live there and every
worker on every machine shares them (the server's clock decides); without Redis, in this process.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from mailer.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


@dataclass(frozen=True)
class Rate:
    count: int
    per: timedelta

    @classmethod
    def parse(cls, text: object, where: str) -> Rate:
        """`20/s`, `3000/h`, `1/5m`: a count per a number of seconds, minutes, hours or days."""
        try:
            return cls.from_text(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @classmethod
    def from_text(cls, text: object) -> Rate:
        """As `parse`, raising ValueError without a place: for the site file's schema, which adds it."""
        match = _RATE.match(text) if isinstance(text, str) else None
        if not match or int(match.group(1)) == 0 or match.group(2) == "0":
            raise ValueError(f'expected a rate like "20/s" or "3000/h", got {text!r}')
        seconds = int(match.group(2) or 1) * _UNITS[match.group(3)]
        return cls(int(match.group(1)), timedelta(seconds=seconds))

    @property
    def interval(self) -> float:
        """Seconds between two actions."""
        return self.per.total_seconds() / self.count


@dataclass(frozen=True)
class Bucket:
    key: str
    rate: Rate
    burst: int = 1  # actions allowed at once before the pace applies (1: evenly paced)

    @property
    def tolerance(self) -> float:
        return (self.burst - 1) * self.rate.interval


class LimiterUnavailableError(Exception):
    """The shared store (Redis) cannot be reached; the caller decides what that means."""


class Limiter(Protocol):
    def take(self, buckets: Sequence[Bucket]) -> float:
        """One action from every bucket, or from none: 0.0 when taken, else seconds to wait."""
        ...


class LocalLimiter:
    """Buckets in this process: right when one process does all the work (the embedded default)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._due: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, buckets: Sequence[Bucket]) -> float:
        with self._lock:
            now = self.clock()
            wait = max((self._due.get(b.key, now) - b.tolerance - now for b in buckets), default=0.0)
            if wait > 0:
                return wait
            for b in buckets:
                self._due[b.key] = max(self._due.get(b.key, now), now) + b.rate.interval
            if len(self._due) > 100_000:  # a flood of distinct keys must not grow memory forever
                self._due = {k: v for k, v in self._due.items() if v > now}
            return 0.0


# KEYS: the buckets; ARGV: each bucket's interval and burst tolerance in microseconds. Either every
# bucket advances or none does. A key expires when its bucket is idle again: Redis keeps busy ones.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local due = {}
for i, key in ipairs(KEYS) do
  local at = math.max(tonumber(redis.call('GET', key) or now), now)
  wait = math.max(wait, at - tonumber(ARGV[2 * i]) - now)
  due[i] = at + tonumber(ARGV[2 * i - 1])
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, due[i], 'PX', math.ceil((due[i] - now) / 1000) + 1)
end
return 0
"""


class RedisLimiter:
    """Buckets in Redis, shared by every worker and web process that points at it."""

    def __init__(self, url: str, prefix: str = "mailer:rate:") -> None:
        import redis  # noqa: PLC0415 (only deployments with Redis load it)

        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = prefix
        self._script = self.client.register_script(_GCRA)

    def take(self, buckets: Sequence[Bucket]) -> float:
        if not buckets:
            return 0.0
        keys = [self.prefix + b.key for b in buckets]
        args = [
            round(value * 1_000_000) for b in buckets for value in (max(b.rate.interval, 1e-6), b.tolerance)
        ]
        try:
            wait = self._script(keys=keys, args=args)
        except self._errors as exc:
            raise LimiterUnavailableError(str(exc)) from exc
        return int(wait) / 1_000_000


def limiter_for(redis_url: str) -> Limiter:
    return RedisLimiter(redis_url) if redis_url else LocalLimiter()
