"""Pure time maths: when a step is due, in which zone, held by quiet hours, moved after an outage.

Datetimes in and out are aware UTC; local time exists only inside these functions.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailer.config import QuietHours
from mailer.seminars.sequences import Sequence, Step


def zone_for(name: str | None, fallback: ZoneInfo) -> ZoneInfo:
    """The subscriber's own zone when it is a real IANA name, else the seminar's."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return fallback


def is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def local_wall(day: date, at: time, zone: ZoneInfo) -> datetime:
    """A local date and wall-clock time as UTC; a time skipped by a DST jump lands just after it.

    PEP 495: with fold=0 a wall time in a spring-forward gap takes the offset from before the
    jump, which is the instant just after it (02:30 that never was becomes 03:30); an ambiguous
    fall-back time is its first occurrence.
    """
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def local_date(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()


def in_quiet_hours(moment: datetime, zone: ZoneInfo, quiet: QuietHours) -> bool:
    wall = moment.astimezone(zone).time().replace(tzinfo=None)
    if quiet.start == quiet.end:
        return False
    if quiet.start < quiet.end:
        return quiet.start <= wall < quiet.end
    return wall >= quiet.start or wall < quiet.end  # the window wraps midnight


def hold_for_quiet_hours(moment: datetime, zone: ZoneInfo, quiet: QuietHours | None) -> datetime:
    """`moment`, or the end of the quiet hours it falls in."""
    if quiet is None or not in_quiet_hours(moment, zone, quiet):
        return moment
    local = moment.astimezone(zone)
    end_day = local.date()
    if quiet.start > quiet.end and local.time().replace(tzinfo=None) >= quiet.start:
        end_day += timedelta(days=1)  # held past midnight: the window ends tomorrow
    return local_wall(end_day, quiet.end, zone)


def held(step: Step | None, moment: datetime, zone: ZoneInfo, quiet: QuietHours | None) -> datetime:
    """When mail due at `moment` may go: quiet hours hold it until they end, except the mail that
    answers the reader's own action (the confirmation, `step` None; a day-0 step without `at`)."""
    if step is None or step.immediate:
        return moment
    return hold_for_quiet_hours(moment, zone, quiet)


def step_due(
    sequence: Sequence,
    step: Step,
    *,
    entered_at: datetime,
    shift_days: int,
    zone: ZoneInfo,
    quiet: QuietHours | None,
) -> datetime:
    """When `step` is due for someone who entered at `entered_at` and whose steps moved `shift_days`.

    Day 0 without `at` is due at entry. Otherwise: the local date of entry plus `day` (plus the
    shift), at `at` or the seminar's `send_at`; no earlier than entry. Held by quiet hours, which
    makes the end of the quiet hours its due time (so nothing after it moves).
    """
    if step.immediate:
        return held(step, entered_at, zone, quiet)
    day = local_date(entered_at, zone) + timedelta(days=step.day + shift_days)
    due = max(local_wall(day, step.at or sequence.send_at, zone), entered_at)
    return held(step, due, zone, quiet)


def late_days(due_at: datetime, sent_at: datetime, zone: ZoneInfo) -> int:
    """Whole local days a step went out late: later steps move by this many (no flood)."""
    return max(0, (local_date(sent_at, zone) - local_date(due_at, zone)).days)


def retry_delay(attempt: int, base: timedelta, cap: timedelta, jitter: float) -> timedelta:
    """Exponential backoff with jitter in [0.5, 1.5) of the step; `jitter` in [0, 1) is passed in."""
    step = min(cap, base * (1 << min(max(0, attempt - 1), 32)))  # 2**32 minutes: past any cap
    return min(cap, step * (0.5 + jitter))
