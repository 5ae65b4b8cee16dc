"""When a step is due: the pure time maths of DESIGN.md "When a step is due", on a fixed clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.config import QuietHours, load_site
from mailer.seminars.schedule import (
    hold_for_quiet_hours,
    in_quiet_hours,
    late_days,
    local_wall,
    retry_delay,
    step_due,
    zone_for,
)
from mailer.seminars.sequences import Sequence, Step

REPO = Path(__file__).resolve().parents[2]
TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
SYDNEY = ZoneInfo("Australia/Sydney")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")  # UTC+14: its local date is a day ahead of UTC
HONOLULU = ZoneInfo("Pacific/Honolulu")  # UTC-10, no DST
QUIET = QuietHours(time(21), time(8))  # the default of mailer.toml: wraps midnight
LUNCH = QuietHours(time(12), time(13))  # a window that does not wrap


def make_step(day: int, at: time | None = None, position: int = 0) -> Step:
    return Step(id=f"step-{position}", day=day, at=at, position=position)


def make_sequence(*steps: Step, send_at: time = time(9), zone: ZoneInfo = TOKYO) -> Sequence:
    return Sequence(
        id="seminar",
        title="Seminar",
        timezone=zone,
        send_at=send_at,
        then=None,
        steps=steps,
        fingerprint="fixed",
    )


def wall(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A local wall-clock instant, as the aware UTC datetime the engine works with."""
    return datetime(year, month, day, hour, minute, tzinfo=zone).astimezone(UTC)


def due(
    step: Step,
    entered_at: datetime,
    *,
    zone: ZoneInfo = TOKYO,
    quiet: QuietHours | None = QUIET,
    shift_days: int = 0,
    send_at: time = time(9),
) -> datetime:
    sequence = make_sequence(step, send_at=send_at, zone=zone)
    return step_due(sequence, step, entered_at=entered_at, shift_days=shift_days, zone=zone, quiet=quiet)


def local(moment: datetime, zone: ZoneInfo) -> tuple[date, time]:
    shown = moment.astimezone(zone)
    return shown.date(), shown.time().replace(tzinfo=None)


# --- Day 0 without `at`: due at entry, never held --------------------------------------------


@pytest.mark.parametrize(
    "entered_at",
    [
        wall(TOKYO, 2024, 4, 1, 15, 0),
        wall(TOKYO, 2024, 4, 1, 23, 30),  # inside the quiet hours
        wall(TOKYO, 2024, 4, 2, 3, 0),  # inside the quiet hours, after midnight
    ],
)
def test_day_zero_without_at_is_due_at_entry_even_in_quiet_hours(entered_at: datetime) -> None:
    """The welcome mail answers the reader's own action: due at entry, quiet hours or not."""
    assert due(make_step(0), entered_at) == entered_at


def test_day_zero_without_at_is_immediate_in_any_zone() -> None:
    """The welcome mail is due at entry whatever the subscriber's zone."""
    entered_at = wall(NEW_YORK, 2024, 7, 4, 23, 45)
    assert due(make_step(0), entered_at, zone=NEW_YORK) == entered_at


# --- Day N at the seminar's send_at, or the step's own `at` ----------------------------------


@pytest.mark.parametrize("day", [1, 3, 7, 14, 30])
def test_day_n_is_due_at_send_at_on_local_entry_date_plus_n(day: int) -> None:
    """Step `day = N` goes out at the seminar's send_at on the local date of entry plus N."""
    entered_at = wall(TOKYO, 2024, 4, 1, 15, 0)
    expected = wall(TOKYO, 2024, 4, 1, 9, 0) + timedelta(days=day)
    assert due(make_step(day), entered_at) == expected


def test_send_at_of_the_seminar_is_used() -> None:
    """A seminar with send_at = "10:15" sends its steps at 10:15 local."""
    entered_at = wall(TOKYO, 2024, 4, 1, 15, 0)
    assert due(make_step(2), entered_at, send_at=time(10, 15)) == wall(TOKYO, 2024, 4, 3, 10, 15)


