"""A folder's stamp is taken again once its recheck time has passed, and not before."""

from __future__ import annotations

from pathlib import Path

from mailer.stamps import FolderStamp


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_edit_is_seen_once_the_recheck_time_has_passed(tmp_path: Path) -> None:
    """Reads within a second reuse the stamp (no stat per request); the next one sees the edit."""
    clock = Clock()
    page = tmp_path / "thanks.html"
    page.write_text("ありがとう", encoding="utf-8")
    stamp = FolderStamp(tmp_path, clock=clock)
    before = stamp.current()

    page.write_text("ありがとうございます", encoding="utf-8")  # another size: seen whatever the clock's grain
    clock.now += 0.5
    assert stamp.current() == before
    clock.now += 0.5
    assert stamp.current() != before


def test_only_files_with_the_suffix_count(tmp_path: Path) -> None:
    """A seminar's step folders and an editor's backup files do not change the catalog's stamp."""
    (tmp_path / "web.toml").write_text("", encoding="utf-8")
    (tmp_path / "web").mkdir()
    (tmp_path / "web.toml~").write_text("old", encoding="utf-8")
    assert [name for name, _, _ in FolderStamp(tmp_path, ".toml").current()] == ["web.toml"]


def test_a_fresh_stamp_sees_an_edit_at_once(tmp_path: Path) -> None:
    stamp = FolderStamp(tmp_path, recheck=3600)
    before = stamp.current()
    (tmp_path / "a.txt").write_text("x")
    assert stamp.current() == before
    assert stamp.current(fresh=True) != before
