"""Admission: the rate limits (the relay's, each recipient domain's) let a mail go now or later.

A wait up to MAX_SLEEP is slept through; a longer one puts the mail off (back to pending, no
attempt counted), and every later mail under the same buckets is put off with it, without asking
the limiter again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from mailer.config import Limits
from mailer.deliver.jobs import Job, Outcomes
from mailer.ratelimit import Limiter, LimiterUnavailableError

log = logging.getLogger(__name__)

MAX_SLEEP = 1.0  # a rate-limit wait up to this long is slept through; a longer one defers the row
LIMITER_DOWN_WAIT = 10.0  # Redis unreachable: put mail off rather than risk the relay's limits


class Admission:
    """One group's pass through the rate limits."""

    def __init__(self, limits: Limits, limiter: Limiter) -> None:
        self.limits = limits
        self.limiter = limiter
        self.blocked: dict[tuple[str, ...], float] = {}  # buckets -> monotonic time they open

    def admitted(self, jobs: Iterable[Job], now: datetime, outcomes: Outcomes) -> Iterator[Job]:
        """The jobs the rate limits let go now, each as SMTP is ready for it; the others put off."""
        for job in jobs:
            if wait := self.wait(job.recipient):
                outcomes.throttled.append((job, now + timedelta(seconds=wait)))
            else:
                yield job

    def wait(self, recipient: str) -> float:
        """Wait out the rate limits: 0 when the mail may go now, else seconds to put it off by."""
        buckets = self.limits.buckets_for(recipient)
        if not buckets:
            return 0.0
        signature = tuple(b.key for b in buckets)
        if (until := self.blocked.get(signature, 0.0) - time.monotonic()) > 0:
            return until
        while True:
            try:
                wait = self.limiter.take(buckets)
            except LimiterUnavailableError:
                log.warning("ratelimit.unavailable")
                wait = LIMITER_DOWN_WAIT
            if wait == 0:
                return 0.0
            if wait > MAX_SLEEP:
                self.blocked[signature] = time.monotonic() + wait
                return wait
            time.sleep(wait)