def test_step_at_overrides_send_at() -> None:
    """A step's own `at` wins over the seminar's send_at."""
    entered_at = wall(TOKYO, 2024, 4, 1, 15, 0)
    step = make_step(3, at=time(12, 30))
    assert due(step, entered_at) == wall(TOKYO, 2024, 4, 4, 12, 30)


def test_day_zero_with_at_later_that_day_is_due_at_that_hour() -> None:
    """Day 0 with `at` is not immediate: it waits for that hour on the day of entry."""
    entered_at = wall(TOKYO, 2024, 4, 1, 10, 0)
    assert due(make_step(0, at=time(18)), entered_at) == wall(TOKYO, 2024, 4, 1, 18, 0)


# --- Time zones: the local date of entry counts, not the UTC date ----------------------------


@pytest.mark.parametrize(
    ("zone", "entered_at", "day", "expected"),
    [
        # Just before local midnight: the UTC date is already the next day.
        (NEW_YORK, wall(NEW_YORK, 2024, 4, 1, 23, 50), 1, wall(NEW_YORK, 2024, 4, 2, 9)),
        # Just after local midnight: the next local day is the day of entry.
        (NEW_YORK, wall(NEW_YORK, 2024, 4, 2, 0, 10), 1, wall(NEW_YORK, 2024, 4, 3, 9)),
        # Tokyo just after midnight: the UTC date is still the day before.
        (TOKYO, wall(TOKYO, 2024, 4, 2, 0, 10), 1, wall(TOKYO, 2024, 4, 3, 9)),
        (TOKYO, wall(TOKYO, 2024, 4, 1, 23, 50), 1, wall(TOKYO, 2024, 4, 2, 9)),
        (LONDON, wall(LONDON, 2024, 7, 1, 23, 59), 2, wall(LONDON, 2024, 7, 3, 9)),
        (LONDON, wall(LONDON, 2024, 7, 2, 0, 1), 2, wall(LONDON, 2024, 7, 4, 9)),
        (SYDNEY, wall(SYDNEY, 2024, 6, 1, 23, 55), 1, wall(SYDNEY, 2024, 6, 2, 9)),
        (SYDNEY, wall(SYDNEY, 2024, 6, 2, 0, 5), 1, wall(SYDNEY, 2024, 6, 3, 9)),
        (KIRITIMATI, wall(KIRITIMATI, 2024, 4, 1, 23, 30), 1, wall(KIRITIMATI, 2024, 4, 2, 9)),
        (KIRITIMATI, wall(KIRITIMATI, 2024, 4, 2, 0, 30), 1, wall(KIRITIMATI, 2024, 4, 3, 9)),
        (HONOLULU, wall(HONOLULU, 2024, 4, 1, 23, 30), 1, wall(HONOLULU, 2024, 4, 2, 9)),
        (HONOLULU, wall(HONOLULU, 2024, 4, 2, 0, 30), 1, wall(HONOLULU, 2024, 4, 3, 9)),
    ],
)
def test_local_date_of_entry_decides_the_day(
    zone: ZoneInfo, entered_at: datetime, day: int, expected: datetime
) -> None:
    """Day N counts from the subscriber's local date of entry, at the local send hour."""
    assert due(make_step(day), entered_at, zone=zone) == expected


def test_same_utc_instant_gives_different_days_in_different_zones() -> None:
    """One entry instant is a different local date in Kiritimati and Honolulu, and so is day 1."""
    entered_at = datetime(2024, 4, 1, 12, 0, tzinfo=UTC)  # 02:00 on 2 April / 02:00 on 1 April
    assert local(due(make_step(1), entered_at, zone=KIRITIMATI, quiet=None), KIRITIMATI) == (
        date(2024, 4, 3),
        time(9),
    )
    assert local(due(make_step(1), entered_at, zone=HONOLULU, quiet=None), HONOLULU) == (
        date(2024, 4, 2),
        time(9),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("America/New_York", NEW_YORK),
        ("Pacific/Kiritimati", KIRITIMATI),
        (None, TOKYO),
        ("", TOKYO),
        ("Not/A_Zone", TOKYO),
        ("Asia/Tokio", TOKYO),
        ("America", TOKYO),  # a folder of the zone database, not a zone
        ("../../etc/passwd", TOKYO),
        ("Asia/Tokyo\x00", TOKYO),
    ],
)
def test_zone_for_uses_the_subscribers_zone_else_the_seminars(name: str | None, expected: ZoneInfo) -> None:
    """A real IANA name is the subscriber's zone; anything else falls back to the seminar's."""
    assert zone_for(name, TOKYO) == expected


