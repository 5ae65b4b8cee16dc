"""Load and validate sequences/*.toml into frozen dataclasses; every error names file, line and what."""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailer.errors import SequenceError
from mailer.stamps import RECHECK, FolderStamp, Stamp

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
TOP_KEYS = {"title", "timezone", "send_at", "then", "steps"}
STEP_KEYS = {"id", "day", "at"}
STEPS_HEADER = re.compile(r"^\s*\[\[\s*steps\s*\]\]")  # TOML allows spaces inside the brackets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    id: str
    day: int
    at: time | None
    position: int  # index in the file: steps go out in this order

    @property
    def immediate(self) -> bool:
        """Day 0 without `at`: due at entry, answering the reader's own action (no quiet hours)."""
        return self.day == 0 and self.at is None


@dataclass(frozen=True)
class Sequence:
    id: str
    title: str
    timezone: ZoneInfo
    send_at: time
    then: str | None
    steps: tuple[Step, ...]
    fingerprint: str  # changes whenever the file does: cursors are re-planned once per edit

    def step(self, step_id: str | None) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def step_after(self, position: int) -> Step | None:
        """The first step placed after `position` in the file (-1: the first step)."""
        return self.steps[position + 1] if position + 1 < len(self.steps) else None


@dataclass(frozen=True)
class Catalog:
    sequences: dict[str, Sequence]

    def get(self, sequence_id: str | None) -> Sequence | None:
        return self.sequences.get(sequence_id) if sequence_id else None

    def __contains__(self, sequence_id: object) -> bool:
        return sequence_id in self.sequences


def _step_lines(text: str) -> list[int]:
    """Line numbers of each `[[steps]]` header, so errors about step N can point at it."""
    return [n for n, line in enumerate(text.splitlines(), 1) if STEPS_HEADER.match(line)]


def _key_line(lines: list[str], header: int | None, key: str) -> int | None:
    """The line of `key = ...` inside the step block starting at `header` (else the header)."""
    if header is None:
        return None
    for number in range(header, len(lines)):
        stripped = lines[number].strip()
        if stripped.startswith("["):
            break
        if stripped.split("=", 1)[0].strip() == key:
            return number + 1
    return header


def _parse_time(value: object) -> time | None:
    if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}", value):
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        return None


class _Errors(list[str]):
    """The errors found in one file, each as `file:line: message`."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def __call__(self, line: int | None, message: str) -> None:
        self.append(f"{self.path}:{line}: {message}" if line else f"{self.path}: {message}")


def parse_sequence(path: Path) -> tuple[Sequence | None, list[str]]:
    """One file -> the sequence, or None and every error found in it (as `file:line: message`)."""
    sequence_id = path.stem
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    err = _Errors(path)
    if not ID_PATTERN.fullmatch(sequence_id):
        err(None, "the file name is the seminar's id: use lowercase letters, digits, '-' and '_'")
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11 puts the position only in the text: "Invalid value (at line 2, column 9)".
        found = re.match(r"(.*) \(at line (\d+), column (\d+)\)$", str(exc))
        if found:
            err(int(found.group(2)), f"not valid TOML: {found.group(1)} (column {found.group(3)})")
        else:
            err(None, f"not valid TOML: {exc}")
        return None, list(err)
    title, zone, send_at, then = _header(data, err)
    steps = _steps(data.get("steps", []), text, err)
    if err or zone is None or send_at is None or title is None:
        return None, list(err)
    fingerprint = hashlib.sha256(raw).hexdigest()[:16]
    return Sequence(sequence_id, title, zone, send_at, then, tuple(steps), fingerprint), []


def _header(
    data: dict[str, Any], err: _Errors
) -> tuple[str | None, ZoneInfo | None, time | None, str | None]:
    """The seminar's own keys: title, timezone, send_at, then (None where wrong, with its error)."""
    for key in sorted(set(data) - TOP_KEYS):
        err(None, f"unknown key {key!r} (expected: {', '.join(sorted(TOP_KEYS))})")
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        err(None, "title is required (a non-empty string)")
        title = None
    zone: ZoneInfo | None = None
    zone_name = data.get("timezone", "Asia/Tokyo")
    try:
        zone = ZoneInfo(str(zone_name))
    except (ZoneInfoNotFoundError, ValueError):
        err(None, f'timezone {zone_name!r} is not an IANA time zone (such as "Asia/Tokyo")')
    send_at = _parse_time(data.get("send_at", "09:00"))
    if send_at is None:
        err(None, f'send_at {data.get("send_at")!r} is not a time like "09:00"')
    then = data.get("then")
    if then is not None and (not isinstance(then, str) or not ID_PATTERN.fullmatch(then)):
        err(None, f"then {then!r} must name another seminar file (without .toml)")
    return title, zone, send_at, then


