"""`mailer sequences`: check the seminars and their templates, preview one step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mailer.cli.common import Commands, err, fail, load_runtime, out

app = typer.Typer(
    help="The seminars under sequences/ and their templates.",
    no_args_is_help=True,
    rich_markup_mode=None,
    cls=Commands,
)


@app.command("check")
def check() -> None:
    """Validate every seminar and render every step for a sample subscriber."""
    from mailer.seminars import checks

    runtime = load_runtime()
    result = checks.check(runtime.settings.home, runtime.site, runtime.renderer)
    if not result.ok:
        for line in result.errors:
            err.print(line, highlight=False, markup=False)
        raise typer.Exit(1)
    out.print(f"ok: {result.seminars} seminars, {result.steps} steps")


@app.command("preview")
def preview(
    sequence_id: Annotated[str, typer.Argument(metavar="SEQ", help="The seminar (its file name).")],
    step_id: Annotated[str, typer.Argument(metavar="STEP", help="The step's id.")],
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML part to this file.")] = None,
) -> None:
    """Render one step for a sample subscriber: the subject and text, or the HTML to a file."""
    from mailer.seminars.checks import sample_recipient
    from mailer.seminars.sequences import load_catalog_strict

    runtime = load_runtime()
    catalog = load_catalog_strict(runtime.settings.home)
    sequence = catalog.get(sequence_id)
    if sequence is None:
        fail(f"no seminar {sequence_id!r} (have: {', '.join(sorted(catalog.sequences))})")
    step = sequence.step(step_id)
    if step is None:
        have = ", ".join(s.id for s in sequence.steps)
        fail(f"seminar {sequence_id!r} has no step {step_id!r} (have: {have})")
    composed = runtime.renderer.step(sequence, step).compose(sample_recipient(runtime.site.locale))
    if html is not None:
        if composed.html is None:
            fail(f"step {step_id!r} has no body.html")
        html.write_text(composed.html, encoding="utf-8")
        out.print(f"wrote {html}")
        return
    out.print(f"Subject: {composed.subject}\n", highlight=False, markup=False)
    out.print(composed.text, highlight=False, markup=False)