# --- DST ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "day", "at", "jump_at_utc"),
    [
        # 2024-03-10 02:00 EST the clocks go to 03:00 EDT (07:00 UTC).
        (NEW_YORK, date(2024, 3, 10), time(2, 30), datetime(2024, 3, 10, 7, 0, tzinfo=UTC)),
        # 2024-03-31 01:00 GMT the clocks go to 02:00 BST (01:00 UTC).
        (LONDON, date(2024, 3, 31), time(1, 30), datetime(2024, 3, 31, 1, 0, tzinfo=UTC)),
        # 2024-10-06 02:00 AEST the clocks go to 03:00 AEDT (16:00 UTC the day before).
        (SYDNEY, date(2024, 10, 6), time(2, 30), datetime(2024, 10, 5, 16, 0, tzinfo=UTC)),
    ],
)
def test_wall_time_skipped_by_spring_forward_lands_just_after_the_jump(
    zone: ZoneInfo, day: date, at: time, jump_at_utc: datetime
) -> None:
    """A step due at a wall time that does not exist that day goes out just after the jump."""
    moment = local_wall(day, at, zone)
    assert jump_at_utc <= moment <= jump_at_utc + timedelta(minutes=at.minute)
    assert moment.astimezone(zone).date() == day


def test_step_due_in_a_spring_forward_gap_is_not_sent_before_the_jump() -> None:
    """A step whose hour the clocks skip is not sent an hour early, before the jump."""
    entered_at = wall(NEW_YORK, 2024, 3, 9, 12, 0)
    moment = due(make_step(1, at=time(2, 30)), entered_at, zone=NEW_YORK, quiet=None)
    assert moment >= datetime(2024, 3, 10, 7, 0, tzinfo=UTC)  # 03:00 EDT


@pytest.mark.parametrize(
    ("zone", "day", "at", "candidates"),
    [
        # 2024-11-03 01:30 happens twice in New York: 05:30 UTC (EDT) and 06:30 UTC (EST).
        (
            NEW_YORK,
            date(2024, 11, 3),
            time(1, 30),
            {datetime(2024, 11, 3, 5, 30, tzinfo=UTC), datetime(2024, 11, 3, 6, 30, tzinfo=UTC)},
        ),
        # 2024-10-27 01:30 happens twice in London: 00:30 UTC (BST) and 01:30 UTC (GMT).
        (
            LONDON,
            date(2024, 10, 27),
            time(1, 30),
            {datetime(2024, 10, 27, 0, 30, tzinfo=UTC), datetime(2024, 10, 27, 1, 30, tzinfo=UTC)},
        ),
    ],
)
def test_wall_time_in_the_fall_back_hour_is_one_valid_instant(
    zone: ZoneInfo, day: date, at: time, candidates: set[datetime]
) -> None:
    """A due time in the repeated hour of a fall-back is one of its two real instants."""
    moment = local_wall(day, at, zone)
    assert moment in candidates
    assert local(moment, zone) == (day, at)


@pytest.mark.parametrize("zone", [TOKYO, NEW_YORK, LONDON, SYDNEY, KIRITIMATI, HONOLULU])
@pytest.mark.parametrize("day", [date(2024, 1, 15), date(2024, 3, 10), date(2024, 7, 1)])
def test_local_wall_round_trips_an_ordinary_wall_time(zone: ZoneInfo, day: date) -> None:
    """An ordinary local date and hour come out as the UTC instant showing that hour there."""
    moment = local_wall(day, time(9, 0), zone)
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)
    assert local(moment, zone) == (day, time(9, 0))


