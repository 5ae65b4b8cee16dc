"""Seminar files: the example loads; each broken file gets a precise error (file, line, step)."""

from __future__ import annotations

import logging
import re
import textwrap
from datetime import time
from pathlib import Path

import pytest

from mailer.errors import SequenceError
from mailer.seminars.sequences import CatalogCache, Step, load_catalog, load_catalog_strict, parse_sequence

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
title = "Test seminar"
timezone = "Asia/Tokyo"
send_at = "09:00"

[[steps]]
id = "welcome"
day = 0

[[steps]]
id = "lesson-1"
day = 1
"""


def write(home: Path, name: str, text: str) -> Path:
    """Write `sequences/<name>.toml` under `home` and return its path."""
    folder = home / "sequences"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(home: Path) -> list[str]:
    return load_catalog(home)[1]


# In the files below the second step's block spans these lines: its `[[steps]]` header on line 7
# and its keys after it. An error about that step must point into it (header or offending key).
SECOND_STEP = range(7, 11)


def error_line(error: str, path: Path) -> int | None:
    """The line an error points at (`file:line: ...`), or None when it names the file only."""
    found = re.match(rf"{re.escape(str(path))}:(\d+): ", error)
    return int(found[1]) if found else None


def assert_error(errors: list[str], path: Path, lines: range | None, *fragments: str) -> None:
    """One error names `path` (and a line within `lines`) and contains every fragment."""
    matching = [
        e
        for e in errors
        if e.startswith(f"{path}:")
        and (lines is None or error_line(e, path) in lines)
        and all(f in e for f in fragments)
    ]
    assert matching, f"no error in {path} at lines {lines} with {fragments} in {errors}"


# --- The example content -----------------------------------------------------------------------


def test_example_sequences_load_without_errors() -> None:
    """The repository's own seminars are a complete, working example."""
    catalog, errors = load_catalog(REPO)
    assert errors == []
    assert "web-business" in catalog
    assert "magazine" in catalog


def test_example_seminar_has_the_promised_shape() -> None:
    """web-business starts with a day-0 welcome, runs two weeks or more, then the magazine."""
    catalog = load_catalog_strict(REPO)
    seminar = catalog.get("web-business")
    assert seminar is not None
    assert len(seminar.steps) >= 5
    assert seminar.steps[-1].day >= 14
    first = seminar.steps[0]
    assert (first.id, first.day, first.immediate) == ("welcome", 0, True)
    assert seminar.then == "magazine"
    assert seminar.then in catalog
    days = [s.day for s in seminar.steps]
    assert days == sorted(days)
    assert [s.position for s in seminar.steps] == list(range(len(seminar.steps)))


def test_step_lookup_and_step_after_follow_the_file_order() -> None:
    """Steps are found by id, and the one after a position is the next in the file."""
    seminar = load_catalog_strict(REPO).get("web-business")
    assert seminar is not None
    assert seminar.step("lesson-2") is not None
    assert seminar.step("lesson-2").at == time(12, 30)  # type: ignore[union-attr]
    assert seminar.step("no-such-step") is None
    assert seminar.step(None) is None
    assert seminar.step_after(-1) == seminar.steps[0]
    assert seminar.step_after(0) == seminar.steps[1]
    assert seminar.step_after(len(seminar.steps) - 1) is None


@pytest.mark.parametrize(
    ("day", "at", "immediate"),
    [(0, None, True), (0, time(9), False), (1, None, False), (3, time(12, 30), False)],
)
def test_only_day_zero_without_at_is_immediate(day: int, at: time | None, immediate: bool) -> None:
    """Only a day-0 step without `at` goes out right after confirmation."""
    assert Step(id="s", day=day, at=at, position=0).immediate is immediate