def _steps(raw_steps: object, text: str, err: _Errors) -> list[Step]:
    """The `[[steps]]`, in file order; each error points at its step's line (or key's line)."""
    if not isinstance(raw_steps, list):
        err(None, "steps must be an array of tables ([[steps]])")
        return []
    lines = _step_lines(text)
    text_lines = text.splitlines()
    steps: list[Step] = []
    seen: set[str] = set()
    previous_day: int | None = None
    for index, item in enumerate(raw_steps):
        line = lines[index] if index < len(lines) else None
        if not isinstance(item, dict):
            err(line, f"step {index + 1} must be a table")
            continue
        step_id = item.get("id")
        label = f"step {step_id!r}" if isinstance(step_id, str) else f"step {index + 1}"
        for key in sorted(set(item) - STEP_KEYS):
            err(_key_line(text_lines, line, key), f"{label}: unknown key {key!r} (expected: id, day, at)")
        if not isinstance(step_id, str) or not ID_PATTERN.fullmatch(step_id):
            err(line, f"{label}: id is required: lowercase letters, digits, '-' and '_'")
            continue
        if step_id in seen:
            err(line, f"{label}: the id is used twice (ids are stable keys; never reuse one)")
        seen.add(step_id)
        day = item.get("day")
        day_line = _key_line(text_lines, line, "day")
        if not isinstance(day, int) or isinstance(day, bool) or day < 0:
            err(day_line, f"{label}: day must be a whole number of days, 0 or more, got {day!r}")
            continue
        if previous_day is not None and day < previous_day:
            err(day_line, f"{label}: day {day} is smaller than day {previous_day} of the step before it")
        previous_day = day
        at = _parse_time(item["at"]) if "at" in item else None
        if "at" in item and at is None:
            err(_key_line(text_lines, line, "at"), f'{label}: at {item["at"]!r} is not a time like "12:30"')
        steps.append(Step(id=step_id, day=day, at=at, position=len(steps)))
    return steps


def load_catalog(home: Path) -> tuple[Catalog, list[str]]:
    """Every seminar under `home/sequences`, and every error found (an empty list: all good)."""
    folder = home / "sequences"
    sequences: dict[str, Sequence] = {}
    errors: list[str] = []
    paths = sorted(folder.glob("*.toml"))
    if not paths:
        errors.append(f"{folder}: no seminar files (*.toml)")
    for path in paths:
        sequence, found = parse_sequence(path)
        errors.extend(found)
        if sequence is not None:
            sequences[sequence.id] = sequence
    errors.extend(
        f"{folder / (sequence.id + '.toml')}: then {sequence.then!r} names no seminar file"
        for sequence in sequences.values()
        if sequence.then and sequence.then not in sequences
    )
    return Catalog(sequences), errors


def load_catalog_strict(home: Path) -> Catalog:
    catalog, errors = load_catalog(home)
    if errors:
        raise SequenceError("\n".join(errors))
    return catalog


class CatalogCache:
    """The catalog, re-read when a file changes; a broken edit keeps the last good one running."""

    def __init__(self, home: Path, *, recheck: float = RECHECK) -> None:
        self.home = home
        self._files = FolderStamp(home / "sequences", ".toml", recheck=recheck)
        self._stamp: Stamp | None = None
        self._catalog: Catalog | None = None
        self.errors: list[str] = []

    def get(self, *, fresh: bool = False) -> Catalog:
        """The catalog as the files are: within a second, or at once when `fresh`."""
        stamp = self._files.current(fresh=fresh)
        if stamp != self._stamp:
            catalog, errors = load_catalog(self.home)
            self.errors = errors
            if errors and self._catalog is None:
                raise SequenceError("\n".join(errors))
            if errors:
                # Once per edit, not per read: the stamp is only taken again when a file changes.
                # Error lines name files and lines, never addresses.
                log.warning("sequences.edit_kept_back errors=%d first=%s", len(errors), errors[0])
            else:
                self._catalog = catalog
            self._stamp = stamp
        assert self._catalog is not None
        return self._catalog