def test_steps_keep_their_local_hour_across_a_dst_change() -> None:
    """Day 1 before and day 3 after a DST change both go out at 09:00 local."""
    entered_at = wall(NEW_YORK, 2024, 3, 8, 12, 0)
    before = due(make_step(1), entered_at, zone=NEW_YORK)
    after = due(make_step(3), entered_at, zone=NEW_YORK)
    assert local(before, NEW_YORK) == (date(2024, 3, 9), time(9))
    assert local(after, NEW_YORK) == (date(2024, 3, 11), time(9))
    assert after - before == timedelta(days=2, hours=-1)  # a 47-hour "two days"


# --- A due time before entry becomes the entry time ------------------------------------------


def test_due_time_before_entry_becomes_entry_time() -> None:
    """Day 0 at 09:00 for someone entering at 15:00 goes out at once, not in the past."""
    entered_at = wall(TOKYO, 2024, 4, 1, 15, 0)
    assert due(make_step(0, at=time(9)), entered_at) == entered_at


def test_due_time_before_entry_in_quiet_hours_is_held() -> None:
    """Day 0 with `at` answers no action: entering at 23:30 it waits for the quiet hours to end."""
    entered_at = wall(TOKYO, 2024, 4, 1, 23, 30)
    assert due(make_step(0, at=time(9)), entered_at) == wall(TOKYO, 2024, 4, 2, 8, 0)


# --- Quiet hours -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "expected_day", "expected_time"),
    [
        (time(22, 0), date(2024, 4, 3), time(8, 0)),  # evening: held until next morning
        (time(21, 0), date(2024, 4, 3), time(8, 0)),  # the start is inside the window
        (time(23, 59), date(2024, 4, 3), time(8, 0)),
        (time(0, 0), date(2024, 4, 2), time(8, 0)),  # after midnight: held until that morning
        (time(7, 0), date(2024, 4, 2), time(8, 0)),
        (time(7, 59), date(2024, 4, 2), time(8, 0)),
        (time(8, 0), date(2024, 4, 2), time(8, 0)),  # the end is outside the window
        (time(20, 59), date(2024, 4, 2), time(20, 59)),
        (time(12, 30), date(2024, 4, 2), time(12, 30)),
    ],
)
def test_quiet_hours_hold_a_step_until_they_end(at: time, expected_day: date, expected_time: time) -> None:
    """A day-1 step due inside 21:00-08:00 local goes out at 08:00, the end of the window."""
    entered_at = wall(TOKYO, 2024, 4, 1, 15, 0)
    assert local(due(make_step(1, at=at), entered_at), TOKYO) == (expected_day, expected_time)


def test_quiet_hours_apply_in_the_subscribers_zone() -> None:
    """Quiet hours are the reader's night: 22:00 in New York is held to 08:00 New York time."""
    entered_at = wall(NEW_YORK, 2024, 4, 1, 15, 0)
    held = due(make_step(1, at=time(22)), entered_at, zone=NEW_YORK)
    assert held == wall(NEW_YORK, 2024, 4, 3, 8, 0)


def test_no_quiet_hours_hold_nothing() -> None:
    """With quiet hours off, a step due at 22:00 goes out at 22:00."""
    entered_at = wall(TOKYO, 2024, 4, 1, 15, 0)
    assert due(make_step(1, at=time(22)), entered_at, quiet=None) == wall(TOKYO, 2024, 4, 2, 22)