def test_fingerprint_changes_when_the_file_changes(tmp_path: Path) -> None:
    """Any edit to a seminar file gives it a new fingerprint; re-reading it unchanged does not."""
    path = write(tmp_path, "seminar", GOOD)
    first, _ = parse_sequence(path)
    again, _ = parse_sequence(path)
    write(tmp_path, "seminar", GOOD.replace("day = 1", "day = 2"))
    edited, _ = parse_sequence(path)
    assert first is not None
    assert again is not None
    assert edited is not None
    assert first.fingerprint == again.fingerprint
    assert edited.fingerprint != first.fingerprint


# --- Broken files: each error names the file, the line and the step ---------------------------


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    """A TOML syntax error points at the file and the line it is on."""
    path = write(tmp_path, "seminar", 'title = "T"\nsend_at = "09:00"\nday = \n')
    errors = errors_of(tmp_path)
    assert len(errors) == 1
    assert errors[0].startswith(str(path))
    assert "TOML" in errors[0]
    assert f"{path}:3:" in errors[0] or "line 3" in errors[0]


def test_day_smaller_than_the_step_before_is_refused(tmp_path: Path) -> None:
    """Steps go out in file order: a day smaller than the one before is an error at its step."""
    path = write(
        tmp_path,
        "seminar",
        """\
        title = "T"

        [[steps]]
        id = "first"
        day = 3

        [[steps]]
        id = "second"
        day = 1
        """,
    )
    assert_error(errors_of(tmp_path), path, SECOND_STEP, "'second'", "day 1", "day 3")


def test_duplicated_step_id_is_refused(tmp_path: Path) -> None:
    """A step id used twice is an error at the second one."""
    path = write(
        tmp_path,
        "seminar",
        """\
        title = "T"

        [[steps]]
        id = "welcome"
        day = 0

        [[steps]]
        id = "welcome"
        day = 2
        """,
    )
    assert_error(errors_of(tmp_path), path, SECOND_STEP, "'welcome'", "twice")


def test_unknown_step_key_is_refused(tmp_path: Path) -> None:
    """A typo such as `dya = 3` is named, at its step, not silently ignored."""
    path = write(
        tmp_path,
        "seminar",
        """\
        title = "T"

        [[steps]]
        id = "welcome"
        day = 0

        [[steps]]
        id = "lesson-1"
        dya = 3
        """,
    )
    assert_error(errors_of(tmp_path), path, SECOND_STEP, "'lesson-1'", "unknown key 'dya'")


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    """A typo in the seminar's own keys (`sendat`) is named."""
    path = write(tmp_path, "seminar", GOOD.replace('send_at = "09:00"', 'sendat = "09:00"'))
    assert_error(errors_of(tmp_path), path, None, "unknown key 'sendat'")


@pytest.mark.parametrize("value", ['"25:00"', '"9:30"', '"noon"', '"12:60"', "930", '""'])
def test_bad_step_at_is_refused(tmp_path: Path, value: str) -> None:
    """A step `at` that is not an HH:MM time is an error at its step."""
    path = write(
        tmp_path,
        "seminar",
        f"""\
        title = "T"

        [[steps]]
        id = "welcome"
        day = 0

        [[steps]]
        id = "lesson-1"
        day = 1
        at = {value}
        """,
    )
    assert_error(errors_of(tmp_path), path, SECOND_STEP, "'lesson-1'", "at ", "not a time")


@pytest.mark.parametrize("value", ['"9am"', '"24:00"', '"9:00"', "9"])
def test_bad_send_at_is_refused(tmp_path: Path, value: str) -> None:
    """The seminar's send_at must be an HH:MM time."""
    path = write(tmp_path, "seminar", GOOD.replace('"09:00"', value))
    assert_error(errors_of(tmp_path), path, None, "send_at", "not a time")


