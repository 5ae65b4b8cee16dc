"""What `mailer sequences check` runs: every seminar loads and every step renders with its footer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailer.config import Site
from mailer.i18n import translator
from mailer.mail.compose import Recipient, Renderer
from mailer.mail.footer import missing_footer_items
from mailer.seminars.sequences import Sequence, load_catalog


@dataclass(frozen=True)
class CheckResult:
    """Every error line found (none: all good), and how much was checked."""

    errors: tuple[str, ...]
    seminars: int
    steps: int  # steps that rendered

    @property
    def ok(self) -> bool:
        return not self.errors


def sample_recipient(locale: str) -> Recipient:
    """The reader that check and preview render for: no delivery, no subscriber, a local name."""
    return Recipient(0, 0, "sample@example.com", translator(locale)("sample_name"))


def check(home: Path, site: Site, renderer: Renderer) -> CheckResult:
    """Load the seminars under `home` and render each step and confirmation for a sample reader."""
    catalog, errors = load_catalog(home)
    sample = sample_recipient(site.locale)
    steps = 0
    for sequence in catalog.sequences.values():
        steps += _check_steps(home, site, renderer, sequence, sample, errors)
        try:
            renderer.confirm(sequence).compose(
                sample, confirm_url="http://example.invalid/confirm/x", confirm_days=7
            )
        except Exception as exc:  # any template error is the operator's to fix: say which
            errors.append(f"{home / 'templates' / 'mail' / '_confirm'}: {_template_error(exc)}")
    if not (home / "sequences" / f"{site.default_sequence}.toml").exists():
        errors.append(
            f"{home / 'mailer.toml'}: default_sequence {site.default_sequence!r} names no seminar file"
        )
    return CheckResult(tuple(errors), seminars=len(catalog.sequences), steps=steps)


def _check_steps(
    home: Path, site: Site, renderer: Renderer, sequence: Sequence, sample: Recipient, errors: list[str]
) -> int:
    """Render each step of `sequence`, adding what is wrong to `errors`; the steps that rendered."""
    rendered = 0
    for step in sequence.steps:
        where = f"{home / 'templates' / 'mail' / sequence.id / step.id}"
        try:
            composed = renderer.step(sequence, step).compose(sample)
        except Exception as exc:  # any template error is the operator's to fix: say which
            errors.append(f"{where}: step {step.id!r} of {sequence.id!r}: {_template_error(exc)}")
            continue
        rendered += 1
        errors.extend(
            f"{where}: step {step.id!r}: the footer lacks {item}"
            for item in missing_footer_items(composed, site)
        )
        if not composed.subject:
            errors.append(f"{where}/subject.txt: step {step.id!r}: the subject is empty")
    return rendered


def _template_error(exc: Exception) -> str:
    name = getattr(exc, "filename", None) or getattr(exc, "name", None)
    line = getattr(exc, "lineno", None)
    where = f"{name}:{line}: " if name and line else (f"{name}: " if name else "")
    kind = "missing template" if type(exc).__name__ == "TemplateNotFound" else type(exc).__name__
    return f"{where}{kind}: {exc}" if kind != "missing template" else f"missing template {exc}"