@pytest.mark.parametrize(
    ("moment", "quiet", "expected"),
    [
        # The default window wraps midnight.
        (wall(TOKYO, 2024, 4, 1, 23), QUIET, wall(TOKYO, 2024, 4, 2, 8)),
        (wall(TOKYO, 2024, 4, 2, 2), QUIET, wall(TOKYO, 2024, 4, 2, 8)),
        (wall(TOKYO, 2024, 4, 2, 10), QUIET, wall(TOKYO, 2024, 4, 2, 10)),
        # A lunch-time window that does not wrap.
        (wall(TOKYO, 2024, 4, 2, 12, 30), LUNCH, wall(TOKYO, 2024, 4, 2, 13)),
        (wall(TOKYO, 2024, 4, 2, 12), LUNCH, wall(TOKYO, 2024, 4, 2, 13)),
        (wall(TOKYO, 2024, 4, 2, 11, 59), LUNCH, wall(TOKYO, 2024, 4, 2, 11, 59)),
        (wall(TOKYO, 2024, 4, 2, 13), LUNCH, wall(TOKYO, 2024, 4, 2, 13)),
        (wall(TOKYO, 2024, 4, 2, 23), LUNCH, wall(TOKYO, 2024, 4, 2, 23)),
        # No quiet hours at all.
        (wall(TOKYO, 2024, 4, 1, 23), None, wall(TOKYO, 2024, 4, 1, 23)),
    ],
)
def test_hold_for_quiet_hours_moves_to_the_end_of_the_window(
    moment: datetime, quiet: QuietHours | None, expected: datetime
) -> None:
    """A moment inside the window moves to its end; one outside it stays where it is."""
    assert hold_for_quiet_hours(moment, TOKYO, quiet) == expected


@pytest.mark.parametrize(
    ("hour", "minute", "quiet", "inside"),
    [
        (21, 0, QUIET, True),
        (20, 59, QUIET, False),
        (0, 0, QUIET, True),
        (7, 59, QUIET, True),
        (8, 0, QUIET, False),
        (12, 0, QUIET, False),
        (12, 0, LUNCH, True),
        (12, 59, LUNCH, True),
        (13, 0, LUNCH, False),
        (2, 0, LUNCH, False),
    ],
)
def test_in_quiet_hours_reads_the_local_wall_clock(
    hour: int, minute: int, quiet: QuietHours, inside: bool
) -> None:
    """The window includes its start and excludes its end, in the subscriber's zone."""
    assert in_quiet_hours(wall(SYDNEY, 2024, 6, 1, hour, minute), SYDNEY, quiet) is inside


def test_example_site_has_the_default_quiet_hours() -> None:
    """The example mailer.toml keeps readers' nights free: 21:00 to 08:00."""
    assert load_site(REPO).quiet_hours == QUIET


# --- Late steps and shifts (no floods) ---------------------------------------------------------


def test_a_step_held_by_quiet_hours_is_not_late() -> None:
    """Sent at the end of the quiet hours, a held step moves nothing after it."""
    entered_at = wall(TOKYO, 2024, 4, 1, 15, 0)
    held = due(make_step(1, at=time(22)), entered_at)
    assert late_days(held, held, TOKYO) == 0
    later = due(make_step(3), entered_at, shift_days=late_days(held, held, TOKYO))
    assert later == wall(TOKYO, 2024, 4, 4, 9, 0)


@pytest.mark.parametrize(
    ("zone", "due_at", "sent_at", "days"),
    [
        (TOKYO, wall(TOKYO, 2024, 4, 1, 9), wall(TOKYO, 2024, 4, 1, 9), 0),
        (TOKYO, wall(TOKYO, 2024, 4, 1, 9), wall(TOKYO, 2024, 4, 1, 23, 59), 0),
        (TOKYO, wall(TOKYO, 2024, 4, 1, 23, 59), wall(TOKYO, 2024, 4, 2, 0, 1), 1),
        # Same UTC date (1 April), different Tokyo dates: one local day late.
        (TOKYO, wall(TOKYO, 2024, 4, 1, 9), wall(TOKYO, 2024, 4, 2, 8, 59), 1),
        (TOKYO, wall(TOKYO, 2024, 4, 1, 9), wall(TOKYO, 2024, 4, 4, 9), 3),
        # Different UTC dates, same New York date: not late.
        (NEW_YORK, wall(NEW_YORK, 2024, 4, 1, 9), wall(NEW_YORK, 2024, 4, 1, 23, 59), 0),
        (NEW_YORK, wall(NEW_YORK, 2024, 4, 1, 23, 59), wall(NEW_YORK, 2024, 4, 2, 0, 1), 1),
        # Sent before it was due (a clock step back): never negative.
        (TOKYO, wall(TOKYO, 2024, 4, 3, 9), wall(TOKYO, 2024, 4, 1, 9), 0),
    ],
)
def test_late_days_counts_whole_local_days(
    zone: ZoneInfo, due_at: datetime, sent_at: datetime, days: int
) -> None:
    """Lateness is the local date sent minus the local date due, never below zero."""
    assert late_days(due_at, sent_at, zone) == days