@pytest.mark.parametrize("zone", ["Asia/Tokio", "Mars/Olympus", "America", "", "../etc/passwd"])
def test_unknown_timezone_is_refused(tmp_path: Path, zone: str) -> None:
    """A timezone that is not an IANA name is named in the error."""
    path = write(tmp_path, "seminar", GOOD.replace('"Asia/Tokyo"', f'"{zone}"'))
    assert_error(errors_of(tmp_path), path, None, f"timezone {zone!r}", "IANA")


@pytest.mark.parametrize(("value", "shown"), [("-1", "-1"), ("1.5", "1.5"), ('"3"', "'3'"), ("true", "True")])
def test_day_that_is_not_a_whole_number_of_days_is_refused(tmp_path: Path, value: str, shown: str) -> None:
    """A negative, fractional, quoted or boolean `day` is an error at its step."""
    path = write(
        tmp_path,
        "seminar",
        f"""\
        title = "T"

        [[steps]]
        id = "welcome"
        day = 0

        [[steps]]
        id = "lesson-1"
        day = {value}
        """,
    )
    assert_error(errors_of(tmp_path), path, SECOND_STEP, "'lesson-1'", "day must be", f"got {shown}")


def test_missing_step_id_is_refused(tmp_path: Path) -> None:
    """A step without an id is an error naming its place in the file."""
    path = write(
        tmp_path,
        "seminar",
        """\
        title = "T"

        [[steps]]
        id = "welcome"
        day = 0

        [[steps]]
        day = 1
        """,
    )
    assert_error(errors_of(tmp_path), path, SECOND_STEP, "step 2", "id is required")


def test_missing_title_is_refused(tmp_path: Path) -> None:
    """A seminar needs a title."""
    path = write(tmp_path, "seminar", GOOD.replace('title = "Test seminar"\n', ""))
    assert_error(errors_of(tmp_path), path, None, "title is required")


def test_then_naming_no_seminar_file_is_refused(tmp_path: Path) -> None:
    """`then` must name another seminar file that exists."""
    path = write(tmp_path, "seminar", 'then = "nowhere"\n' + GOOD)
    assert_error(errors_of(tmp_path), path, None, "'nowhere'", "names no seminar file")


def test_then_naming_an_existing_seminar_is_accepted(tmp_path: Path) -> None:
    """`then` may name another seminar in the folder."""
    write(tmp_path, "seminar", 'then = "magazine"\n' + GOOD)
    write(tmp_path, "magazine", 'title = "Magazine"\nsteps = []\n')
    catalog, errors = load_catalog(tmp_path)
    assert errors == []
    assert catalog.get("seminar").then == "magazine"  # type: ignore[union-attr]


def test_file_name_must_be_a_valid_seminar_id(tmp_path: Path) -> None:
    """The file name is the seminar's id, so `Web Business.toml` is refused."""
    path = write(tmp_path, "Web Business", GOOD)
    assert_error(errors_of(tmp_path), path, None, "file name")


@pytest.mark.parametrize("make_folder", [True, False])
def test_empty_sequences_folder_is_an_error(tmp_path: Path, make_folder: bool) -> None:
    """No seminar files at all is reported, naming the folder."""
    if make_folder:
        (tmp_path / "sequences").mkdir()
    errors = errors_of(tmp_path)
    assert errors == [f"{tmp_path / 'sequences'}: no seminar files (*.toml)"]


def test_every_error_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """The operator sees all mistakes of a file in one check, each at its own step."""
    path = write(
        tmp_path,
        "seminar",
        """\
        title = "T"

        [[steps]]
        id = "welcome"
        day = 2

        [[steps]]
        id = "welcome"
        day = 1
        at = "7pm"
        """,
    )
    errors = errors_of(tmp_path)
    assert_error(errors, path, SECOND_STEP, "twice")
    assert_error(errors, path, SECOND_STEP, "smaller")
    assert_error(errors, path, SECOND_STEP, "'7pm'")