@pytest.mark.parametrize("shift", [1, 2, 5])
def test_shift_days_moves_a_step_by_whole_days_keeping_its_hour(shift: int) -> None:
    """After a late step, later steps move by whole local days and keep their hour."""
    entered_at = wall(TOKYO, 2024, 4, 1, 15, 0)
    step = make_step(3, at=time(12, 30))
    assert due(step, entered_at, shift_days=shift) == wall(TOKYO, 2024, 4, 4, 12, 30) + timedelta(days=shift)


def test_an_outage_moves_later_steps_instead_of_flooding() -> None:
    """A day-1 step sent two local days late pushes day 3 two days on, at its usual hour."""
    entered_at = wall(NEW_YORK, 2024, 3, 8, 12, 0)
    due_1 = due(make_step(1), entered_at, zone=NEW_YORK)
    sent_1 = wall(NEW_YORK, 2024, 3, 11, 16, 45)  # the outage ends on Monday afternoon
    shift = late_days(due_1, sent_1, NEW_YORK)
    assert shift == 2
    due_3 = due(make_step(3), entered_at, zone=NEW_YORK, shift_days=shift)
    assert local(due_3, NEW_YORK) == (date(2024, 3, 13), time(9))
    assert due_3 > sent_1


# --- Retry backoff -----------------------------------------------------------------------------

BASE = timedelta(minutes=1)
CAP = timedelta(hours=2)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        (1, timedelta(minutes=1)),
        (2, timedelta(minutes=2)),
        (3, timedelta(minutes=4)),
        (4, timedelta(minutes=8)),
        (7, timedelta(minutes=64)),
        (8, CAP),  # 128 minutes is over the two-hour cap
        (20, CAP),
    ],
)
def test_retry_delay_doubles_up_to_the_cap(attempt: int, expected: timedelta) -> None:
    """Without jitter (0.5: the middle) the delay doubles each attempt until the cap."""
    assert retry_delay(attempt, BASE, CAP, 0.5) == expected


def test_retry_delay_is_capped_for_any_attempt_number() -> None:
    """However many attempts were made, the delay is the cap, not a crash."""
    assert retry_delay(100, BASE, CAP, 0.5) == CAP


@given(attempt=st.integers(min_value=1, max_value=30), jitter=st.floats(0, 1, exclude_max=True))
def test_retry_delay_jitter_stays_within_half_and_one_and_a_half_steps(attempt: int, jitter: float) -> None:
    """Jitter spreads retries within [0.5, 1.5) of the step and never past the cap."""
    step = min(CAP, BASE * 2 ** (attempt - 1))
    delay = retry_delay(attempt, BASE, CAP, jitter)
    assert step * 0.5 <= delay <= CAP
    # timedelta keeps microseconds: a jitter a hair under 1 may round up to exactly 1.5 steps.
    assert delay <= step * 1.5


# --- Properties --------------------------------------------------------------------------------

ZONES = [TOKYO, NEW_YORK, LONDON, SYDNEY, KIRITIMATI, HONOLULU, ZoneInfo("Asia/Kolkata")]


@settings(max_examples=400, deadline=None)
@given(
    entered_at=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(ZONES),
    day=st.integers(min_value=0, max_value=30),
    at=st.none() | st.builds(time, st.integers(0, 23), st.integers(0, 59)),
)
def test_due_is_never_before_entry_nor_in_quiet_hours(
    entered_at: datetime, zone: ZoneInfo, day: int, at: time | None
) -> None:
    """No step is due before entry, and only the day-0 welcome may go out in quiet hours."""
    step = make_step(day, at=at)
    moment = due(step, entered_at, zone=zone)
    assert moment >= entered_at
    if not step.immediate:
        assert not in_quiet_hours(moment, zone, QUIET)