def test_strict_load_raises_with_every_error(tmp_path: Path) -> None:
    """`sequences check` fails on a broken file with a message naming it."""
    write(tmp_path, "good", GOOD)
    broken = write(tmp_path, "broken", GOOD.replace("day = 1", "day = -1"))
    with pytest.raises(SequenceError) as raised:
        load_catalog_strict(tmp_path)
    assert str(broken) in str(raised.value)


def test_error_line_is_right_with_spaced_table_headers(tmp_path: Path) -> None:
    """A valid TOML spelling of the step header does not shift the line numbers of errors."""
    path = write(
        tmp_path,
        "seminar",
        """\
        title = "T"

        [[ steps ]]
        id = "welcome"
        day = 3

        [[ steps ]]
        id = "lesson-1"
        day = 1
        """,
    )
    assert_error(errors_of(tmp_path), path, SECOND_STEP, "'lesson-1'", "smaller")


# --- The cache: a broken edit keeps the last good catalog running ------------------------------


def test_cache_keeps_the_last_good_catalog_when_a_file_breaks(tmp_path: Path) -> None:
    """A broken edit to a live seminar does not stop mail: the last good catalog stays in use."""
    path = write(tmp_path, "seminar", GOOD)
    cache = CatalogCache(tmp_path, recheck=0)
    good = cache.get()
    assert cache.errors == []

    path.write_text(GOOD + "\n[[steps]]\nid = 'lesson-2'\ndya = 3\n", encoding="utf-8")
    assert cache.get() is good
    assert any(str(path) in e and "'dya'" in e for e in cache.errors)


def test_a_kept_back_edit_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each broken edit logs one warning naming its first error, however often the catalog is read."""
    path = write(tmp_path, "seminar", GOOD)
    cache = CatalogCache(tmp_path, recheck=0)
    good = cache.get()

    path.write_text(GOOD + "\n[[steps]]\nid = 'lesson-2'\ndya = 3\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="mailer.seminars.sequences"):
        served = [cache.get() for _ in range(3)]
    assert all(catalog is good for catalog in served)
    lines = [r.getMessage() for r in caplog.records if "sequences.edit_kept_back" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0] == f"sequences.edit_kept_back errors={len(cache.errors)} first={cache.errors[0]}"
    assert str(path) in lines[0]
    assert "'dya'" in lines[0]

    path.write_text(GOOD + "\n[[steps]]\nday = 3\n", encoding="utf-8")  # another broken edit
    with caplog.at_level(logging.WARNING, logger="mailer.seminars.sequences"):
        assert cache.get() is good
        assert cache.get() is good
    assert sum("sequences.edit_kept_back" in r.getMessage() for r in caplog.records) == 2


def test_cache_picks_up_a_valid_edit(tmp_path: Path) -> None:
    """A valid edit is used at the next read, even after a broken one."""
    path = write(tmp_path, "seminar", GOOD)
    cache = CatalogCache(tmp_path, recheck=0)
    before = cache.get().get("seminar")

    path.write_text(GOOD + "\n[[steps]]\nday = 3\n", encoding="utf-8")  # broken: no id
    cache.get()
    assert cache.errors

    # Every write has a different size, so the cache sees each edit whatever the clock's grain.
    path.write_text(GOOD + '\n[[steps]]\nid = "lesson-2"\nday = 3\nat = "12:30"\n', encoding="utf-8")
    after = cache.get().get("seminar")
    assert cache.errors == []
    assert before is not None
    assert after is not None
    assert [s.id for s in after.steps] == ["welcome", "lesson-1", "lesson-2"]
    assert after.step("lesson-2").at == time(12, 30)  # type: ignore[union-attr]
    assert after.fingerprint != before.fingerprint


def test_cache_refuses_to_start_on_a_broken_catalog(tmp_path: Path) -> None:
    """With no good catalog yet, a broken one is an error, not an empty seminar list."""
    write(tmp_path, "seminar", GOOD.replace("day = 1", "day = -1"))
    with pytest.raises(SequenceError):
        CatalogCache(tmp_path).get()
